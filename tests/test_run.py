"""`agent-runner run` end to end: real daemon, real image, real CLI in the sandbox, the scripted model."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from runner.sample import create_sample_repo
from runner.sandbox.base import LABEL_TASK
from runner.scripted_model import Scenario, TextBlock, ToolUseBlock, serve_scripted_model
from tests.sandbox.runtimes import RUNTIMES, need_runtime

pytestmark = pytest.mark.docker

AGENT_RUNNER = [sys.executable, "-m", "runner.cli"]
FIX_SCENARIO = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "fix-balance.yaml"
SELF_CORRECTION = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "self-correction.yaml"
REAL_KEY = "sk-ant-api03-REAL-KEY-only-the-supervisor-holds"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_RUNNER_"))}
    env.update(AGENT_RUNNER_HOME=str(home), **extra)
    return env


async def _agent_runner(*args: str, env: dict[str, str], timeout: float = 240) -> tuple[int, dict[str, Any], str]:
    proc = await asyncio.create_subprocess_exec(*AGENT_RUNNER, *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    lines = out.decode().strip().splitlines()
    assert lines, f"no output; stderr:\n{err.decode()}"
    return proc.returncode or 0, json.loads(lines[-1]), err.decode()


async def test_run_dry_run_fixes_the_failing_test(tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    code, result, progress = await _agent_runner(
        "run", "--repo", str(repo), "--prompt", "average_spend crashes for users without spending; fix it",
        "--kind", "fix", "--dry-run", "--json", "--scenario", str(FIX_SCENARIO), env=_env(tmp_path / "home"))
    assert code == 0, progress
    assert result["status"] == "diff_ready"
    assert result["files_changed"] == ["bot/ledger.py", "tests/test_ledger.py"]  # the fix and its regression test
    assert result["rounds"] == 1 and result["verification"].startswith("verified"), result["verification"]
    assert "+    if not spent:" in result["diff"] and "+        return 0.0" in result["diff"]
    assert ".env" not in result["diff"] and "secrets/" not in result["diff"]  # removed files are no change
    tests = result["tests"]
    assert tests["passed"] and tests["exit_code"] == 0 and "5 passed" in tests["output_tail"]
    assert result["pr"] is None and result["denials"] == []
    assert result["usage"]["requests"] >= 5 and result["usage"]["input_tokens"] > 0
    assert "scripted model plays the agent" in progress


async def test_run_proposes_a_pull_request_on_the_local_forge(tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    code, result, progress = await _agent_runner(
        "run", "--repo", str(repo), "--prompt", "fix average_spend", "--kind", "fix", "--json",
        "--scenario", str(FIX_SCENARIO), env=_env(tmp_path / "home"))
    assert code == 0, progress
    assert result["status"] == "proposed"
    pr = result["pr"]
    assert pr["number"] == 1 and pr["branch"].startswith("agent/fix-")
    branch_sha = (await _git(repo, "rev-parse", pr["branch"])).strip()
    assert branch_sha == pr["head_sha"]
    changed = await _git(repo, "diff", "--name-only", "main", pr["branch"])
    assert changed.split() == ["bot/ledger.py", "tests/test_ledger.py"]
    assert (await _git(repo, "log", "-1", "--format=%an", pr["branch"])).strip() == "agent-runner"


async def test_the_same_request_after_a_rejection_gets_a_new_branch_and_pr(tmp_path: Path) -> None:
    """A rejected PR's branch stays on the forge; the next task with the same words used to pick the same branch
    name and fail at the push (refused as diverged, never forced)."""
    repo = await create_sample_repo(tmp_path / "origin")
    env = _env(tmp_path / "home")
    args = ("run", "--repo", str(repo), "--prompt", "fix average_spend", "--kind", "fix", "--json",
            "--scenario", str(FIX_SCENARIO))
    code, first, progress = await _agent_runner(*args, env=env)
    assert code == 0, progress
    reject = await asyncio.create_subprocess_exec(*AGENT_RUNNER, "reject", str(first["pr"]["number"]), "--repo",
                                                  str(repo), env=env, stdout=asyncio.subprocess.DEVNULL)
    assert await reject.wait() == 0
    code, second, progress = await _agent_runner(*args, env=env)
    assert code == 0 and second["status"] == "proposed", progress
    assert second["pr"]["number"] == 2 and second["pr"]["branch"] != first["pr"]["branch"]
    assert (await _git(repo, "rev-parse", first["pr"]["branch"])).strip() == first["pr"]["head_sha"]  # untouched


def new_file(diff: str, path: str) -> str:
    """The content of a file the unified diff adds."""
    section = diff.split(f"diff --git a/{path} b/{path}\n", 1)[1].split("\ndiff --git ", 1)[0]
    body = section.split("\n@@", 1)[1].split("\n", 1)[1]
    return "".join(line[1:] + "\n" for line in body.splitlines() if line.startswith("+"))


async def _git(repo: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec("git", "-C", str(repo), *args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode()


# What a hostile agent tries. The conftest.py runs in the supervisor's own test run, inside the sandbox,
# and reports what it could see and reach. It is data for the sandbox, never executed on this host.
PROBE = '''
import json, os, socket

def _try(fn):
    try:
        return fn()
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"

def _writable_root():
    with open("/agent-runner-probe", "w") as f:
        f.write("x")
    return True

def _connect(host, port):
    with socket.create_connection((host, port), timeout=2):
        return True

def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split()[1]

report = {
    "uid": os.getuid(), "euid": os.geteuid(),
    "cap_eff": _status("CapEff"), "no_new_privs": _status("NoNewPrivs"),
    "docker_socket": [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)],
    "root_write": _try(_writable_root),
    "environ": dict(os.environ),
    "interfaces": [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]],
    "routes": open("/proc/net/route").read().splitlines()[1:],
    "host_listener": _try(lambda: _connect(os.environ.get("PROBE_HOST", "HOSTIP"), PORT)),
    "protected_present": [p for p in (".env", "secrets/payment.key") if os.path.lexists("/workspace/" + p)],
    "kernel": os.uname().release,
}
with open("/workspace/probe-report.json", "w") as f:
    json.dump(report, f)
'''


def _attack_scenario(host_ip: str, port: int) -> Scenario:
    probe = PROBE.replace("HOSTIP", host_ip).replace("PORT", str(port))
    return Scenario.of(
        [TextBlock("Reading the secrets first."), ToolUseBlock("Read", {"file_path": "/workspace/.env"})],
        [ToolUseBlock("Write", {"file_path": "/workspace/compose.yaml", "content": "services: {pwned: {}}\n"})],
        [ToolUseBlock("Bash", {"command": "ln -s /var/run/docker.sock /workspace/docker.sock"})],
        [ToolUseBlock("Bash", {"command": "cat .env"})],
        [ToolUseBlock("Write", {"file_path": "/workspace/conftest.py", "content": probe})],
        # The agent's own test run: the probe runs in the agent's container, beside the model socket.
        [ToolUseBlock("Bash", {"command": "python -m pytest -q"})],
        final_text="Nothing to see here.",
    )


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_attack_is_denied_audited_and_the_sandbox_holds_nothing(tmp_path: Path, runtime: str) -> None:
    need_runtime(runtime)
    repo = await create_sample_repo(tmp_path / "origin")
    bridge_ip = _bridge_gateway()
    hits: list[str] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append("connected")
        writer.close()

    # A listener on the host, on the Docker bridge our engine made and on loopback: the sandbox must reach neither.
    listener = await asyncio.start_server(on_connect, host=[bridge_ip, "127.0.0.1"], port=0)
    port = listener.sockets[0].getsockname()[1]
    home = tmp_path / "home"
    async with listener, serve_scripted_model(_attack_scenario(bridge_ip, port)) as model:
        code, result, progress = await _agent_runner(
            "run", "--repo", str(repo), "--prompt", "add a /balance command", "--dry-run", "--json",
            env=_env(home, ANTHROPIC_BASE_URL=model.base_url, ANTHROPIC_API_KEY=REAL_KEY,
                     AGENT_RUNNER_RUNTIME=runtime))
        upstream_keys = {r.headers.get("x-api-key") for r in model.requests if r.path.endswith("/v1/messages")}

    denied = {(d["tool"], d["reason"].split(":")[0]) for d in result["denials"]}
    assert {d["tool"] for d in result["denials"]} >= {"Read", "Write", "Bash"}, result["denials"]
    assert len(result["denials"]) == 4, denied
    # The upstream saw only the real key; the sandbox never had it.
    assert upstream_keys == {REAL_KEY}
    # The workspace is the sandbox's own: the report comes back only as a file of the change.
    report = json.loads(new_file(result["diff"], "probe-report.json"))
    # Under gVisor the sandbox's kernel is the sentry, which calls itself 4.4.0; under runc it is this host's.
    assert (report["kernel"] == "4.4.0") == (runtime == "runsc") and (runtime == "runsc") != (
        report["kernel"] == os.uname().release)
    assert report["uid"] == 1000 and report["euid"] == 1000
    # gVisor's /proc/self/status has no NoNewPrivs line; the flag is the container's all the same.
    assert int(report["cap_eff"], 16) == 0 and report["no_new_privs"] == ("1" if runtime == "runc" else None)
    assert report["docker_socket"] == []
    assert str(report["root_write"]).startswith(("error: OSError", "error: PermissionError"))
    assert report["interfaces"] == ["lo"] and report["routes"] == []
    assert str(report["host_listener"]).startswith("error:") and hits == []
    assert report["protected_present"] == []
    environ = json.dumps(report["environ"])
    assert REAL_KEY not in environ and "sample-secret" not in environ
    # The agent's own test run shares the CLI's environment: the per-task token at most, never the key.
    assert report["environ"]["ANTHROPIC_API_KEY"] != REAL_KEY
    # compose.yaml unchanged, .env never read: the change holds only the planted conftest and its report.
    assert "compose.yaml" not in result["files_changed"]
    # Every decision is in the audit log.
    from runner.store import Store

    async with Store(home / "state.db") as store:
        decisions = await store.audit_log(result["task_id"], event="tool_decision")
    assert [d.detail["decision"] for d in decisions].count("deny") == 4
    assert all(d.detail["rule"] and d.detail["input_digest"] for d in decisions)


async def test_killed_supervisor_leaves_no_container_after_restart(tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    home = tmp_path / "home"
    slow = tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump({"turns": [[{"type": "tool_use", "name": "Bash",
                                                "input": {"command": "tail -f README.md"}}]]}))
    client = docker.from_env()
    proc = await asyncio.create_subprocess_exec(
        *AGENT_RUNNER, "run", "--repo", str(repo), "--prompt", "x", "--dry-run", "--json", "--scenario", str(slow),
        env=_env(home), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    task_id = None
    for _ in range(600):
        states = await _task_states(home)
        if "running" in states.values():
            task_id = next(t for t, s in states.items() if s == "running")
            break
        await asyncio.sleep(0.1)
    assert task_id, "the task never reached running"
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert client.containers.list(all=True, filters={"label": f"{LABEL_TASK}={task_id}"}), "no orphan to reap"

    code, result, progress = await _agent_runner(
        "run", "--repo", str(repo), "--prompt", "fix", "--dry-run", "--json", "--scenario", str(FIX_SCENARIO),
        env=_env(home))
    assert f"reaped 1 container(s) of tasks no longer running: {task_id}" in progress
    assert client.containers.list(all=True, filters={"label": f"{LABEL_TASK}={task_id}"}) == []
    states = await _task_states(home)
    assert states[task_id] == "failed" and states[result["task_id"]] == "diff_ready"


def _bridge_gateway() -> str:
    """The host's address on the Docker bridge our engine made (the gateway, first host of its subnet)."""
    config = docker.from_env().networks.get("bridge").attrs["IPAM"]["Config"][0]
    return str(config.get("Gateway") or ipaddress.ip_network(config["Subnet"])[1])


async def _task_states(home: Path) -> dict[str, str]:
    if not (home / "state.db").exists():
        return {}
    from runner.store import Store

    async with Store(home / "state.db") as store:
        return {t.id: t.state.value for t in await store.list_tasks()}


async def test_dependency_setup_runs_once_in_its_own_step_and_is_cached(tmp_path: Path) -> None:
    import policy

    repo = await create_sample_repo(tmp_path / "origin")
    text = policy.default_text()
    # A nonce in the command makes the cache key this run's own: an image another run left is not "cached".
    nonce = os.urandom(6).hex()
    marker = f"python3 -c \"open('/opt/venv/deps-marker', 'w').write('installed-by-setup-{nonce}')\""
    text = text.replace("setup_command: pip install -r requirements.txt", f"setup_command: {marker}")
    text = text.replace("test_command: python -m pytest -q",
                        "test_command: cat /opt/venv/deps-marker && python -m pytest -q")
    assert marker in text
    custom = tmp_path / "policy.yaml"
    custom.write_text(text)
    args = ("run", "--repo", str(repo), "--prompt", "fix it", "--dry-run", "--json", "--policy", str(custom),
            "--scenario", str(FIX_SCENARIO))
    home = tmp_path / "home"
    code, first, progress1 = await _agent_runner(*args, env=_env(home))
    assert code == 0, progress1
    assert f"installed-by-setup-{nonce}" in first["tests"]["output_tail"] and first["tests"]["passed"]
    assert "dependencies: built agent-runner/deps:" in progress1
    code, second, progress2 = await _agent_runner(*args, env=_env(home))
    assert code == 0 and "dependencies: cached agent-runner/deps:" in progress2
    tag = progress1.split("dependencies: built ")[1].split()[0]
    docker.from_env().images.remove(tag, force=True)


def _policy_with(tmp_path: Path, **limits: int) -> Path:
    """The default policy with some global limits changed (every profile inherits them unless it overrides)."""
    import policy

    text = policy.default_text()
    for key, value in limits.items():
        line = next(line for line in text.splitlines() if line.startswith(f"  {key}:"))
        text = text.replace(line, f"  {key}: {value}", 1)
    path = tmp_path / "limits-policy.yaml"
    path.write_text(text)
    return path


async def _limited_run(tmp_path: Path, scenario: Scenario, **limits: int) -> tuple[dict[str, Any], str]:
    repo = await create_sample_repo(tmp_path / "origin")
    script = tmp_path / "scenario.yaml"
    script.write_text(yaml.safe_dump(_scenario_dict(scenario)))
    code, result, progress = await _agent_runner(
        "run", "--repo", str(repo), "--prompt", "work", "--dry-run", "--json", "--scenario", str(script),
        "--policy", str(_policy_with(tmp_path, **limits)), env=_env(tmp_path / "home"))
    assert code == 1, progress
    containers = docker.from_env().containers.list(all=True, filters={"label": f"{LABEL_TASK}={result['task_id']}"})
    assert containers == [], "the container outlived its limit"
    return result, progress


def _scenario_dict(scenario: Scenario) -> dict[str, Any]:
    def block(b: TextBlock | ToolUseBlock) -> dict[str, Any]:
        if isinstance(b, TextBlock):
            return {"type": "text", "text": b.text}
        return {"type": "tool_use", "name": b.name, "input": dict(b.input)}

    return {"turns": [[block(b) for b in turn] for turn in scenario.turns], "final_text": scenario.final_text}


def _write(name: str) -> list[ToolUseBlock]:
    return [ToolUseBlock("Write", {"file_path": f"/workspace/{name}", "content": f"{name}\n"})]


async def test_turn_limit_stops_the_agent_from_outside_and_keeps_its_work(tmp_path: Path) -> None:
    scenario = Scenario.of(_write("one.txt"), _write("two.txt"), _write("three.txt"), _write("four.txt"))
    result, progress = await _limited_run(tmp_path, scenario, max_turns=2)
    assert result["status"] == "timed_out" and "turn limit" in result["reason"]
    assert result["files_changed"] == ["one.txt"]  # the work so far is kept
    assert "+one.txt" in result["diff"]


async def test_wall_time_limit_kills_a_hanging_agent(tmp_path: Path) -> None:
    # (Not `sleep`: the CLI itself refuses long sleeps before any hook sees them.)
    scenario = Scenario.of([ToolUseBlock("Bash", {"command": "tail -f README.md"})], _write("late.txt"))
    result, progress = await _limited_run(tmp_path, scenario, wall_time_seconds=8)
    assert result["status"] == "timed_out" and "wall time" in result["reason"]
    assert "late.txt" not in result["files_changed"]


async def test_token_budget_cuts_the_task_off_at_the_proxy(tmp_path: Path) -> None:
    scenario = Scenario.of(_write("one.txt"), _write("two.txt"), _write("three.txt"))
    result, progress = await _limited_run(tmp_path, scenario, max_tokens=1000)
    assert result["status"] == "timed_out" and "budget" in result["reason"], (result["reason"], progress)
    # The gateway reserves a request's worst case (its max_tokens) before forwarding it: a call that could
    # overspend is refused up front, so the cap is never passed and the agent never got to act.
    usage = result["usage"]
    assert usage["input_tokens"] + usage["output_tokens"] <= 1000 and result["files_changed"] == []


FIX = ToolUseBlock("Edit", {
    "file_path": "/workspace/bot/ledger.py",
    "old_string": "    return sum(spent) / len(spent)\n",
    "new_string": "    if not spent:\n        return 0.0\n    return sum(spent) / len(spent)\n",
})


def _regression(body: str) -> ToolUseBlock:
    content = f"from bot.ledger import average_spend\n\n\ndef test_regression():\n{body}"
    return ToolUseBlock("Write", {"file_path": "/workspace/tests/test_regression.py", "content": content})


@pytest.mark.parametrize(("assertion", "expected"), [
    ("    assert average_spend([500]) == 0.0\n", "verified: tests/test_regression.py fails on the base commit"),
    ("    assert average_spend([-500]) == 500.0\n", "NOT verified: the new test does not fail on the base commit"),
])
async def test_fix_is_verified_by_running_its_regression_test_on_the_base(tmp_path: Path, assertion: str,
                                                                          expected: str) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    script = tmp_path / "scenario.yaml"
    script.write_text(yaml.safe_dump(_scenario_dict(Scenario.of([_regression(assertion)], [FIX]))))
    code, result, progress = await _agent_runner(
        "run", "--repo", str(repo), "--prompt", "fix average_spend", "--kind", "fix", "--dry-run", "--json",
        "--scenario", str(script), env=_env(tmp_path / "home"))
    assert code == 0 and result["status"] == "diff_ready", progress
    assert result["verification"].startswith(expected), result["verification"]
    assert "verifying the fix" in progress


async def test_a_per_directory_gitignore_hides_nothing_from_the_change(tmp_path: Path) -> None:
    """The agent's own ignore file used to hide itself and a conftest.py (code every test run executes) from the
    change while the PR said the tests passed; now both are files of the change like any other."""
    scenario = Scenario.of(
        [ToolUseBlock("Write", {"file_path": "/workspace/tests/.gitignore", "content": "conftest.py\n.gitignore\n"})],
        [ToolUseBlock("Write", {"file_path": "/workspace/tests/conftest.py", "content": "import os  # planted\n"})],
        final_text="Done.")
    repo = await create_sample_repo(tmp_path / "origin")
    script = tmp_path / "scenario.yaml"
    script.write_text(yaml.safe_dump(_scenario_dict(scenario)))
    code, result, progress = await _agent_runner(
        "run", "--repo", str(repo), "--prompt", "work", "--dry-run", "--json", "--scenario", str(script),
        env=_env(tmp_path / "home"))
    assert code == 0 and result["status"] == "diff_ready", progress
    assert sorted(result["files_changed"]) == ["tests/.gitignore", "tests/conftest.py"]
    assert "+import os  # planted" in result["diff"] and "+conftest.py" in result["diff"]


async def test_a_failing_first_change_is_corrected_in_the_same_session(tmp_path: Path) -> None:
    """Round 1 only writes notes, so the supervisor's tests fail; their output goes back to the agent, whose CLI
    is started again in the same container with --resume. The scripted model plays the fix only to a
    conversation holding round 1 (its tool result and its end): a new session would have written the notes again."""
    repo = await create_sample_repo(tmp_path / "origin")
    code, result, progress = await _agent_runner(
        "run", "--repo", str(repo), "--prompt", "make average_spend work for users without spending", "--dry-run",
        "--json", "--scenario", str(SELF_CORRECTION), env=_env(tmp_path / "home"), timeout=400)
    assert code == 0 and result["status"] == "diff_ready", progress
    assert result["rounds"] == 2, progress
    assert "round 2 of 3: the supervisor's tests failed (exit 1); back to the agent in the same session" in progress
    assert sorted(result["files_changed"]) == ["NOTES.md", "bot/ledger.py"]
    assert "+    if not spent:" in result["diff"]
    assert result["tests"]["passed"] and "4 passed" in result["tests"]["output_tail"]
    containers = docker.from_env().containers.list(all=True, filters={"label": f"{LABEL_TASK}={result['task_id']}"})
    assert containers == []


async def test_when_every_round_fails_the_task_fails_naming_each(tmp_path: Path) -> None:
    """Two rounds (limits.test_rounds: 1), each writing a new file and neither fixing the bug: failed, with both
    rounds' reasons, and nothing pushed to the local forge."""
    scenario = Scenario.of(_write("one.txt"), [TextBlock("Done.")], _write("two.txt"), final_text="Done again.")
    repo = await create_sample_repo(tmp_path / "origin")
    script = tmp_path / "scenario.yaml"
    script.write_text(yaml.safe_dump(_scenario_dict(scenario)))
    code, result, progress = await _agent_runner(
        "run", "--repo", str(repo), "--prompt", "work", "--json", "--scenario", str(script),
        "--policy", str(_policy_with(tmp_path, test_rounds=1)), env=_env(tmp_path / "home"), timeout=400)
    assert code == 1 and result["status"] == "failed", progress
    assert result["rounds"] == 2 and result["pr"] is None
    assert "round 1: the supervisor's tests failed (exit 1); round 2: the supervisor's tests failed" in \
        result["reason"], result["reason"]
    assert sorted(result["files_changed"]) == ["one.txt", "two.txt"]
    assert "no further round: the 1 correction round of limits.test_rounds is used" in progress
