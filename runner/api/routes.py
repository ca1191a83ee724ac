"""HTTP endpoints: parse the request, call one action of runner.service.operations, render its answer as JSON.

Authentication is decided once, in `routes()`: each route names the credential it takes (the owner's bearer,
the alert secret, or none) and `_authenticated` checks it and audits a refusal before any handler runs. The
error tree is mapped to statuses once, in `_failed`. Handlers neither audit nor decide.

Size: about 460 lines for sixteen thin endpoints; they split by resource (tasks, pull requests, policy,
alerts) once pydantic models carry the parsing (issue 15, step 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

import policy
from runner.alerts.alertmanager import MAX_BODY_BYTES, WebhookError, parse_auto_fix
from runner.api.followups import followup_routes
from runner.api.openapi import openapi_route
from runner.errors import (
    ForgeConflict,
    ForgeError,
    ForgeNotFound,
    OperationError,
    PolicyVersionNotFound,
    RateLimited,
    TaskError,
    TaskNotFound,
)
from runner.models import TASK_KINDS, TaskState
from runner.service import metrics as prometheus
from runner.service import operations
from runner.service.operations import Caller
from runner.service.state import Service
from runner.store import TaskRecord

MAX_PROMPT_CHARS = 20_000
SSE_POLL_SECONDS = 0.5
STREAM_ENDS = frozenset({TaskState.PROPOSED}) | {s for s in TaskState if s.terminal}

Endpoint = Callable[[Request], Awaitable[Response]]
Credential = Literal["owner", "alerts", "none"]


def routes(extra: list[BaseRoute] | None = None) -> list[BaseRoute]:
    """The API. `extra` are routes other modules add (a task page, a Telegram webhook): put them here, each
    wrapped by `owner_only` (or `alerts_only`) unless it checks its own credential."""
    table: list[tuple[str, Endpoint, list[str], Credential]] = [
        ("/health", health, ["GET"], "none"),
        ("/metrics", metrics, ["GET"], "none"),
        ("/agent/command", command, ["POST"], "owner"),
        ("/agent/auto-fix", auto_fix, ["POST"], "alerts"),
        ("/agent/approve-pr", approve_pr, ["POST"], "owner"),
        ("/agent/reject-pr", reject_pr, ["POST"], "owner"),
        ("/releases", list_releases, ["GET"], "owner"),
        ("/releases/{release_id}", get_release, ["GET"], "owner"),
        ("/tasks", list_tasks, ["GET"], "owner"),
        ("/tasks/{task_id}", get_task, ["GET"], "owner"),
        ("/tasks/{task_id}/events", task_events, ["GET"], "owner"),
        ("/tasks/{task_id}/cancel", cancel_task, ["POST"], "owner"),
        ("/policy", get_policy, ["GET"], "owner"),
        ("/policy", put_policy, ["PUT"], "owner"),
        ("/policy/history", policy_history, ["GET"], "owner"),
        ("/policy/rollback", rollback_policy, ["POST"], "owner"),
    ]
    out: list[BaseRoute] = [Route(path, _guard(endpoint, credential), methods=methods)
                            for path, endpoint, methods, credential in table]
    return [*out, openapi_route(), *followup_routes(), *(extra or [])]


def owner_only(endpoint: Endpoint) -> Endpoint:
    """`endpoint` behind the owner's bearer token (AGENT_API_TOKEN), refusals audited."""
    return _guard(endpoint, "owner")


def _guard(endpoint: Endpoint, credential: Credential) -> Endpoint:
    if credential == "none":
        return endpoint

    async def guarded(request: Request) -> Response:
        if (denied := await _authenticated(request, credential)) is not None:
            return denied
        try:
            return await endpoint(request)
        except BadRequest as exc:
            return _error(exc.status, str(exc))

    guarded.__name__ = endpoint.__name__
    guarded.__doc__ = endpoint.__doc__
    return guarded


class BadRequest(OperationError):
    """The request itself is malformed (HTTP 400, or 413 for a body too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _caller(request: Request) -> Caller:
    client = request.client.host if request.client else ""
    return Caller("owner", "api", {"path": request.url.path, "client": client})


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _authenticated(request: Request, credential: Credential) -> Response | None:
    """None when the bearer matches the route's secret (constant time); else the audited 401."""
    settings = _service(request).settings
    secret, actor = ((settings.api_token, "api") if credential == "owner"
                     else (settings.alert_webhook_secret, "alertmanager"))
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    ok = (secret is not None and scheme.lower() == "bearer"
          and hmac.compare_digest(presented.strip().encode(), secret.reveal().encode()))
    if ok:
        return None
    reason = "no credential configured" if secret is None else ("no bearer token" if not presented else "bad token")
    who = _caller(request)
    await operations.refuse(_service(request).store, Caller(actor, who.source, who.where), reason)
    return _error(401, "unauthorized", reason=reason)


def _failed(exc: Exception, *, forge_failure: int = 502) -> JSONResponse:
    """The one mapping of the error tree to HTTP statuses (and today's error shape)."""
    if isinstance(exc, RateLimited):
        return JSONResponse({"error": "rate_limited", "limit": exc.limit, "retry_after": exc.retry_after},
                            status_code=429, headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, TaskNotFound):
        return _error(404, "no such task")
    if isinstance(exc, PolicyVersionNotFound):
        return _error(404, "no such policy version")
    if isinstance(exc, ForgeNotFound):
        return _error(404, str(exc))
    if isinstance(exc, ForgeConflict | TaskError):
        return _error(409, str(exc))
    if isinstance(exc, ForgeError):
        return _error(forge_failure, str(exc))
    if isinstance(exc, policy.PolicyLoadError):
        return _error(422, str(exc))
    raise exc


async def _body(request: Request) -> bytes:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest("body too large", 413)
    return raw


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await _body(request)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    return data


def _field(data: Mapping[str, Any], key: str, kind: type, default: Any = ..., *, required: bool = False) -> Any:
    if key not in data or data[key] is None:
        if required or default is ...:
            raise BadRequest(f"{key}: required")
        return default
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{key}: expected {kind.__name__}")
    if isinstance(value, int) and not -(2**63) <= value < 2**63:  # what SQLite and every id here can hold
        raise BadRequest(f"{key}: out of range")
    return value


def _limit(request: Request) -> int:
    try:
        return min(max(int(request.query_params.get("limit", "100")), 1), 1000)
    except ValueError as exc:
        raise BadRequest(f"bad query: {exc}") from None


# -------------------------------------------------------------------------------------------------- tasks


async def command(request: Request) -> Response:
    service = _service(request)
    data = await _json_body(request)
    prompt = _field(data, "prompt", str, required=True).strip()
    if not prompt or len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"prompt: between 1 and {MAX_PROMPT_CHARS} characters")
    kind = _field(data, "kind", str, "feature")
    if kind not in TASK_KINDS:
        raise BadRequest(f"kind: one of {', '.join(TASK_KINDS)}")
    dry_run = _field(data, "dry_run", bool, False)
    repo = _repo(service, _field(data, "repo", str, None), dry_run)
    try:
        task = await operations.queue_task(service, _caller(request), kind=kind, prompt=prompt, dry_run=dry_run,
                                           repo=repo)
    except OperationError as exc:
        return _failed(exc)
    return JSONResponse(_accepted(task), status_code=202)


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


def _accepted(task: TaskRecord) -> dict[str, Any]:
    return {"task_id": task.id, "state": task.state.value,
            "links": {"self": f"/tasks/{task.id}", "events": f"/tasks/{task.id}/events"}}


async def list_tasks(request: Request) -> Response:
    try:
        states = [TaskState(s) for s in request.query_params.getlist("state")]
    except ValueError as exc:
        raise BadRequest(f"bad query: {exc}") from None
    tasks = await _service(request).store.list_tasks(states=states or None, limit=_limit(request))
    return JSONResponse({"tasks": [_summary(t) for t in tasks]})


def _summary(task: TaskRecord) -> dict[str, Any]:
    return {"id": task.id, "kind": task.kind, "state": task.state.value, "source": task.source,
            "dry_run": task.dry_run, "repo": task.repo, "created_at": task.created_at,
            "updated_at": task.updated_at, "reason": task.reason, "fingerprint": task.fingerprint}


async def _task(request: Request) -> TaskRecord | Response:
    """The task the path names; else the 404 to send."""
    try:
        return await _service(request).store.get_task(request.path_params["task_id"])
    except TaskNotFound as exc:
        return _failed(exc)


async def get_task(request: Request) -> Response:
    if isinstance(task := await _task(request), Response):
        return task
    service = _service(request)
    history = [{"state": e.detail.get("state"), "at": e.at, "reason": e.detail.get("reason", "")}
               for e in await service.store.audit_log(task.id, event="state")]
    return JSONResponse({
        **_summary(task),
        "prompt": task.prompt,
        "requested_by": task.requested_by,
        "base_sha": task.base_sha,
        "active": service.scheduler.active(task.id),
        "timings": {"created_at": task.created_at, "updated_at": task.updated_at,
                    "elapsed_seconds": round(task.updated_at - task.created_at, 3), "states": [
                        {"state": "queued", "at": task.created_at, "reason": ""}, *history]},
        "result": task.result.to_json() if task.result is not None else None,
        "releases": [r.as_json() for r in await service.releases.rows.find(task_id=task.id)]
        if service.releases is not None else [],
    })


async def task_events(request: Request) -> Response:
    if isinstance(task := await _task(request), Response):
        return task
    return StreamingResponse(_stream(_service(request), task.id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(service: Service, task_id: str) -> AsyncIterator[str]:
    """Progress lines as they come, a `state` event on each change, `end` once the task's run is over."""
    seen, last = 0, None
    while True:
        events, more = service.scheduler.events_since(task_id, seen)
        seen += len(events)
        for line in _relayed(events):
            yield line
        task = await service.store.get_task(task_id)
        if task.state is not last:
            last = task.state
            yield _sse("state", {"state": task.state.value, "reason": task.reason})
        if task.state in STREAM_ENDS and not service.scheduler.active(task_id):
            late, _ = service.scheduler.events_since(task_id, seen)
            for line in _relayed(late):
                yield line
            yield _sse("end", {"state": task.state.value})
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SSE_POLL_SECONDS):
                await more.wait()


def _relayed(events: list[dict[str, Any]]) -> list[str]:
    """The scheduler's events as SSE, minus its internal `done` marker (the stream sends its own `end`)."""
    return [_sse(e["event"], e["data"]) for e in events if e["event"] != "done"]


def _sse(event: str, data: Mapping[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def cancel_task(request: Request) -> Response:
    try:
        task = await operations.cancel_task(_service(request), _caller(request), request.path_params["task_id"])
    except OperationError as exc:
        return _failed(exc)
    return JSONResponse({"task_id": task.id, "state": task.state.value})


# ------------------------------------------------------------------------------------------- pull requests


async def approve_pr(request: Request) -> Response:
    """Checked and recorded here; merge, deploy and the post-deploy watch run in the background."""
    data = await _json_body(request)
    number = _field(data, "number", int, required=True)
    head_sha = _field(data, "head_sha", str, required=True)
    try:
        approval = await operations.approve(_service(request), _caller(request), number, head_sha)
    except (ForgeError, OperationError) as exc:
        return _failed(exc)
    task, release = approval.task, approval.release
    links = {"release": f"/releases/{release.id}"}
    if task is not None:
        links["task"], links["events"] = f"/tasks/{task.id}", f"/tasks/{task.id}/events"
    return JSONResponse({"number": number, "task_id": task.id if task else None, "release_id": release.id,
                         "state": release.state, "links": links}, status_code=202)


async def list_releases(request: Request) -> Response:
    service, limit = _service(request), _limit(request)
    found = await service.releases.rows.find(limit=limit) if service.releases is not None else []
    return JSONResponse({"releases": [r.as_json() for r in found]})


async def get_release(request: Request) -> Response:
    service = _service(request)
    try:
        given = request.path_params["release_id"]
        if service.releases is None or not given.isascii() or not given.isdigit() or len(given) > 18:
            raise KeyError(given)  # not an id SQLite could hold: no such release either
        release = await service.releases.rows.get(int(given))
    except KeyError:
        return _error(404, "no such release")
    return JSONResponse(release.as_json())


async def reject_pr(request: Request) -> Response:
    number = _field(await _json_body(request), "number", int, required=True)
    try:
        rejection = await operations.reject(_service(request), _caller(request), number)
    except (ForgeError, OperationError) as exc:
        return _failed(exc, forge_failure=409)
    task = rejection.task
    return JSONResponse({"number": number, "state": rejection.pr.state, "task_id": task.id if task else None})


# ------------------------------------------------------------------------------------------------ policy


async def get_policy(request: Request) -> Response:
    service = _service(request)
    active = service.runtime.deps.policy
    return JSONResponse({"version": active.version, "sha256": active.sha256, "source": active.source,
                         "text": await service.policies.active_text()})


async def put_policy(request: Request) -> Response:
    """Validated (schema with line numbers, the policy's own examples) before it can become active."""
    service, raw = _service(request), await _body(request)
    try:
        text = raw.decode()
        if request.headers.get("content-type", "").startswith("application/json"):
            text = _field(json.loads(text), "text", str, required=True)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as exc:
        raise BadRequest(f"the body must be the policy's YAML text, or JSON {{\"text\": ...}}: {exc}") from None
    try:
        loaded = await operations.activate_policy(service.policies, service.store, _caller(request), text)
    except policy.PolicyLoadError as exc:
        problems = [{"line": line, "key": key, "message": message} for line, key, message in exc.problems] or \
            [{"line": exc.line, "key": exc.key, "message": str(exc)}]
        return _error(422, "the policy is not valid; the active policy is unchanged", problems=problems)
    return JSONResponse({"version": loaded.version, "sha256": loaded.sha256, "activated": True})


async def policy_history(request: Request) -> Response:
    service = _service(request)
    active = await service.policies.store.active()
    versions = await service.policies.store.history(limit=100)
    return JSONResponse({"versions": [
        {"version": v.version, "name": v.name, "sha256": v.sha256, "at": v.at, "actor": v.actor, "note": v.note,
         "active": active is not None and v.version == active.version} for v in versions]})


async def rollback_policy(request: Request) -> Response:
    service = _service(request)
    version = _field(await _json_body(request), "version", int, required=True)
    try:
        loaded = await operations.rollback_policy(service.policies, service.store, _caller(request), version)
    except (OperationError, policy.PolicyLoadError) as exc:  # an old version may no longer be valid
        return _failed(exc)
    return JSONResponse({"version": loaded.version, "sha256": loaded.sha256, "activated": True})


# ------------------------------------------------------------------------------------------------ alerts


async def auto_fix(request: Request) -> Response:
    service, raw = _service(request), await _body(request)
    try:
        parsed = parse_auto_fix(raw)
    except WebhookError as exc:
        raise BadRequest(str(exc)) from None
    caller = Caller("alertmanager", "alertmanager", _caller(request).where)
    try:
        admission = await operations.admit_alert(service, caller, parsed)
    except OperationError as exc:
        return _failed(exc)
    alerts = [o.as_json() for o in admission.outcomes]
    if admission.refused:  # nothing taken: let Alertmanager retry later
        soonest = admission.retry_after
        return JSONResponse({"error": "rate_limited", "alerts": alerts, "retry_after": soonest},
                            status_code=429, headers={"Retry-After": str(soonest)})
    return JSONResponse({"alerts": alerts}, status_code=202 if alerts else 200)


# ----------------------------------------------------------------------------------------- health, metrics


async def health(request: Request) -> Response:
    scheduler = _service(request).scheduler
    return JSONResponse({"status": "ok", "running": scheduler.running, "waiting": scheduler.waiting,
                         "max_sandboxes": scheduler.max_running})


async def metrics(request: Request) -> Response:
    service = _service(request)
    releases = await service.releases.rows.counts() if service.releases is not None else None
    text = await prometheus.render(service.store, sandboxes_running=service.scheduler.running, releases=releases)
    return PlainTextResponse(text, media_type=prometheus.CONTENT_TYPE)
