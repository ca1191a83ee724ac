"""The supervisor's SQLite file from asyncio: one connection per table family, blocking calls in a thread.

Store (tasks, audit), PolicyStore (policy versions) and ReleaseStore (releases) each build on Database:
same file, WAL mode, one lock per connection, autocommit statements.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self


class Database:
    """A connection to `path` with `schema` applied (idempotent `CREATE ... IF NOT EXISTS` statements)."""

    def __init__(self, path: Path, schema: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(schema)

    async def __aenter__(self) -> Self:
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
