"""SQLite state: tasks and their transitions, and the append-only audit log. Schema and queries only.

Errors are the StateError tree (runner.sqlite maps them). A transition the file refuses is kept as a note
beside it (runner.unrecorded) and recorded when the Store next opens the file, so the next start says what
really happened to the task rather than "the supervisor stopped".
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import StateError, TaskNotFound
from runner.models import TERMINAL_STATES, RunResult, TaskId, TaskState
from runner.sqlite import Database, where
from runner.unrecorded import Notes, Unrecorded

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
    result TEXT,
    pr_number INTEGER
);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks(state);
CREATE INDEX IF NOT EXISTS tasks_fingerprint ON tasks(fingerprint);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks(created_at);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    task_id TEXT,
    actor TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_task ON audit(task_id);
CREATE INDEX IF NOT EXISTS audit_event ON audit(event);
-- Every /metrics scrape counts these groups: indexing the JSON values spares parsing each row's detail per
-- scrape. The expressions must read exactly as in Store.audit_counts for the planner to use them.
CREATE INDEX IF NOT EXISTS audit_tool_decisions ON audit(event, detail -> '$.policy_effect', detail -> '$.decision')
    WHERE event = 'tool_decision';
CREATE INDEX IF NOT EXISTS audit_refusals ON audit(event, detail -> '$.reason') WHERE event = 'refused';
CREATE INDEX IF NOT EXISTS tasks_source ON tasks(source, state);
-- Append-only: the audit log is evidence, so the database itself refuses edits.
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""
# Migrations of files older releases wrote (runner.sqlite.Database applies them as it opens the file).
# pr_number is the stored result's PR, in a column so "which task is PR #N" is one indexed lookup.
COLUMNS = {"tasks": {"pr_number": "INTEGER"}}
BACKFILL = {"tasks.pr_number": "UPDATE tasks SET pr_number = CAST(json_extract(result, '$.pr.number') AS INTEGER) "
                               "WHERE json_valid(result) AND json_extract(result, '$.pr.number') IS NOT NULL"}
INDEXES = "CREATE INDEX IF NOT EXISTS tasks_pr ON tasks(pr_number) WHERE pr_number IS NOT NULL;"
OPEN_STATES = tuple(s for s in TaskState if s not in TERMINAL_STATES)


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
    result: RunResult | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: float
    task_id: str | None
    actor: str
    event: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UsageTotals:
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class DurationTotals:
    count: int
    seconds: float


_STATES = frozenset(s.value for s in TaskState)


def new_task_id(now: float | None = None) -> TaskId:
    # Sortable by creation time, unguessable enough to be a container name.
    return TaskId(time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + "-" + secrets.token_hex(3))


class Store(Database):
    """Tasks and their transitions, and the append-only audit log.

    Opening checks the file's integrity (StateCorrupt when damaged) and records the transitions a previous
    process could not (StateFull while the disk still is). `clock` stamps every row, so tests move time.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        super().__init__(path, SCHEMA, check=True, columns=COLUMNS, backfill=BACKFILL, indexes=INDEXES)
        self.notes = Notes(path.parent / "unrecorded")
        try:
            self.recorded_late = self._record_notes()
        except StateError:
            self._db.close()
            raise

    def _record_notes(self) -> list[Unrecorded]:
        """Record what the notes hold (blocking: it runs once, as the file is opened)."""
        notes, blank = self.notes.pending()
        recorded = []
        for note in notes:
            rows = self._execute("SELECT state, updated_at FROM tasks WHERE id = ?", (note.task_id,))
            if rows and rows[0]["updated_at"] >= note.at:
                self.notes.forget(note.task_id)  # the task moved on after the note: it was recorded after all
                continue
            if rows:
                state = TaskState(note.state) if note.state in _STATES else TaskState.FAILED
                if state.terminal:
                    reason = f"{note.reason} [recorded at the next start: the state file refused it at the time: " \
                             f"{note.error}]"
                else:
                    state, reason = TaskState.FAILED, (f"the task stopped because the state file could not record "
                                                       f"its move to {note.state}: {note.error}")
                sets = "state = ?, updated_at = ?, reason = ?"
                params: list[Any] = [state.value, self.clock(), reason]
                if note.result is not None:
                    sets += ", result = ?, pr_number = ?"
                    params.extend(_result_columns(note.result))
                detail = json.dumps({"state": state.value, "reason": reason, "noted_at": note.at}, sort_keys=True)
                self._execute_all([
                    (f"UPDATE tasks SET {sets} WHERE id = ?", (*params, note.task_id)),
                    ("INSERT INTO audit (at, task_id, actor, event, detail) VALUES (?, ?, ?, ?, ?)",
                     (self.clock(), note.task_id, "supervisor", "state", detail)),
                ])
                recorded.append(note)
            self.notes.forget(note.task_id)
        for task_id in blank:
            rows = self._execute("SELECT state FROM tasks WHERE id = ?", (task_id,))
            if not rows or not TaskState(rows[0]["state"]).sandbox_phase:
                self.notes.forget(task_id)
        return recorded

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
        now = self.clock()
        task_id = task_id or new_task_id(now)
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
        result: RunResult | Mapping[str, Any] | None = None,
        actor: str = "supervisor",
    ) -> TaskRecord:
        """Persist a state change (before it is acted on) and audit it.

        Raises StateError (StateFull, StateCorrupt) when the file refuses; the transition is then kept as a
        note that the next start records.
        """
        sets = ["state = ?", "updated_at = ?"]
        params: list[Any] = [state.value, self.clock()]
        if reason is not None:
            sets.append("reason = ?")
            params.append(reason)
        if base_sha is not None:
            sets.append("base_sha = ?")
            params.append(base_sha)
        if isinstance(result, RunResult):
            result = result.to_json()
        if result is not None:
            sets.append("result = ?, pr_number = ?")
            params.extend(_result_columns(result))
        try:
            await self._run(f"UPDATE tasks SET {', '.join(sets)} WHERE id = ?", (*params, task_id))
            await self.audit(task_id, actor, "state", {"state": state.value, "reason": reason or ""})
        except StateError as exc:
            self.notes.keep(Unrecorded(task_id, state.value, reason or "", str(exc), self.clock(), result))
            raise
        if state.sandbox_phase:
            self.notes.reserve(task_id)  # room for a note while the disk still has some
        else:
            self.notes.forget(task_id)
        return await self.get_task(task_id)

    async def get_task(self, task_id: str) -> TaskRecord:
        rows = await self._run("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise TaskNotFound(f"no task {task_id!r}")
        return _task(rows[0])

    async def list_tasks(self, *, states: Sequence[TaskState] | None = None, since: float | None = None,
                         limit: int | None = 100) -> list[TaskRecord]:
        """Newest first: tasks in `states`, created after `since`; `limit=None` for all that match."""
        where, params = _where(states=states, since=since)
        rows = await self._run(f"SELECT * FROM tasks {where} ORDER BY created_at DESC LIMIT ?",
                               (*params, -1 if limit is None else limit))
        return [_task(r) for r in rows]

    async def count_tasks(self, *, states: Sequence[TaskState] | None = None, since: float | None = None) -> int:
        """How many tasks are in `states` (any, if None) and were created after `since`."""
        where, params = _where(states=states, since=since)
        rows = await self._run(f"SELECT COUNT(*) AS n FROM tasks {where}", params)
        return int(rows[0]["n"])

    async def open_task_of(self, fingerprint: str) -> TaskRecord | None:
        """The open (not terminal) task made for `fingerprint`, if any: the one an alert's repeat joins."""
        where, params = _where(states=OPEN_STATES, fingerprint=fingerprint)
        rows = await self._run(f"SELECT * FROM tasks {where} ORDER BY created_at LIMIT 1", params)
        return _task(rows[0]) if rows else None

    async def last_ended(self, fingerprint: str, states: Sequence[TaskState]) -> float | None:
        """When the latest task for `fingerprint` that ended in one of `states` last changed, if any did."""
        where, params = _where(states=states, fingerprint=fingerprint)
        rows = await self._run(f"SELECT MAX(updated_at) AS at FROM tasks {where}", params)
        return None if rows[0]["at"] is None else float(rows[0]["at"])

    async def task_of_pr(self, number: int, *, states: Sequence[TaskState] = (TaskState.PROPOSED,)
                         ) -> TaskRecord | None:
        """The task in `states` whose pull request is `number` (the one its approval or rejection is about)."""
        where, params = _where(states=states)
        rows = await self._run(f"SELECT * FROM tasks {where} AND pr_number = ? ORDER BY created_at DESC LIMIT 1",
                               (*params, number))
        return _task(rows[0]) if rows else None

    async def tasks_of_prs(self, numbers: Collection[int]) -> dict[int, TaskRecord]:
        """The newest task (in any state) whose pull request is each of `numbers`, for those that have one."""
        if not numbers:
            return {}
        marks = ", ".join("?" for _ in numbers)
        rows = await self._run(f"SELECT * FROM tasks WHERE pr_number IN ({marks}) ORDER BY created_at", list(numbers))
        return {r["pr_number"]: _task(r) for r in rows}  # newest last, so it is the one kept

    async def fingerprints(self) -> frozenset[str]:
        """Every fingerprint a task was ever made for."""
        rows = await self._run("SELECT DISTINCT fingerprint FROM tasks WHERE fingerprint IS NOT NULL")
        return frozenset(r["fingerprint"] for r in rows)

    async def audit(self, task_id: str | None, actor: str, event: str, detail: Mapping[str, Any]) -> None:
        await self._run(
            "INSERT INTO audit (at, task_id, actor, event, detail) VALUES (?, ?, ?, ?, ?)",
            (self.clock(), task_id, actor, event, json.dumps(detail, sort_keys=True, default=str)),
        )

    async def audit_log(self, task_id: str | None = None, *, event: str | None = None) -> list[AuditEntry]:
        clause, params = where(equal={"task_id": task_id, "event": event})
        rows = await self._run(f"SELECT * FROM audit {clause} ORDER BY seq", params)
        return [
            AuditEntry(r["seq"], r["at"], r["task_id"], r["actor"], r["event"], json.loads(r["detail"])) for r in rows
        ]

    async def audit_page(self, *, task_id: str | None = None, event: str | None = None, since: float | None = None,
                         until: float | None = None, before: int | None = None, limit: int = 100) -> list[AuditEntry]:
        """Newest first: up to `limit` entries older than seq `before`, of `task_id` and `event`, at `since` or
        later and before `until` (each None: any)."""
        clause, params = where(equal={"task_id": task_id, "event": event})
        for condition, value in (("at >= ?", since), ("at < ?", until), ("seq < ?", before)):
            if value is not None:
                clause += f" AND {condition}"
                params.append(value)
        rows = await self._run(f"SELECT * FROM audit {clause} ORDER BY seq DESC LIMIT ?", (*params, limit))
        return [
            AuditEntry(r["seq"], r["at"], r["task_id"], r["actor"], r["event"], json.loads(r["detail"])) for r in rows
        ]

    # Aggregates, counted by SQLite so that a metrics scrape never reads whole tables into Python.

    async def task_counts(self, *, source: str | None = None) -> dict[TaskState, int]:
        """Tasks per state, only states that have any; only tasks from `source` if given."""
        if source is None:
            rows = await self._run("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state")
        else:
            rows = await self._run("SELECT state, COUNT(*) AS n FROM tasks WHERE source = ? GROUP BY state", (source,))
        return {TaskState(r["state"]): r["n"] for r in rows}

    async def audit_counts(self, event: str, keys: Sequence[str]) -> list[tuple[tuple[Any, ...], int]]:
        """Audit rows of `event` counted by the values of top-level `keys` of their detail.

        Values come back decoded (None where a key is absent or null). Groups are per distinct JSON text,
        so two groups can hold equal values (`"a"` and `"\\u0061"`): callers merge what they display alike.
        """
        assert keys and all(k.isidentifier() for k in keys), keys
        # `->` yields the value's JSON text, keeping strings apart from numbers and booleans apart from 0/1.
        # Written as in SCHEMA's partial indexes, so the groups /metrics asks for are read from an index.
        columns = ", ".join(f"detail -> '$.{k}' AS k{i}" for i, k in enumerate(keys))
        groups = ", ".join(f"k{i}" for i in range(len(keys)))
        rows = await self._run(
            f"SELECT {columns}, COUNT(*) AS n FROM audit WHERE event = ? GROUP BY {groups}", (event,)
        )
        return [(tuple(None if r[i] is None else json.loads(r[i]) for i in range(len(keys))), r["n"]) for r in rows]

    async def usage_totals(self, *, since: float | None = None) -> UsageTotals:
        """Model usage summed over every task's `result.usage` (absent fields count as zero); only tasks
        created after `since` if given."""
        rows = await self._run(
            "SELECT COALESCE(SUM(CAST(json_extract(result, '$.usage.input_tokens') AS INTEGER)), 0) AS tokens_in,"
            " COALESCE(SUM(CAST(json_extract(result, '$.usage.output_tokens') AS INTEGER)), 0) AS tokens_out,"
            " TOTAL(CAST(json_extract(result, '$.usage.cost_usd') AS REAL)) AS cost"
            " FROM tasks WHERE result <> '' AND created_at > ?", (-1.0 if since is None else since,)
        )
        return UsageTotals(rows[0]["tokens_in"], rows[0]["tokens_out"], rows[0]["cost"])

    async def duration_totals(self, states: Collection[TaskState]) -> DurationTotals:
        """Count of tasks now in `states` and the sum of their seconds from creation to last change."""
        marks = ", ".join("?" for _ in states) or "NULL"
        rows = await self._run(
            f"SELECT COUNT(*) AS n, TOTAL(updated_at - created_at) AS seconds FROM tasks WHERE state IN ({marks})",
            [s.value for s in states],
        )
        return DurationTotals(rows[0]["n"], rows[0]["seconds"])


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
        result=RunResult.from_json(json.loads(row["result"])) if row["result"] else None,
    )


def _where(*, states: Sequence[TaskState] | None = None, since: float | None = None,
           fingerprint: str | None = None) -> tuple[str, list[Any]]:
    return where(equal={"fingerprint": fingerprint}, one_of={"state": [s.value for s in states or ()]},
                 after={"created_at": since})


def _result_columns(result: Mapping[str, Any]) -> tuple[str, int | None]:
    """A result's JSON text and its PR number (the indexed column)."""
    pr = result.get("pr")
    number = pr.get("number") if isinstance(pr, Mapping) else None
    return json.dumps(result), number if isinstance(number, int) and not isinstance(number, bool) else None
