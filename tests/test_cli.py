"""runner/cli.py: what each command imports before it does anything, and the repository it is given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FIX_SCENARIO = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "fix-balance.yaml"


def _cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_", "TELEGRAM_"))}
    env.update(AGENT_RUNNER_HOME=str(home))
    return env

# What `agent-runner run` imports before its first model request: the parser, then the runtime its command opens.
RUN_IMPORTS = """
import sys
import runner.cli
runner.cli.build_parser()
import runner.service.runtime
heavy = sorted(m for m in sys.modules if m.split(".")[0] == "aiogram"
               or m.startswith(("runner.app", "runner.api", "runner.telegram", "runner.notify.telegram")))
print(heavy)
"""


def test_cli_run_imports_no_front_end_it_does_not_use() -> None:
    done = subprocess.run([sys.executable, "-c", RUN_IMPORTS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_run_on_a_missing_path_says_the_path_does_not_exist(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "runner.cli", "run", "--repo", str(tmp_path / "missing.git"),
                           "--prompt", "x", "--scenario", str(FIX_SCENARIO)], capture_output=True, text=True,
                          timeout=120, env=_cli_env(tmp_path / "home"))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line == (f"agent-runner: --repo '{tmp_path / 'missing.git'}': the path does not exist; give the path of "
                    "the bot's bare repository (`agent-runner demo` creates one), or a git URL with GITHUB_TOKEN and "
                    "GITHUB_REPOSITORY")
    assert not (tmp_path / "home").exists()
