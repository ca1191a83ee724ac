"""Scheduler: admits tasks under per-owner and per-source hourly limits, runs N at once, keeps their progress.

Admission is one critical section (limit check, de-duplication, the task row), so a burst of requests can
neither overshoot a limit nor start two tasks for one alert. The limits are counted from the tasks the store
holds, seeded at start-up, so a restart does not reset them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from policy.model import RateLimits
from runner.errors import StateError, TaskError
from runner.models import Progress, TaskId, TaskState
from runner.store import Store, TaskRecord

log = logging.getLogger("agent_runner.scheduler")

TaskRunner = Callable[[TaskRecord, Progress], Awaitable[object]]
Bucket = Literal["commands", "autofixes"]

WINDOW_SECONDS = 3600.0
ALERT_SOURCES = frozenset({"alertmanager"})
MAX_KEPT_LOGS = 500  # progress logs of this many tasks are kept in memory for /tasks/{id}/events
# A fix for a fingerprint that ended so cools it down: failed or timed out (retrying at once would likely fail
# the same way) or rejected by the owner (a new task would propose much the same change again).
COOLING_STATES = (TaskState.FAILED, TaskState.TIMED_OUT, TaskState.REJECTED)


def bucket_of(source: str) -> Bucket:
    """Alerts draw on the auto-fix allowance; everything else is the owner's."""
    return "autofixes" if source in ALERT_SOURCES else "commands"


@dataclass(frozen=True, slots=True)
class Refused:
    """A request turned away by a rate limit (or a fingerprint's cooldown): try again in `retry_after` seconds.

    `bucket` is the request's class, `limit` the hourly cap that is full and `scope` whose count it is
    (``"owner owner"``, ``"source telegram"``, ``"fingerprint <fp>"`` for a cooldown).
    """

    bucket: Bucket
    limit: int
    retry_after: int
    cooldown: bool = False
    scope: str = ""


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An open task already handles this fingerprint."""

    task: TaskRecord


@dataclass(frozen=True, slots=True)
class Limit:
    """One hourly cap that applies to a request: at most `per_hour` creations counted under (scope, key)."""

    scope: Literal["owner", "source"]
    key: str
    per_hour: int

    @property
    def name(self) -> str:
        return f"{self.scope} {self.key}"


class RateLimiter:
    """Sliding one-hour windows of task creation times, one per owner and one per source.

    An owner's commands count against `commands_per_hour` whichever source they came through; a source counts
    against its `per_source` cap, and an alert source against `autofixes_per_hour` unless `per_source` names it.
    A request is admitted only if every limit that applies to it has room.
    """

    def __init__(self, limits: RateLimits, *, clock: Callable[[], float] = time.time,
                 window: float = WINDOW_SECONDS) -> None:
        self._limits = limits
        self._clock = clock
        self._window = window
        self._seen: dict[tuple[str, str], deque[float]] = {}

    def update(self, limits: RateLimits) -> None:
        """New limits (a policy the owner activated) apply to the next request; what was counted still counts."""
        self._limits = limits

    def limits_for(self, source: str, requested_by: str) -> tuple[Limit, ...]:
        out: list[Limit] = []
        if source not in ALERT_SOURCES:  # alerts never spend the owner's allowance
            out.append(Limit("owner", requested_by, self._limits.commands_per_hour))
        cap = self._limits.per_source.get(source)
        if cap is None and source in ALERT_SOURCES:
            cap = self._limits.autofixes_per_hour
        if cap is not None:
            out.append(Limit("source", source, cap))
        return tuple(out)

    def seed(self, tasks: Iterable[TaskRecord]) -> None:
        for task in sorted(tasks, key=lambda t: t.created_at):
            self.record(task.source, task.requested_by, task.created_at)

    def check(self, source: str, requested_by: str) -> Refused | None:
        """None if every limit on this request has room; else the one that frees last, and when."""
        now = self._clock()
        worst: tuple[int, Limit] | None = None
        for limit in self.limits_for(source, requested_by):
            seen = self._window_of(limit.scope, limit.key, now)
            if len(seen) < limit.per_hour:
                continue
            # The slot frees when the oldest creation that counts leaves the window.
            oldest = seen[len(seen) - limit.per_hour] if limit.per_hour > 0 else now
            wait = max(1, math.ceil(oldest + self._window - now))
            if worst is None or wait > worst[0]:
                worst = (wait, limit)
        if worst is None:
            return None
        wait, limit = worst
        return Refused(bucket_of(source), limit.per_hour, wait, scope=limit.name)

    def limit(self, bucket: Bucket) -> int:
        return self._limits.autofixes_per_hour if bucket == "autofixes" else self._limits.commands_per_hour

    def record(self, source: str, requested_by: str, at: float) -> None:
        # Both counts are kept for every task, capped or not, so a cap added later counts what came before.
        now = self._clock()
        if source not in ALERT_SOURCES:
            self._window_of("owner", requested_by, now).append(at)
        self._window_of("source", source, now).append(at)

    def _window_of(self, scope: str, key: str, now: float) -> deque[float]:
        seen = self._seen.setdefault((scope, key), deque())
        while seen and seen[0] <= now - self._window:
            seen.popleft()
        return seen


@dataclass(slots=True)
class _Log:
    lines: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Scheduler:
    """Runs admitted tasks through `run` with at most `max_running` at once; queued ones survive restarts."""

    def __init__(self, store: Store, run: TaskRunner, *, max_running: int, limits: RateLimits,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._run = run
        self._slots = asyncio.Semaphore(max_running)
        self._limiter = RateLimiter(limits, clock=clock)
        self._cooldown = float(limits.cooldown_after_failure_seconds)
        self._clock = clock
        self._admit = asyncio.Lock()
        self._tasks: dict[TaskId, asyncio.Task[None]] = {}
        self._started: set[TaskId] = set()
        self._cancelling: set[TaskId] = set()
        self._logs: OrderedDict[TaskId, _Log] = OrderedDict()
        self.max_running = max_running

    def set_limits(self, limits: RateLimits) -> None:
        """Apply the rate limits and cooldown of a newly activated policy from the next request on."""
        self._limiter.update(limits)
        self._cooldown = float(limits.cooldown_after_failure_seconds)

    async def start(self) -> list[TaskId]:
        """Seed the limits from the store and resume the tasks a previous process queued but never started."""
        self._limiter.seed(await self.store.list_tasks(since=self._clock() - WINDOW_SECONDS, limit=None))
        queued = sorted(await self.store.list_tasks(states=[TaskState.QUEUED], limit=None),
                        key=lambda t: t.created_at)
        for task in queued:
            self._launch(task)
        return [t.id for t in queued]

    async def aclose(self) -> None:
        """Stop every run. Tasks still waiting for a slot stay queued, so the next start resumes them."""
        pending = list(self._tasks.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    @property
    def running(self) -> int:
        return len(self._started)

    @property
    def waiting(self) -> int:
        return len(self._tasks) - len(self._started)

    def active(self, task_id: str) -> bool:
        """True while this process has the task queued or running."""
        return task_id in self._tasks

    async def submit(
        self,
        *,
        kind: str,
        prompt: str,
        repo: str,
        source: str,
        requested_by: str,
        dry_run: bool,
        fingerprint: str | None = None,
    ) -> TaskRecord | Refused | Duplicate:
        """Admit a task and queue it, or say why not. Never waits for a slot."""
        async with self._admit:
            if fingerprint is not None:
                if (open_task := await self.store.open_task_of(fingerprint)) is not None:
                    return Duplicate(open_task)
                cooling = await self._cooling(fingerprint, bucket_of(source))
                if cooling is not None:
                    return cooling
            refused = self._limiter.check(source, requested_by)
            if refused is not None:
                return refused
            task = await self.store.create_task(kind=kind, prompt=prompt, repo=repo, source=source,
                                                requested_by=requested_by, dry_run=dry_run, fingerprint=fingerprint)
            self._limiter.record(source, requested_by, task.created_at)
        self._launch(task)
        return task

    async def charge(self, source: str, requested_by: str, *, at: float | None = None) -> Refused | None:
        """Count an owner action that is not a new task (a follow-up) against the same hourly limits: None when
        admitted (and counted), else why not. `at`: one admitted before a restart, counted again as it was."""
        async with self._admit:
            if at is not None:
                self._limiter.record(source, requested_by, at)
                return None
            refused = self._limiter.check(source, requested_by)
            if refused is None:
                self._limiter.record(source, requested_by, self._clock())
            return refused

    async def _cooling(self, fingerprint: str, bucket: Bucket) -> Refused | None:
        """A fix for this fingerprint failed or was rejected a moment ago (COOLING_STATES): wait before another."""
        if self._cooldown <= 0:
            return None
        ended = await self.store.last_ended(fingerprint, COOLING_STATES)
        if ended is None:
            return None
        until = ended + self._cooldown
        now = self._clock()
        if until <= now:
            return None
        return Refused(bucket, self._limiter.limit(bucket), max(1, math.ceil(until - now)), cooldown=True,
                       scope=f"fingerprint {fingerprint}")

    async def cancel(self, task_id: str, *, actor: str = "owner") -> TaskRecord:
        """Cancel a queued or running task. Raises TaskError for an unknown or finished one."""
        task = await self.store.get_task(task_id)
        running = self._tasks.get(task.id)
        if running is None:
            if task.state is TaskState.QUEUED:  # queued by a process that is gone, not yet resumed
                return await self.store.transition(task.id, TaskState.CANCELLED, reason="cancelled by the owner",
                                                   actor=actor)
            raise TaskError(f"task {task_id} is {task.state.value}; only queued or running tasks can be cancelled")
        self._cancelling.add(task.id)
        await self.store.audit(task.id, actor, "cancel_requested", {"state": task.state.value})
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return await self.store.get_task(task.id)

    # progress ---------------------------------------------------------------------------------------------

    def publish(self, task_id: TaskId, event: str, data: Mapping[str, Any]) -> None:
        entry = self._logs.get(task_id)
        if entry is None:
            entry = self._logs[task_id] = _Log()
            while len(self._logs) > MAX_KEPT_LOGS:
                self._logs.popitem(last=False)
        entry.lines.append({"event": event, "data": dict(data)})
        entry.changed.set()
        entry.changed = asyncio.Event()

    def events_since(self, task_id: str, start: int) -> tuple[list[dict[str, Any]], asyncio.Event]:
        """Events from index `start` on, and an asyncio.Event set when more arrive."""
        entry = self._logs.get(TaskId(task_id))
        if entry is None:
            entry = self._logs[TaskId(task_id)] = _Log()
        return entry.lines[start:], entry.changed

    # running ----------------------------------------------------------------------------------------------

    def _launch(self, task: TaskRecord) -> None:
        self._tasks[task.id] = asyncio.create_task(self._drive(task), name=f"task-{task.id}")

    async def _drive(self, task: TaskRecord) -> None:
        def progress(line: str) -> None:
            self.publish(task.id, "progress", {"line": line})

        try:
            async with self._slots:
                current = await self.store.get_task(task.id)
                if current.state is not TaskState.QUEUED:  # cancelled while it waited
                    return
                self._started.add(task.id)
                await self._run(current, progress)
        except asyncio.CancelledError:
            # Our own cancel: by the owner, or at shutdown. At shutdown a queued task stays queued for the next
            # start, and a started one is failed as the reaper would fail it: nobody cancelled it.
            with contextlib.suppress(Exception):
                current = await self.store.get_task(task.id)
                if task.id in self._cancelling and current.state is TaskState.QUEUED:
                    await self.store.transition(task.id, TaskState.CANCELLED, reason="cancelled by the owner",
                                                actor="owner")
                elif task.id not in self._cancelling and task.id in self._started and (
                        not current.state.terminal or current.state is TaskState.CANCELLED):
                    await self.store.transition(task.id, TaskState.FAILED,
                                                reason="the supervisor shut down while the task was running")
        except StateError as exc:
            # The state file refused a step (full disk, damage). Recording the failure will likely be refused
            # too; the Store then keeps it as a note, and the next start records this cause.
            log.error("task %s stopped: %s", task.id, exc)
            with contextlib.suppress(Exception):
                await self.store.transition(task.id, TaskState.FAILED,
                                            reason=f"the task stopped: the state file failed: {exc}")
        except Exception as exc:  # a bug below must not leave the task open forever
            log.exception("task %s crashed", task.id)
            with contextlib.suppress(Exception):
                current = await self.store.get_task(task.id)
                if not current.state.terminal:
                    await self.store.transition(task.id, TaskState.FAILED,
                                                reason=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._started.discard(task.id)
            self._cancelling.discard(task.id)
            self._tasks.pop(task.id, None)
            self.publish(task.id, "done", {})
