"""The OpenAPI description: it names exactly the app's routes, and fuzzing the app against it never gets a 5xx."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runner.api.endpoints import api
from runner.api.followups import followup_routes
from runner.api.openapi import document
from runner.api.routes import routes
from tests.fakes.app import ALERT_SECRET, TOKEN
from tests.fakes.app import owner_app as _app

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}

OPENAPI = document(api.operations)
schema = schemathesis.openapi.from_dict(OPENAPI)


def _methods(served: list[BaseRoute]) -> set[tuple[str, str]]:
    return {(route.path, method.lower()) for route in served if isinstance(route, Route)
            for method in route.methods or () if method != "HEAD"}


def _served() -> set[tuple[str, str]]:
    return _methods(routes())


# Today's contract, recorded from the hand-written document before it was generated from runner.api.schemas
# (issue 15): each operation's status codes, exactly, and per status the keys its JSON body always has (or the
# media type). The generated document must keep every one; it may add keys and operations, never drop them.
TODAY: dict[tuple[str, str], dict[int, str]] = {
    ("GET", "/health"): {200: "max_sandboxes running status waiting"},
    ("GET", "/metrics"): {200: "text/plain"},
    ("GET", "/openapi.json"): {200: ""},
    ("POST", "/agent/command"): {202: "links state task_id", 400: "error", 401: "error reason", 413: "error",
                                 429: "error limit retry_after"},
    ("POST", "/agent/auto-fix"): {200: "alerts", 202: "alerts", 400: "error", 401: "error reason", 409: "error",
                                  413: "error", 429: "alerts error retry_after"},
    ("POST", "/agent/approve-pr"): {202: "links number release_id state task_id", 400: "error", 401: "error reason",
                                    404: "error", 409: "error", 413: "error", 502: "error"},
    ("POST", "/agent/reject-pr"): {200: "number state task_id", 400: "error", 401: "error reason", 404: "error",
                                   409: "error", 413: "error"},
    ("GET", "/releases"): {200: "releases", 400: "error", 401: "error reason"},
    ("GET", "/releases/{release_id}"): {
        200: "actor base_branch created_at deployed_at detail head_sha id merge_sha number previous_sha revert_sha "
             "state task_id updated_at watch_until", 401: "error reason", 404: "error"},
    ("GET", "/tasks"): {200: "tasks", 400: "error", 401: "error reason"},
    ("GET", "/tasks/{task_id}"): {
        200: "active base_sha created_at dry_run fingerprint id kind prompt reason releases repo requested_by result "
             "source state timings updated_at", 401: "error reason", 404: "error"},
    ("GET", "/tasks/{task_id}/events"): {200: "text/event-stream", 401: "error reason", 404: "error"},
    ("POST", "/tasks/{task_id}/cancel"): {200: "state task_id", 401: "error reason", 404: "error", 409: "error"},
    ("GET", "/policy"): {200: "sha256 source text version", 401: "error reason"},
    ("PUT", "/policy"): {200: "activated sha256 version", 400: "error", 401: "error reason", 413: "error",
                         422: "error problems"},
    ("GET", "/policy/history"): {200: "versions", 401: "error reason"},
    ("POST", "/policy/rollback"): {200: "activated sha256 version", 400: "error", 401: "error reason", 404: "error",
                                   413: "error", 422: "error"},
}
# Operations added since (issue 18), with the same promise from the day they were added.
ADDED: dict[tuple[str, str], dict[int, str]] = {
    ("GET", "/prs"): {200: "prs", 401: "error reason", 409: "error", 502: "error"},
    ("GET", "/audit"): {200: "entries next", 400: "error", 401: "error reason"},
    ("POST", "/tasks/{task_id}/follow-ups"): {
        202: "base_sha follow_up head_sha links pr reason session state task_id", 400: "error", 401: "error reason",
        404: "error", 409: "error", 413: "error", 429: "error retry_after"},
    ("POST", "/github/webhook"): {
        200: "", 202: "base_sha follow_up head_sha pr reason session state task_id", 400: "error", 401: "error",
        413: "error"},
    ("POST", "/releases/{release_id}/answer"): {
        200: "actor base_branch created_at deployed_at detail head_sha id merge_sha method number previous_sha "
             "revert_sha state task_id updated_at watch_until", 400: "error", 401: "error reason", 404: "error",
        409: "error", 413: "error"},
}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = OPENAPI["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _required(schema: dict[str, Any]) -> set[str]:
    schema = _resolve(schema)
    return set(schema.get("required", ())).union(*(_required(part) for part in schema.get("allOf", ())))


def _contract() -> dict[tuple[str, str], dict[int, set[str]]]:
    out: dict[tuple[str, str], dict[int, set[str]]] = {}
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            statuses: dict[int, set[str]] = {}
            for code, response in operation["responses"].items():
                content = response.get("content", {})
                body = content.get("application/json")
                statuses[int(code)] = _required(body["schema"]) if body is not None else set(content)
            out[(method.upper(), path)] = statuses
    return out


def test_description_keeps_todays_paths_status_codes_and_keys() -> None:
    contract = _contract()
    promised = {**TODAY, **ADDED}
    assert set(contract) == set(promised)
    for operation, statuses in promised.items():
        assert set(contract[operation]) == set(statuses), operation
        for status, keys in statuses.items():
            assert set(keys.split()) <= contract[operation][status], (operation, status)


def test_every_error_answer_has_todays_shape() -> None:
    for (method, path), statuses in _contract().items():
        for status, keys in statuses.items():
            if status >= 400:
                assert "error" in keys, (method, path, status)


def test_description_names_every_route_and_only_those() -> None:
    described = {(path, method) for path, item in OPENAPI["paths"].items() for method in item if method in HTTP_METHODS}
    assert described == _served()
    # Issue 16's module lists its own routes: each must be one the API describes (and so guards).
    assert _methods(followup_routes()) <= described


def test_each_handler_takes_the_models_its_operation_describes() -> None:
    # The endpoint hands a handler its parsed body, then its query: a handler annotated otherwise would be given
    # a model it does not expect, or a body described but never parsed.
    for op, handler, _ in api.entries:
        hints = typing.get_type_hints(handler)
        taken = [hints[name] for name in list(inspect.signature(handler).parameters)[1:]]
        assert taken == [m for m in (op.body, op.query) if m is not None], (op.method, op.path)
        assert hints["return"] is Response


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Starlette]:
    # A fuzzed dry run may name a real directory: with no such sandbox image, its task fails before any
    # container starts (at worst after cloning a repository into tmp_path).
    app = _app(tmp_path / "home", AGENT_RUNNER_SANDBOX_IMAGE="agent-runner/no-such-image:fuzz")
    # schemathesis's pytest plugin ends the app's lifespan (started by the first call) when the test ends.
    yield app


@schema.parametrize()
# One app (and one lifespan) per operation, shared by its examples on purpose: starting the backends per example
# would cost more than the whole run.
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_request_gets_a_server_error(case: schemathesis.Case, app: Starlette) -> None:
    token = ALERT_SECRET if case.path == "/agent/auto-fix" else TOKEN
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {token}"},
                           checks=[not_a_server_error, status_code_conformance, response_schema_conformance])


# Found by probing past what 20 examples reach (each was a 500 before its fix in routes.py).
def test_command_with_an_unknown_users_home_is_not_a_server_error(app: Starlette) -> None:
    case = schema["/agent/command"]["POST"].Case(body={"prompt": "x", "dry_run": True, "repo": "~nosuchuser"})
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error])


def test_rollback_to_a_version_past_int64_is_not_a_server_error(app: Starlette) -> None:
    case = schema["/policy/rollback"]["POST"].Case(body={"version": 2**63})
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error])


def test_every_generated_schema_is_valid_json_schema() -> None:
    # OpenAPI 3.1's schema objects are JSON Schema 2020-12: a schema pydantic generated wrong fails here, not in a
    # client's code generator.
    for component in OPENAPI["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(component)
    for item in OPENAPI["paths"].values():
        for operation in item.values():
            for parameter in operation.get("parameters", ()):
                jsonschema.Draft202012Validator.check_schema(parameter["schema"])
