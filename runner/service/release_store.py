"""The releases table: one row per release, written before each step is acted on (runner.service.releases).

It lives in the supervisor's SQLite file beside the tasks, on its own connection. Its values survive storage:
a fence and a deploy result are stored as JSON and come back as the same frozen values.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from runner.deploy import DeployResult, Fence
from runner.forge import MergeMethod
from runner.sqlite import Database, where

__all__ = ["IN_FLIGHT", "RELEASE_STATES", "Question", "ReleaseRecord", "ReleaseState", "ReleaseStore"]

ReleaseState = Literal["approved", "merging", "deploying", "watching", "deployed", "rolled_back", "failed",
                       "not_merged", "asking", "held"]
RELEASE_STATES: tuple[ReleaseState, ...] = get_args(ReleaseState)
IN_FLIGHT: tuple[ReleaseState, ...] = ("approved", "merging", "deploying")
Question = Literal["deploy", "rollback"]
"""What a release touching database migrations waits for the owner to answer (state `asking`): whether to deploy
it (after the merge), and whether to roll it back (after a failed health check or watch)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    number INTEGER NOT NULL,
    head_sha TEXT NOT NULL,
    method TEXT NOT NULL DEFAULT 'squash',
    task_id TEXT,
    actor TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    base_branch TEXT,
    merge_sha TEXT,
    previous_sha TEXT,
    revert_sha TEXT,
    deployed_at REAL,
    watch_until REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    fence TEXT,
    deployed TEXT,
    migrations TEXT,
    asked TEXT,
    consent TEXT
);
CREATE INDEX IF NOT EXISTS releases_state ON releases(state);
"""
# Columns added after the first files were written: older files get them when opened.
COLUMNS = {"releases": {"fence": "TEXT", "deployed": "TEXT", "migrations": "TEXT", "asked": "TEXT",
                         "consent": "TEXT"}}


@dataclass(frozen=True, slots=True)
class ReleaseRecord:
    id: int
    number: int
    head_sha: str
    method: MergeMethod
    task_id: str | None
    actor: str
    state: ReleaseState
    detail: str
    base_branch: str | None
    merge_sha: str | None
    previous_sha: str | None
    """What ran before this release: the version a rollback returns to."""
    revert_sha: str | None
    """The commit that reverted the merge on the base branch after a rollback."""
    deployed_at: float | None
    watch_until: float | None
    created_at: float
    updated_at: float
    fence: Fence | None = None
    """The deploy step in flight (deploy or rollback) and what runs it; None between steps."""
    deployed: DeployResult | None = None
    """The deploy step's result, once it is known."""
    migrations: str | None = None
    """The migration files the merge changes (policy `migrations.paths`), comma-separated; '' for none; None
    before the merge is read."""
    asked: Question | None = None
    """The question the release waits on (state `asking`)."""
    consent: str | None = None
    """What the owner answered "go" to (`deploy`, `rollback`), so a resumed release does not ask again."""

    @property
    def in_flight(self) -> bool:
        return self.state in IN_FLIGHT

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class ReleaseStore(Database):
    """The releases table, in the supervisor's SQLite file beside the tasks (its own connection)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, SCHEMA, columns=COLUMNS)
        self._clock = clock

    async def add(self, *, number: int, head_sha: str, task_id: str | None, actor: str,
                  method: MergeMethod = "squash") -> ReleaseRecord:
        now = self._clock()
        rows = await self._run("INSERT INTO releases (number, head_sha, method, task_id, actor, state, created_at, "
                               "updated_at) VALUES (?, ?, ?, ?, ?, 'approved', ?, ?) RETURNING id",
                               (number, head_sha, method, task_id, actor, now, now))
        return await self.get(int(rows[0]["id"]))

    async def update(self, release_id: int, state: ReleaseState, **fields: object) -> ReleaseRecord:
        allowed = {"detail", "base_branch", "merge_sha", "previous_sha", "revert_sha", "deployed_at", "watch_until",
                   "fence", "deployed", "migrations", "asked", "consent"}
        assert set(fields) <= allowed, set(fields) - allowed
        values = [json.dumps(v.to_json()) if isinstance(v, Fence | DeployResult) else v for v in fields.values()]
        sets = ", ".join(f"{name} = ?" for name in ("state", "updated_at", *fields))
        await self._run(f"UPDATE releases SET {sets} WHERE id = ?",
                        (state, self._clock(), *values, release_id))
        return await self.get(release_id)

    async def get(self, release_id: int) -> ReleaseRecord:
        rows = await self._run("SELECT * FROM releases WHERE id = ?", (release_id,))
        if not rows:
            raise KeyError(release_id)
        return _record(rows[0])

    async def find(self, *, states: tuple[ReleaseState, ...] = (), number: int | None = None,
                   task_id: str | None = None, limit: int = 100) -> list[ReleaseRecord]:
        clause, params = where(equal={"number": number, "task_id": task_id}, one_of={"state": states})
        rows = await self._run(f"SELECT * FROM releases {clause} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [_record(r) for r in rows]


    async def counts(self) -> dict[str, int]:
        """Releases by state."""
        return {row["state"]: int(row["n"])
                for row in await self._run("SELECT state, COUNT(*) AS n FROM releases GROUP BY state")}


def _record(row: sqlite3.Row) -> ReleaseRecord:
    fields = {key: row[key] for key in row.keys()}  # noqa: SIM118 - sqlite3.Row is not a dict
    fence, deployed = fields.pop("fence"), fields.pop("deployed")
    return ReleaseRecord(**fields, fence=Fence.from_json(json.loads(fence)) if fence else None,
                         deployed=DeployResult.from_json(json.loads(deployed)) if deployed else None)
