"""A workspace's tar, read on the trusted side as data: nothing is extracted, no name or link is followed.

The archive comes out of a sandbox, so every header is untrusted. Each member becomes an `Entry` (a
workspace-relative path, a git mode and the git blob id of its content) or a refusal naming it: absolute
or `..` names, names with control characters or that are not UTF-8, devices, fifos, hard links to anything
but an earlier file of the same archive, names given twice. New content (a blob id not in `known`) is
spooled to numbered files under `spool`, never to a path the archive names, for the object store.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
import time
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from pathlib import Path

from runner.errors import SandboxError

MODE_FILE = 0o100644
MODE_EXECUTABLE = 0o100755
MODE_SYMLINK = 0o120000
MODE_SUBMODULE = 0o160000
IN_MEMORY = 1024**2  # members up to this size are hashed in memory; larger ones stream through the spool
CHUNK = 1024**2


class ArchiveError(SandboxError, OSError):
    """The workspace's tar is not a readable archive (an OSError too, as reading a file that is not one is)."""


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    mode: int
    sha: str
    """The git blob id of the content (a symlink's content is its target)."""
    target: str | None = None
    """A symlink's target, as stored."""
    spooled: Path | None = None
    """Where new content waits to be written into the object store; None when `known` had it."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    entries: tuple[Entry, ...]
    refused: tuple[str, ...]
    """One reason per member that cannot be part of a change."""
    nested_repositories: tuple[str, ...]
    """Directories holding a `.git` of their own (below the workspace's top)."""


Skip = Callable[[str, bool], bool]
"""skip(path, is_directory): leave this member (and, for a directory, everything below it) out."""


def read(archive: Path, spool: Path, *, known: Container[str], skip: Skip) -> Snapshot:
    """Read `archive` (a tar file) into a Snapshot. The workspace's own repository (`.git` at its top) is
    never part of it. Blocking: call it in a thread. Raises ArchiveError when it is not a readable tar.

    >>> read(Path("ws.tar"), Path("spool"), known=set(), skip=lambda path, is_dir: False)  # doctest: +SKIP
    Snapshot(entries=(Entry(path='bot/ledger.py', mode=33188, sha='3b18e5...', ...),), refused=(), ...)
    """
    reader = _Reader(_Spool(spool, known), skip)
    try:
        with tarfile.open(archive, mode="r|", errorlevel=2) as tar:
            for member in tar:
                reader.add(tar, member)
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"the workspace's archive cannot be read: {exc}") from exc
    return Snapshot(tuple(reader.entries.values()), tuple(reader.refused), tuple(reader.nested))


class _Reader:
    def __init__(self, spool: _Spool, skip: Skip) -> None:
        self.spool = spool
        self.skip = skip
        self.entries: dict[str, Entry] = {}
        self.refused: list[str] = []
        self.nested: list[str] = []
        self.pruned: set[str] = set()

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        path, problem = _name(member.name)
        if problem is not None:
            self.refused.append(problem)
            return
        if path is None or _below(path, self.pruned):
            return
        parts = path.split("/")
        if parts[-1] == ".git":
            if len(parts) > 1 and (parent := "/".join(parts[:-1])) not in self.nested:
                self.nested.append(parent)
            # At the top it is the sandbox's own repository: its history is the one commit it was given.
            self.pruned.add(path)
            return
        if self.skip(path, member.isdir()):
            if member.isdir():
                self.pruned.add(path)
            return
        if member.isdir():
            return
        if path in self.entries:
            self.refused.append(f"{path!r} appears twice in the workspace's archive")
            return
        entry = _entry(tar, member, path, self.entries, self.spool)
        if isinstance(entry, str):
            self.refused.append(entry)
        else:
            self.entries[path] = entry


def write(dest: Path, files: Iterable[tuple[str, int, bytes]], *, extra: Path | None = None,
          extra_prefix: str = ".git") -> None:
    """A tar at `dest` of `files` (path, git mode, content: a symlink's content is its target; a submodule
    becomes an empty directory), then the members of the tar `extra` at or below `extra_prefix`.
    Blocking: call it in a thread."""
    now = int(time.time())
    with tarfile.open(dest, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, mode, data in files:
            info = tarfile.TarInfo(path)
            info.mtime = now
            if mode == MODE_SYMLINK:
                info.type, info.linkname = tarfile.SYMTYPE, data.decode("utf-8", "surrogateescape")
                tar.addfile(info)
            elif mode == MODE_SUBMODULE:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755 if mode == MODE_EXECUTABLE else 0o644
                tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            with tarfile.open(extra, mode="r|") as source:
                for member in source:
                    name, _ = _name(member.name)
                    if name is not None and (name == extra_prefix or name.startswith(extra_prefix + "/")):
                        tar.addfile(member, source.extractfile(member) if member.isreg() else None)


def blob_id(data: bytes) -> str:
    """git's id of a blob holding `data`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _name(raw: str) -> tuple[str | None, str | None]:
    """The member's workspace-relative path (None for the top itself), or a reason to refuse it."""
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in raw):
        return None, f"{raw!r} holds control characters"
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        return None, f"{raw!r} is not a UTF-8 name"
    if raw.startswith("/"):
        return None, f"{raw!r} is an absolute name"
    name = raw[2:] if raw.startswith("./") else raw
    name = name.rstrip("/")
    if name in ("", "."):
        return None, None
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None, f"{raw!r} is not a plain relative name"
    return name, None


def _below(path: str, pruned: set[str]) -> bool:
    parent = posixpath.dirname(path)
    while parent:
        if parent in pruned:
            return True
        parent = posixpath.dirname(parent)
    return False


class _Spool:
    """New content, in numbered files: nothing the archive says decides where a byte of it is written."""

    def __init__(self, directory: Path, known: Container[str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.known = known
        self._count = 0

    def next(self) -> Path:
        self._count += 1
        return self.directory / f"{self._count:08d}"

    def keep(self, sha: str, data: bytes) -> Path | None:
        if sha in self.known:
            return None
        path = self.next()
        path.write_bytes(data)
        return path


def _entry(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, seen: dict[str, Entry],
           spool: _Spool) -> Entry | str:
    if member.issym():
        target = member.linkname
        if "\0" in target or not target:
            return f"{path!r} is a symlink without a usable target"
        try:
            data = target.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path!r} is a symlink whose target is not UTF-8"
        sha = blob_id(data)
        return Entry(path, MODE_SYMLINK, sha, target, spool.keep(sha, data))
    if member.islnk():
        # A hard link names an earlier member; the workspace is a filesystem of its own, so nothing else.
        _, problem = _name(member.linkname)
        first = seen.get(member.linkname.removeprefix("./").rstrip("/")) if problem is None else None
        if first is None or first.mode == MODE_SYMLINK:
            return f"{path!r} is a hard link to {member.linkname!r}, which is not a file of the workspace"
        return Entry(path, _mode(member), first.sha, None, first.spooled)
    if not member.isreg():
        kind = "a fifo" if member.isfifo() else "a device" if member.isdev() else f"of tar type {member.type!r}"
        return f"{path!r} is {kind}, not a file a repository can hold"
    stream = tar.extractfile(member)
    assert stream is not None  # a regular member always has data
    if member.size <= IN_MEMORY:
        data = stream.read()
        sha = blob_id(data)
        return Entry(path, _mode(member), sha, None, spool.keep(sha, data))
    digest = hashlib.sha1(b"blob %d\0" % member.size, usedforsecurity=False)
    spooled = spool.next()
    with spooled.open("wb") as out:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    sha = digest.hexdigest()
    if sha in spool.known:
        spooled.unlink()
        return Entry(path, _mode(member), sha, None, None)
    return Entry(path, _mode(member), sha, None, spooled)


def _mode(member: tarfile.TarInfo) -> int:
    return MODE_EXECUTABLE if member.mode & 0o100 else MODE_FILE
