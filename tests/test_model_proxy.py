"""Tests of the model gateway over HTTP: in-process through ASGI, over a real Unix socket, and the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKError, ResultMessage, query
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runner.model_proxy import Budget, ModelProxy, Price, PriceTable, Refusal, Usage, model_patterns
from runner.scripted_model import Scenario, TextBlock, ToolUseBlock, create_scripted_model, serve_scripted_model
from tests.fakes.net import free_port
from tests.fakes.runs import offline_env

REAL_KEY = "sk-ant-real-key-never-in-the-sandbox"
FORWARDER = Path(__file__).parent.parent / "sandbox-image" / "model-forwarder.py"
MODEL = "claude-sonnet-4-5"
MODELS = model_patterns(MODEL)
TOOLS = [{"name": "Bash", "description": "run a command", "input_schema": {"type": "object"}}]
SCENARIO = Scenario.of(
    [ToolUseBlock("Bash", {"command": "echo one"})],
    [TextBlock("finished")],
)
# Prices that make reservations easy to read: $1 per million input tokens, $2 per million output tokens.
PRICES = PriceTable(families={"sonnet": Price(input=1.0, output=2.0, cache_write=0, cache_read=0)},
                    default=Price(9, 9, 9, 9))


def messages_body(*, stream: bool = False, max_tokens: int = 1024, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "go"}],
            "tools": TOOLS, "stream": stream, **extra}


def proxy_client(proxy: ModelProxy) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy.app), base_url="http://proxy")


def upstream_proxy(transport: httpx.AsyncBaseTransport, **kwargs: Any) -> ModelProxy:
    """A proxy holding the real key whose upstream is `transport` (MODEL allowed unless `default_models`)."""
    kwargs.setdefault("default_models", MODELS)
    return ModelProxy("http://upstream.invalid", REAL_KEY, transport=transport, **kwargs)


def scripted_proxy(**kwargs: Any) -> tuple[ModelProxy, Any]:
    model = create_scripted_model(SCENARIO)
    return upstream_proxy(httpx.ASGITransport(app=model.app), **kwargs), model


@contextlib.contextmanager
def forwarder(socket_path: Path) -> Iterator[str]:
    """The sandbox image's TCP→UDS forwarder, run on the host: the CLI speaks TCP, the proxy a Unix socket."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(FORWARDER)],
        env={"MODEL_SOCKET": str(socket_path), "MODEL_FORWARD_PORT": str(port)},
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            if process.poll() is not None:
                raise RuntimeError("model forwarder exited")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait()


async def run_cli(prompt: str, workspace: Path, env: dict[str, str], *, model: str | None = MODEL,
                  tools: list[str] | None = None) -> ResultMessage | None:
    options = ClaudeAgentOptions(cwd=str(workspace), env=env, allowed_tools=tools or ["Write", "Bash"],
                                 permission_mode="default", model=model, setting_sources=[])
    result: ResultMessage | None = None
    async with asyncio.timeout(120):
        try:
            async for message in query(prompt=prompt, options=options):
                if isinstance(message, ResultMessage):
                    result = message
        except ClaudeSDKError:
            # Recent SDKs raise once the CLI reports an error result; the ResultMessage came first.
            pass
    return result


class Audit:
    """The supervisor's audit sink as the proxy sees it: an async callback, here a list."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, Refusal]] = []

    async def __call__(self, task_id: str, refusal: Refusal) -> None:
        self.rows.append((task_id, refusal))


# Tokens, forwarding, usage --------------------------------------------------------------------------


async def test_proxy_replaces_task_token_with_real_key() -> None:
    proxy, model = scripted_proxy()
    token = proxy.issue_token("t1", Budget())
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages?beta=true", json=messages_body(), headers={"x-api-key": token})
    assert response.status_code == 200 and response.json()["content"][0]["name"] == "Bash"
    assert model.requests[0].headers["x-api-key"] == REAL_KEY
    assert model.requests[0].query == "beta=true"
    assert token not in json.dumps([dict(r.headers) for r in model.requests])


async def test_proxy_accepts_bearer_token() -> None:
    proxy, model = scripted_proxy()
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", json=messages_body(), headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert "authorization" not in model.requests[0].headers
    assert model.requests[0].headers["x-api-key"] == REAL_KEY


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "guessed"}, {"authorization": "Basic Zm9vOmJhcg=="}])
async def test_proxy_refuses_missing_or_unknown_token(headers: dict[str, str]) -> None:
    proxy, model = scripted_proxy()
    proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", json=messages_body(), headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }
    assert model.requests == []


async def test_proxy_refuses_revoked_token_but_keeps_usage() -> None:
    proxy, model = scripted_proxy()
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        assert (
            await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
        ).status_code == 200
        proxy.revoke("t1")
        response = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
    assert response.status_code == 401 and response.headers["x-should-retry"] == "false"
    assert len(model.requests) == 1
    assert proxy.usage("t1").requests == 1


async def test_proxy_reissue_replaces_the_old_token() -> None:
    proxy, _ = scripted_proxy()
    old = proxy.issue_token("t1")
    new = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        assert (await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": old})).status_code == 401
        assert (await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": new})).status_code == 200


async def test_proxy_counts_streamed_usage_and_cost() -> None:
    proxy, _ = scripted_proxy(prices=PRICES)
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", json=messages_body(stream=True), headers={"x-api-key": token})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    start = next(e for e in events if e["type"] == "message_start")["message"]["usage"]
    delta = next(e for e in events if e["type"] == "message_delta")["usage"]
    usage = proxy.usage("t1")
    assert (usage.input_tokens, usage.output_tokens, usage.requests, usage.unmetered) == (
        start["input_tokens"], delta["output_tokens"], 1, 0)
    assert usage.cost_usd == pytest.approx((usage.input_tokens * 1.0 + usage.output_tokens * 2.0) / 1e6)


async def test_proxy_counts_json_usage_per_task() -> None:
    proxy, _ = scripted_proxy()
    first, second = proxy.issue_token("a"), proxy.issue_token("b")
    async with proxy, proxy_client(proxy) as client:
        body = (await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": first})).json()
        await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": first})
    assert proxy.usage("a").input_tokens == 2 * body["usage"]["input_tokens"]
    assert proxy.usage("a").output_tokens == 2 * body["usage"]["output_tokens"]
    assert proxy.usage("b") == Usage()
    assert second != first


async def test_proxy_forwards_count_tokens_free_of_charge() -> None:
    proxy, model = scripted_proxy()
    token = proxy.issue_token("t1", Budget(max_tokens=10))
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages/count_tokens?beta=true", headers={"x-api-key": token},
                                     json={"model": MODEL, "messages": [{"role": "user", "content": "go"}]})
    assert response.status_code == 200 and response.json()["input_tokens"] > 0
    assert [r.path for r in model.requests] == ["/v1/messages/count_tokens"]
    assert proxy.usage("t1").total_tokens == 0


async def test_proxy_forwards_only_whitelisted_headers_and_known_betas() -> None:
    proxy, model = scripted_proxy()
    token = proxy.issue_token("t1")
    headers = {
        "x-api-key": token,
        "anthropic-version": "2099-01-01",
        "anthropic-beta": "claude-code-20250219,mcp-client-2025-04-04, files-api-2025-04-14,effort-2025-11-24",
        "user-agent": "claude-cli/test",
        "cookie": "session=steal-me",
        "x-forwarded-for": "10.0.0.1",
        "proxy-authorization": "Basic abc",
        "connection": "keep-alive, x-secret",
        "x-secret": "hop",
        "anthropic-dangerous-direct-browser-access": "true",
    }
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", json=messages_body(), headers=headers)
    assert response.status_code == 200  # unknown flags are dropped, not refused
    received = model.requests[0].headers
    assert received["anthropic-version"] == "2023-06-01"
    assert received["anthropic-beta"] == "claude-code-20250219,effort-2025-11-24"
    assert received["user-agent"] == "claude-cli/test"
    for dropped in ("cookie", "x-forwarded-for", "proxy-authorization", "x-secret", "authorization",
                    "anthropic-dangerous-direct-browser-access"):
        assert dropped not in received
    assert proxy.refusals("t1") == ()


async def test_proxy_forwards_the_checked_body_not_the_raw_bytes() -> None:
    proxy, model = scripted_proxy()
    token = proxy.issue_token("t1")
    raw = json.dumps(messages_body(), indent=4).encode()
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", content=raw, headers={"x-api-key": token,
                                                                           "content-type": "text/plain"})
    assert response.status_code == 200
    assert model.requests[0].json == messages_body()
    assert model.requests[0].headers["content-type"] == "application/json"


# Refusals: what never reaches the upstream -----------------------------------------------------------


WEB_FETCH = {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 5}
MCP = [{"type": "url", "url": "https://attacker.example/sse", "name": "exfil"}]


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), [
    ("POST", "/v1/messages/batches", {"requests": []}, 404, "path"),
    ("GET", "/v1/files", None, 404, "path"),
    ("GET", "/v1/models", None, 404, "path"),
    ("GET", "/v1/messages", None, 405, "method"),
    ("DELETE", "/v1/messages", None, 405, "method"),
    ("POST", "/v1/messages?beta=true&debug=1", messages_body(), 400, "query"),
    ("POST", "/v1/messages", messages_body(mcp_servers=MCP), 400, "mcp_servers"),
    ("POST", "/v1/messages", messages_body(container="container_01"), 400, "container"),
    ("POST", "/v1/messages", messages_body(tools=[*TOOLS, WEB_FETCH]), 400, "tools[1]"),
    ("POST", "/v1/messages", messages_body(model="claude-opus-4-1"), 403, "model"),
    ("POST", "/v1/messages/count_tokens", {"model": MODEL, "messages": [], "tools": [WEB_FETCH]}, 400, "tools[0]"),
])
async def test_proxy_refuses_audits_and_never_forwards(method: str, path: str, body: Any, status: int,
                                                       field: str) -> None:
    audit = Audit()
    proxy, model = scripted_proxy(on_refusal=audit)
    token = proxy.issue_token("t1")
    headers = {"x-api-key": token, "anthropic-beta": "mcp-client-2025-04-04"}
    async with proxy, proxy_client(proxy) as client:
        response = await client.request(method, path, json=body, headers=headers)
    assert response.status_code == status and response.headers["x-should-retry"] == "false"
    error = response.json()
    assert error["type"] == "error" and error["error"]["message"]
    assert model.requests == []
    [(task_id, refusal)] = audit.rows
    assert task_id == "t1" and refusal.field == field and refusal.status == status
    assert proxy.refusals("t1") == (refusal,)
    assert error["error"]["message"] == refusal.reason


@contextlib.asynccontextmanager
async def serving(proxy: ModelProxy, path: Path) -> AsyncIterator[Path]:
    async with asyncio.timeout(20), proxy, proxy.serve_unix(path) as socket_path:
        yield socket_path


async def raw_http(socket_path: Path, head: bytes, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """One request written byte for byte (no client library normalises the path), over the real socket."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(head + b"\r\n\r\n" + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize("target", [
    b"/v1/../v1/messages", b"/v1/messages/../messages", b"/v1/%2e%2e/v1/messages", b"/v1/%2E%2E/%2E%2E/admin",
    b"/v1/messages%2fbatches", b"/v1/messages%2F..%2Fbatches", b"//v1/messages", b"/v1//messages",
    b"/v1/./messages", b"/v1/messages/", b"/v1/messages;x", b"/v1/%6dessages",
])
async def test_proxy_refuses_traversal_and_encoding_variants_over_a_real_socket(tmp_path: Path,
                                                                               target: bytes) -> None:
    audit = Audit()
    proxy, model = scripted_proxy(on_refusal=audit)
    token = proxy.issue_token("t1")
    body = json.dumps(messages_body()).encode()
    async with serving(proxy, tmp_path / "model.sock") as socket_path:
        status, error = await raw_http(
            socket_path, b"POST " + target + b"?beta=true HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-type: application/json\r\nx-api-key: " + token.encode()
            + b"\r\ncontent-length: " + str(len(body)).encode(), body)
        # The same socket serves the plain route: the refusal was the path's, nothing else.
        ok, _ = await raw_http(socket_path, b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                               b"x-api-key: " + token.encode() + b"\r\ncontent-length: " + str(len(body)).encode(),
                               body)
    assert status == 404 and error["error"]["type"] == "not_found_error"
    assert ok == 200 and len(model.requests) == 1 and model.requests[0].path == "/v1/messages"
    assert [r.field for _, r in audit.rows] == ["path"]
    assert target.decode() in audit.rows[0][1].path


async def test_proxy_stops_reading_an_oversized_body_sent_slowly(tmp_path: Path) -> None:
    """The cap holds while the body arrives: the refusal comes after ~max_body bytes, not after the whole body."""
    audit = Audit()
    proxy, model = scripted_proxy(on_refusal=audit, max_body=64 * 1024)
    token = proxy.issue_token("t1")
    async with serving(proxy, tmp_path / "model.sock") as socket_path:
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        writer.write(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                     b"x-api-key: " + token.encode() + b"\r\n\r\n")
        answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))  # the status line and headers
        sent = 0
        piece = b"x" * 4096
        with contextlib.suppress(ConnectionError):
            while not answer.done() and sent < 100 * 1024 * 1024:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                sent += len(piece)
                await asyncio.sleep(0.002)
        data = await answer
        writer.close()
    assert data.startswith(b"HTTP/1.1 413")
    assert 64 * 1024 < sent < 1024 * 1024, sent
    assert model.requests == []
    assert [r.field for _, r in audit.rows] == ["body"]


async def test_proxy_refuses_a_declared_oversized_body_without_reading_it() -> None:
    proxy, model = scripted_proxy(max_body=1000)
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", content=b"x" * 5000, headers={"x-api-key": token})
    assert response.status_code == 413 and response.json()["error"]["type"] == "request_too_large"
    assert model.requests == []


async def test_proxy_keeps_and_audits_only_the_first_refusals() -> None:
    audit = Audit()
    proxy, _ = scripted_proxy(on_refusal=audit, max_refusals=3)
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        for _ in range(5):
            assert (await client.get("/v1/files", headers={"x-api-key": token})).status_code == 404
    assert len(audit.rows) == 3 and len(proxy.refusals("t1")) == 3


async def test_proxy_refuses_even_when_the_audit_sink_fails(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(task_id: str, refusal: Refusal) -> None:
        raise RuntimeError("database is locked")

    proxy, model = scripted_proxy(on_refusal=broken)
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", json=messages_body(mcp_servers=MCP), headers={"x-api-key": token})
    assert response.status_code == 400 and model.requests == []
    assert "recording a model refusal failed" in caplog.text


# Budgets ---------------------------------------------------------------------------------------------


async def test_proxy_refuses_a_request_whose_reservation_does_not_fit() -> None:
    spent: list[tuple[str, Usage]] = []
    proxy, model = scripted_proxy(prices=PRICES, on_exhausted=lambda task_id, usage: spent.append((task_id, usage)))
    token = proxy.issue_token("t1", Budget(max_tokens=1000))
    other = proxy.issue_token("t2", Budget(max_tokens=1_000_000))
    async with proxy, proxy_client(proxy) as client:
        refused = await client.post("/v1/messages", json=messages_body(max_tokens=1024), headers={"x-api-key": token})
        unaffected = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": other})
    assert refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "cannot cover the request" in refused.json()["error"]["message"]
    assert unaffected.status_code == 200 and len(model.requests) == 1
    # Nothing was in flight to free room: the task cannot go on, and the supervisor is told.
    assert proxy.exhausted("t1").is_set() and not proxy.exhausted("t2").is_set()
    assert [task_id for task_id, _ in spent] == ["t1"]
    assert proxy.refusals("t1")[0].field == "budget"


async def test_proxy_cuts_task_off_on_cost_budget() -> None:
    proxy, model = scripted_proxy(prices=PRICES)
    # Room for one request's reservation (1024 output + ~60 input tokens, about $0.0021) and not two.
    token = proxy.issue_token("t1", Budget(max_cost_usd=0.003))
    async with proxy, proxy_client(proxy) as client:
        first = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
        second = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
        third = await client.post("/v1/messages", json=messages_body(max_tokens=1500), headers={"x-api-key": token})
    assert first.status_code == 200 and second.status_code == 200  # settled small: the room came back
    assert third.status_code == 429 and len(model.requests) == 2
    assert proxy.usage("t1").cost_usd <= 0.003


@contextlib.asynccontextmanager
async def held_upstream(tmp_path: Path, release: asyncio.Event,
                        answer: Callable[[Request], Awaitable[Response]] | None = None,
                        ) -> AsyncIterator[tuple[httpx.AsyncBaseTransport, list[Request]]]:
    """An upstream on a real socket that holds every request until `release` is set."""
    arrived: list[Request] = []

    async def messages(request: Request) -> Response:
        arrived.append(request)
        await release.wait()
        if answer is not None:
            return await answer(request)
        return JSONResponse({"type": "message", "model": MODEL, "content": [],
                             "usage": {"input_tokens": 10, "output_tokens": 5}})

    upstream_socket = tmp_path / "upstream.sock"
    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, uds=str(upstream_socket), log_level="warning", lifespan="off",
                                           ws="none"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield httpx.AsyncHTTPTransport(uds=str(upstream_socket)), arrived
    finally:
        release.set()
        server.should_exit = True
        await task


async def test_proxy_forwards_only_as_many_parallel_requests_as_the_budget_covers(tmp_path: Path) -> None:
    """Five parallel requests on a budget that covers two reservations: two reach the upstream, three are refused,
    and what was spent stays under the cap (each was forwarded while all five were in flight)."""
    release = asyncio.Event()
    async with held_upstream(tmp_path, release) as (upstream, arrived):
        proxy = ModelProxy("http://upstream", REAL_KEY, transport=upstream, prices=PRICES, default_models=MODELS)
        # Each reserves 1000 output tokens ($0.002) plus its input estimate: two fit in $0.005, three do not.
        token = proxy.issue_token("t1", Budget(max_cost_usd=0.005))
        async with proxy, proxy_client(proxy) as client:
            sends = [asyncio.ensure_future(client.post("/v1/messages", json=messages_body(max_tokens=1000),
                                                       headers={"x-api-key": token})) for _ in range(5)]
            async with asyncio.timeout(10):
                while len(arrived) + len(proxy.refusals("t1")) < 5:
                    await asyncio.sleep(0.01)
            assert len(arrived) == 2
            release.set()
            responses = await asyncio.gather(*sends)
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429, 429]
    assert [r.field for r in proxy.refusals("t1")] == ["budget"] * 3
    usage = proxy.usage("t1")
    assert (usage.input_tokens, usage.output_tokens, usage.requests) == (20, 10, 2)
    assert not proxy.exhausted("t1").is_set()  # refused while others were in flight: not the task's end


def sse(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


@contextlib.asynccontextmanager
async def gated_upstream(tmp_path: Path, release: asyncio.Event,
                         closed: asyncio.Event | None = None) -> AsyncIterator[httpx.AsyncBaseTransport]:
    """An upstream on a real socket (httpx's ASGITransport would buffer the answer) that stalls mid-stream."""

    async def events() -> AsyncIterator[bytes]:
        try:
            yield sse({"type": "message_start", "message": {"model": "claude-haiku", "usage": {"input_tokens": 7}}})
            await release.wait()
            yield sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})
            yield sse({"type": "message_stop"})
        finally:
            if closed is not None:
                closed.set()

    async def messages(request: Request) -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream")

    upstream_socket = tmp_path / "upstream.sock"
    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, uds=str(upstream_socket), log_level="warning", lifespan="off", ws="none")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield httpx.AsyncHTTPTransport(uds=str(upstream_socket))
    finally:
        release.set()
        server.should_exit = True
        await task


def unix_client(socket_path: Path) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket_path)), base_url="http://localhost")


async def test_proxy_streams_chunks_as_they_arrive_over_unix_socket(tmp_path: Path) -> None:
    release = asyncio.Event()
    socket_path = tmp_path / "sock" / "model.sock"
    async with gated_upstream(tmp_path, release) as upstream:
        proxy = ModelProxy("http://upstream", REAL_KEY, transport=upstream, default_models=["claude-haiku*"])
        token = proxy.issue_token("t1")
        async with serving(proxy, socket_path):
            assert stat.S_IMODE(socket_path.stat().st_mode) == 0o666
            body = messages_body(stream=True, model="claude-haiku-4-5")
            async with unix_client(socket_path) as client, client.stream(
                    "POST", "/v1/messages", json=body, headers={"x-api-key": token}) as response:
                chunks = response.aiter_bytes()
                first = await anext(chunks)
                assert b"message_start" in first and not release.is_set()
                release.set()
                rest = b"".join([chunk async for chunk in chunks])
    assert b"message_stop" in rest
    usage = proxy.usage("t1")
    assert (usage.input_tokens, usage.output_tokens, usage.unmetered) == (7, 3, 0)
    assert usage.cost_usd == pytest.approx((7 * 1.0 + 3 * 5.0) / 1e6)
    assert not socket_path.exists()


async def test_proxy_charges_a_stream_the_client_abandoned_its_reserved_output(tmp_path: Path) -> None:
    release = asyncio.Event()
    async with gated_upstream(tmp_path, release) as upstream:
        proxy = ModelProxy("http://upstream", REAL_KEY, transport=upstream, default_models=["claude-haiku*"])
        token = proxy.issue_token("t1")
        async with serving(proxy, tmp_path / "model.sock") as socket_path, unix_client(socket_path) as client:
            body = messages_body(stream=True, model="claude-haiku-4-5", max_tokens=500)
            async with client.stream("POST", "/v1/messages", json=body, headers={"x-api-key": token}) as response:
                await anext(response.aiter_bytes())
            async with asyncio.timeout(10):
                while proxy.usage("t1").input_tokens == 0:
                    await asyncio.sleep(0.01)
    # The input count came in message_start; how much output the upstream made before the cut is unknown.
    usage = proxy.usage("t1")
    assert (usage.input_tokens, usage.output_tokens, usage.unmetered) == (7, 500, 1)


async def test_proxy_cuts_a_stream_at_the_next_chunk_after_revoke(tmp_path: Path) -> None:
    release, closed = asyncio.Event(), asyncio.Event()
    async with gated_upstream(tmp_path, release, closed) as upstream:
        proxy = ModelProxy("http://upstream", REAL_KEY, transport=upstream, default_models=["claude-haiku*"])
        token = proxy.issue_token("t1")
        async with serving(proxy, tmp_path / "model.sock") as socket_path, unix_client(socket_path) as client:
            body = messages_body(stream=True, model="claude-haiku-4-5", max_tokens=500)
            async with client.stream("POST", "/v1/messages", json=body, headers={"x-api-key": token}) as response:
                chunks = response.aiter_bytes()
                assert b"message_start" in await anext(chunks)
                proxy.revoke("t1")  # the upstream is still stalled: the cut must not wait for it
                async with asyncio.timeout(5):
                    rest = b"".join([chunk async for chunk in chunks])
                    await closed.wait()  # and the upstream's stream was closed
                assert not release.is_set()  # cut while the upstream was still stalled
    assert b"event: error" in rest and b"revoked" in rest and b"message_stop" not in rest
    assert proxy.usage("t1").output_tokens == 500  # charged its reservation: the answer was cut


# Deadlines and upstream failures ---------------------------------------------------------------------


async def test_proxy_refuses_new_requests_past_the_task_deadline() -> None:
    now = [1000.0]
    audit = Audit()
    proxy, model = scripted_proxy(clock=lambda: now[0], on_refusal=audit)
    token = proxy.issue_token("t1", time_limit=60)
    async with proxy, proxy_client(proxy) as client:
        first = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
        assert first.status_code == 200
        now[0] += 61
        late = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
    assert late.status_code == 403 and late.json()["error"]["type"] == "permission_error"
    assert "time is up" in late.json()["error"]["message"]
    assert len(model.requests) == 1 and [r.field for _, r in audit.rows] == ["deadline"]


async def test_proxy_cuts_a_request_the_upstream_never_answers_at_the_deadline(tmp_path: Path) -> None:
    """An upstream that never answers held a request for the 120 s idle timeout, past the task's wall time."""
    never = asyncio.Event()
    async with held_upstream(tmp_path, never) as (upstream, arrived):
        proxy = ModelProxy("http://upstream", REAL_KEY, transport=upstream, default_models=MODELS)
        token = proxy.issue_token("t1", time_limit=0.5)
        async with proxy, proxy_client(proxy) as client:
            started = time.monotonic()
            async with asyncio.timeout(10):
                response = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
            waited = time.monotonic() - started
    assert response.status_code == 403 and "time ran out" in response.json()["error"]["message"]
    assert len(arrived) == 1 and waited < 5
    failures = proxy.upstream_failures("t1")
    assert (failures.count, failures.last_kind) == (1, "timeout")
    assert failures.describe().startswith("the model upstream did not answer within")
    assert proxy.usage("t1").total_tokens == 0  # nothing was answered, nothing billed


async def test_proxy_reports_an_upstream_answering_500_as_the_failure_cause() -> None:
    calls = 0

    def failing(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls <= 8:
            return httpx.Response(500, json={"type": "error", "error": {"type": "api_error", "message": "boom"}})
        return httpx.Response(200, json={"type": "message", "usage": {"input_tokens": 1, "output_tokens": 1}})

    proxy = upstream_proxy(httpx.MockTransport(failing))
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        for _ in range(8):
            response = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
            assert response.status_code == 500 and response.json()["error"]["message"] == "boom"
        failures = proxy.upstream_failures("t1")
        assert (failures.count, failures.repeats, failures.last_kind, failures.last_status) == (8, 8, "status", 500)
        assert failures.describe() == "the model upstream answered 500 8 times"
        assert proxy.usage("t1").total_tokens == 0  # errors are not billed: the reservations came back
        assert (await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})).is_success
    assert proxy.upstream_failures("t1").repeats == 0 and proxy.upstream_failures("t1").count == 8


async def test_proxy_maps_unreachable_upstream_to_502_and_records_it() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    proxy = upstream_proxy(httpx.MockTransport(refuse))
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        for _ in range(2):
            response = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
    assert response.status_code == 502
    assert response.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": "the model upstream could not be reached"},
    }
    assert proxy.upstream_failures("t1").describe() == "the model upstream could not be reached (2 times)"


async def test_proxy_maps_upstream_timeout_to_504_and_records_it() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200)

    proxy = upstream_proxy(httpx.MockTransport(slow), request_timeout=0.05)
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
    assert response.status_code == 504 and response.json()["error"]["type"] == "timeout_error"
    failures = proxy.upstream_failures("t1")
    assert failures.last_kind == "timeout" and failures.waited_seconds is not None and failures.waited_seconds < 1


async def test_proxy_never_logs_key_or_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy, _ = scripted_proxy(on_exhausted=lambda task_id, usage: None)
    token = proxy.issue_token("t1", Budget(max_tokens=3000))
    async with proxy, proxy_client(proxy) as client:
        for _ in range(3):
            await client.post("/v1/messages", json=messages_body(stream=True), headers={"x-api-key": token})
        await client.post("/v1/messages", json=messages_body(mcp_servers=MCP), headers={"x-api-key": token})
        proxy.revoke("t1")
        await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
    assert caplog.records
    assert REAL_KEY not in caplog.text and token not in caplog.text
    assert REAL_KEY not in repr(proxy) and token not in repr(proxy)


# The real CLI ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_proxy_real_cli_through_forwarder_holds_only_its_token(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    scenario = Scenario.of(
        [ToolUseBlock("Write", {"file_path": str(workspace / "hello.txt"), "content": "hi\n"})],
        [ToolUseBlock("Bash", {"command": "env > seen-env.txt", "description": "dump the environment"})],
        final_text="All done.",
    )
    exhausted: list[str] = []
    audit = Audit()
    async with serve_scripted_model(scenario) as upstream:
        proxy = ModelProxy(upstream.base_url, REAL_KEY, on_exhausted=lambda task_id, usage: exhausted.append(task_id),
                           on_refusal=audit, default_models=MODELS)
        token = proxy.issue_token("task-1", Budget(max_tokens=10_000_000))
        socket_path = tmp_path / "run" / "model.sock"
        async with proxy, proxy.serve_unix(socket_path):
            with forwarder(socket_path) as base_url:
                result = await run_cli(
                    "write hello.txt, then dump env", workspace, offline_env(base_url, token, tmp_path / "cfg")
                )
                assert result is not None and not result.is_error and result.result == "All done."
                usage = proxy.usage("task-1")

                proxy.revoke("task-1")
                async with httpx.AsyncClient(base_url=base_url) as client:
                    revoked = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
                assert revoked.status_code == 401

                # A second task whose budget cannot cover one request: the CLI's first call is refused.
                small = proxy.issue_token("task-2", Budget(max_tokens=1000))
                (workspace / "hello.txt").unlink()
                before = len(upstream.requests)
                cut = await run_cli("again", workspace, offline_env(base_url, small, tmp_path / "cfg2"))
                assert cut is not None and cut.is_error and "429" in (cut.result or "")
                assert len(upstream.requests) == before
                assert proxy.exhausted("task-2").is_set() and exhausted == ["task-2"]

    assert (workspace / "seen-env.txt").exists()
    seen_env = (workspace / "seen-env.txt").read_text()
    assert f"ANTHROPIC_API_KEY={token}" in seen_env and REAL_KEY not in seen_env
    agent_requests = [r for r in upstream.requests if r.kind == "agent"]
    assert [r.turn for r in agent_requests[:3]] == [0, 1, None]
    for recorded in upstream.requests:
        assert recorded.headers["x-api-key"] == REAL_KEY
        assert token not in json.dumps(recorded.headers) and small not in json.dumps(recorded.headers)
    # The proxy's count agrees with the CLI's own, and the CLI's own calls were never refused.
    assert result.usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (result.usage["input_tokens"], result.usage["output_tokens"])
    assert usage.requests == 3 and usage.cost_usd > 0 and usage.unmetered == 0
    assert [(t, r.field) for t, r in audit.rows] == [("task-2", "budget")]


async def test_proxies_ending_out_of_order_leave_the_process_signal_handlers_alone(tmp_path: Path) -> None:
    """uvicorn restores the SIGTERM handler it found when a server ends; two task proxies that end out of order
    left a dead server's handler installed, and the supervisor ignored SIGTERM."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    async with ModelProxy("http://127.0.0.1:9", "unused") as proxy:
        first = proxy.serve_unix(tmp_path / "a.sock")
        second = proxy.serve_unix(tmp_path / "b.sock")
        await first.__aenter__()
        await second.__aenter__()
        await first.__aexit__(None, None, None)  # the first task ends first: not the reverse of starting
        await second.__aexit__(None, None, None)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


async def test_proxy_serves_on_a_socket_path_longer_than_bind_allows(tmp_path: Path) -> None:
    """A deep AGENT_RUNNER_HOME put the task's socket past bind()'s 107-byte limit and failed every task."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    async with ModelProxy("http://127.0.0.1:9", "unused") as proxy, proxy.serve_unix(deep / "model.sock") as path:
        assert len(str(path)) > 108 and stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666
        directory = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)  # the client needs a short path as well
        try:
            transport = httpx.AsyncHTTPTransport(uds=f"/proc/self/fd/{directory}/model.sock")
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
                answer = await client.get("/v1/nothing-here")
        finally:
            os.close(directory)
    assert answer.status_code == 401  # the proxy answered over the socket
    assert not (deep / "model.sock").exists()
