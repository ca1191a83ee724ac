"""A follow-up's push onto an open pull request's branch: only as a fast-forward of the head it built on, on both
forges; the forge then reports the new head (so an approval at the old one is refused) and takes a new body."""

from __future__ import annotations

import pytest

from runner.errors import ForgeConflict
from runner.forge.base import Forge
from runner.forge.github import GitHubForge
from runner.forge.localgit import LocalGitForge
from tests.fakes.github import FakeGitHub
from tests.forge.repos import Repos, git

BRANCH = "agent/feature-greet"


async def _opened(forge: Forge, repos: Repos) -> tuple[int, str]:
    first = repos.commit("greet.py", "def greet(n):\n    return f'Hello, {n}'\n", "greet", branch=BRANCH)
    await forge.push_branch(repos.clone, BRANCH)
    pr = await forge.open_pr("agent: greet", "body", BRANCH, "main")
    assert pr.head_sha == first
    return pr.number, first


async def _push_onto_moves_the_head_fast_forward_only(forge: Forge, repos: Repos) -> None:
    number, first = await _opened(forge, repos)
    second = repos.commit("greet.py", "def greet(n):\n    return f'Hello, {n}!'\n", "follow-up")
    with pytest.raises(ForgeConflict, match="not " + "0" * 12):  # built on a head the PR does not have
        await forge.push_onto(repos.clone, number, "0" * 40)
    assert await forge.push_onto(repos.clone, number, first) == second
    assert (await forge.get_pr(number)).head_sha == second == repos.head(BRANCH)
    assert repos.log(BRANCH)[0].split("|")[0] == f"{second} {first}"  # the new commit's parent is the old head
    # A commit that does not descend from the head is refused by git itself: no force-push.
    git("checkout", "-q", "-B", "elsewhere", first, cwd=repos.clone)
    repos.commit("greet.py", "rewritten\n", "diverged")
    with pytest.raises(ForgeConflict):
        await forge.push_onto(repos.clone, number, first)
    with pytest.raises(ForgeConflict):
        await forge.push_onto(repos.clone, number, second)
    assert repos.head(BRANCH) == second
    assert (await forge.edit_body(number, "new body")).body == "new body"
    assert (await forge.get_pr(number)).body == "new body"


async def test_localgit_push_onto_moves_the_head_fast_forward_only(local_forge: LocalGitForge, repos: Repos) -> None:
    await _push_onto_moves_the_head_fast_forward_only(local_forge, repos)


async def test_github_push_onto_moves_the_head_fast_forward_only(github: GitHubForge, fake_github: FakeGitHub,
                                                                 repos: Repos) -> None:
    await _push_onto_moves_the_head_fast_forward_only(github, repos)
    assert fake_github.pulls[1]["body"] == "new body"
