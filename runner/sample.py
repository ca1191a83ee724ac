"""The sample bot repository the demo and the tests work on: a small service with a real bug."""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

from runner.gitops import run_git

# Stored under a neutral name so packaging and .gitignore leave it alone; it becomes `.env` in the repo,
# where the policy must keep it out of every sandbox.
RENAMED = {"dot-env": ".env"}


async def create_sample_repo(dest: Path, *, branch: str = "main") -> Path:
    """A bare repository at dest/sample-bot.git with the sample bot as one commit on `branch`."""
    return await create_bare_sample(dest / "sample-bot.git", branch=branch)


async def create_bare_sample(bare: Path, *, branch: str = "main") -> Path:
    """The sample bot as a bare repository at exactly `bare` (kept as it is when it already exists)."""
    if bare.exists():
        return bare
    bare.parent.mkdir(parents=True, exist_ok=True)
    source = resources.files("runner") / "data" / "sample-bot"
    with tempfile.TemporaryDirectory(dir=bare.parent) as tmp:
        work = Path(tmp) / "work"
        with resources.as_file(source) as src:
            shutil.copytree(src, work, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for stored, real in RENAMED.items():
            for path in work.rglob(stored):
                path.rename(path.with_name(real))
        await run_git(["init", "--quiet", "-b", branch], cwd=work)
        await run_git(["add", "--all"], cwd=work)
        await run_git(["commit", "--quiet", "-m", "sample bot: ledger, /balance, /health"], cwd=work)
        await run_git(["clone", "--quiet", "--bare", str(work), str(bare)])
    return bare
