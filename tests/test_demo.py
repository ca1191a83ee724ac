"""`agent-runner demo`, the README's main command, end to end: real sandbox, real deploys, scripted model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.config import Settings
from runner.demo import SERVICE, run_demo


@pytest.mark.docker
async def test_demo_runs_the_whole_cycle_and_both_rollbacks(tmp_path: Path, docker_client: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings.from_env({"AGENT_RUNNER_HOME": str(tmp_path)})
    try:
        code = await run_demo(settings)
    finally:
        for container in docker_client.containers.list(all=True, filters={"name": SERVICE}):
            container.remove(force=True)
    out, err = capsys.readouterr()
    assert code == 0, err[-4000:]
    assert "a SCRIPTED model plays the agent" in err  # honest about who plays the agent
    table = dict(line.strip().split("  ", 1) for line in out.splitlines() if line.startswith("  PR #"))
    assert "deployed and healthy, watched" in table["PR #1"]
    # The owner's follow-up on PR #1: a second commit, the session resumed, the old head's approval refused.
    assert any(line.strip().startswith("follow-up on PR #1") and "second commit" in line for line in out.splitlines())
    assert "session resumed" in err and "an approval at the old head" in err and "is refused" in err
    assert "rolled_back (unhealthy), reverted on main" in table["PR #2"]
    assert "rolled_back (by the post-deploy watch), reverted on main" in table["PR #3"]
    # Self-correction: PR #3's first round failed the supervisor's tests; the second, in the same session, passed.
    rounds = [line.split("rounds", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("rounds")]
    assert rounds[:2] == ["1", "1"] and rounds[2].startswith("2: its failing tests went back"), rounds
    assert "a new error appeared after the deploy" in err and "KeyError" in err
    assert err.count("GET /balance?user=2 -> 200") == 2  # after the fix, and again after the watch's rollback
