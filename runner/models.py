"""Values that cross module boundaries: task states, tasks, test results, denials, run results."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NewType, TypeVar

from runner.review import Review

TaskId = NewType("TaskId", str)
Progress = Callable[[str], None]
"""Hears one line of a task's (or the service's) progress as it happens; never blocks, never raises."""
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
    rounds: int = 1
    """How many rounds the agent worked: 1, plus one each time the supervisor's failing tests (or a fix's failed
    verification) went back to it (limits.test_rounds)."""
    review: Review | None = None
    """For reviews: the findings as the supervisor checked them (runner.review), and where they were posted."""

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
            "rounds": self.rounds,
            "review": self.review.to_json() if self.review is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunResult:
        """The value `to_json` wrote, back from storage. Lenient with rows older releases wrote: a missing or
        malformed field takes its default rather than making the whole task unreadable."""
        tests, pr, usage = data.get("tests"), data.get("pr"), data.get("usage")
        status = data.get("status")
        return cls(
            task_id=TaskId(str(data.get("task_id", ""))),
            status=TaskState(status) if status in _STATE_VALUES else TaskState.FAILED,
            diff=str(data.get("diff") or ""),
            files_changed=tuple(str(f) for f in data.get("files_changed") or ()),
            tests=_value(TestRun, tests),
            denials=tuple(d for d in (_value(Denial, x) for x in data.get("denials") or ()) if d is not None),
            pr=_value(PrRef, pr),
            usage=_usage(usage),
            reason=str(data.get("reason") or ""),
            verification=str(data["verification"]) if data.get("verification") is not None else None,
            rounds=data["rounds"] if isinstance(data.get("rounds"), int) and data["rounds"] > 0 else 1,
            review=Review.from_json(data.get("review")),
        )


_STATE_VALUES = frozenset(s.value for s in TaskState)


def _usage(data: object) -> Usage:
    """Usage read as the state file's SQL totals read it (CAST): numbers in strings count, the rest is 0."""
    if not isinstance(data, Mapping):
        return Usage()

    def number(key: str) -> float:
        try:
            return float(data.get(key) or 0)
        except (TypeError, ValueError):
            return 0.0

    return Usage(int(number("input_tokens")), int(number("output_tokens")), number("cost_usd"),
                 int(number("requests")))


_T = TypeVar("_T")


def _value(kind: type[_T], data: object) -> _T | None:
    """`kind(**data)` for a stored dataclass, taking only the fields it has; None when `data` is not one."""
    if not isinstance(data, Mapping):
        return None
    names = kind.__dataclass_fields__  # type: ignore[attr-defined]
    try:
        return kind(**{k: v for k, v in data.items() if k in names})
    except TypeError:  # a field it needs is missing
        return None


FollowUpState = Literal["queued", "running", "done", "failed"]
FOLLOW_UP_STATES: tuple[FollowUpState, ...] = ("queued", "running", "done", "failed")


@dataclass(frozen=True, slots=True)
class FollowUp:
    """The owner's follow-up on a task's pull request, as the state file holds it (persisted before it is acted
    on). `base_sha` is the PR head it builds on, `head_sha` the commit it pushed (None until then)."""

    id: int
    task_id: TaskId
    number: int
    text: str
    actor: str
    source: str
    state: FollowUpState
    created_at: float
    updated_at: float
    base_sha: str
    head_sha: str | None = None
    session: str = ""
    """How the agent's session went on: "resumed", or "new: <why the kept one could not be used>"."""
    reason: str = ""

    @property
    def work_id(self) -> str:
        """The follow-up's sandbox and working directory name (beside its task's)."""
        return f"{self.task_id}-f{self.id}"

    @property
    def open(self) -> bool:
        return self.state in ("queued", "running")


@dataclass(frozen=True, slots=True)
class FollowUpOutcome:
    """What a follow-up's run came to: `pushed` the new head (None when nothing was pushed, `reason` says why)."""

    pushed: str | None
    reason: str = ""
    session: str = ""
    tests: TestRun | None = None
    rounds: int = 1
