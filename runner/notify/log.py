"""LogNotifier: progress and outcomes to the log; nobody can answer an `ask`, so it is a deny."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import policy
from runner.store import TaskRecord

log = logging.getLogger("agent_runner.notify")


class LogNotifier:
    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger

    async def __aenter__(self) -> LogNotifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def task_progress(self, task_id: str, line: str) -> None:
        self._log.info("%s: %s", task_id, line)

    async def task_finished(self, task: TaskRecord, result: Mapping[str, Any] | None) -> None:
        self._log.info("%s: finished %s %s", task.id, task.state.value, task.reason)

    async def ask(self, task_id: str, call: policy.ToolCall, decision: policy.Decision) -> bool:
        self._log.warning("%s: %s asks the owner (%s); no owner channel, denied", task_id, call.tool, decision.reason)
        return False

    async def announce(self, text: str) -> None:
        self._log.warning("%s", text)

    async def aclose(self) -> None:
        return None
