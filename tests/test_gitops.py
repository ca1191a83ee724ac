"""runner.gitops: git runs with the repository's hooks, fsmonitor, helpers and user config neutralised."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest

from runner.gitops import REDACTED, GitError, GitTimeout, git_env, head_sha, redact, run_git, secret_forms


def make_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(path)], env=git_env(), check=True)
    (path / "a.txt").write_text("a\n")
    return path


async def test_run_git_commits_as_agent_runner(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    await run_git(["add", "a.txt"], cwd=repo)
    await run_git(["commit", "-q", "-m", "first"], cwd=repo)

    who = (await run_git(["log", "-1", "--format=%an <%ae>|%cn <%ce>"], cwd=repo)).out

    assert who == "agent-runner <agent-runner@localhost>|agent-runner <agent-runner@localhost>"
    assert len(await head_sha(repo)) == 40


async def test_run_git_never_runs_the_repositorys_hooks(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    marker = tmp_path / "pwned"
    for hooks in (repo / ".git" / "hooks", tmp_path / "evil-hooks"):
        hooks.mkdir(exist_ok=True)
        for name in ("pre-commit", "post-commit", "commit-msg", "reference-transaction"):
            (hooks / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
            (hooks / name).chmod(0o755)
    subprocess.run(["git", "config", "core.hooksPath", str(tmp_path / "evil-hooks")], cwd=repo, check=True)

    await run_git(["add", "a.txt"], cwd=repo)
    await run_git(["commit", "-q", "-m", "x"], cwd=repo)

    assert not marker.exists()


async def test_run_git_ignores_a_planted_fsmonitor_and_helpers(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    marker = tmp_path / "pwned"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    for key, value in (
        ("core.fsmonitor", str(script)),
        ("core.pager", str(script)),
        ("credential.helper", f"!{script}"),
        ("diff.external", str(script)),
    ):
        subprocess.run(["git", "config", key, value], cwd=repo, check=True)

    await run_git(["status"], cwd=repo)
    await run_git(["add", "a.txt"], cwd=repo)
    await run_git(["diff", "--cached"], cwd=repo)
    await run_git(["commit", "-q", "-m", "x"], cwd=repo)
    await run_git(["-C", str(repo), "log", "-p"])
    await run_git(["show", "HEAD"], cwd=repo)

    assert not marker.exists()


async def test_run_git_refuses_the_ext_transport(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    marker = tmp_path / "pwned"

    with pytest.raises(GitError, match="ext"):
        await run_git(["ls-remote", f"ext::sh -c touch% {marker}"], cwd=repo)
    assert not marker.exists()


async def test_run_git_drops_the_callers_git_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "r")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[alias]\n\tst = !touch pwned\n[user]\n\tname = Someone Else\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Mallory")

    assert (await run_git(["rev-parse", "--show-toplevel"], cwd=repo)).out == str(repo)
    with pytest.raises(GitError, match="'st' is not a git command"):
        await run_git(["st"], cwd=repo)
    env = git_env()
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null" and env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_AUTHOR_NAME"] == "agent-runner"


async def test_run_git_error_carries_stderr_with_secrets_redacted(tmp_path: Path) -> None:
    secret = "s3cr3t-TOKEN-value"
    with pytest.raises(GitError) as info:
        await run_git(["ls-remote", f"http://x:{secret}@127.0.0.1:1/r.git"], cwd=tmp_path, secrets=[secret])

    assert secret not in str(info.value) and secret not in info.value.stderr
    assert REDACTED in str(info.value)
    assert info.value.returncode == 128
    assert "Failed to connect" in info.value.stderr or "unable to access" in info.value.stderr


async def test_run_git_check_false_returns_the_failure(tmp_path: Path) -> None:
    result = await run_git(["rev-parse", "--verify", "-q", "nope"], cwd=make_repo(tmp_path / "r"), check=False)
    assert result.returncode == 1 and result.out == ""


async def test_run_git_timeout_kills_git_and_its_children(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(GitTimeout, match="timed out after 0.2s") as info:
        await run_git(["-c", "alias.slow=!sleep 5", "slow"], cwd=tmp_path, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - start < 2  # the alias's `sleep` held git's pipes until its group was killed


async def test_run_git_feeds_stdin(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r")
    oid = (await run_git(["hash-object", "-w", "--stdin"], cwd=repo, stdin=b"hello\n")).out
    assert (await run_git(["cat-file", "-p", oid], cwd=repo)).out == "hello"


def test_redact_covers_the_basic_auth_encoding() -> None:
    token = "ghp_abc123"
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()

    text = redact(f"Authorization: Basic {basic} and {token}", secret_forms(token))

    assert token not in text and basic not in text
    assert redact("nothing here", ["", "x"]) == "nothing here".replace("x", REDACTED)
