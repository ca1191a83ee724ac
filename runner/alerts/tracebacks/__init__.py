"""PURE: find Python tracebacks in log text, parse them into frozen values and fingerprint them.

Log text arrives in many shapes: plain stderr, `logging` records whose first line carries a prefix,
per-line prefixes (timestamp, level, request id, `bot-1  | `), JSON lines (structlog, python-json-logger,
ECS/Datadog `error.stack`), logfmt, several requests' tracebacks interleaved line by line, and lines cut
at a size limit. `extract_tracebacks` reads all of them; `parse_traceback` reads one.

One module per stage, each pure:

    routing      lines -> buckets by prefix (interleaved requests apart); the API below
    structured   a JSON or logfmt line carrying a whole traceback in one field
    blocks       a bucket's lines -> chained exceptions, exception groups, frames
    fingerprint  repository frames -> fingerprint and summary; normalise_message
    grammar      the anchored regexes of a traceback's lines
    values       Frame, ChainedException, ParsedTraceback; the shared limits

Input is capped (`MAX_TEXT_CHARS`, `MAX_LINE_CHARS`) before anything else looks at it, and every regex
is anchored or free of nested quantifiers, so an enormous line costs the cap, not its size.
"""

from __future__ import annotations

from runner.alerts.tracebacks.fingerprint import normalise_message
from runner.alerts.tracebacks.routing import extract_tracebacks, parse_traceback
from runner.alerts.tracebacks.values import (
    MAX_LINE_CHARS,
    MAX_TEXT_CHARS,
    ChainedException,
    Frame,
    ParsedTraceback,
)

__all__ = [
    "MAX_LINE_CHARS",
    "MAX_TEXT_CHARS",
    "ChainedException",
    "Frame",
    "ParsedTraceback",
    "extract_tracebacks",
    "normalise_message",
    "parse_traceback",
]
