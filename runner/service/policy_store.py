"""Policy versions: every policy the owner activated, in its own table of the supervisor's SQLite file."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import policy
from runner.errors import PolicyVersionNotFound, ProposalVoid
from runner.sqlite import Database

__all__ = ["PROPOSAL_SECONDS", "PolicyDesk", "PolicyStore", "PolicyVersion", "Proposal", "ProposalVoid"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_versions (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    text TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS policy_active (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    version INTEGER NOT NULL REFERENCES policy_versions(version)
);
"""


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    version: int
    at: float
    actor: str
    name: str
    """The policy's own `version:` field."""
    sha256: str
    text: str
    note: str


class PolicyStore(Database):
    """Versions are append-only; activating one (new or old) moves a single pointer."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, SCHEMA)
        self._clock = clock

    async def add(self, text: str, *, name: str, actor: str, note: str = "") -> PolicyVersion:
        """Record `text` as a new version and make it the active one."""
        sha = hashlib.sha256(text.encode()).hexdigest()
        rows = await self._run("INSERT INTO policy_versions (at, actor, name, sha256, text, note) "
                               "VALUES (?, ?, ?, ?, ?, ?) RETURNING version",
                               (self._clock(), actor, name, sha, text, note))
        version = int(rows[0]["version"])
        await self.activate(version)
        return await self.get(version)

    async def activate(self, version: int) -> PolicyVersion:
        found = await self.get(version)
        await self._run("INSERT INTO policy_active (one, version) VALUES (1, ?) "
                        "ON CONFLICT(one) DO UPDATE SET version = excluded.version", (version,))
        return found

    async def get(self, version: int) -> PolicyVersion:
        rows = await self._run("SELECT * FROM policy_versions WHERE version = ?", (version,))
        if not rows:
            raise PolicyVersionNotFound(f"no policy version {version}")
        return _version(rows[0])

    async def active(self) -> PolicyVersion | None:
        rows = await self._run("SELECT v.* FROM policy_versions v JOIN policy_active a ON a.version = v.version")
        return _version(rows[0]) if rows else None

    async def history(self, limit: int = 20) -> list[PolicyVersion]:
        rows = await self._run("SELECT * FROM policy_versions ORDER BY version DESC LIMIT ?", (limit,))
        return [_version(r) for r in rows]


def _version(row: sqlite3.Row) -> PolicyVersion:
    return PolicyVersion(int(row["version"]), float(row["at"]), row["actor"], row["name"], row["sha256"], row["text"],
                         row["note"])


PROPOSAL_SECONDS = 900.0  # a proposal shown in the chat can be confirmed for this long


@dataclass(frozen=True, slots=True)
class Proposal:
    text: str
    base_sha256: str
    """The active policy's text when the proposal (and the diff the owner saw) was made."""
    at: float


@dataclass(slots=True)
class PolicyDesk:
    """The active policy's text and versions for the owner's front ends (HTTP API, Telegram).

    Activating a text records a new version and hands the loaded policy to `on_activate`, which makes it
    the one the next task is decided by; proposals awaiting a Confirm button wait in `pending`.
    """

    store: PolicyStore
    initial_text: str
    on_activate: Callable[[policy.Policy], None] = lambda _p: None
    pending: dict[str, Proposal] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    async def propose(self, text: str, token: str) -> None:
        """Hold `text` (already validated) until the owner confirms `token`, against the policy active now."""
        base = hashlib.sha256((await self.active_text()).encode()).hexdigest()
        now = self.clock()
        for stale in [t for t, p in self.pending.items() if now - p.at > PROPOSAL_SECONDS]:
            del self.pending[stale]
        self.pending[token] = Proposal(text, base, now)

    async def confirm(self, token: str, *, actor: str) -> policy.Policy:
        """Activate the proposal `token`. Raises ProposalVoid when it expired or the policy changed since the
        owner saw its diff (confirming then would silently undo the newer change)."""
        proposal = self.pending.pop(token, None)
        if proposal is None or self.clock() - proposal.at > PROPOSAL_SECONDS:
            raise ProposalVoid(f"this proposal has expired (proposals last {PROPOSAL_SECONDS / 60:.0f} minutes); "
                               "send the file again")
        if hashlib.sha256((await self.active_text()).encode()).hexdigest() != proposal.base_sha256:
            raise ProposalVoid("the active policy changed after this proposal was made, so its diff is out of "
                               "date; send the file again")
        return await self.activate(proposal.text, actor=actor)

    async def active_text(self) -> str:
        active = await self.store.active()
        return active.text if active else self.initial_text

    async def activate(self, text: str, *, actor: str, note: str = "") -> policy.Policy:
        """Validate (schema and the policy's own examples), record, activate. Raises PolicyError."""
        loaded = policy.load(text)
        failed = [r for r in policy.run_examples(loaded) if not r.ok]
        if failed:
            described = "; ".join(r.describe() for r in failed[:5])
            raise policy.PolicyLoadError(f"the policy's own examples fail: {described}")
        await self.store.add(text, name=loaded.version, actor=actor, note=note)
        self.on_activate(loaded)
        return loaded

    async def rollback(self, version: int, *, actor: str) -> policy.Policy:
        """Make an earlier version active again (as a new version, so history stays append-only)."""
        target = await self.store.get(version)
        return await self.activate(target.text, actor=actor, note=f"rollback to v{version}")

