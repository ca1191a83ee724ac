"""The supervisor's SQLite file from asyncio: one connection per table family, blocking calls in a thread.

Store (tasks, audit), PolicyStore (policy versions) and ReleaseStore (releases) each build on Database:
same file, WAL mode, one lock per connection, autocommit statements.

The file is guarded at this boundary: `sqlite3` errors never leave it, they become the StateError tree
(runner.errors), each naming the file. A damaged file is refused rather than used: `PRAGMA quick_check` runs
when the file is opened for the tasks (once per start) and again after any I/O or corruption error, because
SQLite only notices a damaged page when a query happens to read it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.errors import StateCorrupt, StateError, StateFull
from runner.resource import AsyncResource

# Where an owner finds the steps; every refusal of a damaged file points there.
RESTORE_STEPS = "README, Troubleshooting: 'The state file is damaged' has the backup and restore steps"
# quick_check lists at most this many problems; the first is enough to name the damage.
CHECK_PROBLEMS = 5

# Primary result codes (the low byte of an extended code, e.g. SQLITE_IOERR_WRITE = 778).
_FULL, _CORRUPT, _NOTADB, _IOERR = 13, 11, 26, 10


class Database(AsyncResource):
    """A connection to `path` with `schema` applied (idempotent `CREATE ... IF NOT EXISTS` statements).

    `check` runs the integrity check before anything else touches the file (the Store does; the other
    stores open the same file after it). `columns` adds columns a newer schema has to an older file:
    `{"releases": {"fence": "TEXT"}}`; `backfill` fills a column once, right after it was added to an older
    file (`{"tasks.pr_number": "UPDATE tasks SET pr_number = ..."}`), and `indexes` are created after that,
    so an index may name an added column.
    """

    def __init__(self, path: Path, schema: str, *, check: bool = False,
                 columns: Mapping[str, Mapping[str, str]] | None = None,
                 backfill: Mapping[str, str] | None = None, indexes: str = "") -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(path, exc) from exc
        _refuse_empty(path)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise _mapped(path, exc, None) from exc
        self._db.row_factory = sqlite3.Row
        try:
            with self._lock:
                if check:
                    _check(path, self._db)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(schema)
                for table, wanted in (columns or {}).items():
                    have = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
                    for name, declaration in wanted.items():
                        if name not in have:
                            # One transaction: a file never has the column without its backfill.
                            self._db.execute("BEGIN IMMEDIATE")
                            self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
                            if (fill := (backfill or {}).get(f"{table}.{name}")) is not None:
                                self._db.execute(fill)
                            self._db.execute("COMMIT")
                if indexes:
                    self._db.executescript(indexes)
        except sqlite3.Error as exc:
            error = _mapped(path, exc, self._db)
            self._db.close()
            raise error from exc
        except StateError:
            self._db.close()
            raise

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One statement, blocking, with the file's errors mapped (for a thread, or for start-up work)."""
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise _mapped(self.path, exc, self._db) from exc

    def _execute_all(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Statements in one transaction: all of them are recorded, or none."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for sql, params in statements:
                        self._db.execute(sql, params)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already (a full disk does)
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _mapped(self.path, exc, self._db) from exc

    async def _run(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return await asyncio.to_thread(self._execute, sql, params)


def check_file(path: Path) -> None:
    """Refuse a damaged state file before anything uses it: StateCorrupt (or StateError) naming it.

    A file that does not exist yet passes: it will be created.
    """
    if not path.exists():
        return
    _refuse_empty(path)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
    except sqlite3.Error as exc:
        raise _mapped(path, exc, None) from exc
    try:
        _check(path, db)
    except sqlite3.Error as exc:
        raise _mapped(path, exc, None) from exc
    finally:
        db.close()


def _check(path: Path, db: sqlite3.Connection) -> None:
    problems = [str(row[0]) for row in db.execute(f"PRAGMA quick_check({CHECK_PROBLEMS})").fetchall()]
    if problems != ["ok"]:
        first = " ".join(problems[0].split()) if problems else "no answer"
        raise StateCorrupt(f"the state file {path} is damaged (its integrity check says: {first}); agent-runner "
                           f"will not use it. {RESTORE_STEPS}", str(path))


def _refuse_empty(path: Path) -> None:
    # SQLite takes an empty file for a new database and would start over silently: the tasks, releases and
    # audit log it held would be gone without a word. agent-runner never leaves its file empty.
    try:
        empty = path.stat().st_size == 0
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _os_error(path, exc) from exc
    if empty:
        raise StateCorrupt(f"the state file {path} is empty (truncated?); agent-runner will not start over on it. "
                           f"{RESTORE_STEPS} (delete the file only to start with no history)", str(path))


def _mapped(path: Path, exc: sqlite3.Error, db: sqlite3.Connection | None) -> StateError:
    """The StateError for `exc`, raised by a statement on `db` (checked again after an I/O error)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code == _FULL:
        return StateFull(f"the state file {path} cannot be written: its disk is full ({exc}); free space on "
                         f"{path.parent} and start again", str(path))
    if code in (_CORRUPT, _NOTADB):
        return StateCorrupt(f"the state file {path} is damaged ({exc}); agent-runner will not use it. "
                            f"{RESTORE_STEPS}", str(path))
    if code == _IOERR and db is not None:
        try:
            _check(path, db)
        except StateCorrupt as damaged:
            return damaged
        except sqlite3.Error:
            pass  # the check itself failed to read: the I/O error stands
        return StateError(f"the state file {path} could not be read or written ({exc}); it passed its integrity "
                          "check, so look at the disk under it", str(path))
    return StateError(f"the state file {path} failed: {exc}", str(path))


def _os_error(path: Path, exc: OSError) -> StateError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StateFull(f"the state file {path} cannot be written: its disk is full ({os.strerror(exc.errno)}); "
                         f"free space on {path.parent} and start again", str(path))
    return StateError(f"the state file {path} cannot be opened: {exc}", str(path))


def where(*, equal: Mapping[str, object] | None = None, one_of: Mapping[str, Sequence[object]] | None = None,
          after: Mapping[str, float | None] | None = None) -> tuple[str, list[Any]]:
    """A WHERE clause and its parameters: `column = ?` for each `equal` value, `column IN (...)` for each
    non-empty `one_of`, `column > ?` for each `after`; None values and empty sequences are left out. Never
    empty (`WHERE 1`), so a caller may append `AND ...`. Column names are the caller's, never input."""
    clauses: list[str] = ["1"]
    params: list[Any] = []
    for column, value in (equal or {}).items():
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    for column, values in (one_of or {}).items():
        if values:
            clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
    for column, bound in (after or {}).items():
        if bound is not None:
            clauses.append(f"{column} > ?")
            params.append(bound)
    return "WHERE " + " AND ".join(clauses), params
