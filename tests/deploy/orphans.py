"""A deploy step left running by a supervisor that was SIGKILLed: a real child process starts the step under a
fence and is killed once the command runs, so the command (its own session) lives on, as under `serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from runner.deploy import Fence

# Run by the child: deploy `sha` with `command` under the fence given as JSON, keeping traces under `runs`.
CHILD = """
import asyncio, json, sys
from pathlib import Path
from runner.deploy import DeploySource, Fence
from runner.deploy.command import CommandDeployer
fence, command, runs, repo = Fence.from_json(json.loads(sys.argv[1])), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
deployer = CommandDeployer(command, runs=runs)
step = deployer.deploy if fence.action == "deploy" else deployer.rollback
asyncio.run(step(DeploySource(repo, fence.sha), fence=fence))
"""


def overlap_guarded(command: str, log: Path, exclusive: Path) -> str:
    """`command`, logging its start and end with times, and OVERLAP when another run still holds `exclusive`
    (an flock the kernel drops only when every process of that run is gone, killed or not)."""
    what = "$AGENT_RUNNER_DEPLOY_ACTION $AGENT_RUNNER_DEPLOY_SHA $(date +%s.%N)"
    return (f'echo "start {what}" >> {log}; exec 8>>{exclusive}; flock -n 8 || echo "overlap {what}" >> {log}; '
            f'{command}; echo "end {what}" >> {log}')


def orphan(fence: Fence, command: str, runs: Path, repo: str = "/srv/bot.git") -> None:
    """Start the step in a child process and SIGKILL the child once the command runs; the command goes on."""
    assert fence.place is not None
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(fence.to_json()), command, str(runs), repo],
                             cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 30
    while not (Path(fence.place) / "pid").exists():
        assert child.poll() is None, f"the child deploy exited {child.returncode} before its command ran"
        assert time.monotonic() < deadline, "the child deploy never started its command"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(10)


def alive(fence: Fence) -> bool:
    """The orphaned run's process group still has a live member (zombies waiting to be reaped do not count)."""
    assert fence.place is not None
    pgid = int((Path(fence.place) / "pid").read_text())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False
