"""An ASGI app served by uvicorn inside this process's event loop: on a Unix socket of any depth (the model
channel), or on a free loopback port (`serve_tcp`: the service and the protocol fakes in tests). The one place
that starts an embedded uvicorn and waits until it listens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from runner.errors import UpstreamError

__all__ = ["EmbeddedServer", "bind_unix", "serve_tcp", "serve_unix"]

STARTUP_TIMEOUT = 10.0


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
        await _started(server, task, str(socket_path))
        os.chmod(socket_path, 0o666)
        yield socket_path
    finally:
        server.should_exit = True
        await task
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


@contextlib.asynccontextmanager
async def serve_tcp(app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0,
                    lifespan: Literal["on", "off", "auto"] = "off",
                    timeout: float = STARTUP_TIMEOUT) -> AsyncIterator[str]:
    """Serve `app` on `host:port` (0: a free port) until the block ends; yields its base URL. With
    `lifespan="on"` the app's lifespan runs, and a start-up that fails raises here."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan=lifespan,
                            ws="none")
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(timeout):
            await _started(server, task, f"{host}:{port}")
        bound = server.servers[0].sockets[0].getsockname()
        yield f"http://{host}:{bound[1]}"
    finally:
        server.should_exit = True
        await task


async def _started(server: uvicorn.Server, task: asyncio.Task[None], where: str) -> None:
    while not server.started:
        if task.done():
            task.result()
            raise UpstreamError(f"the server did not start on {where}")
        await asyncio.sleep(0.01)
