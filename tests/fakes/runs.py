"""`agent-runner run` as a child process on the sample bot, with the scripted model standing in for the provider:
its JSON result and every request the model saw (for the tests that drive the real CLI in the real sandbox)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from runner.sample import create_sample_repo
from runner.scripted_model import RecordedRequest, Scenario, serve_scripted_model

__all__ = ["AGENT_RUNNER", "cli_env", "offline_env", "result_text", "run_scenario", "tool_results"]

AGENT_RUNNER = [sys.executable, "-m", "runner.cli"]


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_RUNNER_"))}
    env.update(AGENT_RUNNER_HOME=str(home), ANTHROPIC_API_KEY="sk-ant-test-key", **extra)
    return env


async def run_scenario(tmp_path: Path, scenario: Scenario, *args: str) -> tuple[dict[str, Any], list[RecordedRequest]]:
    """`agent-runner run` on the sample bot with `scenario` as the model; the result and what the model saw."""
    repo = await create_sample_repo(tmp_path / "origin")
    async with serve_scripted_model(scenario) as model:
        proc = await asyncio.create_subprocess_exec(
            *AGENT_RUNNER, "run", "--repo", str(repo), "--prompt", "average_spend crashes; fix it", "--json",
            *args, env=cli_env(tmp_path / "home", ANTHROPIC_BASE_URL=model.base_url),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 240)
        requests = list(model.requests)
    lines = out.decode().strip().splitlines()
    assert lines, err.decode()
    return json.loads(lines[-1]), requests


def tool_results(requests: list[RecordedRequest]) -> list[dict[str, Any]]:
    """Every tool_result block of the longest conversation the CLI sent, in order."""
    convs = [r.json.get("messages", []) for r in requests if r.kind == "agent" and isinstance(r.json, dict)]
    longest = max(convs, key=len)
    return [b for m in longest if isinstance(m.get("content"), list) for b in m["content"]
            if isinstance(b, dict) and b.get("type") == "tool_result"]


def result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content)


def offline_env(base_url: str, api_key: str, config_dir: Path) -> dict[str, str]:
    """What the CLI needs to talk only to `base_url`, and to keep its state out of the user's home."""
    return {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": api_key,
        "CLAUDE_CONFIG_DIR": str(config_dir),
        "DISABLE_TELEMETRY": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
