"""HTTP endpoints: authenticate, parse, hand to the scheduler or the release, answer in JSON (or SSE)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

import policy
from runner import approvals, autofix
from runner import metrics as prometheus
from runner.app import Service
from runner.config import Secret
from runner.errors import ForgeConflict, ForgeError, ForgeNotFound, TaskError
from runner.models import TASK_KINDS, TaskState
from runner.openapi import openapi_route
from runner.scheduler import Duplicate, Refused
from runner.store import TaskRecord
from runner.webhooks import MAX_BODY_BYTES, WebhookError, parse_auto_fix

MAX_PROMPT_CHARS = 20_000
SSE_POLL_SECONDS = 0.5
STREAM_ENDS = frozenset({TaskState.PROPOSED}) | {s for s in TaskState if s.terminal}


def routes() -> list[Route]:
    return [
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/agent/command", command, methods=["POST"]),
        Route("/agent/auto-fix", auto_fix, methods=["POST"]),
        Route("/agent/approve-pr", approve_pr, methods=["POST"]),
        Route("/agent/reject-pr", reject_pr, methods=["POST"]),
        Route("/releases", list_releases),
        Route("/releases/{release_id}", get_release),
        Route("/tasks", list_tasks),
        Route("/tasks/{task_id}", get_task),
        Route("/tasks/{task_id}/events", task_events),
        Route("/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
        Route("/policy", get_policy),
        Route("/policy", put_policy, methods=["PUT"]),
        Route("/policy/history", policy_history),
        Route("/policy/rollback", rollback_policy, methods=["POST"]),
        openapi_route(),
    ]


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _authorized(request: Request, secret: Secret | None, actor: str) -> Response | None:
    """None when the bearer matches `secret` (constant time); else the audited 401."""
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    ok = (secret is not None and scheme.lower() == "bearer"
          and hmac.compare_digest(presented.strip().encode(), secret.reveal().encode()))
    if ok:
        return None
    reason = "no credential configured" if secret is None else ("no bearer token" if not presented else "bad token")
    await _refuse(request, actor, reason)
    return _error(401, "unauthorized", reason=reason)


async def _refuse(request: Request, actor: str, reason: str, **detail: Any) -> None:
    client = request.client.host if request.client else ""
    await _service(request).store.audit(None, actor, "refused",
                                        {"path": request.url.path, "client": client, "reason": reason, **detail})


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest("body too large", 413)
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


def _rate_limited(refused: Refused) -> JSONResponse:
    why = "cooling down after a failed fix" if refused.cooldown else f"{refused.limit} {refused.bucket} per hour"
    return JSONResponse({"error": "rate_limited", "limit": why, "retry_after": refused.retry_after},
                        status_code=429, headers={"Retry-After": str(refused.retry_after)})


# -------------------------------------------------------------------------------------------------- tasks


async def command(request: Request) -> Response:
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    try:
        data = await _json_body(request)
        prompt = _field(data, "prompt", str, required=True).strip()
        if not prompt or len(prompt) > MAX_PROMPT_CHARS:
            raise BadRequest(f"prompt: between 1 and {MAX_PROMPT_CHARS} characters")
        kind = _field(data, "kind", str, "feature")
        if kind not in TASK_KINDS:
            raise BadRequest(f"kind: one of {', '.join(TASK_KINDS)}")
        dry_run = _field(data, "dry_run", bool, False)
        repo = _repo(service, _field(data, "repo", str, None), dry_run)
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    admitted = await service.scheduler.submit(kind=kind, prompt=prompt, repo=repo, source="api",
                                              requested_by="owner", dry_run=dry_run)
    if isinstance(admitted, Refused):
        await _refuse(request, "api", "rate_limited", retry_after=admitted.retry_after)
        return _rate_limited(admitted)
    assert not isinstance(admitted, Duplicate)  # commands carry no fingerprint
    return JSONResponse(_accepted(admitted), status_code=202)


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
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    try:
        states = [TaskState(s) for s in request.query_params.getlist("state")]
        limit = min(max(int(request.query_params.get("limit", "100")), 1), 1000)
    except ValueError as exc:
        return _error(400, f"bad query: {exc}")
    tasks = await service.store.list_tasks(states=states or None, limit=limit)
    return JSONResponse({"tasks": [_summary(t) for t in tasks]})


def _summary(task: TaskRecord) -> dict[str, Any]:
    return {"id": task.id, "kind": task.kind, "state": task.state.value, "source": task.source,
            "dry_run": task.dry_run, "repo": task.repo, "created_at": task.created_at,
            "updated_at": task.updated_at, "reason": task.reason, "fingerprint": task.fingerprint}


async def _owner_task(request: Request) -> tuple[Service, TaskRecord] | Response:
    """The owner's bearer checked, then the task the path names; else the response to send (401 or 404)."""
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    try:
        return service, await service.store.get_task(request.path_params["task_id"])
    except TaskError:
        return _error(404, "no such task")


async def get_task(request: Request) -> Response:
    if isinstance(found := await _owner_task(request), Response):
        return found
    service, task = found
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
        "result": task.result,
        "releases": [r.as_json() for r in await service.releases.rows.find(task_id=task.id)]
        if service.releases is not None else [],
    })


async def task_events(request: Request) -> Response:
    if isinstance(found := await _owner_task(request), Response):
        return found
    service, task = found
    return StreamingResponse(_stream(service, task.id), media_type="text/event-stream",
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
    if isinstance(found := await _owner_task(request), Response):
        return found
    service, task = found
    try:
        task = await service.scheduler.cancel(task.id)
    except TaskError as exc:
        return _error(409, str(exc))
    return JSONResponse({"task_id": task.id, "state": task.state.value})


# ------------------------------------------------------------------------------------------- pull requests


async def approve_pr(request: Request) -> Response:
    """Checked and recorded here; merge, deploy and the post-deploy watch run in the background."""
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    try:
        data = await _json_body(request)
        number = _field(data, "number", int, required=True)
        head_sha = _field(data, "head_sha", str, required=True)
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    try:
        task, release = await approvals.approve(service, number, head_sha, actor="owner")
    except (ForgeError, TaskError) as exc:
        status = 404 if isinstance(exc, ForgeNotFound) else 409 if isinstance(exc, ForgeConflict | TaskError) else 502
        return _error(status, str(exc))
    links = {"release": f"/releases/{release.id}"}
    if task is not None:
        links["task"], links["events"] = f"/tasks/{task.id}", f"/tasks/{task.id}/events"
    return JSONResponse({"number": number, "task_id": task.id if task else None, "release_id": release.id,
                         "state": release.state, "links": links}, status_code=202)


async def list_releases(request: Request) -> Response:
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    try:
        limit = min(max(int(request.query_params.get("limit", "100")), 1), 1000)
    except ValueError as exc:
        return _error(400, f"bad query: {exc}")
    found = await service.releases.rows.find(limit=limit) if service.releases is not None else []
    return JSONResponse({"releases": [r.as_json() for r in found]})


async def get_release(request: Request) -> Response:
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    try:
        given = request.path_params["release_id"]
        if service.releases is None or not given.isascii() or not given.isdigit() or len(given) > 18:
            raise KeyError(given)  # not an id SQLite could hold: no such release either
        release = await service.releases.rows.get(int(given))
    except KeyError:
        return _error(404, "no such release")
    return JSONResponse(release.as_json())


async def reject_pr(request: Request) -> Response:
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    try:
        number = _field(await _json_body(request), "number", int, required=True)
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    try:
        task, pr = await approvals.reject(service, number, actor="owner")
    except ForgeNotFound as exc:
        return _error(404, str(exc))
    except (ForgeError, TaskError) as exc:
        return _error(409, str(exc))
    return JSONResponse({"number": number, "state": pr.state, "task_id": task.id if task else None})


# ------------------------------------------------------------------------------------------------ policy


async def get_policy(request: Request) -> Response:
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    active = service.runtime.deps.policy
    return JSONResponse({"version": active.version, "sha256": active.sha256, "source": active.source,
                         "text": await service.policies.active_text()})


async def put_policy(request: Request) -> Response:
    """Validated (schema with line numbers, the policy's own examples) before it can become active."""
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return _error(413, "body too large")
    try:
        text = raw.decode()
        if request.headers.get("content-type", "").startswith("application/json"):
            text = _field(json.loads(text), "text", str, required=True)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError) as exc:
        return _error(400, f"the body must be the policy's YAML text, or JSON {{\"text\": ...}}: {exc}")
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    try:
        loaded = await service.policies.activate(text, actor="owner")
    except policy.PolicyLoadError as exc:
        await service.store.audit(None, "owner", "policy_rejected", {"error": str(exc)})
        problems = [{"line": line, "key": key, "message": message} for line, key, message in exc.problems] or \
            [{"line": exc.line, "key": exc.key, "message": str(exc)}]
        return _error(422, "the policy is not valid; the active policy is unchanged", problems=problems)
    await service.store.audit(None, "owner", "policy_activated", {"version": loaded.version, "sha256": loaded.sha256})
    return JSONResponse({"version": loaded.version, "sha256": loaded.sha256, "activated": True})


async def policy_history(request: Request) -> Response:
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    active = await service.policies.store.active()
    versions = await service.policies.store.history(limit=100)
    return JSONResponse({"versions": [
        {"version": v.version, "name": v.name, "sha256": v.sha256, "at": v.at, "actor": v.actor, "note": v.note,
         "active": active is not None and v.version == active.version} for v in versions]})


async def rollback_policy(request: Request) -> Response:
    service = _service(request)
    if (denied := await _authorized(request, service.settings.api_token, "api")) is not None:
        return denied
    try:
        version = _field(await _json_body(request), "version", int, required=True)
        loaded = await service.policies.rollback(version, actor="owner")
    except BadRequest as exc:
        return _error(exc.status, str(exc))
    except KeyError:
        return _error(404, "no such policy version")
    except policy.PolicyLoadError as exc:  # an old version no longer valid (e.g. after a schema change)
        return _error(422, str(exc))
    await service.store.audit(None, "owner", "policy_rolled_back", {"to": version, "sha256": loaded.sha256})
    return JSONResponse({"version": loaded.version, "sha256": loaded.sha256, "activated": True})


# ------------------------------------------------------------------------------------------------ alerts


async def auto_fix(request: Request) -> Response:
    service = _service(request)
    if (denied := await _authorized(request, service.settings.alert_webhook_secret, "alertmanager")) is not None:
        return denied
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return _error(413, "body too large")
    try:
        parsed = parse_auto_fix(raw)
    except WebhookError as exc:
        return _error(400, str(exc))
    if service.settings.repo is None:
        return _error(409, "no AGENT_RUNNER_REPO is configured")
    outcomes = await autofix.admit(service, parsed, loki=service.loki)
    refused = [o for o in outcomes if o.status in ("rate_limited", "cooling_down")]
    for outcome in {o.fingerprint: o for o in refused}.values():
        await _refuse(request, "alertmanager", outcome.status, retry_after=outcome.retry_after,
                      fingerprint=outcome.fingerprint)
    if refused and len(refused) == len(outcomes):  # nothing taken: let Alertmanager retry later
        soonest = min(o.retry_after or 1 for o in refused)
        return JSONResponse({"error": "rate_limited", "alerts": [o.as_json() for o in outcomes],
                             "retry_after": soonest}, status_code=429, headers={"Retry-After": str(soonest)})
    return JSONResponse({"alerts": [o.as_json() for o in outcomes]}, status_code=202 if outcomes else 200)


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
