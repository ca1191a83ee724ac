"""Loki: `query_range` for the log lines behind an alert, retried, bounded, errors mapped; its answers parsed.

    RunnerError
    ├── LokiUnavailable      Loki could not be reached, kept failing, or answered with something unusable
    └── WebhookError
        └── LokiResponseError   an answer is not a successful streams result (parse_loki_streams)

Only what the auto-fix needs: a log query (`GET /loki/api/v1/query_range`), oldest lines first. The
answer's shape: `{"status": "success", "data": {"resultType": "streams", "result": [{"stream": {labels},
"values": [["<unix ns>", "<line>"], ...]}]}}` (a third element, structured metadata, may follow the line).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from runner.alerts import payload
from runner.alerts.logql import validate_logql
from runner.alerts.payload import WebhookError
from runner.errors import RunnerError
from runner.resource import AsyncResource

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "LogLine",
    "LokiClient",
    "LokiResponseError",
    "LokiUnavailable",
    "parse_loki_streams",
    "stream_texts",
    "unix_ns",
]

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2  # after the first attempt
DEFAULT_BACKOFF = 0.25  # seconds before the first retry; doubled each time
DEFAULT_LIMIT = 5000
# 5000 lines of tracebacks easily pass the 1 MiB a webhook body may have; lines are cut at 64 KiB when parsed.
MAX_RESPONSE_BYTES = 64 << 20
QUERY_RANGE = "/loki/api/v1/query_range"
# Worth another try: Loki restarting, a query frontend queue full, a proxy in between timing out.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_LOKI_LINES = 50_000
MAX_LOKI_LINE_CHARS = 64 << 10


class LokiUnavailable(RunnerError):
    """Loki gave no usable answer (after the retries); the message says what went wrong last."""


class LokiResponseError(WebhookError):
    """Loki's answer is not a successful streams result."""


@dataclass(frozen=True, slots=True)
class LogLine:
    ts_ns: int
    labels: Mapping[str, str]
    line: str


class LokiClient(AsyncResource):
    """`async with LokiClient("http://loki:3100") as loki: lines = await loki.query_range(q, start, end)`."""

    def __init__(
        self,
        base_url: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        assert retries >= 0 and timeout > 0
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        # Loki on loopback or in the compose network: never through an environment proxy.
        self._client = httpx.AsyncClient(base_url=self.base_url, transport=transport, timeout=timeout,
                                         trust_env=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def query_range(self, logql: str, start: datetime, end: datetime,
                          limit: int = DEFAULT_LIMIT) -> list[LogLine]:
        """The lines `logql` (a selector and line filters) matches in [start, end], oldest first."""
        params = {"query": validate_logql(logql), "start": str(unix_ns(start)), "end": str(unix_ns(end)),
                  "limit": str(limit), "direction": "forward"}
        last = "no attempt made"
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
            try:
                async with asyncio.timeout(self._timeout):
                    response, body = await self._get(params)
            except TimeoutError:
                last = f"no answer within {self._timeout:g}s"
                continue
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code in RETRY_STATUSES:
                last = f"HTTP {response.status_code}: {_snippet(body)}"
                continue
            if response.status_code != 200:  # a bad query or auth: retrying cannot help
                raise LokiUnavailable(f"Loki refused the query (HTTP {response.status_code}): {_snippet(body)}")
            try:
                return parse_loki_streams(json.loads(body))  # decoded here: our own size cap, not a webhook's
            except (ValueError, LokiResponseError) as exc:
                raise LokiUnavailable(f"Loki answered with something other than log streams: {exc}") from exc
        raise LokiUnavailable(f"Loki at {self.base_url} unavailable after {self._retries + 1} attempt(s): {last}")

    async def _get(self, params: dict[str, str]) -> tuple[httpx.Response, bytes]:
        async with self._client.stream("GET", QUERY_RANGE, params=params) as response:
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise LokiUnavailable(f"Loki's answer is larger than {MAX_RESPONSE_BYTES} bytes; narrow the query")
                chunks.append(chunk)
            return response, b"".join(chunks)


def _snippet(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip()
    return text or "(empty body)"


# ---------------------------------------------------------------------------------------------- answers


def parse_loki_streams(body: object) -> list[LogLine]:
    """A Loki query_range answer for a log query → its lines, oldest first, ties in stream order."""
    try:
        data = payload.obj(payload.decode(body, "loki"), "loki")
    except WebhookError as exc:
        raise LokiResponseError(str(exc)) from exc
    if data.get("status") != "success":
        raise LokiResponseError(f"loki.status: expected 'success', got {payload.short(data.get('status'))}")
    answer = data.get("data")
    if not isinstance(answer, dict):
        raise LokiResponseError("loki.data: expected an object")
    if answer.get("resultType") != "streams":
        got = payload.short(answer.get("resultType"))
        raise LokiResponseError(f"loki.data.resultType: expected 'streams', got {got}")
    result = answer.get("result")
    if not isinstance(result, list):
        raise LokiResponseError("loki.data.result: expected a list")
    lines: list[tuple[int, int, LogLine]] = []
    for i, stream in enumerate(result):
        where = f"loki.data.result[{i}]"
        if not isinstance(stream, dict):
            raise LokiResponseError(f"{where}: expected an object")
        try:
            labels = payload.labels(stream, "stream", where, required=True)
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
                raise LokiResponseError(f"{where}.values[{j}][0]: expected nanoseconds, got {payload.short(ts)}")
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



def unix_ns(moment: datetime) -> int:
    """Loki's `start`/`end`: integer nanoseconds since the epoch, exact (no float rounding)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
