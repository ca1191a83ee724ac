"""Trusted prepare/extract: what the sandbox is given, and how its change is read back as data."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import policy
from runner import workspace
from runner.sample import create_sample_repo


@pytest.fixture
async def prepared(tmp_path: Path) -> workspace.Prepared:
    repo = await create_sample_repo(tmp_path / "origin")
    ready = await workspace.prepare(tmp_path / "home", "t1", str(repo), policy.load_default())
    await workspace.populate(ready)
    return ready


def _git(cwd: Path, *args: str) -> str:
    # safe.directory: as root, the workspace belongs to the sandbox's uid.
    argv = ["git", "-c", "safe.directory=*", *args]
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stdout


async def test_prepare_strips_read_protected_files_and_history(prepared: workspace.Prepared) -> None:
    ws = prepared.workspace
    assert set(prepared.removed) == {".env", "secrets/payment.key"}
    assert not (ws / ".env").exists() and not (ws / "secrets").exists()
    assert (ws / "bot" / "ledger.py").exists()
    # The sandbox's repo holds one parentless commit: no history in which the secret would still live.
    assert _git(ws, "rev-list", "--all").split() == [prepared.given]
    assert "sample-secret" not in _git(ws, "log", "--all", "-p")
    assert _git(ws, "status", "--porcelain") == ""
    objects = _git(ws, "count-objects", "-v")
    assert "sample-secret" not in objects


async def test_extract_sees_edits_and_new_files_but_not_removed_secrets(prepared: workspace.Prepared) -> None:
    ws = prepared.workspace
    (ws / "bot" / "ledger.py").write_text((ws / "bot" / "ledger.py").read_text() + "\n# touched\n")
    (ws / "bot" / "new.py").write_text("X = 1\n")
    (ws / "bot" / "__pycache__").mkdir()
    (ws / "bot" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    change = await workspace.extract(prepared, policy.load_default(), "feature")
    assert change.verdict.ok, change.verdict.reasons
    assert sorted(change.paths) == ["bot/ledger.py", "bot/new.py"]
    statuses = {f.path: f.status for f in change.files}
    assert statuses == {"bot/ledger.py": "modified", "bot/new.py": "added"}
    assert ".env" not in change.diff and "+# touched" in change.diff


async def test_extract_reports_renames_and_deletions(prepared: workspace.Prepared) -> None:
    ws = prepared.workspace
    (ws / "README.md").rename(ws / "README.rst")
    (ws / "pytest.ini").unlink()
    change = await workspace.extract(prepared, policy.load_default(), "feature")
    by_path = {f.path: f for f in change.files}
    assert by_path["README.rst"].status == "renamed" and by_path["README.rst"].old_path == "README.md"
    assert by_path["pytest.ini"].status == "deleted"


async def test_extract_rejects_a_symlink_out_of_the_workspace(prepared: workspace.Prepared) -> None:
    os.symlink("/var/run/docker.sock", prepared.workspace / "docker.sock")
    change = await workspace.extract(prepared, policy.load_default(), "feature")
    assert not change.verdict.ok
    link = next(f for f in change.files if f.path == "docker.sock")
    assert link.mode == 0o120000 and link.symlink_target == "/var/run/docker.sock"


async def test_extract_rejects_a_planted_read_protected_file(prepared: workspace.Prepared) -> None:
    (prepared.workspace / ".env").write_text("TOKEN=planted\n")
    change = await workspace.extract(prepared, policy.load_default(), "feature")
    assert not change.verdict.ok
    assert any(".env" in reason for reason in change.verdict.reasons)
    assert "planted" not in change.diff  # its content never reaches a commit


async def test_extract_rejects_protected_writes_and_nested_repositories(prepared: workspace.Prepared) -> None:
    ws = prepared.workspace
    (ws / "compose.yaml").write_text("services: {}\n")
    nested = ws / "vendor" / "lib"
    nested.mkdir(parents=True)
    (nested / "x.py").write_text("x = 1\n")
    _git(nested, "init", "-q")
    _git(nested, "-c", "user.name=a", "-c", "user.email=a@b", "add", "-A")
    _git(nested, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x")
    change = await workspace.extract(prepared, policy.load_default(), "feature")
    assert not change.verdict.ok
    reasons = " ".join(change.verdict.reasons)
    assert "compose.yaml" in reasons and "vendor/lib" in reasons


async def test_extract_never_runs_what_the_sandbox_put_in_its_git_config(
    prepared: workspace.Prepared, tmp_path: Path
) -> None:
    marker = tmp_path / "fsmonitor-ran"
    hook = prepared.workspace / ".git" / "hooks" / "post-index-change"
    hook.write_text(f"#!/bin/sh\necho ran > {marker}\n")
    hook.chmod(0o755)
    with (prepared.workspace / ".git" / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = echo ran > {marker}\n\thooksPath = .git/hooks\n")
    (prepared.workspace / "bot" / "ledger.py").write_text("# changed\n")
    change = await workspace.extract(prepared, policy.load_default(), "feature")
    assert change.paths == ("bot/ledger.py",)
    assert not marker.exists()


async def test_commit_lands_on_the_unstripped_base(prepared: workspace.Prepared) -> None:
    (prepared.workspace / "bot" / "ledger.py").write_text("# changed\n")
    change = await workspace.extract(prepared, policy.load_default(), "feature")
    sha = await workspace.commit(prepared, change, "agent: change", "agent/feature-x")
    trusted = prepared.trusted
    assert _git(trusted, "rev-parse", f"{sha}^").strip() == prepared.base_sha
    # The secrets the sandbox never saw are still in the commit: their absence was not a change.
    assert _git(trusted, "ls-tree", "-r", "--name-only", sha).split().count(".env") == 1
    assert _git(trusted, "rev-parse", "HEAD").strip() == sha


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


async def test_the_next_task_on_the_same_tree_gets_a_copy_of_the_cached_workspace(
        tmp_path: Path, prepared: workspace.Prepared) -> None:
    """The second task copies the populated workspace instead of checking it out; what one sandbox does to its
    copy reaches neither the cache nor the next task."""
    (prepared.workspace / "bot" / "ledger.py").write_text("tampered\n")  # the first sandbox at work
    (prepared.workspace / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\n")
    repo = str(await create_sample_repo(tmp_path / "origin"))
    second = await workspace.prepare(tmp_path / "home", "t2", repo, policy.load_default())
    assert second.given == prepared.given  # a function of the tree: the cached copy holds this very commit
    await workspace.populate(second)
    [cached] = [p for p in second.cache.iterdir() if not p.name.startswith(".")]
    assert (second.workspace / "bot" / "ledger.py").read_text() != "tampered\n"
    assert not (second.workspace / ".git" / "hooks" / "post-checkout").exists()
    assert _git(second.workspace, "rev-list", "--all").split() == [second.given]
    assert _git(second.workspace, "status", "--porcelain") == ""
    assert (second.workspace / "bot" / "ledger.py").stat().st_ino != (cached / "bot" / "ledger.py").stat().st_ino
    if os.geteuid() == 0:  # the sandbox's uid owns its copy; the cache stays the supervisor's
        assert (second.workspace / "bot" / "ledger.py").stat().st_uid != 0
        assert (cached / "bot" / "ledger.py").stat().st_uid == 0


def test_the_workspace_cache_keeps_the_most_recently_used(tmp_path: Path) -> None:
    import time

    for i in range(10):
        (tmp_path / f"tree{i}").mkdir()
        os.utime(tmp_path / f"tree{i}", (time.time() - 100 + i, time.time() - 100 + i))
    (tmp_path / ".building").mkdir()  # a fill in progress is never evicted
    workspace._evict(tmp_path, keep=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".building", *(f"tree{i}" for i in range(2, 10))]
