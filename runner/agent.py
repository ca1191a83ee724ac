"""The agent driver: the Agent SDK runs here, the CLI runs in the sandbox, every tool call goes to the policy.

Size: about 470 lines: the Gate (the PreToolUse decision and its audit) and the session driver live
together because the driver builds the gate's hook, the CLI wrapper and the limits into one SDK session and
reads the gate's denials back when it ends; the prompts are runner.prompts', the model channel
runner.model_proxy's.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import re
import shlex
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import policy
from policy.paths import normalize
from runner.errors import StateError
from runner.models import Denial
from runner.sandbox.base import MODEL_FORWARD_PORT, Container, Sandbox

if TYPE_CHECKING:
    # The SDK (with mcp) is seconds of imports here: imported by run_agent, when a session starts, so `serve`
    # answers /health without it (issue 18's start-up).
    from claude_agent_sdk import ToolUseBlock
    from claude_agent_sdk.types import HookContext, HookInput, HookJSONOutput

# What crosses into the container: only these variables, by name. The SDK merges the supervisor's
# whole environment into the CLI subprocess, and the real key must not follow it in.
FORWARDED_ENV = (
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_ENTRYPOINT",
    "CLAUDE_AGENT_SDK_VERSION",
    "CLAUDE_CODE_SDK_READS_SESSION_STATE",
    "DISABLE_TELEMETRY",
    "DISABLE_AUTOUPDATER",
    "DISABLE_ERROR_REPORTING",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    "CLAUDE_CODE_MAX_OUTPUT_TOKENS",
    "CLAUDE_BASH_MAINTAIN_PROJECT_WORKING_DIR",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
)

Stop = Literal["completed", "turn_limit", "wall_time", "budget", "error", "unrecorded"]
"""How a session ended; `unrecorded`: the state file refused a decision's audit row, so the gate stopped it."""
Asker = Callable[[str, "policy.ToolCall", "policy.Decision"], Awaitable[bool]]
Auditor = Callable[[str, dict[str, Any]], Awaitable[None]]
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class AgentOutcome:
    stopped: Stop
    turns: int
    summary: str
    """The agent's last words: untrusted text, to be fenced wherever it is shown."""
    denials: tuple[Denial, ...]
    tool_calls: int
    error: str = ""
    stderr: tuple[str, ...] = ()
    """The last lines the CLI (and the `docker exec` carrying it) wrote on stderr: partly the sandbox's words,
    so untrusted, printable text only."""
    session_id: str = ""
    """The CLI's session, to resume for another round in the same container ("" when none was reported)."""


STDERR_LINES = 20
STDERR_BYTES = 4096
_UNPRINTABLE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")


class StderrTail:
    """The last `lines` lines of a stream, at most `size` bytes in all, escape sequences and control
    characters removed: what explains a failed session, never the whole stream (the CLI can be chatty,
    and whatever writes it is in the sandbox)."""

    def __init__(self, lines: int = STDERR_LINES, size: int = STDERR_BYTES) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._size = size

    def add(self, line: str) -> None:
        line = _UNPRINTABLE.sub("", line).strip()
        if not line:
            return
        self._lines.append(line.encode()[:self._size - 1].decode("utf-8", "ignore"))  # and its newline
        while sum(len(kept.encode()) + 1 for kept in self._lines) > self._size:
            self._lines.popleft()

    def lines(self) -> tuple[str, ...]:
        return tuple(self._lines)


async def deny_asks(task_id: str, call: policy.ToolCall, decision: policy.Decision) -> bool:
    """The asker when no owner can answer: an `ask` becomes a deny."""
    return False


def input_digest(tool_input: Any) -> str:
    canonical = json.dumps(tool_input, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Gate:
    """Decides every tool call on the trusted side: policy, then owner for `ask`, all audited."""

    def __init__(
        self,
        task_id: str,
        active: policy.Policy,
        kind: str,
        *,
        audit: Auditor,
        ask: Asker = deny_asks,
        ask_timeout: float = 300.0,
        progress: Progress | None = None,
    ) -> None:
        self.task_id = task_id
        self.policy = active
        self.kind = kind
        self._audit = audit
        self._ask = ask
        self._ask_timeout = ask_timeout
        self._progress = progress or (lambda _line: None)
        self.denials: list[Denial] = []
        self.calls = 0
        self._closed: str | None = None
        self.approved: dict[str, str] = {}
        """Workspace-relative path -> sha256 of the exact content the owner said yes to in a Write. An Edit's
        yes pins nothing (its result depends on the file), so such a file's final content is asked again."""
        self.unrecorded: StateError | None = None
        """Why the state file refused a decision's audit row; from then on every call is denied."""
        self.stopping = asyncio.Event()
        """Set when the session must end now (the audit refused): run_agent stops it as it stops a limit."""
        self.decided: set[str] = set()
        """The tool_use ids the hook was asked about; a result for any other id is the CLI's own answer."""

    def close(self, reason: str) -> None:
        """From now on every call is denied: a limit was reached while the CLI may still be asking."""
        self._closed = reason

    async def decide(self, tool: str, tool_input: dict[str, Any]) -> tuple[bool, str]:
        self.calls += 1
        call = policy.ToolCall(tool=tool, input=tool_input, kind=self.kind)
        decision = policy.evaluate(self.policy, call)
        if self._closed is not None:
            decision = dataclasses.replace(decision, effect=policy.Effect.DENY, rule_id="limits", reason=self._closed)
        effect = decision.effect.value
        allowed = effect == "allow"
        reason = decision.reason
        if effect == "ask" and self._ask is deny_asks:
            reason = f"the policy asks the owner, and no owner channel is configured: {decision.reason}"
        elif effect == "ask":
            answer = await self._owner_says(call, decision)
            allowed = bool(answer)
            reason = (f"no answer from the owner within {self._ask_timeout:.0f}s: {decision.reason}" if answer is None
                      else f"owner {'allowed' if answer else 'denied'}: {decision.reason}")
        try:
            await self._audit(
                "tool_decision",
                {
                    "tool": tool,
                    "input_digest": input_digest(tool_input),
                    "decision": "allow" if allowed else "deny",
                    "policy_effect": effect,
                    "rule": decision.rule_id,
                    "reason": reason,
                    "command": decision.command,
                    "policy_sha256": decision.policy_sha256,
                },
            )
        except StateError as exc:
            # Fail closed: a decision that cannot be audited is not made, and the task stops (the supervisor
            # keeps its work) rather than act on without a record.
            self.unrecorded = self.unrecorded or exc
            self.close(f"the supervisor cannot record its decisions: {exc}")
            self.stopping.set()
            allowed, reason = False, f"the supervisor cannot record its decisions: {exc}"
            decision = dataclasses.replace(decision, rule_id="audit")
        if not allowed:
            self.denials.append(Denial(tool=tool, rule=decision.rule_id, reason=reason))
            self._progress(f"denied {tool}: {reason} [{decision.rule_id}]")
        else:
            self._progress(f"allowed {tool}{_brief(tool_input)}")
            if effect == "ask" and tool == "Write" and isinstance(tool_input.get("content"), str):
                rel = normalize(str(tool_input.get("file_path", "")), self.policy.workspace).rel
                if rel:
                    self.approved[rel] = hashlib.sha256(tool_input["content"].encode()).hexdigest()
        return allowed, reason

    async def _owner_says(self, call: policy.ToolCall, decision: policy.Decision) -> bool | None:
        """The owner's yes or no to `call`, or None when no answer came within the ask timeout."""
        try:
            async with asyncio.timeout(self._ask_timeout):
                return await self._ask(self.task_id, call, decision)
        except TimeoutError:
            return None

    async def confirm(self, path: str, content: bytes | None, diff: str) -> tuple[bool, str]:
        """Put a changed dependency file (`paths.ask_write`) to the owner at the end of the task, unless they
        already said yes to this exact content in a Write; (allowed, reason), audited. Without an owner
        channel, or without an answer in time, it is a no."""
        digest = None if content is None else hashlib.sha256(content).hexdigest()
        if digest is not None and self.approved.get(path) == digest:
            return True, f"the owner approved this content of {path!r} when it was written"
        absolute = f"{self.policy.workspace}/{path}"
        shown = {"file_path": absolute, "diff": diff,
                 "content": "(deleted)" if content is None else content.decode("utf-8", "replace")}
        call = policy.ToolCall(tool="Write" if content is not None else "Delete", input=shown, kind=self.kind)
        why = (f"{path!r} is a dependency file (paths.ask_write) and the task changed it without your yes "
               "for this content")
        decision = policy.Decision(policy.Effect.ASK, "paths.ask_write", why, None, self.policy.version,
                                   self.policy.sha256)
        if self._ask is deny_asks:
            allowed, reason = False, f"{why}, and no owner channel is configured"
        else:
            answer = await self._owner_says(call, decision)
            allowed = bool(answer)
            reason = (f"no answer from the owner within {self._ask_timeout:.0f}s: {why}" if answer is None
                      else f"owner {'allowed' if answer else 'denied'} the final content of {path!r}")
        await self._audit("final_change_decision", {
            "path": path, "decision": "allow" if allowed else "deny", "rule": "paths.ask_write", "reason": reason,
            "content_sha256": digest, "policy_sha256": self.policy.sha256,
        })
        self._progress(f"{'allowed' if allowed else 'denied'} the final {path}: {reason}")
        return allowed, reason

    async def refused_by_cli(self, tool: str, tool_input: dict[str, Any], answer: str) -> None:
        """Audit a call the CLI answered without asking the hook (a tool it does not offer, its own permission
        check), so the log holds every call the agent attempted, not only those the policy decided."""
        reason = " ".join(answer.split())[:300]
        try:
            await self._audit("cli_refusal", {"tool": tool, "input_digest": input_digest(tool_input),
                                              "decision": "deny", "reason": reason,
                                              "policy_sha256": self.policy.sha256})
        except StateError as exc:  # as in decide: no record, no more calls
            self.unrecorded = self.unrecorded or exc
            self.close(f"the supervisor cannot record its decisions: {exc}")
            self.stopping.set()
        self._progress(f"the CLI refused {tool} itself: {reason}")

    async def hook(self, hook_input: HookInput, tool_use_id: str | None, context: HookContext) -> HookJSONOutput:
        if hook_input["hook_event_name"] != "PreToolUse":
            return {}
        self.decided.add(tool_use_id or str(hook_input.get("tool_use_id", "")))
        allowed, reason = await self.decide(hook_input["tool_name"], hook_input["tool_input"])
        return {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "allow" if allowed else "deny",
                "permissionDecisionReason": reason,
            }
        }


SYSTEM_PROMPT = """You are a careful software engineer working on a Telegram bot's repository, checked out at
/workspace (your working directory). You have no network. Every tool call you make is checked against the
owner's policy by a supervisor outside your container; a denied call is final, so choose another way rather
than retrying it. Keep changes minimal and focused on the task. Run the project's tests before you finish.
Never touch secrets, deployment files, CI workflows or the agent's own configuration. When you are done,
reply with a short summary of what you changed and why."""

REVIEW_PROMPT = """You are reviewing a Telegram bot's repository at /workspace (read-only; you have no
network). Read the code the owner points you to and reply with concrete findings: bugs, risks, and
suggested changes, each with file and line. Do not modify any file."""


def system_prompt(kind: str) -> str:
    return REVIEW_PROMPT if kind == "review" else SYSTEM_PROMPT


def _brief(tool_input: dict[str, Any]) -> str:
    for key in ("command", "file_path", "path", "pattern"):
        if key in tool_input:
            text = str(tool_input[key]).replace("\n", " ")
            return f" {text[:80]}"
    return ""


def write_cli_wrapper(directory: Path, command: Sequence[str]) -> Path:
    """A cli_path for the SDK that runs the CLI in the sandbox instead of on this host."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "claude-in-sandbox"
    wrapper.write_text("#!/bin/sh\n# Runs the Claude Code CLI inside the task's sandbox.\nexec " + shlex.join(command)
                       + ' "$@"\n')
    wrapper.chmod(stat.S_IRWXU)
    return wrapper


async def run_agent(
    *,
    sandbox: Sandbox,
    container: Container,
    gate: Gate,
    prompt: str,
    system_prompt: str,
    model_token: str,
    workdir: Path,
    max_turns: int,
    wall_time: float,
    budget_spent: asyncio.Event | None = None,
    model: str | None = None,
    resume: str | None = None,
) -> AgentOutcome:
    """Drive one agent session to its end or to a limit. On a limit every process in the container is
    killed (the CLI with them); the container and its workspace stay for the supervisor to read.

    `wall_time` is the deadline the task's gateway token was given at the same moment (issue_token's
    `time_limit`): the gateway refuses and cuts model calls from then on, so a session that ends in an error
    once its time is up ended because of the time, not of the error it saw.

    `resume`: a session this container's CLI ran before (AgentOutcome.session_id); its transcript is in the
    container's config directory, which killing the container's processes keeps, so `prompt` continues it."""
    from claude_agent_sdk import (
        AssistantMessage,
        ClaudeAgentOptions,
        HookMatcher,
        ResultMessage,
        TextBlock,
        ToolResultBlock,
        ToolUseBlock,
        UserMessage,
        query,
    )

    tail = StderrTail()
    wrapper = write_cli_wrapper(workdir, sandbox.attach_command(container, ["claude"], FORWARDED_ENV))
    tools = list(gate.policy.allowed_tools(gate.kind))
    options = ClaudeAgentOptions(
        cli_path=wrapper,
        cwd=workdir,
        tools=tools,
        allowed_tools=[],
        disallowed_tools=["Task", "Agent", "WebFetch", "WebSearch"],
        setting_sources=[],
        system_prompt=system_prompt,
        resume=resume or None,
        max_turns=max_turns + 1,  # ours is the limit that counts; the CLI's is a backstop
        model=model,
        hooks={"PreToolUse": [HookMatcher(matcher=None, hooks=[gate.hook], on_failure="block")]},
        env={
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{MODEL_FORWARD_PORT}",
            "ANTHROPIC_API_KEY": model_token,
            "DISABLE_TELEMETRY": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            # Every Bash call starts in /workspace, so the policy decides relative paths against the directory
            # the command really runs in (the CLI otherwise keeps a `cd` from one call to the next).
            "CLAUDE_BASH_MAINTAIN_PROJECT_WORKING_DIR": "1",
            # Agents commit as they work (Claude Code's heredoc idiom); without an identity git refuses. The
            # supervisor makes its own commit from the extracted change, so this name never reaches the forge.
            "GIT_AUTHOR_NAME": "agent",
            "GIT_AUTHOR_EMAIL": "agent@sandbox.invalid",
            "GIT_COMMITTER_NAME": "agent",
            "GIT_COMMITTER_EMAIL": "agent@sandbox.invalid",
        },
        stderr=tail.add,
    )
    turns = 0
    summary = ""
    stopped: Stop = "completed"
    error = ""
    session_id = ""
    # What the session itself ended with. Kept apart from `stopped`: after a limit is decided the consumer
    # may still read a message or two while it is cancelled, and must not overwrite the decision.
    session_end: tuple[Stop, str] = ("completed", "")

    seen: set[str] = set()
    attempted: dict[str, ToolUseBlock] = {}

    async def consume() -> None:
        nonlocal turns, summary, session_end, session_id
        async for message in query(prompt=prompt, options=options):
            if isinstance(message, AssistantMessage):
                attempted.update((b.id, b) for b in message.content if isinstance(b, ToolUseBlock))
                # The CLI may stream one turn as several messages (a block each); a turn is a model message id.
                turn_id = message.message_id or message.uuid or str(len(seen))
                if turn_id not in seen:
                    seen.add(turn_id)
                    turns += 1
                    summary = ""
                texts = [b.text for b in message.content if isinstance(b, TextBlock) and b.text.strip()]
                if texts:
                    summary = "\n".join(filter(None, [summary, *texts]))
                if any(isinstance(b, ToolUseBlock) for b in message.content) and turns >= max_turns:
                    # No turn is left to see the tools' results: they do not run.
                    gate.close(f"the turn limit ({max_turns}) is reached")
                    session_end = ("turn_limit", "")
                    return
            elif isinstance(message, UserMessage) and isinstance(message.content, list):
                for block in message.content:
                    if (isinstance(block, ToolResultBlock) and block.tool_use_id not in gate.decided
                            and (call := attempted.get(block.tool_use_id)) is not None):
                        await gate.refused_by_cli(call.name, call.input, _result_text(block.content))
            elif isinstance(message, ResultMessage):
                session_id = message.session_id or session_id
                if message.is_error:
                    session_end = ("error", str(message.result or message.subtype))

    async def watch_budget() -> None:
        if budget_spent is None:
            await asyncio.Event().wait()
        else:
            await budget_spent.wait()

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wall_time
    consumer = asyncio.create_task(consume())
    budget = asyncio.create_task(watch_budget())
    unrecorded = asyncio.create_task(gate.stopping.wait())
    try:
        done, _ = await asyncio.wait({consumer, budget, unrecorded}, timeout=wall_time,
                                     return_when=asyncio.FIRST_COMPLETED)
        if unrecorded in done:
            stopped = "unrecorded"
        elif consumer in done:
            exc = consumer.exception()
            stopped, error = ("error", describe_failure(exc)) if exc is not None else session_end
            if stopped == "error" and budget_spent is not None and budget_spent.is_set():
                # The gateway refused a call the budget could not cover and the CLI gave up on it: that is the
                # budget, not an agent failure.
                stopped, error = "budget", ""
            elif stopped == "error" and loop.time() >= deadline:
                stopped, error = "wall_time", ""  # the gateway cut the session at the shared deadline
        else:
            stopped = "budget" if budget in done else "wall_time"
        if stopped in ("budget", "wall_time"):
            gate.close(f"the task's {'token/cost budget' if stopped == 'budget' else 'wall time'} is spent")
    finally:
        budget.cancel()
        unrecorded.cancel()
        if stopped in ("turn_limit", "wall_time", "budget", "unrecorded"):
            # Enforced from outside: every process of the task goes, the CLI with them; the workspace stays.
            await sandbox.kill_processes(container)
        if not consumer.done():
            consumer.cancel()
        await asyncio.gather(consumer, budget, unrecorded, return_exceptions=True)
    return AgentOutcome(stopped, turns, summary, tuple(gate.denials), gate.calls, error, tail.lines(), session_id)


class _QuietReaderExit(logging.Filter):
    """The SDK logs the CLI's exit as an error before it raises it into the session. The task's reason says why
    the CLI ended (with its last stderr lines), and when a limit killed it that was no error at all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Fatal error in message reader")


logging.getLogger("claude_agent_sdk._internal.query").addFilter(_QuietReaderExit())


def _result_text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content or ""


def describe_failure(exc: BaseException) -> str:
    """A failed session's error in a line. The SDK's ProcessError says only "Check stderr output for details"
    (the stderr tail is kept beside it); anything else is its type and first line."""
    from claude_agent_sdk import ProcessError

    if isinstance(exc, ProcessError):
        return f"the CLI exited with code {exc.exit_code}" if exc.exit_code is not None else "the CLI failed"
    first = (str(exc).strip().splitlines() or [""])[0][:500]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
