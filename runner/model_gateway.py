"""PURE: what the sandbox may ask of the model provider, decided on the trusted side before anything is forwarded.

The model channel is one of the sandbox's two doors, and code the agent runs holds the per-task token, so
a request is checked as an attacker's would be: only the two Messages routes, matched on the raw path; the
body parsed (with duplicate keys refused, so the upstream's parser cannot read it differently) and checked
field by field; `anthropic-beta` filtered to what the CLI itself sends. A refusal is a `Refusal` value, never
an exception.

    route = match_route("POST", b"/v1/messages", b"beta=true")       # Endpoint.MESSAGES, or a Refusal
    checked = check_body(route, raw, allowed_models=("claude-sonnet-4", "claude-sonnet-4-*"))
    betas, dropped = filter_betas(["claude-code-20250219", "mcp-client-2025-04-04"])
"""

from __future__ import annotations

import enum
import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

__all__ = [
    "ALLOWED_BETAS",
    "CLI_DEFAULT_MODEL",
    "Checked",
    "Endpoint",
    "Refusal",
    "check_body",
    "filter_betas",
    "match_route",
    "model_allowed",
    "model_patterns",
]

# Recorded from a real run of claude-agent-sdk 0.2.189 (bundled Claude Code CLI 2.1.332) against
# runner/scripted_model.py, through this gateway: main-loop turns, tool-use summaries
# (CLAUDE_CODE_EMIT_TOOL_USE_SUMMARIES=1) and count_tokens (a large Read), for claude-sonnet-4-5, the
# `haiku` alias and the CLI's default model. tests/test_model_gateway.py re-records it against the bundled
# CLI (slow) and fails when the CLI starts sending something else: re-record on every SDK bump.
ALLOWED_BETAS = frozenset(
    {
        "claude-code-20250219",
        "interleaved-thinking-2025-05-14",
        "context-management-2025-06-27",
        "per-turn-control-2026-07-01",
        "mid-conversation-tool-changes-2026-07-01",
        "thinking-token-count-2026-05-13",
        "effort-2025-11-24",
        "thinking-display-updates-2026-08-18",
        "token-counting-2024-11-01",  # count_tokens only
    }
)
# Top-level keys of the same recording. `tool_choice` was not seen but is built by this CLI's main loop
# (forced tool choice); it makes the provider do nothing on the sandbox's behalf.
MESSAGES_KEYS = frozenset(
    {
        "model", "messages", "system", "tools", "tool_choice", "max_tokens", "stream", "metadata",
        "thinking", "context_management", "output_config", "temperature",
    }
)
# The CLI's countTokens call: model, messages, tools, and thinking when the conversation holds thinking.
COUNT_TOKENS_KEYS = frozenset({"model", "messages", "system", "tools", "thinking"})
# What CLI 2.1.332 sends with no --model. With ANTHROPIC_BASE_URL set (always, here: the in-sandbox
# forwarder) its side requests use the main model too; it sends the "small fast" model (the `haiku`
# alias, claude-haiku-5-5) only when first-party, so the default allowlist is the main model's family.
CLI_DEFAULT_MODEL = "claude-opus-5-5"
API_VERSION = "2023-06-01"

# Content blocks that make the provider fetch or read something for the sandbox: a URL, an uploaded
# file (other data on the same key), a container. Sources the CLI sends are inline (base64, text).
INLINE_SOURCES = frozenset({"base64", "text", "content"})
SERVER_BLOCKS = frozenset({"container_upload", "server_tool_use", "mcp_tool_use", "mcp_tool_result"})
# Nesting deeper than any conversation needs is refused rather than walked.
MAX_DEPTH = 64


class Endpoint(enum.Enum):
    MESSAGES = "/v1/messages"
    COUNT_TOKENS = "/v1/messages/count_tokens"


_ROUTES = {e.value.encode(): e for e in Endpoint}
_QUERIES = (b"", b"beta=true")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the gateway answered instead of the upstream: `status` and `error_type` shape the Anthropic-style
    error; `field` names what was refused (`path`, `method`, `mcp_servers`, `tools[2].type`, `model`, ...)."""

    status: int
    error_type: str
    field: str
    reason: str
    method: str = ""
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "error_type": self.error_type, "field": self.field, "reason": self.reason,
                "method": self.method, "path": self.path}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Refusal:
        return cls(status=int(data["status"]), error_type=str(data["error_type"]), field=str(data["field"]),
                   reason=str(data["reason"]), method=str(data.get("method", "")), path=str(data.get("path", "")))


@dataclass(frozen=True, slots=True)
class Checked:
    """A request that may go upstream: its re-serialised body and what the budget needs to know."""

    endpoint: Endpoint
    body: bytes
    model: str
    max_tokens: int
    stream: bool


def _shown(raw: bytes, limit: int = 200) -> str:
    # Audited as text: undecodable bytes escaped, length bounded (the path is the attacker's).
    return raw[:limit].decode("ascii", "backslashreplace") + ("..." if len(raw) > limit else "")


def match_route(method: str, raw_path: bytes, query: bytes) -> Endpoint | Refusal:
    """The endpoint for an exact `POST` on one of the two Messages paths; anything else is a Refusal.

    The raw path (before any percent-decoding) must equal the route byte for byte, so `..`, `%2e%2e`,
    `%2f`, `//`, a trailing slash or an absolute URL never match; the query is empty or `beta=true`.
    """
    path = _shown(raw_path)
    endpoint = _ROUTES.get(raw_path)
    if endpoint is None:
        return Refusal(404, "not_found_error", "path", _path_reason(raw_path), method, path)
    if method != "POST":
        return Refusal(405, "invalid_request_error", "method", f"{method} is not allowed on {path}; only POST",
                       method, path)
    if query not in _QUERIES:
        return Refusal(400, "invalid_request_error", "query", f"query {_shown(query)!r} is not allowed", method,
                       path)
    return endpoint


def _path_reason(raw: bytes) -> str:
    if not raw.startswith(b"/"):
        return f"request target {_shown(raw)!r} is not a path"
    if b"%" in raw:
        return f"percent-encoded path {_shown(raw)!r} (decoding to {_shown(unquote_to_bytes(raw))!r}) is refused"
    if any(segment in (b".", b"..") for segment in raw.split(b"/")):
        return f"path {_shown(raw)!r} climbs out of /v1/messages"
    if b"//" in raw:
        return f"path {_shown(raw)!r} holds an empty segment"
    return f"only /v1/messages and /v1/messages/count_tokens are served, not {_shown(raw)!r}"


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_body(endpoint: Endpoint, raw: bytes, *, allowed_models: Sequence[str]) -> Checked | Refusal:
    """Parse and check a request body for `endpoint`: the forwarded bytes are the checked object, re-encoded."""
    post = endpoint.value

    def refuse(field: str, reason: str, status: int = 400, kind: str = "invalid_request_error") -> Refusal:
        return Refusal(status, kind, field, reason, "POST", post)

    try:
        body = json.loads(raw, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        return refuse("body", f"the body is not valid JSON: {str(exc)[:200]}")
    if not isinstance(body, dict):
        return refuse("body", "the body must be a JSON object")
    allowed_keys = MESSAGES_KEYS if endpoint is Endpoint.MESSAGES else COUNT_TOKENS_KEYS
    for key in body:
        if key in ("mcp_servers", "container"):
            return refuse(key, f"{key} is refused: it makes the provider connect or run things for the sandbox")
        if key not in allowed_keys:
            return refuse(key, f"top-level field {key[:80]!r} is not one the Claude Code CLI sends")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return refuse("model", "model must be a non-empty string")
    if not model_allowed(model, allowed_models):
        return refuse("model", f"model {model[:80]!r} is not allowed for this task "
                               f"(allowed: {', '.join(allowed_models) or 'none'})", 403, "permission_error")
    if not isinstance(body.get("messages"), list):
        return refuse("messages", "messages must be a list")
    if (tools := body.get("tools")) is not None:
        if not isinstance(tools, list):
            return refuse("tools", "tools must be a list")
        for index, tool in enumerate(tools):
            if (problem := _tool_problem(tool)) is not None:
                return refuse(f"tools[{index}]", problem)
    for field in ("messages", "system"):
        if (found := _content_problem(body.get(field), field, 0)) is not None:
            return refuse(*found)
    max_tokens = body.get("max_tokens", 0)
    if endpoint is Endpoint.MESSAGES and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                          or max_tokens < 1):
        return refuse("max_tokens", "max_tokens must be a positive integer (it is what the budget reserves)")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        return refuse("stream", "stream must be a boolean")
    encoded = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode()
    return Checked(endpoint, encoded, model, int(max_tokens), stream)


def _tool_problem(tool: Any) -> str | None:
    """Only client-side tools, the ones the CLI defines and runs itself: a name and an input schema."""
    if not isinstance(tool, dict):
        return "a tool must be an object"
    kind = tool.get("type")
    if kind is not None and kind != "custom":
        return f"server-side tool type {str(kind)[:80]!r} is refused: only client-side tools are allowed"
    if not isinstance(tool.get("name"), str) or not isinstance(tool.get("input_schema"), dict):
        return "a client-side tool needs a name and an input_schema"
    return None


def _content_problem(value: Any, where: str, depth: int) -> tuple[str, str] | None:
    """Walk message content for blocks that make the provider fetch or read for the sandbox."""
    if depth > MAX_DEPTH:
        return where, "content nests too deeply"
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (problem := _content_problem(item, f"{where}[{index}]", depth + 1)) is not None:
                return problem
    elif isinstance(value, dict):
        kind = value.get("type")
        server_result = isinstance(kind, str) and kind.endswith("_tool_result") and kind != "tool_result"
        if isinstance(kind, str) and (kind in SERVER_BLOCKS or server_result):
            return f"{where}.type", f"content block {kind[:80]!r} is refused: it belongs to a server-side tool"
        source = value.get("source")
        if isinstance(source, dict) and source.get("type") not in INLINE_SOURCES:
            return f"{where}.source", (f"source type {str(source.get('type'))[:80]!r} is refused: "
                                       "only inline (base64 or text) content is allowed")
        if "file_id" in value:
            return f"{where}.file_id", "references to uploaded files are refused"
        for key in ("content", "source"):
            if key in value and (nested := _content_problem(value[key], f"{where}.{key}", depth + 1)):
                return nested
    return None


def filter_betas(values: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, dropped) beta flags from `anthropic-beta` header values; unknown flags are dropped, not refused."""
    kept: list[str] = []
    dropped: list[str] = []
    for value in values:
        for flag in (part.strip() for part in value.split(",")):
            if not flag:
                continue
            target = kept if flag in ALLOWED_BETAS else dropped
            if flag not in target:
                target.append(flag)
    return tuple(kept), tuple(dropped)


def model_allowed(model: str, patterns: Sequence[str]) -> bool:
    """Whether `model` matches one of the glob `patterns` (case-sensitive, as model ids are)."""
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in patterns)


_FAMILY = re.compile(r"^(claude-[a-z]+-\d+)(?:[-.@].*)?$")
_OLD_FAMILY = re.compile(r"^(claude-\d+(?:-\d+)?-[a-z]+)(?:-.*)?$")
_ALIASES = frozenset({"opus", "sonnet", "haiku"})


def model_patterns(configured: str | None) -> tuple[str, ...]:
    """The default allowlist for a task: the configured model's family (the CLI's own default when None).

    `claude-sonnet-4-5` allows `claude-sonnet-4` and `claude-sonnet-4-*`; an alias (`sonnet`, `opus[1m]`)
    allows its whole line; any other id only itself.

    >>> model_patterns("claude-sonnet-4-5-20250929")
    ('claude-sonnet-4', 'claude-sonnet-4-*')
    """
    model = (configured or CLI_DEFAULT_MODEL).strip()
    bare = model.split("[", 1)[0]
    if bare in _ALIASES:
        return (f"claude-{bare}-*",)
    if match := _FAMILY.match(bare) or _OLD_FAMILY.match(bare):
        family = match.group(1)
        return family, f"{family}-*"
    return (bare,)
