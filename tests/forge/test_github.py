"""GitHubForge end to end: httpx against the fake GitHub in-process, git pushes over real smart HTTP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from runner.errors import ForgeAuthError, ForgeConflict, ForgeError, ForgeNotFound, ForgeRateLimited
from runner.forge import MergeConflict
from runner.forge.github import GitHubForge
from tests.fakes.github import FakeGitHub, GitHttpServer
from tests.forge.repos import TOKEN, Repos, git


def forge_for(fake: FakeGitHub, token: str = TOKEN, **kwargs: object) -> GitHubForge:
    options: dict[str, object] = {"retries": 2, "backoff": 0.01, "timeout": 2.0, **kwargs}
    return GitHubForge(
        fake.repository,
        token,
        api_url="https://api.github.test",
        transport=httpx.ASGITransport(app=fake.app),
        **options,  # type: ignore[arg-type]
    )


async def open_agent_pr(github: GitHubForge, repos: Repos, branch: str = "agent/feature-balance") -> tuple[str, int]:
    sha = repos.commit("balance.py", "def balance():\n    return 0\n", "add balance", branch=branch)
    assert await github.push_branch(repos.clone, branch) == sha
    pr = await github.open_pr("Add /balance", "body", branch, "main")
    return sha, pr.number


async def test_github_open_pr_returns_the_forges_view(github: GitHubForge, repos: Repos) -> None:
    sha = repos.commit("balance.py", "x = 1\n", "add balance", branch="agent/feature-balance")
    pushed = await github.push_branch(repos.clone, "agent/feature-balance")

    pr = await github.open_pr("Add /balance", "the body", "agent/feature-balance", "main")

    assert pushed == sha == repos.head("agent/feature-balance")
    assert pr.number == 1
    assert pr.url == "https://github.com/octo/bot/pull/1"
    assert (pr.title, pr.body, pr.head_branch, pr.base_branch) == (
        "Add /balance",
        "the body",
        "agent/feature-balance",
        "main",
    )
    assert (pr.head_sha, pr.state, pr.merge_sha) == (sha, "open", None)
    assert await github.get_pr(1) == pr


async def test_github_open_pr_reuses_the_open_pr_on_422(
    github: GitHubForge, repos: Repos, fake_github: FakeGitHub
) -> None:
    _, number = await open_agent_pr(github, repos)

    again = await github.open_pr("Another title", "another body", "agent/feature-balance", "main")

    assert again.number == number
    assert again.title == "Add /balance"
    assert len(fake_github.pulls) == 1
    assert [r.method for r in fake_github.requests if r.path.endswith("/pulls")][-2:] == ["POST", "GET"]


async def test_github_open_pr_other_validation_error_raises(github: GitHubForge) -> None:
    with pytest.raises(ForgeError, match="Validation Failed") as info:
        await github.open_pr("title", "body", "agent/feature-missing", "main")
    assert type(info.value) is ForgeError


async def test_github_get_pr_missing_raises_not_found(github: GitHubForge) -> None:
    with pytest.raises(ForgeNotFound, match="404"):
        await github.get_pr(99)


async def test_github_unknown_repository_raises_not_found(fake_github: FakeGitHub) -> None:
    async with GitHubForge(
        "octo/other", TOKEN, api_url="https://api.github.test", transport=httpx.ASGITransport(app=fake_github.app)
    ) as forge:
        with pytest.raises(ForgeNotFound):
            await forge.list_open()


async def test_github_list_open_reads_every_page() -> None:
    fake = FakeGitHub(TOKEN)
    for i in range(1, 131):
        fake.branches[f"agent/feature-{i}"] = f"{i:040x}"
    async with forge_for(fake) as forge:
        for i in range(1, 131):
            await forge.open_pr(f"change {i}", "", f"agent/feature-{i}", "main")
        await forge.close(7)

        prs = await forge.list_open()

    assert [pr.number for pr in prs] == [n for n in range(1, 131) if n != 7]
    assert prs[0].head_sha == f"{1:040x}"
    pages = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/pulls")]
    assert len(pages) == 2


async def test_github_comment_and_list_comments(github: GitHubForge, repos: Repos) -> None:
    _, number = await open_agent_pr(github, repos)

    first = await github.comment(number, "tests passed")
    await github.comment(number, "second")

    assert first.number == number and first.body == "tests passed" and first.author == "agent-runner[bot]"
    assert first.url.endswith(f"/pull/{number}#issuecomment-{first.id}")
    assert [c.body for c in await github.list_comments(number)] == ["tests passed", "second"]


async def test_github_comment_on_missing_pr_raises_not_found(github: GitHubForge) -> None:
    with pytest.raises(ForgeNotFound):
        await github.comment(42, "hello")


async def test_github_close_returns_the_closed_pr(github: GitHubForge, repos: Repos) -> None:
    _, number = await open_agent_pr(github, repos)

    closed = await github.close(number)

    assert closed.state == "closed" and closed.merge_sha is None
    assert await github.list_open() == ()


async def test_github_merge_at_the_approved_sha(github: GitHubForge, repos: Repos, fake_github: FakeGitHub) -> None:
    sha, number = await open_agent_pr(github, repos)

    result = await github.merge(number, sha, "squash")

    assert result.merged and result.number == number and result.head_sha == sha and result.method == "squash"
    assert fake_github.merges == [number]
    pr = await github.get_pr(number)
    assert pr.state == "merged" and pr.merge_sha == result.sha


async def test_github_merge_with_stale_sha_is_refused_and_nothing_merges(
    github: GitHubForge, repos: Repos, fake_github: FakeGitHub
) -> None:
    old, number = await open_agent_pr(github, repos)
    repos.commit("balance.py", "def balance():\n    return 1\n", "sneaky")
    repos.push_direct("agent/feature-balance")

    with pytest.raises(ForgeConflict, match="head moved"):
        await github.merge(number, old)

    assert fake_github.merges == []
    assert not any(r.method == "PUT" for r in fake_github.requests)
    assert (await github.get_pr(number)).state == "open"


@pytest.mark.parametrize(("mergeable", "status", "message", "error", "match"), [
    pytest.param(True, 409, "Head branch was modified. Review and try the merge again.", ForgeConflict,
                 "Head branch was modified", id="409-head-moved-during-merge"),
    pytest.param(False, None, None, MergeConflict, "dirty", id="not-mergeable"),
    # GitHub has not computed mergeability yet: only the PUT can tell.
    pytest.param(None, 405, "Pull Request is not mergeable", MergeConflict, "405", id="405-not-mergeable"),
    pytest.param(True, 405, "Squash merges are not allowed on this repository.", ForgeConflict,
                 "Squash merges are not allowed", id="405-other-reason-is-no-merge-conflict"),
])
async def test_github_merge_refused_by_github_raises_and_merges_nothing(
    github: GitHubForge, repos: Repos, fake_github: FakeGitHub, mergeable: bool | None, status: int | None,
    message: str | None, error: type[ForgeConflict], match: str
) -> None:
    sha, number = await open_agent_pr(github, repos)
    fake_github.set_mergeable(number, mergeable)
    if status is not None:
        fake_github.fail("PUT", f"/pulls/{number}/merge", status, {"message": message})

    with pytest.raises(error, match=match) as info:
        await github.merge(number, sha)
    assert type(info.value) is error  # a MergeConflict only where GitHub said "not mergeable"
    assert fake_github.merges == []


async def test_github_two_concurrent_approvals_merge_once(
    github: GitHubForge, repos: Repos, fake_github: FakeGitHub
) -> None:
    sha, number = await open_agent_pr(github, repos)

    results = await asyncio.gather(github.merge(number, sha), github.merge(number, sha), return_exceptions=True)

    merged = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, ForgeConflict)]
    assert len(merged) == 1 and len(refused) == 1
    assert fake_github.merges == [number]


async def test_github_merge_of_merged_pr_is_refused(github: GitHubForge, repos: Repos) -> None:
    sha, number = await open_agent_pr(github, repos)
    await github.merge(number, sha)

    with pytest.raises(ForgeConflict, match="merged, not open"):
        await github.merge(number, sha)


async def test_github_bad_token_raises_auth_error() -> None:
    fake = FakeGitHub(TOKEN)
    async with forge_for(fake, token="ghp_wrong") as forge:
        with pytest.raises(ForgeAuthError, match="401.*Bad credentials"):
            await forge.list_open()
    assert fake.requests[0].authorization == "Bearer ghp_wrong"


async def test_github_403_names_the_missing_permission(github: GitHubForge, fake_github: FakeGitHub) -> None:
    fake_github.fail(
        "POST",
        "/pulls",
        403,
        {"message": "Resource not accessible by personal access token"},
        headers={"X-Accepted-GitHub-Permissions": "pull_requests=write"},
    )

    with pytest.raises(ForgeAuthError, match="needs permission pull_requests=write"):
        await github.open_pr("t", "b", "agent/feature-x", "main")


async def test_github_403_names_classic_oauth_scopes(github: GitHubForge, fake_github: FakeGitHub) -> None:
    fake_github.fail(
        "GET",
        "/pulls/1",
        403,
        {"message": "Must have admin rights to Repository."},
        headers={"X-OAuth-Scopes": "public_repo", "X-Accepted-OAuth-Scopes": "repo"},
    )

    with pytest.raises(ForgeAuthError, match="accepted OAuth scopes: repo; the token has scopes: public_repo"):
        await github.get_pr(1)


async def test_github_secondary_rate_limit_carries_retry_after(github: GitHubForge, fake_github: FakeGitHub) -> None:
    fake_github.fail(
        "GET",
        "/pulls",
        403,
        {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."},
        headers={"Retry-After": "61"},
    )

    with pytest.raises(ForgeRateLimited) as info:
        await github.list_open()
    assert info.value.retry_after == 61


async def test_github_primary_rate_limit_waits_until_reset(github: GitHubForge, fake_github: FakeGitHub) -> None:
    reset = int(time.time()) + 120
    fake_github.fail(
        "GET",
        "/pulls/1",
        403,
        {"message": "API rate limit exceeded"},
        headers={"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
    )

    with pytest.raises(ForgeRateLimited) as info:
        await github.get_pr(1)
    assert 100 < info.value.retry_after <= 121


async def test_github_429_is_rate_limited(github: GitHubForge, fake_github: FakeGitHub) -> None:
    fake_github.fail("POST", "/issues/1/comments", 429, {"message": "Too Many Requests"}, headers={"Retry-After": "5"})

    with pytest.raises(ForgeRateLimited) as info:
        await github.comment(1, "hi")
    assert info.value.retry_after == 5


async def test_github_5xx_is_retried_with_backoff(github: GitHubForge, fake_github: FakeGitHub) -> None:
    fake_github.fail("GET", "/pulls", 502, {"message": "Server Error"}, times=2)

    assert await github.list_open() == ()
    assert [r.path for r in fake_github.requests].count("/repos/octo/bot/pulls") == 3


async def test_github_5xx_gives_up_after_bounded_retries(github: GitHubForge, fake_github: FakeGitHub) -> None:
    fake_github.fail("GET", "/pulls", 503, {"message": "Service Unavailable"}, times=10)

    with pytest.raises(ForgeError, match="503") as info:
        await github.list_open()
    assert type(info.value) is ForgeError
    assert [r.path for r in fake_github.requests].count("/repos/octo/bot/pulls") == 3


async def test_github_timeout_is_retried(fake_github: FakeGitHub) -> None:
    fake_github.delay("GET", "/pulls", 5.0, times=1)
    async with forge_for(fake_github, timeout=0.2) as forge:
        assert await forge.list_open() == ()
    assert [r.path for r in fake_github.requests].count("/repos/octo/bot/pulls") == 2


async def test_github_timeout_gives_up_after_bounded_retries(fake_github: FakeGitHub) -> None:
    fake_github.delay("GET", "/pulls/3", 5.0, times=10)
    async with forge_for(fake_github, timeout=0.1, retries=1) as forge:
        with pytest.raises(ForgeError, match="timed out after 2 attempts"):
            await forge.get_pr(3)


async def test_github_unexpected_shape_raises_forge_error(github: GitHubForge, fake_github: FakeGitHub) -> None:
    fake_github.fail("GET", "/pulls/1", 200, {"number": 1, "title": "no head"})

    with pytest.raises(ForgeError, match="unexpected shape"):
        await github.get_pr(1)


def test_github_refuses_to_send_the_token_over_plain_http_or_in_urls() -> None:
    with pytest.raises(ForgeError, match="https is required"):
        GitHubForge("octo/bot", TOKEN, api_url="http://github.example.com")
    with pytest.raises(ForgeError, match="must not carry credentials"):
        GitHubForge("octo/bot", TOKEN, git_url=f"https://x:{TOKEN}@github.com/octo/bot.git")
    with pytest.raises(ForgeError, match="owner/name"):
        GitHubForge("octo", TOKEN)
    with pytest.raises(ForgeAuthError):
        GitHubForge("octo/bot", "")


# -- pushes over a real git transport ------------------------------------------------------------------


@pytest.fixture
def git_argv_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put a `git` first on PATH that logs its argv (what `ps` shows) before running the real one."""
    real = git("--exec-path", cwd=tmp_path)
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "argv.log"
    (shim / "git").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{log}"\nexec "{real}/git" "$@"\n')
    (shim / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:/usr/bin:/bin")
    return log


async def test_github_push_sends_the_token_only_in_a_header(
    github: GitHubForge, repos: Repos, git_server: GitHttpServer, git_argv_log: Path
) -> None:
    sha = repos.commit("balance.py", "x = 1\n", "add balance", branch="agent/feature-balance")
    config_before = (repos.clone / ".git" / "config").read_text()

    assert await github.push_branch(repos.clone, "agent/feature-balance") == sha

    assert repos.head("agent/feature-balance") == sha
    assert git_server.requests and all(r.authorized for r in git_server.requests)
    assert any(r.method == "POST" and r.path.endswith("/git-receive-pack") for r in git_server.requests)
    argv = git_argv_log.read_text()
    assert "push" in argv and TOKEN not in argv and "extraHeader" not in argv and "Authorization" not in argv
    assert (repos.clone / ".git" / "config").read_text() == config_before
    assert TOKEN not in (repos.origin / "config").read_text()


async def test_github_push_refuses_the_default_branch_and_foreign_branches(
    github: GitHubForge, repos: Repos, git_server: GitHttpServer
) -> None:
    main_before = repos.head("main")
    repos.commit("evil.py", "boom\n", "straight to main")

    for branch in ("main", "feature/by-a-human", "agent/", "agent/../main"):
        with pytest.raises(ForgeConflict, match="refusing to push"):
            await github.push_branch(repos.clone, branch)

    assert repos.head("main") == main_before
    assert not any(r.path.endswith("git-receive-pack") for r in git_server.requests)


async def test_github_push_refuses_the_branch_of_an_open_pr(github: GitHubForge, repos: Repos) -> None:
    await open_agent_pr(github, repos)
    before = repos.head("agent/feature-balance")
    repos.commit("balance.py", "x = 2\n", "more")

    with pytest.raises(ForgeConflict, match="open pull request"):
        await github.push_branch(repos.clone, "agent/feature-balance")
    assert repos.head("agent/feature-balance") == before


async def test_github_push_with_a_rejected_token_raises_auth_error(
    fake_github: FakeGitHub, repos: Repos, git_server: GitHttpServer
) -> None:
    git_server.expected = "Basic bm90LXRoaXM="  # the server now wants other credentials
    repos.commit("balance.py", "x = 1\n", "add balance", branch="agent/feature-balance")
    async with forge_for(fake_github, git_url=git_server.url("origin.git")) as forge:
        with pytest.raises(ForgeAuthError, match="contents=write") as info:
            await forge.push_branch(repos.clone, "agent/feature-balance")
    assert TOKEN not in str(info.value)
    assert repos.head("agent/feature-balance") is None


async def test_github_push_of_a_diverged_branch_raises_conflict(
    github: GitHubForge, repos: Repos, fake_github: FakeGitHub
) -> None:
    _, number = await open_agent_pr(github, repos)
    await github.close(number)
    git("reset", "-q", "--hard", "main", cwd=repos.clone)
    repos.commit("other.py", "y = 1\n", "different history")

    with pytest.raises(ForgeConflict, match="rejected|fetch first|non-fast-forward"):
        await github.push_branch(repos.clone, "agent/feature-balance")


async def test_github_push_refuses_a_clone_that_rewrites_urls(github: GitHubForge, repos: Repos) -> None:
    git("config", "url.https://evil.example/.insteadOf", "http://127.0.0.1", cwd=repos.clone)
    repos.commit("balance.py", "x = 1\n", "add balance", branch="agent/feature-balance")

    with pytest.raises(ForgeError, match="rewrites URLs"):
        await github.push_branch(repos.clone, "agent/feature-balance")


async def test_github_repr_shows_no_token() -> None:
    async with GitHubForge("octo/bot", TOKEN) as forge:
        assert TOKEN not in repr(forge) and TOKEN not in str(forge)


async def test_github_git_url_follows_the_api_url() -> None:
    async with GitHubForge("octo/bot", TOKEN) as public:
        assert public.git_url == "https://github.com/octo/bot.git"
    async with GitHubForge("octo/bot", TOKEN, api_url="https://ghe.example.com/api/v3/") as enterprise:
        assert enterprise.git_url == "https://ghe.example.com/octo/bot.git"
