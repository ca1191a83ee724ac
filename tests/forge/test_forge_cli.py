"""`agent-runner prs | approve | reject`: the forge picked from the environment, exit codes, JSON output."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from runner.forge import local_forge_db
from runner.forge.localgit import LocalGitForge
from runner.forge_cli import register
from tests.fakes.github import FakeGitHub
from tests.forge.repos import TOKEN, Repos, git

BRANCH = "agent/feature-balance"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agent-runner")
    register(p.add_subparsers(dest="command", required=True))
    return p


def run(argv: list[str], environ: dict[str, str]) -> tuple[int, str]:
    args = parser().parse_args(argv)
    out = io.StringIO()
    code = args.func(args, environ, out)
    assert isinstance(code, int)
    return code, out.getvalue()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def proposed(repos: Repos, home: Path) -> str:
    """One open pull request (#1) in the local forge the CLI will find under AGENT_RUNNER_HOME."""
    sha = repos.commit("balance.py", "x = 1\n", "add balance", branch=BRANCH)

    async def setup() -> None:
        async with LocalGitForge(repos.origin, local_forge_db(home.resolve())) as forge:
            await forge.push_branch(repos.clone, BRANCH)
            await forge.open_pr("Add /balance", "body", BRANCH, "main")

    asyncio.run(setup())
    return sha


def test_register_adds_the_three_commands() -> None:
    p = parser()
    for argv in (["prs"], ["approve", "3", "--sha", "abc", "--json"], ["reject", "3"]):
        assert callable(p.parse_args(argv).func)


def test_cli_prs_lists_open_pull_requests(repos: Repos, home: Path, proposed: str) -> None:
    env = {"AGENT_RUNNER_HOME": str(home)}

    code, text = run(["prs", "--repo", str(repos.origin)], env)
    assert code == 0 and text == f"#1  {proposed[:12]}  {BRANCH} -> main  Add /balance\n"

    code, text = run(["prs", "--repo", str(repos.origin), "--json"], env)
    assert code == 0
    [pr] = json.loads(text)
    assert (pr["number"], pr["head_sha"], pr["state"]) == (1, proposed, "open")


def test_cli_approve_merges_at_the_given_sha(repos: Repos, home: Path, proposed: str) -> None:
    code, text = run(
        ["approve", "1", "--sha", proposed, "--json", "--repo", str(repos.origin)], {"AGENT_RUNNER_HOME": str(home)}
    )

    assert code == 0
    result = json.loads(text)
    assert result["merged"] is True and result["head_sha"] == proposed and result["sha"] == repos.head("main")


def test_cli_approve_with_a_short_sha_merges(repos: Repos, home: Path, proposed: str) -> None:
    code, text = run(["approve", "1", "--sha", proposed[:7], "--json", "--repo", str(repos.origin)],
                     {"AGENT_RUNNER_HOME": str(home)})
    assert code == 0, text
    assert json.loads(text)["head_sha"] == proposed and json.loads(text)["merged"] is True


def test_cli_approve_without_sha_uses_the_recorded_head(repos: Repos, home: Path, proposed: str) -> None:
    code, text = run(["approve", "1", "--repo", str(repos.origin)], {"AGENT_RUNNER_HOME": str(home)})
    assert code == 0 and text.startswith(f"merged #1 at {proposed[:12]} as ")


def test_cli_approve_stale_sha_exits_1_and_merges_nothing(repos: Repos, home: Path, proposed: str) -> None:
    base = repos.head("main")

    code, text = run(
        ["approve", "1", "--sha", "f" * 40, "--json", "--repo", str(repos.origin)], {"AGENT_RUNNER_HOME": str(home)}
    )

    assert code == 1 and json.loads(text)["error"] == "ForgeConflict"
    assert repos.head("main") == base


def test_cli_approve_after_the_branch_moved_is_refused(repos: Repos, home: Path, proposed: str) -> None:
    repos.commit("balance.py", "x = 2\n", "moved")
    repos.push_direct(BRANCH)

    code, _ = run(["approve", "1", "--repo", str(repos.origin)], {"AGENT_RUNNER_HOME": str(home)})
    assert code == 1


def test_cli_reject_closes_without_merging(repos: Repos, home: Path, proposed: str) -> None:
    base = repos.head("main")

    code, text = run(["reject", "1", "--repo", str(repos.origin)], {"AGENT_RUNNER_HOME": str(home)})

    assert code == 0 and text == f"closed #1 ({BRANCH}), nothing merged\n"
    assert repos.head("main") == base
    assert run(["prs", "--repo", str(repos.origin)], {"AGENT_RUNNER_HOME": str(home)})[1] == "no open pull requests\n"


def test_cli_missing_pull_request_exits_1(repos: Repos, home: Path) -> None:
    code, text = run(["reject", "9", "--json", "--repo", str(repos.origin)], {"AGENT_RUNNER_HOME": str(home)})
    assert code == 1 and json.loads(text)["error"] == "ForgeNotFound"


def test_cli_without_any_forge_exits_2(home: Path) -> None:
    code, text = run(["prs", "--json"], {"AGENT_RUNNER_HOME": str(home)})
    assert code == 2 and json.loads(text)["error"] == "ConfigError"


def test_cli_prs_reads_agent_runner_repo_when_no_repo_is_given(repos: Repos, home: Path, proposed: str) -> None:
    env = {"AGENT_RUNNER_HOME": str(home), "AGENT_RUNNER_REPO": str(repos.origin)}
    assert run(["prs"], env) == (0, f"#1  {proposed[:12]}  {BRANCH} -> main  Add /balance\n")
    code, text = run(["reject", "1", "--json"], env)
    assert code == 0 and json.loads(text)["state"] == "closed"


def test_cli_prs_on_a_missing_path_exits_2_and_creates_no_forge_state(home: Path, tmp_path: Path) -> None:
    code, text = run(["prs", "--json", "--repo", "/no/such/path"], {"AGENT_RUNNER_HOME": str(home)})
    assert code == 2, text
    error = json.loads(text)
    assert error["error"] == "ConfigError" and "'/no/such/path': the path does not exist" in error["message"]
    assert not local_forge_db(home.resolve()).exists() and not home.exists()


def test_cli_prs_on_a_folder_that_is_not_a_repository_exits_2(home: Path, tmp_path: Path) -> None:
    folder = tmp_path / "not-a-repo"
    folder.mkdir()
    code, text = run(["prs", "--json"], {"AGENT_RUNNER_HOME": str(home), "AGENT_RUNNER_REPO": str(folder)})
    assert code == 2 and "AGENT_RUNNER_REPO" in json.loads(text)["message"]
    assert "is not a git repository" in json.loads(text)["message"]
    assert not local_forge_db(home.resolve()).exists()


def test_cli_approve_deploys_with_the_configured_deployer_and_rolls_back(repos: Repos, home: Path, proposed: str,
                                                                       tmp_path: Path) -> None:
    """`approve` merges and deploys (DESIGN's contract): here a `command` deployer (health: its exit status)
    that fails for the merged change, so it is rolled back, reverted on main, and the exit status says so."""
    deployed = tmp_path / "deployed"
    base = repos.head("main")
    env = {"AGENT_RUNNER_HOME": str(home), "AGENT_RUNNER_DEPLOYER": "command",
           "AGENT_RUNNER_DEPLOY_COMMAND": f'echo "$AGENT_RUNNER_DEPLOY_SHA" > {deployed}; '
                                          f'test "$AGENT_RUNNER_DEPLOY_ACTION" = rollback'}
    code, text = run(["approve", "1", "--sha", proposed, "--json", "--repo", str(repos.origin)], env)
    result = json.loads(text)
    assert code == 1 and result["merged"] is True and result["deploy"] == "rolled_back"
    assert deployed.read_text().strip() == base  # the previous version runs again
    assert result["release"]["revert_sha"] == repos.head("main") and result["release"]["previous_sha"] == base


@pytest.fixture
def github_server(repos: Repos) -> Iterator[tuple[str, FakeGitHub]]:
    """The fake GitHub behind a real uvicorn on 127.0.0.1, for the CLI that builds its own client."""
    fake = FakeGitHub(TOKEN, git_dir=repos.origin)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        threading.Event().wait(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", fake
    server.should_exit = True
    thread.join()
    sock.close()


def test_cli_uses_github_when_token_and_repository_are_set(
    repos: Repos, github_server: tuple[str, FakeGitHub], home: Path
) -> None:
    url, fake = github_server
    fake.branches[BRANCH] = repos.commit("balance.py", "x = 1\n", "add", branch=BRANCH)
    git("push", "-q", "origin", BRANCH, cwd=repos.clone)
    env = {
        "GITHUB_TOKEN": TOKEN,
        "GITHUB_REPOSITORY": "octo/bot",
        "GITHUB_API_URL": url,
        "AGENT_RUNNER_HOME": str(home),
    }

    async def open_pr() -> None:
        from runner.forge.github import GitHubForge

        async with GitHubForge("octo/bot", TOKEN, api_url=url) as forge:
            await forge.open_pr("Add /balance", "", BRANCH, "main")

    asyncio.run(open_pr())

    code, text = run(["prs", "--json"], env)
    assert code == 0 and [pr["number"] for pr in json.loads(text)] == [1]
    code, text = run(["approve", "1", "--json"], env)
    assert code == 0 and json.loads(text)["merged"] is True and fake.merges == [1]
    assert fake.requests and all(r.authorized for r in fake.requests)
    assert TOKEN not in text
