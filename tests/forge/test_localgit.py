"""LocalGitForge against real bare repositories and a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.errors import ForgeConflict, ForgeError, ForgeNotFound
from runner.forge import MergeConflict
from runner.forge.localgit import LocalGitForge
from tests.forge.repos import Repos, git

BRANCH = "agent/feature-balance"


async def propose(
    forge: LocalGitForge, repos: Repos, branch: str = BRANCH, path: str = "balance.py"
) -> tuple[str, int]:
    sha = repos.commit(path, "def balance():\n    return 0\n", f"add {path}", branch=branch)
    pushed, number = await open_branch_pr(forge, repos, "Add /balance", "body text", branch)
    assert pushed == sha
    return sha, number


async def open_branch_pr(forge: LocalGitForge, repos: Repos, title: str, body: str = "",
                         branch: str = BRANCH) -> tuple[str, int]:
    """Push `branch` as committed in the clone, open its pull request onto main and go back to main: the pushed
    head and the PR's number."""
    sha = await forge.push_branch(repos.clone, branch)
    pr = await forge.open_pr(title, body, branch, "main")
    git("checkout", "-q", "main", cwd=repos.clone)
    return sha, pr.number


def move_main(repos: Repos, path: str, content: str, message: str) -> str | None:
    """Another change lands on main (committed in the clone, pushed to the origin): main's new head."""
    repos.commit(path, content, message)
    git("push", "-q", "origin", "main", cwd=repos.clone)
    return repos.head("main")


async def test_localgit_push_and_open_pr_round_trip(local_forge: LocalGitForge, repos: Repos) -> None:
    sha = repos.commit("balance.py", "x = 1\n", "add balance", branch=BRANCH)

    pushed = await local_forge.push_branch(repos.clone, BRANCH)
    pr = await local_forge.open_pr("Add /balance", "the body", BRANCH, "main")

    assert pushed == sha == repos.head(BRANCH)
    assert (pr.number, pr.state, pr.head_sha, pr.merge_sha) == (1, "open", sha, None)
    assert (pr.title, pr.body, pr.head_branch, pr.base_branch) == ("Add /balance", "the body", BRANCH, "main")
    assert pr.url == f"{repos.origin.resolve().as_uri()}#pull/1"
    assert await local_forge.get_pr(1) == pr
    assert await local_forge.list_open() == (pr,)


async def test_localgit_open_pr_reuses_the_open_pr_for_a_branch(local_forge: LocalGitForge, repos: Repos) -> None:
    _, number = await propose(local_forge, repos)

    again = await local_forge.open_pr("Other", "other", BRANCH, "main")

    assert again.number == number and again.title == "Add /balance"
    assert len(await local_forge.list_open()) == 1


async def test_localgit_numbers_pull_requests_per_repository(repos: Repos, tmp_path: Path) -> None:
    other = tmp_path / "other.git"
    git("clone", "-q", "--bare", str(repos.origin), str(other), cwd=tmp_path)
    db = tmp_path / "shared.sqlite3"
    async with LocalGitForge(repos.origin, db) as first, LocalGitForge(other, db) as second:
        _, a = await propose(first, repos)
        git("push", "-q", str(other), f"{BRANCH}:{BRANCH}", cwd=repos.clone)
        b = (await second.open_pr("Add /balance", "", BRANCH, "main")).number
        _, c = await propose(first, repos, "agent/feature-two", "two.py")

        assert (a, b, c) == (1, 1, 2)
        assert [pr.number for pr in await second.list_open()] == [1]
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


async def test_localgit_open_pr_for_a_missing_branch_raises_not_found(local_forge: LocalGitForge) -> None:
    with pytest.raises(ForgeNotFound, match="no branch"):
        await local_forge.open_pr("t", "b", "agent/feature-nowhere", "main")
    with pytest.raises(ForgeNotFound, match="no base branch"):
        await local_forge.open_pr("t", "b", "main", "develop")


async def test_localgit_get_pr_missing_raises_not_found(local_forge: LocalGitForge) -> None:
    with pytest.raises(ForgeNotFound, match="#7"):
        await local_forge.get_pr(7)
    with pytest.raises(ForgeNotFound):
        await local_forge.comment(7, "hi")


async def test_localgit_comments_are_kept_in_order(local_forge: LocalGitForge, repos: Repos) -> None:
    _, number = await propose(local_forge, repos)

    first = await local_forge.comment(number, "tests passed")
    await local_forge.comment(number, "deployed")

    assert (first.number, first.body, first.author) == (number, "tests passed", "agent-runner")
    assert [c.body for c in await local_forge.list_comments(number)] == ["tests passed", "deployed"]


async def test_localgit_push_refuses_base_and_foreign_branches(local_forge: LocalGitForge, repos: Repos) -> None:
    before = repos.head("main")
    repos.commit("evil.py", "boom\n", "straight to main")

    for branch in ("main", "release", "agent/", "agent/x..y", "agent/x.lock"):
        with pytest.raises(ForgeConflict, match="refusing to push"):
            await local_forge.push_branch(repos.clone, branch)

    assert repos.head("main") == before
    assert (
        git("--git-dir", str(repos.origin), "for-each-ref", "--format=%(refname)", cwd=repos.root) == "refs/heads/main"
    )


async def test_localgit_push_refuses_the_branch_of_an_open_pr(local_forge: LocalGitForge, repos: Repos) -> None:
    sha, _ = await propose(local_forge, repos)
    repos.commit("balance.py", "x = 2\n", "more", branch=BRANCH)

    with pytest.raises(ForgeConflict, match="open pull request"):
        await local_forge.push_branch(repos.clone, BRANCH)
    assert repos.head(BRANCH) == sha


async def test_localgit_push_never_forces_a_diverged_branch(local_forge: LocalGitForge, repos: Repos) -> None:
    sha, number = await propose(local_forge, repos)
    await local_forge.close(number)
    git("checkout", "-q", "-B", BRANCH, "main", cwd=repos.clone)
    repos.commit("other.py", "y = 1\n", "unrelated")

    with pytest.raises(ForgeConflict, match="diverged"):
        await local_forge.push_branch(repos.clone, BRANCH)
    assert repos.head(BRANCH) == sha


async def test_localgit_squash_merge_writes_one_commit_onto_base(local_forge: LocalGitForge, repos: Repos) -> None:
    base = repos.head("main")
    sha, number = await propose(local_forge, repos)

    result = await local_forge.merge(number, sha)

    assert result.merged and result.method == "squash" and result.head_sha == sha
    assert repos.head("main") == result.sha
    log = repos.log("main")
    assert len(log) == 2 and log[0] == f"{result.sha} {base}|Add /balance (#{number})"
    assert repos.show("main", "balance.py") == "def balance():\n    return 0"
    pr = await local_forge.get_pr(number)
    assert (pr.state, pr.merge_sha) == ("merged", result.sha)
    assert await local_forge.list_open() == ()


async def test_localgit_merge_commit_has_both_parents(local_forge: LocalGitForge, repos: Repos) -> None:
    base = repos.head("main")
    sha, number = await propose(local_forge, repos)

    result = await local_forge.merge(number, sha, "merge")

    top = repos.log("main")[0]
    assert top == f"{result.sha} {base} {sha}|Merge pull request #{number} from {BRANCH}"


async def test_localgit_rebase_replays_each_commit(local_forge: LocalGitForge, repos: Repos) -> None:
    repos.commit("a.py", "a = 1\n", "first", branch=BRANCH)
    git("commit", "-q", "--allow-empty", "--author=Dev <dev@example.com>", "-m", "empty", cwd=repos.clone)
    repos.commit("b.py", "b = 2\n", "second")
    sha, number = await open_branch_pr(local_forge, repos, "Two files")
    moved = move_main(repos, "c.py", "c = 3\n", "base moved")

    result = await local_forge.merge(number, sha, "rebase")

    subjects = [line.split("|")[1] for line in repos.log("main")]
    assert subjects == ["second", "empty", "first", "base moved", "initial"]
    assert repos.log("main")[2].split("|")[0].split()[1] == moved
    assert result.sha == repos.head("main")
    authors = git("--git-dir", str(repos.origin), "log", "-3", "--format=%an", "main", cwd=repos.root).splitlines()
    assert authors == ["agent-runner", "Dev", "agent-runner"]
    assert [repos.show("main", f) for f in ("a.py", "b.py", "c.py")] == ["a = 1", "b = 2", "c = 3"]


async def test_localgit_stale_sha_is_refused_and_nothing_merges(local_forge: LocalGitForge, repos: Repos) -> None:
    base = repos.head("main")
    sha, number = await propose(local_forge, repos)

    with pytest.raises(ForgeConflict, match="not the approved"):
        await local_forge.merge(number, "0" * 40)

    assert repos.head("main") == base
    assert (await local_forge.get_pr(number)).state == "open"
    assert (await local_forge.merge(number, sha)).merged  # the refusal left no claim behind


async def test_localgit_head_moved_behind_the_forge_is_refused(local_forge: LocalGitForge, repos: Repos) -> None:
    base = repos.head("main")
    sha, number = await propose(local_forge, repos)
    git("checkout", "-q", BRANCH, cwd=repos.clone)
    repos.commit("balance.py", "import os; os.system('curl evil')\n", "sneaky")
    repos.push_direct(BRANCH)

    with pytest.raises(ForgeConflict, match="head moved"):
        await local_forge.merge(number, sha)
    assert repos.head("main") == base


async def test_localgit_conflict_with_moved_base_reports_files(local_forge: LocalGitForge, repos: Repos) -> None:
    repos.commit("app.py", "def greet():\n    return 'hi'\n", "agent edit", branch=BRANCH)
    sha, number = await open_branch_pr(local_forge, repos, "Greet")
    base = move_main(repos, "app.py", "def greet():\n    return 'hey'\n", "owner edit")

    with pytest.raises(MergeConflict, match="conflicting files: app.py") as info:
        await local_forge.merge(number, sha)

    assert info.value.files == ("app.py",)
    assert repos.head("main") == base
    assert (await local_forge.get_pr(number)).state == "open"


async def test_localgit_clean_merge_onto_a_moved_base(local_forge: LocalGitForge, repos: Repos) -> None:
    sha, number = await propose(local_forge, repos)
    moved = move_main(repos, "readme.md", "# bot\n", "docs")

    result = await local_forge.merge(number, sha)

    assert repos.log("main")[0].startswith(f"{result.sha} {moved}|")
    assert repos.show("main", "readme.md") == "# bot"


async def test_localgit_two_concurrent_approvals_merge_once(local_forge: LocalGitForge, repos: Repos) -> None:
    base = repos.head("main")
    sha, number = await propose(local_forge, repos)

    results = await asyncio.gather(*(local_forge.merge(number, sha) for _ in range(4)), return_exceptions=True)

    merged = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, ForgeConflict)]
    assert len(merged) == 1 and len(refused) == 3, results
    assert len(repos.log("main")) == 2 and repos.log("main")[1].startswith(base or "")
    assert (await local_forge.get_pr(number)).merge_sha == merged[0].sha


APPROVE = """
import asyncio, sys, time
from pathlib import Path
from runner.errors import ForgeConflict
from runner.forge.localgit import LocalGitForge

async def main() -> None:
    go = Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.001)
    async with LocalGitForge(sys.argv[1], Path(sys.argv[2])) as forge:
        try:
            result = await forge.merge(int(sys.argv[4]), sys.argv[5])
        except ForgeConflict as exc:
            print("refused", exc)
        else:
            print("merged", result.sha)

asyncio.run(main())
"""


async def test_localgit_two_processes_approving_merge_once(local_forge: LocalGitForge, repos: Repos) -> None:
    sha, number = await propose(local_forge, repos)
    go = repos.root / "go"
    argv = [sys.executable, "-c", APPROVE, str(repos.origin), str(local_forge.db_path), str(go), str(number), sha]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.3)  # both interpreters up and waiting on the same starting line
    go.touch()
    outputs = [p.communicate(timeout=60) for p in procs]

    assert all(p.returncode == 0 for p in procs), outputs
    lines = sorted(out.strip() for out, _ in outputs)
    assert [line.split()[0] for line in lines] == ["merged", "refused"], lines
    assert len(repos.log("main")) == 2
    pr = await local_forge.get_pr(number)
    assert pr.state == "merged" and pr.merge_sha == repos.head("main")


async def test_localgit_closed_and_merged_prs_refuse(local_forge: LocalGitForge, repos: Repos) -> None:
    sha, number = await propose(local_forge, repos)
    closed = await local_forge.close(number)
    assert closed.state == "closed"
    with pytest.raises(ForgeConflict, match="closed"):
        await local_forge.merge(number, sha)

    sha2, number2 = await propose(local_forge, repos, "agent/feature-two", "two.py")
    await local_forge.merge(number2, sha2)
    with pytest.raises(ForgeConflict, match="already merged"):
        await local_forge.merge(number2, sha2)
    with pytest.raises(ForgeConflict, match="already merged"):
        await local_forge.close(number2)


async def test_localgit_head_already_in_base_is_refused(local_forge: LocalGitForge, repos: Repos) -> None:
    sha, number = await propose(local_forge, repos)
    git("push", "-q", "origin", f"{sha}:main", cwd=repos.clone)

    with pytest.raises(ForgeConflict, match="already contained"):
        await local_forge.merge(number, sha)


def _rewind(db: Path, number: int, pending: str) -> None:
    """Make the row look as a supervisor killed mid-merge leaves it: open, stale claim, pending commit."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE forge_pulls SET state = 'open', merge_sha = NULL, claim = 'dead', claimed_at = 0, pending_sha = ?"
            " WHERE number = ?",
            (pending, number),
        )


async def test_localgit_interrupted_merge_that_landed_is_not_repeated(local_forge: LocalGitForge, repos: Repos) -> None:
    sha, number = await propose(local_forge, repos)
    landed = (await local_forge.merge(number, sha)).sha
    _rewind(local_forge.db_path, number, landed)

    with pytest.raises(ForgeConflict, match="already merged"):
        await local_forge.merge(number, sha)

    assert repos.head("main") == landed and len(repos.log("main")) == 2
    assert (await local_forge.get_pr(number)).merge_sha == landed


async def test_localgit_interrupted_merge_that_never_landed_is_retried(
    local_forge: LocalGitForge, repos: Repos
) -> None:
    sha, number = await propose(local_forge, repos)
    _rewind(local_forge.db_path, number, "1" * 40)

    result = await local_forge.merge(number, sha)

    assert repos.head("main") == result.sha


async def test_localgit_live_claim_blocks_a_second_merge_and_close(local_forge: LocalGitForge, repos: Repos) -> None:
    sha, number = await propose(local_forge, repos)
    with sqlite3.connect(local_forge.db_path) as conn:
        conn.execute("UPDATE forge_pulls SET claim = 'other', claimed_at = ? WHERE number = ?", (time.time(), number))

    with pytest.raises(ForgeConflict, match="already being merged"):
        await local_forge.merge(number, sha)
    with pytest.raises(ForgeConflict, match="being merged"):
        await local_forge.close(number)


async def test_localgit_needs_a_bare_repository(repos: Repos, tmp_path: Path) -> None:
    async with LocalGitForge(tmp_path / "nowhere.git", tmp_path / "db.sqlite3") as missing:
        with pytest.raises(ForgeNotFound, match="no git repository"):
            await missing.push_branch(repos.clone, BRANCH)
    async with LocalGitForge(repos.clone, tmp_path / "db.sqlite3") as not_bare:
        with pytest.raises(ForgeError, match="not a bare repository|no git repository"):
            await not_bare.open_pr("t", "b", BRANCH, "main")


async def test_localgit_ignores_hooks_in_the_origin(local_forge: LocalGitForge, repos: Repos) -> None:
    marker = repos.root / "hook-ran"
    hook = repos.origin / "hooks" / "reference-transaction"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    sha, number = await propose(local_forge, repos)
    marker.unlink(missing_ok=True)  # the push's receive-pack is the origin's own business: its hooks may run

    await local_forge.merge(number, sha)

    assert not marker.exists()
