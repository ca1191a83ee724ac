"""A scripted stand-in for the Anthropic Messages API, for tests and the offline demo.

The real Claude Code CLI talks to it over loopback (or a Unix socket) exactly as it talks to
Anthropic: `POST /v1/messages` answered with the real SSE event sequence (or plain JSON), and
`POST /v1/messages/count_tokens`. What the model "says" is a `Scenario`: a list of turns, each a
list of `text` / `tool_use` blocks. The turn is chosen by how many `tool_result` blocks the
conversation already holds, so the script advances only when the CLI has run the tools asked for;
past the end of the script the model ends the conversation with a short text (`end_turn`).

Side requests the CLI makes on its own (title generation, quota probes with `max_tokens: 1`,
requests without tools) get a short text answer and never advance the script.

    python -m runner.scripted_model --scenario FILE [--host H] [--port N | --uds PATH]

Size: about 420 lines, one concept (a fake provider speaking the Messages API): choosing the turn, the JSON
and SSE answers, recording what the CLI sent, and serving it. The scenario format is its own module
(runner.scenario, re-exported here); the SSE encoding stays, as nothing else speaks it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from runner.scenario import Block, Scenario, ScenarioError, TextBlock, ToolUseBlock
from runner.unix_server import EmbeddedServer

__all__ = [
    "Block",
    "RecordedRequest",
    "Scenario",
    "ScenarioError",
    "ScriptedModel",
    "ScriptedServer",
    "TextBlock",
    "ToolUseBlock",
    "create_scripted_model",
    "serve_scripted_model",
]

DEFAULT_MODEL = "claude-scripted"
# Deltas are cut into chunks this long so clients see several content_block_delta events per block.
DELTA_CHUNK = 16

RequestKind = Literal["agent", "side"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    json: Any
    kind: RequestKind | None = None
    turn: int | None = None


def count_tool_results(messages: Any) -> int:
    """How many `tool_result` blocks a Messages API conversation holds."""
    count = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            count += sum(isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
    return count


def count_follow_ups(messages: Any) -> int:
    """How many times the user spoke again after the model ended its turn (a resumed session's new prompt):
    user messages without a `tool_result` that follow an assistant message."""
    count, after_assistant = 0, False
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if message.get("role") == "assistant":
            after_assistant = True
            continue
        results = isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result"
                                                     for b in content)
        count += after_assistant and not results
        after_assistant = False
    return count


def classify(body: Mapping[str, Any]) -> RequestKind:
    """Tell the agent loop from the CLI's side requests (titles, quota probes, summaries).

    The agent loop always offers tools and a real output budget; side requests offer no tools
    or ask for a single token.
    """
    tools = body.get("tools")
    max_tokens = body.get("max_tokens")
    if not tools or (isinstance(max_tokens, int) and max_tokens <= 1):
        return "side"
    return "agent"


def estimate_tokens(value: Any) -> int:
    """A stable, cheap token estimate: about four characters per token."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return max(1, math.ceil(len(text) / 4))


class ScriptedModel:
    """The scripted Messages API: `.app` is the ASGI app, `.requests` every request it received."""

    def __init__(self, scenario: Scenario, *, model: str = DEFAULT_MODEL) -> None:
        self.scenario = scenario
        self.model = model
        self.requests: list[RecordedRequest] = []
        self._id_prefix = secrets.token_hex(6)
        self.app = Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                Route("/{path:path}", self._not_found, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
            ]
        )

    @property
    def agent_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.kind == "agent"]

    async def _record(
        self, request: Request, kind: RequestKind | None = None, turn: int | None = None
    ) -> tuple[RecordedRequest, Any]:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers=dict(request.headers),
            json=body,
            kind=kind,
            turn=turn,
        )
        self.requests.append(recorded)
        return recorded, body

    async def _messages(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            await self._record(request)
            return _error(400, "invalid_request_error", "messages: field required")
        kind = classify(body)
        turn: int | None = None
        if kind == "agent":
            turn = self.scenario.turn_for(count_tool_results(body["messages"]) + count_follow_ups(body["messages"]))
            blocks = self._render(turn)
        else:
            blocks = [{"type": "text", "text": self._side_text(body)}]
        await self._record(request, kind, turn)
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        message_id = f"msg_{secrets.token_hex(12)}"
        model = body["model"] if isinstance(body.get("model"), str) else self.model
        input_tokens = estimate_tokens({k: body.get(k) for k in ("system", "messages", "tools")})
        output_tokens = estimate_tokens(blocks)
        if body.get("stream") is True:
            events = _sse_events(message_id, model, blocks, stop_reason, input_tokens, output_tokens)
            return StreamingResponse(
                _encode_sse(events),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "request-id": f"req_{secrets.token_hex(12)}"},
            )
        return JSONResponse(
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": _usage(input_tokens, output_tokens),
            },
            headers={"request-id": f"req_{secrets.token_hex(12)}"},
        )

    def _render(self, turn: int | None) -> list[dict[str, Any]]:
        if turn is None:
            return [{"type": "text", "text": self.scenario.final_text}]
        rendered: list[dict[str, Any]] = []
        for index, block in enumerate(self.scenario.turns[turn]):
            if isinstance(block, TextBlock):
                rendered.append({"type": "text", "text": block.text})
            else:
                tool_id = f"toolu_{self._id_prefix}{turn:03d}{index:03d}"
                rendered.append({"type": "tool_use", "id": tool_id, "name": block.name, "input": dict(block.input)})
        return rendered

    def _side_text(self, body: Mapping[str, Any]) -> str:
        # The CLI asks for session titles as structured output: answer with JSON of that schema.
        output_config = body.get("output_config")
        fmt = output_config.get("format") if isinstance(output_config, dict) else None
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
            return json.dumps(_example_of(fmt["schema"], self.scenario.side_text))
        return self.scenario.side_text

    async def _count_tokens(self, request: Request) -> Response:
        _, body = await self._record(request)
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "body: expected a JSON object")
        return JSONResponse(
            {"input_tokens": estimate_tokens({k: body.get(k) for k in ("system", "messages", "tools")})}
        )

    async def _not_found(self, request: Request) -> Response:
        await self._record(request)
        return _error(404, "not_found_error", f"Not found: {request.method} {request.url.path}")


def create_scripted_model(scenario: Scenario, *, model: str = DEFAULT_MODEL) -> ScriptedModel:
    return ScriptedModel(scenario, model=model)


def _example_of(schema: Mapping[str, Any], text: str) -> Any:
    """The smallest value of a JSON schema, with `text` for every string."""
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties")
        return {
            name: _example_of(sub, text)
            for name, sub in (properties.items() if isinstance(properties, dict) else ())
            if isinstance(sub, dict)
        }
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return text


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}}, status_code=status)


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _chunks(text: str) -> Iterator[str]:
    for start in range(0, len(text), DELTA_CHUNK):
        yield text[start : start + DELTA_CHUNK]


def _sse_events(
    message_id: str,
    model: str,
    blocks: list[dict[str, Any]],
    stop_reason: str,
    input_tokens: int,
    output_tokens: int,
) -> Iterator[dict[str, Any]]:
    yield {
        "type": "message_start",
        "message": {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(input_tokens, 1),
        },
    }
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            }
            if index == 0:
                yield {"type": "ping"}
            for piece in _chunks(block["text"]):
                yield {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": piece},
                }
        else:
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}},
            }
            for piece in _chunks(json.dumps(block["input"])):
                yield {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
        yield {"type": "content_block_stop", "index": index}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }
    yield {"type": "message_stop"}


async def _encode_sse(events: Iterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    for data in events:
        yield f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(slots=True)
class ScriptedServer:
    """A running scripted model: `base_url` for TCP, `uds` for a Unix socket."""

    model: ScriptedModel
    base_url: str
    uds: str | None = None

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.model.requests


def _uvicorn_config(app: Starlette, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none", **kwargs)


@contextlib.asynccontextmanager
async def serve_scripted_model(
    scenario: Scenario | ScriptedModel,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    uds: str | Path | None = None,
) -> AsyncIterator[ScriptedServer]:
    """Serve the scripted model with uvicorn in the current event loop, on TCP or a Unix socket."""
    model = scenario if isinstance(scenario, ScriptedModel) else create_scripted_model(scenario)
    sock: socket.socket | None = None
    if uds is not None:
        config = _uvicorn_config(model.app, uds=str(uds))
        base_url = "http://localhost"
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        bound_port = sock.getsockname()[1]
        config = _uvicorn_config(model.app)
        base_url = f"http://{host}:{bound_port}"
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock] if sock is not None else None))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("scripted model server stopped before it started")
            await asyncio.sleep(0.01)
        yield ScriptedServer(model=model, base_url=base_url, uds=str(uds) if uds is not None else None)
    finally:
        server.should_exit = True
        await task
        if sock is not None:
            sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.scripted_model", description=__doc__)
    parser.add_argument("--scenario", required=True, help="scenario file (YAML or JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--port", type=int, default=0, help="TCP port (0: pick a free one)")
    where.add_argument("--uds", help="serve on this Unix socket instead of TCP")
    args = parser.parse_args(argv)
    try:
        scenario = Scenario.from_file(args.scenario)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        async with serve_scripted_model(scenario, host=args.host, port=args.port, uds=args.uds) as server:
            print(server.uds if server.uds else server.base_url, flush=True)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
