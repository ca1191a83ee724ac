"""Fix verification in fresh sandboxes: the new test with the fix (the supervisor's test container) and on the
base tree plus only that test (a container of its own), never in the agent's container."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import policy
from runner import verify, workspace
from runner.sample import create_sample_repo
from runner.sandbox.base import ExecResult, SandboxSpec
from runner.sandbox.docker import tar_out_argv
from tests.test_supervisor import Box, FakeSandbox


async def _fix_change(tmp_path: Path) -> tuple[workspace.Prepared, workspace.Change]:
    repo = await create_sample_repo(tmp_path / "origin")
    prepared = await workspace.prepare(tmp_path / "home", "t1", str(repo), policy.load_default())
    await workspace.populate(prepared)
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["tar", "-x", "-f", str(prepared.given_archive), "-C", str(ws)], check=True)
    (ws / "tests" / "test_regression.py").write_text("def test_regression():\n    assert True\n")
    (ws / "bot" / "ledger.py").write_text("# fixed\n")
    out = tmp_path / "ws.tar"
    with out.open("wb") as sink:
        subprocess.run(tar_out_argv(str(ws)), stdout=sink, check=True)
    return prepared, await workspace.extract(prepared, out, policy.load_default(), "fix")


async def test_verify_runs_the_new_test_with_the_fix_and_on_the_base_in_fresh_containers(tmp_path: Path) -> None:
    prepared, change = await _fix_change(tmp_path)

    def on_exec(box: Box, argv: Sequence[str]) -> ExecResult:
        fixed = box.files["bot/ledger.py"][1] == b"# fixed\n"
        return ExecResult(0 if fixed else 1, "", 0.1)

    sandbox = FakeSandbox(on_exec=on_exec)
    spec = SandboxSpec("t1", "img", role="tests")
    fixed = await sandbox.start(spec)
    await workspace.tree_archive(prepared, change.tree, tmp_path / "tests.tar")
    await sandbox.copy_in(fixed, tmp_path / "tests.tar")
    result = await verify.verify_fix(sandbox, fixed, SandboxSpec("t1", "img", role="verify"), prepared, change,
                                     "python -m pytest -q")
    assert result.verified, result.detail
    assert result.tests == ("tests/test_regression.py",)
    [base] = [b for b in sandbox.gone.values() if b.role == "verify"]
    assert "tests/test_regression.py" in base.files and base.files["bot/ledger.py"][1] != b"# fixed\n"
    assert ".env" not in base.files
    assert [c for c in sandbox.calls if c[1] == "verify"] == [("start", "verify"), ("copy_in", "verify"),
                                                               ("exec", "verify"), ("stop", "verify")]
    assert ("exec", "tests") in sandbox.calls


async def test_verify_says_so_when_the_new_test_passes_on_the_base_too(tmp_path: Path) -> None:
    prepared, change = await _fix_change(tmp_path)
    sandbox = FakeSandbox()  # every run passes: the test does not tell the fix from the bug
    fixed = await sandbox.start(SandboxSpec("t1", "img", role="tests"))
    result = await verify.verify_fix(sandbox, fixed, SandboxSpec("t1", "img", role="verify"), prepared, change,
                                     "python -m pytest -q")
    assert not result.verified and "does not fail on the base commit" in result.describe()
