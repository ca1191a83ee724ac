"""runner/cli.py: what each command imports before it does anything, and the repository it is given."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import policy
from runner import forge_cli, policy_cli
from runner.cli import build_parser
from runner.config import Settings, environment_keys
from runner.forge import create_forge
from runner.gitops import run_git
from runner.models import PrRef, RunResult, TaskState
from runner.sample import create_sample_repo
from runner.service import operations
from runner.service.policy_store import PolicyDesk, PolicyStore
from runner.store import Store

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


HELP_IMPORTS = """
import contextlib, io, sys
import runner.cli
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    runner.cli.main(["--help"])
print(sorted(m for m in sys.modules if m.split(".")[0] in ("policy", "bashlex", "tree_sitter", "claude_agent_sdk")))
"""


def test_cli_help_imports_no_policy_engine() -> None:
    # bashlex alone is ~0.5 s of imports here: `--help` and the commands that decide nothing never load it.
    done = subprocess.run([sys.executable, "-c", HELP_IMPORTS], capture_output=True, text=True, timeout=120)
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


async def _proposed_pr(home: Path, origin: Path) -> tuple[Path, str]:
    """A sample repository with PR #1 open on the local forge, and the service's task that proposed it."""
    bare = await create_sample_repo(origin)
    clone = origin / "clone"
    await run_git(["clone", "--quiet", str(bare), str(clone)])
    (clone / "NOTE.md").write_text("a change\n")
    await run_git(["add", "NOTE.md"], cwd=clone)
    await run_git(["-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "note"], cwd=clone)
    settings = Settings.from_env({"AGENT_RUNNER_HOME": str(home)})
    async with create_forge(settings, repo=bare) as forge, Store(home / "state.db") as store:
        sha = await forge.push_branch(clone, "agent/note")
        pr = await forge.open_pr("note", "body", head="agent/note", base="main")
        task = await store.create_task(kind="feature", prompt="a note", repo=str(bare), source="api",
                                       requested_by="owner", dry_run=False)
        result = RunResult(task.id, TaskState.PROPOSED, pr=PrRef(pr.number, "local://1", "agent/note", sha))
        await store.transition(task.id, TaskState.PROPOSED, result=result)
    return bare, task.id


async def _task_and_audit(home: Path, task_id: str) -> tuple[TaskState, list[str]]:
    async with Store(home / "state.db") as store:
        task = await store.get_task(task_id)
        return task.state, [e.event for e in await store.audit_log(event="reject")]


def test_reject_ends_the_services_task_rejected_and_audits_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bare, task_id = asyncio.run(_proposed_pr(home, tmp_path / "origin"))
    out = io.StringIO()
    args = argparse.Namespace(number=1, repo=None, json=False)
    code = forge_cli.cmd_reject(args, environ={"AGENT_RUNNER_HOME": str(home), "AGENT_RUNNER_REPO": str(bare)},
                                out=out)
    assert code == 0, out.getvalue()
    assert out.getvalue() == "closed #1 (agent/note), nothing merged\n"
    state, rejects = asyncio.run(_task_and_audit(home, task_id))
    assert state is TaskState.REJECTED  # as POST /agent/reject-pr leaves it, not `proposed` with a closed PR
    assert rejects == ["reject"]


async def _audit_rows(home: Path, event: str) -> list[Mapping[str, Any]]:
    async with Store(home / "state.db") as store:
        return [e.detail for e in await store.audit_log(event=event)]


@pytest.mark.docker
def test_run_audits_a_tool_call_the_cli_refused_before_asking_the_gate(tmp_path: Path) -> None:
    # WebSearch is not among the tools the session offers, so the real CLI answers it with an error itself and
    # the PreToolUse hook never hears of it; the audit log must hold it all the same.
    scenario = tmp_path / "refused.yaml"
    scenario.write_text(yaml.safe_dump({"turns": [[{"type": "tool_use", "name": "WebSearch",
                                                    "input": {"query": "how to fix"}}]],
                                        "final_text": "I could not search."}))
    bare = asyncio.run(create_sample_repo(tmp_path / "origin"))
    home = tmp_path / "home"
    done = subprocess.run([sys.executable, "-m", "runner.cli", "run", "--repo", str(bare), "--prompt", "look it up",
                           "--dry-run", "--scenario", str(scenario)], capture_output=True, text=True, timeout=600,
                          env=_cli_env(home))
    assert '"task_id"' in done.stdout, done.stderr
    refusals = asyncio.run(_audit_rows(home, "cli_refusal"))
    assert [r["tool"] for r in refusals] == ["WebSearch"], done.stderr
    assert refusals[0]["decision"] == "deny" and refusals[0]["reason"], refusals
    decided = asyncio.run(_audit_rows(home, "tool_decision"))
    assert all(d["tool"] != "WebSearch" for d in decided)  # the policy was never asked: this row is the only trace


def _leaf_parsers(parser: argparse.ArgumentParser, name: str = "agent-runner"
                  ) -> list[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(name, parser)]
    return [leaf for a in subs for sub_name, sub in a.choices.items() for leaf in _leaf_parsers(sub, sub_name)]


# What each command reads besides its arguments: the whole Settings, one variable, or nothing.
READS_ONE = {"check": "AGENT_RUNNER_POLICY", "test": "AGENT_RUNNER_POLICY", "validate": "AGENT_RUNNER_POLICY",
             "explain": "AGENT_RUNNER_POLICY", "history": "AGENT_RUNNER_HOME"}


def test_every_subcommand_help_lists_the_environment_it_reads() -> None:
    leaves = dict(_leaf_parsers(build_parser()))
    assert {"run", "serve", "demo", "prs", "approve", "reject", "sample-repo", *READS_ONE} <= set(leaves)
    for name, parser in leaves.items():
        text = parser.format_help()
        assert "environment" in text, name
        if name == "sample-repo":
            assert "environment: none is read" in text
        elif name in READS_ONE:
            assert READS_ONE[name] in text, name
        else:  # it builds Settings, so every variable Settings reads is named
            missing = [key for key in environment_keys() if key not in text]
            assert not missing, (name, missing)


async def _activate_like_put_policy(home: Path, text: str) -> policy.Policy:
    # The operation PUT /policy and the chat's confirm call, on the service's own state file.
    async with Store(home / "state.db") as store:
        versions = PolicyStore(store.path)
        try:
            desk = PolicyDesk(versions, policy.default_text())
            return await operations.activate_policy(desk, store, operations.Caller("owner", "api"), text)
        finally:
            await versions.aclose()


def test_policy_history_shows_the_version_put_policy_activated(tmp_path: Path) -> None:
    home = tmp_path / "home"
    args = argparse.Namespace(limit=20, json=False)
    err = io.StringIO()
    assert policy_cli.cmd_history(args, out=io.StringIO(), err=err, environ={"AGENT_RUNNER_HOME": str(home)}) == 1
    assert "no service state at" in err.getvalue() and not home.exists()  # nothing created by asking
    text = policy.default_text().replace('version: "default-2025-06"', 'version: "owner-2"', 1)
    activated = asyncio.run(_activate_like_put_policy(home, text))
    out = io.StringIO()
    assert policy_cli.cmd_history(args, out=out, environ={"AGENT_RUNNER_HOME": str(home)}) == 0
    [line] = out.getvalue().splitlines()
    assert activated.version == "owner-2"
    assert line.startswith("v1  ") and "  owner  owner-2  sha256 " in line and line.endswith("  active"), line


def test_policy_check_active_decides_with_the_services_active_version_and_says_so(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch
                                                                                 ) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("AGENT_RUNNER_HOME", str(home))
    monkeypatch.chdir(tmp_path)  # no ./policy.yaml to fall back on
    args = argparse.Namespace(policy=None, active=True, kind="feature", tool="Bash",
                              tool_input='{"command": "git status"}', batch=None)
    err = io.StringIO()
    assert policy_cli.cmd_check(args, out=io.StringIO(), err=err) == 2  # nothing activated: said, not guessed
    assert "no policy was activated in the service" in err.getvalue()
    text = policy.default_text().replace('version: "default-2025-06"', 'version: "owner-3"', 1)
    asyncio.run(_activate_like_put_policy(home, text))
    out, err = io.StringIO(), io.StringIO()
    assert policy_cli.cmd_check(args, out=out, err=err) == 0
    assert json.loads(out.getvalue())["policy_version"] == "owner-3"
    assert err.getvalue().startswith("policy: the service's active policy, version v1 of ")


def test_sample_repo_prints_the_bare_repository_it_made_and_refuses_an_unrelated_folder(tmp_path: Path) -> None:
    made = subprocess.run([sys.executable, "-m", "runner.cli", "sample-repo"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=_cli_env(tmp_path / "home"))
    assert made.returncode == 0, made.stderr
    assert made.stdout == f"{tmp_path / 'sample-bot.git'}\n"  # alone on stdout, for $(agent-runner sample-repo)
    log = subprocess.run(["git", "--git-dir", str(tmp_path / "sample-bot.git"), "log", "--format=%s", "main"],
                         capture_output=True, text=True, check=True)
    assert log.stdout.strip() == "sample bot: ledger, /balance, /health"
    (tmp_path / "other").mkdir()
    refused = subprocess.run([sys.executable, "-m", "runner.cli", "sample-repo", "other"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120, env=_cli_env(tmp_path / "home"))
    assert refused.returncode == 2 and refused.stdout == ""
    assert "exists and is not a bare repository" in refused.stderr
    assert list((tmp_path / "other").iterdir()) == []
