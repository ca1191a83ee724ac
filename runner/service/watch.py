"""Post-deploy watch: for a while after a release, compare the bot's errors with what they were before it.

A release that passes its health check can still be wrong: the error it was meant to fix comes back, a new
error appears, or errors simply become more frequent. `judge` (pure) says which, if any; `Watch` (the thin
shell) feeds it from Loki, polled, and from the alerts that reach the supervisor meanwhile, and hands the
first verdict to whoever rolls back.

What counts as an error here is a Python traceback, keyed by the fingerprint the auto-fix uses
(runner/alerts/tracebacks.py), so "the same error" means the same thing in both places.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from runner.alerts.loki import LokiClient, LokiUnavailable, stream_texts
from runner.alerts.tracebacks import extract_tracebacks
from runner.config import DEFAULT_WATCH_SELECTOR, Settings
from runner.errors import RunnerError

log = logging.getLogger("agent_runner.watch")

DEFAULT_SELECTOR = DEFAULT_WATCH_SELECTOR  # the streams the shipped Loki ruler rule reads (monitoring/)


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """How long to watch, how often to look, and what counts as worse than before.

    `seconds` 0 turns the watch off. The error rate is compared per second over `baseline_seconds` before the
    deploy and the time since; it must be `rate_factor` times higher and at least `min_errors` tracebacks, so a
    quiet bot's first error after a deploy is judged by fingerprint, not by rate.
    """

    seconds: float = 600.0
    interval: float = 30.0
    baseline_seconds: float = 3600.0
    selector: str = DEFAULT_SELECTOR
    rate_factor: float = 2.0
    min_errors: int = 3

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    @classmethod
    def from_settings(cls, settings: Settings) -> WatchConfig:
        return cls(seconds=float(settings.watch_seconds), interval=float(settings.watch_interval),
                   baseline_seconds=float(settings.watch_baseline_seconds), selector=settings.watch_selector)


@dataclass(slots=True)
class Errors:
    """Tracebacks seen over `seconds`: occurrences by fingerprint, and a one-line summary of each."""

    seconds: float
    counts: Counter[str] = field(default_factory=Counter)
    summaries: dict[str, str] = field(default_factory=dict)

    def add(self, fingerprint: str, occurrences: int = 1, summary: str = "") -> None:
        self.counts[fingerprint] += occurrences
        if summary and fingerprint not in self.summaries:
            self.summaries[fingerprint] = summary

    def merged(self, other: Errors) -> Errors:
        """Both sets of observations over the longer span: Loki's count and the alerts' are of the same errors,
        so the larger count per fingerprint stands (never the sum)."""
        out = Errors(max(self.seconds, other.seconds), Counter(self.counts), dict(self.summaries))
        for fingerprint, n in other.counts.items():
            out.counts[fingerprint] = max(out.counts[fingerprint], n)
            out.summaries.setdefault(fingerprint, other.summaries.get(fingerprint, ""))
        return out

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def per_hour(self) -> float:
        return self.total * 3600.0 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why the release should be rolled back, in words for the owner; `fingerprint` names the error, if one."""

    reason: str
    fingerprint: str | None = None


def judge(before: Errors | None, after: Errors, *, fixed: frozenset[str], known: frozenset[str],
          config: WatchConfig) -> Verdict | None:
    """Should the release be rolled back, given the errors `before` it (None: unknown) and `after` it?

    In order: an error the release fixed happened again; an error nobody has seen before (not in `before`,
    not in `known`, the fingerprints of earlier auto-fix tasks) appeared; the error rate rose. Without a
    baseline (Loki down or not configured) only the first two apply, and "seen before" means `known`.
    """
    for fingerprint, n in after.counts.most_common():
        if fingerprint in fixed:
            return Verdict(f"the error this release fixed happened again {n} time(s) after the deploy"
                           f"{_about(after, fingerprint)}", fingerprint)
    seen = known | (frozenset(before.counts) if before is not None else frozenset())
    for fingerprint, n in after.counts.most_common():
        if fingerprint not in seen:
            return Verdict(f"a new error appeared after the deploy ({n} time(s)){_about(after, fingerprint)}",
                           fingerprint)
    if before is None or after.total < config.min_errors:
        return None
    if after.per_hour() > config.rate_factor * before.per_hour():
        return Verdict(f"the error rate rose from {before.per_hour():.1f}/h before the deploy to "
                       f"{after.per_hour():.1f}/h after it ({after.total} traceback(s) in {after.seconds:.0f}s)")
    return None


def _about(errors: Errors, fingerprint: str) -> str:
    summary = errors.summaries.get(fingerprint, "")
    return f": {summary} (fingerprint {fingerprint})" if summary else f" (fingerprint {fingerprint})"


class ErrorSource(Protocol):
    """Where the bot's tracebacks can be counted over a span of time."""

    async def errors(self, start: float, end: float) -> Errors | None:
        """Tracebacks logged in [start, end] (unix seconds); None when the source holds no log of that span.
        Raises LokiUnavailable (or the source's own RunnerError) when it cannot be read now."""
        ...

    async def aclose(self) -> None:
        """Release what the source holds."""
        ...


class LokiErrors:
    """Tracebacks in the bot's log streams, from Loki's `query_range`, parsed as the auto-fix parses them."""

    def __init__(self, loki: LokiClient, *, selector: str = DEFAULT_SELECTOR, repo_roots: Sequence[str] = ()) -> None:
        self._loki = loki
        self._selector = selector
        self._roots = tuple(repo_roots)

    async def errors(self, start: float, end: float) -> Errors:
        lines = await self._loki.query_range(self._selector, _utc(start), _utc(end))
        out = Errors(max(0.0, end - start))
        for text in stream_texts(lines):  # one stream at a time, as the auto-fix reads them
            _count(out, text, self._roots)
        return out

    async def aclose(self) -> None:
        return None  # the client is the service's, shared with the alert route; its owner closes it


class ContainerLogErrors:
    """Tracebacks in a Docker container's own log (stdout and stderr, where Python prints an unhandled one),
    for a bot the docker deployer runs and no Loki collects.

    Only the running container's log exists: a deploy replaces the container, so the span before it is
    unknown (None), and "seen before" rests on earlier auto-fix tasks; the rate rule needs Loki.
    """

    def __init__(self, container: str, *, repo_roots: Sequence[str] = (), client: Any | None = None) -> None:
        self._container = container
        self._roots = tuple(repo_roots)
        self._client = client
        self._owns_client = client is None

    async def errors(self, start: float, end: float) -> Errors | None:
        started, text = await asyncio.to_thread(self._read, start, end)
        if started is None or started > start + 1:  # no container, or its log does not reach back to `start`
            return None
        out = Errors(max(0.0, end - start))
        _count(out, text, self._roots)
        return out

    def _read(self, start: float, end: float) -> tuple[float | None, str]:
        import docker.errors

        from runner.docker_engine import EngineUnavailable, connect, short

        try:
            if self._client is None:
                self._client = connect()
            container = self._find(self._client, docker.errors.NotFound)
        except (docker.errors.DockerException, EngineUnavailable) as exc:
            raise WatchSourceError(f"cannot read the logs of container {self._container!r}: {exc}") from None
        if container is None:
            return None, ""
        started = datetime.fromisoformat(container.attrs["State"]["StartedAt"][:26].rstrip("Z") + "+00:00")
        try:
            raw = container.logs(stdout=True, stderr=True, since=int(start), until=int(end) + 1)
        except docker.errors.DockerException as exc:
            raise WatchSourceError(f"cannot read the logs of container {self._container!r}: {short(exc)}") from None
        return started.timestamp(), raw.decode("utf-8", "replace")

    def _find(self, client: Any, not_found: type[Exception]) -> Any | None:
        """The container named so, else the one container of the compose service so named (as the deployer
        finds what it replaces)."""
        try:
            return client.containers.get(self._container)
        except not_found:
            found = client.containers.list(all=True, filters={"label": f"com.docker.compose.service={self._container}"})
            return found[0] if len(found) == 1 else None

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await asyncio.to_thread(self._client.close)
            self._client = None


class WatchSourceError(RunnerError):
    """The watch's error source cannot be read now (engine down, permissions); the watch tries again later."""


def _count(out: Errors, text: str, roots: Sequence[str]) -> None:
    for tb in extract_tracebacks(text, repo_roots=roots):
        out.add(tb.fingerprint, 1, tb.summary)


def _utc(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


OnVerdict = Callable[[Verdict], Awaitable[None]]


class Watch:
    """One release's watch: from `deployed_at` until `until` (unix seconds), polling `source` every
    `config.interval` and hearing alerts through `observe`. `run()` returns the first verdict, or None when
    the window passed cleanly; the caller rolls back.
    """

    def __init__(self, *, deployed_at: float, until: float, config: WatchConfig, fixed: frozenset[str],
                 known: frozenset[str], source: ErrorSource | None, clock: Callable[[], float] = time.time) -> None:
        self.deployed_at = deployed_at
        self.until = until
        self._config = config
        self._fixed = fixed
        self._known = known
        self._source = source
        self._clock = clock
        self._before: Errors | None = None  # None: unknown (not read yet, or the source has no log of it)
        self._baseline_read = False
        self._polled = Errors(0.0)
        self._alerted = Errors(0.0)
        self._woken = asyncio.Event()
        self.verdict: Verdict | None = None
        self.polls = 0
        self.source_failures = 0

    def observe(self, fingerprint: str, occurrences: int, summary: str = "") -> Verdict | None:
        """An alert's error reached the supervisor during the watch. Returns the verdict at once when this
        error condemns the release (the caller then need not start a fix for it: the rollback is the fix)."""
        self._alerted.add(fingerprint, max(1, occurrences), summary)
        self._alerted.seconds = max(1.0, self._clock() - self.deployed_at)
        verdict = self._judge()
        if verdict is not None:
            self.verdict = verdict
            self._woken.set()
        return verdict

    async def run(self) -> Verdict | None:
        while self.verdict is None:
            await self._poll()
            if self.verdict is not None:
                break
            left = self.until - self._clock()
            if left <= 0:
                return None
            try:
                async with asyncio.timeout(min(self._config.interval, left)):
                    await self._woken.wait()
            except TimeoutError:
                pass
        return self.verdict

    async def _poll(self) -> None:
        if self._source is None:
            return
        now = min(self._clock(), self.until)
        try:
            if not self._baseline_read:
                self._before = await self._source.errors(self.deployed_at - self._config.baseline_seconds,
                                                         self.deployed_at)
                self._baseline_read = True
            polled = await self._source.errors(self.deployed_at, now)
        except Exception as exc:  # Loki down for a while must not end the watch: try again next interval
            self.source_failures += 1
            log.warning("post-deploy watch: could not read the errors: %s", exc)
            if not isinstance(exc, LokiUnavailable | WatchSourceError):
                log.debug("unexpected error source failure", exc_info=True)
            return
        if polled is not None:
            self._polled = polled
        self.polls += 1
        verdict = self._judge()
        if verdict is not None:
            self.verdict = verdict

    def _judge(self) -> Verdict | None:
        after = self._polled.merged(self._alerted)
        after.seconds = max(1.0, min(self._clock(), self.until) - self.deployed_at)
        return judge(self._before, after, fixed=self._fixed, known=self._known, config=self._config)
