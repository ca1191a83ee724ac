"""PURE: the LogQL that fetches the log lines behind an alert, and the check any configured query passes.

Only a stream selector followed by line filters is accepted (no metric queries, no pipelines that could
reshape what the auto-fix reads); values are escaped as Go string literals, so a label cannot break out.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from runner.alerts import payload
from runner.alerts.alertmanager import Alert
from runner.alerts.payload import WebhookError

__all__ = ["ALERT_ONLY_LABELS", "WebhookError", "escape_logql", "logql_for", "query_window", "validate_logql"]

MAX_LABEL_VALUE = 1024
MAX_LOGQL_CHARS = 2048
MAX_WINDOW = timedelta(hours=1)
# Labels that name or rank the alert rather than the log stream it came from.
ALERT_ONLY_LABELS = frozenset(
    {"alertname", "severity", "priority", "team", "alertstate", "receiver", "prometheus", "ruler", "logql"}
)


_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_WS = r"[ \t\r\n]*"
_STRING = r'(?:"(?:[^"\\\n]|\\.)*"|`[^`]*`)'
_MATCHER = rf"[a-zA-Z_][a-zA-Z0-9_]*{_WS}(?:=~|!~|!=|=){_WS}{_STRING}"
_SELECTOR = rf"\{{{_WS}{_MATCHER}(?:{_WS},{_WS}{_MATCHER})*{_WS},?{_WS}\}}"
_FILTER = rf"(?:\|=|!=|\|~|!~){_WS}{_STRING}"
_QUERY = re.compile(rf"{_WS}{_SELECTOR}(?:{_WS}{_FILTER})*{_WS}")


def escape_logql(value: str) -> str:
    """`value` as a LogQL (Go) double-quoted string literal."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:  # a lone surrogate cannot be sent as UTF-8
            out.append("\\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def validate_logql(query: str) -> str:
    """`query` if it is a stream selector followed only by line filters, else WebhookError."""
    if len(query) > MAX_LOGQL_CHARS:
        raise WebhookError(f"logql: longer than {MAX_LOGQL_CHARS} characters")
    if _QUERY.fullmatch(query) is None:
        raise WebhookError(f"logql: not a stream selector with line filters: {payload.short(query)}")
    return query.strip()


def logql_for(alert: Alert, default_selector: str, *, line_filter: str | None = None) -> str:
    """The LogQL to fetch the log lines behind `alert`.

    An annotation `logql` wins when present (validated: a selector and line filters, nothing else).
    Otherwise the alert's stream labels (not `alertname`, `severity` and the like; only safe label
    names, empty values skipped) make the selector, or `default_selector` when none is left.
    `line_filter` (e.g. `|= "Traceback"`) is appended if given. None is the default on purpose: when
    each line of a traceback is its own Loki entry, a filter on "Traceback" would keep only the header,
    so the short window around the alert bounds the volume instead.
    """
    override = alert.annotations.get("logql")
    if override:
        return validate_logql(override)
    matchers = [
        f"{name}={escape_logql(value)}"
        for name, value in sorted(alert.labels.items())
        if name not in ALERT_ONLY_LABELS
        and not name.startswith("__")
        and _LABEL_NAME.fullmatch(name)
        and value
        and len(value) <= MAX_LABEL_VALUE
    ]
    query = "{" + ", ".join(matchers) + "}" if matchers else validate_logql(default_selector)
    if line_filter:
        query = validate_logql(f"{query} {line_filter.strip()}")
    return query


def query_window(
    alert: Alert, before: timedelta = timedelta(minutes=5), after: timedelta = timedelta(minutes=1)
) -> tuple[datetime, datetime]:
    """(start, end) in UTC around the alert: from `before` its start to `after` its end, at most an hour."""
    start = alert.starts_at - before
    last = alert.ends_at if alert.status == "resolved" and alert.ends_at is not None else alert.starts_at
    end = max(last, alert.starts_at) + after
    return start, min(end, start + MAX_WINDOW)

