"""Load on loopback (issue 6): a burst of 1,000 commands at the real `agent-runner serve` with two sandboxes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import policy
from runner.models import TaskState
from runner.sample import create_sample_repo
from runner.sandbox.base import LABEL_TASK
from tests.fakes.app import raw_post
from tests.fakes.net import free_port

TOKEN = "owner-token-for-load"
OWNER = {"Authorization": f"Bearer {TOKEN}"}
SCENARIO = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "fix-balance.yaml"
BURST = 1000
LIMIT = 20  # commands per hour: this many real tasks are accepted, the rest refused
MAX_SANDBOXES = 2
DRAIN_TIMEOUT = 480.0  # 20 real sandbox runs, two at a time, each fix with its self-correction round, 2 cores
TERMINAL = {s.value for s in TaskState if s.terminal}


def _policy_text(commands_per_hour: int) -> str:
    """The shipped default policy with only the owner's hourly allowance changed."""
    text, count = re.subn(r"(?m)^(\s*commands_per_hour:\s*)\d+", rf"\g<1>{commands_per_hour}", policy.default_text())
    assert count == 1
    assert policy.load(text).rate_limits.commands_per_hour == commands_per_hour
    return text


def _raise_file_limit(needed: int) -> None:
    # Both ends hold a socket per client; the server inherits the limit from us.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard),
                                                    hard))


def _serving_pid(pid: int, port: int) -> int:
    """The pid that holds the listening socket: `pid` itself, unless it is a wrapper around the server."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    candidates = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for candidate in candidates:
        fds = Path(f"/proc/{candidate}/fd")
        if any(os.readlink(fd) in inodes for fd in fds.iterdir() if fd.is_symlink()):
            return candidate
    raise AssertionError(f"no process among {candidates} listens on port {port}")


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


@pytest.mark.docker
async def test_serve_burst_of_1000_commands_answers_all_and_drains_with_two_sandboxes(
        tmp_path: Path, docker_client: Any) -> None:
    from runner.scripted_model import Scenario, serve_scripted_model

    _raise_file_limit(4 * BURST)
    repo = await create_sample_repo(tmp_path / "origin")
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(_policy_text(LIMIT))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_"))}
    env.update(AGENT_RUNNER_HOME=str(tmp_path / "home"), AGENT_RUNNER_REPO=str(repo), AGENT_RUNNER_PORT=str(port),
               AGENT_API_TOKEN=TOKEN, ANTHROPIC_API_KEY="scripted-anything", AGENT_RUNNER_POLICY=str(policy_file),
               AGENT_RUNNER_MAX_SANDBOXES=str(MAX_SANDBOXES))
    body = json.dumps({"prompt": "average_spend crashes for users without spending; fix it", "kind": "fix",
                       "dry_run": True}).encode()

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""

    def ours(containers: list[Any], accepted: set[str]) -> list[Any]:
        # Other tests may run sandboxes on the same engine: count only this server's tasks.
        return [c for c in containers if c.labels.get(LABEL_TASK) in accepted]

    async with serve_scripted_model(Scenario.from_file(SCENARIO)) as model, \
            httpx.AsyncClient(base_url=url, timeout=30) as client:
        with log_path.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runner.cli", "serve", env={**env, "ANTHROPIC_BASE_URL": model.base_url},
                stdout=log, stderr=log)  # a file, not a pipe: a full pipe would stall the server mid-burst
        try:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/health")).status_code == 200:
                            break
                    assert proc.returncode is None, log_tail()
                    await asyncio.sleep(0.1)
            server_pid = _serving_pid(proc.pid, port)

            started = time.perf_counter()
            answers = await asyncio.gather(*(raw_post(port, "/agent/command", body, TOKEN) for _ in range(BURST)))
            burst_seconds = time.perf_counter() - started

            accepted = {data["task_id"] for status, _, data in answers if status == 202}
            drain_started = time.perf_counter()
            max_running = max_containers = 0
            tasks: list[dict[str, Any]] = []
            async with asyncio.timeout(DRAIN_TIMEOUT):
                while True:
                    health = (await client.get("/health")).json()
                    running = await asyncio.to_thread(
                        docker_client.containers.list, filters={"label": LABEL_TASK, "status": "running"},
                        ignore_removed=True)  # a container can go between the list and its inspection
                    max_running = max(max_running, health["running"])
                    # Tasks with a container up: a task holds its agent's (kept for another round) and, while it
                    # is tested, a test and a verification container too; the limit is on tasks.
                    max_containers = max(max_containers, len({c.labels[LABEL_TASK] for c in ours(running, accepted)}))
                    tasks = (await client.get("/tasks", headers=OWNER, params={"limit": "1000"})).json()["tasks"]
                    if all(t["state"] in TERMINAL for t in tasks) and health["running"] == health["waiting"] == 0:
                        break
                    await asyncio.sleep(0.25)
            drain_seconds = time.perf_counter() - drain_started
            metrics = (await client.get("/metrics")).text
            peak_kib = _peak_rss_kib(server_pid)  # read last: the burst and all twenty runs are behind it
        finally:
            if proc.returncode is None:
                proc.terminate()
            await asyncio.wait_for(proc.wait(), 60)
    left = await asyncio.to_thread(docker_client.containers.list, all=True, filters={"label": LABEL_TASK},
                                   ignore_removed=True)

    codes = [status for status, _, _ in answers]
    print(f"\nload: {BURST} POST /agent/command from {BURST} clients in {burst_seconds:.2f}s = "
          f"{BURST / burst_seconds:.0f} requests/s ({codes.count(202)} accepted, {codes.count(429)} rate-limited); "
          f"queue drained in {drain_seconds:.0f}s with at most {max_containers} tasks' sandboxes running "
          f"(/health max {max_running}); supervisor peak RSS {peak_kib / 1024:.0f} MiB", file=sys.stderr)

    # Every request answered: accepted with a task id, or refused with when to try again.
    assert sorted(set(codes)) == [202, 429], log_tail()
    assert codes.count(202) == LIMIT and codes.count(429) == BURST - LIMIT
    assert len(accepted) == LIMIT
    for status, headers, data in answers:
        if status == 429:
            assert headers["retry-after"].isdigit() and int(headers["retry-after"]) > 0
            assert data["retry_after"] == int(headers["retry-after"])
    assert f'agent_runner_refusals_total{{reason="rate_limited"}} {BURST - LIMIT}' in metrics
    # None lost, none extra, and the queue drained: every accepted task ran to its end.
    assert {t["id"] for t in tasks} == accepted
    assert [t["state"] for t in tasks] == ["diff_ready"] * LIMIT, (sorted({t["reason"] for t in tasks}), log_tail())
    # Never more than two tasks in sandboxes at once, and both slots were used.
    assert max_running == MAX_SANDBOXES and max_containers <= MAX_SANDBOXES
    assert max_containers == MAX_SANDBOXES
    assert peak_kib < 1024 * 1024  # a sanity bound, not a benchmark: 1 GiB
    # uvicorn shuts the lifespan down on SIGTERM, then re-raises the signal, so -15 is its clean exit.
    assert proc.returncode in (0, -15), log_tail()
    assert ours(left, accepted) == []
