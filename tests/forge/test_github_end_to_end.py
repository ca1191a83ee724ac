"""GitHub with a private repository, end to end: the supervisor's own git (mirror fetches, a rollback's revert
push) authenticates with the forge's token, scoped to the repository's URL, and never stores it. In fork mode
(the recommended set-up) the same runs push agent branches to the fork and open the pull request from it.

The repository is served by `git http-backend` behind a server that refuses any request without GitHub's
Basic `x-access-token` header; the REST API is the fake GitHub, which lands merges in that same repository.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

import policy
from runner.deploy.command import CommandDeployer
from runner.forge.github import GitHubForge
from runner.gitops import git_env
from runner.model_proxy import ModelProxy
from runner.models import TaskState
from runner.sample import create_sample_repo
from runner.sandbox.docker import DockerSandbox
from runner.scripted_model import Scenario, serve_scripted_model
from runner.service.releases import Releases, ReleaseStore
from runner.service.watch import WatchConfig
from runner.store import Store
from runner.supervisor import Deps, run_task
from runner.workspace import mirror_path, update_mirror
from tests.fakes.github import FakeGitHub, GitHttpServer
from tests.forge.repos import TOKEN

FIX_SCENARIO = Path(__file__).parents[2] / "runner" / "data" / "scenarios" / "fix-balance.yaml"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
async def bare(tmp_path: Path) -> Path:
    return await create_sample_repo(tmp_path / "served")  # served/sample-bot.git


@pytest.fixture
def server(bare: Path) -> Iterator[GitHttpServer]:
    with GitHttpServer(bare.parent, TOKEN).running() as running:
        yield running


@pytest.fixture(params=["own repository", "fork"])
async def github(request: pytest.FixtureRequest, bare: Path,
                 server: GitHttpServer) -> AsyncIterator[tuple[GitHubForge, FakeGitHub]]:
    fake = FakeGitHub(TOKEN, "octo/bot", git_dir=bare, fork_root=bare.parent, fork_delay=1)
    fork = {"fork": "agent-runner-bot/bot", "fork_git_url": server.url("bot.git")} if request.param == "fork" else {}
    forge = GitHubForge("octo/bot", TOKEN, api_url="https://api.github.test",
                        transport=httpx.ASGITransport(app=fake.app), git_url=server.url("sample-bot.git"),
                        **fork)  # type: ignore[arg-type]
    async with forge:
        yield forge, fake


def agent_branches(bare: Path, repository: str | None = None) -> list[str]:
    """The agent/* branches of the served bare repository `bare` (or of the fork beside it)."""
    where = bare if repository is None else bare.parent / "bot.git"
    return git("--git-dir", str(where), "for-each-ref", "--format=%(refname:strip=2)", "refs/heads/agent/",
               cwd=bare.parent).split()


@pytest.fixture
async def own_repository(bare: Path, server: GitHttpServer) -> AsyncIterator[tuple[GitHubForge, FakeGitHub]]:
    fake = FakeGitHub(TOKEN, "octo/bot", git_dir=bare)
    forge = GitHubForge("octo/bot", TOKEN, api_url="https://api.github.test",
                        transport=httpx.ASGITransport(app=fake.app), git_url=server.url("sample-bot.git"))
    async with forge:
        yield forge, fake


async def test_a_private_repository_is_mirrored_with_the_forge_token_and_it_is_stored_nowhere(
        tmp_path: Path, own_repository: tuple[GitHubForge, FakeGitHub], server: GitHttpServer) -> None:
    forge, _ = own_repository
    url = forge.git_url
    with pytest.raises(Exception, match="401|Authentication|could not read"):
        await update_mirror(tmp_path / "anonymous", url)  # what every task did before: no credential
    mirror = await update_mirror(tmp_path / "home", url, forge.git_auth())
    await update_mirror(tmp_path / "home", url, forge.git_auth())  # and the fetch of the next task
    assert mirror == mirror_path(tmp_path / "home", url) and len(git("--git-dir", str(mirror), "rev-parse", "main",
                                                                     cwd=tmp_path)) == 40
    stored = "\n".join(p.read_text(errors="replace") for p in mirror.rglob("*") if p.is_file() and "objects" not in
                       p.parts)
    assert TOKEN not in stored and "Authorization" not in stored and "extraHeader" not in stored.lower()
    authorized = [r for r in server.requests if r.authorized]
    assert authorized and all(r.path.startswith("/sample-bot.git/") for r in server.requests)


async def test_a_github_release_rolled_back_reverts_the_merge_on_the_private_repository(
        tmp_path: Path, bare: Path, github: tuple[GitHubForge, FakeGitHub]) -> None:
    forge, fake = github
    work = tmp_path / "work"
    git("clone", "-q", str(bare), str(work), cwd=tmp_path)
    git("checkout", "-q", "-b", "agent/broken", cwd=work)
    (work / "bot" / "broken.py").write_text("raise SystemExit\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "broken", cwd=work)
    sha = await forge.push_branch(work, "agent/broken")
    pr = await forge.open_pr("Break it", "body", "agent/broken", "main")
    assert agent_branches(bare) == ([] if forge.fork else ["agent/broken"])
    before = git("--git-dir", str(bare), "rev-parse", "main", cwd=tmp_path)
    deployed = tmp_path / "deployed"
    # Health is the deploy command's exit status: the new version fails, the rollback succeeds.
    deployer = CommandDeployer(f'echo "$AGENT_RUNNER_DEPLOY_SHA $AGENT_RUNNER_DEPLOY_REPO" > {deployed}; '
                               f'test "$AGENT_RUNNER_DEPLOY_ACTION" = rollback')
    async with Store(tmp_path / "state.db") as store, deployer:
        rows = ReleaseStore(store.path)
        releases = Releases(rows, store=store, forge=forge, deployer=deployer, repo=forge.git_url,
                            home=tmp_path / "home", watch=WatchConfig(seconds=0))
        try:
            release = await releases.approve(pr.number, sha, actor="owner", task=None)
            await releases.wait_idle()
            done = await rows.get(release.id)
        finally:
            await releases.aclose()
            await rows.aclose()
    assert done.state == "rolled_back", done.detail
    assert fake.merges == [pr.number] and done.previous_sha == before
    main = git("--git-dir", str(bare), "log", "--format=%H %s", "main", cwd=tmp_path).splitlines()
    assert main[0].split()[0] == done.revert_sha and main[0].split()[1] == "Revert"  # pushed with the token
    assert main[1].split()[0] == done.merge_sha
    running, source = deployed.read_text().split()
    assert running == before and source == str(mirror_path(tmp_path / "home", forge.git_url))  # a local path


@pytest.mark.docker
async def test_a_task_on_a_private_github_repository_becomes_a_pull_request(
        tmp_path: Path, bare: Path, github: tuple[GitHubForge, FakeGitHub]) -> None:
    forge, fake = github
    async with serve_scripted_model(Scenario.from_file(FIX_SCENARIO)) as model, \
            Store(tmp_path / "state.db") as store, DockerSandbox() as sandbox, \
            ModelProxy(model.base_url, "scripted") as proxy:
        deps = Deps(home=tmp_path / "home", store=store, sandbox=sandbox, proxy=proxy, policy=policy.load_default(),
                    image="agent-runner/sandbox:latest", forge=forge)
        task = await store.create_task(kind="fix", prompt="average_spend crashes for users without spending; fix it",
                                       repo=forge.git_url, source="api", requested_by="owner", dry_run=False)
        result = await run_task(deps, task)
    assert result.status is TaskState.PROPOSED, result.reason
    assert result.pr is not None and result.pr.number in fake.pulls
    assert tuple(result.files_changed) == ("bot/ledger.py", "tests/test_ledger.py")  # the fix and its regression test
    pr = await forge.get_pr(result.pr.number)
    if forge.fork:  # the bot's repository never held the agent's code before approval: its CI had nothing to run
        assert pr.head_repo == forge.fork and agent_branches(bare) == []
        assert agent_branches(bare, forge.fork) == [result.pr.branch]
        assert fake.pull_requests_sent[-1]["head"] == f"agent-runner-bot:{result.pr.branch}"
    else:
        assert pr.head_repo == "octo/bot" and agent_branches(bare) == [result.pr.branch]
