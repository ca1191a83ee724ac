"""PURE: tracebacks carried whole in one field of a structured log line: JSON (structlog, python-json-logger,
ECS/Datadog `error.stack`, Docker's json-file `log`) and logfmt, including a JSON line cut at the size limit."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from runner.alerts.tracebacks.grammar import CAUSE, CONTEXT

__all__ = ["from_json_line", "from_logfmt"]

_TB_KEYS = (
    "exception", "exc_info", "exc_text", "traceback", "stack_trace", "stacktrace", "stack", "error.stack"
)
_SALVAGE_RE = re.compile(r'"(?:' + "|".join(re.escape(k) for k in _TB_KEYS) + r')"\s*:\s*"((?:[^"\\]|\\.)*)')
_LOGFMT_RE = re.compile(
    r'(?:^|\s)(?:exception|exc_info|exc_text|traceback|stack|stack_trace|error)="((?:[^"\\]|\\.)*)"'
)
_LOGFMT_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _looks_like_traceback(value: str) -> bool:
    return "Traceback (most recent call last)" in value or 'File "' in value


def from_json_line(candidate: str, cut: bool) -> tuple[str, bool] | str | bool:
    """(traceback text, truncated), or a docker `log` line to route, or whether it was JSON at all."""
    try:
        obj = json.loads(candidate)
    except ValueError:
        # A line cut at the log size limit: recover what the traceback field holds so far.
        m = _SALVAGE_RE.search(candidate)
        if m is None or not _looks_like_traceback(m.group(1)):
            return False
        partial = re.sub(r"\\(?:u[0-9a-fA-F]{0,3})?$", "", m.group(1))
        try:
            return str(json.loads('"' + partial + '"')), True
        except ValueError:
            return False
    if not isinstance(obj, dict):
        return False
    value = _traceback_field(obj)
    if value is not None:
        return value, cut
    log = obj.get("log")
    if isinstance(log, str) and "\n" not in log.rstrip("\n"):
        return log.rstrip("\n")
    return True


def _traceback_field(obj: Mapping[str, object]) -> str | None:
    candidates: list[object] = [obj.get(k) for k in _TB_KEYS]
    error = obj.get("error")
    if isinstance(error, dict):
        candidates += [error.get("stack"), error.get("stack_trace")]
    candidates.append(error)
    for value in candidates:
        if isinstance(value, str) and _looks_like_traceback(value):
            return value
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rendered = _render_structlog(value)
            if rendered:
                return rendered
    return None


def _render_structlog(stacks: list[dict[str, object]]) -> str:
    """structlog's `dict_tracebacks`: a list, outermost exception first, each with its frames."""
    out: list[str] = []
    ordered = list(reversed(stacks))
    for i, stack in enumerate(ordered):
        exc_type = stack.get("exc_type")
        if not isinstance(exc_type, str):
            return ""
        if i:
            out += ["", CAUSE if ordered[i - 1].get("is_cause") else CONTEXT, ""]
        frames = stack.get("frames")
        if isinstance(frames, list) and frames:
            out.append("Traceback (most recent call last):")
            for fr in frames:
                if isinstance(fr, dict):
                    where = f'"{fr.get("filename", "?")}", line {fr.get("lineno", 0)}'
                    out.append(f'  File {where}, in {fr.get("name", "?")}')
                    if isinstance(fr.get("line"), str) and fr["line"]:
                        out.append(f"    {str(fr['line']).strip()}")
        value = stack.get("exc_value")
        out.append(f"{exc_type}: {value}" if isinstance(value, str) and value else exc_type)
    return "\n".join(out)


def from_logfmt(raw: str) -> str | None:
    for m in _LOGFMT_RE.finditer(raw):
        value = re.sub(r"\\(.)", lambda e: _LOGFMT_ESCAPES.get(e.group(1), e.group(1)), m.group(1))
        if "\n" in value and _looks_like_traceback(value):
            return value
    return None

