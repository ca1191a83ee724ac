"""Loki HTTP client: `query_range` for the log lines behind an alert, retried, bounded, errors mapped.

    RunnerError
    └── LokiUnavailable      Loki could not be reached, kept failing, or answered with something unusable

Only what the auto-fix needs: a log query (`GET /loki/api/v1/query_range`), oldest lines first.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from types import TracebackType

import httpx

from runner.alerts.webhooks import LogLine, LokiResponseError, parse_loki_streams, unix_ns, validate_logql
from runner.errors import RunnerError

__all__ = ["DEFAULT_LIMIT", "DEFAULT_RETRIES", "DEFAULT_TIMEOUT", "LokiClient", "LokiUnavailable"]

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2  # after the first attempt
DEFAULT_BACKOFF = 0.25  # seconds before the first retry; doubled each time
DEFAULT_LIMIT = 5000
# 5000 lines of tracebacks easily pass the 1 MiB a webhook body may have; lines are cut at 64 KiB when parsed.
MAX_RESPONSE_BYTES = 64 << 20
QUERY_RANGE = "/loki/api/v1/query_range"
# Worth another try: Loki restarting, a query frontend queue full, a proxy in between timing out.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class LokiUnavailable(RunnerError):
    """Loki gave no usable answer (after the retries); the message says what went wrong last."""


class LokiClient:
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

    async def __aenter__(self) -> LokiClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

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
