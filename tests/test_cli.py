"""runner/cli.py: the command line's imports (what each command costs before it does anything)."""

from __future__ import annotations

import subprocess
import sys

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
