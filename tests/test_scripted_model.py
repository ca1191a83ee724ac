"""Tests of the scripted Messages API: SSE shapes over real HTTP, and the real Claude Code CLI driven by it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from claude_agent_sdk import AssistantMessage, ClaudeAgentOptions, ResultMessage, query
from claude_agent_sdk import ToolUseBlock as SDKToolUseBlock

from runner.scripted_model import (
    Scenario,
    TextBlock,
    ToolUseBlock,
    count_tool_results,
    create_scripted_model,
    serve_scripted_model,
)
from tests.fakes.runs import offline_env

HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
TOOLS = [{"name": "Bash", "description": "run a command", "input_schema": {"type": "object"}}]

SCENARIO = Scenario.of(
    [TextBlock("I'll write a file."), ToolUseBlock("Write", {"file_path": "/w/a.txt", "content": "x" * 40})],
    [ToolUseBlock("Bash", {"command": "echo one"}), ToolUseBlock("Bash", {"command": "echo two"})],
    final_text="All done.",
)


def messages_body(tool_results: int = 0, *, stream: bool = False, tools: Any = TOOLS) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    for n in range(tool_results):
        messages.append(
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"t{n}", "name": "Bash", "input": {}}]}
        )
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{n}", "content": "ok"}]})
    body: dict[str, Any] = {"model": "claude-test", "max_tokens": 1024, "messages": messages, "stream": stream}
    if tools is not None:
        body["tools"] = tools
    return body


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for raw in text.strip().split("\n\n"):
        lines = raw.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), raw
        events.append((lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])))
    return events


def asgi_client(scenario: Scenario = SCENARIO) -> tuple[httpx.AsyncClient, Any]:
    model = create_scripted_model(scenario)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=model.app), base_url="http://model"), model


def test_scenario_turn_for_follows_cumulative_tool_uses() -> None:
    # turn 0 asks one tool_use, turn 1 asks two: turn 1 at one result, past the end at three.
    assert SCENARIO.turn_for(0) == 0
    assert SCENARIO.turn_for(1) == 1
    assert SCENARIO.turn_for(2) is None  # turn 1 half answered: move on, never replay it
    assert SCENARIO.turn_for(3) is None


def test_scenario_from_file_reads_yaml_and_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "s.yaml"
    yaml_file.write_text("turns:\n  - - {type: tool_use, name: Bash, input: {command: ls}}\nfinal_text: bye\n")
    json_file = tmp_path / "s.json"
    json_file.write_text(json.dumps({"turns": [[{"type": "text", "text": "hi"}]]}))
    assert Scenario.from_file(yaml_file) == Scenario.of([ToolUseBlock("Bash", {"command": "ls"})], final_text="bye")
    assert Scenario.from_file(json_file) == Scenario.of([TextBlock("hi")])


def test_scenario_from_dict_rejects_malformed_block() -> None:
    with pytest.raises(ValueError, match="turn 0 block 0"):
        Scenario.from_dict({"turns": [[{"type": "tool_use", "input": {}}]]})


def test_scenario_shipped_examples_load() -> None:
    for path in (Path(__file__).parent.parent / "runner" / "data" / "scenarios").glob("*.yaml"):
        assert Scenario.from_file(path).turns


def test_count_tool_results_counts_blocks_across_messages() -> None:
    assert count_tool_results(messages_body(3)["messages"]) == 3
    assert count_tool_results("nonsense") == 0


async def test_scripted_model_streams_anthropic_event_sequence() -> None:
    async with serve_scripted_model(SCENARIO) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        response = await client.post("/v1/messages?beta=true", json=messages_body(stream=True), headers=HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert set(names[1:-2]) == {"content_block_start", "content_block_delta", "content_block_stop"}
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["usage"]["input_tokens"] > 0
    blocks: dict[int, dict[str, Any]] = {}
    for name, data in events:
        if name == "content_block_start":
            blocks[data["index"]] = {**data["content_block"], "partial": ""}
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                blocks[data["index"]]["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta"
                blocks[data["index"]]["partial"] += delta["partial_json"]
    assert blocks[0]["type"] == "text" and blocks[0]["text"] == "I'll write a file."
    assert blocks[1]["type"] == "tool_use" and blocks[1]["name"] == "Write" and blocks[1]["id"].startswith("toolu_")
    assert json.loads(blocks[1]["partial"]) == {"file_path": "/w/a.txt", "content": "x" * 40}
    deltas = [d for n, d in events if n == "content_block_delta" and d["index"] == 1]
    assert len(deltas) > 1, "tool input should arrive in several partial_json chunks"
    message_delta = next(d for n, d in events if n == "message_delta")
    assert message_delta["delta"]["stop_reason"] == "tool_use" and message_delta["usage"]["output_tokens"] > 0


async def test_scripted_model_event_order_per_block() -> None:
    async with serve_scripted_model(SCENARIO) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        response = await client.post("/v1/messages", json=messages_body(1, stream=True), headers=HEADERS)
    order = []
    for name, data in parse_sse(response.text):
        if name in ("content_block_start", "content_block_stop"):
            order.append((name, data["index"]))
    assert order == [
        ("content_block_start", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_stop", 1),
    ]


async def test_scripted_model_answers_plain_json_without_stream() -> None:
    client, _ = asgi_client()
    async with client:
        response = await client.post("/v1/messages", json=messages_body(1), headers=HEADERS)
    body = response.json()
    assert body["type"] == "message" and body["stop_reason"] == "tool_use"
    assert [b["input"]["command"] for b in body["content"]] == ["echo one", "echo two"]
    assert len({b["id"] for b in body["content"]}) == 2
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0


async def test_scripted_model_ends_with_end_turn_past_the_script() -> None:
    client, model = asgi_client()
    async with client:
        response = await client.post("/v1/messages", json=messages_body(3), headers=HEADERS)
    body = response.json()
    assert body["stop_reason"] == "end_turn" and body["content"] == [{"type": "text", "text": "All done."}]
    assert model.requests[-1].kind == "agent" and model.requests[-1].turn is None


async def test_scripted_model_side_requests_do_not_advance_the_script() -> None:
    client, model = asgi_client()
    title_request = messages_body(tools=[])
    title_request["output_config"] = {
        "format": {"type": "json_schema", "schema": {"type": "object", "properties": {"title": {"type": "string"}}}}
    }
    quota_probe = {**messages_body(), "max_tokens": 1}
    async with client:
        title = (await client.post("/v1/messages", json=title_request, headers=HEADERS)).json()
        quota = (await client.post("/v1/messages", json=quota_probe, headers=HEADERS)).json()
        agent = (await client.post("/v1/messages", json=messages_body(), headers=HEADERS)).json()
    assert json.loads(title["content"][0]["text"]) == {"title": "Scripted task"}
    assert title["stop_reason"] == "end_turn" and quota["stop_reason"] == "end_turn"
    assert agent["content"][1]["name"] == "Write"
    assert [r.kind for r in model.requests] == ["side", "side", "agent"]


async def test_scripted_model_counts_tokens() -> None:
    client, _ = asgi_client()
    async with client:
        response = await client.post("/v1/messages/count_tokens", json=messages_body(), headers=HEADERS)
    assert response.status_code == 200 and response.json()["input_tokens"] > 0


async def test_scripted_model_unknown_path_is_anthropic_404() -> None:
    client, model = asgi_client()
    async with client:
        response = await client.get("/v1/models/claude-x", headers=HEADERS)
    assert response.status_code == 404
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "not_found_error"
    assert model.requests[0].path == "/v1/models/claude-x"


async def test_scripted_model_rejects_body_without_messages() -> None:
    client, _ = asgi_client()
    async with client:
        response = await client.post("/v1/messages", json={"model": "x"}, headers=HEADERS)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


async def test_scripted_model_records_headers_and_query() -> None:
    client, model = asgi_client()
    async with client:
        await client.post("/v1/messages?beta=true", json=messages_body(), headers=HEADERS)
    recorded = model.requests[0]
    assert recorded.headers["x-api-key"] == "test-key" and recorded.query == "beta=true"
    assert recorded.json["model"] == "claude-test"


async def test_scripted_model_serves_on_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "model.sock"
    async with serve_scripted_model(SCENARIO, uds=socket_path) as server:
        transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
        async with httpx.AsyncClient(transport=transport, base_url=server.base_url) as client:
            response = await client.post("/v1/messages", json=messages_body(), headers=HEADERS)
    assert response.json()["content"][1]["name"] == "Write"


async def test_scripted_model_command_line_prints_base_url(tmp_path: Path) -> None:
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text("turns:\n  - - {type: text, text: hello}\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner.scripted_model",
        "--scenario",
        str(scenario_file),
        "--port",
        "0",
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            base_url = (await process.stdout.readline()).decode().strip()
        assert base_url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.post("/v1/messages", json=messages_body(tools=TOOLS), headers=HEADERS)
        assert response.json()["content"] == [{"type": "text", "text": "hello"}]
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.slow
async def test_scripted_model_drives_real_cli_end_to_end(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    scenario = Scenario.of(
        [TextBlock("Writing."), ToolUseBlock("Write", {"file_path": str(workspace / "hello.txt"), "content": "hi\n"})],
        [ToolUseBlock("Bash", {"command": "echo hi > echoed.txt", "description": "echo"})],
        final_text="All done.",
    )
    tool_calls: list[str] = []
    result: ResultMessage | None = None
    async with serve_scripted_model(scenario) as server:
        options = ClaudeAgentOptions(
            cwd=str(workspace),
            env=offline_env(server.base_url, "test-key", tmp_path / "claude-config"),
            allowed_tools=["Write", "Bash"],
            permission_mode="default",
        )
        async with asyncio.timeout(120):
            async for message in query(prompt="write hello.txt, then echo hi", options=options):
                if isinstance(message, AssistantMessage):
                    tool_calls += [b.name for b in message.content if isinstance(b, SDKToolUseBlock)]
                elif isinstance(message, ResultMessage):
                    result = message
    assert (workspace / "hello.txt").read_text() == "hi\n"
    assert (workspace / "echoed.txt").read_text() == "hi\n"
    assert tool_calls == ["Write", "Bash"]
    assert result is not None and not result.is_error and result.result == "All done."
    agent = server.model.agent_requests
    assert [r.turn for r in agent] == [0, 1, None]
    for recorded in server.requests:
        assert (recorded.method, recorded.path, recorded.query) == ("POST", "/v1/messages", "beta=true")
        assert recorded.headers["x-api-key"] == "test-key"
        assert recorded.headers["anthropic-version"] == "2023-06-01"
        assert recorded.json["stream"] is True
