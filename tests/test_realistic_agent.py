"""A scripted agent that works the way Claude Code does, through the real CLI in the real sandbox: the shipped
policy must let it do ordinary work without one denial; and the CLI's working directory between Bash calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.scripted_model import Scenario, ToolUseBlock
from runner.store import Store
from tests.fakes.runs import result_text, run_scenario, tool_results

pytestmark = pytest.mark.docker

REALISTIC = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "realistic-feature.yaml"


async def test_realistic_agent_does_an_ordinary_fix_without_a_denial(tmp_path: Path) -> None:
    scenario = Scenario.from_file(REALISTIC)
    result, requests = await run_scenario(tmp_path, scenario, "--kind", "fix", "--dry-run")
    assert result["denials"] == [], result["denials"]
    assert result["status"] == "diff_ready", result
    assert result["files_changed"] == ["bot/ledger.py"]  # the reproduce script removed itself once fixed
    assert "+    if not spent:" in result["diff"]
    assert result["tests"]["passed"]
    # Each tool really ran in the sandbox, and none failed: the CLI reports refusals and errors as is_error.
    results = tool_results(requests)
    asked = sum(isinstance(b, ToolUseBlock) for turn in scenario.turns for b in turn)
    assert len(results) == asked == 18
    assert [b for b in results if b.get("is_error")] == [], [result_text(b) for b in results if b.get("is_error")]
    texts = [result_text(b) for b in results]
    assert any("ZeroDivisionError" in t for t in texts)  # the reproduction, before the fix
    assert any("ok 0.0" in t for t in texts)  # the inline import check, after it
    assert any("passed" in t for t in texts) and any("removed" in t for t in texts)
    # Every call was decided by the supervisor's policy, and audited.
    async with Store(tmp_path / "home" / "state.db") as store:
        decisions = await store.audit_log(result["task_id"], event="tool_decision")
    assert [d.detail["decision"] for d in decisions] == ["allow"] * asked


async def test_every_bash_call_starts_in_the_workspace_where_the_policy_decides(tmp_path: Path) -> None:
    """The CLI keeps a shell's `cd` between Bash calls unless CLAUDE_BASH_MAINTAIN_PROJECT_WORKING_DIR is set;
    the gate decides relative paths against /workspace, so the CLI must run them there."""
    script = {"turns": [[{"type": "tool_use", "name": "Bash", "input": {"command": "cd bot"}}],
                        [{"type": "tool_use", "name": "Bash", "input": {"command": "pwd > pwd.txt"}}]]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(script))
    result, requests = await run_scenario(tmp_path, Scenario.from_file(tmp_path / "s.yaml"), "--dry-run")
    assert result["denials"] == [] and result["status"] == "diff_ready", result
    assert result["files_changed"] == ["pwd.txt"]  # not bot/pwd.txt
    assert "+/workspace\n" in result["diff"]


async def test_realistic_agent_proposes_its_fix_although_it_committed_in_the_sandbox(tmp_path: Path) -> None:
    result, _ = await run_scenario(tmp_path, Scenario.from_file(REALISTIC), "--kind", "fix")
    assert result["denials"] == [] and result["status"] == "proposed", result
    assert result["files_changed"] == ["bot/ledger.py"] and result["pr"]["number"] == 1
