"""`agent-runner demo`: the whole cycle offline on the embedded defaults, narrated on the terminal."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

from runner.config import Settings
from runner.forge_cli import approve_pr
from runner.models import TaskState
from runner.runtime import open_runtime
from runner.sample import create_sample_repo

PROMPT = "Users without outgoing transactions get a crash from /balance (average_spend). Fix it."


def _say(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def _step(title: str) -> None:
    print(f"\n== {title}", file=sys.stderr, flush=True)


async def run_demo(settings: Settings) -> int:
    started = time.monotonic()
    root = settings.home / "demo"
    shutil.rmtree(root, ignore_errors=True)
    scenario = None
    _step("agent-runner demo: the whole cycle, offline")
    if settings.anthropic_api_key is None:
        scenario = Path(str(resources.files("runner") / "data" / "scenarios" / "fix-balance.yaml"))
        _say("ANTHROPIC_API_KEY is not set: a SCRIPTED model plays the agent (runner/data/scenarios/fix-balance.yaml).")
        _say("Everything else is real: the Docker sandbox, the Claude Code CLI in it, the policy, git, the tests.")
    else:
        _say(f"ANTHROPIC_API_KEY is set: the real model at {settings.anthropic_base_url} plays the agent.")

    _step("1. a sample bot repository with a bug, on the local forge")
    repo = await create_sample_repo(root / "origin")
    _say(f"bare repo: {repo}")
    rows: list[tuple[str, str]] = []
    demo_settings = dataclasses.replace(settings, home=root / "home")
    async with open_runtime(demo_settings, repo=str(repo), say=_say, scenario=scenario) as rt:
        _step("2. the owner asks: " + PROMPT)
        task = await rt.store.create_task(kind="fix", prompt=PROMPT, repo=str(repo), source="demo",
                                          requested_by="owner", dry_run=False)
        result = await rt.run(task)
        rows.append(("task", f"{result.task_id}: {result.status.value}"))
        if result.tests:
            rows.append(("tests (run by the supervisor)", f"exit {result.tests.exit_code}, "
                         f"{'passed' if result.tests.passed else 'failed'}"))
        rows.append(("denied tool calls", str(len(result.denials))))
        rows.append(("tokens", f"{result.usage.input_tokens} in / {result.usage.output_tokens} out"))
        if result.status is not TaskState.PROPOSED or result.pr is None:
            _say(f"the task ended {result.status.value}: {result.reason}")
            _table(rows, started)
            return 1
        _step(f"3. pull request #{result.pr.number} on branch {result.pr.branch}")
        for line in result.diff.splitlines():
            _say(line)
        forge = rt.deps.forge
        assert forge is not None
        _step(f"4. the owner approves #{result.pr.number} at {result.pr.head_sha[:12]}")
        merged = await approve_pr(forge, result.pr.number, result.pr.head_sha)
        _say(f"merged into main as {merged.sha[:12]}")
        rows.append((f"PR #{result.pr.number}", f"merged ({merged.sha[:12]})"))
    _table(rows, started)
    return 0


def _table(rows: list[tuple[str, str]], started: float) -> None:
    _step(f"summary ({time.monotonic() - started:.1f}s)")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}", flush=True)
