"""Values that cross module boundaries: task states, tasks, test results, denials, run results."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NewType

TaskId = NewType("TaskId", str)
TaskKind = Literal["feature", "fix", "review"]
TASK_KINDS: tuple[TaskKind, ...] = ("feature", "fix", "review")


class TaskState(enum.Enum):
    QUEUED = "queued"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    TESTING = "testing"
    DIFF_READY = "diff_ready"
    PROPOSED = "proposed"
    APPROVED = "approved"
    MERGING = "merging"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def sandbox_phase(self) -> bool:
        """States in which a container of the task may exist."""
        return self in (TaskState.PROVISIONING, TaskState.RUNNING, TaskState.TESTING)


TERMINAL_STATES = frozenset(
    {
        TaskState.DIFF_READY,
        TaskState.DEPLOYED,
        TaskState.ROLLED_BACK,
        TaskState.REJECTED,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.TIMED_OUT,
    }
)


@dataclass(frozen=True, slots=True)
class TestRun:
    __test__ = False  # not a pytest test class, whatever its name says

    command: str
    exit_code: int
    passed: bool
    output_tail: str


@dataclass(frozen=True, slots=True)
class Denial:
    tool: str
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0


@dataclass(frozen=True, slots=True)
class PrRef:
    number: int
    url: str
    branch: str
    head_sha: str


@dataclass(frozen=True, slots=True)
class RunResult:
    """What `agent-runner run --json` prints last: the contract users script against."""

    task_id: TaskId
    status: TaskState
    diff: str = ""
    files_changed: tuple[str, ...] = ()
    tests: TestRun | None = None
    denials: tuple[Denial, ...] = ()
    pr: PrRef | None = None
    usage: Usage = field(default_factory=Usage)
    reason: str = ""
    verification: str | None = None
    """For fixes: whether the agent's regression test fails on the base and passes with the fix."""

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "diff": self.diff,
            "files_changed": list(self.files_changed),
            "tests": asdict(self.tests) if self.tests else None,
            "denials": [asdict(d) for d in self.denials],
            "pr": asdict(self.pr) if self.pr else None,
            "usage": asdict(self.usage),
            "reason": self.reason,
            "verification": self.verification,
        }
