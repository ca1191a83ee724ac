"""The Store at its boundary: a transition the file refuses on a real full disk is kept beside it and recorded,
with its real cause, when the file is next opened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.errors import StateFull
from runner.models import TaskState
from runner.store import Store
from runner.unrecorded import NOTE_BYTES, Notes, Unrecorded
from tests.test_sqlite import small_disk


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
