"""The workspace tar read as data: what a hostile archive holds is refused by name, never followed or written."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from runner.sandbox import archive


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, *, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


def _read(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None], known: frozenset[str] = frozenset(),
          ) -> archive.Snapshot:
    return archive.read(_tar(tmp_path / "ws.tar", *members), tmp_path / "spool", known=known,
                        skip=lambda path, is_dir: False)


def test_read_gives_paths_modes_and_git_blob_ids(tmp_path: Path) -> None:
    snapshot = _read(tmp_path, (_member("./bot/x.py"), b"x = 1\n"), (_member("./run.sh", mode=0o755), b"#!/bin/sh\n"),
                     (_member("./link", tarfile.SYMTYPE, linkname="bot/x.py"), None))
    by_path = {e.path: e for e in snapshot.entries}
    assert by_path["bot/x.py"].mode == archive.MODE_FILE
    assert by_path["bot/x.py"].sha == archive.blob_id(b"x = 1\n")
    assert by_path["run.sh"].mode == archive.MODE_EXECUTABLE
    assert by_path["link"].mode == archive.MODE_SYMLINK and by_path["link"].target == "bot/x.py"
    assert snapshot.refused == ()


def test_blob_id_is_gits(tmp_path: Path) -> None:
    import subprocess

    (tmp_path / "f").write_bytes(b"hello\n")
    out = subprocess.run(["git", "hash-object", str(tmp_path / "f")], capture_output=True, text=True, check=True)
    assert archive.blob_id(b"hello\n") == out.stdout.strip()


@pytest.mark.parametrize(("member", "data", "says"), [
    (_member("/etc/cron.d/x"), b"x", "absolute name"),
    (_member("./../../etc/passwd"), b"x", "not a plain relative name"),
    (_member("./a\nb.py"), b"x", "control characters"),
    (_member("./a\x1b[31m.py"), b"x", "control characters"),
    (_member("./fifo", tarfile.FIFOTYPE), None, "a fifo"),
    (_member("./null", tarfile.CHRTYPE), None, "a device"),
    (_member("./hard", tarfile.LNKTYPE, linkname="/etc/passwd"), None, "hard link"),
    (_member("./hard", tarfile.LNKTYPE, linkname="./not-there"), None, "hard link"),
])
def test_read_refuses_what_no_repository_file_is(tmp_path: Path, member: tarfile.TarInfo, data: bytes | None,
                                                 says: str) -> None:
    snapshot = _read(tmp_path, (_member("./ok.py"), b"ok\n"), (member, data))
    assert [e.path for e in snapshot.entries] == ["ok.py"]
    assert len(snapshot.refused) == 1 and says in snapshot.refused[0], snapshot.refused
    assert sorted(p.name for p in (tmp_path / "spool").iterdir()) == ["00000001"]  # numbered, nothing named by it


def test_read_takes_a_hard_link_to_an_earlier_file_as_its_data(tmp_path: Path) -> None:
    snapshot = _read(tmp_path, (_member("./a.py"), b"a\n"), (_member("./b.py", tarfile.LNKTYPE, linkname="./a.py"),
                                                             None))
    same = archive.blob_id(b"a\n")
    assert {e.path: e.sha for e in snapshot.entries} == {"a.py": same, "b.py": same}


def test_read_refuses_a_name_given_twice(tmp_path: Path) -> None:
    snapshot = _read(tmp_path, (_member("./a.py"), b"one\n"), (_member("a.py"), b"two\n"))
    assert [e.path for e in snapshot.entries] == ["a.py"] and "twice" in snapshot.refused[0]


def test_read_leaves_out_the_workspaces_own_repository_and_names_nested_ones(tmp_path: Path) -> None:
    snapshot = _read(tmp_path, (_member("./.git", tarfile.DIRTYPE), None), (_member("./.git/config"), b"[core]\n"),
                     (_member("./vendor/lib/.git", tarfile.DIRTYPE), None), (_member("./vendor/lib/.git/HEAD"), b"x"),
                     (_member("./vendor/lib/x.py"), b"x\n"))
    assert [e.path for e in snapshot.entries] == ["vendor/lib/x.py"]
    assert snapshot.nested_repositories == ("vendor/lib",)


def test_read_spools_only_new_content(tmp_path: Path) -> None:
    old, new = b"unchanged\n", b"new\n"
    snapshot = _read(tmp_path, (_member("./old.py"), old), (_member("./new.py"), new),
                     known=frozenset({archive.blob_id(old)}))
    by_path = {e.path: e for e in snapshot.entries}
    assert by_path["old.py"].spooled is None
    spooled = by_path["new.py"].spooled
    assert spooled is not None and spooled.read_bytes() == new


def test_read_maps_a_broken_archive_to_archive_error(tmp_path: Path) -> None:
    (tmp_path / "ws.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(archive.ArchiveError):
        archive.read(tmp_path / "ws.tar", tmp_path / "spool", known=set(), skip=lambda path, is_dir: False)
