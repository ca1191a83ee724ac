"""A task's work kept on disk when the state file cannot take it: room set aside while the disk has some, and
the diff written beside the task when a transition is refused.

    AGENT_RUNNER_HOME/tasks/<task id>/room        set aside when the task's sandbox starts, given back at its end
    AGENT_RUNNER_HOME/tasks/<task id>/kept.diff   the task's diff, written when the state file refused it

Until the supervisor reads it out, a task's work lives in its sandbox's memory. On a full disk that read (the
workspace's tar, then the extraction into the supervisor's clone) and the diff itself need room the disk no
longer has, so each task holds some from its start and gives it back at exactly that moment.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

ROOM = "room"
KEPT = "kept.diff"
ROOM_MARGIN_BYTES = 4 * 2**20  # the extraction's spool and index, the diff, the notes beside the state file
MAX_ROOM_BYTES = 256 * 2**20  # a bigger tree's work may still not fit; the reason then says it was lost


def room_for(archive: Path) -> int:
    """Room enough to read back a workspace made from `archive` (the tar the sandbox was given): the tree once
    more, plus a margin."""
    try:
        size = archive.stat().st_size
    except OSError:
        size = 0
    return min(size + ROOM_MARGIN_BYTES, MAX_ROOM_BYTES)


def reserve(task_dir: Path, nbytes: int) -> bool:
    """Set `nbytes` aside in `task_dir` (allocated, not sparse: a full disk cannot take it back); False when the
    disk has not that much now, and then nothing is held."""
    target = task_dir / ROOM
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return False
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError:
        os.close(fd)
        target.unlink(missing_ok=True)
        return False
    os.close(fd)
    return True


def release(task_dir: Path) -> None:
    """Give the room back (idempotent)."""
    with contextlib.suppress(OSError):
        (task_dir / ROOM).unlink()


def keep(task_dir: Path, diff: str) -> Path:
    """Write `diff` to `task_dir/kept.diff` and return its path. Raises OSError when even that is refused."""
    target = task_dir / KEPT
    with open(target, "w", encoding="utf-8", errors="surrogateescape") as out:
        out.write(diff)
        out.flush()
        os.fsync(out.fileno())  # the state file could not say where the work is: this file must not be lost
    return target
