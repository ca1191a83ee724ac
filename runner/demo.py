"""`agent-runner demo`: the whole cycle offline on the embedded defaults, narrated on the terminal.

A sample bot with a bug is deployed as a container; the agent fixes the bug in a sandbox; the owner
approves the PR; the fix is deployed and health-checked. Then a second change that passes the tests but
breaks /health is approved, deployed, found unhealthy, rolled back, and reverted on main.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import sys
import time
from importlib import resources
from pathlib import Path

import docker
import httpx

from runner.config import Settings
from runner.deploy import DeploySource
from runner.deploy.docker import DockerDeployer
from runner.forge import create_forge
from runner.gitops import run_git
from runner.models import RunResult, TaskState
from runner.release import Release, approve_and_deploy
from runner.runtime import open_runtime
from runner.sample import create_sample_repo

FIX_PROMPT = "Users without outgoing transactions get a crash from /balance (average_spend). Fix it."
HEALTH_PROMPT = "Make /health also report how many users the ledger holds."
SERVICE = "agent-runner-demo-bot"
SCENARIOS = resources.files("runner") / "data" / "scenarios"


def _say(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def _step(title: str) -> None:
    print(f"\n== {title}", file=sys.stderr, flush=True)


async def run_demo(settings: Settings) -> int:
    started = time.monotonic()
    root = settings.home / "demo"
    shutil.rmtree(root, ignore_errors=True)
    settings = dataclasses.replace(settings, home=root / "home")
    scripted = settings.anthropic_api_key is None
    _step("agent-runner demo: the whole cycle, offline")
    if scripted:
        _say("ANTHROPIC_API_KEY is not set: a SCRIPTED model plays the agent (runner/data/scenarios/*.yaml).")
        _say("Everything else is real: the Docker sandbox, the Claude Code CLI in it, the policy, git, the tests,")
        _say("the deploy of the bot as a container, its health check and the rollback.")
    else:
        _say(f"ANTHROPIC_API_KEY is set: the real model at {settings.anthropic_base_url} plays the agent.")

    rows: list[tuple[str, str]] = []
    _step("1. the sample bot, with a bug, on the local forge, deployed")
    repo = str(await create_sample_repo(root / "origin"))
    port = _free_port()
    deployer = DockerDeployer(SERVICE, build_base_image=_base_image(), port=port, version_env="BOT_VERSION",
                              build_network="none", health_timeout=10)
    async with create_forge(settings, repo=repo) as forge, deployer:
        main = (await run_git(["rev-parse", "main"], cwd=repo)).out
        first = await deployer.deploy(DeploySource(repo, main))
        _say(f"bot {main[:12]} at http://127.0.0.1:{port}: {'healthy' if first.healthy else first.detail}")
        _say(f"GET /balance?user=2 -> {await _get(port, '/balance?user=2')}")
        rows.append(("deploy of the buggy bot", "healthy" if first.healthy else "UNHEALTHY"))

        _step("2. the owner asks: " + FIX_PROMPT)
        fix = await _task(settings, repo, FIX_PROMPT, "fix", "fix-balance.yaml" if scripted else None)
        rows += _task_rows("fix task", fix)
        if fix.pr is None:
            return _table(rows, started, failed=True)
        _step(f"3. the owner approves PR #{fix.pr.number} at {fix.pr.head_sha[:12]}: merge, deploy, health check")
        release = await approve_and_deploy(forge, deployer, repo, fix.pr.number, fix.pr.head_sha,
                                           say=_say)
        _say(f"GET /balance?user=2 -> {await _get(port, '/balance?user=2')}")
        rows.append((f"PR #{fix.pr.number}", _release_row(release)))

        _step("4. the owner asks: " + HEALTH_PROMPT)
        change = await _task(settings, repo, HEALTH_PROMPT, "feature", "health-users.yaml" if scripted else None)
        rows += _task_rows("feature task", change)
        if change.pr is None:
            return _table(rows, started, failed=True)
        _step(f"5. the owner approves PR #{change.pr.number}: its tests pass, but is the bot healthy?")
        release = await approve_and_deploy(forge, deployer, repo, change.pr.number,
                                           change.pr.head_sha, say=_say)
        _say(f"GET /health -> {await _get(port, '/health')}")
        rows.append((f"PR #{change.pr.number}", _release_row(release)))
    _say(f"the bot keeps running at http://127.0.0.1:{port} (stop it: docker rm -f {SERVICE})")
    return _table(rows, started)


async def _task(settings: Settings, repo: str, prompt: str, kind: str, scenario: str | None) -> RunResult:
    path = Path(str(SCENARIOS / scenario)) if scenario else None
    async with open_runtime(settings, repo=repo, say=_say, scenario=path) as rt:
        task = await rt.store.create_task(kind=kind, prompt=prompt, repo=repo, source="demo", requested_by="owner",
                                          dry_run=False)
        result = await rt.run(task)
    if result.status is TaskState.PROPOSED:
        for line in result.diff.splitlines():
            _say(f"| {line}")
    else:
        _say(f"the task ended {result.status.value}: {result.reason}")
    return result


def _task_rows(label: str, result: RunResult) -> list[tuple[str, str]]:
    tests = result.tests
    return [
        (label, f"{result.status.value}" + (f", PR #{result.pr.number}" if result.pr else "")),
        ("  tests run by the supervisor", f"exit {tests.exit_code}" if tests else "not run"),
        ("  tool calls denied by the policy", str(len(result.denials))),
        ("  model tokens", f"{result.usage.input_tokens} in / {result.usage.output_tokens} out"),
    ]


def _release_row(release: Release) -> str:
    text = f"merged {release.merge.sha[:12]}, {release.status}"
    if release.revert_sha:
        text += f", reverted on main as {release.revert_sha[:12]}"
    return text


async def _get(port: int, path: str) -> str:
    try:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            response = await client.get(f"http://127.0.0.1:{port}{path}")
        return f"{response.status_code} {response.text.strip()}"
    except httpx.HTTPError as exc:
        return f"no answer ({type(exc).__name__})"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _base_image() -> str:
    """The bot's image base: python:3.12-slim where a registry gave us one, else the locally built base."""
    client = docker.from_env()
    try:
        client.images.get("python:3.12-slim")
        return "python:3.12-slim"
    except docker.errors.ImageNotFound:
        return "agent-runner/base:bookworm"
    finally:
        client.close()


def _table(rows: list[tuple[str, str]], started: float, *, failed: bool = False) -> int:
    _step(f"summary ({time.monotonic() - started:.0f}s)")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}", flush=True)
    return 1 if failed else 0
