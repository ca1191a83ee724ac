"""PURE: Alertmanager webhooks, directly posted tracebacks and Loki responses → frozen values; LogQL.

    WebhookError (a RunnerError and a ValueError)   a payload is malformed; the message says where
    └── LokiResponseError                            Loki answered with something other than streams

Shapes, as documented and as the real programs send them:
- Alertmanager `webhook_config` body, version "4": `version`, `groupKey`, `truncatedAlerts`, `status`,
  `receiver`, `groupLabels`, `commonLabels`, `commonAnnotations`, `externalURL`, `alerts[]` with `status`,
  `labels`, `annotations`, `startsAt`, `endsAt` (`0001-01-01T00:00:00Z` when unset), `generatorURL`,
  `fingerprint`.
- Loki `GET /loki/api/v1/query_range` for a log query: `{"status": "success", "data": {"resultType":
  "streams", "result": [{"stream": {labels}, "values": [["<unix ns>", "<line>"], ...]}]}}` (a third
  element, structured metadata, may follow the line).

Size: about 420 lines holding three concepts still (Alertmanager payloads, Loki's answers, LogQL); they split
into alertmanager.py, loki responses and logql.py (issue 15).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Literal

from runner.errors import RunnerError

__all__ = [
    "Alert",
    "AlertNotification",
    "DirectReport",
    "LogLine",
    "LokiResponseError",
    "WebhookError",
    "escape_logql",
    "logql_for",
    "parse_alertmanager",
    "parse_auto_fix",
    "parse_direct_report",
    "parse_loki_streams",
    "query_window",
    "stream_texts",
    "unix_ns",
    "validate_logql",
]

MAX_BODY_BYTES = 1 << 20
MAX_ALERTS = 1000
MAX_LABELS = 64
MAX_LABEL_VALUE = 1024
MAX_LOGQL_CHARS = 2048
MAX_LOKI_LINES = 50_000
MAX_LOKI_LINE_CHARS = 64 << 10
MAX_WINDOW = timedelta(hours=1)
# Labels that name or rank the alert rather than the log stream it came from.
ALERT_ONLY_LABELS = frozenset(
    {"alertname", "severity", "priority", "team", "alertstate", "receiver", "prometheus", "ruler", "logql"}
)

AlertStatus = Literal["firing", "resolved"]


class WebhookError(RunnerError, ValueError):
    """A webhook body or an upstream response is malformed; the message names the bad field."""


class LokiResponseError(WebhookError):
    """Loki's answer is not a successful streams result."""


@dataclass(frozen=True, slots=True)
class Alert:
    status: AlertStatus
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str
    fingerprint: str
    group_key: str


@dataclass(frozen=True, slots=True)
class AlertNotification:
    """One Alertmanager webhook call: a group of alerts sharing the route's grouping labels."""

    receiver: str
    status: AlertStatus
    group_key: str
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    external_url: str
    truncated_alerts: int
    alerts: tuple[Alert, ...]

    @property
    def firing(self) -> tuple[Alert, ...]:
        return tuple(a for a in self.alerts if a.status == "firing")


@dataclass(frozen=True, slots=True)
class DirectReport:
    """A traceback posted directly, for setups without Loki."""

    traceback: str
    service: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class LogLine:
    ts_ns: int
    labels: Mapping[str, str]
    line: str


# ---------------------------------------------------------------------------------------------- helpers


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _decode(body: object, what: str) -> object:
    if isinstance(body, (bytes, bytearray, memoryview)):
        if len(body) > MAX_BODY_BYTES:
            raise WebhookError(f"{what}: body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WebhookError(f"{what}: body is not UTF-8") from exc
    if isinstance(body, str):
        if len(body) > MAX_BODY_BYTES:
            raise WebhookError(f"{what}: body is larger than {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise WebhookError(f"{what}: body is not JSON ({exc})") from exc
    return body


def _obj(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise WebhookError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _str(obj: Mapping[str, object], key: str, where: str, *, default: str | None = None) -> str:
    value = obj.get(key, default)
    if value is None:
        raise WebhookError(f"{where}.{key}: missing")
    if not isinstance(value, str):
        raise WebhookError(f"{where}.{key}: expected a string, got {_short(value)}")
    return value


def _labels(obj: Mapping[str, object], key: str, where: str, *, required: bool = False) -> Mapping[str, str]:
    value = obj.get(key)
    if value is None:
        if required:
            raise WebhookError(f"{where}.{key}: missing")
        return MappingProxyType({})
    if not isinstance(value, dict):
        raise WebhookError(f"{where}.{key}: expected an object of strings, got {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise WebhookError(f"{where}.{key}: more than {MAX_LABELS} entries")
    for k, v in value.items():
        if not isinstance(v, str):
            raise WebhookError(f"{where}.{key}.{k}: expected a string, got {_short(v)}")
    return MappingProxyType(dict(sorted(value.items())))


def _status(obj: Mapping[str, object], where: str) -> AlertStatus:
    status = _str(obj, "status", where)
    if status == "firing":
        return "firing"
    if status == "resolved":
        return "resolved"
    raise WebhookError(f"{where}.status: expected 'firing' or 'resolved', got {_short(status)}")


def _start(obj: Mapping[str, object], key: str, where: str) -> datetime:
    value = _time(obj, key, where, required=True)
    if value is None:
        raise WebhookError(f"{where}.{key}: is the zero time")
    return value


def _time(obj: Mapping[str, object], key: str, where: str, *, required: bool) -> datetime | None:
    raw = obj.get(key)
    if raw is None and not required:
        return None
    if not isinstance(raw, str):
        raise WebhookError(f"{where}.{key}: expected an RFC 3339 timestamp, got {_short(raw)}")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise WebhookError(f"{where}.{key}: not an RFC 3339 timestamp: {_short(raw)}") from exc
    if value.tzinfo is None:
        raise WebhookError(f"{where}.{key}: timestamp has no time zone: {_short(raw)}")
    if value.year <= 1:  # Go's zero time: Alertmanager's "not set"
        return None
    return value.astimezone(UTC)


# ---------------------------------------------------------------------------------------------- parsers


def parse_alertmanager(body: object) -> AlertNotification:
    """An Alertmanager webhook (version 4) body: bytes, str or decoded JSON. Raises WebhookError."""
    data = _obj(_decode(body, "webhook"), "webhook")
    if "version" not in data:
        raise WebhookError("webhook.version: missing (not an Alertmanager webhook?)")
    if data["version"] != "4":
        raise WebhookError(f"webhook.version: expected '4', got {_short(data['version'])}")
    group_key = _str(data, "groupKey", "webhook")
    truncated = data.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise WebhookError(f"webhook.truncatedAlerts: expected a count, got {_short(truncated)}")
    raw_alerts = data.get("alerts")
    if not isinstance(raw_alerts, list):
        raise WebhookError(f"webhook.alerts: expected a list, got {type(raw_alerts).__name__}")
    if len(raw_alerts) > MAX_ALERTS:
        raise WebhookError(f"webhook.alerts: more than {MAX_ALERTS} alerts")
    alerts = []
    for i, raw in enumerate(raw_alerts):
        where = f"webhook.alerts[{i}]"
        item = _obj(raw, where)
        alerts.append(
            Alert(
                status=_status(item, where),
                labels=_labels(item, "labels", where, required=True),
                annotations=_labels(item, "annotations", where),
                starts_at=_start(item, "startsAt", where),
                ends_at=_time(item, "endsAt", where, required=False),
                generator_url=_str(item, "generatorURL", where, default=""),
                fingerprint=_str(item, "fingerprint", where, default=""),
                group_key=group_key,
            )
        )
    return AlertNotification(
        receiver=_str(data, "receiver", "webhook", default=""),
        status=_status(data, "webhook"),
        group_key=group_key,
        group_labels=_labels(data, "groupLabels", "webhook"),
        common_labels=_labels(data, "commonLabels", "webhook"),
        external_url=_str(data, "externalURL", "webhook", default=""),
        truncated_alerts=truncated,
        alerts=tuple(alerts),
    )


_DIRECT_KEYS = frozenset({"traceback", "service", "labels"})


def parse_direct_report(body: object) -> DirectReport:
    """`{"traceback": "...", "service": "...", "labels": {...}}`; unknown keys are refused."""
    data = _obj(_decode(body, "report"), "report")
    unknown = sorted(set(data) - _DIRECT_KEYS)
    if unknown:
        raise WebhookError(f"report: unknown keys {unknown}")
    traceback = _str(data, "traceback", "report")
    if not traceback.strip():
        raise WebhookError("report.traceback: empty")
    return DirectReport(
        traceback=traceback,
        service=_str(data, "service", "report", default=""),
        labels=_labels(data, "labels", "report"),
    )


def parse_auto_fix(body: object) -> AlertNotification | DirectReport:
    """Either body `POST /agent/auto-fix` accepts, told apart by `version` versus `traceback`."""
    data = _decode(body, "webhook")
    if isinstance(data, dict) and "traceback" in data and "version" not in data:
        return parse_direct_report(data)
    return parse_alertmanager(data)


def parse_loki_streams(body: object) -> list[LogLine]:
    """A Loki query_range answer for a log query → its lines, oldest first, ties in stream order."""
    try:
        data = _obj(_decode(body, "loki"), "loki")
    except WebhookError as exc:
        raise LokiResponseError(str(exc)) from exc
    if data.get("status") != "success":
        raise LokiResponseError(f"loki.status: expected 'success', got {_short(data.get('status'))}")
    payload = data.get("data")
    if not isinstance(payload, dict):
        raise LokiResponseError("loki.data: expected an object")
    if payload.get("resultType") != "streams":
        got = _short(payload.get("resultType"))
        raise LokiResponseError(f"loki.data.resultType: expected 'streams', got {got}")
    result = payload.get("result")
    if not isinstance(result, list):
        raise LokiResponseError("loki.data.result: expected a list")
    lines: list[tuple[int, int, LogLine]] = []
    for i, stream in enumerate(result):
        where = f"loki.data.result[{i}]"
        if not isinstance(stream, dict):
            raise LokiResponseError(f"{where}: expected an object")
        try:
            labels = _labels(stream, "stream", where, required=True)
        except WebhookError as exc:
            raise LokiResponseError(str(exc)) from exc
        values = stream.get("values")
        if not isinstance(values, list):
            raise LokiResponseError(f"{where}.values: expected a list")
        for j, entry in enumerate(values):
            if not (isinstance(entry, list) and len(entry) in (2, 3)):
                raise LokiResponseError(f"{where}.values[{j}]: expected [timestamp, line]")
            ts, line = entry[0], entry[1]
            if not (isinstance(ts, str) and ts.isascii() and ts.isdigit() and len(ts) <= 20):
                raise LokiResponseError(f"{where}.values[{j}][0]: expected nanoseconds, got {_short(ts)}")
            if not isinstance(line, str):
                raise LokiResponseError(f"{where}.values[{j}][1]: expected a string")
            if len(lines) >= MAX_LOKI_LINES:
                raise LokiResponseError(f"loki: more than {MAX_LOKI_LINES} lines; narrow the query")
            lines.append((int(ts), len(lines), LogLine(int(ts), labels, line[:MAX_LOKI_LINE_CHARS])))
    lines.sort(key=lambda item: (item[0], item[1]))
    return [line for _, _, line in lines]


def stream_texts(lines: Sequence[LogLine]) -> list[str]:
    """One text per stream, lines in time order: tracebacks must not be stitched across streams."""
    streams: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for line in lines:
        streams.setdefault(tuple(sorted(line.labels.items())), []).append(line.line)
    return ["\n".join(texts) for texts in streams.values()]


# ---------------------------------------------------------------------------------------------- LogQL

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
        raise WebhookError(f"logql: not a stream selector with line filters: {_short(query)}")
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


def unix_ns(moment: datetime) -> int:
    """Loki's `start`/`end`: integer nanoseconds since the epoch, exact (no float rounding)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
