"""Trusted prepare/extract: what the sandbox is given, and how its change is read back from a tar, as data.

Each test plays the sandbox on this host: it unpacks the given tar into a directory, changes it, and packs it
with the very tar command the Docker backend runs in the container (runner.sandbox.docker.tar_out_argv).
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

import policy
from runner import workspace
from runner.sample import create_sample_repo
from runner.sandbox.docker import tar_out_argv


@pytest.fixture
async def prepared(tmp_path: Path) -> workspace.Prepared:
    repo = await create_sample_repo(tmp_path / "origin")
    ready = await workspace.prepare(tmp_path / "home", "t1", str(repo), policy.load_default())
    await workspace.populate(ready)
    return ready


@pytest.fixture
def ws(prepared: workspace.Prepared, tmp_path: Path) -> Path:
    """The sandbox's workspace: the given tar unpacked, as the container's tar -x does."""
    target = tmp_path / "sandbox-workspace"
    target.mkdir()
    subprocess.run(["tar", "-x", "-f", str(prepared.given_archive), "-C", str(target)], check=True)
    return target


def _pack(prepared: workspace.Prepared, ws: Path) -> Path:
    out = prepared.task_dir / "workspace.tar"
    with out.open("wb") as sink:
        subprocess.run(tar_out_argv(str(ws)), stdout=sink, check=True)
    return out


async def _extract(prepared: workspace.Prepared, ws: Path, kind: str = "feature") -> workspace.Change:
    return await workspace.extract(prepared, _pack(prepared, ws), policy.load_default(), kind)


def _git(cwd: Path, *args: str) -> str:
    # safe.directory: as root, the workspace belongs to the sandbox's uid.
    argv = ["git", "-c", "safe.directory=*", *args]
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stdout


async def test_prepare_strips_read_protected_files_and_history(prepared: workspace.Prepared, ws: Path) -> None:
    assert set(prepared.removed) == {".env", "secrets/payment.key"}
    assert not (ws / ".env").exists() and not (ws / "secrets").exists()
    assert (ws / "bot" / "ledger.py").exists()
    # The sandbox's repo holds one parentless commit: no history in which the secret would still live.
    assert _git(ws, "rev-list", "--all").split() == [prepared.given]
    assert "sample-secret" not in _git(ws, "log", "--all", "-p")
    assert _git(ws, "status", "--porcelain") == ""
    assert b"sample-secret" not in prepared.given_archive.read_bytes()


async def test_extract_sees_edits_and_new_files_but_not_removed_secrets(prepared: workspace.Prepared,
                                                                       ws: Path) -> None:
    (ws / "bot" / "ledger.py").write_text((ws / "bot" / "ledger.py").read_text() + "\n# touched\n")
    (ws / "bot" / "new.py").write_text("X = 1\n")
    (ws / "bot" / "__pycache__").mkdir()
    (ws / "bot" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (ws / "stray.pyc").write_bytes(b"\0")
    change = await _extract(prepared, ws)
    assert change.verdict.ok, change.verdict.reasons
    assert sorted(change.paths) == ["bot/ledger.py", "bot/new.py"]
    statuses = {f.path: f.status for f in change.files}
    assert statuses == {"bot/ledger.py": "modified", "bot/new.py": "added"}
    assert ".env" not in change.diff and "+# touched" in change.diff


async def test_extract_reports_renames_and_deletions(prepared: workspace.Prepared, ws: Path) -> None:
    (ws / "README.md").rename(ws / "README.rst")
    (ws / "pytest.ini").unlink()
    change = await _extract(prepared, ws)
    by_path = {f.path: f for f in change.files}
    assert by_path["README.rst"].status == "renamed" and by_path["README.rst"].old_path == "README.md"
    assert by_path["pytest.ini"].status == "deleted"


async def test_extract_rejects_a_symlink_out_of_the_workspace_and_never_reads_through_it(
        prepared: workspace.Prepared, ws: Path) -> None:
    os.symlink("/etc/passwd", ws / "passwd")
    (ws / "bot" / "ledger.py").unlink()
    os.symlink("/etc/passwd", ws / "bot" / "ledger.py")  # a tracked file swapped for a link
    change = await _extract(prepared, ws)
    assert not change.verdict.ok
    link = next(f for f in change.files if f.path == "passwd")
    assert link.mode == 0o120000 and link.symlink_target == "/etc/passwd"
    swapped = next(f for f in change.files if f.path == "bot/ledger.py")
    assert swapped.mode == 0o120000
    assert "root:x:0:0" not in change.diff  # the host's bytes never entered the change


async def test_extract_rejects_a_planted_read_protected_file(prepared: workspace.Prepared, ws: Path) -> None:
    (ws / ".env").write_text("TOKEN=planted\n")
    change = await _extract(prepared, ws)
    assert not change.verdict.ok
    assert any(".env" in reason for reason in change.verdict.reasons)
    assert "planted" not in change.diff  # its content never reaches a commit


async def test_extract_rejects_protected_writes_and_nested_repositories(prepared: workspace.Prepared,
                                                                       ws: Path) -> None:
    (ws / "compose.yaml").write_text("services: {}\n")
    nested = ws / "vendor" / "lib"
    nested.mkdir(parents=True)
    (nested / "x.py").write_text("x = 1\n")
    _git(nested, "init", "-q")
    change = await _extract(prepared, ws)
    assert not change.verdict.ok
    reasons = " ".join(change.verdict.reasons)
    assert "compose.yaml" in reasons and "vendor/lib" in reasons


async def test_extract_ignores_the_workspaces_own_ignore_files(prepared: workspace.Prepared, ws: Path) -> None:
    """A `.gitignore` the sandbox wrote is part of the change, never an instruction: it used to hide itself and a
    conftest.py from the change while the PR said the tests passed."""
    (ws / "tests" / ".gitignore").write_text("conftest.py\n.gitignore\n")
    (ws / "tests" / "conftest.py").write_text("import os  # runs in every test session\n")
    (ws / ".gitignore").write_text("*\n")
    (ws / ".git" / "info").mkdir(exist_ok=True)
    (ws / ".git" / "info" / "exclude").write_text("*.py\n")
    (ws / "bot" / "new.py").write_text("X = 1\n")
    change = await _extract(prepared, ws)
    assert {"tests/.gitignore", "tests/conftest.py", ".gitignore", "bot/new.py"} <= set(change.paths)
    assert "+conftest.py" in change.diff and "runs in every test session" in change.diff


async def test_extract_never_runs_what_the_sandbox_put_in_its_git_config(
    prepared: workspace.Prepared, ws: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "fsmonitor-ran"
    hook = ws / ".git" / "hooks" / "post-index-change"
    hook.write_text(f"#!/bin/sh\necho ran > {marker}\n")
    hook.chmod(0o755)
    with (ws / ".git" / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = echo ran > {marker}\n\thooksPath = .git/hooks\n")
    (ws / ".gitattributes").write_text("*.py filter=evil\n")
    (ws / "bot" / "ledger.py").write_text("# changed\n")
    change = await _extract(prepared, ws)
    assert set(change.paths) == {"bot/ledger.py", ".gitattributes"}
    assert not marker.exists()


async def test_extract_stores_large_and_executable_files_exactly(prepared: workspace.Prepared, ws: Path) -> None:
    big = os.urandom(3 * 1024**2)  # above the reader's in-memory size: streamed through the spool
    (ws / "data.bin").write_bytes(big)
    (ws / "scripts").mkdir()
    (ws / "scripts" / "run.sh").write_text("#!/bin/sh\n")
    (ws / "scripts" / "run.sh").chmod(0o755)
    change = await _extract(prepared, ws)
    modes = {f.path: f.mode for f in change.files}
    assert modes == {"data.bin": 0o100644, "scripts/run.sh": 0o100755}
    stored = subprocess.run(["git", "cat-file", "blob", f"{change.tree}:data.bin"], cwd=prepared.trusted,
                            capture_output=True, check=True).stdout
    assert stored == big
    assert not (prepared.task_dir / "extract-spool").exists()


async def test_commit_lands_on_the_unstripped_base(prepared: workspace.Prepared, ws: Path) -> None:
    (ws / "bot" / "ledger.py").write_text("# changed\n")
    change = await _extract(prepared, ws)
    sha = await workspace.commit(prepared, change, "agent: change", "agent/feature-x")
    trusted = prepared.trusted
    assert _git(trusted, "rev-parse", f"{sha}^").strip() == prepared.base_sha
    # The secrets the sandbox never saw are still in the commit: their absence was not a change.
    assert _git(trusted, "ls-tree", "-r", "--name-only", sha).split().count(".env") == 1
    assert _git(trusted, "rev-parse", "HEAD").strip() == sha


async def test_tree_archive_holds_the_trees_blobs_whatever_its_gitattributes_say(
        prepared: workspace.Prepared, ws: Path, tmp_path: Path) -> None:
    """`git archive` would honour an agent-written export-ignore and leave its conftest.py out of the
    supervisor's test run; the tests' tar holds exactly the tree's blobs, and the given `.git`."""
    (ws / ".gitattributes").write_text("tests/conftest.py export-ignore\n*.py export-subst\n")
    (ws / "tests" / "conftest.py").write_text("# $Format:%H$\n")
    os.symlink("ledger.py", ws / "bot" / "alias.py")
    change = await _extract(prepared, ws)
    dest = tmp_path / "tests.tar"
    await workspace.tree_archive(prepared, change.tree, dest)
    with tarfile.open(dest) as tar:
        names = set(tar.getnames())
        assert tar.extractfile("tests/conftest.py").read() == b"# $Format:%H$\n"  # type: ignore[union-attr]
        assert tar.getmember("bot/alias.py").linkname == "ledger.py"
    assert {"bot/ledger.py", ".gitattributes"} <= names and any(n.startswith("./.git/") for n in names)
    assert not any(n.endswith(".env") or "secrets" in n for n in names)


async def test_concurrent_first_mirrors_of_one_repository_both_succeed(tmp_path: Path) -> None:
    """Two tasks that find no mirror used to clone into one `.partial` directory and leave a broken mirror."""
    import asyncio

    repo = str(await create_sample_repo(tmp_path / "origin"))
    home = tmp_path / "home"
    mirrors = await asyncio.gather(*(workspace.update_mirror(home, repo) for _ in range(4)))
    assert len(set(mirrors)) == 1
    head = subprocess.run(["git", "--git-dir", str(mirrors[0]), "rev-parse", "main"], capture_output=True, text=True)
    assert head.returncode == 0 and len(head.stdout.strip()) == 40
    assert not mirrors[0].with_suffix(".partial").exists()
    await workspace.update_mirror(home, repo)  # and the next task fetches into it


async def test_the_next_task_on_the_same_tree_gets_the_cached_archive(
        tmp_path: Path, prepared: workspace.Prepared, ws: Path) -> None:
    """The second task links the populated workspace's tar instead of checking it out; what one sandbox does
    to its workspace reaches neither the cache nor the next task."""
    (ws / "bot" / "ledger.py").write_text("tampered\n")  # the first sandbox at work
    (ws / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\n")
    repo = str(await create_sample_repo(tmp_path / "origin"))
    second = await workspace.prepare(tmp_path / "home", "t2", repo, policy.load_default())
    assert second.given == prepared.given  # a function of the tree: the cached copy holds this very commit
    await workspace.populate(second)
    [cached] = [p for p in second.cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert os.path.samefile(second.given_archive, prepared.given_archive)
    unpacked = tmp_path / "second"
    unpacked.mkdir()
    subprocess.run(["tar", "-x", "-f", str(second.given_archive), "-C", str(unpacked)], check=True)
    assert (unpacked / "bot" / "ledger.py").read_text() != "tampered\n"
    assert not (unpacked / ".git" / "hooks" / "post-checkout").exists()
    assert _git(unpacked, "rev-list", "--all").split() == [second.given]
    assert _git(unpacked, "status", "--porcelain") == ""
    assert (cached / "bot" / "ledger.py").read_text() != "tampered\n"


async def test_concurrent_first_populates_of_one_tree_all_get_the_archive(tmp_path: Path) -> None:
    """Tasks of one `serve` that start together on one tree all archive the cached checkout; they used to
    share one partial file name per process, and all but the first failed with FileNotFoundError."""
    import asyncio

    repo = str(await create_sample_repo(tmp_path / "origin"))
    home = tmp_path / "home"
    tasks = [await workspace.prepare(home, f"t{i}", repo, policy.load_default()) for i in range(6)]
    await asyncio.gather(*(workspace.populate(task) for task in tasks))
    for task in tasks:
        assert tarfile.is_tarfile(task.given_archive)
    assert not [p for p in tasks[0].cache.iterdir() if p.name.endswith(".partial")]


def test_the_workspace_cache_keeps_the_most_recently_used(tmp_path: Path) -> None:
    import time

    for i in range(10):
        (tmp_path / f"tree{i}").mkdir()
        if i != 9:  # tree9 is not archived yet: its checkout's own time counts
            (tmp_path / f"tree{i}.tar").write_bytes(b"")
        # Recency is the tar's (populate touches only it), never the checkout another task may be archiving.
        os.utime(tmp_path / (f"tree{i}.tar" if i != 9 else "tree9"), (time.time() - 100 + i, time.time() - 100 + i))
        if i != 9:
            os.utime(tmp_path / f"tree{i}", (time.time() - 200 - i,) * 2)  # checkouts' times say the opposite order
    (tmp_path / ".building").mkdir()  # a fill in progress is never evicted
    workspace._evict(tmp_path, keep=8)
    kept = [f"tree{i}" for i in range(2, 10)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".building", *kept, *(f"{k}.tar" for k in kept[:-1])])
