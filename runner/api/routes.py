"""HTTP endpoints: each is handed its body and query parsed into models (runner.api.endpoints), calls one action
of runner.service.operations or one Store query, and renders a model of runner.api.schemas. Two bodies are read
by their own parsers: a policy (YAML, or JSON) and Alertmanager's webhook (runner.alerts.alertmanager).

Each `@api(...)` is the route, its credential and its description at once: `routes()` serves them and
`GET /openapi.json` describes them (runner.api.openapi), so no route can be served undescribed or unguarded.

Size: about 410 lines, one handler per route and nothing else (parsing, credentials and errors are
runner.api.endpoints', the models runner.api.schemas'): the API's whole surface reads top to bottom here.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

import policy
from runner.alerts.alertmanager import parse_auto_fix
from runner.alerts.payload import WebhookError
from runner.api import events, followups
from runner.api.endpoints import BadRequest, api, body_of, caller_of, error, owner_only, parse, render, service_of
from runner.api.openapi import Answer, openapi_route
from runner.api.schemas import (
    Accepted,
    ActivePolicy,
    AlertmanagerWebhook,
    AlertOutcome,
    AlertOutcomes,
    AlertsRateLimited,
    ApprovalLinks,
    Approve,
    Approved,
    AuditEntry,
    AuditPage,
    AuditQuery,
    Cancelled,
    Command,
    DirectReport,
    Error,
    FollowUpAccepted,
    FollowUpRefused,
    FollowUpText,
    FollowUpView,
    GitHubIssueComment,
    Health,
    OpenPr,
    Page,
    Policy,
    PolicyActivated,
    PolicyHistory,
    PolicyInvalid,
    PolicyText,
    PolicyVersion,
    PrLinks,
    Problem,
    PrsList,
    RateLimited,
    Reject,
    Rejected,
    Release,
    ReleaseAnswer,
    ReleasesList,
    Rollback,
    StateAt,
    Task,
    TaskLinks,
    TaskPr,
    TasksList,
    TasksQuery,
    TaskSummary,
    Timings,
    WebhookIgnored,
)
from runner.errors import TaskError
from runner.service import metrics as prometheus
from runner.service import operations
from runner.service.operations import Caller
from runner.service.state import Service
from runner.store import TaskRecord

__all__ = ["BadRequest", "owner_only", "routes"]

TASK_ID = {"task_id": "A task id (what /agent/command answered)"}
NO_TASK = Answer("No such task", Error)
RETRY_AFTER = ("Retry-After",)


def routes(extra: list[BaseRoute] | None = None) -> list[BaseRoute]:
    """The API. `extra` are routes other modules add (a task page, a Telegram webhook): put them here, each
    wrapped by `owner_only` unless it checks its own credential."""
    return [*api.routes(), openapi_route(api.operations), *(extra or [])]


# -------------------------------------------------------------------------------------------------- tasks


@api("POST", "/agent/command", "Submit a task for the coding agent", body=Command, answers={
    202: Answer("Queued", Accepted),
    429: Answer("Over the hourly command limit (audited)", RateLimited, headers=RETRY_AFTER)})
async def command(request: Request, body: Command) -> Response:
    service = service_of(request)
    repo = _repo(service, body.repo, body.dry_run)
    task = await operations.queue_task(service, caller_of(request), kind=body.kind, prompt=body.prompt,
                                       dry_run=body.dry_run, repo=repo)
    return render(Accepted(task_id=task.id, state=task.state, links=_links(task)), 202)


def _repo(service: Service, given: str | None, dry_run: bool) -> str:
    configured = service.settings.repo
    if given is None or given == configured:
        if configured is None:
            raise BadRequest("repo: required (no AGENT_RUNNER_REPO is configured)")
        return configured
    # A pull request can only go to the configured forge; a dry run returns a diff and may look anywhere.
    if not dry_run:
        raise BadRequest("repo: only a dry run may name another repository than AGENT_RUNNER_REPO")
    try:
        path = Path(given).expanduser()
    except RuntimeError as exc:  # "~nosuchuser": no such home directory
        raise BadRequest(f"repo: {exc}") from None
    return str(path.resolve()) if path.exists() else given


def _links(task: TaskRecord) -> TaskLinks:
    return TaskLinks(self=f"/tasks/{task.id}", events=f"/tasks/{task.id}/events")


@api("GET", "/tasks", "Tasks, newest first, each with its prompt and pull request", query=TasksQuery,
     answers={200: Answer("The tasks", TasksList)})
async def list_tasks(request: Request, query: TasksQuery) -> Response:
    tasks = await service_of(request).store.list_tasks(states=query.state or None, limit=query.limit)
    return render(TasksList(tasks=[_summary(t) for t in tasks]))


def _summary(task: TaskRecord) -> TaskSummary:
    pr = task.result.pr if task.result is not None else None
    return TaskSummary(id=task.id, kind=task.kind, state=task.state, source=task.source, dry_run=task.dry_run,
                       repo=task.repo, prompt=task.prompt, created_at=task.created_at, updated_at=task.updated_at,
                       reason=task.reason, fingerprint=task.fingerprint,
                       pr=TaskPr(number=pr.number, url=pr.url, branch=pr.branch, head_sha=pr.head_sha) if pr else None)


@api("GET", "/tasks/{task_id}", "One task with its prompt, pull request, state history and result",
     path_params=TASK_ID, answers={200: Answer("The task", Task), 404: NO_TASK})
async def get_task(request: Request) -> Response:
    service = service_of(request)
    task = await service.store.get_task(request.path_params["task_id"])
    history = [StateAt(state=e.detail.get("state"), at=e.at, reason=e.detail.get("reason", ""))
               for e in await service.store.audit_log(task.id, event="state")]
    releases = await service.releases.rows.find(task_id=task.id) if service.releases is not None else []
    return render(Task(
        **dict(_summary(task)),
        requested_by=task.requested_by,
        base_sha=task.base_sha,
        active=service.scheduler.active(task.id),
        timings=Timings(created_at=task.created_at, updated_at=task.updated_at,
                        elapsed_seconds=round(task.updated_at - task.created_at, 3),
                        states=[StateAt(state="queued", at=task.created_at, reason=""), *history]),
        result=task.result.to_json() if task.result is not None else None,
        releases=[Release.model_validate(r.as_json()) for r in releases],
    ))


@api("GET", "/tasks/{task_id}/events", "The task's progress as Server-Sent Events until its run is over",
     path_params=TASK_ID,
     header_params={"Last-Event-ID": "The `id:` of the last event received: the stream resumes after it"},
     answers={200: Answer("`progress` lines, `state` on each change, then `end`; each but `end` has an `id:`; "
                          "a `: keep-alive` comment while nothing happens", media="text/event-stream"),
              404: NO_TASK})
async def task_events(request: Request) -> Response:
    service = service_of(request)
    task = await service.store.get_task(request.path_params["task_id"])
    cursor = events.Cursor.parse(request.headers.get("last-event-id"))
    return StreamingResponse(events.stream(service, task.id, cursor), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@api("POST", "/tasks/{task_id}/cancel", "Cancel a task", path_params=TASK_ID, answers={
    200: Answer("Cancelled", Cancelled), 404: NO_TASK, 409: Answer("The task is already over", Error)})
async def cancel_task(request: Request) -> Response:
    task = await operations.cancel_task(service_of(request), caller_of(request), request.path_params["task_id"])
    return render(Cancelled(task_id=task.id, state=task.state))


# Issue 16's follow-ups (runner.api.followups): those handlers read their own bodies, so the operations describe
# the bodies (`content`) and hand over no model; the owner's route is still authenticated here, once.
api("POST", "/tasks/{task_id}/follow-ups", "Follow up on a task's pull request: the agent changes it again and "
    "pushes a new commit on the same branch (an approval must then name the new head)", path_params=TASK_ID,
    content={"application/json": (FollowUpText,)}, answers={
        202: Answer("Queued", FollowUpAccepted), 404: NO_TASK,
        409: Answer("The task has no open pull request, or a follow-up of it is running", Error),
        429: Answer("Over the hourly command limit", FollowUpRefused, headers=RETRY_AFTER)},
    )(followups.create_follow_up)
api("POST", "/github/webhook", "GitHub's issue_comment events: the owner's `/agent ...` PR comment is a follow-up",
    "none", content={"application/json": (GitHubIssueComment,)},
    header_params={"X-Hub-Signature-256": "HMAC-SHA256 of the body with GITHUB_WEBHOOK_SECRET",
                   "X-GitHub-Event": "issue_comment (or ping)", "X-GitHub-Delivery": "GitHub's delivery id"},
    answers={200: Answer("Ignored (not the owner's /agent comment, or a ping), and why", WebhookIgnored),
             202: Answer("A follow-up was started", FollowUpView),
             401: Answer("The signature does not verify, or no secret is configured (audited)", Error)},
    )(followups.github_webhook)


# ------------------------------------------------------------------------------------------- pull requests


@api("GET", "/prs", "Open pull requests with their head (what an approval names) and the task behind each",
     answers={200: Answer("The open pull requests", PrsList),
              409: Answer("No forge is configured", Error), 502: Answer("The forge failed", Error)})
async def list_prs(request: Request) -> Response:
    service = service_of(request)
    if service.forge is None:
        raise TaskError("no forge is configured")
    prs = await service.forge.list_open()
    tasks = await service.store.tasks_of_prs([pr.number for pr in prs])
    out = []
    for pr in prs:
        task = tasks.get(pr.number)
        out.append(OpenPr(
            number=pr.number, title=pr.title, url=pr.url, head_sha=pr.head_sha, head_branch=pr.head_branch,
            base_branch=pr.base_branch, task_id=task.id if task else None, task_state=task.state if task else None,
            links=PrLinks(pr=pr.url, task=f"/tasks/{task.id}" if task else None,
                          events=f"/tasks/{task.id}/events" if task else None)))
    return render(PrsList(prs=out))


@api("POST", "/agent/approve-pr",
     "Approve the agent's pull request at the reviewed head: merge, deploy, health check and post-deploy watch run "
     "in the background (rolled back when unhealthy or when errors come back)", body=Approve, answers={
         202: Answer("Approved; follow the release (and the task's events)", Approved),
         404: Answer("No such pull request", Error),
         409: Answer("The pull request moved, is closed, is already being released, or no forge is configured",
                     Error),
         502: Answer("The forge failed", Error)})
async def approve_pr(request: Request, body: Approve) -> Response:
    """Checked and recorded here; merge, deploy and the post-deploy watch run in the background."""
    approval = await operations.approve(service_of(request), caller_of(request), body.number, body.head_sha)
    task, release = approval.task, approval.release
    links = ApprovalLinks(release=f"/releases/{release.id}", task=f"/tasks/{task.id}" if task else None,
                          events=f"/tasks/{task.id}/events" if task else None)
    return render(Approved(number=body.number, task_id=task.id if task else None, release_id=release.id,
                           state="approved", links=links), 202)


@api("POST", "/agent/reject-pr", "Close the agent's pull request", body=Reject, forge_failure=409, answers={
    200: Answer("Closed", Rejected), 404: Answer("No such pull request", Error),
    409: Answer("The pull request cannot be closed", Error)})
async def reject_pr(request: Request, body: Reject) -> Response:
    rejection = await operations.reject(service_of(request), caller_of(request), body.number)
    task = rejection.task
    return render(Rejected(number=body.number, state=rejection.pr.state, task_id=task.id if task else None))


@api("GET", "/releases", "Releases (approved pull requests through merge, deploy and watch), newest first",
     query=Page, answers={200: Answer("The releases", ReleasesList)})
async def list_releases(request: Request, query: Page) -> Response:
    service = service_of(request)
    found = await service.releases.rows.find(limit=query.limit) if service.releases is not None else []
    return render(ReleasesList(releases=[Release.model_validate(r.as_json()) for r in found]))


@api("GET", "/releases/{release_id}", "One release: its state, merge, rollback and watch",
     path_params={"release_id": "A release id (what approve-pr answered); anything else is a 404"},
     answers={200: Answer("The release", Release), 404: Answer("No such release", Error)})
async def get_release(request: Request) -> Response:
    service = service_of(request)
    try:
        given = request.path_params["release_id"]
        if service.releases is None or not given.isascii() or not given.isdigit() or len(given) > 18:
            raise KeyError(given)  # not an id SQLite could hold: no such release either
        release = await service.releases.rows.get(int(given))
    except KeyError:
        return error(404, "no such release")
    return render(Release.model_validate(release.as_json()))


@api("POST", "/releases/{release_id}/answer",
     "Answer the question a release that changes database migrations waits on (state asking): deploy it? roll "
     "it back?", body=ReleaseAnswer,
     path_params={"release_id": "A release id (what approve-pr answered); anything else is a 404"},
     answers={200: Answer("Answered; the release goes on", Release), 404: Answer("No such release", Error),
              409: Answer("The release waits for no answer, or no forge is configured", Error)})
async def answer_release(request: Request, body: ReleaseAnswer) -> Response:
    service = service_of(request)
    if service.releases is None:
        return error(409, "no forge is configured")
    given = request.path_params["release_id"]
    if not given.isascii() or not given.isdigit() or len(given) > 18:
        return error(404, "no such release")
    try:
        release = await service.releases.answer(int(given), body.answer == "go", actor=caller_of(request).actor)
    except KeyError:
        return error(404, "no such release")
    return render(Release.model_validate(release.as_json()))


# ------------------------------------------------------------------------------------------------- audit


@api("GET", "/audit", "The audit log, newest first: every decision, refusal and owner action, paged",
     query=AuditQuery, answers={200: Answer("One page of entries", AuditPage)})
async def audit(request: Request, query: AuditQuery) -> Response:
    rows = await service_of(request).store.audit_page(task_id=query.task_id, event=query.event, since=query.since,
                                                      until=query.until, before=query.before, limit=query.limit + 1)
    page = rows[:query.limit]
    return render(AuditPage(
        entries=[AuditEntry(seq=e.seq, at=e.at, task_id=e.task_id, actor=e.actor, event=e.event, detail=dict(e.detail))
                 for e in page],
        next=page[-1].seq if len(rows) > query.limit else None))


# ------------------------------------------------------------------------------------------------ policy


@api("GET", "/policy", "The active policy", answers={200: Answer("The active policy", Policy)})
async def get_policy(request: Request) -> Response:
    service = service_of(request)
    active = service.runtime.deps.policy
    return render(Policy(version=active.version, sha256=active.sha256, source=active.source,
                         text=await service.policies.active_text()))


@api("PUT", "/policy", "Validate a policy (schema with line numbers, its own examples) and make it the active one",
     content={"text/yaml": None, "application/json": (PolicyText,)}, answers={
         200: Answer("Recorded as a new version and active for the next task", PolicyActivated),
         422: Answer("Not valid; the active policy is unchanged (audited)", PolicyInvalid)})
async def put_policy(request: Request) -> Response:
    """Validated (schema with line numbers, the policy's own examples) before it can become active."""
    service, raw = service_of(request), await body_of(request)
    if request.headers.get("content-type", "").startswith("application/json"):
        text = parse(PolicyText, raw).text
    else:
        try:
            text = raw.decode()
        except UnicodeDecodeError as exc:
            raise BadRequest(f"the body must be the policy's YAML text, or JSON {{\"text\": ...}}: {exc}") from None
    try:
        loaded = await operations.activate_policy(service.policies, service.store, caller_of(request), text)
    except policy.PolicyLoadError as exc:
        problems = [Problem(line=line, key=key, message=message) for line, key, message in exc.problems] or \
            [Problem(line=exc.line, key=exc.key, message=str(exc))]
        return render(PolicyInvalid(error="the policy is not valid; the active policy is unchanged",
                                    problems=problems), 422)
    return render(PolicyActivated(version=loaded.version, sha256=loaded.sha256, activated=True))


@api("GET", "/policy/history", "Every policy version activated, newest first",
     answers={200: Answer("The versions", PolicyHistory)})
async def policy_history(request: Request) -> Response:
    service = service_of(request)
    active = await service.policies.store.active()
    versions = await service.policies.store.history(limit=100)
    return render(PolicyHistory(versions=[
        PolicyVersion(version=v.version, name=v.name, sha256=v.sha256, at=v.at, actor=v.actor, note=v.note,
                      active=active is not None and v.version == active.version) for v in versions]))


@api("POST", "/policy/rollback", "Make an earlier version active again (recorded as a new version)", body=Rollback,
     answers={200: Answer("Active", PolicyActivated), 404: Answer("No such policy version", Error),
              422: Answer("That version is no longer a valid policy", Error)})
async def rollback_policy(request: Request, body: Rollback) -> Response:
    service = service_of(request)
    loaded = await operations.rollback_policy(service.policies, service.store, caller_of(request), body.version)
    return render(PolicyActivated(version=loaded.version, sha256=loaded.sha256, activated=True))


# ------------------------------------------------------------------------------------------------ alerts


@api("POST", "/agent/auto-fix",
     "Alertmanager webhook (or a directly posted traceback): investigate and start fix tasks", "alerts",
     content={"application/json": (AlertmanagerWebhook, DirectReport)}, answers={
         200: Answer("Nothing was firing", AlertOutcomes),
         202: Answer("What became of each firing alert", AlertOutcomes),
         409: Answer("No AGENT_RUNNER_REPO is configured", Error),
         429: Answer("Every alert was refused; Alertmanager should retry", AlertsRateLimited, headers=RETRY_AFTER)})
async def auto_fix(request: Request) -> Response:
    service, raw = service_of(request), await body_of(request)
    try:
        parsed = parse_auto_fix(raw)  # the webhook's own parser: its messages are tested on recorded payloads
    except WebhookError as exc:
        raise BadRequest(str(exc)) from None
    caller = Caller("alertmanager", "alertmanager", caller_of(request).where)
    admission = await operations.admit_alert(service, caller, parsed)
    alerts = [AlertOutcome.model_validate(o.as_json()) for o in admission.outcomes]
    if admission.refused:  # nothing taken: let Alertmanager retry later
        soonest = admission.retry_after
        return render(AlertsRateLimited(error="rate_limited", alerts=alerts, retry_after=soonest), 429,
                      headers={"Retry-After": str(soonest)}, exclude_none=True)
    return render(AlertOutcomes(alerts=alerts), 202 if alerts else 200, exclude_none=True)


# ----------------------------------------------------------------------------------------- health, metrics


@api("GET", "/health", "Liveness and the scheduler's load", "none", answers={200: Answer("Up", Health)})
async def health(request: Request) -> Response:
    service = service_of(request)
    scheduler, active = service.scheduler, service.runtime.deps.policy
    return render(Health(status="ok", running=scheduler.running, waiting=scheduler.waiting,
                         max_sandboxes=scheduler.max_running,
                         policy=ActivePolicy(version=active.version, sha256=active.sha256)))


@api("GET", "/metrics", "Prometheus metrics", "none",
     answers={200: Answer("Prometheus text exposition format 0.0.4", media="text/plain")})
async def metrics(request: Request) -> Response:
    service = service_of(request)
    releases = await service.releases.rows.counts() if service.releases is not None else None
    text = await prometheus.render(service.store, sandboxes_running=service.scheduler.running, releases=releases)
    return PlainTextResponse(text, media_type=prometheus.CONTENT_TYPE)

