"""A review task end to end: the real CLI in the real sandbox, driven by the scripted model's review scenario,
its findings checked on the trusted side and posted as one GitHub review with line comments on the fake GitHub
(which checks the request as GitHub does), or stored with the pull request on the local forge."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import policy
from runner import reviewer, workspace
from runner.errors import TaskError
from runner.forge.base import Forge
from runner.forge.github import GitHubForge
from runner.forge.localgit import LocalGitForge
from runner.gitops import git_env
from runner.model_proxy import ModelProxy
from runner.models import RunResult, TaskState
from runner.review import MAX_FINDING_CHARS, Finding, Review, pr_request
from runner.sample import create_sample_repo
from runner.sandbox.docker import DockerSandbox
from runner.scripted_model import Scenario, serve_scripted_model
from runner.store import Store
from runner.supervisor import Deps, run_task
from tests.fakes.github import FakeGitHub, GitHttpServer
from tests.forge.repos import TOKEN

SCENARIO = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "review-findings.yaml"
BRANCH = "agent/feature-transfer"
TRANSFER = '"""Transfers between users."""\n\n\ndef transfer(ledger, src, dst, cents):\n' \
           "    ledger[src].append(-cents)\n    ledger[dst].append(cents)\n"
OVERSIZED = "x" * (MAX_FINDING_CHARS * 5)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True,
                          check=True).stdout.strip()


def scenario() -> Scenario:
    """The review scenario plus one finding whose text is far over the cap (too long to keep in the file)."""
    played = Scenario.from_file(SCENARIO)
    extra = json.dumps({"path": "bot/transfer.py", "line": 5, "severity": "minor", "text": OVERSIZED})
    final = played.final_text.replace('"text": "a file the sandbox never held"}',
                                      f'"text": "a file the sandbox never held"}},\n      {extra}')
    assert OVERSIZED in final
    return dataclasses.replace(played, final_text=final)


@pytest.fixture
async def bare(tmp_path: Path) -> Path:
    return await create_sample_repo(tmp_path / "served")


@pytest.fixture
def server(bare: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(bare.parent, TOKEN).running() as running:
        yield running


async def open_transfer_pr(forge: Forge, tmp_path: Path, bare: Path, *, secret: bool = False) -> tuple[int, str]:
    work = tmp_path / "work"
    git("clone", "-q", str(bare), str(work), cwd=tmp_path)
    git("checkout", "-q", "-b", BRANCH, cwd=work)
    (work / "bot" / "transfer.py").write_text(TRANSFER)
    if secret:
        (work / "secrets" / "payment.key").write_text("NEW-SECRET-KEY-MATERIAL\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "add transfer", cwd=work)
    sha = await forge.push_branch(work, BRANCH)
    pr = await forge.open_pr("Add transfer", "body", BRANCH, "main")
    return pr.number, sha


async def review_pr(tmp_path: Path, forge: Forge, repo: str, number: int) -> tuple[RunResult, Store, list[str]]:
    async with serve_scripted_model(scenario()) as model, Store(tmp_path / "state.db") as store, \
            DockerSandbox() as sandbox, ModelProxy(model.base_url, "scripted") as proxy:
        deps = Deps(home=tmp_path / "home", store=store, sandbox=sandbox, proxy=proxy, policy=policy.load_default(),
                    image="agent-runner/sandbox:latest", forge=forge)
        task = await store.create_task(kind="review", prompt=pr_request(number), repo=repo, source="telegram",
                                       requested_by="owner", dry_run=True)
        result = await run_task(deps, task)
        dropped = await store.audit_log(task.id, event="review_findings_dropped")
        posted = await store.audit_log(task.id, event="review_posted")
        prompts = [json.dumps(r.json) for r in model.model.agent_requests]
    assert len(dropped) == 1 and len(posted) == 1
    detail = dropped[0].detail
    assert detail["count"] == 5 and detail["kept"] == 2
    assert [d["reason"] for d in detail["dropped"]] == [
        "path outside the repository", "line 999 is past the end (21 lines)", "unknown severity 'blocker'",
        "no such file in the reviewed tree", f"text of {len(OVERSIZED)} characters is over {MAX_FINDING_CHARS}"]
    return result, store, prompts


def check_result(result: RunResult, head: str) -> None:
    assert result.status is TaskState.DIFF_READY, result.reason
    assert result.review is not None
    review = result.review
    assert (review.pr, review.head_sha, review.verdict) == (result.review.pr, head, "request_changes")
    assert [(f.path, f.line, f.severity) for f in review.findings] == [
        ("bot/transfer.py", 4, "major"), ("bot/ledger.py", 17, "critical")]
    assert review.dropped_count == 5
    assert result.reason.startswith("review: 2 findings, 5 dropped as invalid; posted on PR #")
    assert RunResult.from_json(result.to_json()) == result  # survives the state file


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["own repository", "fork"])
async def test_a_pr_review_becomes_one_github_review_with_line_comments(
        tmp_path: Path, bare: Path, server: GitHttpServer, mode: str) -> None:
    fake = FakeGitHub(TOKEN, "octo/bot", git_dir=bare, fork_root=bare.parent, fork_delay=1)
    # In fork mode the PR's head is in the fork: the review reads it from the repository's refs/pull/N/head.
    fork = {"fork": "agent-runner-bot/bot", "fork_git_url": server.url("bot.git")} if mode == "fork" else {}
    async with GitHubForge("octo/bot", TOKEN, api_url="https://api.github.test",
                           transport=httpx.ASGITransport(app=fake.app), git_url=server.url("sample-bot.git"),
                           **fork) as forge:  # type: ignore[arg-type]
        number, head = await open_transfer_pr(forge, tmp_path, bare)
        result, _, prompts = await review_pr(tmp_path, forge, forge.git_url, number)

    check_result(result, head)
    if mode == "fork":  # the head was never in the repository's branches, only in its refs/pull/N/head
        assert git("--git-dir", str(bare), "for-each-ref", "refs/heads/agent/", cwd=tmp_path) == ""
    # The agent was given the change (its sandbox holds one commit, no history), fenced as data.
    assert any("+def transfer(ledger, src, dst, cents):" in p for p in prompts)
    (sent,) = fake.reviews_sent  # one review, accepted as GitHub accepts it
    assert sent["event"] == "COMMENT" and sent["commit_id"] == head
    assert [(c["path"], c["line"], c["side"]) for c in sent["comments"]] == [("bot/transfer.py", 4, "RIGHT")]
    (review,) = fake.reviews[number]
    (comment,) = fake.review_comments[number]
    assert comment["pull_request_review_id"] == review["id"] and review["state"] == "COMMENTED"
    assert comment["body"].startswith("**major**") and "check balance(src) >= cents" in comment["body"]
    fenced = comment["body"].split("```text\n", 1)[1]
    assert "@octocat" in fenced.split("\n```", 1)[0]  # the agent's mention and image are inside the fence: inert
    assert "`bot/ledger.py:17` (outside the diff)" in review["body"]  # a line no hunk shows: in the body
    assert "5 findings dropped as invalid" in review["body"]
    everything = json.dumps(fake.reviews_sent)
    for never in ("etc/passwd", "blocker", "payment.key", OVERSIZED[:100]):
        assert never not in everything
    assert result.review is not None and result.review.posted.endswith(review["html_url"])


@pytest.mark.docker
async def test_a_pr_review_on_the_local_forge_is_stored_with_the_pr(tmp_path: Path, bare: Path) -> None:
    async with LocalGitForge(bare, tmp_path / "forge.sqlite3") as forge:
        number, head = await open_transfer_pr(forge, tmp_path, bare)
        result, _, _ = await review_pr(tmp_path, forge, str(bare), number)
        (stored,) = await forge.list_reviews(number)

    check_result(result, head)
    assert stored.commit_sha == head
    assert [(c.path, c.line) for c in stored.comments] == [("bot/transfer.py", 4)]
    assert "bot/ledger.py:17" in stored.body


async def test_a_pr_review_is_given_the_prs_diff_without_read_protected_files(tmp_path: Path, bare: Path) -> None:
    async with LocalGitForge(bare, tmp_path / "forge.sqlite3") as forge:
        number, head = await open_transfer_pr(forge, tmp_path, bare, secret=True)
        git("--git-dir", str(bare), "update-ref", "refs/heads/main", git(  # main moves on after the branch
            "--git-dir", str(bare), "commit-tree", "main^{tree}", "-p", "main", "-m", "later", cwd=tmp_path),
            cwd=tmp_path)
        planned = await reviewer.plan(forge, pr_request(number))
        active = policy.load_default()
        prepared = await workspace.prepare(tmp_path / "home", "t-1", str(bare), active, base_ref=planned.head_ref)
        base, diff = await reviewer.change(prepared, active, planned)

    assert (planned.pr, planned.head_ref, prepared.base_sha) == (number, head, head)
    assert base == git("--git-dir", str(bare), "rev-parse", "main^", cwd=tmp_path)  # the merge base, not main
    assert "+def transfer(ledger, src, dst, cents):" in diff
    assert "payment.key" not in diff and "NEW-SECRET" not in diff  # kept from the agent as from its workspace
    assert "+++ b/" in diff and diff.count("diff --git") == 1


async def test_a_review_of_a_pr_needs_a_forge_and_a_ref_review_needs_none() -> None:
    with pytest.raises(TaskError, match="needs a forge"):
        await reviewer.plan(None, pr_request(4))
    planned = await reviewer.plan(None, "Review the change feature/x and report findings; change nothing.")
    assert (planned.pr, planned.head_ref) == (None, "feature/x")
    assert (await reviewer.plan(None, "Review the change HEAD and report findings")).head_ref is None


async def test_a_review_whose_line_comments_github_refuses_is_posted_whole_in_its_body(
        tmp_path: Path, bare: Path, server: GitHttpServer) -> None:
    fake = FakeGitHub(TOKEN, "octo/bot", git_dir=bare)
    async with GitHubForge("octo/bot", TOKEN, api_url="https://api.github.test",
                           transport=httpx.ASGITransport(app=fake.app), git_url=server.url("sample-bot.git"),
                           retries=0) as forge:
        number, head = await open_transfer_pr(forge, tmp_path, bare)
        fake.fail("POST", f"/pulls/{number}/reviews", 422, {"message": "Unprocessable Entity",
                                                            "errors": ["Line could not be resolved"]})
        checked = Review(summary="s", findings=(Finding("bot/transfer.py", 4, "major", "on the diff"),
                                                Finding("bot/ledger.py", 17, "critical", "off it")),
                         head_sha=head, pr=number)
        diff = git("--git-dir", str(bare), "diff", f"main...{head}", cwd=tmp_path)
        posted = await reviewer.post(forge, checked, diff)

    posts = [r for r in fake.requests if r.method == "POST" and r.path.endswith(f"/pulls/{number}/reviews")]
    (accepted,) = fake.reviews_sent  # the first, with its line comment, was answered 422
    assert len(posts) == 2 and accepted["comments"] == []
    (review,) = fake.reviews[number]
    assert "`bot/transfer.py:4`\n" in review["body"] and "`bot/ledger.py:17`\n" in review["body"]
    assert "line comments were refused" in posted.posted and posted.posted.endswith(review["html_url"])


async def test_a_ref_review_is_given_the_branch_against_the_default_branch_or_a_commit_against_its_parent(
        tmp_path: Path, bare: Path) -> None:
    async with LocalGitForge(bare, tmp_path / "forge.sqlite3") as forge:
        _, head = await open_transfer_pr(forge, tmp_path, bare)
    active = policy.load_default()
    on_branch = await reviewer.plan(None, f"Review the change {BRANCH} and report findings; change nothing.")
    prepared = await workspace.prepare(tmp_path / "home", "t-1", str(bare), active, base_ref=on_branch.head_ref)
    base, diff = await reviewer.change(prepared, active, on_branch)
    main = git("--git-dir", str(bare), "rev-parse", "main", cwd=tmp_path)
    assert (prepared.base_sha, base) == (head, main) and "+def transfer(" in diff

    on_main = await reviewer.plan(None, "Review the change HEAD and report findings; change nothing.")
    prepared = await workspace.prepare(tmp_path / "home", "t-2", str(bare), active, base_ref=on_main.head_ref)
    base, diff = await reviewer.change(prepared, active, on_main)
    assert prepared.base_sha == main and base == reviewer.EMPTY_TREE  # the first commit: against nothing
    assert "+++ b/bot/ledger.py" in diff and "payment.key" not in diff and "dot-env" not in diff
