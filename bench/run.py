"""Run every benchmark; each prints ratios against a baseline measured in the same run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    names = ("bench_policy.py", "bench_sandbox.py", "bench_metrics.py", "bench_startup.py")
    codes = [subprocess.call([sys.executable, str(HERE / name)]) for name in names]
    sys.exit(max(codes))
