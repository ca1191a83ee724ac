"""Reviews on both forges: one review with line comments, all or nothing, on lines the diff shows.

The GitHub side goes through the real httpx client to the fake GitHub, which checks a review as GitHub does
(commit, event, body, each comment's path and line against the pull request's diff read from its git).
"""

from __future__ import annotations

import pytest

from runner.errors import ForgeConflict, ForgeError, ForgeNotFound
from runner.forge import ReviewComment
from runner.forge.github import GitHubForge
from runner.forge.localgit import LocalGitForge
from tests.fakes.github import FakeGitHub
from tests.forge.repos import Repos, git

BRANCH = "agent/feature-balance"


async def open_pr(forge: GitHubForge | LocalGitForge, repos: Repos) -> tuple[str, int]:
    sha = repos.commit("balance.py", "def balance():\n    return 0\n", "add balance", branch=BRANCH)
    await forge.push_branch(repos.clone, BRANCH)
    pr = await forge.open_pr("Add /balance", "body", BRANCH, "main")
    git("checkout", "-q", "main", cwd=repos.clone)
    return sha, pr.number


async def test_github_review_posts_one_review_with_its_line_comments(
    github: GitHubForge, repos: Repos, fake_github: FakeGitHub
) -> None:
    sha, number = await open_pr(github, repos)

    posted = await github.post_review(number, commit_sha=sha, body="1 finding",
                                      comments=[ReviewComment("balance.py", 2, "**major** returns 0")])

    assert posted.url.endswith(f"/pull/{number}#pullrequestreview-{posted.id}")
    assert (posted.commit_sha, posted.state, posted.body) == (sha, "COMMENTED", "1 finding")
    (sent,) = fake_github.reviews_sent
    assert sent == {"commit_id": sha, "body": "1 finding", "event": "COMMENT",
                    "comments": [{"path": "balance.py", "line": 2, "side": "RIGHT", "body": "**major** returns 0"}]}
    (listed,) = await github.list_reviews(number)
    assert listed.comments == (ReviewComment("balance.py", 2, "**major** returns 0"),)
    assert listed.id == posted.id


@pytest.mark.parametrize(("path", "line", "why"), [
    ("app.py", 1, "Path could not be resolved"),  # a file the pull request does not change
    ("balance.py", 3, "must be part of the diff"),  # past the hunk
])
async def test_github_review_comment_off_the_diff_is_422_and_nothing_is_posted(
    github: GitHubForge, repos: Repos, fake_github: FakeGitHub, path: str, line: int, why: str
) -> None:
    sha, number = await open_pr(github, repos)

    with pytest.raises(ForgeError, match=f"422.*{why}"):
        await github.post_review(number, commit_sha=sha, body="x", comments=[
            ReviewComment("balance.py", 1, "on the diff"), ReviewComment(path, line, "off it")])

    assert fake_github.reviews == {} and fake_github.review_comments == {}


async def test_github_review_of_an_old_head_is_refused(github: GitHubForge, repos: Repos) -> None:
    _, number = await open_pr(github, repos)
    with pytest.raises(ForgeError, match="422"):
        await github.post_review(number, commit_sha="0" * 40, body="x")


async def test_github_review_of_a_missing_pr_is_not_found(github: GitHubForge) -> None:
    with pytest.raises(ForgeNotFound):
        await github.post_review(99, commit_sha="0" * 40, body="x")


async def test_localgit_review_is_stored_with_the_pr_and_listed(local_forge: LocalGitForge, repos: Repos) -> None:
    sha, number = await open_pr(local_forge, repos)

    posted = await local_forge.post_review(number, commit_sha=sha, body="2 findings", comments=[
        ReviewComment("balance.py", 1, "one"), ReviewComment("balance.py", 2, "two")])

    assert await local_forge.list_reviews(number) == (posted,)
    assert posted.comments[1] == ReviewComment("balance.py", 2, "two")


@pytest.mark.parametrize(("path", "line"), [("app.py", 1), ("balance.py", 3)])
async def test_localgit_review_comment_off_the_diff_is_refused_whole(
    local_forge: LocalGitForge, repos: Repos, path: str, line: int
) -> None:
    sha, number = await open_pr(local_forge, repos)
    with pytest.raises(ForgeError, match="not part of the diff"):
        await local_forge.post_review(number, commit_sha=sha, body="x", comments=[
            ReviewComment("balance.py", 1, "fine"), ReviewComment(path, line, "off")])
    assert await local_forge.list_reviews(number) == ()


async def test_localgit_review_of_an_old_head_is_a_conflict(local_forge: LocalGitForge, repos: Repos) -> None:
    _, number = await open_pr(local_forge, repos)
    with pytest.raises(ForgeConflict, match="nothing posted"):
        await local_forge.post_review(number, commit_sha="0" * 40, body="x")
