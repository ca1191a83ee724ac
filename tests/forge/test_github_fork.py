"""GitHubForge in fork mode: agent branches go to a fork, pull requests come from it, merges land its commit.

The bot's repository and the fork are real bare repositories behind `git http-backend` (one server, each at its
own URL); the REST side is the fake GitHub, which fetches a fork pull request's head into the repository's
refs/pull/N/head and merges that commit, as GitHub does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from runner.config import Settings
from runner.errors import ConfigError, ForgeAuthError, ForgeConflict, ForgeError
from runner.forge import create_forge
from runner.forge.github import GitHubForge
from runner.gitops import run_git
from tests.fakes.github import FakeGitHub, GitHttpServer
from tests.forge.repos import TOKEN, Repos, git

FORK = "agent-runner-bot/bot"
BRANCH = "agent/feature-balance"


def fork_forge(fake: FakeGitHub, server: GitHttpServer, **kwargs: object) -> GitHubForge:
    options: dict[str, object] = {"retries": 1, "backoff": 0.01, "timeout": 2.0, **kwargs}
    return GitHubForge("octo/bot", TOKEN, api_url="https://api.github.test",
                       transport=httpx.ASGITransport(app=fake.app), git_url=server.url("origin.git"),
                       fork=FORK, fork_git_url=server.url("bot.git"), **options)  # type: ignore[arg-type]


@pytest.fixture
def fork_dir(repos: Repos) -> Path:
    """The fork as GitHub makes it: a copy of the repository's default branch."""
    path = repos.root / "bot.git"
    git("clone", "-q", "--bare", "--single-branch", "--branch", "main", str(repos.origin), str(path), cwd=repos.root)
    return path


@pytest.fixture
async def forked(fake_github: FakeGitHub, git_server: GitHttpServer, fork_dir: Path) -> AsyncIterator[GitHubForge]:
    fake_github.add_fork(FORK, fork_dir)
    async with fork_forge(fake_github, git_server) as forge:
        yield forge


def fork_head(fork_dir: Path, branch: str) -> str | None:
    out = git("--git-dir", str(fork_dir), "for-each-ref", "--format=%(objectname)", f"refs/heads/{branch}",
              cwd=fork_dir)
    return out or None


async def open_fork_pr(forge: GitHubForge, repos: Repos) -> tuple[str, int]:
    sha = repos.commit("balance.py", "def balance():\n    return 0\n", "add balance", branch=BRANCH)
    assert await forge.push_branch(repos.clone, BRANCH) == sha
    pr = await forge.open_pr("Add /balance", "body", BRANCH, "main")
    return sha, pr.number


async def test_fork_push_goes_to_the_fork_and_the_pr_comes_from_it(
        forked: GitHubForge, fake_github: FakeGitHub, repos: Repos, fork_dir: Path, git_server: GitHttpServer) -> None:
    sha, number = await open_fork_pr(forked, repos)

    assert fork_head(fork_dir, BRANCH) == sha
    assert repos.head(BRANCH) is None  # nothing of the agent's reached the bot's repository: no push, no CI
    assert not any(r.path.startswith("/origin.git/git-receive-pack") for r in git_server.requests)
    assert fake_github.pull_requests_sent[-1] == {"title": "Add /balance", "body": "body", "base": "main",
                                                  "head": f"agent-runner-bot:{BRANCH}", "head_repo": FORK,
                                                  "maintainer_can_modify": False}
    pr = await forked.get_pr(number)
    assert (pr.head_branch, pr.head_sha, pr.head_repo, pr.state) == (BRANCH, sha, FORK, "open")
    # what the supervisor's branch-name check reads: open pull requests' branches, whichever repository holds them
    assert [p.head_branch for p in await forked.list_open()] == [BRANCH]


async def test_fork_pr_merge_lands_the_forks_commit_on_the_base_and_drops_the_branch(
        forked: GitHubForge, fake_github: FakeGitHub, repos: Repos, fork_dir: Path) -> None:
    sha, number = await open_fork_pr(forked, repos)
    before = repos.head("main")

    result = await forked.merge(number, sha, "merge")

    assert result.merged and fake_github.merges == [number]
    assert repos.show("main", "balance.py") == "def balance():\n    return 0"
    assert repos.log("main")[0].split("|")[0].split() == [result.sha, before, sha]  # the fork's commit, merged
    assert (await forked.get_pr(number)).state == "merged"
    assert fork_head(fork_dir, BRANCH) is None  # a later task may use the name again


async def test_fork_merge_refuses_a_head_moved_on_the_fork(
        forked: GitHubForge, fake_github: FakeGitHub, repos: Repos, fork_dir: Path) -> None:
    old, number = await open_fork_pr(forked, repos)
    repos.commit("balance.py", "def balance():\n    return 1\n", "sneaky")
    git("push", "-q", "--force", str(fork_dir), f"HEAD:refs/heads/{BRANCH}", cwd=repos.clone)

    with pytest.raises(ForgeConflict, match="head moved"):
        await forked.merge(number, old)
    assert fake_github.merges == [] and repos.show("main", "app.py").startswith("def greet")


async def test_fork_reject_deletes_the_branch_so_the_name_can_be_pushed_again(
        forked: GitHubForge, repos: Repos, fork_dir: Path) -> None:
    _, number = await open_fork_pr(forked, repos)

    closed = await forked.close(number)

    assert closed.state == "closed" and fork_head(fork_dir, BRANCH) is None
    git("checkout", "-q", "-B", BRANCH, "main", cwd=repos.clone)
    again = repos.commit("other.py", "y = 1\n", "a different change")  # not a fast-forward of the rejected one
    assert await forked.push_branch(repos.clone, BRANCH) == again
    assert (await forked.open_pr("Again", "b", BRANCH, "main")).number == number + 1


async def test_fork_open_pr_reuses_the_open_fork_pr(forked: GitHubForge, fake_github: FakeGitHub,
                                                     repos: Repos) -> None:
    _, number = await open_fork_pr(forked, repos)

    assert (await forked.open_pr("Another title", "b", BRANCH, "main")).number == number
    assert len(fake_github.pulls) == 1


async def test_fork_is_created_and_waited_for_when_missing(
        fake_github: FakeGitHub, git_server: GitHttpServer, repos: Repos) -> None:
    fake_github.fork_root, fake_github.fork_delay = repos.root, 3
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)

    async with fork_forge(fake_github, git_server, sleep=sleep, clock=lambda: sum(naps)) as forge:
        sha, number = await open_fork_pr(forge, repos)

    assert fake_github.forks_created == [{"name": "bot", "default_branch_only": True}]  # the token's own account
    assert naps == [0.5, 1.0, 2.0]  # until the new fork's refs could be read
    assert fork_head(repos.root / "bot.git", BRANCH) == sha
    assert fake_github.pulls[number]["head"]["repo"]["full_name"] == FORK


async def test_fork_into_an_organization_names_it(fake_github: FakeGitHub, git_server: GitHttpServer,
                                                  repos: Repos) -> None:
    fake_github.fork_root, fake_github.fork_delay = repos.root, 0
    async with GitHubForge("octo/bot", TOKEN, api_url="https://api.github.test",
                           transport=httpx.ASGITransport(app=fake_github.app), fork="octo-agents/bot") as forge:
        assert await forge.prepare_fork() == "octo-agents/bot"
    assert fake_github.forks_created == [{"name": "bot", "default_branch_only": True, "organization": "octo-agents"}]


async def test_fork_that_github_names_otherwise_is_refused(fake_github: FakeGitHub, git_server: GitHttpServer,
                                                           repos: Repos) -> None:
    fake_github.add_fork("agent-runner-bot/bot-old", repos.root / "bot.git")  # the account's existing fork
    async with fork_forge(fake_github, git_server) as forge:
        with pytest.raises(ForgeError, match="set GITHUB_FORK=agent-runner-bot/bot-old"):
            await forge.prepare_fork()


async def test_fork_not_ready_in_time_raises(fake_github: FakeGitHub, git_server: GitHttpServer,
                                             repos: Repos) -> None:
    fake_github.fork_root, fake_github.fork_delay = repos.root, 1000
    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)

    async with fork_forge(fake_github, git_server, sleep=sleep, clock=lambda: sum(naps), fork_wait=60) as forge:
        with pytest.raises(ForgeError, match="not ready after 60s"):
            await forge.prepare_fork()
    assert sum(naps) <= 60


@pytest.mark.parametrize(("parent", "push", "error", "needle"), [
    ("", True, ForgeError, "is not a fork of octo/bot"),
    ("someone/else", True, ForgeError, "is not a fork of octo/bot"),
    (None, False, ForgeAuthError, "cannot push to the fork"),
])
async def test_fork_that_cannot_serve_is_refused_before_any_push(
        fake_github: FakeGitHub, git_server: GitHttpServer, repos: Repos, fork_dir: Path, parent: str | None,
        push: bool, error: type[Exception], needle: str) -> None:
    fake_github.add_fork(FORK, fork_dir, parent=parent, push=push)
    repos.commit("balance.py", "x = 1\n", "add balance", branch=BRANCH)
    async with fork_forge(fake_github, git_server) as forge:
        with pytest.raises(error, match=needle):
            await forge.push_branch(repos.clone, BRANCH)
    assert fork_head(fork_dir, BRANCH) is None


async def test_fork_git_auth_scopes_the_header_to_each_url(forked: GitHubForge, repos: Repos,
                                                           git_server: GitHttpServer) -> None:
    assert await forked.prepare_fork() == FORK
    auth = forked.git_auth()
    assert auth.url == git_server.url("origin.git")
    assert auth.env["GIT_CONFIG_COUNT"] == "2"
    assert {auth.env["GIT_CONFIG_KEY_0"], auth.env["GIT_CONFIG_KEY_1"]} == {
        f"http.{git_server.url('origin.git')}.extraHeader", f"http.{git_server.url('bot.git')}.extraHeader"}
    # the scope is what makes git send it: with only the repository's, the fork refuses the push
    upstream_only = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": auth.env["GIT_CONFIG_KEY_0"],
                     "GIT_CONFIG_VALUE_0": auth.env["GIT_CONFIG_VALUE_0"]}
    refused = await run_git(["push", "--porcelain", git_server.url("bot.git"), "HEAD:refs/heads/agent/x"],
                            cwd=repos.clone, env=upstream_only, secrets=auth.secrets, check=False)
    assert refused.returncode != 0 and TOKEN not in refused.stderr


def test_fork_must_be_another_repository() -> None:
    with pytest.raises(ForgeError, match="is the repository itself"):
        GitHubForge("octo/bot", TOKEN, fork="Octo/Bot")
    with pytest.raises(ForgeError, match="owner/name"):
        GitHubForge("octo/bot", TOKEN, fork="bot")


async def test_github_fork_setting_turns_fork_mode_on(tmp_path: Path) -> None:
    env = {"AGENT_RUNNER_HOME": str(tmp_path), "GITHUB_TOKEN": TOKEN, "GITHUB_REPOSITORY": "octo/bot"}
    async with create_forge(Settings.from_env({**env, "GITHUB_FORK": FORK})) as forge:
        assert isinstance(forge, GitHubForge) and forge.fork == FORK
        assert forge.fork_git_url == f"https://github.com/{FORK}.git" and forge.push_repository == FORK
    async with create_forge(Settings.from_env(env)) as plain:
        assert isinstance(plain, GitHubForge) and plain.fork is None and plain.push_repository == "octo/bot"
    for bad, needle in (("bot", "owner/name"), ("octo/bot", "not GITHUB_REPOSITORY itself"), ("a/", "owner/name")):
        with pytest.raises(ConfigError, match=needle):
            Settings.from_env({**env, "GITHUB_FORK": bad})
    with pytest.raises(ConfigError, match="GITHUB_FORK is set but GITHUB_TOKEN"):
        Settings.from_env({"AGENT_RUNNER_HOME": str(tmp_path), "GITHUB_FORK": FORK})
