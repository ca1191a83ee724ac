"""AsyncResource: something held open until `aclose()`, which `async with` closes on the way out."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self


class AsyncResource(Protocol):
    """An object that holds something (connections, a client, a file) until `aclose()`.

    The backends' protocols (`Forge`, `Deployer`) extend it, and implementations inherit it for the async
    context manager, as httpx's transports do: `__aenter__` returns the object, `__aexit__` awaits `aclose()`.
    An implementation that must connect first overrides `__aenter__` only.

        class LocalGitForge(AsyncResource):
            async def aclose(self) -> None:
                self._db.close()

        async with LocalGitForge(repo, db_path) as forge:
            ...
    """

    async def aclose(self) -> None:
        """Release what the object holds; it is unusable afterwards."""
        ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
