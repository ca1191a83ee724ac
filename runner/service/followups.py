"""The owner's follow-ups on a task's pull request: their rows (persisted before they are acted on), one at a time
per pull request, run in the background, and resumed or failed cleanly after a restart.

    queued ──> running ──> done      (a commit pushed onto the PR's branch; the task bound to its new head)
                      └──> failed    (nothing pushed, or pushed and recorded at the next start: `reason` says)

A follow-up's task stays `proposed` throughout: its pull request is open, at its old head until the push. Its
sandbox carries the follow-up's own id (`<task id>-f<n>`) and lock, so the reaper treats it as any task's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from runner import tasklock
from runner.errors import RunnerError, TaskError
from runner.followup import run_follow_up
from runner.models import FOLLOW_UP_STATES, FollowUp, FollowUpOutcome, FollowUpState, Progress, TaskId, TaskState
from runner.service.runtime import Runtime
from runner.service.scheduler import WINDOW_SECONDS, Scheduler
from runner.sqlite import Database
from runner.store import Store, TaskRecord
from runner.supervisor import Deps, task_lock

log = logging.getLogger("agent_runner.followups")

SCHEMA = """
CREATE TABLE IF NOT EXISTS follow_ups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    text TEXT NOT NULL,
    actor TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    base_sha TEXT NOT NULL,
    head_sha TEXT,
    session TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS follow_ups_number ON follow_ups(number, state);
CREATE INDEX IF NOT EXISTS follow_ups_state ON follow_ups(state);
CREATE INDEX IF NOT EXISTS follow_ups_task ON follow_ups(task_id);
"""
MAX_TEXT = 4000  # the owner's words kept and given to the agent (fenced there)
Finished = Callable[[TaskRecord, FollowUp], Awaitable[None]]


class FollowUpStore(Database):
    """The follow_ups table, in the supervisor's SQLite file beside the tasks (its own connection)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, SCHEMA)
        self._clock = clock

    async def add(self, *, task_id: str, number: int, text: str, actor: str, source: str,
                  base_sha: str) -> FollowUp:
        now = self._clock()
        rows = await self._run("INSERT INTO follow_ups (task_id, number, text, actor, source, state, created_at, "
                               "updated_at, base_sha) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?) RETURNING id",
                               (task_id, number, text, actor, source, now, now, base_sha))
        return await self.get(int(rows[0]["id"]))

    async def update(self, follow_up_id: int, state: FollowUpState, **fields: str | None) -> FollowUp:
        assert set(fields) <= {"head_sha", "session", "reason"}, fields
        sets = ", ".join(f"{name} = ?" for name in ("state", "updated_at", *fields))
        await self._run(f"UPDATE follow_ups SET {sets} WHERE id = ?",
                        (state, self._clock(), *fields.values(), follow_up_id))
        return await self.get(follow_up_id)

    async def get(self, follow_up_id: int) -> FollowUp:
        rows = await self._run("SELECT * FROM follow_ups WHERE id = ?", (follow_up_id,))
        if not rows:
            raise TaskError(f"no follow-up {follow_up_id}")
        return _follow_up(rows[0])

    async def find(self, *, states: Sequence[FollowUpState] = FOLLOW_UP_STATES, number: int | None = None,
                   task_id: str | None = None) -> list[FollowUp]:
        """Oldest first: the follow-ups in `states`, of PR `number` / of `task_id` when given."""
        marks = ", ".join("?" for _ in states)
        clauses, params = [f"state IN ({marks})"], list[Any](states)
        if number is not None:
            clauses.append("number = ?")
            params.append(number)
        if task_id is not None:
            clauses.append("task_id = ?")
            params.append(task_id)
        rows = await self._run(f"SELECT * FROM follow_ups WHERE {' AND '.join(clauses)} ORDER BY id", params)
        return [_follow_up(r) for r in rows]

    async def created_since(self, since: float) -> list[FollowUp]:
        rows = await self._run("SELECT * FROM follow_ups WHERE created_at > ? ORDER BY id", (since,))
        return [_follow_up(r) for r in rows]


def _follow_up(row: Any) -> FollowUp:
    return FollowUp(id=row["id"], task_id=TaskId(row["task_id"]), number=row["number"], text=row["text"],
                    actor=row["actor"], source=row["source"], state=row["state"], created_at=row["created_at"],
                    updated_at=row["updated_at"], base_sha=row["base_sha"], head_sha=row["head_sha"],
                    session=row["session"], reason=row["reason"])


class FollowUps:
    """Admits follow-ups (one open per pull request), runs each in the background through
    runner.supervisor.run_follow_up, and tells the owner (`finished`) how each ended."""

    def __init__(self, rows: FollowUpStore, deps: Deps, *, progress: Callable[[str, str], None] | None = None,
                 finished: Finished | None = None) -> None:
        self.rows = rows
        self._deps = deps
        self._progress = progress or (lambda _task, _line: None)
        self._finished = finished
        self._admit = asyncio.Lock()
        self._jobs: dict[int, asyncio.Task[None]] = {}

    @property
    def store(self) -> Store:
        return self._deps.store

    async def submit(self, task: TaskRecord, text: str, *, actor: str, source: str) -> FollowUp:
        """Record the follow-up (`queued`) and start it. Raises TaskError, saying why, when the task has no open
        pull request or another follow-up on it has not ended: two never run at once."""
        text = text.strip()[:MAX_TEXT]
        if not text:
            raise TaskError("a follow-up needs words: what should change")
        if self._deps.forge is None:
            raise TaskError("no forge is configured: follow-ups add commits to a pull request")
        pr = task.result.pr if task.result is not None else None
        if task.state is not TaskState.PROPOSED or pr is None:
            raise TaskError(f"task {task.id} is {task.state.value}; a follow-up needs a task whose pull request is "
                            "open (a dry run's diff cannot be followed up yet)")
        async with self._admit:
            busy = await self.rows.find(states=("queued", "running"), number=pr.number)
            if busy:
                raise TaskError(f"PR #{pr.number} already has follow-up {busy[0].id} {busy[0].state}; send this one "
                                "when it has ended")
            follow = await self.rows.add(task_id=task.id, number=pr.number, text=text, actor=actor, source=source,
                                         base_sha=pr.head_sha)
        self._launch(follow)
        return follow

    async def busy(self, number: int) -> FollowUp | None:
        """The follow-up of PR `number` that has not ended, if any (an approval waits for it)."""
        found = await self.rows.find(states=("queued", "running"), number=number)
        return found[0] if found else None

    async def start(self) -> list[int]:
        """After a restart: queued follow-ups run; one a killed supervisor left running is failed cleanly, and
        when its commit had already reached the forge, its task is bound to that head (the forge's word)."""
        resumed = []
        for follow in await self.rows.find(states=("running",)):
            if tasklock.is_held(task_lock(self._deps.home, follow.work_id)):
                continue  # another live supervisor on this home runs it
            await self._recover(follow)
        for follow in await self.rows.find(states=("queued",)):
            self._launch(follow)
            resumed.append(follow.id)
        return resumed

    async def aclose(self) -> None:
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    async def wait(self, follow_up_id: int) -> FollowUp:
        """Until follow-up `follow_up_id` has ended in this process (tests, the demo)."""
        job = self._jobs.get(follow_up_id)
        if job is not None:
            await asyncio.gather(job, return_exceptions=True)
        return await self.rows.get(follow_up_id)

    # ---------------------------------------------------------------------------------------------------

    def _launch(self, follow: FollowUp) -> None:
        self._jobs[follow.id] = asyncio.create_task(self._drive(follow), name=f"follow-up-{follow.id}")

    async def _drive(self, follow: FollowUp) -> None:
        store = self.store

        def say(line: str) -> None:
            self._progress(follow.task_id, f"follow-up {follow.id}: {line}")

        try:
            task = await store.get_task(follow.task_id)
            pr = task.result.pr if task.result is not None else None
            if task.state is not TaskState.PROPOSED or pr is None or pr.head_sha != follow.base_sha:
                where = pr.head_sha[:12] if pr is not None else "none"
                follow = await self.rows.update(follow.id, "failed", reason=(
                    f"the task moved on before the follow-up started ({task.state.value}, head {where})"))
                return
            follow = await self.rows.update(follow.id, "running")  # persisted before the sandbox starts

            async def pushed(sha: str) -> None:
                nonlocal follow
                follow = await self.rows.update(follow.id, "running", head_sha=sha)
                await store.audit(task.id, "supervisor", "follow_up_pushed",
                                  {"follow_up": follow.id, "head_sha": sha, "text": follow.text})

            try:
                outcome = await run_follow_up(self._deps, task, follow, progress=say, on_pushed=pushed)
            except (RunnerError, OSError) as exc:
                outcome = FollowUpOutcome(None, f"{type(exc).__name__}: {exc}")
            if outcome.pushed is not None:
                follow = await self.rows.update(follow.id, "done", head_sha=outcome.pushed, session=outcome.session)
                say(f"done: PR #{follow.number} is at {outcome.pushed[:12]}; approve it there")
            else:
                follow = await self.rows.update(follow.id, "failed", session=outcome.session, reason=outcome.reason)
                say(f"failed: {outcome.reason}; PR #{follow.number} stays at {follow.base_sha[:12]}")
            await store.audit(task.id, "supervisor", "follow_up_ended",
                              {"follow_up": follow.id, "state": follow.state, "reason": follow.reason,
                               "session": follow.session, "head_sha": follow.head_sha})
        except asyncio.CancelledError:
            # Shut down mid-run: the next start recovers it from its row (and the forge's head).
            raise
        except Exception as exc:  # a bug below must not leave the follow-up open forever
            log.exception("follow-up %s crashed", follow.id)
            with contextlib.suppress(Exception):
                follow = await self.rows.update(follow.id, "failed", reason=f"internal error: {type(exc).__name__}: "
                                                f"{exc}")
        finally:
            self._jobs.pop(follow.id, None)
        if self._finished is not None:
            with contextlib.suppress(Exception):
                await self._finished(await store.get_task(follow.task_id), follow)

    async def _recover(self, follow: FollowUp) -> None:
        forge, store = self._deps.forge, self.store
        head: str | None = None
        if forge is not None:
            with contextlib.suppress(RunnerError):
                head = (await forge.get_pr(follow.number)).head_sha
        if head is not None and head != follow.base_sha:
            # The push reached the forge before the supervisor died: the forge's head is what an approval now
            # names, so the task's result says so too.
            task = await store.get_task(follow.task_id)
            if task.result is not None and task.result.pr is not None and task.state is TaskState.PROPOSED:
                result = dataclasses.replace(task.result, pr=dataclasses.replace(task.result.pr, head_sha=head))
                await store.transition(task.id, TaskState.PROPOSED, reason="", result=result.to_json())
            reason = (f"the supervisor stopped during the follow-up, after its commit {head[:12]} reached the "
                      "forge: the PR is bound to that head; its description was not updated")
            await self.rows.update(follow.id, "failed", head_sha=head, reason=reason)
        else:
            reason = (f"the supervisor stopped during the follow-up; nothing was pushed and PR #{follow.number} "
                      f"stays at {follow.base_sha[:12]}; send it again")
            await self.rows.update(follow.id, "failed", reason=reason)
        await store.audit(follow.task_id, "supervisor", "follow_up_ended",
                          {"follow_up": follow.id, "state": "failed", "reason": reason})


class Hosting(Protocol):
    """What the desk needs of the running service (runner.service.state.Service, which imports this module)."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def scheduler(self) -> Scheduler: ...


async def open_followups(stack: contextlib.AsyncExitStack, service: Hosting, *, notifier: Any = None,
                         say: Progress = log.info) -> FollowUps:
    """The follow-up desk of a running service, with what a previous process left resumed or failed; the owner
    hears each outcome through `notifier` (Telegram: the task's message again, with buttons at the new head)."""
    rt = service.runtime
    rows = FollowUpStore(rt.store.path)
    stack.push_async_callback(rows.aclose)

    def progress(task_id: str, line: str) -> None:
        say(f"{task_id}: {line}")
        service.scheduler.publish(TaskId(task_id), "progress", {"line": line})
        if notifier is not None:
            notifier.task_progress(task_id, line)

    async def finished(task: TaskRecord, follow: FollowUp) -> None:
        if notifier is None:
            return
        if follow.state == "done":
            await notifier.task_finished(task, None)
        else:
            await notifier.announce(f"Follow-up {follow.id} on PR #{follow.number} failed: {follow.reason}")

    desk = FollowUps(rows, rt.deps, progress=progress, finished=finished)
    stack.push_async_callback(desk.aclose)
    for earlier in await rows.created_since(time.time() - WINDOW_SECONDS):  # the hour's limits count them too
        await service.scheduler.charge(earlier.source, "owner", at=earlier.created_at)
    resumed = await desk.start()
    if resumed:
        say(f"resumed {len(resumed)} follow-up(s): {', '.join(map(str, resumed))}")
    return desk
