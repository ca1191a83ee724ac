"""The Notifier protocol and the values it sends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import policy
from runner.store import TaskRecord


@dataclass(frozen=True, slots=True)
class Button:
    """An inline button: `data` comes back to the bot when the owner presses it (at most 64 bytes)."""

    text: str
    data: str


@dataclass(frozen=True, slots=True)
class Message:
    """A message as the notifier renders it: `text` already escaped for HTML, rows of buttons under it."""

    text: str
    buttons: tuple[tuple[Button, ...], ...] = ()


class Notifier(Protocol):
    """Tells the owner what tasks do, and asks when the policy says `ask`."""

    def task_progress(self, task_id: str, line: str) -> None:
        """Record one progress line of a task; never blocks (it plugs into the scheduler's `Progress`).

        Implementations coalesce lines: `task_progress(id, "sandbox up")` may reach the owner together with
        the next few lines, in one edit of the task's one message.
        """

    async def task_finished(self, task: TaskRecord, result: Mapping[str, Any] | None) -> None:
        """The task's run is over: show its outcome (`RunResult.to_json()` shape), with the owner's choices."""

    async def ask(self, task_id: str, call: policy.ToolCall, decision: policy.Decision) -> bool:
        """Ask the owner about one tool call; True when allowed. The caller (`Gate`) applies the timeout."""

    async def announce(self, text: str) -> None:
        """Tell the owner something that is no task's progress: a release's outcome, a rollback and why."""

    async def aclose(self) -> None:
        """Stop pending work and release the connection."""
