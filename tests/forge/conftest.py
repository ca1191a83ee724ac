"""Fixtures for the forge tests: a real bare origin, a trusted clone, the fake GitHub and its git server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from runner.forge.github import GitHubForge
from runner.forge.localgit import LocalGitForge
from tests.fakes.github import FakeGitHub, GitHttpServer
from tests.forge.repos import TOKEN, Repos, make_repos


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    return make_repos(tmp_path)


@pytest.fixture
async def local_forge(repos: Repos, tmp_path: Path) -> AsyncIterator[LocalGitForge]:
    async with LocalGitForge(repos.origin, tmp_path / "home" / "forge.sqlite3") as forge:
        yield forge


@pytest.fixture
def fake_github(repos: Repos) -> Iterator[FakeGitHub]:
    fake = FakeGitHub(TOKEN, "octo/bot", git_dir=repos.origin)
    yield fake
    # Every request the forge made carried the bearer token, and nothing else did.
    assert fake.requests, "the forge made no request"
    bad = [r for r in fake.requests if not r.authorized]
    assert not bad, f"requests without the right Authorization header: {bad}"


@pytest.fixture
def git_server(repos: Repos) -> Iterator[GitHttpServer]:
    with GitHttpServer(repos.root, TOKEN).running() as server:
        yield server


@pytest.fixture
async def github(fake_github: FakeGitHub, git_server: GitHttpServer) -> AsyncIterator[GitHubForge]:
    forge = GitHubForge(
        "octo/bot",
        TOKEN,
        api_url="https://api.github.test",
        transport=httpx.ASGITransport(app=fake_github.app),
        git_url=git_server.url("origin.git"),
        retries=2,
        backoff=0.01,
        timeout=2.0,
    )
    async with forge:
        yield forge
