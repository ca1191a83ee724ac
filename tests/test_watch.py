"""The post-deploy watch: the judgement (pure), the polling shell, and Loki as its error source."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from runner.alerts.loki import LokiClient, LokiUnavailable
from runner.alerts.tracebacks import extract_tracebacks
from runner.service.watch import ContainerLogErrors, Errors, LokiErrors, Watch, WatchConfig, judge
from tests.fakes.loki import FakeLoki, traceback_lines

CONFIG = WatchConfig(seconds=600, interval=0.05, baseline_seconds=3600, rate_factor=2.0, min_errors=3)
NONE: frozenset[str] = frozenset()


def errors(seconds: float, **counts: int) -> Errors:
    return Errors(seconds, Counter(counts), {name: f"{name} happened" for name in counts})


# ------------------------------------------------------------------------------------------------ judge


def test_judge_rolls_back_when_the_fixed_error_comes_back() -> None:
    verdict = judge(errors(3600, a=10), errors(60, a=1), fixed=frozenset({"a"}), known=NONE, config=CONFIG)
    assert verdict is not None and verdict.fingerprint == "a"
    assert "the error this release fixed happened again 1 time(s)" in verdict.reason and "a happened" in verdict.reason


def test_judge_rolls_back_on_an_error_never_seen_before() -> None:
    verdict = judge(errors(3600, old=4), errors(60, old=1, new=1), fixed=NONE, known=NONE, config=CONFIG)
    assert verdict is not None and verdict.fingerprint == "new" and "a new error appeared" in verdict.reason


def test_judge_counts_earlier_auto_fix_errors_as_seen() -> None:
    assert judge(errors(3600), errors(60, old=1), fixed=NONE, known=frozenset({"old"}), config=CONFIG) is None
    assert judge(None, errors(60, old=2), fixed=NONE, known=frozenset({"old"}), config=CONFIG) is None


def test_judge_rolls_back_when_the_rate_rises_past_the_factor() -> None:
    before = errors(3600, old=6)  # 6/h
    assert judge(before, errors(600, old=2), fixed=NONE, known=NONE, config=CONFIG) is None  # 12/h, but only 2
    assert judge(before, errors(1800, old=5), fixed=NONE, known=NONE, config=CONFIG) is None  # 10/h: under 2x
    verdict = judge(before, errors(600, old=3), fixed=NONE, known=NONE, config=CONFIG)  # 18/h, 3 errors
    assert verdict is not None and verdict.fingerprint is None
    assert verdict.reason.startswith("the error rate rose from 6.0/h before the deploy to 18.0/h after it")


def test_judge_without_a_baseline_judges_fingerprints_only() -> None:
    assert judge(None, errors(60, old=50), fixed=NONE, known=frozenset({"old"}), config=CONFIG) is None
    assert judge(None, errors(60, x=1), fixed=NONE, known=frozenset({"old"}), config=CONFIG) is not None


def test_errors_merged_takes_the_larger_count_not_the_sum() -> None:
    merged = errors(60, a=3, b=1).merged(errors(30, a=2, c=4))
    assert merged.counts == Counter(a=3, b=1, c=4) and merged.seconds == 60


# ---------------------------------------------------------------------------------------------- the shell


class Recorded:
    """An ErrorSource over a list of (unix time, fingerprint) the test appends to; or one that always fails."""

    def __init__(self, *, broken: bool = False) -> None:
        self.seen: list[tuple[float, str]] = []
        self.calls: list[tuple[float, float]] = []
        self.broken = broken

    async def errors(self, start: float, end: float) -> Errors:
        self.calls.append((start, end))
        if self.broken:
            raise LokiUnavailable("Loki at http://loki:3100 unavailable after 3 attempt(s): connection refused")
        out = Errors(end - start)
        for at, fingerprint in self.seen:
            if start <= at <= end:
                out.add(fingerprint)
        return out


async def test_watch_finds_a_new_error_in_the_logs_and_stops_at_once() -> None:
    now = time.time()
    source = Recorded()
    source.seen.append((now - 100, "old"))
    watch = Watch(deployed_at=now, until=now + 30, config=CONFIG, fixed=NONE, known=NONE, source=source)
    runner = asyncio.create_task(watch.run())
    await asyncio.sleep(0.2)
    assert not runner.done()  # the old error is in the baseline
    source.seen.append((time.time(), "fresh"))
    verdict = await asyncio.wait_for(runner, 5)
    assert verdict is not None and verdict.fingerprint == "fresh"
    assert source.calls[0] == (now - 3600, now)  # the baseline: the hour before the deploy


async def test_watch_ends_clean_when_the_window_passes() -> None:
    now = time.time()
    source = Recorded()
    watch = Watch(deployed_at=now, until=now + 0.3, config=CONFIG, fixed=NONE, known=NONE, source=source)
    assert await asyncio.wait_for(watch.run(), 5) is None
    assert watch.polls >= 2 and watch.source_failures == 0


async def test_watch_outlives_a_dead_loki_and_still_hears_alerts() -> None:
    now = time.time()
    watch = Watch(deployed_at=now, until=now + 30, config=CONFIG, fixed=frozenset({"fixed"}), known=NONE,
                  source=Recorded(broken=True))
    runner = asyncio.create_task(watch.run())
    await asyncio.sleep(0.2)
    assert not runner.done() and watch.source_failures >= 2 and watch.polls == 0
    assert watch.observe("unseen", 1) is not None  # no baseline and not in `known`: a new error
    verdict = await asyncio.wait_for(runner, 5)
    assert verdict is not None and verdict.fingerprint == "unseen"


async def test_watch_observe_wakes_the_loop_with_the_verdict_for_the_fixed_error() -> None:
    now = time.time()
    watch = Watch(deployed_at=now, until=now + 30, config=WatchConfig(interval=60), fixed=frozenset({"fixed"}),
                  known=frozenset({"known"}), source=None)
    runner = asyncio.create_task(watch.run())
    await asyncio.sleep(0.05)
    assert watch.observe("known", 1) is None
    verdict = watch.observe("fixed", 3, "KeyError in bot/ledger.py")
    assert verdict is not None and "happened again 3 time(s)" in verdict.reason and "bot/ledger.py" in verdict.reason
    assert await asyncio.wait_for(runner, 1) == verdict  # at once, not after the 60 s interval


# ------------------------------------------------------------------------------------------- Loki source


async def test_loki_errors_counts_tracebacks_by_the_auto_fix_fingerprint() -> None:
    fake = FakeLoki()
    now = time.time()
    base = int(now) * 10**9
    for i, stream in enumerate(("bot-1", "bot-2")):
        fake.add({"service": "bot", "container": stream},
                 [(base + i * 1000 + j, line) for j, line in enumerate(traceback_lines(user=i))])
    fake.add({"service": "bot", "container": "bot-1"}, [(base + 5000, "INFO all good")])
    expected = extract_tracebacks("\n".join(traceback_lines()), repo_roots=["/app"])[0]
    async with LokiClient("http://loki:3100", transport=httpx.ASGITransport(app=fake.app), retries=0) as loki:
        found = await LokiErrors(loki, selector='{service="bot"}', repo_roots=["/app"]).errors(now - 1, now + 1)
        assert (await LokiErrors(loki, selector='{service="other"}').errors(now - 1, now + 1)).total == 0
    assert found.counts == Counter({expected.fingerprint: 2})
    assert found.summaries[expected.fingerprint] == expected.summary
    assert found.seconds == 2
    start, end = (int(fake.queries[0][k]) for k in ("start", "end"))
    assert datetime.fromtimestamp(start / 1e9, UTC) < datetime.fromtimestamp(end / 1e9, UTC)


# -------------------------------------------------------------------------------------- container logs


@pytest.mark.docker
async def test_container_log_errors_reads_the_tracebacks_a_real_container_printed(docker_client: Any) -> None:
    """A traceback Python prints to stderr lands in the container's log; the span before the container
    started is unknown (None), as is a container that does not exist."""
    name = f"agent-runner-watch-test-{os.getpid()}"
    script = ("import time\n"
              "def handle(user):\n"
              "    return {'alice': 1}[user]\n"
              "time.sleep(1.5)\n"
              "handle('2')\n")
    container = docker_client.containers.run("agent-runner/base:bookworm", ["python3", "-c", script], name=name,
                                             detach=True, network_mode="none",
                                             labels={"com.docker.compose.service": f"{name}-svc"})
    source = ContainerLogErrors(name)
    try:
        started = time.time()
        assert container.wait(timeout=30)["StatusCode"] == 1
        found = await source.errors(started - 0.5, time.time() + 1)
        before = await source.errors(started - 600, started - 300)
        missing = await ContainerLogErrors(name + "-gone").errors(started, time.time())
        by_service = await ContainerLogErrors(f"{name}-svc").errors(started - 0.5, time.time() + 1)  # compose's
    finally:
        await source.aclose()
        container.remove(force=True)
    assert found is not None and found.total == 1
    (fingerprint, summary), = found.summaries.items()
    assert "KeyError" in summary and found.counts[fingerprint] == 1
    assert before is None and missing is None
    assert by_service is not None and by_service.counts == found.counts
