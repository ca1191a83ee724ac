"""An ASGI app served by uvicorn inside the supervisor's own process, on a Unix socket of any depth."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from runner.errors import UpstreamError

__all__ = ["EmbeddedServer", "bind_unix", "serve_unix"]


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, however deep: bind() takes at most 107 bytes of path, so it binds
    through the directory's /proc/self/fd entry (a deep AGENT_RUNNER_HOME would otherwise fail every task)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock.bind(f"/proc/self/fd/{directory}/{path.name}")
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    finally:
        os.close(directory)
    return sock


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside another's process: the signals belong to the process's own server.

    uvicorn's `serve()` installs its SIGTERM/SIGINT handlers and restores the previous ones when it ends;
    servers that end out of order (two tasks' proxies) leave a dead server's handler installed, and the
    supervisor then ignores SIGTERM.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_unix(app: ASGIApp, path: str | Path) -> AsyncIterator[Path]:
    """Serve `app` on a Unix socket (mode 0666, so a container's non-root user can connect); removed at exit."""
    socket_path = Path(path)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none", interface="asgi3")
    server = EmbeddedServer(config)
    sock = bind_unix(socket_path)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise UpstreamError(f"the server did not start on {socket_path}")
            await asyncio.sleep(0.01)
        os.chmod(socket_path, 0o666)
        yield socket_path
    finally:
        server.should_exit = True
        await task
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
