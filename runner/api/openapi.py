"""The supervisor's HTTP API as an OpenAPI 3.1 document, written by hand from the handlers in runner.api.routes.

Served at `GET /openapi.json` (no auth) by `openapi_route()`. tests/test_openapi.py keeps it honest: every route
of `runner.api.routes.routes()` is described (and nothing else), and schemathesis fuzzes the app in-process against it.
This module must not import runner.api.routes: routes.py imports `openapi_route` from here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from runner.alerts.alertmanager import MAX_ALERTS
from runner.models import TASK_KINDS, TaskState
from runner.service.releases import RELEASE_STATES

MAX_PROMPT_CHARS = 20_000  # runner.api.routes.MAX_PROMPT_CHARS (the test checks they agree)

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str] | None = None, /, **properties: Schema) -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _err(description: str) -> Schema:
    return _json(_ref("Error"), description)


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
NULLABLE_STR: Schema = {"type": ["string", "null"]}
NULLABLE_NUM: Schema = {"type": ["number", "null"]}
STATE: Schema = _ref("TaskState")

UNAUTHORIZED = _json(_ref("Unauthorized"), "No bearer token, a wrong one, or no credential is configured (audited)")
BAD_REQUEST = _err("The body or query is malformed; `error` names the field")
TOO_LARGE = _err("The body is larger than 1 MiB")
NO_TASK = _err("No such task")
OWNER: list[Schema] = [{"ownerToken": []}]
TASK_ID: Schema = {"name": "task_id", "in": "path", "required": True, "schema": STR}


def _owner(summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    """An operation behind the owner's token: every one of them may answer 401."""
    return {"summary": summary, "security": OWNER, **extra, "responses": {**responses, "401": UNAUTHORIZED}}


def _json_body(schema: Schema, *, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


SCHEMAS: dict[str, Schema] = {
    "Error": _obj(["error"], error=STR),
    "Unauthorized": _obj(["error", "reason"], error={"const": "unauthorized"},
                         reason={"enum": ["no credential configured", "no bearer token", "bad token"]}),
    "RateLimited": _obj(["error", "limit", "retry_after"], error={"const": "rate_limited"}, limit=STR,
                        retry_after=INT),
    "TaskState": {"type": "string", "enum": [s.value for s in TaskState]},
    "Command": {
        **_obj(["prompt"],
               prompt={"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS,
                       "description": "What to do; blank after stripping is refused"},
               kind={"type": ["string", "null"], "enum": [*TASK_KINDS, None], "default": "feature"},
               dry_run={"type": ["boolean", "null"], "default": False,
                        "description": "Return a diff instead of opening a pull request"},
               repo={"type": ["string", "null"],
                     "description": "Defaults to AGENT_RUNNER_REPO; only a dry run may name another repository"}),
    },
    "Accepted": _obj(["task_id", "state", "links"], task_id=STR, state=STATE,
                     links=_obj(["self", "events"], self=STR, events=STR)),
    "TaskSummary": _obj(
        ["id", "kind", "state", "source", "dry_run", "repo", "created_at", "updated_at", "reason", "fingerprint"],
        id=STR, kind=STR, state=STATE, source=STR, dry_run=BOOL, repo=STR, created_at=NUM, updated_at=NUM,
        reason=STR, fingerprint=NULLABLE_STR),
    "Task": {"allOf": [_ref("TaskSummary"), _obj(
        ["prompt", "requested_by", "base_sha", "active", "timings", "result", "releases"],
        prompt=STR, requested_by=STR, base_sha=NULLABLE_STR, active=BOOL,
        timings=_obj(["created_at", "updated_at", "elapsed_seconds", "states"],
                     created_at=NUM, updated_at=NUM, elapsed_seconds=NUM,
                     states={"type": "array", "items": _obj(["state", "at", "reason"],
                                                            state=NULLABLE_STR, at=NUM, reason=STR)}),
        result={"type": ["object", "null"], "description": "The run's result (RunResult.to_json) once it has one"},
        releases={"type": "array", "items": _ref("Release"),
                  "description": "Its pull request's releases (merge, deploy, watch), newest first"},
    )]},
    "Cancelled": _obj(["task_id", "state"], task_id=STR, state=STATE),
    "Approve": _obj(["number", "head_sha"], number=INT,
                    head_sha={"type": "string", "description": "The head commit the owner reviewed"}),
    "Approved": _obj(["number", "task_id", "release_id", "state", "links"],
                     number=INT, task_id=NULLABLE_STR, release_id=INT, state={"const": "approved"},
                     links=_obj(["release"], release=STR, task=STR, events=STR)),
    "Release": _obj(
        ["id", "number", "head_sha", "task_id", "actor", "state", "detail", "base_branch", "merge_sha",
         "previous_sha", "revert_sha", "deployed_at", "watch_until", "created_at", "updated_at"],
        id=INT, number=INT, head_sha=STR, task_id=NULLABLE_STR, actor=STR,
        state={"enum": list(RELEASE_STATES)}, detail=STR, base_branch=NULLABLE_STR, merge_sha=NULLABLE_STR,
        previous_sha={"type": ["string", "null"], "description": "What ran before: the version a rollback returns to"},
        revert_sha={"type": ["string", "null"], "description": "The revert of the merge after a rollback"},
        deployed_at=NULLABLE_NUM, watch_until={"type": ["number", "null"],
                                               "description": "Unix time the post-deploy watch ends"},
        created_at=NUM, updated_at=NUM),
    "ReleasesList": _obj(["releases"], releases={"type": "array", "items": _ref("Release")}),
    "Reject": _obj(["number"], number=INT),
    "Rejected": _obj(["number", "state", "task_id"], number=INT, state={"enum": ["open", "merged", "closed"]},
                     task_id=NULLABLE_STR),
    "AlertmanagerWebhook": {
        **_obj(["version", "groupKey", "status", "alerts"],
               version={"const": "4"}, groupKey=STR, truncatedAlerts={"type": "integer", "minimum": 0},
               status={"enum": ["firing", "resolved"]}, receiver=STR,
               groupLabels=_ref("Labels"), commonLabels=_ref("Labels"), commonAnnotations=_ref("Labels"),
               externalURL=STR,
               alerts={"type": "array", "maxItems": MAX_ALERTS, "items": _obj(
                   ["status", "labels", "startsAt"],
                   status={"enum": ["firing", "resolved"]}, labels=_ref("Labels"), annotations=_ref("Labels"),
                   startsAt={"type": "string", "format": "date-time"},
                   endsAt={"type": "string", "format": "date-time",
                           "description": "0001-01-01T00:00:00Z when unset"},
                   generatorURL=STR, fingerprint=STR)}),
        "description": "Alertmanager's webhook_config body, version 4",
    },
    "DirectReport": {
        **_obj(["traceback"], traceback={"type": "string", "minLength": 1}, service=STR, labels=_ref("Labels")),
        "additionalProperties": False,
        "description": "A traceback posted directly, for setups without Loki",
    },
    "Labels": {"type": "object", "additionalProperties": STR},
    "AlertOutcome": _obj(["fingerprint", "status"], fingerprint=STR,
                         status={"enum": ["accepted", "duplicate", "rate_limited", "cooling_down", "rolled_back"]},
                         task_id=STR, retry_after=INT, note=STR),
    "AlertOutcomes": _obj(["alerts"], alerts={"type": "array", "items": _ref("AlertOutcome")}),
    "AlertsRateLimited": _obj(["error", "alerts", "retry_after"], error={"const": "rate_limited"},
                              alerts={"type": "array", "items": _ref("AlertOutcome")}, retry_after=INT),
    "Policy": _obj(["version", "sha256", "text", "source"],
                   version={"type": "string", "description": "The policy's own `version:` field"},
                   sha256=STR, text={"type": "string", "description": "The active policy's YAML"},
                   source={"type": "string", "description": "Where it was loaded from (file or stored version)"}),
    "PolicyText": _obj(["text"], text={"type": "string", "description": "The policy's YAML"}),
    "PolicyActivated": _obj(["version", "sha256", "activated"],
                            version={"type": "string", "description": "The policy's own `version:` field"},
                            sha256=STR, activated={"const": True}),
    "PolicyInvalid": _obj(["error", "problems"], error=STR, problems={"type": "array", "items": _obj(
        ["line", "key", "message"], line={"type": ["integer", "null"], "description": "1-based"},
        key={"type": ["string", "null"], "description": "Dotted path of the offending key"}, message=STR)}),
    "PolicyHistory": _obj(["versions"], versions={"type": "array", "description": "Newest first, at most 100",
                                                  "items": _obj(
        ["version", "name", "sha256", "at", "actor", "note", "active"],
        version={"type": "integer", "description": "The stored version number (what rollback takes)"},
        name={"type": "string", "description": "The policy's own `version:` field"},
        sha256=STR, at={"type": "number", "description": "Unix time"}, actor=STR, note=STR, active=BOOL)}),
    "Rollback": _obj(["version"], version={"type": "integer", "description": "A stored version number"}),
    "Health": _obj(["status", "running", "waiting", "max_sandboxes"], status={"const": "ok"},
                   running=INT, waiting=INT, max_sandboxes=INT),
}

PATHS: dict[str, Schema] = {
    "/health": {"get": {
        "summary": "Liveness and the scheduler's load", "security": [],
        "responses": {"200": _json(_ref("Health"), "Up")},
    }},
    "/metrics": {"get": {
        "summary": "Prometheus metrics", "security": [],
        "responses": {"200": {"description": "Prometheus text exposition format 0.0.4",
                              "content": {"text/plain": {"schema": STR}}}},
    }},
    "/openapi.json": {"get": {
        "summary": "This document", "security": [],
        "responses": {"200": _json({"type": "object"}, "The OpenAPI description")},
    }},
    "/agent/command": {"post": _owner(
        "Submit a task for the coding agent",
        {"202": _json(_ref("Accepted"), "Queued"), "400": BAD_REQUEST, "413": TOO_LARGE,
         "429": {**_json(_ref("RateLimited"), "Over the hourly command limit (audited)"),
                 "headers": {"Retry-After": {"schema": INT}}}},
        requestBody=_json_body(_ref("Command")),
    )},
    "/agent/auto-fix": {"post": {
        "summary": "Alertmanager webhook (or a directly posted traceback): investigate and start fix tasks",
        "security": [{"alertSecret": []}],
        "requestBody": _json_body({"oneOf": [_ref("AlertmanagerWebhook"), _ref("DirectReport")]}),
        "responses": {
            "200": _json(_ref("AlertOutcomes"), "Nothing was firing"),
            "202": _json(_ref("AlertOutcomes"), "What became of each firing alert"),
            "400": BAD_REQUEST, "401": UNAUTHORIZED, "413": TOO_LARGE,
            "409": _err("No AGENT_RUNNER_REPO is configured"),
            "429": {**_json(_ref("AlertsRateLimited"), "Every alert was refused; Alertmanager should retry"),
                    "headers": {"Retry-After": {"schema": INT}}},
        },
    }},
    "/agent/approve-pr": {"post": _owner(
        "Approve the agent's pull request at the reviewed head: merge, deploy, health check and post-deploy "
        "watch run in the background (rolled back when unhealthy or when errors come back)",
        {"202": _json(_ref("Approved"), "Approved; follow the release (and the task's events)"),
         "400": BAD_REQUEST, "404": _err("No such pull request"),
         "409": _err("The pull request moved, is closed, is already being released, or no forge is configured"),
         "413": TOO_LARGE, "502": _err("The forge failed")},
        requestBody=_json_body(_ref("Approve")),
    )},
    "/agent/reject-pr": {"post": _owner(
        "Close the agent's pull request",
        {"200": _json(_ref("Rejected"), "Closed"), "400": BAD_REQUEST, "404": _err("No such pull request"),
         "409": _err("The pull request cannot be closed"), "413": TOO_LARGE},
        requestBody=_json_body(_ref("Reject")),
    )},
    "/releases": {"get": _owner(
        "Releases (approved pull requests through merge, deploy and watch), newest first",
        {"200": _json(_ref("ReleasesList"), "The releases"), "400": BAD_REQUEST},
        parameters=[{"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "default": 100, "description": "Clamped to 1..1000"}}],
    )},
    "/releases/{release_id}": {"get": _owner(
        "One release: its state, merge, rollback and watch",
        {"200": _json(_ref("Release"), "The release"), "404": _err("No such release")},
        parameters=[{"name": "release_id", "in": "path", "required": True, "schema": STR,
                     "description": "A release id (what approve-pr answered); anything else is a 404"}],
    )},
    "/tasks": {"get": _owner(
        "Tasks, newest first",
        {"200": _json(_ref("TasksList"), "The tasks"), "400": BAD_REQUEST},
        parameters=[
            {"name": "state", "in": "query", "required": False, "style": "form", "explode": True,
             "schema": {"type": "array", "items": STATE}},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "default": 100, "description": "Clamped to 1..1000"}},
        ],
    )},
    "/tasks/{task_id}": {"get": _owner(
        "One task with its state history and result",
        {"200": _json(_ref("Task"), "The task"), "404": NO_TASK},
        parameters=[TASK_ID],
    )},
    "/tasks/{task_id}/events": {"get": _owner(
        "The task's progress as Server-Sent Events until its run is over",
        {"200": {"description": "Events `progress` lines, `state` on each change, then `end`",
                 "content": {"text/event-stream": {"schema": STR}}},
         "404": NO_TASK},
        parameters=[TASK_ID],
    )},
    "/tasks/{task_id}/cancel": {"post": _owner(
        "Cancel a task",
        {"200": _json(_ref("Cancelled"), "Cancelled"), "404": NO_TASK,
         "409": _err("The task is already over")},
        parameters=[TASK_ID],
    )},
    "/policy": {
        "get": _owner("The active policy", {"200": _json(_ref("Policy"), "The active policy")}),
        "put": _owner(
            "Validate a policy (schema with line numbers, its own examples) and make it the active one",
            {"200": _json(_ref("PolicyActivated"), "Recorded as a new version and active for the next task"),
             "400": BAD_REQUEST, "413": TOO_LARGE,
             "422": _json(_ref("PolicyInvalid"), "Not valid; the active policy is unchanged (audited)")},
            requestBody={"required": True, "content": {
                "text/yaml": {"schema": STR},
                "application/json": {"schema": _ref("PolicyText")},
            }},
        ),
    },
    "/policy/history": {"get": _owner(
        "Every policy version activated, newest first",
        {"200": _json(_ref("PolicyHistory"), "The versions")},
    )},
    "/policy/rollback": {"post": _owner(
        "Make an earlier version active again (recorded as a new version)",
        {"200": _json(_ref("PolicyActivated"), "Active"), "400": BAD_REQUEST, "404": _err("No such policy version"),
         "413": TOO_LARGE, "422": _err("That version is no longer a valid policy")},
        requestBody=_json_body(_ref("Rollback")),
    )},
}

SCHEMAS["TasksList"] = _obj(["tasks"], tasks={"type": "array", "items": _ref("TaskSummary")})

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "agent-runner supervisor",
        "version": "1",
        "description": "The owner's API to a policy-gated coding agent: tasks, pull requests, the policy, alerts.",
    },
    "security": OWNER,
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "ownerToken": {"type": "http", "scheme": "bearer",
                           "description": "The owner's token, AGENT_API_TOKEN"},
            "alertSecret": {"type": "http", "scheme": "bearer",
                            "description": "ALERT_WEBHOOK_SECRET; accepted only by /agent/auto-fix"},
        },
    },
}


async def openapi_json(request: Request) -> Response:
    return JSONResponse(OPENAPI)


def openapi_route() -> Route:
    """`GET /openapi.json`: the description, without auth (it holds no secrets)."""
    return Route("/openapi.json", openapi_json)
