"""The HTTP API's request and response bodies as pydantic models: handlers parse through them, render through
them, and runner.api.openapi generates the OpenAPI document from them, so the three cannot disagree.

Requests are strict (`"yes"` is not a boolean, `1` is not a string) and treat `null` as absent, as the hand
parser before them did; unknown keys are ignored. Query strings are lax (they are all text). Responses list every
field as required in the document (they are always sent), except where a model says otherwise.

Size: about 440 lines, all declarations, one section per resource; the whole contract reads in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from runner.alerts.alertmanager import MAX_ALERTS
from runner.models import FollowUpState, TaskKind, TaskState
from runner.service.releases import ReleaseState

MAX_PROMPT_CHARS = 20_000
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000

# Every id and number here ends up in SQLite, which holds signed 64-bit integers: larger is a 400, not a 500.
Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS)]
Refusal = Literal["no credential configured", "no bearer token", "bad token"]
Time = Annotated[float, Field(allow_inf_nan=False)]


class RequestBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class Query(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)


class Described(BaseModel):
    """A body another module parses (runner.alerts, runner.api.followups): here only to be described."""

    model_config = ConfigDict(defer_build=True)


class ResponseBody(BaseModel):
    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True, defer_build=True)


# ------------------------------------------------------------------------------------------------ errors


class Error(ResponseBody):
    """Every refusal's shape: `error` says what is wrong (for a bad request, which field)."""

    error: str


class Unauthorized(ResponseBody):
    error: Literal["unauthorized"]
    reason: Refusal


class RateLimited(ResponseBody):
    error: Literal["rate_limited"]
    limit: str
    retry_after: int


# ------------------------------------------------------------------------------------------------- tasks


class Command(RequestBody):
    prompt: Prompt = Field(description="What to do; blank after stripping is refused")
    kind: TaskKind = "feature"
    dry_run: bool = Field(False, description="Return a diff instead of opening a pull request")
    repo: str | None = Field(None, description="Defaults to AGENT_RUNNER_REPO; only a dry run may name another "
                                                "repository")


class TaskLinks(ResponseBody):
    self: str
    events: str


class Accepted(ResponseBody):
    task_id: str
    state: TaskState
    links: TaskLinks


class TaskPr(ResponseBody):
    """The pull request a task opened, as its run recorded it."""

    number: int
    url: str
    branch: str
    head_sha: str


class Page(Query):
    limit: int = Field(DEFAULT_LIMIT, description=f"Clamped to 1..{MAX_LIMIT}")

    @field_validator("limit")
    @classmethod
    def _clamped(cls, value: int) -> int:
        return min(max(value, 1), MAX_LIMIT)


class TasksQuery(Page):
    state: list[TaskState] = Field(default_factory=list, description="Only tasks in these states")


class TaskSummary(ResponseBody):
    id: str
    kind: str
    state: TaskState
    source: str
    dry_run: bool
    repo: str
    prompt: str
    created_at: float
    updated_at: float
    reason: str
    fingerprint: str | None
    pr: TaskPr | None = Field(description="Its pull request, once it opened one")


class TasksList(ResponseBody):
    tasks: list[TaskSummary]


class StateAt(ResponseBody):
    state: str | None
    at: float
    reason: str


class Timings(ResponseBody):
    created_at: float
    updated_at: float
    elapsed_seconds: float
    states: list[StateAt]


class Release(ResponseBody):
    id: int
    number: int
    head_sha: str
    method: str
    task_id: str | None
    actor: str
    state: ReleaseState
    detail: str
    base_branch: str | None
    merge_sha: str | None
    previous_sha: str | None = Field(description="What ran before: the version a rollback returns to")
    revert_sha: str | None = Field(description="The revert of the merge after a rollback")
    deployed_at: float | None
    watch_until: float | None = Field(description="Unix time the post-deploy watch ends")
    created_at: float
    updated_at: float
    fence: dict[str, Any] | None = Field(None, description="The deploy step in flight, if any")
    deployed: dict[str, Any] | None = Field(None, description="The deploy step's result, once known")
    migrations: str | None = Field(None, description="The migration files the merge changes (policy "
                                   "migrations.paths), comma-separated; empty for none; null before the merge")
    asked: Literal["deploy", "rollback"] | None = Field(
        None, description="The question the release waits on in state `asking`: answer with "
                          "POST /releases/{id}/answer {answer: go|hold}")
    consent: str | None = Field(None, description="What the owner answered go to (deploy, rollback)")


class Task(TaskSummary):
    requested_by: str
    base_sha: str | None
    active: bool
    timings: Timings
    result: dict[str, Any] | None = Field(description="The run's result (RunResult.to_json) once it has one")
    releases: list[Release] = Field(description="Its pull request's releases (merge, deploy, watch), newest first")


class Cancelled(ResponseBody):
    task_id: str
    state: TaskState


# ----------------------------------------------------------------------------------------- pull requests


class Approve(RequestBody):
    number: Int64
    head_sha: str = Field(description="The head commit the owner reviewed (a unique prefix of 7+ hex digits will "
                                      "do)")


class ApprovalLinks(ResponseBody):
    release: str
    task: str | None
    events: str | None


class Approved(ResponseBody):
    number: int
    task_id: str | None
    release_id: int
    state: Literal["approved"]
    links: ApprovalLinks


class ReleaseAnswer(RequestBody):
    answer: Literal["go", "hold"] = Field(description="go: deploy it (or roll it back); hold: keep it as it is")


class Reject(RequestBody):
    number: Int64


class Rejected(ResponseBody):
    number: int
    state: Literal["open", "merged", "closed"]
    task_id: str | None


class ReleasesList(ResponseBody):
    releases: list[Release]


class PrLinks(ResponseBody):
    pr: str = Field(description="The pull request on the forge")
    task: str | None
    events: str | None


class OpenPr(ResponseBody):
    number: int
    title: str
    url: str
    head_sha: str = Field(description="The head to approve: POST /agent/approve-pr {number, head_sha}")
    head_branch: str
    base_branch: str
    task_id: str | None = Field(description="The task that proposed it; null for a pull request not ours")
    task_state: TaskState | None
    links: PrLinks


class PrsList(ResponseBody):
    prs: list[OpenPr] = Field(description="Open pull requests, lowest number first")


# ------------------------------------------------------------------------------------------------ audit


class AuditQuery(Page):
    task_id: str | None = Field(None, description="Only this task's entries")
    event: str | None = Field(None, description="Only entries of this event (e.g. state, tool_decision, refused)")
    since: Time | None = Field(None, description="Only entries at or after this Unix time")
    until: Time | None = Field(None, description="Only entries before this Unix time")
    before: Int64 | None = Field(None, description="Only entries older than this seq: the previous page's `next`")


class AuditEntry(ResponseBody):
    seq: int
    at: float
    task_id: str | None
    actor: str
    event: str
    detail: dict[str, Any]


class AuditPage(ResponseBody):
    entries: list[AuditEntry] = Field(description="Newest first")
    next: int | None = Field(description="Pass as `before` for the next (older) page; null on the last page")


# ------------------------------------------------------------------------------------------------ policy


class PolicyText(RequestBody):
    text: str = Field(description="The policy's YAML")


class Policy(ResponseBody):
    version: str = Field(description="The policy's own `version:` field")
    sha256: str
    text: str = Field(description="The active policy's YAML")
    source: str = Field(description="Where it was loaded from (file or stored version)")


class PolicyActivated(ResponseBody):
    version: str = Field(description="The policy's own `version:` field")
    sha256: str
    activated: Literal[True]


class Problem(ResponseBody):
    line: int | None = Field(description="1-based")
    key: str | None = Field(description="Dotted path of the offending key")
    message: str


class PolicyInvalid(ResponseBody):
    error: str
    problems: list[Problem]


class PolicyVersion(ResponseBody):
    version: int = Field(description="The stored version number (what rollback takes)")
    name: str = Field(description="The policy's own `version:` field")
    sha256: str
    at: float = Field(description="Unix time")
    actor: str
    note: str
    active: bool


class PolicyHistory(ResponseBody):
    versions: list[PolicyVersion] = Field(description="Newest first, at most 100")


class Rollback(RequestBody):
    version: Int64 = Field(description="A stored version number")


# ------------------------------------------------------------------------------------------------ alerts
# The webhook's body is parsed by runner.alerts.alertmanager.parse_auto_fix (recorded payloads test its messages);
# these models describe it for the document.

Labels = dict[str, str]


class Alert(Described):
    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Labels = {}
    startsAt: str = Field(json_schema_extra={"format": "date-time"})
    endsAt: str = Field("", json_schema_extra={"format": "date-time"},
                        description="0001-01-01T00:00:00Z when unset")
    generatorURL: str = ""
    fingerprint: str = ""


class AlertmanagerWebhook(Described):
    """Alertmanager's webhook_config body, version 4."""

    version: Literal["4"]
    groupKey: str
    truncatedAlerts: int = Field(0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: Labels = {}
    commonLabels: Labels = {}
    commonAnnotations: Labels = {}
    externalURL: str = ""
    alerts: list[Alert] = Field(max_length=MAX_ALERTS)


class DirectReport(Described):
    """A traceback posted directly, for setups without Loki."""

    model_config = ConfigDict(extra="forbid")

    traceback: str = Field(min_length=1)
    service: str = ""
    labels: Labels = {}


class AlertOutcome(ResponseBody):
    """What became of one firing alert; only the fields that apply to it are sent."""

    # Rendered without its None fields, as runner.alerts.autofix.Outcome.as_json sends it.

    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=False, defer_build=True)

    fingerprint: str
    status: Literal["accepted", "duplicate", "rate_limited", "cooling_down", "rolled_back"]
    task_id: str | None = None
    retry_after: int | None = None
    note: str | None = None


class AlertOutcomes(ResponseBody):
    alerts: list[AlertOutcome]


class AlertsRateLimited(ResponseBody):
    error: Literal["rate_limited"]
    alerts: list[AlertOutcome]
    retry_after: int


# --------------------------------------------------------------------------------------------- health


class ActivePolicy(ResponseBody):
    version: str = Field(description="The active policy's own `version:` field")
    sha256: str


class Health(ResponseBody):
    status: Literal["ok"]
    running: int
    waiting: int
    max_sandboxes: int
    policy: ActivePolicy = Field(description="The policy tasks are decided by now (after any PUT /policy)")


# ------------------------------------------------------------------------------------------ follow-ups
# Issue 16's routes (runner.api.followups) parse their own bodies; these describe them.


class FollowUpText(Described):
    text: str = Field(min_length=1, description="What should change on the task's pull request")


class FollowUpView(ResponseBody):
    follow_up: int
    task_id: str
    pr: int
    state: FollowUpState
    base_sha: str = Field(description="The PR head it builds on")
    head_sha: str | None = Field(description="The commit it pushed, once it has")
    session: str = Field(description="How the agent's session went on: resumed, or new and why")
    reason: str


class FollowUpLinks(ResponseBody):
    task: str


class FollowUpAccepted(FollowUpView):
    links: FollowUpLinks


class FollowUpRefused(ResponseBody):
    error: str
    retry_after: int


class GitHubIssueComment(Described):
    """GitHub's `issue_comment` webhook event (only what is read of it)."""

    action: str
    issue: dict[str, Any] = Field(description="Its `number`, and `pull_request` when the issue is a pull request")
    comment: dict[str, Any] = Field(description="Its `id`, `body`, `user.login`, `created_at`, `html_url`")


class WebhookIgnored(ResponseBody):
    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=False, defer_build=True)

    ok: bool | None = Field(None, description="Set for GitHub's `ping`")
    ignored: str | None = Field(None, description="Why the delivery started nothing")
