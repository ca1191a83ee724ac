"""The supervisor's model proxy: sandboxes reach the Anthropic Messages API only through it.

A sandbox holds a per-task token, never the real key. The proxy listens on a Unix socket mounted
into the container, checks the token (`x-api-key` or `Authorization: Bearer`), forwards `/v1/*`
upstream with the real `ANTHROPIC_API_KEY`, streams the answer back chunk by chunk, and counts
the task's tokens and cost from the answer itself (SSE `message_start` / `message_delta` usage, or
the JSON `usage`). When a task's budget is spent, further requests are refused and the supervisor
is told (a callback and a per-task `asyncio.Event`), so it can stop the container.

    proxy = ModelProxy(settings.anthropic_base_url, settings.anthropic_api_key)
    token = proxy.issue_token(task_id, Budget(max_tokens=2_000_000, max_cost_usd=5.0))
    async with proxy.serve_unix(socket_dir / "model.sock"):
        ...                    # container runs with ANTHROPIC_API_KEY=<token>
    proxy.revoke(task_id)      # the token is refused (401) from now on
    proxy.usage(task_id)       # Usage(input_tokens=..., cost_usd=..., requests=...)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runner.errors import UpstreamError

__all__ = [
    "DEFAULT_PRICES",
    "Budget",
    "ModelProxy",
    "Price",
    "PriceTable",
    "Usage",
]

logger = logging.getLogger(__name__)

DEFAULT_UPSTREAM_URL = "https://api.anthropic.com"
# Time to connect and get the response headers; the CLI itself allows 600 s per request.
DEFAULT_REQUEST_TIMEOUT = 600.0
# Longest silence between two chunks of a streamed answer (Anthropic pings every few seconds).
DEFAULT_IDLE_TIMEOUT = 120.0
DEFAULT_MAX_BODY = 32 * 1024 * 1024

# Only these request headers reach the upstream; everything else (cookies, hop-by-hop headers,
# the sandbox's token, tracking headers) stays behind.
FORWARDED_REQUEST_HEADERS = frozenset(
    {"anthropic-version", "anthropic-beta", "content-type", "accept", "user-agent", "x-app"}
)
FORWARDED_RESPONSE_HEADERS = frozenset({"content-type", "request-id", "retry-after", "x-should-retry", "cache-control"})
FORWARDED_RESPONSE_PREFIXES = ("anthropic-ratelimit-",)


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


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by model family: the first family whose name is in the model id wins."""

    families: Mapping[str, Price]
    default: Price

    def for_model(self, model: str) -> Price:
        lowered = model.lower()
        for family, price in self.families.items():
            if family in lowered:
                return price
        return self.default


DEFAULT_PRICES = PriceTable(
    families={
        "opus": Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
        "sonnet": Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30),
        "haiku": Price(input=1.0, output=5.0, cache_write=1.25, cache_read=0.10),
    },
    # An unknown model is billed as the dearest family, so a budget errs on the safe side.
    default=Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
)


@dataclass(frozen=True, slots=True)
class Budget:
    """What a task may spend; None means no limit on that axis. Tokens count input, output and cache."""

    max_tokens: int | None = None
    max_cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def exceeds(self, budget: Budget) -> bool:
        return (budget.max_tokens is not None and self.total_tokens >= budget.max_tokens) or (
            budget.max_cost_usd is not None and self.cost_usd >= budget.max_cost_usd
        )


@dataclass(slots=True)
class _MessageUsage:
    """Usage of one model answer, assembled from the stream (message_delta values are cumulative)."""

    model: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def update(self, usage: Any) -> None:
        if isinstance(usage, dict):
            for key in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
                value = usage.get(key)
                if isinstance(value, int) and value >= 0:
                    self.counts[key] = value

    def feed_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            self.update(message.get("usage"))
        elif event.get("type") == "message_delta":
            self.update(event.get("usage"))


@dataclass(slots=True)
class _TaskState:
    task_id: str
    budget: Budget
    usage: Usage = field(default_factory=Usage)
    exhausted: asyncio.Event = field(default_factory=asyncio.Event)
    revoked: bool = False


class _SSEUsageParser:
    """Reads usage out of an SSE byte stream without holding more than one event in memory."""

    def __init__(self, message: _MessageUsage) -> None:
        self._message = message
        self._buffer = b""

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        while b"\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            data = b"\n".join(line[5:].lstrip() for line in raw.split(b"\n") if line.startswith(b"data:"))
            if data:
                with contextlib.suppress(ValueError):
                    self._message.feed_event(json.loads(data))


def _digest(token: str) -> bytes:
    # Tokens are looked up by digest, so the table never holds a usable token.
    return hashlib.sha256(token.encode()).digest()


def _error(status: int, kind: str, message: str, *, retry: bool | None = None) -> JSONResponse:
    headers = {} if retry is None else {"x-should-retry": "true" if retry else "false"}
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


def _presented_token(request: Request) -> str | None:
    if token := request.headers.get("x-api-key"):
        return token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class ModelProxy:
    """Per-task authenticated, budgeted pass-through to the Anthropic Messages API."""

    def __init__(
        self,
        upstream_url: str = DEFAULT_UPSTREAM_URL,
        api_key: str = "",
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        prices: PriceTable = DEFAULT_PRICES,
        on_exhausted: Callable[[str, Usage], None] | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self._upstream = httpx.URL(upstream_url.rstrip("/"))
        self._api_key = api_key
        self._prices = prices
        self._on_exhausted = on_exhausted
        self._request_timeout = request_timeout
        self._idle_timeout = idle_timeout
        self._max_body = max_body
        self._tasks: dict[str, _TaskState] = {}
        self._by_token: dict[bytes, _TaskState] = {}
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(request_timeout, read=idle_timeout),
            follow_redirects=False,
            trust_env=False,
        )
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])

    def __repr__(self) -> str:
        return f"ModelProxy(upstream_url={str(self._upstream)!r}, tasks={len(self._tasks)})"

    # Task bookkeeping -------------------------------------------------------------------------

    def issue_token(self, task_id: str, budget: Budget = Budget()) -> str:
        """A fresh token for `task_id`; a task holds one token at a time, reissuing replaces it."""
        state = self._tasks.get(task_id)
        if state is None or state.revoked:
            state = _TaskState(task_id=task_id, budget=budget)
            self._tasks[task_id] = state
        else:
            state.budget = budget
        self._drop_tokens(state)
        token = secrets.token_urlsafe(32)
        self._by_token[_digest(token)] = state
        return token

    def revoke(self, task_id: str) -> None:
        """Refuse the task's token from now on (401); its usage stays readable."""
        state = self._tasks.get(task_id)
        if state is not None:
            state.revoked = True
            self._drop_tokens(state)

    def usage(self, task_id: str) -> Usage:
        state = self._tasks.get(task_id)
        return state.usage if state is not None else Usage()

    def exhausted(self, task_id: str) -> asyncio.Event:
        """Set once the task's budget is spent."""
        return self._state(task_id).exhausted

    def forget(self, task_id: str) -> None:
        """Revoke and drop everything known about the task."""
        self.revoke(task_id)
        self._tasks.pop(task_id, None)

    def _state(self, task_id: str) -> _TaskState:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(f"no token was issued for task {task_id!r}") from None

    def _drop_tokens(self, state: _TaskState) -> None:
        for digest in [d for d, s in self._by_token.items() if s is state]:
            del self._by_token[digest]

    def _charge(self, state: _TaskState, message: _MessageUsage | None) -> None:
        counts = message.counts if message is not None else {}
        price = self._prices.for_model(message.model if message is not None else "")
        input_tokens = counts.get("input_tokens", 0)
        output_tokens = counts.get("output_tokens", 0)
        cache_write = counts.get("cache_creation_input_tokens", 0)
        cache_read = counts.get("cache_read_input_tokens", 0)
        cost = (
            input_tokens * price.input
            + output_tokens * price.output
            + cache_write * price.cache_write
            + cache_read * price.cache_read
        ) / 1_000_000
        usage = state.usage
        state.usage = replace(
            usage,
            input_tokens=usage.input_tokens + input_tokens,
            output_tokens=usage.output_tokens + output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens + cache_write,
            cache_read_input_tokens=usage.cache_read_input_tokens + cache_read,
            cost_usd=usage.cost_usd + cost,
        )
        self._check_budget(state)

    def _check_budget(self, state: _TaskState) -> bool:
        if not state.usage.exceeds(state.budget):
            return False
        if not state.exhausted.is_set():
            state.exhausted.set()
            logger.warning(
                "model budget spent: task=%s tokens=%d cost_usd=%.4f",
                state.task_id,
                state.usage.total_tokens,
                state.usage.cost_usd,
            )
            if self._on_exhausted is not None:
                self._on_exhausted(state.task_id, state.usage)
        return True

    # HTTP -------------------------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        token = _presented_token(request)
        state = self._by_token.get(_digest(token)) if token else None
        if state is None or state.revoked:
            logger.info("model request refused: unknown or revoked token, path=%s", request.url.path)
            return _error(401, "authentication_error", "invalid x-api-key", retry=False)
        if not request.url.path.startswith("/v1/"):
            return _error(404, "not_found_error", f"Not found: {request.url.path}")
        if self._check_budget(state):
            logger.info("model request refused: task=%s budget spent", state.task_id)
            # 429 keeps the CLI's message about limits; x-should-retry stops its SDK from retrying.
            return _error(429, "rate_limit_error", "this task's model budget is spent", retry=False)
        body = await request.body()
        if len(body) > self._max_body:
            return _error(413, "request_too_large", "request body too large")
        state.usage = replace(state.usage, requests=state.usage.requests + 1)
        try:
            upstream = await self._send(request, body)
        except UpstreamError as exc:
            logger.warning("model upstream failed: task=%s path=%s: %s", state.task_id, request.url.path, exc)
            return _error(502, "api_error", "the model upstream could not be reached")
        logger.info(
            "model request: task=%s %s %s -> %d", state.task_id, request.method, request.url.path, upstream.status_code
        )
        headers = {
            k: v
            for k, v in upstream.headers.items()
            if k in FORWARDED_RESPONSE_HEADERS or k.startswith(FORWARDED_RESPONSE_PREFIXES)
        }
        content_type = upstream.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            return StreamingResponse(
                self._relay_stream(state, upstream),
                status_code=upstream.status_code,
                headers=headers,
                background=BackgroundTask(upstream.aclose),
            )
        try:
            content = await self._read_all(upstream)
        except UpstreamError as exc:
            logger.warning("model upstream failed: task=%s path=%s: %s", state.task_id, request.url.path, exc)
            return _error(502, "api_error", "the model upstream failed while answering")
        finally:
            await upstream.aclose()
        if upstream.is_success and content_type.startswith("application/json"):
            self._charge_json(state, content)
        return Response(content, status_code=upstream.status_code, headers=headers)

    async def _send(self, request: Request, body: bytes) -> httpx.Response:
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_REQUEST_HEADERS}
        headers["x-api-key"] = self._api_key
        # Uncompressed answers let the proxy read usage out of the stream as it passes.
        headers["accept-encoding"] = "identity"
        url = self._upstream.copy_with(
            raw_path=self._upstream.raw_path.rstrip(b"/")
            + request.url.path.encode()
            + (b"?" + request.url.query.encode() if request.url.query else b"")
        )
        upstream_request = self._client.build_request(request.method, url, headers=headers, content=body)
        try:
            async with asyncio.timeout(self._request_timeout):
                return await self._client.send(upstream_request, stream=True)
        except (httpx.HTTPError, TimeoutError) as exc:
            raise UpstreamError(f"{request.method} {request.url.path}: {type(exc).__name__}") from exc

    async def _read_all(self, upstream: httpx.Response) -> bytes:
        try:
            async with asyncio.timeout(self._request_timeout):
                return await upstream.aread()
        except (httpx.HTTPError, TimeoutError) as exc:
            raise UpstreamError(f"reading the answer: {type(exc).__name__}") from exc

    async def _relay_stream(self, state: _TaskState, upstream: httpx.Response) -> AsyncIterator[bytes]:
        message = _MessageUsage()
        parser = _SSEUsageParser(message)
        chunks = upstream.aiter_bytes()
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle_timeout):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except (httpx.HTTPError, TimeoutError) as exc:
                    # The status line is gone already: end the stream short, the client retries.
                    logger.warning("model stream broken: task=%s: %s", state.task_id, type(exc).__name__)
                    break
                parser.feed(chunk)
                yield chunk
        finally:
            # Charged even when the client went away mid-stream: the upstream billed it anyway.
            if upstream.is_success:
                self._charge(state, message)
            await upstream.aclose()

    def _charge_json(self, state: _TaskState, content: bytes) -> None:
        try:
            data = json.loads(content)
        except ValueError:
            return
        if isinstance(data, dict) and isinstance(data.get("usage"), dict):
            message = _MessageUsage(model=data["model"] if isinstance(data.get("model"), str) else "")
            message.update(data["usage"])
            self._charge(state, message)

    # Lifecycle --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> ModelProxy:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def serve_unix(self, path: str | Path) -> AsyncIterator[Path]:
        """Serve on a Unix socket (mode 0666, so the container's non-root user can connect)."""
        socket_path = Path(path)
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off", ws="none")
        server = EmbeddedServer(config)
        sock = bind_unix(socket_path)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise UpstreamError(f"model proxy did not start on {socket_path}")
                await asyncio.sleep(0.01)
            os.chmod(socket_path, 0o666)
            yield socket_path
        finally:
            server.should_exit = True
            await task
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()
