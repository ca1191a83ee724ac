"""A real small disk for the full-disk tests: a tmpfs mounted for one test (as root), and a way to fill it.

Not a fake: the kernel answers ENOSPC itself, so what is tested is what a full disk really does to SQLite,
the runtime's checks and a task mid-run. Outside root (and so outside CI, which runs as root) it skips.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import _unavailable

__all__ = ["Disk", "fill", "small_disk"]


@dataclass(frozen=True)
class Disk:
    """A small filesystem of its own: `fill()` takes its free bytes, `free()` gives them back."""

    root: Path

    def fill(self, *, leave: int = 0) -> Path:
        return fill(self.root, leave=leave)

    def free(self) -> None:
        (self.root / "filler").unlink(missing_ok=True)


@contextlib.contextmanager
def small_disk(where: Path, size: str = "8m") -> Iterator[Disk]:
    """A tmpfs of `size` mounted at `where`, unmounted however the test ends."""
    if os.geteuid() != 0:
        _unavailable("mounting a small filesystem needs root (mount -t tmpfs)")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], check=True)
    try:
        yield Disk(where)
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)


def fill(directory: Path, *, leave: int = 0) -> Path:
    """Write a file into `directory` until its disk has at most `leave` bytes free; the file."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (2**20, 2**16, 2**12, 2**9, 1):
            while _free(directory) - size >= leave:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def _free(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize
