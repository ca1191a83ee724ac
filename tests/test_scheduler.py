"""Scheduler: slots, hourly limits counted from the store, de-duplication, cancel, resume after a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from policy.model import RateLimits
from runner.models import TaskState
from runner.service.scheduler import Duplicate, RateLimiter, Refused, Scheduler
from runner.store import Store, TaskRecord

Progress = Callable[[str], None]
HIGH = RateLimits(commands_per_hour=1000, autofixes_per_hour=1000)


class Runs:
    """A task runner the test steers: each run waits for its release, then finishes as diff_ready."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.started: list[str] = []
        self.running = 0
        self.peak = 0
        self.release = asyncio.Event()

    async def __call__(self, task: TaskRecord, progress: Progress) -> object:
        self.started.append(task.id)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.store.transition(task.id, TaskState.RUNNING)
            progress("working")
            await self.release.wait()
            return await self.store.transition(task.id, TaskState.DIFF_READY)
        finally:
            self.running -= 1


async def _submit(scheduler: Scheduler, *, source: str = "api", requested_by: str = "owner",
                  fingerprint: str | None = None) -> TaskRecord | Refused | Duplicate:
    return await scheduler.submit(kind="feature", prompt="p", repo="/r", source=source, requested_by=requested_by,
                                  dry_run=True, fingerprint=fingerprint)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


def test_rate_limiter_refuses_with_the_time_until_the_oldest_leaves_the_window() -> None:
    now = [1000.0]
    limiter = RateLimiter(RateLimits(commands_per_hour=2, autofixes_per_hour=1), clock=lambda: now[0])
    limiter.record("api", "owner", 1000.0)
    now[0] = 1100.0
    limiter.record("api", "owner", 1100.0)
    now[0] = 1200.0
    assert limiter.check("api", "owner") == Refused("commands", 2, 3400, scope="owner owner")
    assert limiter.check("alertmanager", "alertmanager:bot") is None  # alerts draw on their own allowance
    now[0] = 4600.5  # the first creation has just left the window; the second frees 100 s later
    assert limiter.check("api", "owner") is None
    limiter.record("api", "owner", 4600.5)
    assert limiter.check("api", "owner") == Refused("commands", 2, 100, scope="owner owner")


def test_rate_limiter_zero_limit_always_refuses() -> None:
    limiter = RateLimiter(RateLimits(commands_per_hour=0, autofixes_per_hour=0))
    refused = limiter.check("alertmanager", "alertmanager:bot")
    assert refused is not None and refused.retry_after >= 1 and refused.scope == "source alertmanager"


def test_rate_limiter_owner_commands_share_one_allowance_across_sources() -> None:
    limiter = RateLimiter(RateLimits(commands_per_hour=3, autofixes_per_hour=1), clock=lambda: 1000.0)
    for source in ("api", "telegram", "api"):
        assert limiter.check(source, "owner") is None
        limiter.record(source, "owner", 1000.0)
    for source in ("api", "telegram"):
        refused = limiter.check(source, "owner")
        assert refused is not None and refused.bucket == "commands" and refused.scope == "owner owner"
        assert refused.limit == 3 and not refused.cooldown


def test_rate_limiter_per_source_cap_refuses_one_source_while_another_has_room() -> None:
    now = [1000.0]
    limiter = RateLimiter(RateLimits(commands_per_hour=10, per_source={"telegram": 2}), clock=lambda: now[0])
    for _ in range(2):
        limiter.record("telegram", "owner", now[0])
        now[0] += 60
    refused = limiter.check("telegram", "owner")
    assert refused == Refused("commands", 2, 3600 - 120, scope="source telegram")
    assert limiter.check("api", "owner") is None  # the owner's allowance still has room through the API


def test_rate_limiter_refusal_names_the_limit_that_frees_last() -> None:
    now = [0.0]
    limiter = RateLimiter(RateLimits(commands_per_hour=3, per_source={"telegram": 1}), clock=lambda: now[0])
    limiter.record("api", "owner", 0.0)
    now[0] = 100.0
    limiter.record("api", "owner", 100.0)
    now[0] = 200.0
    limiter.record("telegram", "owner", 200.0)
    now[0] = 300.0
    # Both are full: the owner's cap frees at 3600 (its oldest leaves), telegram's at 3800.
    assert limiter.check("telegram", "owner") == Refused("commands", 1, 3500, scope="source telegram")
    assert limiter.check("api", "owner") == Refused("commands", 3, 3300, scope="owner owner")


def test_rate_limiter_per_source_cap_replaces_the_autofix_allowance_for_alerts() -> None:
    limiter = RateLimiter(RateLimits(autofixes_per_hour=1, per_source={"alertmanager": 3}), clock=lambda: 0.0)
    for _ in range(3):
        assert limiter.check("alertmanager", "alertmanager:bot") is None
        limiter.record("alertmanager", "alertmanager:bot", 0.0)
    refused = limiter.check("alertmanager", "report")  # every alert receiver draws on the one source cap
    assert refused == Refused("autofixes", 3, 3600, scope="source alertmanager")


async def test_scheduler_runs_at_most_max_running_at_once(tmp_path: Path) -> None:
    async with Store(tmp_path / "state.db") as store:
        runs = Runs(store)
        scheduler = Scheduler(store, runs, max_running=2, limits=HIGH)
        tasks = [await _submit(scheduler) for _ in range(5)]
        await _until(lambda: _true(len(runs.started) == 2))
        await asyncio.sleep(0.05)
        assert runs.running == 2 and scheduler.running == 2 and scheduler.waiting == 3
        runs.release.set()
        await _until(lambda: _true(not any(scheduler.active(t.id) for t in tasks if isinstance(t, TaskRecord))))
        assert runs.peak == 2 and len(runs.started) == 5
        assert {t.state for t in await store.list_tasks()} == {TaskState.DIFF_READY}


async def _true(value: bool) -> bool:
    return value


async def test_scheduler_limits_count_from_the_store_across_restarts(tmp_path: Path) -> None:
    limits = RateLimits(commands_per_hour=2, autofixes_per_hour=1)
    async with Store(tmp_path / "state.db") as store:
        runs = Runs(store)
        runs.release.set()
        first = Scheduler(store, runs, max_running=2, limits=limits)
        assert isinstance(await _submit(first), TaskRecord)
        assert isinstance(await _submit(first), TaskRecord)
        refused = await _submit(first)
        assert isinstance(refused, Refused) and refused.bucket == "commands" and 3500 < refused.retry_after <= 3600
        assert isinstance(await _submit(first, source="alertmanager"), TaskRecord)
        await first.aclose()

        second = Scheduler(store, runs, max_running=2, limits=limits)
        await second.start()
        assert isinstance(await _submit(second), Refused)
        assert isinstance(await _submit(second, source="alertmanager"), Refused)
        await second.aclose()
        assert len(await store.list_tasks()) == 3


async def test_scheduler_burst_never_overshoots_the_limit(tmp_path: Path) -> None:
    async with Store(tmp_path / "state.db") as store:
        runs = Runs(store)
        runs.release.set()
        scheduler = Scheduler(store, runs, max_running=2, limits=RateLimits(commands_per_hour=7))
        answers = await asyncio.gather(*(_submit(scheduler) for _ in range(40)))
        assert sum(isinstance(a, TaskRecord) for a in answers) == 7
        assert sum(isinstance(a, Refused) for a in answers) == 33
        await scheduler.aclose()


async def test_scheduler_burst_of_100_over_every_limit_never_overshoots(tmp_path: Path) -> None:
    limits = RateLimits(commands_per_hour=12, autofixes_per_hour=4, per_source={"telegram": 5})
    sources = [("api", "owner"), ("telegram", "owner"), ("alertmanager", "alertmanager:bot"),
               ("alertmanager", "report")]
    async with Store(tmp_path / "state.db") as store:
        runs = Runs(store)
        runs.release.set()
        scheduler = Scheduler(store, runs, max_running=4, limits=limits)
        calls = [sources[i % len(sources)] for i in range(100)]
        answers = await asyncio.gather(*(_submit(scheduler, source=s, requested_by=r) for s, r in calls))
        admitted = [a for a in answers if isinstance(a, TaskRecord)]
        by_source = {s: sum(a.source == s for a in admitted) for s in ("api", "telegram", "alertmanager")}
        # Every limit is full and none is past it: the owner's 12 (at most 5 by Telegram) and 4 alerts.
        assert by_source["api"] + by_source["telegram"] == 12 and by_source["telegram"] <= 5
        assert by_source["alertmanager"] == 4
        assert all(isinstance(a, Refused) for a in answers if not isinstance(a, TaskRecord))
        assert len(await store.list_tasks()) == 16
        await scheduler.aclose()


async def test_scheduler_alerts_do_not_spend_the_owners_allowance(tmp_path: Path) -> None:
    async with Store(tmp_path / "state.db") as store:
        runs = Runs(store)
        runs.release.set()
        scheduler = Scheduler(store, runs, max_running=2,
                              limits=RateLimits(commands_per_hour=2, autofixes_per_hour=3))
        for i in range(3):
            assert isinstance(await _submit(scheduler, source="alertmanager", requested_by="alertmanager:bot",
                                            fingerprint=f"alert:{i}"), TaskRecord)
        refused = await _submit(scheduler, source="alertmanager", requested_by="report", fingerprint="alert:9")
        assert isinstance(refused, Refused) and refused.bucket == "autofixes" and refused.limit == 3
        assert isinstance(await _submit(scheduler, source="api"), TaskRecord)
        assert isinstance(await _submit(scheduler, source="telegram"), TaskRecord)
        refused = await _submit(scheduler, source="telegram")
        assert isinstance(refused, Refused) and refused.scope == "owner owner" and refused.limit == 2
        await scheduler.aclose()


async def test_scheduler_restart_keeps_counting_per_owner_and_per_source(tmp_path: Path) -> None:
    now = [time.time()]
    limits = RateLimits(commands_per_hour=3, per_source={"telegram": 1})
    async with Store(tmp_path / "state.db") as store:
        runs = Runs(store)
        runs.release.set()
        first = Scheduler(store, runs, max_running=2, limits=limits, clock=lambda: now[0])
        assert isinstance(await _submit(first, source="telegram"), TaskRecord)
        assert isinstance(await _submit(first, source="api"), TaskRecord)
        await first.aclose()

        now[0] += 60
        second = Scheduler(store, runs, max_running=2, limits=limits, clock=lambda: now[0])
        await second.start()
        refused = await _submit(second, source="telegram")
        assert isinstance(refused, Refused) and refused.scope == "source telegram"
        assert 3500 < refused.retry_after <= 3541
        assert isinstance(await _submit(second, source="api"), TaskRecord)
        refused = await _submit(second, source="api")
        assert isinstance(refused, Refused) and refused.scope == "owner owner"
        await second.aclose()
        assert len(await store.list_tasks()) == 3


async def test_scheduler_dedupes_open_tasks_by_fingerprint(tmp_path: Path) -> None:
    async with Store(tmp_path / "state.db") as store:
        runs = Runs(store)
        scheduler = Scheduler(store, runs, max_running=1, limits=HIGH)
        first, again = await asyncio.gather(_submit(scheduler, source="alertmanager", fingerprint="alert:1"),
                                            _submit(scheduler, source="alertmanager", fingerprint="alert:1"))
        kinds = sorted(type(a).__name__ for a in (first, again))
        assert kinds == ["Duplicate", "TaskRecord"]
        other = await _submit(scheduler, source="alertmanager", fingerprint="alert:2")
        assert isinstance(other, TaskRecord)
        runs.release.set()
        await _until(lambda: _true(scheduler.running == 0 and scheduler.waiting == 0))
        # Closed tasks no longer block: the alert firing again later starts a new fix.
        assert isinstance(await _submit(scheduler, source="alertmanager", fingerprint="alert:1"), TaskRecord)
        await scheduler.aclose()


async def test_scheduler_cancels_queued_and_running_tasks(tmp_path: Path) -> None:
    async with Store(tmp_path / "state.db") as store:
        runs = Runs(store)
        scheduler = Scheduler(store, runs, max_running=1, limits=HIGH)
        running = await _submit(scheduler)
        queued = await _submit(scheduler)
        assert isinstance(running, TaskRecord) and isinstance(queued, TaskRecord)
        await _until(lambda: _true(runs.running == 1))
        assert (await scheduler.cancel(queued.id)).state is TaskState.CANCELLED
        await scheduler.cancel(running.id)
        assert not scheduler.active(running.id)
        assert runs.started == [running.id]  # the queued one never ran
        entries = await store.audit_log(running.id, event="cancel_requested")
        assert len(entries) == 1 and entries[0].actor == "owner"


async def test_scheduler_resumes_queued_tasks_after_restart_and_leaves_them_queued_at_shutdown(
        tmp_path: Path) -> None:
    async with Store(tmp_path / "state.db") as store:
        runs = Runs(store)
        before = Scheduler(store, runs, max_running=1, limits=HIGH)
        tasks = [await _submit(before) for _ in range(3)]
        await _until(lambda: _true(runs.running == 1))
        await before.aclose()  # shutdown: the waiting two were never started
        states = {t.id: (await store.get_task(t.id)).state for t in tasks if isinstance(t, TaskRecord)}
        assert sorted(s.value for s in states.values()) == ["failed", "queued", "queued"]
        interrupted = [t for t in await store.list_tasks(states=[TaskState.FAILED])]
        assert interrupted[0].reason == "the supervisor shut down while the task was running"

        after_runs = Runs(store)
        after_runs.release.set()
        after = Scheduler(store, after_runs, max_running=1, limits=HIGH)
        resumed = await after.start()
        assert sorted(resumed) == sorted(i for i, s in states.items() if s is TaskState.QUEUED)
        await _until(lambda: _true(len(after_runs.started) == 2 and after.waiting == 0 and after.running == 0))
        for task_id in resumed:
            assert (await store.get_task(task_id)).state is TaskState.DIFF_READY


async def test_scheduler_marks_a_crashed_run_failed(tmp_path: Path) -> None:
    async def crash(task: TaskRecord, progress: Progress) -> object:
        raise RuntimeError("boom")

    async with Store(tmp_path / "state.db") as store:
        scheduler = Scheduler(store, crash, max_running=1, limits=HIGH)
        task = await _submit(scheduler)
        assert isinstance(task, TaskRecord)
        await _until(lambda: _true(not scheduler.active(task.id)))
        record = await store.get_task(task.id)
        assert record.state is TaskState.FAILED and "RuntimeError: boom" in record.reason
        lines, _ = scheduler.events_since(task.id, 0)
        assert lines[-1]["event"] == "done"


@pytest.mark.parametrize("ended", [TaskState.FAILED, TaskState.TIMED_OUT, TaskState.REJECTED])
async def test_scheduler_cools_a_fingerprint_down_after_its_fix_failed(tmp_path: Path, ended: TaskState) -> None:
    # A rejected fix cools down too: the one cooldown every admission (API, chat, alerts) goes through.
    async def fail(task: TaskRecord, progress: Progress) -> object:
        return await store.transition(task.id, ended, reason="tests failed")

    now = [time.time()]
    async with Store(tmp_path / "state.db") as store:
        limits = RateLimits(commands_per_hour=100, autofixes_per_hour=100, cooldown_after_failure_seconds=900)
        scheduler = Scheduler(store, fail, max_running=1, limits=limits, clock=lambda: now[0])
        first = await _submit(scheduler, source="alertmanager", fingerprint="alert:1")
        assert isinstance(first, TaskRecord)
        await _until(lambda: _true(not scheduler.active(first.id)))
        again = await _submit(scheduler, source="alertmanager", fingerprint="alert:1")
        assert isinstance(again, Refused) and again.cooldown and 890 <= again.retry_after <= 901
        assert isinstance(await _submit(scheduler, source="alertmanager", fingerprint="alert:2"), TaskRecord)
        now[0] += 902
        assert isinstance(await _submit(scheduler, source="alertmanager", fingerprint="alert:1"), TaskRecord)
        await scheduler.aclose()
