"""The forge token appears in no log line, exception text, PR body, comment, argv or `.git/config`."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from runner.errors import ForgeError
from runner.forge.github import GitHubForge
from runner.gitops import secret_forms
from tests.fakes.github import FakeGitHub, GitHttpServer
from tests.forge.repos import TOKEN, Repos, git

BRANCH = "agent/feature-balance"


def leaks(text: str) -> list[str]:
    return [form for form in secret_forms(TOKEN) if form in text]


async def test_secret_never_leaks_through_any_forge_call(
    github: GitHubForge,
    fake_github: FakeGitHub,
    git_server: GitHttpServer,
    repos: Repos,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    argv_log = tmp_path / "argv.log"
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "git").write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{argv_log}"\nexec "{git("--exec-path", cwd=tmp_path)}/git" "$@"\n'
    )
    (shim / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:/usr/bin:/bin")
    errors: list[BaseException] = []

    async def attempt(call: Callable[[], Awaitable[object]]) -> None:
        try:
            await call()
        except ForgeError as exc:
            errors.append(exc)

    # The happy path: every call of the protocol.
    sha = repos.commit("balance.py", "x = 1\n", "add balance", branch=BRANCH)
    await github.push_branch(repos.clone, BRANCH)
    pr = await github.open_pr("Add /balance", "body", BRANCH, "main")
    await github.open_pr("again", "body", BRANCH, "main")  # 422 → reuse
    await github.get_pr(pr.number)
    await github.list_open()
    await github.comment(pr.number, "a comment")
    await github.list_comments(pr.number)

    # Every error path, each with the token in play.
    await attempt(lambda: github.push_branch(repos.clone, "main"))
    await attempt(lambda: github.push_branch(repos.clone, BRANCH))
    await attempt(lambda: github.merge(pr.number, "0" * 40))
    await attempt(lambda: github.get_pr(404))
    fake_github.fail("GET", "/pulls/1", 403, {"message": "nope"}, headers={"X-Accepted-GitHub-Permissions": "x=y"})
    await attempt(lambda: github.get_pr(1))
    fake_github.fail("GET", "/pulls/1", 403, {"message": "slow down"}, headers={"Retry-After": "3"})
    await attempt(lambda: github.get_pr(1))
    fake_github.fail("GET", "/pulls", 500, times=3)
    await attempt(github.list_open)
    fake_github.fail("PUT", "/pulls/1/merge", 409, {"message": "Head branch was modified."})
    await attempt(lambda: github.merge(pr.number, sha))
    fake_github.delay("GET", "/pulls/1", 5.0, times=2)
    async with GitHubForge(
        "octo/bot",
        TOKEN,
        api_url="https://api.github.test",
        transport=httpx.ASGITransport(app=fake_github.app),
        timeout=0.05,
        retries=1,
        backoff=0.0,
    ) as slow:
        await attempt(lambda: slow.get_pr(1))
    git_server.expected = "Basic d3Jvbmc="
    repos.commit("other.py", "y = 1\n", "other", branch="agent/feature-other")
    await attempt(lambda: github.push_branch(repos.clone, "agent/feature-other"))
    async with GitHubForge(
        "octo/bot",
        TOKEN,
        api_url="https://api.github.test",
        transport=httpx.ASGITransport(app=fake_github.app),
        git_url="http://127.0.0.1:1/unreachable.git",
    ) as unreachable:
        await attempt(lambda: unreachable.push_branch(repos.clone, "agent/feature-other"))
    result = await github.merge(pr.number, sha)
    await attempt(lambda: github.merge(pr.number, sha))
    await attempt(lambda: github.close(99))
    fake_github.requests.append(fake_github.requests[0])  # keep the fixture's auth check meaningful

    assert len(errors) == 13, [type(e).__name__ for e in errors]
    for exc in errors:
        rendered = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
        assert not leaks(rendered), f"{type(exc).__name__} leaks the token"
    assert not leaks(caplog.text) and caplog.records, "a log line leaks the token"
    for body in [p["body"] or "" for p in fake_github.pulls.values()] + [
        c["body"] for thread in fake_github.comments.values() for c in thread
    ]:
        assert not leaks(body)
    configs = list(tmp_path.rglob("config"))
    assert len(configs) >= 2
    for config in configs:
        assert not leaks(config.read_text(errors="replace")), f"{config} holds the token"
    assert "url = " + str(repos.origin) in (repos.clone / ".git" / "config").read_text()
    assert not leaks(argv_log.read_text()) and "push" in argv_log.read_text()
    assert not leaks(repr(github)) and not leaks(repr(result)) and not leaks(repr(pr))
