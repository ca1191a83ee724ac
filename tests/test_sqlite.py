"""The state file's guard: real damaged files (random bytes over a page, truncation, emptied) and a real full
disk (a small tmpfs mounted for the test) are refused as StateError values that name the file."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from runner.errors import StateCorrupt, StateError, StateFull
from runner.service.releases import ReleaseStore
from runner.sqlite import RESTORE_STEPS, Database, check_file
from runner.store import Store
from tests.fakes.disk import small_disk

PAGE = 4096


async def filled(path: Path, tasks: int = 48) -> None:
    """A state file with tasks and audit rows over many pages, closed cleanly (its WAL checkpointed)."""
    async with Store(path) as store:
        for i in range(tasks):
            task = await store.create_task(kind="feature", prompt="p" * 200, repo="r", source="api",
                                           requested_by="owner", dry_run=True)
            await store.audit(task.id, "gate", "tool_decision", {"i": i, "pad": "z" * 300})


def damage_page(path: Path, page: int) -> None:
    with open(path, "r+b") as file:
        file.seek(page * PAGE)
        file.write(random.Random(page).randbytes(PAGE))


@pytest.mark.parametrize("page", [0, 1, 2, 5, -1])
async def test_store_refuses_a_file_with_random_bytes_over_one_page(tmp_path: Path, page: int) -> None:
    path = tmp_path / "state.db"
    await filled(path)
    damage_page(path, page if page >= 0 else path.stat().st_size // PAGE - 1)
    before = path.read_bytes()
    with pytest.raises(StateCorrupt) as refused:
        Store(path)
    with pytest.raises(StateCorrupt):
        check_file(path)
    assert str(path) in str(refused.value) and RESTORE_STEPS in str(refused.value)
    assert "\n" not in str(refused.value) and refused.value.path == str(path)
    assert path.read_bytes() == before  # refused, not "repaired": the owner's copy stays as it was


@pytest.mark.parametrize("keep", [0, 50, 100, PAGE, 45056])
async def test_store_refuses_a_truncated_file(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "state.db"
    await filled(path)
    assert path.stat().st_size > keep
    os.truncate(path, keep)
    with pytest.raises(StateCorrupt, match="state.db") as refused:
        Store(path)
    assert RESTORE_STEPS in str(refused.value)
    assert path.stat().st_size == keep


async def test_check_file_passes_a_whole_file_and_a_missing_one(tmp_path: Path) -> None:
    check_file(tmp_path / "state.db")  # none yet: it will be created
    assert not (tmp_path / "state.db").exists()
    await filled(tmp_path / "state.db", tasks=3)
    check_file(tmp_path / "state.db")
    async with Store(tmp_path / "state.db") as store:
        assert len(await store.list_tasks()) == 3


async def test_damage_found_by_a_query_is_state_corrupt_not_a_sqlite3_error(tmp_path: Path) -> None:
    """A page damaged after the file was checked: the first query that reads it says so, naming the file."""
    path = tmp_path / "state.db"
    await filled(path)
    db = Database(path, "")  # opened without the check, as the other stores open the file
    size = path.stat().st_size
    for page in range(2, size // PAGE):
        damage_page(path, page)
    with pytest.raises(StateCorrupt, match="is damaged"):
        await db._run("SELECT COUNT(*), MAX(detail) FROM audit")
    await db.aclose()


async def test_a_full_disk_is_state_full_when_the_file_is_created_and_when_it_grows(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "2m") as disk:
        home = disk.root / "home"
        store = Store(home / "state.db")
        task = await store.create_task(kind="feature", prompt="p", repo="r", source="api", requested_by="o",
                                       dry_run=True)
        disk.fill()
        with pytest.raises(StateFull, match="its disk is full") as refused:
            for _ in range(2000):
                await store.audit(task.id, "gate", "tool_decision", {"pad": "z" * 2000})
        assert str(home / "state.db") in str(refused.value)
        assert (await store.get_task(task.id)).id == task.id  # what was recorded can still be read
        await store.aclose()
        with pytest.raises(StateFull):
            Store(disk.root / "another" / "state.db")
        disk.free()
        async with Store(home / "state.db") as again:  # nothing was damaged: space back, work goes on
            await again.audit(task.id, "gate", "tool_decision", {"after": True})
            assert len(await again.audit_log(task.id)) >= 2


async def test_errors_other_than_damage_and_space_are_state_errors(tmp_path: Path) -> None:
    async with Store(tmp_path / "state.db") as store:
        await store.audit(None, "x", "e", {})
        with pytest.raises(StateError, match="append-only"):  # the audit table refuses edits
            await store._run("DELETE FROM audit")
        with pytest.raises(StateError, match="no such table"):
            await store._run("SELECT * FROM nowhere")


async def test_an_emptied_file_is_refused_rather_than_started_over(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await filled(path, tasks=2)
    path.write_bytes(b"")
    with pytest.raises(StateCorrupt, match="is empty"):
        Store(path)


async def test_an_older_releases_table_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = sqlite3.connect(path)
    old.executescript("CREATE TABLE releases (id INTEGER PRIMARY KEY AUTOINCREMENT, number INTEGER NOT NULL, "
                      "head_sha TEXT NOT NULL, method TEXT NOT NULL DEFAULT 'squash', task_id TEXT, actor TEXT NOT "
                      "NULL, state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', base_branch TEXT, merge_sha TEXT, "
                      "previous_sha TEXT, revert_sha TEXT, deployed_at REAL, watch_until REAL, created_at REAL NOT "
                      "NULL, updated_at REAL NOT NULL);"
                      "INSERT INTO releases (number, head_sha, actor, state, created_at, updated_at) "
                      "VALUES (3, 'abc', 'owner', 'deploying', 1, 1);")
    old.close()
    async with ReleaseStore(path) as rows:
        [release] = await rows.find()
    assert release.number == 3 and release.fence is None and release.deployed is None


def test_small_disk_is_gone_after_the_test(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        disk.fill()
        assert shutil.disk_usage(disk.root).free < 64 * 1024
    assert subprocess.run(["mountpoint", "-q", str(tmp_path / "disk")]).returncode != 0
