"""The deployable stack: compose.yaml validates, the supervisor image builds offline from the local base, and
the supervisor *in a container* runs a dry-run task through the host's Docker socket.

The container test is the design's "supervisor in a container" rule made concrete: AGENT_RUNNER_HOME is a host
directory mounted at the same path inside, because the daemon resolves the sandbox's bind mounts (workspace,
model proxy socket) on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.sample import create_sample_repo
from runner.scripted_model import Scenario, serve_scripted_model

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "scripts" / "build-supervisor-image.sh"
SUPERVISOR_IMAGE = os.environ.get("SUPERVISOR_IMAGE", "agent-runner/supervisor:latest")
LOCAL_BASE = "agent-runner/base:bookworm"
FIX_SCENARIO = ROOT / "runner" / "data" / "scenarios" / "fix-balance.yaml"
TOKEN = "stack-test-token"
SOCKET = "/var/run/docker.sock"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _compose() -> list[str]:
    """`docker compose` (v2) when the plugin exists, else `docker-compose` (v1, Debian's package)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor `docker-compose` exists (make compose installs it)", pytrace=False)


def test_compose_config_validates_with_the_example_env() -> None:
    result = subprocess.run([*_compose(), "--env-file", ".env.example", "-f", "compose.yaml", "config"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    import yaml

    services = yaml.safe_load(result.stdout)["services"]
    # The socket is in exactly one service: the supervisor.
    with_socket = [name for name, s in services.items() if any(SOCKET in str(v) for v in s.get("volumes", []))]
    assert with_socket == ["agent-runner"]
    home = services["agent-runner"]["environment"]["AGENT_RUNNER_HOME"]
    assert any(str(v).split(":")[1] == home for v in services["agent-runner"]["volumes"] if "home" in str(v))
    assert "healthcheck" in services["bot"] and services["bot"]["logging"]["driver"] == "loki"


def test_compose_config_refuses_a_missing_secret(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text("".join(line + "\n" for line in (ROOT / ".env.example").read_text().splitlines()
                           if not line.startswith("AGENT_API_TOKEN=")))
    result = subprocess.run([*_compose(), "--env-file", str(env), "-f", "compose.yaml", "config"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "AGENT_API_TOKEN" in result.stderr


def _build_supervisor() -> float:
    started = time.monotonic()
    result = subprocess.run([str(BUILD)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "BASE_IMAGE": os.environ.get("BASE_IMAGE", LOCAL_BASE)})
    assert result.returncode == 0, result.stderr[-3000:]
    return time.monotonic() - started


def test_example_bot_image_builds_from_the_local_base(docker_client: Any) -> None:
    tag = f"agent-runner/example-bot-test:{uuid.uuid4().hex[:8]}"
    try:
        result = subprocess.run(["docker", "build", "--quiet", "--build-arg", f"BASE_IMAGE={LOCAL_BASE}", "-t", tag,
                                 str(ROOT / "runner" / "data" / "sample-bot")], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def _bridge_gateway(docker_client: Any) -> str:
    config = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    return str(config.get("Gateway") or ipaddress.ip_network(config["Subnet"])[1])


def _chown_tree(root: Path, uid: int) -> None:
    for parent, dirs, files in os.walk(root):
        for name in (parent, *(os.path.join(parent, n) for n in dirs + files)):
            os.lchown(name, uid, uid)


async def test_supervisor_in_a_container_answers_health_and_runs_a_dry_run_through_the_socket(
    tmp_path: Path, docker_client: Any, sandbox_image: str
) -> None:
    build_seconds = _build_supervisor()
    # The shared home: the same path on the host and in the supervisor container.
    home = tmp_path / "home"
    repo = await create_sample_repo(home / "origin")
    if os.geteuid() == 0:
        _chown_tree(home, 1000)  # the image's user (the sandbox's uid too)
    user = [] if os.geteuid() == 0 else ["--user", f"{os.geteuid()}:{os.getegid()}"]
    socket_gid = os.stat(SOCKET).st_gid
    name = f"agent-runner-stack-test-{uuid.uuid4().hex[:8]}"
    gateway = _bridge_gateway(docker_client)
    async with serve_scripted_model(Scenario.from_file(FIX_SCENARIO), host=gateway) as model:
        started = time.monotonic()
        run = subprocess.run([
            "docker", "run", "-d", "--name", name, *user, "--group-add", str(socket_gid),
            "-v", f"{SOCKET}:{SOCKET}", "-v", f"{home}:{home}",
            "-e", f"AGENT_RUNNER_HOME={home}", "-e", f"AGENT_RUNNER_REPO={repo}",
            "-e", f"AGENT_API_TOKEN={TOKEN}", "-e", f"ANTHROPIC_BASE_URL={model.base_url}",
            "-e", "ANTHROPIC_API_KEY=scripted-anything", "-e", f"AGENT_RUNNER_SANDBOX_IMAGE={sandbox_image}",
            "-p", "127.0.0.1::8080", SUPERVISOR_IMAGE,
        ], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        try:
            port = subprocess.run(["docker", "port", name, "8080/tcp"], capture_output=True, text=True,
                                  check=True).stdout.split()[0].rsplit(":", 1)[1]
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                async with asyncio.timeout(60):
                    while True:
                        with contextlib.suppress(httpx.TransportError):
                            health = await client.get("/health")
                            if health.status_code == 200:
                                break
                        await asyncio.sleep(0.2)
                healthy_seconds = time.monotonic() - started
                assert health.json()["status"] == "ok"
                response = await client.post("/agent/command", headers=headers, json={
                    "prompt": "average_spend crashes for users without spending; fix it", "kind": "fix",
                    "dry_run": True})
                assert response.status_code == 202, response.text
                task_id = response.json()["task_id"]
                async with asyncio.timeout(300):
                    while True:
                        task = (await client.get(f"/tasks/{task_id}", headers=headers)).json()
                        if task["state"] in ("diff_ready", "failed", "cancelled", "proposed"):
                            break
                        await asyncio.sleep(0.5)
                task_seconds = time.monotonic() - started - healthy_seconds
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
            assert task["state"] == "diff_ready", (task, logs[-3000:])
            assert task["result"]["files_changed"] == ["bot/ledger.py", "tests/test_ledger.py"]
            assert task["result"]["tests"]["passed"]
            assert model.model.agent_requests, "the agent never reached the scripted model"
            # The image's HEALTHCHECK agrees (it first runs after its 15 s interval).
            async with asyncio.timeout(60):
                while (status := subprocess.run(
                        ["docker", "inspect", "--format", "{{.State.Health.Status}}", name],
                        capture_output=True, text=True).stdout.strip()) == "starting":
                    await asyncio.sleep(1)
            assert status == "healthy"
            print(f"\nsupervisor image build {build_seconds:.1f}s, container healthy {healthy_seconds:.1f}s, "
                  f"dry-run task {task_seconds:.1f}s")
        finally:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    # No sandbox outlives its task.
    leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=org.agent-runner.task={task_id}"],
                               capture_output=True, text=True).stdout.split()
    assert leftovers == []
