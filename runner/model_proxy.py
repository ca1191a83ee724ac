"""The sandbox's model gateway: per-task token in, real key out, only checked Messages calls, budget reserved.

A sandbox holds a per-task token, never the real key, and code the agent runs holds that token too. The
proxy listens on a Unix socket mounted into the container and, for each request: checks the token
(`x-api-key` or `Authorization: Bearer`), the route and the body (runner.model_gateway: anything else is
refused in Anthropic's error shape, audited through `on_refusal`, and never forwarded), reserves the
request's worst case against the task's budget (runner.metering), forwards it with the real
`ANTHROPIC_API_KEY`, streams the answer back chunk by chunk, and settles the reservation from the answer's
usage. A revoked token or a passed deadline cuts requests in flight at their next chunk. Upstream failures
are kept per task as a typed value (`upstream_failures`), so a task's reason can name them.

    proxy = ModelProxy(settings.anthropic_base_url, settings.anthropic_api_key, on_refusal=audit)
    token = proxy.issue_token(task_id, Budget(max_cost_usd=5.0), models=model_patterns("claude-sonnet-4-5"),
                              time_limit=1800)
    async with proxy.serve_unix(socket_dir / "model.sock"):
        ...                    # container runs with ANTHROPIC_API_KEY=<token>
    proxy.revoke(task_id)      # refused (401) from now on, streams in flight cut
    proxy.usage(task_id)       # Usage(input_tokens=..., cost_usd=..., requests=...)
    proxy.refusals(task_id)    # (Refusal(status=400, field="mcp_servers", reason=...), ...)
    proxy.upstream_failures(task_id).describe()   # "the model upstream answered 500 8 times"

Size: about 570 lines, one class on purpose. What could leave has left (the request check,
runner.model_gateway; budgets and usage, runner.metering; the socket, runner.unix_server): what remains is
one request's life (token, reservation, forward, relay, settle), whose steps share the task's state and must
release it however the request ends; split, the release would be spread over modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

import httpx
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from runner.metering import (
    DEFAULT_MAX_EVENT,
    DEFAULT_PRICES,
    Account,
    Budget,
    MessageUsage,
    Price,
    PriceTable,
    Reservation,
    SSEUsageParser,
    Usage,
    reservation_for,
)
from runner.model_gateway import (
    API_VERSION,
    Checked,
    Endpoint,
    Refusal,
    check_body,
    filter_betas,
    match_route,
    model_patterns,
)
from runner.resource import AsyncResource
from runner.unix_server import serve_unix

__all__ = [
    "DEFAULT_PRICES",
    "Budget",
    "ModelProxy",
    "Price",
    "PriceTable",
    "Refusal",
    "UpstreamFailures",
    "Usage",
    "model_patterns",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_UPSTREAM_URL = "https://api.anthropic.com"
# Time to connect and get the response headers; the CLI itself allows 600 s per request.
DEFAULT_REQUEST_TIMEOUT = 600.0
# Longest silence between two chunks of a streamed answer (Anthropic pings every few seconds), or of the body.
DEFAULT_IDLE_TIMEOUT = 120.0
DEFAULT_MAX_BODY = 32 * 1024 * 1024
# Refusals kept and audited per task; past this a sandbox hammering the gateway is only counted.
DEFAULT_MAX_REFUSALS = 500

# Only these request headers reach the upstream (anthropic-beta filtered, the body's type and version set
# by the proxy); everything else (cookies, hop-by-hop headers, the sandbox's token) stays behind.
FORWARDED_REQUEST_HEADERS = frozenset({"accept", "user-agent", "x-app"})
FORWARDED_RESPONSE_HEADERS = frozenset({"content-type", "request-id", "retry-after", "x-should-retry", "cache-control"})
FORWARDED_RESPONSE_PREFIXES = ("anthropic-ratelimit-",)

FailureKind = Literal["status", "unreachable", "timeout", "broken"]
RefusalSink = Callable[[str, Refusal], Awaitable[None]]
UNLIMITED = Budget()
_NO_COST = Reservation(model="", input_tokens=0, output_tokens=0, cost_usd=0.0)


@dataclass(frozen=True, slots=True)
class UpstreamFailures:
    """How a task's model upstream has been failing. `repeats`: failures in a row ending like the last one
    (reset by an answer); `status`: the upstream's HTTP status when it answered; `waited_seconds`: how long
    the last request that timed out waited."""

    count: int = 0
    repeats: int = 0
    last_kind: FailureKind | None = None
    last_status: int | None = None
    waited_seconds: float | None = None

    def describe(self) -> str:
        """One clause for a task's reason, e.g. "the model upstream answered 500 8 times"."""
        times = "once" if self.repeats == 1 else f"{self.repeats} times"
        if self.last_kind is None:
            return "the model upstream answered every request"
        if self.repeats == 0:
            return f"the model upstream failed {self.count} time(s), then answered"
        if self.last_kind == "status":
            return f"the model upstream answered {self.last_status} {times}"
        if self.last_kind == "timeout":
            return f"the model upstream did not answer within {self.waited_seconds or 0:.0f} s ({times})"
        if self.last_kind == "unreachable":
            return f"the model upstream could not be reached ({times})"
        return f"the model upstream broke off its answer mid-stream ({times})"

    def failed(self, kind: FailureKind, status: int | None = None, waited: float | None = None) -> UpstreamFailures:
        same = self.repeats > 0 and self.last_kind == kind and self.last_status == status
        return UpstreamFailures(self.count + 1, self.repeats + 1 if same else 1, kind, status, waited)

    def answered(self) -> UpstreamFailures:
        return replace(self, repeats=0)


@dataclass(slots=True)
class _TaskState:
    task_id: str
    account: Account
    models: tuple[str, ...]
    deadline: float | None
    exhausted: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    revoked: bool = False
    refusals: list[Refusal] = field(default_factory=list)
    refused: int = 0
    failures: UpstreamFailures = field(default_factory=UpstreamFailures)


class _Cut(Exception):
    """A wait ended by the task (revoked, past its deadline) or by silence (idle)."""

    def __init__(self, kind: Literal["revoked", "deadline", "idle"], waited: float) -> None:
        super().__init__(kind)
        self.kind = kind
        self.waited = waited


@dataclass(slots=True)
class _Exchange:
    """One request's loose ends, tied off whatever way the request ends (even a client that went away)."""

    state: _TaskState
    handle: int | None = None
    upstream: httpx.Response | None = None
    message: MessageUsage = field(default_factory=MessageUsage)


def _digest(token: str) -> bytes:
    # Tokens are looked up by digest, so the table never holds a usable token.
    return hashlib.sha256(token.encode()).digest()


def _error(status: int, kind: str, message: str, *, retry: bool | None = None) -> JSONResponse:
    headers = {} if retry is None else {"x-should-retry": "true" if retry else "false"}
    return JSONResponse(
        {"type": "error", "error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


def _sse_error(kind: str, message: str) -> bytes:
    # How the Messages API reports an error after the status line: the SDK raises it as an APIError.
    data = json.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return f"event: error\ndata: {data}\n\n".encode()


def _presented_token(request: Request) -> str | None:
    if token := request.headers.get("x-api-key"):
        return token
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class ModelProxy(AsyncResource):
    """Per-task authenticated, checked, budgeted gateway to the Anthropic Messages API."""

    def __init__(
        self,
        upstream_url: str = DEFAULT_UPSTREAM_URL,
        api_key: str = "",
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        prices: PriceTable = DEFAULT_PRICES,
        on_exhausted: Callable[[str, Usage], None] | None = None,
        on_refusal: RefusalSink | None = None,
        default_models: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
        max_event: int = DEFAULT_MAX_EVENT,
        max_refusals: int = DEFAULT_MAX_REFUSALS,
    ) -> None:
        self._upstream = httpx.URL(upstream_url.rstrip("/"))
        self._api_key = api_key
        self._prices = prices
        self._on_exhausted = on_exhausted
        self._on_refusal = on_refusal
        self._default_models = tuple(default_models) if default_models is not None else model_patterns(None)
        self._clock = clock
        self._request_timeout = request_timeout
        self._idle_timeout = idle_timeout
        self._max_body = max_body
        self._max_event = max_event
        self._max_refusals = max_refusals
        self._tasks: dict[str, _TaskState] = {}
        self._by_token: dict[bytes, _TaskState] = {}
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(request_timeout, read=idle_timeout),
            follow_redirects=False,
            trust_env=False,
        )

    def __repr__(self) -> str:
        return f"ModelProxy(upstream_url={str(self._upstream)!r}, tasks={len(self._tasks)})"

    # Task bookkeeping -------------------------------------------------------------------------

    def issue_token(self, task_id: str, budget: Budget = UNLIMITED, *, models: Sequence[str] | None = None,
                    time_limit: float | None = None) -> str:
        """A fresh token for `task_id`; a task holds one token at a time, reissuing replaces it.

        `models`: glob patterns of the models the task may call (default: the proxy's `default_models`).
        `time_limit`: seconds from now after which requests in flight are cut and new ones refused.
        """
        state = self._tasks.get(task_id)
        patterns = tuple(models) if models is not None else self._default_models
        deadline = None if time_limit is None else self._clock() + time_limit
        if state is None or state.revoked:
            state = _TaskState(task_id=task_id, account=Account(budget), models=patterns, deadline=deadline)
            self._tasks[task_id] = state
        else:
            state.account.budget, state.models, state.deadline = budget, patterns, deadline
        self._drop_tokens(state)
        token = secrets.token_urlsafe(32)
        self._by_token[_digest(token)] = state
        return token

    def revoke(self, task_id: str) -> None:
        """Refuse the task's token from now on (401) and cut its streams in flight; its records stay readable."""
        state = self._tasks.get(task_id)
        if state is not None:
            state.revoked = True
            state.stop.set()
            self._drop_tokens(state)

    def usage(self, task_id: str) -> Usage:
        state = self._tasks.get(task_id)
        return state.account.usage if state is not None else Usage()

    def refusals(self, task_id: str) -> tuple[Refusal, ...]:
        """The task's refused requests, oldest first (the first `max_refusals` of them)."""
        state = self._tasks.get(task_id)
        return tuple(state.refusals) if state is not None else ()

    def upstream_failures(self, task_id: str) -> UpstreamFailures:
        state = self._tasks.get(task_id)
        return state.failures if state is not None else UpstreamFailures()

    def exhausted(self, task_id: str) -> asyncio.Event:
        """Set once the task's budget is spent, or cannot pay for the request it needs next."""
        try:
            return self._tasks[task_id].exhausted
        except KeyError:
            raise KeyError(f"no token was issued for task {task_id!r}") from None

    def forget(self, task_id: str) -> None:
        """Revoke and drop everything known about the task."""
        self.revoke(task_id)
        self._tasks.pop(task_id, None)

    def _drop_tokens(self, state: _TaskState) -> None:
        for digest in [d for d, s in self._by_token.items() if s is state]:
            del self._by_token[digest]

    def _mark_exhausted(self, state: _TaskState) -> None:
        if state.exhausted.is_set():
            return
        state.exhausted.set()
        usage = state.account.usage
        logger.warning("model budget spent: task=%s tokens=%d cost_usd=%.4f", state.task_id, usage.total_tokens,
                       usage.cost_usd)
        if self._on_exhausted is not None:
            self._on_exhausted(state.task_id, usage)

    def _settle(self, exchange: _Exchange) -> None:
        if exchange.handle is None:
            return
        handle, exchange.handle = exchange.handle, None
        state = exchange.state
        state.account.settle(handle, exchange.message, self._prices)
        if state.account.usage.exceeds(state.account.budget):
            self._mark_exhausted(state)

    def _release(self, exchange: _Exchange) -> None:
        if exchange.handle is not None:
            exchange.state.account.release(exchange.handle)
            exchange.handle = None

    async def _refuse(self, state: _TaskState, refusal: Refusal) -> Response:
        state.refused += 1
        logger.info("model request refused: task=%s %s %s field=%s: %s", state.task_id, refusal.method,
                    refusal.path, refusal.field, refusal.reason)
        if len(state.refusals) < self._max_refusals:
            state.refusals.append(refusal)
            if self._on_refusal is not None:
                try:
                    await self._on_refusal(state.task_id, refusal)
                except Exception:  # the sink's failure must not turn a refusal into a forward or a crash
                    logger.exception("recording a model refusal failed: task=%s", state.task_id)
        elif state.refused == self._max_refusals + 1:
            logger.warning("task %s: over %d model refusals; further ones are only counted", state.task_id,
                           self._max_refusals)
        # x-should-retry: the CLI's SDK would otherwise retry a refusal that cannot change.
        return _error(refusal.status, refusal.error_type, refusal.reason, retry=False)

    def _time_left(self, state: _TaskState) -> float | None:
        return None if state.deadline is None else state.deadline - self._clock()

    async def _wait(self, state: _TaskState, awaitable: Awaitable[T], limit: float) -> T:
        """`awaitable`'s result, unless the task is revoked, passes its deadline, or `limit` seconds pass."""
        left = self._time_left(state)
        if state.stop.is_set():
            raise _Cut("revoked", 0.0)
        if left is not None and left <= 0:
            raise _Cut("deadline", 0.0)
        timeout = limit if left is None else min(limit, left)
        started = time.monotonic()
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(state.stop.wait())
        try:
            await asyncio.wait({work, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if work.done() and not work.cancelled():
            return work.result()
        waited = time.monotonic() - started
        if state.stop.is_set():
            raise _Cut("revoked", waited)
        raise _Cut("deadline" if left is not None and left <= limit else "idle", waited)

    # HTTP -------------------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: no router, so every path, method and encoding reaches the gateway's own checks."""
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        token = _presented_token(request)
        state = self._by_token.get(_digest(token)) if token else None
        if state is None or state.revoked:
            logger.info("model request refused: unknown or revoked token, %s %r", request.method,
                        scope.get("raw_path", b"")[:200])
            await _error(401, "authentication_error", "invalid x-api-key", retry=False)(scope, receive, send)
            return
        exchange = _Exchange(state)
        try:
            response = await self._handle(request, exchange)
            await response(scope, receive, send)
        finally:
            # Whatever way it ended: an answer still held is charged what is known (its reservation at most).
            self._settle(exchange)
            if exchange.upstream is not None:
                await exchange.upstream.aclose()

    async def _handle(self, request: Request, exchange: _Exchange) -> Response:
        state = exchange.state
        scope = request.scope
        route = match_route(request.method, scope.get("raw_path") or scope["path"].encode(),
                            scope.get("query_string", b""))
        if isinstance(route, Refusal):
            return await self._refuse(state, route)
        post = route.value
        left = self._time_left(state)
        if left is not None and left <= 0:
            return await self._refuse(state, Refusal(403, "permission_error", "deadline",
                                                     "this task's time is up: no more model requests", "POST", post))
        if state.exhausted.is_set():
            return await self._refuse(state, Refusal(429, "rate_limit_error", "budget",
                                                     "this task's model budget is spent", "POST", post))
        try:
            raw = await self._read_body(request, state)
        except _Cut as cut:
            return await self._cut_response(state, cut, post, reading=True)
        except ClientDisconnect:
            return Response(status_code=400)
        if raw is None:
            return await self._refuse(state, Refusal(413, "request_too_large", "body",
                                                     f"request body over {self._max_body} bytes", "POST", post))
        checked = check_body(route, raw, allowed_models=state.models)
        if isinstance(checked, Refusal):
            return await self._refuse(state, checked)
        reservation = (_NO_COST if route is Endpoint.COUNT_TOKENS else
                       reservation_for(checked.model, max_tokens=checked.max_tokens, body_size=len(raw),
                                       prices=self._prices))
        exchange.handle = state.account.reserve(reservation)
        if exchange.handle is None:
            return await self._refuse_over_budget(state, reservation, post)
        return await self._forward(request, exchange, checked)

    async def _refuse_over_budget(self, state: _TaskState, reservation: Reservation, post: str) -> Response:
        account = state.account
        budget, usage = account.budget, account.usage
        reason = (f"this task's model budget cannot cover the request: it reserves {reservation.total_tokens} tokens "
                  f"(${reservation.cost_usd:.4f}); spent {usage.total_tokens} tokens (${usage.cost_usd:.4f}) of "
                  f"{budget.max_tokens if budget.max_tokens is not None else 'unlimited'} tokens "
                  f"(${budget.max_cost_usd if budget.max_cost_usd is not None else 'unlimited'}), "
                  f"{account.in_flight} request(s) in flight")
        if account.in_flight == 0:
            # Nothing in flight will free room: the task cannot make its next call, so it is over.
            self._mark_exhausted(state)
        return await self._refuse(state, Refusal(429, "rate_limit_error", "budget", reason, "POST", post))

    async def _read_body(self, request: Request, state: _TaskState) -> bytes | None:
        """The body, read chunk by chunk and abandoned past `max_body` (None), never buffered whole first."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_body:
            return None
        parts: list[bytes] = []
        size = 0
        async with contextlib.aclosing(self._paced(state, request.stream())) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                if size > self._max_body:
                    return None
                parts.append(chunk)
        return b"".join(parts)

    async def _paced(self, state: _TaskState, chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
        """`chunks` as they come, each within the idle timeout of the one before; a revoked token, the task's
        deadline or the silence raises _Cut instead (a body or stream that stalls cannot hold the task)."""
        while True:
            try:
                yield await self._wait(state, anext(chunks), self._idle_timeout)
            except StopAsyncIteration:
                return

    async def _cut_response(self, state: _TaskState, cut: _Cut, post: str, *, reading: bool = False) -> Response:
        if cut.kind == "revoked":
            return _error(401, "authentication_error", "invalid x-api-key", retry=False)
        if cut.kind == "deadline":
            return await self._refuse(state, Refusal(403, "permission_error", "deadline",
                                                     "this task's time ran out during the request", "POST", post))
        if reading:
            return _error(408, "invalid_request_error", f"no request body for {self._idle_timeout:.0f} s")
        return _error(504, "timeout_error", f"the model upstream did not answer within {cut.waited:.0f} s")

    async def _forward(self, request: Request, exchange: _Exchange, checked: Checked) -> Response:
        state = exchange.state
        post = checked.endpoint.value
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_REQUEST_HEADERS}
        betas, dropped = filter_betas(request.headers.getlist("anthropic-beta"))
        if dropped:
            logger.info("model request: task=%s dropped beta flag(s) %s", state.task_id, ",".join(dropped)[:300])
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        headers.update({"anthropic-version": API_VERSION, "content-type": "application/json",
                        "x-api-key": self._api_key,
                        # Uncompressed answers let the proxy read usage out of the stream as it passes.
                        "accept-encoding": "identity"})
        query = request.scope.get("query_string", b"")
        url = self._upstream.copy_with(raw_path=self._upstream.raw_path.rstrip(b"/") + post.encode()
                                       + (b"?" + query if query else b""))
        upstream_request = self._client.build_request("POST", url, headers=headers, content=checked.body)
        try:
            upstream = await self._wait(state, self._client.send(upstream_request, stream=True),
                                        self._request_timeout)
        except _Cut as cut:
            self._release(exchange)
            if cut.kind != "revoked":
                state.failures = state.failures.failed("timeout", waited=cut.waited)
            return await self._cut_response(state, cut, post)
        except httpx.HTTPError as exc:
            self._release(exchange)
            state.failures = state.failures.failed("unreachable")
            logger.warning("model upstream failed: task=%s %s: %s", state.task_id, post, type(exc).__name__)
            return _error(502, "api_error", "the model upstream could not be reached")
        exchange.upstream = upstream
        logger.info("model request: task=%s POST %s -> %d", state.task_id, post, upstream.status_code)
        response_headers = {k: v for k, v in upstream.headers.items()
                            if k in FORWARDED_RESPONSE_HEADERS or k.startswith(FORWARDED_RESPONSE_PREFIXES)}
        if not upstream.is_success:
            # Not billed: the reservation goes back; the status is the task's failure cause if it persists.
            self._release(exchange)
            state.failures = state.failures.failed("status", status=upstream.status_code)
        else:
            state.failures = state.failures.answered()
        if upstream.is_success and upstream.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(self._relay(exchange, upstream), status_code=upstream.status_code,
                                     headers=response_headers)
        try:
            content = await self._wait(state, upstream.aread(), self._request_timeout)
        except _Cut as cut:
            return await self._cut_response(state, cut, post)
        except httpx.HTTPError as exc:
            state.failures = state.failures.failed("broken")
            logger.warning("model upstream failed: task=%s %s: %s", state.task_id, post, type(exc).__name__)
            return _error(502, "api_error", "the model upstream failed while answering")
        if upstream.is_success and checked.endpoint is Endpoint.MESSAGES:
            exchange.message.feed_json(content)
        elif upstream.is_success:
            self._release(exchange)  # count_tokens is free
        return Response(content, status_code=upstream.status_code, headers=response_headers)

    async def _relay(self, exchange: _Exchange, upstream: httpx.Response) -> AsyncIterator[bytes]:
        state = exchange.state
        parser = SSEUsageParser(exchange.message, max_event=self._max_event)
        try:
            async with contextlib.aclosing(self._paced(state, upstream.aiter_bytes())) as chunks:
                async for chunk in chunks:
                    parser.feed(chunk)
                    yield chunk
        except _Cut as cut:
            if cut.kind == "idle":
                state.failures = state.failures.failed("timeout", waited=cut.waited)
            # The status line is gone: say why in the stream, as the API does, then end it.
            why = {"revoked": "this task's model access was revoked",
                   "deadline": "this task's time ran out",
                   "idle": f"the model upstream went silent for {cut.waited:.0f} s"}[cut.kind]
            logger.warning("model stream cut: task=%s: %s", state.task_id, why)
            yield _sse_error("permission_error" if cut.kind != "idle" else "timeout_error", why)
        except httpx.HTTPError as exc:
            state.failures = state.failures.failed("broken")
            logger.warning("model stream broken: task=%s: %s", state.task_id, type(exc).__name__)

    # Lifecycle --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self._client.aclose()

    def serve_unix(self, path: str | Path) -> contextlib.AbstractAsyncContextManager[Path]:
        """Serve on a Unix socket (mode 0666, so the container's non-root user can connect)."""
        return serve_unix(self.app, path)
