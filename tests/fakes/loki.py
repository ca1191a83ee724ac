"""A stand-in for Grafana Loki: push, query_range (the LogQL subset we use) and the ruler's alert posting.

Real Loki cannot be had on these machines, so this speaks the parts of its HTTP API the supervisor and the
shipped rules use, with Loki's JSON shapes:
- `POST /loki/api/v1/push`, JSON `{"streams": [{"stream": {labels}, "values": [["<ns>", "line"], ...]}]}` → 204;
- `GET /loki/api/v1/query_range` with a stream selector (`=`, `!=`, `=~`, `!~`; regexes fully anchored,
  as in Loki) and line filters (`|=`, `!=`, `|~`, `!~`), `start`/`end` in ns, `limit`, `direction`;
  a query outside the subset is a 400 with a plain-text parse error, as Loki answers;
- the ruler: `evaluate(rule)` runs `sum by (labels) (count_over_time(<log query> [Nm])) > 0` and
  `notify(alertmanager_url, alerts)` posts to Alertmanager's `POST /api/v2/alerts` the array Loki's
  ruler (Prometheus' notifier) sends: `labels`, `annotations`, `startsAt`, `endsAt`, `generatorURL`.
"""

from __future__ import annotations

import ast
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

_STRING = r'"(?:[^"\\\n]|\\.)*"|`[^`]*`'
_MATCHER = re.compile(rf"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*({_STRING})\s*(?:,|$)")
_FILTER = re.compile(rf"\s*(\|=|!=|\|~|!~)\s*({_STRING})")
_RULE = re.compile(
    r"\s*sum\s+by\s*\(([^)]*)\)\s*\(\s*count_over_time\s*\((.*)\[(\d+)([smh])\]\s*\)\s*\)\s*>\s*0\s*$", re.S
)
_UNITS = {"s": 1, "m": 60, "h": 3600}


class LogQLError(ValueError):
    pass


def _literal(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    value = ast.literal_eval(token)  # Go's and Python's double-quoted escapes agree on what LogQL allows
    assert isinstance(value, str)
    return value


@dataclass(frozen=True, slots=True)
class LogQuery:
    matchers: tuple[tuple[str, str, str], ...]
    filters: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> LogQuery:
        text = text.strip()
        if not text.startswith("{") or "}" not in text:
            raise LogQLError(f"parse error : syntax error: unexpected input, expecting {{ in {text[:60]!r}")
        depth_end = _selector_end(text)
        inner, rest = text[1:depth_end], text[depth_end + 1 :]
        matchers: list[tuple[str, str, str]] = []
        pos = 0
        while pos < len(inner.strip()) and inner[pos:].strip():
            m = _MATCHER.match(inner, pos)
            if m is None:
                raise LogQLError(f"parse error : bad matcher at {inner[pos:pos + 30]!r}")
            matchers.append((m.group(1), m.group(2), _literal(m.group(3))))
            pos = m.end()
        if not matchers or all(op in ("!=", "!~") or _matches(op, v, "") for _, op, v in matchers):
            raise LogQLError("parse error : queries require at least one regexp or equality matcher that does not "
                             "have an empty-compatible value")
        filters: list[tuple[str, str]] = []
        pos = 0
        while rest[pos:].strip():
            f = _FILTER.match(rest, pos)
            if f is None:
                raise LogQLError(f"parse error : unexpected {rest[pos:pos + 30].strip()!r}")
            filters.append((f.group(1), _literal(f.group(2))))
            pos = f.end()
        return cls(tuple(matchers), tuple(filters))

    def selects(self, labels: Mapping[str, str]) -> bool:
        return all(_matches(op, value, labels.get(name, "")) for name, op, value in self.matchers)

    def keeps(self, line: str) -> bool:
        for op, value in self.filters:
            if op == "|=" and value not in line or op == "!=" and value in line:
                return False
            if op == "|~" and re.search(value, line) is None or op == "!~" and re.search(value, line) is not None:
                return False
        return True


def _selector_end(text: str) -> int:
    quote = ""
    i = 1
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in ('"', "`"):
            quote = ch
        elif ch == "}":
            return i
        i += 1
    raise LogQLError("parse error : unterminated stream selector")


def _matches(op: str, value: str, actual: str) -> bool:
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    hit = re.fullmatch(value, actual) is not None
    return hit if op == "=~" else not hit


@dataclass(frozen=True, slots=True)
class Rule:
    """One alerting rule of a Loki ruler file, as the subset `evaluate` understands."""

    alert: str
    expr: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, rule: Mapping[str, Any]) -> Rule:
        return cls(alert=rule["alert"], expr=rule["expr"], labels=dict(rule.get("labels") or {}),
                   annotations=dict(rule.get("annotations") or {}))


class FakeLoki:
    """In-memory streams behind `app`; `requests` records each query_range's parameters."""

    def __init__(self) -> None:
        self.streams: dict[tuple[tuple[str, str], ...], list[tuple[int, str]]] = {}
        self.queries: list[dict[str, str]] = []
        self.down = 0  # answer this many requests with 503 first (Loki restarting)
        self.app = Starlette(routes=[
            Route("/loki/api/v1/push", self._push, methods=["POST"]),
            Route("/loki/api/v1/query_range", self._query_range, methods=["GET"]),
            Route("/ready", lambda _r: PlainTextResponse("ready")),
        ])

    # the HTTP API -----------------------------------------------------------------------------------------

    async def _push(self, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return PlainTextResponse("only the JSON push format is supported here", status_code=415)
        try:
            body = await request.json()
            for stream in body["streams"]:
                self.add(stream["stream"], [(int(ts), line) for ts, line, *_ in stream["values"]])
        except (ValueError, KeyError, TypeError) as exc:
            return PlainTextResponse(f"error parsing push request: {exc}", status_code=400)
        return Response(status_code=204)

    async def _query_range(self, request: Request) -> Response:
        params = dict(request.query_params)
        self.queries.append(params)
        if self.down > 0:
            self.down -= 1
            return PlainTextResponse("Loki is starting", status_code=503)
        try:
            query = LogQuery.parse(params["query"])
            now = time.time_ns()
            end = int(params.get("end", now))
            start = int(params.get("start", end - 3600 * 10**9))
            limit = int(params.get("limit", "100"))
        except (LogQLError, KeyError, ValueError) as exc:
            return PlainTextResponse(str(exc), status_code=400)
        forward = params.get("direction", "backward") == "forward"
        entries = self.select(query, start, end)
        entries.sort(key=lambda e: e[1], reverse=not forward)
        entries = entries[:limit]
        result: dict[tuple[tuple[str, str], ...], list[list[str]]] = {}
        for key, ts, line in entries:
            result.setdefault(key, []).append([str(ts), line])
        return JSONResponse({"status": "success", "data": {
            "resultType": "streams",
            "result": [{"stream": dict(key), "values": values} for key, values in result.items()],
            "stats": {"summary": {"totalEntriesReturned": len(entries)}},
        }})

    # state --------------------------------------------------------------------------------------------------

    def add(self, labels: Mapping[str, str], values: list[tuple[int, str]]) -> None:
        key = tuple(sorted(labels.items()))
        self.streams.setdefault(key, []).extend(values)

    def select(self, query: LogQuery, start: int, end: int) -> list[tuple[tuple[tuple[str, str], ...], int, str]]:
        """Matching entries with `start <= ts < end` (Loki's range is end-exclusive)."""
        return [(key, ts, line) for key, values in self.streams.items() if query.selects(dict(key))
                for ts, line in values if start <= ts < end and query.keeps(line)]

    # the ruler ----------------------------------------------------------------------------------------------

    def evaluate(self, rule: Rule, *, now: datetime | None = None) -> list[dict[str, Any]]:
        """Firing alerts for `rule` at `now`, shaped as Loki's ruler posts them to Alertmanager."""
        m = _RULE.match(rule.expr)
        if m is None:
            raise LogQLError(f"rule {rule.alert}: only `sum by (...) (count_over_time(<log query> [N])) > 0`")
        by = [name.strip() for name in m.group(1).split(",") if name.strip()]
        query = LogQuery.parse(m.group(2))
        window = int(m.group(3)) * _UNITS[m.group(4)]
        at = now or datetime.now(UTC)
        end = int(at.timestamp() * 1e9) + 1
        counts: dict[tuple[tuple[str, str], ...], int] = {}
        for key, _, _ in self.select(query, end - window * 10**9, end):
            labels = dict(key)
            group = tuple((name, labels[name]) for name in by if labels.get(name))
            counts[group] = counts.get(group, 0) + 1
        alerts = []
        for group, value in sorted(counts.items()):
            labels = {**dict(group), **rule.labels, "alertname": rule.alert}
            annotations = {k: _template(v, labels, value) for k, v in rule.annotations.items()}
            expr = urllib.parse.quote_plus(rule.expr.strip())
            alerts.append({
                "labels": labels,
                "annotations": annotations,
                "startsAt": _rfc3339(at),
                # Prometheus' notifier: valid for 4 evaluation intervals unless re-sent.
                "endsAt": _rfc3339(at + timedelta(minutes=4)),
                "generatorURL": f"http://loki:3100/graph?g0.expr={expr}&g0.tab=1",
            })
        return alerts

    async def notify(self, alertmanager_url: str, alerts: list[dict[str, Any]]) -> None:
        """POST `alerts` to Alertmanager's v2 API, as the ruler's notifier does."""
        async with httpx.AsyncClient(base_url=alertmanager_url, timeout=10, trust_env=False) as client:
            response = await client.post("/api/v2/alerts", json=alerts)
            response.raise_for_status()


def _template(text: str, labels: Mapping[str, str], value: int) -> str:
    """The `{{ $labels.x }}` and `{{ $value }}` parts of Go templates that the shipped rules use."""
    text = re.sub(r"\{\{\s*\$value\s*\}\}", str(value), text)
    return re.sub(r"\{\{\s*\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", lambda m: labels.get(m.group(1), ""), text)


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# One production traceback, shared by the tests of the auto-fix, the watch and releases.
def traceback_lines(line: int = 42, user: int = 1001, message: str | None = None) -> list[str]:
    """One production traceback, one log entry per line, as Docker's log driver ships it to Loki."""
    return ["Traceback (most recent call last):",
            '  File "/app/bot/app.py", line 17, in handle_balance',
            "    return ledger.balance(user_id)",
            f'  File "/app/bot/ledger.py", line {line}, in balance',
            "    return self.totals[user_id] / self.counts[user_id]",
            message or f"KeyError: {user}"]
