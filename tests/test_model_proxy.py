"""Tests of the model proxy: in-process through ASGI, streaming over a real Unix socket, and the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKError, ResultMessage, query
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from runner.model_proxy import DEFAULT_PRICES, Budget, ModelProxy, Price, PriceTable, Usage
from runner.scripted_model import Scenario, TextBlock, ToolUseBlock, create_scripted_model, serve_scripted_model

REAL_KEY = "sk-ant-real-key-never-in-the-sandbox"
FORWARDER = Path(__file__).parent.parent / "sandbox-image" / "model-forwarder.py"
TOOLS = [{"name": "Bash", "description": "run a command", "input_schema": {"type": "object"}}]
SCENARIO = Scenario.of(
    [ToolUseBlock("Bash", {"command": "echo one"})],
    [TextBlock("finished")],
)


def messages_body(*, stream: bool = False) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-test",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "go"}],
        "tools": TOOLS,
        "stream": stream,
    }


def proxy_client(proxy: ModelProxy) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy.app), base_url="http://proxy")


def scripted_proxy(**kwargs: Any) -> tuple[ModelProxy, Any]:
    model = create_scripted_model(SCENARIO)
    proxy = ModelProxy("http://upstream.invalid", REAL_KEY, transport=httpx.ASGITransport(app=model.app), **kwargs)
    return proxy, model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def offline_env(base_url: str, api_key: str, config_dir: Path) -> dict[str, str]:
    return {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": api_key,
        "CLAUDE_CONFIG_DIR": str(config_dir),
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }


async def run_cli(prompt: str, workspace: Path, env: dict[str, str]) -> ResultMessage | None:
    options = ClaudeAgentOptions(
        cwd=str(workspace), env=env, allowed_tools=["Write", "Bash"], permission_mode="default"
    )
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


def test_price_table_picks_family_by_model_name() -> None:
    assert DEFAULT_PRICES.for_model("claude-haiku-4-5").output == 5.0
    assert DEFAULT_PRICES.for_model("claude-sonnet-4-5-20250929").input == 3.0
    assert DEFAULT_PRICES.for_model("some-new-model") == DEFAULT_PRICES.default


def test_usage_exceeds_budget_on_either_axis() -> None:
    usage = Usage(input_tokens=60, output_tokens=40, cost_usd=0.5)
    assert usage.exceeds(Budget(max_tokens=100))
    assert not usage.exceeds(Budget(max_tokens=101))
    assert usage.exceeds(Budget(max_cost_usd=0.5))
    assert not usage.exceeds(Budget())


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
    prices = PriceTable(
        families={"sonnet": Price(input=1.0, output=2.0, cache_write=0, cache_read=0)}, default=Price(9, 9, 9, 9)
    )
    proxy, _ = scripted_proxy(prices=prices)
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", json=messages_body(stream=True), headers={"x-api-key": token})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    start = next(e for e in events if e["type"] == "message_start")["message"]["usage"]
    delta = next(e for e in events if e["type"] == "message_delta")["usage"]
    usage = proxy.usage("t1")
    assert (usage.input_tokens, usage.output_tokens, usage.requests) == (
        start["input_tokens"],
        delta["output_tokens"],
        1,
    )
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


async def test_proxy_cuts_task_off_when_budget_is_spent() -> None:
    spent: list[tuple[str, Usage]] = []
    proxy, model = scripted_proxy(on_exhausted=lambda task_id, usage: spent.append((task_id, usage)))
    token = proxy.issue_token("t1", Budget(max_tokens=1))
    other = proxy.issue_token("t2", Budget(max_tokens=1_000_000))
    async with proxy, proxy_client(proxy) as client:
        first = await client.post("/v1/messages", json=messages_body(stream=True), headers={"x-api-key": token})
        refused = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
        unaffected = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": other})
    assert first.status_code == 200
    assert refused.status_code == 429 and refused.headers["x-should-retry"] == "false"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert unaffected.status_code == 200
    assert proxy.exhausted("t1").is_set() and not proxy.exhausted("t2").is_set()
    assert [task_id for task_id, _ in spent] == ["t1"]
    assert len(model.requests) == 2


async def test_proxy_cuts_task_off_on_cost_budget() -> None:
    proxy, _ = scripted_proxy()
    token = proxy.issue_token("t1", Budget(max_cost_usd=1e-9))
    async with proxy, proxy_client(proxy) as client:
        await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
        refused = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
    assert refused.status_code == 429 and proxy.exhausted("t1").is_set()


async def test_proxy_forwards_only_whitelisted_headers() -> None:
    proxy, model = scripted_proxy()
    token = proxy.issue_token("t1")
    headers = {
        "x-api-key": token,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219",
        "user-agent": "claude-cli/test",
        "cookie": "session=steal-me",
        "x-forwarded-for": "10.0.0.1",
        "proxy-authorization": "Basic abc",
        "connection": "keep-alive, x-secret",
        "x-secret": "hop",
    }
    async with proxy, proxy_client(proxy) as client:
        await client.post("/v1/messages", json=messages_body(), headers=headers)
    received = model.requests[0].headers
    assert received["anthropic-version"] == "2023-06-01"
    assert received["anthropic-beta"] == "claude-code-20250219"
    assert received["user-agent"] == "claude-cli/test"
    for dropped in ("cookie", "x-forwarded-for", "proxy-authorization", "x-secret", "authorization"):
        assert dropped not in received


async def test_proxy_refuses_paths_outside_v1() -> None:
    proxy, model = scripted_proxy()
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.get("/admin", headers={"x-api-key": token})
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert model.requests == []


async def test_proxy_passes_upstream_errors_through() -> None:
    proxy, _ = scripted_proxy()
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/unknown", json={}, headers={"x-api-key": token})
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"
    assert proxy.usage("t1").total_tokens == 0


async def test_proxy_maps_unreachable_upstream_to_502() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    proxy = ModelProxy("http://upstream.invalid", REAL_KEY, transport=httpx.MockTransport(refuse))
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
    assert response.status_code == 502
    assert response.json() == {
        "type": "error",
        "error": {"type": "api_error", "message": "the model upstream could not be reached"},
    }


async def test_proxy_maps_upstream_timeout_to_502() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200)

    proxy = ModelProxy("http://upstream.invalid", REAL_KEY, transport=httpx.MockTransport(slow), request_timeout=0.05)
    token = proxy.issue_token("t1")
    async with proxy, proxy_client(proxy) as client:
        response = await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
    assert response.status_code == 502 and response.json()["error"]["type"] == "api_error"


async def test_proxy_never_logs_key_or_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    proxy, _ = scripted_proxy(on_exhausted=lambda task_id, usage: None)
    token = proxy.issue_token("t1", Budget(max_tokens=1))
    async with proxy, proxy_client(proxy) as client:
        for _ in range(2):
            await client.post("/v1/messages", json=messages_body(stream=True), headers={"x-api-key": token})
        proxy.revoke("t1")
        await client.post("/v1/messages", json=messages_body(), headers={"x-api-key": token})
    assert caplog.records
    assert REAL_KEY not in caplog.text and token not in caplog.text
    assert REAL_KEY not in repr(proxy) and token not in repr(proxy)


def sse(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


@contextlib.asynccontextmanager
async def gated_upstream(tmp_path: Path, release: asyncio.Event) -> AsyncIterator[httpx.AsyncBaseTransport]:
    """An upstream on a real socket (httpx's ASGITransport would buffer the answer) that stalls mid-stream."""

    async def events() -> AsyncIterator[bytes]:
        yield sse({"type": "message_start", "message": {"model": "claude-haiku", "usage": {"input_tokens": 7}}})
        await release.wait()
        yield sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})
        yield sse({"type": "message_stop"})

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


async def test_proxy_streams_chunks_as_they_arrive_over_unix_socket(tmp_path: Path) -> None:
    release = asyncio.Event()
    socket_path = tmp_path / "sock" / "model.sock"
    async with gated_upstream(tmp_path, release) as upstream:
        proxy = ModelProxy("http://upstream", REAL_KEY, transport=upstream)
        token = proxy.issue_token("t1")
        async with asyncio.timeout(10), proxy, proxy.serve_unix(socket_path):
            assert stat.S_IMODE(socket_path.stat().st_mode) == 0o666
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://localhost") as client,
                client.stream(
                    "POST", "/v1/messages", json=messages_body(stream=True), headers={"x-api-key": token}
                ) as response,
            ):
                chunks = response.aiter_bytes()
                first = await anext(chunks)
                assert b"message_start" in first and not release.is_set()
                release.set()
                rest = b"".join([chunk async for chunk in chunks])
    assert b"message_stop" in rest
    usage = proxy.usage("t1")
    assert (usage.input_tokens, usage.output_tokens) == (7, 3)
    assert usage.cost_usd == pytest.approx((7 * 1.0 + 3 * 5.0) / 1e6)
    assert not socket_path.exists()


async def test_proxy_charges_a_stream_the_client_abandoned(tmp_path: Path) -> None:
    release = asyncio.Event()
    socket_path = tmp_path / "model.sock"
    async with gated_upstream(tmp_path, release) as upstream:
        proxy = ModelProxy("http://upstream", REAL_KEY, transport=upstream)
        token = proxy.issue_token("t1")
        async with asyncio.timeout(10), proxy, proxy.serve_unix(socket_path):
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
                async with client.stream(
                    "POST", "/v1/messages", json=messages_body(stream=True), headers={"x-api-key": token}
                ) as response:
                    await anext(response.aiter_bytes())
                release.set()
                while proxy.usage("t1").input_tokens == 0:
                    await asyncio.sleep(0.01)
    assert proxy.usage("t1").input_tokens == 7


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
    async with serve_scripted_model(scenario) as upstream:
        proxy = ModelProxy(upstream.base_url, REAL_KEY, on_exhausted=lambda task_id, usage: exhausted.append(task_id))
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

                # A second task with a budget that one answer spends: the CLI is cut off on its next request.
                small = proxy.issue_token("task-2", Budget(max_tokens=1))
                (workspace / "hello.txt").unlink()
                before = len(upstream.requests)
                cut = await run_cli("again", workspace, offline_env(base_url, small, tmp_path / "cfg2"))
                assert cut is not None and cut.is_error and "429" in (cut.result or "")
                assert len(upstream.requests) - before == 1
                assert proxy.exhausted("task-2").is_set() and exhausted == ["task-2"]

    assert (workspace / "seen-env.txt").exists()
    seen_env = (workspace / "seen-env.txt").read_text()
    assert f"ANTHROPIC_API_KEY={token}" in seen_env and REAL_KEY not in seen_env
    agent_requests = [r for r in upstream.requests if r.kind == "agent"]
    assert [r.turn for r in agent_requests[:3]] == [0, 1, None]
    for recorded in upstream.requests:
        assert recorded.headers["x-api-key"] == REAL_KEY
        assert token not in json.dumps(recorded.headers) and small not in json.dumps(recorded.headers)
    # The proxy's count agrees with the CLI's own.
    assert result.usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (result.usage["input_tokens"], result.usage["output_tokens"])
    assert usage.requests == 3 and usage.cost_usd > 0


async def test_proxies_ending_out_of_order_leave_the_process_signal_handlers_alone(tmp_path: Path) -> None:
    """uvicorn restores the SIGTERM handler it found when a server ends; two task proxies that end out of order
    left a dead server's handler installed, and the supervisor ignored SIGTERM."""
    import signal

    from runner.model_proxy import ModelProxy

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
    import os

    from runner.model_proxy import ModelProxy

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
    assert answer.status_code in (401, 404, 405)  # the proxy answered over the socket
    assert not (deep / "model.sock").exists()
