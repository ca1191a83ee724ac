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
from tests.fakes.sandbox import Box, FakeSandbox


async def _fix_change(tmp_path: Path, *, in_existing_file: bool = False
                      ) -> tuple[workspace.Prepared, workspace.Change]:
    repo = await create_sample_repo(tmp_path / "origin")
    prepared = await workspace.prepare(tmp_path / "home", "t1", str(repo), policy.load_default())
    await workspace.populate(prepared)
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["tar", "-x", "-f", str(prepared.given_archive), "-C", str(ws)], check=True)
    if in_existing_file:
        existing = ws / "tests" / "test_ledger.py"
        existing.write_text(existing.read_text() + "\n\ndef test_regression():\n    assert True\n")
    else:
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


async def test_a_test_added_to_an_existing_file_is_the_regression_test_and_only_it_runs(tmp_path: Path) -> None:
    """Agents mostly add the regression test beside the module's other tests. Running that whole file on the base
    would prove nothing (the sample bot's own test of the bug already fails there): only the new test runs."""
    prepared, change = await _fix_change(tmp_path, in_existing_file=True)
    commands: list[tuple[str, str]] = []

    def on_exec(box: Box, argv: Sequence[str]) -> ExecResult:
        commands.append((box.role, argv[-1]))
        return ExecResult(0 if box.files["bot/ledger.py"][1] == b"# fixed\n" else 1, "", 0.1)

    sandbox = FakeSandbox(on_exec=on_exec)
    fixed = await sandbox.start(SandboxSpec("t1", "img", role="tests"))
    await workspace.tree_archive(prepared, change.tree, tmp_path / "tests.tar")
    await sandbox.copy_in(fixed, tmp_path / "tests.tar")
    result = await verify.verify_fix(sandbox, fixed, SandboxSpec("t1", "img", role="verify"), prepared, change,
                                     "python -m pytest -q")
    assert result.verified and result.tests == ("tests/test_ledger.py::test_regression",)
    assert commands == [(role, "python -m pytest -q tests/test_ledger.py::test_regression")
                        for role in ("tests", "verify")]
    [base] = [b for b in sandbox.gone.values() if b.role == "verify"]
    assert b"def test_regression" in base.files["tests/test_ledger.py"][1]


def test_new_tests_are_the_names_a_changed_file_did_not_have() -> None:
    before = b"def test_a():\n    pass\n\n\nclass TestB:\n    def test_c(self):\n        pass\n"
    after = before + b"\n\nasync def test_d():\n    pass\n\n\nclass TestB2:\n    def test_e(self):\n        pass\n"
    assert verify.new_tests("t/test_x.py", before, after) == ("t/test_x.py::TestB2::test_e", "t/test_x.py::test_d")
    assert verify.new_tests("t/test_x.py", None, after) == ("t/test_x.py",)  # a new file: all of it
    assert verify.new_tests("t/test_x.py", before, before + b"# only a comment\n") == ()


def test_a_test_file_that_does_not_parse_or_is_huge_brings_no_named_tests() -> None:
    """The file is agent-written: read with ast as data, bounded, never imported on the trusted side."""
    assert verify.test_names(b"def test_(:\n") is None
    assert verify.test_names(b"x = " + b"(" * 10_000 + b")" * 10_000) is None  # too deep for the parser
    assert verify.test_names(b"#" * (verify.MAX_TEST_SOURCE_BYTES + 1)) is None
    assert verify.new_tests("t/test_x.py", b"def test_a(): pass\n", b"def test_(:\n") == ()
