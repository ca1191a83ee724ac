"""Fix verification: the regression test the agent added must fail on the base and pass with the fix.

A "fix" that only silences the error passes its own new test everywhere; running that test against the base
tree, in a second throwaway container, tells the two apart. The result is reported, never trusted blindly:
the test itself is agent-written code, and both runs happen in fresh sandboxes built from trees of the
supervisor's own clone (the extracted change, and the base plus the new tests), never the agent's container.
"""

from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

from runner import workspace
from runner.gitops import GitError, run_git
from runner.sandbox.base import Container, Sandbox, SandboxSpec

VERIFY_TIMEOUT_SECONDS = 300.0
PYTEST_NO_TESTS = 5
MAX_TEST_SOURCE_BYTES = 1024**2  # a test module larger than this is not read for new tests


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


def _is_test_file(path: str) -> bool:
    name = PurePosixPath(path).name
    return path.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def test_names(source: bytes) -> frozenset[str] | None:
    """The pytest node names a test module defines (`test_x`, `TestY::test_z`), read with `ast` (the file is
    agent-written: parsed as data, never imported); None when it is too large or does not parse."""
    if len(source) > MAX_TEST_SOURCE_BYTES:
        return None
    try:
        module = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    names: set[str] = set()
    for node in module.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test"))
    return frozenset(names)


def new_tests(path: str, before: bytes | None, after: bytes) -> tuple[str, ...]:
    """The regression tests one changed test file brings, as pytest node ids: a new file as a whole, and in a
    file that already existed the tests it did not have (its old tests may fail on the base for other reasons,
    as the sample bot's does: running them there would prove nothing)."""
    if before is None:
        return (path,)
    old, new = test_names(before), test_names(after)
    if old is None or new is None:
        return ()
    return tuple(f"{path}::{name}" for name in sorted(new - old))


async def regression_tests(prepared: workspace.Prepared, change: workspace.Change) -> tuple[str, ...]:
    """The tests the change adds (pytest's default naming): added test files, and new tests in changed ones."""
    found: list[str] = []
    for f in change.files:
        if f.status not in ("added", "modified") or not _is_test_file(f.path):
            continue
        after = await _blob(prepared, change.tree, f.path)
        if after is None:
            continue
        before = await _blob(prepared, prepared.given, f.path) if f.status == "modified" else None
        found.extend(new_tests(f.path, before, after))
    return tuple(sorted(found))


async def _blob(prepared: workspace.Prepared, tree: str, path: str) -> bytes | None:
    """A file of `tree` in the trusted clone (whose objects the supervisor wrote itself)."""
    try:
        return (await run_git(["cat-file", "blob", f"{tree}:{path}"], cwd=prepared.trusted)).stdout
    except GitError:
        return None


async def verify_fix(sandbox: Sandbox, fixed: Container, base_spec: SandboxSpec, prepared: workspace.Prepared,
                     change: workspace.Change, test_command: str) -> Verification:
    """Run the change's new tests in `fixed` (the supervisor's fresh test container, holding the extracted
    change) and in a new container from `base_spec` holding the given base tree plus only those tests."""
    tests = await regression_tests(prepared, change)
    if not tests:
        return Verification((), False, False, "no regression test was added")
    command = f"{test_command} {' '.join(shlex.quote(t) for t in tests)}"
    with_fix = await sandbox.exec(fixed, ["sh", "-c", command], timeout=VERIFY_TIMEOUT_SECONDS)
    base_tar = prepared.task_dir / "verify.tar"
    files = tuple(sorted({t.split("::", 1)[0] for t in tests}))
    await workspace.tree_archive(prepared, await _base_with_tests(prepared, change, files), base_tar)
    container = await sandbox.start(base_spec)
    try:
        await sandbox.copy_in(container, base_tar)
        on_base = await sandbox.exec(container, ["sh", "-c", command], timeout=VERIFY_TIMEOUT_SECONDS)
    finally:
        await sandbox.stop(container)
        base_tar.unlink(missing_ok=True)
    fails_on_base = on_base.exit_code not in (0, PYTEST_NO_TESTS) and not on_base.timed_out
    passes = with_fix.exit_code == 0
    problems = []
    if not fails_on_base:
        problems.append(f"the new test does not fail on the base commit (exit {on_base.exit_code})")
    if not passes:
        problems.append(f"the new test does not pass with the fix (exit {with_fix.exit_code})")
    return Verification(tests, fails_on_base, passes, "; ".join(problems))


async def _base_with_tests(prepared: workspace.Prepared, change: workspace.Change, tests: tuple[str, ...]) -> str:
    """The tree of the given base plus only the changed test files, taken from the extracted change (regular
    files only: the changeset check already refuses anything else there)."""
    env = {"GIT_INDEX_FILE": str(prepared.task_dir / "verify.index")}
    await run_git(["read-tree", prepared.given], cwd=prepared.trusted, env=env)
    listing = (await run_git(["ls-tree", "-z", change.tree, "--", *tests], cwd=prepared.trusted)).stdout
    records = [r for r in listing.split(b"\0") if r.startswith((b"100644 blob ", b"100755 blob "))]
    if records:
        await run_git(["update-index", "-z", "--index-info"], cwd=prepared.trusted, env=env,
                      stdin=b"".join(r + b"\0" for r in records))
    tree = (await run_git(["write-tree"], cwd=prepared.trusted, env=env)).out
    (prepared.task_dir / "verify.index").unlink()
    return tree
