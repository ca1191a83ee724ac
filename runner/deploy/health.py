"""Health checks shared by the deployers: an HTTP probe and a poll-until-healthy loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httpx

PROBE_TIMEOUT = 2.0

# A check answers "healthy", "unhealthy" (stop waiting: it will not get better, e.g. the process died),
# or "waiting" (not yet; ask again), with a line saying what it saw.
Verdict = Literal["healthy", "unhealthy", "waiting"]


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    detail: str
    seconds: float


def health_client() -> httpx.AsyncClient:
    # trust_env=False: a probe of 127.0.0.1 must never be sent through a proxy from the environment.
    return httpx.AsyncClient(trust_env=False, timeout=PROBE_TIMEOUT, follow_redirects=False)


async def probe_http(client: httpx.AsyncClient, url: str) -> tuple[Verdict, str]:
    """GET `url`: healthy on 2xx, waiting on anything else (the service may still be starting)."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT + 1):
            response = await client.get(url)
    except (httpx.HTTPError, TimeoutError) as exc:
        return "waiting", f"GET {url}: {type(exc).__name__}"
    if response.is_success:
        return "healthy", f"GET {url} -> {response.status_code} {response.text[:200]}"
    return "waiting", f"GET {url} -> {response.status_code} {response.text[:200]}"


class HttpProbe:
    """The deployer's HTTP health probe: `await probe(url)`. Its client opens at the first probe (a deployer that
    never checks over HTTP holds no connection) and closes with the deployer (`aclose`)."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, url: str) -> tuple[Verdict, str]:
        if self._client is None:
            self._client = health_client()
        return await probe_http(self._client, url)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def wait_healthy(
    check: Callable[[], Awaitable[tuple[Verdict, str]]], *, timeout: float, interval: float
) -> Health:
    """Call `check` every `interval` seconds until it is healthy or unhealthy, or `timeout` seconds pass."""
    started = time.monotonic()
    deadline = started + timeout
    detail = "no health check ran"
    while True:
        verdict, detail = await check()
        now = time.monotonic()
        if verdict != "waiting":
            return Health(verdict == "healthy", detail, now - started)
        if now + interval > deadline:
            return Health(False, f"not healthy after {timeout:g}s; last check: {detail}", now - started)
        await asyncio.sleep(interval)
