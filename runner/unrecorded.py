"""Task transitions the state file refused (its disk full), kept beside it until the next start records them.

A task entering its sandbox phase reserves a small file, `<state dir>/unrecorded/<task id>.json` filled with
spaces: on a full disk a note can still be written over bytes the file already has, where a new file could not
be created. The Store writes the note when a transition fails, and records it when it next opens the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOTE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Unrecorded:
    """A transition of task `task_id` to `state` that the state file refused with `error`, at `at`."""

    task_id: str
    state: str
    reason: str
    error: str
    at: float
    result: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "state": self.state, "reason": self.reason, "error": self.error,
                "at": self.at, "result": dict(self.result) if self.result is not None else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Unrecorded:
        return cls(str(data["task_id"]), str(data["state"]), str(data.get("reason", "")), str(data.get("error", "")),
                   float(data.get("at", 0.0)), data.get("result"))


class Notes:
    """The notes of one state file: reserve, keep (write), forget, and read back."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _file(self, task_id: str) -> Path:
        assert "/" not in task_id and task_id not in ("", ".", ".."), task_id
        return self.root / f"{task_id}.json"

    def reserve(self, task_id: str) -> None:
        """Set aside room for the task's note while the disk still has some (best effort)."""
        target = self._file(task_id)
        if target.exists():
            return
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b" " * NOTE_BYTES)

    def keep(self, note: Unrecorded) -> bool:
        """Write `note` over the task's reserved room (or a new file). False when even that failed."""
        data = json.dumps(note.to_json(), default=str).encode()
        if len(data) > NOTE_BYTES and note.result is not None:  # the cause matters more than the result
            data = json.dumps({**note.to_json(), "result": None}).encode()
        target = self._file(note.task_id)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return False
        try:
            # In place and padded, never truncated first: the reserved bytes are what a full disk still allows.
            os.pwrite(fd, data.ljust(NOTE_BYTES), 0)
            os.fsync(fd)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    def forget(self, task_id: str) -> None:
        with contextlib.suppress(OSError):
            self._file(task_id).unlink()

    def pending(self) -> tuple[list[Unrecorded], list[str]]:
        """The notes written, oldest first, and the task ids whose room is reserved but holds none."""
        notes: list[Unrecorded] = []
        blank: list[str] = []
        if not self.root.is_dir():
            return notes, blank
        for file in sorted(self.root.glob("*.json")):
            try:
                text = file.read_text(encoding="utf-8", errors="replace").strip()
            except OSError:
                continue
            if not text:
                blank.append(file.stem)
                continue
            try:
                notes.append(Unrecorded.from_json(json.loads(text)))
            except (ValueError, KeyError, TypeError):
                blank.append(file.stem)  # torn by a crash mid-write: nothing trustworthy in it
        return sorted(notes, key=lambda n: n.at), blank
