"""`agent-runner policy ...`: in-process through argparse, and once through the installed entry point."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner import policy_cli

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILE = str(ROOT / "policy.yaml")


def _run(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="agent-runner")
    policy_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = args.func(args, out, err)
    return code, out.getvalue(), err.getvalue()


def test_policy_check_prints_allow_and_exits_zero() -> None:
    code, out, _ = _run("check", "--policy", POLICY_FILE, "--tool", "Bash", "--input", '{"command": "git status"}')
    assert code == 0
    decision = json.loads(out)
    assert decision["decision"] == "allow" and decision["rule"] and decision["reason"]


def test_policy_check_denies_with_exit_one_and_kind() -> None:
    code, out, _ = _run(
        "check", "--policy", POLICY_FILE, "--kind", "review", "--tool", "Bash", "--input", '{"command": "touch x"}'
    )
    assert code == 1
    assert json.loads(out)["rule"] == "profile.read-only"


def test_policy_check_usage_errors_exit_two() -> None:
    assert _run("check", "--policy", POLICY_FILE, "--tool", "Bash", "--input", "{nope")[0] == 2
    assert _run("check", "--policy", POLICY_FILE, "--tool", "Bash", "--input", "[1]")[0] == 2
    assert _run("check", "--policy", POLICY_FILE)[0] == 2
    assert _run("check", "--policy", "/nonexistent.yaml", "--tool", "LS", "--input", "{}")[0] == 2


def test_policy_check_batch_keeps_order_and_survives_malformed_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"tool": "Bash", "input": {"command": "ls"}}),
        "not json",
        json.dumps({"tool": "Read", "input": {"file_path": ".env"}}),
        json.dumps({"tool": "Bash", "input": {"command": "touch x"}, "kind": "review"}),
        json.dumps(["a"]),
        "",
    ]
    batch = tmp_path / "calls.jsonl"
    batch.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, _ = _run("check", "--policy", POLICY_FILE, "--batch", str(batch))
    decisions = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert [d["decision"] for d in decisions] == ["allow", "deny", "deny", "deny", "deny", "deny"]
    assert decisions[1]["rule"] == "input.malformed" and "JSON" in decisions[1]["reason"]
    assert decisions[3]["rule"] == "profile.read-only"


def test_policy_check_resolves_policy_from_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    custom = (ROOT / "policy.yaml").read_text(encoding="utf-8").replace("default-2025-06", "custom-1")
    (tmp_path / "policy.yaml").write_text(custom, encoding="utf-8")
    assert policy_cli.resolve_policy_path(None, {}, tmp_path) == str(tmp_path / "policy.yaml")
    assert policy_cli.resolve_policy_path(None, {"AGENT_RUNNER_POLICY": "/x.yaml"}, tmp_path) == "/x.yaml"
    assert policy_cli.resolve_policy_path("/y.yaml", {"AGENT_RUNNER_POLICY": "/x.yaml"}, tmp_path) == "/y.yaml"
    assert policy_cli.resolve_policy_path(None, {}, tmp_path / "empty") is None
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENT_RUNNER_POLICY", raising=False)
    _, out, _ = _run("check", "--tool", "LS", "--input", '{"path": "."}')
    assert json.loads(out)["policy_version"] == "custom-1"


def test_policy_test_and_validate_pass_on_the_default() -> None:
    code, out, _ = _run("test", "--policy", POLICY_FILE)
    assert code == 0 and "0 failed" in out
    code, out, _ = _run("validate", POLICY_FILE)
    assert code == 0 and "valid" in out


def test_policy_validate_reports_errors_with_line_numbers(tmp_path: Path) -> None:
    bad = (
        (ROOT / "policy.yaml")
        .read_text(encoding="utf-8")
        .replace("ask_timeout_seconds: 600", "ask_timeout_seconds: soon")
    )
    path = tmp_path / "bad.yaml"
    path.write_text(bad, encoding="utf-8")
    code, _, err = _run("validate", str(path))
    line = bad.splitlines().index("ask_timeout_seconds: soon") + 1
    assert code == 1
    assert f"{path}:{line}: ask_timeout_seconds must be an integer" in err


def test_policy_validate_fails_when_an_example_fails(tmp_path: Path) -> None:
    text = (ROOT / "policy.yaml").read_text(encoding="utf-8")
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("{command: git status}, expect: allow", "{command: git push}, expect: allow"), "utf-8")
    code, _, err = _run("validate", str(path))
    assert code == 1 and "example fails" in err


def test_policy_explain_prints_each_command_and_rule() -> None:
    code, out, _ = _run(
        "explain",
        "--policy",
        POLICY_FILE,
        "--tool",
        "Bash",
        "--input",
        '{"command": "git status && cat .env"}',
        "--json",
    )
    payload = json.loads(out)
    assert code == 1
    assert [s["rule"] for s in payload["steps"]] == ["bash.allow", "paths.read_protected"]
    code, out, _ = _run("explain", "--policy", POLICY_FILE, "--tool", "Bash", "--input", '{"command": "ls"}')
    assert code == 0 and "=> allow" in out


def test_policy_check_subprocess_through_the_entry_point(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "agent-runner"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from runner.cli import main; main()"]
    proc = subprocess.run(
        [*cmd, "policy", "check", "--policy", POLICY_FILE, "--tool", "Bash", "--input", '{"command": "git push"}'],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["rule"] == "bash.git"
