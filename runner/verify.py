"""Fix verification: the regression test the agent added must fail on the base and pass with the fix.

A "fix" that only silences the error passes its own new test everywhere; running that test against the base
tree, in a second throwaway container, tells the two apart. The result is reported, never trusted blindly:
the test itself is agent-written code, and both runs happen in sandboxes.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runner import workspace
from runner.gitops import run_git
from runner.sandbox.base import SANDBOX_UID, Container, Sandbox, SandboxSpec

VERIFY_TIMEOUT_SECONDS = 300.0
PYTEST_NO_TESTS = 5


@dataclass(frozen=True, slots=True)
class Verification:
    tests: tuple[str, ...]
    fails_on_base: bool
    passes_with_fix: bool
    detail: str

    @property
    def verified(self) -> bool:
        return bool(self.tests) and self.fails_on_base and self.passes_with_fix

    def describe(self) -> str:
        if not self.tests:
            return "not verified: the change adds no regression test"
        if self.verified:
            return f"verified: {', '.join(self.tests)} fails on the base commit and passes with the fix"
        return f"NOT verified: {self.detail}"


def regression_tests(change: workspace.Change) -> tuple[str, ...]:
    """Test files the change adds (pytest's default naming)."""
    found = []
    for f in change.files:
        name = PurePosixPath(f.path).name
        if f.status == "added" and f.path.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py")):
            found.append(f.path)
    return tuple(sorted(found))


async def verify_fix(sandbox: Sandbox, image: str, prepared: workspace.Prepared, change: workspace.Change,
                     fixed: Container, test_command: str, owner_lock: Path) -> Verification:
    tests = regression_tests(change)
    if not tests:
        return Verification((), False, False, "no regression test was added")
    command = f"{test_command} {' '.join(shlex.quote(t) for t in tests)}"
    with_fix = await sandbox.exec(fixed, ["sh", "-c", command], timeout=VERIFY_TIMEOUT_SECONDS)
    base_dir = await _base_with_tests(prepared, tests)
    # Under the task's own lock: a reaper of another live supervisor must see it as owned.
    spec = SandboxSpec(f"{prepared.task_dir.name}-verify", image, base_dir, owner_lock=owner_lock)
    container = await sandbox.start(spec)
    try:
        on_base = await sandbox.exec(container, ["sh", "-c", command], timeout=VERIFY_TIMEOUT_SECONDS)
    finally:
        await sandbox.stop(container)
        shutil.rmtree(base_dir, ignore_errors=True)
    fails_on_base = on_base.exit_code not in (0, PYTEST_NO_TESTS) and not on_base.timed_out
    passes = with_fix.exit_code == 0
    problems = []
    if not fails_on_base:
        problems.append(f"the new test does not fail on the base commit (exit {on_base.exit_code})")
    if not passes:
        problems.append(f"the new test does not pass with the fix (exit {with_fix.exit_code})")
    return Verification(tests, fails_on_base, passes, "; ".join(problems))


async def _base_with_tests(prepared: workspace.Prepared, tests: tuple[str, ...]) -> Path:
    """The stripped base tree plus only the new test files, in a directory of its own."""
    base_dir = prepared.task_dir / "verify"
    shutil.rmtree(base_dir, ignore_errors=True)
    base_dir.mkdir()
    env = {"GIT_INDEX_FILE": str(prepared.task_dir / "verify.index")}
    await run_git(["read-tree", prepared.given], cwd=prepared.trusted, env=env)
    await run_git(["checkout-index", "--all", f"--prefix={base_dir}/"], cwd=prepared.trusted, env=env)
    (prepared.task_dir / "verify.index").unlink()
    for test in tests:
        source = prepared.workspace / test
        if source.is_symlink() or not source.is_file():
            continue  # the changeset check already refuses such files; copy data only
        target = base_dir / test
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    if os.geteuid() == 0:
        workspace.chown_tree(base_dir, SANDBOX_UID)
    return base_dir
