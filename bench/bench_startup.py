"""Start-up: `agent-runner --help`, `run --help` and `serve` to its first /health, against this run's floors.

Run: .venv/bin/python bench/bench_startup.py [--rounds 5] [--serve-rounds 3]
The floors are measured in the same run, because this machine is shared and its speed moves by the minute:
`python -c pass` (the interpreter alone) and `python -c "import runner"` (the package, nothing of a command).
`serve` is started as a new user starts it (the scripted model, a fresh home, the sample repository), timed
from exec to the first 200 of GET /health, then stopped. Each figure is the median of its rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.sample import create_bare_sample  # noqa: E402

PY = sys.executable
CLI = [PY, "-m", "runner.cli"]
SERVE_TIMEOUT = 120.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "AGENT_", "TELEGRAM_", "GITHUB_"))}
    env.update(extra)
    return env


def timed_run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return elapsed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_to_health(home: Path, repo: Path) -> float:
    """Seconds from exec of `agent-runner serve --scenario fix-balance` to its first 200 on /health."""
    port = _free_port()
    env = _env(AGENT_RUNNER_HOME=str(home), AGENT_RUNNER_REPO=str(repo), AGENT_API_TOKEN="bench",
               AGENT_RUNNER_PORT=str(port))
    start = time.perf_counter()
    proc = subprocess.Popen([*CLI, "serve", "--scenario", "fix-balance"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        while time.perf_counter() - start < SERVE_TIMEOUT:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}"
                                 if proc.stderr else f"serve exited {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.02)
        raise SystemExit(f"serve did not answer /health within {SERVE_TIMEOUT:.0f} s")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server this bench started, and nothing else
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def median(rounds: int, measure: Callable[[], float]) -> float:
    measure()  # warm the page cache and the .pyc files: every figure is a warm start
    return statistics.median(measure() for _ in range(rounds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve-rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root = Path(tmp)
        env = _env(AGENT_RUNNER_HOME=str(root / "home"))
        repo = asyncio.run(create_bare_sample(root / "sample-bot.git"))
        floors = {
            "python -c pass": median(args.rounds, lambda: timed_run([PY, "-c", "pass"], env)),
            "python -c 'import runner'": median(args.rounds, lambda: timed_run([PY, "-c", "import runner"], env)),
        }
        homes = iter(range(10_000))
        figures = {
            "agent-runner --help": median(args.rounds, lambda: timed_run([*CLI, "--help"], env)),
            "agent-runner run --help": median(args.rounds, lambda: timed_run([*CLI, "run", "--help"], env)),
            # serve's imports alone, so its figure splits into importing and opening the backends
            "python -c 'import runner.app'": median(
                args.rounds, lambda: timed_run([PY, "-c", "import runner.app"], env)),
            "agent-runner serve to /health": median(
                args.serve_rounds, lambda: serve_to_health(root / f"home-{next(homes)}", repo)),
        }
    names = list(floors)
    print(f"{'':32} {'median':>9}  " + "  ".join(f"{'x ' + n:>28}" for n in names))
    for name, seconds in {**floors, **figures}.items():
        ratios = "  ".join(f"{seconds / floors[n]:>28.1f}" for n in names)
        print(f"{name:32} {seconds * 1000:>7.0f}ms  {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
