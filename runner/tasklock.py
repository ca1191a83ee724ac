"""Ownership of a running task, proven by an flock the kernel drops when its process dies (even on SIGKILL).

A supervisor holds its task's lock for as long as it runs it; a reaper that can take the lock knows the
owner is gone, so the task's container is an orphan and the task was interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path


@contextlib.contextmanager
def hold(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def is_held(path: Path) -> bool:
    """True while some live process holds the lock at path."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.asynccontextmanager
async def waiting(path: Path, *, poll: float = 0.05) -> AsyncIterator[None]:
    """The lock at `path`, waited for (without blocking the event loop) while another holder has it: a short
    section that tasks of one home must take in turn, whether they run in this process or another one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open of the file conflicts, even ours
                break
            except BlockingIOError:
                await asyncio.sleep(poll)
        yield
    finally:
        os.close(fd)
