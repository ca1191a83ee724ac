"""The policy gate on the trusted side: decisions, owner asks with a timeout, the audit trail, closing."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import policy
from runner.agent import STDERR_BYTES, Gate, StderrTail, describe_failure, input_digest, run_agent
from runner.errors import StateFull
from runner.sandbox.base import Container

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
    # The CLI's hook input, as JSON gives it (only the keys the gate reads).
    hook_input: Any = {"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "rm -rf /"}}
    out: Any = await gate.hook(hook_input, "toolu_1", {"signal": None})
    specific = out["hookSpecificOutput"]
    assert specific["hookEventName"] == "PreToolUse" and specific["permissionDecision"] == "deny"


class RefusingAudit(Audit):
    """An audit log on a disk that filled after `room` rows."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    async def __call__(self, event: str, detail: dict[str, Any]) -> None:
        if len(self.entries) >= self.room:
            raise StateFull("the state file /x/state.db cannot be written: its disk is full", "/x/state.db")
        await super().__call__(event, detail)


async def test_a_decision_the_audit_refuses_is_a_deny_and_stops_the_session() -> None:
    audit = RefusingAudit(room=1)
    gate = Gate("t7", policy.load_default(), "feature", audit=audit)
    assert (await gate.decide("Bash", {"command": "git status"}))[0]
    allowed, reason = await gate.decide("Bash", {"command": "git status"})
    assert not allowed and reason.startswith("the supervisor cannot record its decisions: the state file /x/state.db")
    assert gate.stopping.is_set() and isinstance(gate.unrecorded, StateFull)
    assert [(d.tool, d.rule) for d in gate.denials] == [("Bash", "audit")]
    # Closed for good: later calls are denied even if the file takes rows again.
    audit.room = 10
    allowed, _ = await gate.decide("Read", {"file_path": "/workspace/README.md"})
    assert not allowed and audit.entries[-1][1]["decision"] == "deny"


def test_stderr_tail_keeps_the_last_printable_lines_within_its_bounds() -> None:
    tail = StderrTail(lines=3)
    for i in range(10):
        tail.add(f"line {i}")
    tail.add("")
    tail.add("   ")
    tail.add("\x1b[31mError:\x1b[0m the\x07 sandbox fell over\r")
    assert tail.lines() == ("line 8", "line 9", "Error: the sandbox fell over")
    wide = StderrTail(lines=50)
    for _ in range(50):
        wide.add("x" * 1000)
    assert sum(len(line) + 1 for line in wide.lines()) <= STDERR_BYTES and wide.lines()
    wide.add("é" * 5000)  # one line longer than the whole budget is cut, on a character boundary
    assert len(wide.lines()) == 1 and len(wide.lines()[0].encode()) <= STDERR_BYTES


def test_describe_failure_says_how_the_cli_ended() -> None:
    from claude_agent_sdk import ProcessError

    error = ProcessError("Command failed with exit code 255", exit_code=255, stderr="Check stderr output for details")
    assert describe_failure(error) == "the CLI exited with code 255"
    assert describe_failure(RuntimeError("boom\nsecond line")) == "RuntimeError: boom"


# A stand-in for the sandbox's `docker exec`: it says what went wrong on stderr, as the docker CLI does, and fails.
FAILING_ATTACH = ("import sys\n"
                  "for i in range(40):\n"
                  "    print(f'noise {i}', file=sys.stderr)\n"
                  "print('Error response from daemon: container 0123abcd is not running', file=sys.stderr)\n"
                  "sys.exit(1)\n")


class AttachOnlySandbox:
    """The part of a Sandbox run_agent uses: how to attach the CLI, and killing (never needed here)."""

    def __init__(self) -> None:
        self.kills = 0

    def attach_command(self, container: Container, argv: Sequence[str], env_names: Sequence[str]) -> list[str]:
        return [sys.executable, "-c", FAILING_ATTACH]

    async def kill_processes(self, container: Container) -> None:
        self.kills += 1


async def test_a_cli_that_fails_leaves_its_last_stderr_lines_in_the_outcome(tmp_path: Path) -> None:
    sandbox = AttachOnlySandbox()
    gate = Gate("t8", policy.load_default(), "feature", audit=Audit())
    started = time.monotonic()
    outcome = await run_agent(sandbox=sandbox, container=Container("c1", "box", "t8"),  # type: ignore[arg-type]
                              gate=gate, prompt="x", system_prompt="y", model_token="t", workdir=tmp_path,
                              max_turns=3, wall_time=60)
    assert time.monotonic() - started < 30
    assert outcome.stopped == "error" and outcome.error == "the CLI exited with code 1"
    assert outcome.stderr[-1] == "Error response from daemon: container 0123abcd is not running"
    assert 0 < len(outcome.stderr) <= 20 and outcome.stderr[0].startswith("noise ")
    assert sandbox.kills == 0  # an error is not a limit: the supervisor decides what happens to the container
