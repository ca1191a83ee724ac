"""The Store at its boundary: a transition the file refuses on a real full disk is kept beside it and recorded,
with its real cause, when the file is next opened."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from runner.errors import StateFull
from runner.models import PrRef, RunResult, TaskState
from runner.store import SCHEMA, Store
from runner.unrecorded import NOTE_BYTES, Notes, Unrecorded
from tests.fakes.disk import small_disk


async def running_task(store: Store) -> str:
    task = await store.create_task(kind="fix", prompt="p", repo="r", source="api", requested_by="owner",
                                   dry_run=True)
    await store.transition(task.id, TaskState.PROVISIONING)
    await store.transition(task.id, TaskState.RUNNING)
    return task.id


async def test_a_transition_refused_by_a_full_disk_is_recorded_with_its_cause_at_the_next_open(
        tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "2m") as disk:
        path = disk.root / "home" / "state.db"
        store = Store(path)
        task_id = await running_task(store)
        assert (store.notes.root / f"{task_id}.json").stat().st_size == NOTE_BYTES  # room set aside
        disk.fill()
        with pytest.raises(StateFull):
            for _ in range(2000):  # the agent's tool calls, audited, until the disk is full
                await store.audit(task_id, "gate", "tool_decision", {"pad": "z" * 2000})
        with pytest.raises(StateFull):
            await store.transition(task_id, TaskState.FAILED, reason="the task stopped: the state file is full",
                                   result={"diff": "--- a/x\n+++ b/x\n"})
        await store.aclose()
        with pytest.raises(StateFull):
            Store(path)  # still full: the next start refuses, and the note stays for the one after
        disk.free()
        async with Store(path) as again:
            task = await again.get_task(task_id)
            states = [e.detail["state"] for e in await again.audit_log(task_id, event="state")]
            late = again.recorded_late
    assert task.state is TaskState.FAILED and task.reason.startswith("the task stopped: the state file is full")
    assert "recorded at the next start" in task.reason and "disk is full" in task.reason
    assert task.result is not None and task.result.diff == "--- a/x\n+++ b/x\n"  # the work it had is kept
    assert states == ["provisioning", "running", "failed"]  # recorded once, nothing twice
    assert [n.task_id for n in late] == [task_id]


async def test_a_note_the_task_outlived_is_dropped_and_a_mid_flight_one_fails_the_task(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with Store(path) as store:
        stale = await running_task(store)
        cut = await running_task(store)
    notes = Notes(tmp_path / "unrecorded")
    assert notes.keep(Unrecorded(stale, "testing", "", "disk full", 1.0))  # before its later transitions
    assert notes.keep(Unrecorded(cut, "testing", "", "database or disk is full", 2e10))
    async with Store(path) as store:
        kept = await store.get_task(stale)
        failed = await store.get_task(cut)
    assert kept.state is TaskState.RUNNING
    assert failed.state is TaskState.FAILED
    assert failed.reason == "the task stopped because the state file could not record its move to testing: " \
                            "database or disk is full"
    assert not list((tmp_path / "unrecorded").glob("*.json"))


async def test_the_reserved_room_goes_once_the_task_leaves_its_sandbox(tmp_path: Path) -> None:
    async with Store(tmp_path / "state.db") as store:
        task_id = await running_task(store)
        room = store.notes.root / f"{task_id}.json"
        assert room.read_bytes().strip() == b""
        await store.transition(task_id, TaskState.DIFF_READY)
        assert not room.exists()


def test_a_note_is_written_over_its_reserved_room_and_read_back(tmp_path: Path) -> None:
    notes = Notes(tmp_path / "unrecorded")
    notes.reserve("t1")
    note = Unrecorded("t1", "failed", "why", "disk full", 5.0, {"diff": "x" * (2 * NOTE_BYTES)})
    assert notes.keep(note)
    [back], blank = notes.pending()
    assert back == Unrecorded("t1", "failed", "why", "disk full", 5.0)  # too big a result gives way to the cause
    assert blank == [] and (tmp_path / "unrecorded" / "t1.json").stat().st_size == NOTE_BYTES
    assert json.loads((tmp_path / "unrecorded" / "t1.json").read_text())["reason"] == "why"


async def test_store_answers_by_fingerprint_by_pr_and_counts_in_a_window(tmp_path: Path) -> None:
    now = [1000.0]
    async with Store(tmp_path / "state.db", clock=lambda: now[0]) as store:
        def make(fingerprint: str | None) -> Any:
            return store.create_task(kind="fix", prompt="p", repo="r", source="alertmanager", requested_by="x",
                                     dry_run=False, fingerprint=fingerprint)

        old = await make("fp:a")
        await store.transition(old.id, TaskState.REJECTED)
        now[0] = 2000.0
        live = await make("fp:a")
        pr = PrRef(7, "local://7", "agent/x", "c" * 40)
        await store.transition(live.id, TaskState.PROPOSED, result=RunResult(live.id, TaskState.PROPOSED, pr=pr))
        now[0] = 3000.0
        other = await make(None)
        assert (await store.open_task_of("fp:a") or old).id == live.id
        assert await store.open_task_of("fp:b") is None
        assert await store.last_ended("fp:a", [TaskState.REJECTED, TaskState.FAILED]) == 1000.0
        assert await store.last_ended("fp:a", [TaskState.FAILED]) is None
        assert (await store.task_of_pr(7) or old).id == live.id
        assert await store.task_of_pr(7, states=[TaskState.QUEUED]) is None
        assert await store.fingerprints() == frozenset({"fp:a"})
        assert await store.count_tasks(since=1500.0) == 2
        assert await store.count_tasks(states=[TaskState.QUEUED], since=1500.0) == 1
        assert [t.id for t in await store.list_tasks(since=2500.0, limit=None)] == [other.id]
        plan = " ".join(str(r[3]) for r in store._execute(
            "EXPLAIN QUERY PLAN SELECT * FROM tasks WHERE state IN ('proposed') AND pr_number = ?", (7,)))
    assert "tasks_pr" in plan or "tasks_state" in plan, plan  # an index, not a scan of every task


async def test_a_state_file_from_before_pr_numbers_is_migrated_and_its_prs_found(tmp_path: Path) -> None:
    # The tasks table as earlier releases wrote it: no pr_number column.
    path = tmp_path / "state.db"
    old_schema = SCHEMA.replace(",\n    pr_number INTEGER", "")
    assert "pr_number" not in old_schema
    db = sqlite3.connect(path)
    db.executescript(old_schema)
    result = {"task_id": "t1", "status": "proposed", "pr": {"number": 12, "url": "u", "branch": "b",
                                                            "head_sha": "d" * 40}}
    db.execute("INSERT INTO tasks (id, kind, prompt, repo, source, requested_by, dry_run, state, created_at, "
               "updated_at, result) VALUES ('t1', 'fix', 'p', 'r', 'api', 'owner', 0, 'proposed', 1, 1, ?)",
               (json.dumps(result),))
    db.execute("INSERT INTO tasks (id, kind, prompt, repo, source, requested_by, dry_run, state, created_at, "
               "updated_at, result) VALUES ('t2', 'fix', 'p', 'r', 'api', 'owner', 0, 'failed', 1, 1, 'x')")
    db.commit()
    db.close()
    async with Store(path) as store:
        found = await store.task_of_pr(12)
    async with Store(path) as again:  # opened a second time: nothing to migrate, nothing lost
        still = await again.task_of_pr(12)
    assert found is not None and found.id == "t1" and found.result is not None and found.result.pr is not None
    assert found.result.pr.head_sha == "d" * 40
    assert still is not None and still.id == "t1"
