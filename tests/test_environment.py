"""A bad environment gives one clear line and loses nothing: no engine, a dead engine, no disk, a bad policy."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import policy
from runner.model_proxy import ModelProxy
from runner.models import TaskState
from runner.sample import create_sample_repo
from runner.sandbox.docker import DockerSandbox
from runner.store import Store
from runner.supervisor import Deps, run_task

ROOT = Path(__file__).resolve().parents[1]
FIX_SCENARIO = ROOT / "runner" / "data" / "scenarios" / "fix-balance.yaml"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


def _dead_socket(tmp_path: Path) -> str:
    return f"unix://{tmp_path / 'no-engine.sock'}"


@needs_root
def test_engine_script_without_root_and_without_engine_says_what_to_do(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "DOCKER_HOST": _dead_socket(tmp_path)}
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           str(ROOT / "scripts" / "docker-engine.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not root" in lines[0] and "install Docker" in lines[0]


def test_run_with_no_engine_fails_with_one_line(tmp_path: Path) -> None:
    repo = asyncio.run(create_sample_repo(tmp_path / "origin"))
    env = {**os.environ, "DOCKER_HOST": _dead_socket(tmp_path), "AGENT_RUNNER_HOME": str(tmp_path / "home")}
    env.pop("ANTHROPIC_API_KEY", None)
    done = subprocess.run([sys.executable, "-m", "runner.cli", "run", "--repo", str(repo), "--prompt", "x",
                           "--dry-run", "--scenario", str(FIX_SCENARIO)], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("agent-runner: no Docker engine answers") and "docker-engine.sh" in last
    assert "Traceback" not in done.stderr


async def test_engine_dying_mid_task_fails_the_task_with_the_reason(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # The engine is first needed after provisioning: the task must end `failed`, its record kept.
    monkeypatch.setenv("DOCKER_HOST", _dead_socket(tmp_path))
    repo = await create_sample_repo(tmp_path / "origin")
    sandbox = DockerSandbox()  # not entered: it connects on first use, after provisioning
    async with Store(tmp_path / "state.db") as store, ModelProxy("http://127.0.0.1:9", "unused") as proxy:
        deps = Deps(home=tmp_path, store=store, sandbox=sandbox, proxy=proxy, policy=policy.load_default(),
                    image="agent-runner/sandbox:latest")
        task = await store.create_task(kind="fix", prompt="x", repo=str(repo), source="test", requested_by="test",
                                       dry_run=True)
        result = await run_task(deps, task)
        record = await store.get_task(task.id)
    await sandbox.aclose()
    assert result.status is TaskState.FAILED and record.state is TaskState.FAILED
    assert "no Docker engine answers" in result.reason and record.base_sha


@needs_root
def test_image_build_without_disk_space_says_how_much_is_missing(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        env = {**os.environ, "TMPDIR": str(small), "SANDBOX_IMAGE": "agent-runner/sandbox:disk-test"}
        done = subprocess.run([str(ROOT / "sandbox-image" / "build.sh"), str(ROOT / ".venv" / "bin" / "python")],
                              env=env, capture_output=True, text=True)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "not enough disk" in last and "MiB needed" in last


def test_run_with_a_broken_policy_fails_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("schema: 1\nversion: x\nprofiles: [unclosed\n")
    env = {**os.environ, "AGENT_RUNNER_HOME": str(tmp_path / "home")}
    repo = tmp_path / "bot.git"  # a real repository, so the policy is what is refused (the path is checked first)
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    done = subprocess.run([sys.executable, "-m", "runner.cli", "run", "--repo", str(repo), "--prompt", "x",
                           "--policy", str(bad), "--scenario", str(FIX_SCENARIO)], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert "the policy is not valid" in done.stderr, done.stderr
    assert re.search(r"policy\.yaml:\d+: not valid YAML", done.stderr)  # the line, for the owner to fix
    assert not (tmp_path / "home" / "tasks").exists()
