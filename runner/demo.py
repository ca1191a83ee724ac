"""`agent-runner demo`: the whole cycle offline on the embedded defaults, narrated on the terminal.

A sample bot with a bug is deployed as a container; the agent fixes the bug in a sandbox; the owner asks
for one more change to that PR (a follow-up: the agent's session resumed, a second commit on the same branch) and
approves it at its new head; the fix is deployed and health-checked. Then a second change that passes the tests but
breaks /health is approved, deployed, found unhealthy, rolled back, and reverted on main. A third passes the
tests and the health check but makes production raise; the post-deploy watch sees the new traceback in the
bot's log, rolls it back and reverts it; its first round failed the supervisor's tests, and the failure went back to
the agent in the same session (self-correction). Approvals go through the service's own release machinery.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import docker
import httpx
import yaml

from runner.config import Settings
from runner.deploy import DeploySource
from runner.deploy.docker import DockerDeployer
from runner.errors import ForgeError
from runner.forge import create_forge
from runner.gitops import run_git
from runner.models import PrRef, RunResult, TaskState
from runner.sample import create_sample_repo
from runner.service.followups import FollowUps, FollowUpStore
from runner.service.releases import IN_FLIGHT, ReleaseRecord, Releases, ReleaseStore
from runner.service.runtime import open_runtime
from runner.service.watch import ContainerLogErrors, WatchConfig
from runner.store import Store

FIX_PROMPT = "Users without outgoing transactions get a crash from /balance (average_spend). Fix it."
HEALTH_PROMPT = "Make /health also report how many users the ledger holds."
NAMES_PROMPT = "Let /balance take the user's name, like /balance?user=alice."
FOLLOW_UP_PROMPT = "Also write down in docs/balance.md what /balance shows for a user without spending."
FOLLOW_UP_DOC = ("# /balance\n\nA user without outgoing transactions gets an average spend of 0.00 "
                 "instead of an error.\n")
# Short, so the demo does not wait ten minutes: read the bot's log every second for two minutes.
DEMO_WATCH = WatchConfig(seconds=120, interval=1, baseline_seconds=600)
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
    async with create_forge(settings, repo=repo) as forge, deployer, Store(settings.home / "state.db") as store:
        main = (await run_git(["rev-parse", "main"], cwd=repo)).out
        first = await deployer.deploy(DeploySource(repo, main))
        _say(f"bot {main[:12]} at http://127.0.0.1:{port}: {'healthy' if first.healthy else first.detail}")
        _say(f"GET /balance?user=2 -> {await _get(port, '/balance?user=2')}")
        rows.append(("deploy of the buggy bot", "healthy" if first.healthy else "UNHEALTHY"))
        releases = Releases(ReleaseStore(store.path), store=store, forge=forge, deployer=deployer, repo=repo,
                            home=settings.home,
                            watch=DEMO_WATCH, errors=ContainerLogErrors(SERVICE),
                            progress=lambda _task, line: _say(line), tell=_tell)

        async def asked(step: str, prompt: str, kind: str, scenario: str) -> tuple[RunResult, PrRef] | None:
            """The owner asks for `prompt`: its task's result and PR (None: no PR, the demo failed)."""
            _step(f"{step}. the owner asks: {prompt}")
            result = await _task(settings, repo, prompt, kind, scenario if scripted else None)
            rows.extend(_task_rows(f"{kind} task", result))
            return (result, result.pr) if result.pr is not None else None

        try:
            if (proposed := await asked("2", FIX_PROMPT, "fix", "fix-balance.yaml")) is None:
                return _table(rows, started, failed=True)
            fix, pr = proposed
            _step(f"2b. the owner asks for a change to PR #{pr.number}: " + FOLLOW_UP_PROMPT)
            first_head = pr.head_sha
            fix = await _follow_up(settings, repo, store, fix, "fix-balance.yaml" if scripted else None, root)
            rows.append((f"  follow-up on PR #{fix.pr.number}" if fix.pr else "  follow-up",
                         f"second commit {fix.pr.head_sha[:12]}" if fix.pr else "failed"))
            if fix.pr is None:
                return _table(rows, started, failed=True)
            try:
                await releases.approve(fix.pr.number, first_head, actor="demo:owner", task=None)
                _say("an approval at the old head was taken: it should have been refused")
                return _table(rows, started, failed=True)
            except ForgeError as exc:
                _say(f"an approval at the old head {first_head[:12]} is refused: {exc}")
            _step(f"3. the owner approves PR #{fix.pr.number} at {fix.pr.head_sha[:12]}: merge, deploy, health check")
            release = await _approve(releases, store, fix)
            _say(f"GET /balance?user=2 -> {await _get(port, '/balance?user=2')}")
            rows.append((f"PR #{fix.pr.number}", _release_row(release)))

            if (proposed := await asked("4", HEALTH_PROMPT, "feature", "health-users.yaml")) is None:
                return _table(rows, started, failed=True)
            change, pr = proposed
            _step(f"5. the owner approves PR #{pr.number}: its tests pass, but is the bot healthy?")
            release = await _approve(releases, store, change)
            _say(f"GET /health -> {await _get(port, '/health')}")
            rows.append((f"PR #{pr.number}", _release_row(release)))

            if (proposed := await asked("6", NAMES_PROMPT, "feature", "balance-by-name.yaml")) is None:
                return _table(rows, started, failed=True)
            names, pr = proposed
            _step(f"7. the owner approves PR #{pr.number}: tests pass, /health answers; then users write in")
            release = await _approve(releases, store, names)
            for path in ("/balance?user=alice", "/balance?user=2", "/balance?user=1"):
                _say(f"GET {path} -> {await _get(port, path)}")
            if release.state == "watching":
                _say("the post-deploy watch reads the bot's log every second ...")
                release = await _settled(releases, release.id, lambda r: r.state != "watching", DEMO_WATCH.seconds)
            _say(f"GET /balance?user=2 -> {await _get(port, '/balance?user=2')}")
            rows.append((f"PR #{pr.number}", _release_row(release)))
        finally:
            await releases.aclose()
            await releases.rows.aclose()
    _say(f"the bot keeps running at http://127.0.0.1:{port} (stop it: docker rm -f {SERVICE})")
    return _table(rows, started)


async def _approve(releases: Releases, store: Store, result: RunResult) -> ReleaseRecord:
    """Approve the task's PR at the head it was shown, and wait until it is deployed (and watched) or undone."""
    assert result.pr is not None
    task = await store.get_task(result.task_id)
    release = await releases.approve(result.pr.number, result.pr.head_sha, actor="demo:owner", task=task)
    return await _settled(releases, release.id, lambda r: r.state not in IN_FLIGHT, 600)


async def _settled(releases: Releases, release_id: int, done: Callable[[ReleaseRecord], bool],
                   timeout: float) -> ReleaseRecord:
    async with asyncio.timeout(timeout + 60):
        while not done(release := await releases.rows.get(release_id)):
            await asyncio.sleep(0.2)
    return release


async def _tell(text: str) -> None:
    _say(f"[to the owner] {text}")


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


async def _follow_up(settings: Settings, repo: str, store: Store, result: RunResult, scenario: str | None,
                     root: Path) -> RunResult:
    """The owner's follow-up on the task's PR (runner.service.followups, as the service runs it): a new sandbox
    from the PR's head, the agent's session resumed, a second commit on the same branch. The old head's approval
    is refused from then on. Returns the task's result bound to the new head (its `pr` None if it failed)."""
    path = None
    if scenario is not None:
        # The scripted model picks its turn by the conversation's length: the resumed session holds the fix's
        # whole conversation, so the follow-up's turn comes after the fix scenario's turns and one for its end.
        script = yaml.safe_load((SCENARIOS / scenario).read_text(encoding="utf-8"))
        script["turns"] += [[{"type": "text", "text": "The fix is ready for review."}],
                            [{"type": "text", "text": "Writing down what /balance shows now."},
                             {"type": "tool_use", "name": "Write",
                              "input": {"file_path": "/workspace/docs/balance.md", "content": FOLLOW_UP_DOC}}]]
        script["final_text"] = "Documented /balance for users without spending in docs/balance.md."
        path = root / "follow-up-scenario.yaml"
        path.write_text(yaml.safe_dump(script, sort_keys=False), encoding="utf-8")
    assert result.pr is not None
    old = result.pr.head_sha
    async with open_runtime(settings, repo=repo, say=_say, scenario=path) as rt:
        desk = FollowUps(FollowUpStore(rt.store.path), rt.deps, progress=lambda _task, line: _say(line))
        try:
            follow = await desk.submit(await rt.store.get_task(result.task_id), FOLLOW_UP_PROMPT,
                                       actor="demo:owner", source="demo")
            follow = await desk.wait(follow.id)
        finally:
            await desk.aclose()
            await desk.rows.aclose()
    task = await store.get_task(result.task_id)
    if follow.state != "done" or task.result is None:
        _say(f"the follow-up ended {follow.state}: {follow.reason}")
        return dataclasses.replace(result, pr=None)
    new = follow.head_sha or ""
    _say(f"session {follow.session}; PR #{follow.number}: {old[:12]} -> {new[:12]} (a fast-forward, never forced)")
    return task.result


def _task_rows(label: str, result: RunResult) -> list[tuple[str, str]]:
    tests = result.tests
    return [
        (label, f"{result.status.value}" + (f", PR #{result.pr.number}" if result.pr else "")),
        ("  tests run by the supervisor", f"exit {tests.exit_code}" if tests else "not run"),
        ("  rounds", str(result.rounds) + (": its failing tests went back to the agent, which fixed them"
                                           if result.rounds > 1 else "")),
        ("  tool calls denied by the policy", str(len(result.denials))),
        ("  model tokens", f"{result.usage.input_tokens} in / {result.usage.output_tokens} out"),
    ]


def _release_row(release: ReleaseRecord) -> str:
    state = "deployed and healthy, watched" if release.state == "watching" else release.state
    text = f"merged {(release.merge_sha or '?')[:12]}, {state}"
    if release.revert_sha:
        why = "by the post-deploy watch" if "post-deploy watch" in release.detail else "unhealthy"
        text += f" ({why}), reverted on main as {release.revert_sha[:12]}"
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
