"""SQLite state: tasks and their transitions, and the append-only audit log. Schema and queries only."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runner.errors import TaskError
from runner.models import TaskId, TaskState

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    prompt TEXT NOT NULL,
    repo TEXT NOT NULL,
    source TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    fingerprint TEXT,
    base_sha TEXT,
    reason TEXT NOT NULL DEFAULT '',
    result TEXT
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state);
CREATE INDEX IF NOT EXISTS tasks_fingerprint ON tasks(fingerprint);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    task_id TEXT,
    actor TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_task ON audit(task_id);
-- Append-only: the audit log is evidence, so the database itself refuses edits.
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: TaskId
    kind: str
    prompt: str
    repo: str
    source: str
    requested_by: str
    dry_run: bool
    state: TaskState
    created_at: float
    updated_at: float
    fingerprint: str | None
    base_sha: str | None
    reason: str
    result: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: float
    task_id: str | None
    actor: str
    event: str
    detail: Mapping[str, Any]


def new_task_id() -> TaskId:
    # Sortable by creation time, unguessable enough to be a container name.
    return TaskId(time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3))


class Store:
    """One SQLite file in WAL mode; blocking calls run in a thread behind one lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        def work() -> list[sqlite3.Row]:
            with self._lock:
                return self._db.execute(sql, params).fetchall()

        return await asyncio.to_thread(work)

    async def create_task(
        self,
        *,
        kind: str,
        prompt: str,
        repo: str,
        source: str,
        requested_by: str,
        dry_run: bool,
        fingerprint: str | None = None,
        task_id: TaskId | None = None,
    ) -> TaskRecord:
        task_id = task_id or new_task_id()
        now = time.time()
        await self._run(
            "INSERT INTO tasks (id, kind, prompt, repo, source, requested_by, dry_run, state, created_at, updated_at,"
            " fingerprint) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (task_id, kind, prompt, repo, source, requested_by, int(dry_run), TaskState.QUEUED.value, now, now,
             fingerprint),
        )
        await self.audit(task_id, source, "task_created", {"kind": kind, "dry_run": dry_run, "repo": repo})
        return await self.get_task(task_id)

    async def transition(
        self,
        task_id: TaskId,
        state: TaskState,
        *,
        reason: str | None = None,
        base_sha: str | None = None,
        result: Mapping[str, Any] | None = None,
        actor: str = "supervisor",
    ) -> TaskRecord:
        """Persist a state change (before it is acted on) and audit it."""
        sets = ["state = ?", "updated_at = ?"]
        params: list[Any] = [state.value, time.time()]
        if reason is not None:
            sets.append("reason = ?")
            params.append(reason)
        if base_sha is not None:
            sets.append("base_sha = ?")
            params.append(base_sha)
        if result is not None:
            sets.append("result = ?")
            params.append(json.dumps(result))
        await self._run(f"UPDATE tasks SET {', '.join(sets)} WHERE id = ?", (*params, task_id))
        await self.audit(task_id, actor, "state", {"state": state.value, "reason": reason or ""})
        return await self.get_task(task_id)

    async def get_task(self, task_id: str) -> TaskRecord:
        rows = await self._run("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise TaskError(f"no task {task_id!r}")
        return _task(rows[0])

    async def list_tasks(self, *, states: Sequence[TaskState] | None = None, limit: int = 100) -> list[TaskRecord]:
        if states:
            marks = ", ".join("?" for _ in states)
            rows = await self._run(
                f"SELECT * FROM tasks WHERE state IN ({marks}) ORDER BY created_at DESC LIMIT ?",
                (*(s.value for s in states), limit),
            )
        else:
            rows = await self._run("SELECT * FROM tasks ORDER BY created_at DESC LIMIT ?", (limit,))
        return [_task(r) for r in rows]

    async def audit(self, task_id: str | None, actor: str, event: str, detail: Mapping[str, Any]) -> None:
        await self._run(
            "INSERT INTO audit (at, task_id, actor, event, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time(), task_id, actor, event, json.dumps(detail, sort_keys=True, default=str)),
        )

    async def audit_log(self, task_id: str | None = None, *, event: str | None = None) -> list[AuditEntry]:
        where, params = [], []
        if task_id is not None:
            where.append("task_id = ?")
            params.append(task_id)
        if event is not None:
            where.append("event = ?")
            params.append(event)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._run(f"SELECT * FROM audit {clause} ORDER BY seq", params)
        return [
            AuditEntry(r["seq"], r["at"], r["task_id"], r["actor"], r["event"], json.loads(r["detail"])) for r in rows
        ]


def _task(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(
        id=TaskId(row["id"]),
        kind=row["kind"],
        prompt=row["prompt"],
        repo=row["repo"],
        source=row["source"],
        requested_by=row["requested_by"],
        dry_run=bool(row["dry_run"]),
        state=TaskState(row["state"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        fingerprint=row["fingerprint"],
        base_sha=row["base_sha"],
        reason=row["reason"],
        result=json.loads(row["result"]) if row["result"] else None,
    )
