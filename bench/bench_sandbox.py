"""Sandbox start-up overhead and memory, against the floor of `docker run --rm IMAGE true` in the same run.

Run: .venv/bin/python bench/bench_sandbox.py [--files 5000] [--rounds 3] [--runtime runc --runtime runsc]
Measures, on a repository of about --files files and for each OCI runtime the engine has (runc, and gVisor's
runsc when registered): the time from `agent-runner run` starting to the agent's first model request (mirror
+ clone + strip + container + the workspace's tar copied in + forwarder + CLI start), the bare container floor
under the same runtime, their ratio (goal, issue 4: at most 3x), and peak memory of one sandbox (its cgroup)
and of the supervisor process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.config import DEFAULT_SANDBOX_IMAGE  # noqa: E402
from runner.sandbox.base import LABEL_TASK  # noqa: E402
from runner.scripted_model import Scenario, TextBlock, serve_scripted_model  # noqa: E402

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "init.defaultBranch=main"]


def make_repo(root: Path, files: int) -> Path:
    work = root / "work"
    for i in range(files):
        path = work / f"pkg{i % 50}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"def f{i}():\n    return {i}\n")
    (work / ".env").write_text("SECRET=never-in-the-sandbox\n")
    subprocess.run([*GIT, "init", "-q"], cwd=work, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=work, check=True)
    subprocess.run([*GIT, "commit", "-qm", "bench"], cwd=work, check=True)
    bare = root / "repo.git"
    subprocess.run([*GIT, "clone", "-q", "--bare", str(work), str(bare)], check=True)
    return bare


def docker_floor(image: str, runtime: str) -> float:
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--runtime", runtime, "--network", "none", image, "true"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def engine_runtimes() -> list[str]:
    import docker

    from runner.docker_engine import runtimes

    client = docker.from_env()
    try:
        return [r for r in ("runc", "runsc") if r in runtimes(client)]
    finally:
        client.close()


def cgroup_peak(container_id: str) -> int:
    for path in (f"/sys/fs/cgroup/memory/docker/{container_id}/memory.max_usage_in_bytes",
                 f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/memory.peak"):
        try:
            return int(Path(path).read_text())
        except (OSError, ValueError):
            continue
    return 0


async def first_request_time(repo: Path, home: Path, runtime: str) -> tuple[float, float, int, int]:
    """Seconds to the first model request from the process start and from the task start (the supervisor's
    "provisioning" line: what a running `serve` pays per task), peak sandbox bytes, peak supervisor bytes."""
    import docker

    client = docker.from_env()
    scenario = Scenario.of([TextBlock("benchmark")], final_text="done")
    async with serve_scripted_model(scenario) as model:
        env = {**os.environ, "AGENT_RUNNER_HOME": str(home), "ANTHROPIC_BASE_URL": model.base_url,
               "ANTHROPIC_API_KEY": "bench-key", "AGENT_RUNNER_RUNTIME": runtime}
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runner.cli", "run", "--repo", str(repo), "--prompt", "bench", "--dry-run",
            "--json", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        task_started = None

        async def watch_progress() -> None:
            nonlocal task_started
            assert proc.stderr is not None
            while line := await proc.stderr.readline():
                if task_started is None and b"provisioning" in line:
                    task_started = time.perf_counter() - started

        watcher = asyncio.create_task(watch_progress())
        first = None
        peak_sandbox = 0
        while proc.returncode is None:
            if first is None and any(r.path.endswith("/v1/messages") for r in model.requests):
                first = time.perf_counter() - started
            for container in client.containers.list(filters={"label": LABEL_TASK}):
                peak_sandbox = max(peak_sandbox, cgroup_peak(container.id))
            try:
                await asyncio.wait_for(proc.wait(), 0.02)
            except TimeoutError:
                pass
        await watcher
    client.close()
    peak_supervisor = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if first is None or task_started is None:
        raise RuntimeError("the run made no model request")
    return first, first - task_started, peak_sandbox, peak_supervisor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtime", action="append", help="runc, runsc (default: each the engine has)")
    parser.add_argument("--image", default=os.environ.get("AGENT_RUNNER_SANDBOX_IMAGE", DEFAULT_SANDBOX_IMAGE))
    args = parser.parse_args()
    print(f"repository: {args.files} files; rounds: {args.rounds} (medians)")
    with tempfile.TemporaryDirectory(prefix="agent-runner-bench-") as tmp:
        root = Path(tmp)
        repo = make_repo(root, args.files)
        for runtime in args.runtime or engine_runtimes():
            docker_floor(args.image, runtime)  # warm the engine's caches for both sides
            floors, firsts, in_task, sandbox_peaks, supervisor_peaks = [], [], [], [], []
            for _ in range(args.rounds):
                floors.append(docker_floor(args.image, runtime))
                # One home for all rounds: the mirror is warm after the first, as in a running supervisor.
                first, task_first, sandbox_peak, supervisor_peak = asyncio.run(
                    first_request_time(repo, root / f"home-{runtime}", runtime))
                firsts.append(first)
                in_task.append(task_first)
                sandbox_peaks.append(sandbox_peak)
                supervisor_peaks.append(supervisor_peak)
            floor, first, task_first = statistics.median(floors), statistics.median(firsts), statistics.median(in_task)
            print(f"[{runtime}] docker run --rm IMAGE true (floor):     {floor:6.2f} s")
            print(f"[{runtime}] task start -> first model request:      {task_first:6.2f} s   "
                  f"{task_first / floor:6.2f}x (goal <= 3x)")
            print(f"[{runtime}] process start -> first model request:   {first:6.2f} s   {first / floor:6.2f}x"
                  " (adds the interpreter and imports)")
            print(f"[{runtime}] peak memory, one sandbox (cgroup):      {max(sandbox_peaks) / 2**20:6.0f} MiB")
            print(f"[{runtime}] peak memory, supervisor (maxrss):       {max(supervisor_peaks) / 2**20:6.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
