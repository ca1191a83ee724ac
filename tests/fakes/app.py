"""The service as the HTTP tests meet it: `create_app` over backends whose tasks fail before they need a container,
served by uvicorn on loopback; and `agent-runner serve` as a child process, once it answers /health."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

import policy
from policy.model import RateLimits
from runner.app import create_app
from runner.config import Settings
from runner.model_proxy import ModelProxy
from runner.sandbox.docker import DockerSandbox
from runner.service.runtime import Runtime
from runner.store import Store
from runner.supervisor import Deps
from runner.unix_server import serve_tcp

__all__ = ["ALERTS", "ALERT_SECRET", "OWNER", "TOKEN", "app_client", "failing_runtime", "owner_app", "owner_settings",
           "raw_post", "serve_app", "serve_process", "wait_healthy"]

TOKEN = "owner-token-for-tests"
ALERT_SECRET = "alert-secret-for-tests"
OWNER = {"Authorization": f"Bearer {TOKEN}"}
ALERTS = {"Authorization": f"Bearer {ALERT_SECRET}"}


def owner_settings(home: Path, **extra: str) -> Settings:
    return Settings.from_env({"AGENT_RUNNER_HOME": str(home), "AGENT_API_TOKEN": TOKEN,
                              "ALERT_WEBHOOK_SECRET": ALERT_SECRET, **extra})


def failing_runtime(settings: Settings, limits: RateLimits, *, start_policy: policy.Policy | None = None,
                    say: Callable[[str], None] = lambda _line: None,
                    ) -> Callable[[], contextlib.AbstractAsyncContextManager[Runtime]]:
    """Backends for tasks that fail before they need a container: the engine is never called. The policy is the
    embedded default unless `start_policy` (as if read from AGENT_RUNNER_POLICY); `say` hears the start-up lines."""

    @contextlib.asynccontextmanager
    async def open_backends() -> AsyncIterator[Runtime]:
        active = dataclasses.replace(start_policy or policy.load_default(), rate_limits=limits)
        async with Store(settings.home / "state.db") as store, DockerSandbox() as sandbox, \
                ModelProxy("http://127.0.0.1:9", "unused") as proxy:
            deps = Deps(home=settings.home, store=store, sandbox=sandbox, proxy=proxy, policy=active,
                        image=settings.sandbox_image)
            yield Runtime(settings, deps, say)

    return open_backends


def owner_app(home: Path, *, commands: int = 100, autofixes: int = 100, **extra: str) -> Starlette:
    settings = owner_settings(home, AGENT_RUNNER_REPO=str(home / "missing.git"), **extra)
    limits = RateLimits(commands_per_hour=commands, autofixes_per_hour=autofixes)
    return create_app(settings, runtime=failing_runtime(settings, limits), say=lambda _line: None)


@contextlib.asynccontextmanager
async def serve_app(app: Starlette) -> AsyncIterator[str]:
    """The app under uvicorn on a free loopback port, lifespan included."""
    async with serve_tcp(app, lifespan="on") as url:
        yield url


@contextlib.asynccontextmanager
async def app_client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


@contextlib.asynccontextmanager
async def serve_process(env: dict[str, str], port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "runner.cli", "serve", env=env,
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            await wait_healthy(client, 30)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)


async def wait_healthy(client: httpx.AsyncClient, seconds: float) -> httpx.Response:
    """GET /health on `client` until it answers 200 (a refused connection is "not up yet"): that answer;
    TimeoutError after `seconds`."""
    async with asyncio.timeout(seconds):
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (health := await client.get("/health")).status_code == 200:
                    return health
            await asyncio.sleep(0.1)


async def raw_post(port: int, path: str, body: bytes, token: str = TOKEN) -> tuple[int, dict[str, str], Any]:
    """One client: its own TCP connection, one JSON POST with the owner's token; the status, headers and JSON body.

    A burst is made this way, not with one httpx client, because httpcore's pool scans every connection on every
    request: with 200 at once it measured itself, not the server.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n")
    writer.write(head.encode() + body)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, json.loads(payload)
