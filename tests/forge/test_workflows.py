"""Which of the bot's workflows run on agent branches (pure), read from GitHub (the fake), and said at `serve`."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

import policy
from runner.app import create_app
from runner.config import Settings
from runner.forge.github import GitHubForge
from runner.forge.localgit import LocalGitForge
from runner.forge.workflows import WorkflowFiles, exposed, notice, push_notice
from runner.model_proxy import ModelProxy
from runner.sandbox.docker import DockerSandbox
from runner.service.runtime import Runtime
from runner.store import Store
from runner.supervisor import Deps
from tests.fakes.github import FakeGitHub, GitHttpServer
from tests.forge.repos import TOKEN, Repos, git

CI = ".github/workflows/ci.yml"


def fired(text: str, base: str = "main") -> tuple[str, ...]:
    found = exposed(WorkflowFiles(base, {CI: text}))
    return found[0].events if found else ()


@pytest.mark.parametrize(
    ("text", "events"),
    [
        ("on: push", ("push",)),
        ("on: [push, pull_request]", ("push", "pull_request")),
        ("'on':\n  pull_request_target:\n    types: [opened]", ("pull_request_target",)),
        ("on:\n  push:\n    branches: [main]", ()),
        ("on:\n  push:\n    branches: ['agent/**']", ("push",)),
        ("on:\n  push:\n    branches: ['**']", ("push",)),
        ("on:\n  push:\n    branches: ['*']", ()),  # `*` stops at a slash; agent branches have one
        ("on:\n  push:\n    branches: ['agent/feature-add*']", ("push",)),  # some agent branches, so named
        ("on:\n  push:\n    branches: ['**', '!agent/**']", ()),
        ("on:\n  push:\n    branches-ignore: ['agent/**']", ()),
        ("on:\n  push:\n    branches-ignore: [main]", ("push",)),
        ("on:\n  push:\n    tags: ['v*']", ()),
        ("on:\n  push:\n    paths: ['src/**']", ("push",)),  # may run: the paths are the agent's to choose
        ("on:\n  pull_request:\n    branches: [main]", ("pull_request",)),
        ("on:\n  pull_request:\n    branches: [release]", ()),
        ("on:\n  pull_request:\n    branches-ignore: [main]", ()),
        ("on:\n  pull_request:\n    branches: ['ma?in']", ("pull_request",)),
        ("on:\n  pull_request:\n    branches: ['m[a-c]in']", ("pull_request",)),
        ("on: [workflow_dispatch, schedule]", ()),
        ("on:\n  schedule:\n    - cron: '0 0 * * *'", ()),
        ("name: broken\non: [push\n", ()),  # GitHub does not run a file it cannot parse
        ("just a string", ()),
    ],
)
def test_exposed_reads_triggers_and_branch_filters_as_github_does(text: str, events: tuple[str, ...]) -> None:
    assert fired(text) == events


def test_exposed_follows_workflow_run_from_a_workflow_that_runs() -> None:
    files = {
        CI: "name: CI\non: [pull_request]",
        ".github/workflows/deploy.yml": "on:\n  workflow_run:\n    workflows: [CI]\n    types: [completed]",
        ".github/workflows/nightly.yml": "name: Nightly\non:\n  schedule:\n    - cron: '0 0 * * *'",
        ".github/workflows/report.yml": "on:\n  workflow_run:\n    workflows: [Nightly]",
        ".github/workflows/off.yml": "on: push",
    }
    found = exposed(WorkflowFiles("main", files, disabled=frozenset({".github/workflows/off.yml"})))
    assert [e.label for e in found] == ["ci.yml (pull_request)", "deploy.yml (workflow_run)"]


def test_notice_without_a_fork_names_what_runs_with_the_secrets() -> None:
    found = exposed(WorkflowFiles("main", {CI: "on: [push, pull_request]",
                                           ".github/workflows/t.yml": "on: pull_request_target"}))
    line = notice("octo/bot", None, found, total=2)
    assert line == ("agent branches are pushed to octo/bot itself (GITHUB_FORK is not set), where these workflows "
                    "run the agent's code with its secrets: ci.yml (push, pull_request), t.yml (pull_request_target)")
    assert notice("octo/bot", None, (), total=3) == ("agent branches are pushed to octo/bot itself (GITHUB_FORK is "
                                                      "not set); none of its 3 workflow(s) runs on them")
    assert "could not be read (403)" in (notice("octo/bot", None, None, error="403") or "")
    assert all("\n" not in (notice("o/b", None, f, total=1) or "") for f in (found, (), None))


def test_notice_with_a_fork_names_only_what_still_gets_the_secrets() -> None:
    plain = exposed(WorkflowFiles("main", {CI: "on: [push, pull_request]"}))
    assert notice("octo/bot", "me/bot", plain) is None
    risky = exposed(WorkflowFiles("main", {CI: "on: [push, pull_request_target]"}))
    assert notice("octo/bot", "me/bot", risky) == (
        "agent branches are pushed to the fork me/bot, but these workflows of octo/bot still run with its secrets "
        "on the fork's pull requests: ci.yml (pull_request_target)")


# -- read from GitHub -------------------------------------------------------------------------------------------


def add_workflows(repos: Repos, files: dict[str, str]) -> None:
    git("checkout", "-q", "main", cwd=repos.clone)
    for path, text in files.items():
        repos.commit(path, text, f"add {path}")
    git("push", "-q", "origin", "main", cwd=repos.clone)


async def test_github_workflow_files_reads_the_default_branch(
        github: GitHubForge, fake_github: FakeGitHub, repos: Repos) -> None:
    add_workflows(repos, {CI: "name: CI\non: [push]\n", ".github/workflows/old.yaml": "on: push\n",
                          ".github/workflows/README.md": "not a workflow\n"})
    fake_github.workflow_states[".github/workflows/old.yaml"] = "disabled_manually"

    files = await github.workflow_files()

    assert files.base_branch == "main"
    assert dict(files.files) == {CI: "name: CI\non: [push]\n", ".github/workflows/old.yaml": "on: push\n"}
    assert files.disabled == {".github/workflows/old.yaml"}
    assert [e.label for e in exposed(files)] == ["ci.yml (push)"]


async def test_github_workflow_files_without_any_and_without_actions_access(
        github: GitHubForge, fake_github: FakeGitHub) -> None:
    fake_github.fail("GET", "/actions/workflows", 403, {"message": "Resource not accessible by integration"},
                     headers={"X-Accepted-GitHub-Permissions": "actions=read"})
    files = await github.workflow_files()
    assert files.files == {} and files.disabled == frozenset()
    assert await push_notice(github) == ("agent branches are pushed to octo/bot itself (GITHUB_FORK is not set); "
                                         "none of its 0 workflow(s) runs on them")


async def test_push_notice_says_so_when_github_cannot_be_read(github: GitHubForge, fake_github: FakeGitHub) -> None:
    fake_github.fail("GET", "", 401, {"message": "Bad credentials"})
    line = await push_notice(github)
    assert line is not None and "could not be read" in line and "before you approve" in line


async def test_push_notice_is_silent_for_the_local_forge(local_forge: LocalGitForge) -> None:
    assert await push_notice(local_forge) is None


# -- at `serve` ---------------------------------------------------------------------------------------------------


def runtime_with(settings: Settings, forge: object) -> Callable[[], contextlib.AbstractAsyncContextManager[Runtime]]:
    @contextlib.asynccontextmanager
    async def open_backends() -> AsyncIterator[Runtime]:
        async with Store(settings.home / "state.db") as store, DockerSandbox() as sandbox, \
                ModelProxy("http://127.0.0.1:9", "unused") as proxy:
            deps = Deps(home=settings.home, store=store, sandbox=sandbox, proxy=proxy, policy=policy.load_default(),
                        image=settings.sandbox_image, forge=forge)  # type: ignore[arg-type]
            yield Runtime(settings, deps, lambda _line: None)

    return open_backends


async def start_lines(tmp_path: Path, forge: object, repo: str) -> list[str]:
    settings = dataclasses.replace(Settings.from_env({"AGENT_RUNNER_HOME": str(tmp_path / "home"),
                                                      "AGENT_API_TOKEN": "t"}), repo=repo, watch_seconds=0)
    lines: list[str] = []
    app = create_app(settings, runtime=runtime_with(settings, forge), say=lines.append)
    async with app.router.lifespan_context(app):
        pass
    return lines


async def test_serve_says_at_start_which_workflows_run_on_agent_branches(
        tmp_path: Path, github: GitHubForge, repos: Repos) -> None:
    add_workflows(repos, {CI: "on:\n  pull_request:\n    branches: [main]\n",
                          ".github/workflows/release.yml": "on:\n  push:\n    tags: ['v*']\n"})

    lines = await start_lines(tmp_path, github, github.git_url)

    about = [line for line in lines if "agent branches" in line]
    assert about == ["agent branches are pushed to octo/bot itself (GITHUB_FORK is not set), where these workflows "
                     "run the agent's code with its secrets: ci.yml (pull_request)"]


async def test_serve_in_fork_mode_prepares_the_fork_and_warns_only_of_privileged_workflows(
        tmp_path: Path, fake_github: FakeGitHub, git_server: GitHttpServer, repos: Repos) -> None:
    add_workflows(repos, {CI: "on: [push, pull_request]\n", ".github/workflows/label.yml": "on: pull_request_target\n"})
    fake_github.fork_root, fake_github.fork_delay = repos.root, 0
    async with GitHubForge("octo/bot", TOKEN, api_url="https://api.github.test",
                           transport=httpx.ASGITransport(app=fake_github.app), git_url=git_server.url("origin.git"),
                           fork="agent-runner-bot/bot", fork_git_url=git_server.url("bot.git")) as forge:
        lines = await start_lines(tmp_path, forge, forge.git_url)

    assert fake_github.forks_created  # made at start, not at the first task's push
    assert [line for line in lines if "agent branches" in line] == [
        "agent branches are pushed to the fork agent-runner-bot/bot, but these workflows of octo/bot still run with "
        "its secrets on the fork's pull requests: label.yml (pull_request_target)"]


async def test_serve_says_nothing_of_workflows_with_the_local_forge(tmp_path: Path, local_forge: LocalGitForge,
                                                                   repos: Repos) -> None:
    lines = await start_lines(tmp_path, local_forge, str(repos.origin))
    assert not [line for line in lines if "agent branches" in line]
