"""Faults injected where they happen (issue 19), each asserting the final state, the reason's words, what was
kept, and that nothing ran twice.

The engine is killed mid-task, and is down when a task is queued, on a private engine of the tests' own
(tests/engine.py); the model upstream answers 500 every time, or accepts and never answers (listeners on
loopback that the test starts); the disk holding AGENT_RUNNER_HOME fills mid-task, or is full before a run (a
small tmpfs); the scenario and the policy are malformed. The task runs as the owner runs it, `agent-runner run`
in a child process, with the real CLI in a real sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import policy
from runner.model_proxy import ModelProxy
from runner.models import TaskState
from runner.sample import create_sample_repo
from runner.sandbox.base import LABEL_TASK
from runner.sandbox.docker import DockerSandbox
from runner.service.runtime import reap_orphans
from runner.store import Store
from runner.supervisor import Deps, run_task
from runner.unix_server import serve_tcp
from tests.engine import PrivateEngine, private_engine  # noqa: F401  (the session fixture, used by `engine`)
from tests.fakes.disk import small_disk

AGENT_RUNNER = [sys.executable, "-m", "runner.cli"]
SCRIPTED_KEY = "sk-ant-test-key-for-a-local-upstream"
IMAGE = "agent-runner/sandbox:latest"


# --- the child process, its environment and its inputs ------------------------------------------------------


@dataclass
class Child:
    """`agent-runner ...` running, its progress (stderr) read line by line as it comes."""

    proc: asyncio.subprocess.Process
    progress: list[str] = field(default_factory=list)

    async def wait_for(self, needle: str, timeout: float = 180) -> float:
        """Read progress until a line holds `needle`; when it came (monotonic)."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while line := await self.proc.stderr.readline():
                self.progress.append(line.decode(errors="replace").rstrip("\n"))
                if needle in self.progress[-1]:
                    return time.monotonic()
        raise AssertionError(f"exited before saying {needle!r}:\n" + "\n".join(self.progress))

    async def finish(self, timeout: float = 240) -> tuple[int, dict[str, Any], str]:
        """Its exit code, the JSON result it printed last (or {}), and all its progress."""
        assert self.proc.stderr is not None and self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            err, out = await asyncio.gather(self.proc.stderr.read(), self.proc.stdout.read())
            code = await self.proc.wait()
        self.progress += err.decode(errors="replace").splitlines()
        lines = out.decode().strip().splitlines()
        return code, json.loads(lines[-1]) if lines else {}, "\n".join(self.progress)


@contextlib.asynccontextmanager
async def agent_runner(*args: str, env: dict[str, str]) -> AsyncIterator[Child]:
    proc = await asyncio.create_subprocess_exec(*AGENT_RUNNER, *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        yield Child(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_RUNNER_")) and k != "DOCKER_HOST"}
    # runc: these faults are the engine's, the disk's and the upstream's, and runc starts faster than gVisor.
    env.update(AGENT_RUNNER_HOME=str(home), AGENT_RUNNER_RUNTIME="runc", **extra)
    return env


def _policy(tmp_path: Path, *, setup: bool = False, **limits: int) -> Path:
    """The default policy with some global limits changed; without the dependency set-up unless `setup` (it
    needs the package registry, which the private engine's bridge does not reach)."""
    text = policy.default_text()
    for key, value in limits.items():
        line = next(line for line in text.splitlines() if line.startswith(f"  {key}:"))
        text = text.replace(line, f"  {key}: {value}", 1)
    if not setup:
        line = next(line for line in text.splitlines() if line.startswith("setup_command:"))
        text = text.replace(line, 'setup_command: ""', 1)
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    policy.load(text)  # a test's policy that did not load would fail for the wrong reason
    return path


def _scenario(tmp_path: Path, *turns: list[dict[str, Any]]) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({"turns": [list(turn) for turn in turns], "final_text": "Done."}))
    return path


def _tool(name: str, **tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": tool_input}


async def _run_args(tmp_path: Path, *extra: str) -> list[str]:
    repo = await create_sample_repo(tmp_path / "origin")
    return ["run", "--repo", str(repo), "--prompt", "fix average_spend", "--kind", "fix", "--dry-run", "--json",
            *extra]


async def _states(home: Path, task_id: str) -> list[str]:
    """The task's transitions as its audit log holds them, in order (opening the file checks it whole)."""
    async with Store(home / "state.db") as store:
        return [entry.detail["state"] for entry in await store.audit_log(task_id, event="state")]


def _containers(client: Any, task_id: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_TASK}={task_id}"}))


# --- model upstreams on loopback -----------------------------------------------------------------------------


@dataclass
class Upstream:
    url: str
    requests: int = 0
    connections: int = 0


@contextlib.asynccontextmanager
async def failing_upstream(status: int = 500) -> AsyncIterator[Upstream]:
    """The Messages API answering every call with `status` in its error shape, retry advised (as Anthropic's
    500s are)."""
    upstream = Upstream("")

    async def fail(request: Request) -> JSONResponse:
        upstream.requests += 1
        await request.body()
        return JSONResponse({"type": "error", "error": {"type": "api_error", "message": "Internal server error"}},
                            status_code=status, headers={"x-should-retry": "true", "request-id": "req_fault"})

    app = Starlette(routes=[Route("/v1/messages", fail, methods=["POST"]),
                            Route("/v1/messages/count_tokens", fail, methods=["POST"])])
    async with serve_tcp(app) as url:
        upstream.url = url
        yield upstream


@contextlib.asynccontextmanager
async def silent_upstream() -> AsyncIterator[Upstream]:
    """A listener that accepts every connection, reads what it is sent, and never answers."""
    upstream = Upstream("")
    held: set[asyncio.Task[None]] = set()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream.connections += 1
        current = asyncio.current_task()
        assert current is not None
        held.add(current)
        try:
            while await reader.read(65536):
                pass
        finally:
            writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield upstream
    finally:
        server.close()
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await server.wait_closed()


# --- the private engine -------------------------------------------------------------------------------------


@pytest.fixture
def engine(private_engine: PrivateEngine, sandbox_image: str) -> Iterator[PrivateEngine]:  # noqa: F811
    """The private engine, answering and holding the sandbox image, for one test that may kill it."""
    if not private_engine.answers():
        private_engine.start()
    private_engine.load(sandbox_image)
    yield private_engine
    if not private_engine.answers():
        private_engine.start()
    private_engine.clean()


def _running_in(container_id: str) -> list[int]:
    """Host processes in the container's cgroup (runc puts each container's processes in one named by its id)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if container_id in (entry / "cgroup").read_text():
                    pids.append(int(entry.name))
    return pids


# --- the engine --------------------------------------------------------------------------------------------


@pytest.mark.docker
async def test_the_engine_killed_mid_task_fails_it_naming_the_engine_and_nothing_stays_running(
        tmp_path: Path, engine: PrivateEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    # The agent is busy in a command that never ends by itself when the engine dies under it.
    scenario = _scenario(tmp_path, [_tool("Bash", command="tail -f README.md")],
                         [_tool("Write", file_path="/workspace/late.txt", content="late\n")])
    args = await _run_args(tmp_path, "--scenario", str(scenario), "--policy",
                           str(_policy(tmp_path, wall_time_seconds=120)))
    async with agent_runner(*args, env=_env(home, DOCKER_HOST=engine.host)) as child:
        await child.wait_for("allowed Bash tail -f")
        killed = time.monotonic()
        engine.kill()
        code, result, progress = await child.finish(timeout=120)
    ended = time.monotonic() - killed
    assert code == 1 and result["status"] == "failed", progress
    assert re.fullmatch(r"the Docker engine stopped answering \(.+\); start one with scripts/docker-engine\.sh",
                        result["reason"]), result["reason"]
    assert ended < 60, f"the task took {ended:.0f} s to notice the engine had gone"
    assert "late.txt" not in result["diff"] and result["pr"] is None

    task_id = result["task_id"]
    # The state file is whole (opening it runs quick_check) and the task ran once, to one end.
    assert await _states(home, task_id) == ["provisioning", "provisioning", "running", "failed"]
    async with Store(home / "state.db") as store:
        record = await store.get_task(task_id)
        decisions = [e.detail["tool"] for e in await store.audit_log(task_id, event="tool_decision")]
    assert record.state is TaskState.FAILED and record.reason == result["reason"]
    assert decisions == ["Bash"]  # the late Write was never even asked for

    # Back up, the engine has stopped what ran in the container; the next start removes the container.
    engine.start()
    client = engine.client()
    try:
        left = _containers(client, task_id)
        assert len(left) == 1 and left[0].status != "running", [(c.name, c.status) for c in left]
        assert _running_in(left[0].id) == []
        monkeypatch.setenv("DOCKER_HOST", engine.host)  # the next start, on the same engine
        async with Store(home / "state.db") as store, DockerSandbox(runtime="runc") as box:
            assert await reap_orphans(store, box, home) == [task_id]
            assert (await store.get_task(task_id)).reason == result["reason"]  # the cause stays the cause
        assert _containers(client, task_id) == []
    finally:
        client.close()


@pytest.mark.docker
async def test_a_task_queued_while_the_engine_is_down_fails_saying_no_engine_answers(
        tmp_path: Path, engine: PrivateEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    home = tmp_path / "home"
    active = policy.load(_policy(tmp_path).read_text())
    # Connected while the engine answered, as `serve`'s backend is; the engine then dies before the task starts.
    monkeypatch.setenv("DOCKER_HOST", engine.host)
    sandbox = DockerSandbox(runtime="runc")
    async with Store(home / "state.db") as store, ModelProxy("http://127.0.0.1:9", "unused") as proxy, sandbox:
        await sandbox.running()
        engine.kill()
        task = await store.create_task(kind="fix", prompt="x", repo=str(repo), source="test", requested_by="test",
                                       dry_run=True)
        result = await run_task(Deps(home=home, store=store, sandbox=sandbox, proxy=proxy, policy=active,
                                     image=IMAGE), task)
        record = await store.get_task(task.id)
    assert result.status is TaskState.FAILED and record.state is TaskState.FAILED
    assert re.fullmatch(r"no Docker engine answers \(.+\); start one with scripts/docker-engine\.sh", result.reason), \
        result.reason
    assert record.reason == result.reason and record.base_sha  # provisioning's work is recorded
    assert await _states(home, task.id) == ["provisioning", "provisioning", "failed"]
    assert proxy.usage(task.id).requests == 0


# --- the model upstream ------------------------------------------------------------------------------------


@pytest.mark.docker
async def test_an_upstream_answering_500_every_time_is_named_in_the_reason(tmp_path: Path, docker_client: Any) -> None:
    home = tmp_path / "home"
    args = await _run_args(tmp_path, "--policy", str(_policy(tmp_path, wall_time_seconds=12)))
    async with failing_upstream(500) as upstream:
        env = _env(home, ANTHROPIC_BASE_URL=upstream.url, ANTHROPIC_API_KEY=SCRIPTED_KEY)
        async with agent_runner(*args, env=env) as child:
            code, result, progress = await child.finish()
    assert code == 1 and result["status"] == "timed_out", progress
    said = re.fullmatch(r"the model upstream answered 500 (\d+) times: the wall time \(12 s\) ran out waiting for "
                        r"it; work so far kept", result["reason"])
    assert said, result["reason"]
    # Every 500 the upstream gave is counted once, none that it did not give (the CLI retried them all).
    assert int(said.group(1)) == upstream.requests >= 2
    assert result["files_changed"] == [] and result["usage"]["input_tokens"] == 0
    assert await _states(home, result["task_id"]) == ["provisioning", "provisioning", "running", "timed_out"]
    assert _containers(docker_client, result["task_id"]) == []


@pytest.mark.docker
async def test_an_upstream_that_never_answers_ends_the_task_at_its_wall_time(tmp_path: Path,
                                                                            docker_client: Any) -> None:
    home = tmp_path / "home"
    wall = 10
    args = await _run_args(tmp_path, "--policy", str(_policy(tmp_path, wall_time_seconds=wall)))
    async with silent_upstream() as upstream:
        env = _env(home, ANTHROPIC_BASE_URL=upstream.url, ANTHROPIC_API_KEY=SCRIPTED_KEY)
        async with agent_runner(*args, env=env) as child:
            running = await child.wait_for("running: agent in container")
            code, result, progress = await child.finish()
            took = time.monotonic() - running
    assert code == 1 and result["status"] == "timed_out", progress
    said = re.fullmatch(rf"the model upstream did not answer within (\d+) s \((once|\d+ times)\): the wall time "
                        rf"\({wall} s\) ran out waiting for it; work so far kept", result["reason"])
    assert said and int(said.group(1)) >= wall // 2, result["reason"]
    # The session's wall time bounds the wait (plus reading the work out), not the proxy's 120 s idle timeout.
    assert wall - 1 < took < wall + 8, f"{took:.1f} s"
    assert upstream.connections >= 1 and result["usage"]["input_tokens"] == 0
    assert await _states(home, result["task_id"]) == ["provisioning", "provisioning", "running", "timed_out"]
    assert _containers(docker_client, result["task_id"]) == []


# --- the disk ----------------------------------------------------------------------------------------------


@pytest.mark.docker
async def test_a_disk_filling_mid_task_stops_it_keeps_its_diff_and_the_next_start_has_the_cause(
        tmp_path: Path, docker_client: Any) -> None:
    scenario = _scenario(tmp_path, [_tool("Write", file_path="/workspace/notes.txt", content="kept work\n")],
                         [_tool("Bash", command="python3 -c 'import time; time.sleep(3)'")],
                         [_tool("Bash", command="cat notes.txt")])
    args = await _run_args(tmp_path, "--scenario", str(scenario), "--policy", str(_policy(tmp_path)))
    with small_disk(tmp_path / "home", "64m") as disk:
        home = disk.root
        async with agent_runner(*args, env=_env(home)) as child:
            # While the agent's command runs, the disk fills: the next decision's audit row cannot be written.
            await child.wait_for("allowed Bash python3")
            filler = disk.fill()
            code, result, progress = await child.finish()
        task_id = result["task_id"]
        kept = home / "tasks" / task_id / "kept.diff"
        assert code == 1 and result["status"] == "failed", progress
        reason = result["reason"]
        assert reason.startswith("the task was stopped because the state file refused to record it: the state "
                                 f"file {home}/state.db cannot be written: its disk is full"), reason
        assert reason.endswith(f"; its diff is kept in {kept}") or f"; its diff is kept in {kept};" in reason
        assert kept.read_text() == result["diff"] and "+kept work" in result["diff"]
        assert result["files_changed"] == ["notes.txt"]
        assert [(d["tool"], d["rule"], "cannot record" in d["reason"]) for d in result["denials"]] == [
            ("Bash", "audit", True)]
        assert _containers(docker_client, task_id) == []  # its sandbox was stopped
        assert not (home / "tasks" / task_id / "room").exists()

        # The owner frees space; the next start reads a whole file that says why the task stopped.
        filler.unlink()
        async with Store(home / "state.db") as store:
            record = await store.get_task(task_id)
            decisions = [(e.detail["tool"], e.detail["decision"])
                         for e in await store.audit_log(task_id, event="tool_decision")]
        assert record.state is TaskState.FAILED
        assert record.reason.startswith(reason.removesuffix("; the next start records this")), record.reason
        # Each step ran once: the Write and the first command were decided and recorded, the last never ran.
        assert decisions == [("Write", "allow"), ("Bash", "allow")]
        states = await _states(home, task_id)
        assert states[:3] == ["provisioning", "provisioning", "running"] and states.count("failed") == 1


def test_a_full_disk_before_a_run_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with small_disk(tmp_path / "home", "40m") as disk:
        home = disk.root
        disk.fill(leave=4 * 2**20)
        args = asyncio.run(_run_args(tmp_path, "--scenario", str(_scenario(tmp_path, [_tool("Read",
                                                                                            file_path="x")]))))
        done = subprocess.run([*AGENT_RUNNER, *args], env=_env(home), capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("agent-runner:")]
        assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
        assert errors[0].startswith(f"agent-runner: the disk holding AGENT_RUNNER_HOME ({home}) is full: ")
        assert "free space there and start again" in errors[0]
        assert not (home / "tasks").exists() and not (home / "state.db").exists()  # nothing was started

        serve = subprocess.run([*AGENT_RUNNER, "serve"], env=_env(home, AGENT_API_TOKEN="t", AGENT_RUNNER_REPO=args[2]),
                               capture_output=True, text=True, timeout=120)
        assert serve.returncode == 2 and serve.stderr.strip().splitlines() == errors, serve.stderr


# --- malformed files -----------------------------------------------------------------------------------------


MALFORMED_SCENARIOS = {
    "broken YAML": (b"turns: [[{type: text, text: hi}]\n", r"scenario .*broken YAML\.yaml:2: not valid YAML: "),
    "wrong shape": (b"turns: 3\n", r"scenario .*: 'turns' must be a list of turns$"),
    "bad block": (b"turns:\n  - - {type: tool_use}\n", r"scenario .*: turn 0 block 0 must be a text block"),
    "not UTF-8": (b"turns: \xff\xfe\n", r"scenario .*: cannot be read: 'utf-8' codec can't decode"),
}


@pytest.mark.parametrize("case", MALFORMED_SCENARIOS)
def test_run_with_a_malformed_scenario_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    content, expected = MALFORMED_SCENARIOS[case]
    scenario = tmp_path / f"{case}.yaml"
    scenario.write_bytes(content)
    args = asyncio.run(_run_args(tmp_path, "--scenario", str(scenario)))
    done = subprocess.run([*AGENT_RUNNER, *args], env=_env(tmp_path / "home"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("agent-runner:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.match(f"agent-runner: {expected}", errors[0]), errors[0]
    assert done.stdout == "" and not (tmp_path / "home" / "tasks").exists()


MALFORMED_POLICIES = {
    "broken YAML": ("schema: 1\nversion: x\nprofiles: [unclosed\n", r"policy\.yaml:4: not valid YAML"),
    "wrong shape": ("schema: 1\nversion: x\nlimits: 5\n", r"policy\.yaml:3: limits must be a mapping"),
}


@pytest.mark.parametrize("case", MALFORMED_POLICIES)
def test_run_and_serve_with_a_malformed_policy_exit_2_with_one_line(tmp_path: Path, case: str) -> None:
    text, expected = MALFORMED_POLICIES[case]
    bad = tmp_path / "policy.yaml"
    bad.write_text(text)
    args = asyncio.run(_run_args(tmp_path, "--policy", str(bad), "--scenario",
                                 str(_scenario(tmp_path, [_tool("Read", file_path="x")]))))
    home = tmp_path / "home"
    ran = subprocess.run([*AGENT_RUNNER, *args], env=_env(home), capture_output=True, text=True, timeout=120)
    served = subprocess.run([*AGENT_RUNNER, "serve"], capture_output=True, text=True, timeout=120,
                            env=_env(home, AGENT_API_TOKEN="t", AGENT_RUNNER_REPO=args[2],
                                     AGENT_RUNNER_POLICY=str(bad)))
    for done in (ran, served):
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("agent-runner:")]
        assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
        assert errors[0].startswith("agent-runner: the policy is not valid: ") and re.search(expected, errors[0])
    assert not (home / "tasks").exists()
