"""The policy gate on the trusted side: decisions, owner asks with a timeout, the audit trail, closing."""

from __future__ import annotations

import asyncio
from typing import Any

import policy
from runner.agent import Gate, input_digest

ASK_RULE = """rules:
  - id: ask-before-git-log
    effect: ask
    reason: the owner wants to see history reads
    commands: ["git log"]
"""


def _policy_with_ask() -> policy.Policy:
    text = policy.default_text().replace("rules:\n", ASK_RULE, 1)
    return policy.load(text)


class Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, event: str, detail: dict[str, Any]) -> None:
        self.entries.append((event, detail))


async def test_gate_allows_and_denies_by_policy_and_audits_each_call() -> None:
    audit = Audit()
    gate = Gate("t1", policy.load_default(), "feature", audit=audit)
    assert await gate.decide("Bash", {"command": "git status"}) == (True, "git is allowed")
    allowed, reason = await gate.decide("Read", {"file_path": "/workspace/.env"})
    assert not allowed and ".env" in reason
    assert [d["decision"] for _, d in audit.entries] == ["allow", "deny"]
    assert audit.entries[1][1]["rule"] == "paths.read_protected"
    assert audit.entries[1][1]["input_digest"] == input_digest({"file_path": "/workspace/.env"})
    assert [(d.tool, d.rule) for d in gate.denials] == [("Read", "paths.read_protected")]


async def test_gate_denies_tools_the_policy_does_not_name() -> None:
    gate = Gate("t1", policy.load_default(), "feature", audit=Audit())
    for tool in ("Task", "Agent", "WebFetch", "WebSearch", "mcp__github__create_issue"):
        allowed, _ = await gate.decide(tool, {})
        assert not allowed, tool


async def test_gate_asks_the_owner_and_follows_the_answer() -> None:
    asked: list[str] = []

    async def owner(task_id: str, call: policy.ToolCall, decision: policy.Decision) -> bool:
        asked.append(f"{task_id}:{call.input['command']}:{decision.rule_id}")
        return True

    audit = Audit()
    gate = Gate("t2", _policy_with_ask(), "feature", audit=audit, ask=owner)
    allowed, reason = await gate.decide("Bash", {"command": "git log -5"})
    assert allowed and reason.startswith("owner allowed")
    assert asked == ["t2:git log -5:rules.ask-before-git-log"]
    assert audit.entries[0][1]["policy_effect"] == "ask" and audit.entries[0][1]["decision"] == "allow"


async def test_gate_denies_when_the_owner_does_not_answer_in_time() -> None:
    async def silent(task_id: str, call: policy.ToolCall, decision: policy.Decision) -> bool:
        await asyncio.Event().wait()
        return True

    gate = Gate("t3", _policy_with_ask(), "feature", audit=Audit(), ask=silent, ask_timeout=0.05)
    allowed, reason = await gate.decide("Bash", {"command": "git log"})
    assert not allowed and reason.startswith("no answer from the owner within")


async def test_gate_without_an_owner_channel_denies_asks() -> None:
    gate = Gate("t4", _policy_with_ask(), "feature", audit=Audit())
    allowed, reason = await gate.decide("Bash", {"command": "git log"})
    assert not allowed and "no owner channel" in reason


async def test_closed_gate_denies_what_the_policy_would_allow() -> None:
    audit = Audit()
    gate = Gate("t5", policy.load_default(), "feature", audit=audit)
    gate.close("the turn limit (3) is reached")
    allowed, reason = await gate.decide("Bash", {"command": "git status"})
    assert not allowed and reason == "the turn limit (3) is reached"
    assert audit.entries[0][1]["rule"] == "limits"


async def test_gate_hook_answers_in_the_cli_hook_protocol() -> None:
    gate = Gate("t6", policy.load_default(), "feature", audit=Audit())
    out = await gate.hook({"hook_event_name": "PreToolUse", "tool_name": "Bash",  # type: ignore[typeddict-item]
                           "tool_input": {"command": "rm -rf /"}}, "toolu_1", {"signal": None})
    specific = out["hookSpecificOutput"]  # type: ignore[typeddict-item]
    assert specific["hookEventName"] == "PreToolUse" and specific["permissionDecision"] == "deny"
