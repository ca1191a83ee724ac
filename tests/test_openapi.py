"""The OpenAPI description: it names exactly the app's routes, and fuzzing the app against it never gets a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from starlette.applications import Starlette

from runner.api import routes as routes_module
from runner.api.openapi import MAX_PROMPT_CHARS, OPENAPI
from runner.api.routes import routes
from tests.test_app import ALERT_SECRET, TOKEN, _app

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}

schema = schemathesis.openapi.from_dict(OPENAPI)


def _served() -> set[tuple[str, str]]:
    return {(route.path, method.lower()) for route in routes()
            for method in route.methods or () if method != "HEAD"}


def test_description_names_every_route_and_only_those() -> None:
    described = {(path, method) for path, item in OPENAPI["paths"].items() for method in item if method in HTTP_METHODS}
    assert described == _served()
    assert MAX_PROMPT_CHARS == routes_module.MAX_PROMPT_CHARS


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
