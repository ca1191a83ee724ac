"""Tests of the gateway's pure checks: routes on the raw path, bodies field by field, beta flags, model families."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKError, query

from runner.model_gateway import (
    ALLOWED_BETAS,
    CLI_DEFAULT_MODEL,
    Checked,
    Endpoint,
    Refusal,
    check_body,
    filter_betas,
    match_route,
    model_allowed,
    model_patterns,
)
from runner.scripted_model import Scenario, ToolUseBlock, serve_scripted_model

MODELS = model_patterns("claude-sonnet-4-5")
TOOL = {"name": "Bash", "description": "run a command", "input_schema": {"type": "object"}}


def body(**extra: Any) -> dict[str, Any]:
    """A Messages body shaped like the CLI's (recorded from 2.1.332), plus `extra`."""
    base: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "go"}]}],
        "system": [{"type": "text", "text": "be brief"}],
        "tools": [TOOL],
        "metadata": {"user_id": "{}"},
        "thinking": {"type": "enabled", "budget_tokens": 31999},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "stream": True,
    }
    base.update(extra)
    return base


def check(data: Any, endpoint: Endpoint = Endpoint.MESSAGES) -> Checked | Refusal:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return check_body(endpoint, raw, allowed_models=MODELS)


@pytest.mark.parametrize(("path", "query", "endpoint"), [
    (b"/v1/messages", b"beta=true", Endpoint.MESSAGES),
    (b"/v1/messages", b"", Endpoint.MESSAGES),
    (b"/v1/messages/count_tokens", b"beta=true", Endpoint.COUNT_TOKENS),
])
def test_match_route_accepts_the_two_messages_routes(path: bytes, query: bytes, endpoint: Endpoint) -> None:
    assert match_route("POST", path, query) is endpoint


@pytest.mark.parametrize(("path", "words"), [
    (b"/v1/messages/batches", "only /v1/messages"),
    (b"/v1/files", "only /v1/messages"),
    (b"/v1/models", "only /v1/messages"),
    (b"/v1/messages/", "only /v1/messages"),
    (b"/v1/../v1/messages", "climbs out"),
    (b"/v1/messages/../batches", "climbs out"),
    (b"/v1/./messages", "climbs out"),
    (b"/v1/%2e%2e/admin", "decoding to '/v1/../admin'"),
    (b"/v1/messages%2fbatches", "percent-encoded"),
    (b"/v1/%6Dessages", "percent-encoded"),
    (b"//v1/messages", "empty segment"),
    (b"/v1//messages", "empty segment"),
    (b"http://evil.example/v1/messages", "is not a path"),
    (b"/V1/MESSAGES", "only /v1/messages"),
])
def test_match_route_refuses_other_paths_on_the_raw_bytes(path: bytes, words: str) -> None:
    refusal = match_route("POST", path, b"beta=true")
    assert isinstance(refusal, Refusal)
    assert (refusal.status, refusal.error_type, refusal.field) == (404, "not_found_error", "path")
    assert words in refusal.reason


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_match_route_refuses_other_methods(method: str) -> None:
    refusal = match_route(method, b"/v1/messages", b"")
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.field) == (405, "method")


@pytest.mark.parametrize("query", [b"beta=true&x=1", b"beta=false", b"url=http://x", b"beta=true#"])
def test_match_route_refuses_other_queries(query: bytes) -> None:
    refusal = match_route("POST", b"/v1/messages", query)
    assert isinstance(refusal, Refusal) and (refusal.status, refusal.field) == (400, "query")


def test_check_body_passes_what_the_cli_sends_and_reencodes_it() -> None:
    checked = check(body())
    assert isinstance(checked, Checked)
    assert (checked.model, checked.max_tokens, checked.stream) == ("claude-sonnet-4-5", 32000, True)
    assert json.loads(checked.body) == body()


def test_check_body_passes_count_tokens_shape() -> None:
    checked = check({"model": "claude-sonnet-4-5", "messages": [], "tools": [TOOL]}, Endpoint.COUNT_TOKENS)
    assert isinstance(checked, Checked) and checked.endpoint is Endpoint.COUNT_TOKENS


SERVER_TOOLS = [
    "web_search_20250305", "web_fetch_20250910", "code_execution_20250825", "bash_20250124",
    "text_editor_20250728", "computer_20250124", "memory_20250818", "tool_search_tool_regex_20251119",
    "mcp_toolset",
]


@pytest.mark.parametrize("kind", SERVER_TOOLS)
def test_check_body_refuses_every_server_side_tool_type(kind: str) -> None:
    refusal = check(body(tools=[TOOL, {"type": kind, "name": "x"}]))
    assert isinstance(refusal, Refusal) and refusal.field == "tools[1]" and kind in refusal.reason


def test_check_body_allows_a_custom_typed_tool_and_refuses_a_tool_without_schema() -> None:
    assert isinstance(check(body(tools=[{**TOOL, "type": "custom"}])), Checked)
    refusal = check(body(tools=[{"name": "Bash"}]))
    assert isinstance(refusal, Refusal) and "input_schema" in refusal.reason


@pytest.mark.parametrize(("extra", "field"), [
    ({"mcp_servers": [{"type": "url", "url": "https://attacker.example/sse", "name": "x"}]}, "mcp_servers"),
    ({"mcp_servers": []}, "mcp_servers"),
    ({"container": "container_011"}, "container"),
    ({"service_tier": "auto"}, "service_tier"),
    ({"top_k": 1}, "top_k"),
    ({"model": "claude-opus-4-1"}, "model"),
    ({"model": "claude-sonnet-45"}, "model"),
    ({"model": 7}, "model"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": "1000"}, "max_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"messages": "go"}, "messages"),
    ({"tools": {"name": "x"}}, "tools"),
])
def test_check_body_refuses_fields_the_cli_does_not_send(extra: dict[str, Any], field: str) -> None:
    refusal = check(body(**extra))
    assert isinstance(refusal, Refusal) and refusal.field == field, refusal


def test_check_body_refuses_a_model_outside_the_task_allowlist_as_permission() -> None:
    refusal = check(body(model="claude-haiku-4-5"))
    assert isinstance(refusal, Refusal)
    assert (refusal.status, refusal.error_type) == (403, "permission_error")
    assert "claude-sonnet-4-*" in refusal.reason


@pytest.mark.parametrize(("block", "field"), [
    ({"type": "document", "source": {"type": "url", "url": "https://attacker.example/?q=secret"}},
     "messages[0].content[1].source"),
    ({"type": "image", "source": {"type": "file", "file_id": "file_01"}}, "messages[0].content[1].source"),
    ({"type": "container_upload", "file_id": "file_01"}, "messages[0].content[1].type"),
    ({"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://attacker.example/x.png"}}]},
     "messages[0].content[1].content[0].source"),
    ({"type": "web_fetch_tool_result", "tool_use_id": "t", "content": {}}, "messages[0].content[1].type"),
    ({"type": "server_tool_use", "id": "s", "name": "web_fetch", "input": {}}, "messages[0].content[1].type"),
])
def test_check_body_refuses_content_that_makes_the_provider_fetch(block: dict[str, Any], field: str) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "go"}, block]}]
    refusal = check(body(messages=messages))
    assert isinstance(refusal, Refusal) and refusal.field == field, refusal


def test_check_body_passes_inline_images_and_documents() -> None:
    blocks = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
              {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hi"}}]
    assert isinstance(check(body(messages=[{"role": "user", "content": blocks}])), Checked)


@pytest.mark.parametrize("raw", [
    b'{"model": "claude-sonnet-4-5", "model": "claude-opus-4-1", "max_tokens": 1, "messages": []}',
    b'{"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": [], "temperature": NaN}',
    b"not json",
    b"[]",
    b"[" * 100_000 + b"]" * 100_000,
])
def test_check_body_refuses_json_the_upstream_might_read_differently(raw: bytes) -> None:
    refusal = check(raw)
    assert isinstance(refusal, Refusal) and refusal.field == "body"


def test_check_body_refuses_content_nested_past_the_limit() -> None:
    deep: Any = {"type": "text", "text": "x"}
    for _ in range(100):
        deep = {"type": "tool_result", "tool_use_id": "t", "content": [deep]}
    refusal = check(body(messages=[{"role": "user", "content": [deep]}]))
    assert isinstance(refusal, Refusal) and "nests too deeply" in refusal.reason


def test_refusal_survives_json() -> None:
    refusal = Refusal(400, "invalid_request_error", "mcp_servers", "no", "POST", "/v1/messages")
    assert Refusal.from_json(json.loads(json.dumps(refusal.to_json()))) == refusal


def test_filter_betas_keeps_the_recorded_flags_and_drops_the_rest() -> None:
    kept, dropped = filter_betas(["claude-code-20250219, mcp-client-2025-04-04", "files-api-2025-04-14",
                                  "interleaved-thinking-2025-05-14,,claude-code-20250219"])
    assert kept == ("claude-code-20250219", "interleaved-thinking-2025-05-14")
    assert dropped == ("mcp-client-2025-04-04", "files-api-2025-04-14")
    assert "mcp-client-2025-04-04" not in ALLOWED_BETAS and "code-execution-2025-08-25" not in ALLOWED_BETAS


@pytest.mark.parametrize(("configured", "patterns"), [
    ("claude-sonnet-4-5", ("claude-sonnet-4", "claude-sonnet-4-*")),
    ("claude-sonnet-4-5-20250929", ("claude-sonnet-4", "claude-sonnet-4-*")),
    ("claude-opus-4-1", ("claude-opus-4", "claude-opus-4-*")),
    ("claude-3-5-haiku-20241022", ("claude-3-5-haiku", "claude-3-5-haiku-*")),
    ("sonnet", ("claude-sonnet-*",)),
    ("opus[1m]", ("claude-opus-*",)),
    ("my-gateway-model", ("my-gateway-model",)),
    (None, ("claude-opus-5", "claude-opus-5-*")),
])
def test_model_patterns_allow_the_configured_family(configured: str | None, patterns: tuple[str, ...]) -> None:
    assert model_patterns(configured) == patterns


def test_model_allowed_matches_family_not_prefix() -> None:
    patterns = model_patterns("claude-sonnet-4-5")
    assert model_allowed("claude-sonnet-4-6", patterns) and model_allowed("claude-sonnet-4", patterns)
    assert not model_allowed("claude-sonnet-45", patterns) and not model_allowed("claude-haiku-4-5", patterns)
    assert model_allowed(CLI_DEFAULT_MODEL, model_patterns(None))


# What the bundled CLI really sends ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("model", ["claude-sonnet-4-5", None], ids=["sonnet-4-5", "cli-default"])
async def test_gateway_passes_everything_the_bundled_cli_sends(tmp_path: Path, model: str | None) -> None:
    """Record the bundled CLI against the scripted model (main turns, tool-use summaries, count_tokens from a big
    Read) and replay each request through the gateway's checks: none may be refused and no beta flag dropped.
    Fails when an SDK bump makes the CLI send a new flag or field: re-record ALLOWED_BETAS and the key sets."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "big.txt").write_text("".join(f"line {i} lorem ipsum dolor sit amet\n" for i in range(3000)))
    scenario = Scenario.of(
        [ToolUseBlock("Read", {"file_path": str(workspace / "big.txt")})],
        [ToolUseBlock("Bash", {"command": "echo hi", "description": "say hi"})],
        final_text="done",
    )
    async with serve_scripted_model(scenario) as upstream:
        env = {"ANTHROPIC_BASE_URL": upstream.base_url, "ANTHROPIC_API_KEY": "recording",
               "CLAUDE_CONFIG_DIR": str(tmp_path / "cfg"), "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
               "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "CLAUDE_CODE_EMIT_TOOL_USE_SUMMARIES": "1"}
        options = ClaudeAgentOptions(cwd=str(workspace), env=env, tools=["Read", "Bash"],
                                     allowed_tools=["Read", "Bash"], setting_sources=[], system_prompt="be brief",
                                     model=model, max_turns=5)
        async with asyncio.timeout(180):
            with contextlib.suppress(ClaudeSDKError):
                async for _ in query(prompt="read big.txt, then say hi", options=options):
                    pass
    recorded = upstream.requests
    paths = {r.path for r in recorded}
    assert paths == {"/v1/messages", "/v1/messages/count_tokens"}, paths
    assert {r.kind for r in recorded if r.path == "/v1/messages"} == {"agent", "side"}
    patterns = model_patterns(model)
    sent_betas: set[str] = set()
    for request in recorded:
        endpoint = match_route(request.method, request.path.encode(), request.query.encode())
        assert isinstance(endpoint, Endpoint), endpoint
        checked = check_body(endpoint, json.dumps(request.json).encode(), allowed_models=patterns)
        assert isinstance(checked, Checked), (checked, sorted(request.json))
        kept, dropped = filter_betas([request.headers.get("anthropic-beta", "")])
        assert dropped == (), dropped
        sent_betas.update(kept)
    assert {"claude-code-20250219", "token-counting-2024-11-01"} <= sent_betas <= ALLOWED_BETAS
