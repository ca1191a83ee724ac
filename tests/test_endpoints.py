"""What every endpoint shares: bodies and queries parsed through their models (a malformed one is a 400 naming the
field, in the error shape, never a 5xx), and the credential checked and a refusal audited once."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.api.endpoints import BadRequest, parse
from runner.api.schemas import Approve, Command
from tests.fakes.app import OWNER, app_client, owner_app


def test_parse_names_each_wrong_field_and_never_echoes_the_input() -> None:
    with pytest.raises(BadRequest) as info:
        parse(Approve, '{"number": "12", "head_sha": 7, "secret": "hunter2"}')
    assert str(info.value) == "number: Input should be a valid integer; head_sha: Input should be a valid string"
    assert info.value.status == 400


def test_parse_takes_null_as_absent_and_strips_the_prompt() -> None:
    command = parse(Command, '{"prompt": "  add /balance ", "kind": null, "dry_run": null}')
    assert (command.prompt, command.kind, command.dry_run, command.repo) == ("add /balance", "feature", False, None)


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/agent/approve-pr", b'{"number": 1}', "head_sha: Field required"),
    ("/agent/approve-pr", b'{"number": true, "head_sha": "abc"}', "number: Input should be a valid integer"),
    ("/agent/approve-pr", b'{"number": 9223372036854775808, "head_sha": "abc"}', "number: Input should be less"),
    ("/agent/reject-pr", b"[1]", "body: Input should be an object"),
    ("/agent/reject-pr", b"\xff\xfe", "body: Invalid JSON"),
    ("/policy/rollback", b'{"version": 1.5}', "version: Input should be a valid integer"),
    ("/agent/command", b'{"prompt": "   "}', "prompt: String should have at least 1 character"),
    ("/agent/command", b'{"prompt": "x", "kind": "deploy"}', "kind: Input should be 'feature', 'fix' or 'review'"),
])
async def test_a_malformed_body_is_a_400_naming_the_field(tmp_path: Path, path: str, body: bytes,
                                                        needle: str) -> None:
    async with app_client(owner_app(tmp_path / "home")) as client:
        response = await client.post(path, headers={**OWNER, "Content-Type": "application/json"}, content=body)
    assert response.status_code == 400 and list(response.json()) == ["error"], response.text
    assert needle in response.json()["error"]


async def test_a_body_over_a_mebibyte_is_a_413_before_it_is_parsed(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path / "home")) as client:
        response = await client.post("/agent/command", headers=OWNER, content=b"[" * (1 << 20 | 1))
    assert response.status_code == 413 and response.json() == {"error": "body too large"}


async def test_a_refused_credential_is_answered_and_audited_once_for_every_owner_route(tmp_path: Path) -> None:
    app = owner_app(tmp_path / "home")
    async with app_client(app) as client:
        for method, path in [("GET", "/audit"), ("GET", "/prs"), ("POST", "/tasks/t/follow-ups")]:
            response = await client.request(method, path, headers={"Authorization": "Bearer wrong"})
            assert response.status_code == 401 and response.json() == {"error": "unauthorized", "reason": "bad token"}
        refusals = await app.state.service.store.audit_log(event="refused")
    assert [(e.actor, e.detail["path"], e.detail["reason"]) for e in refusals] == [
        ("api", "/audit", "bad token"), ("api", "/prs", "bad token"), ("api", "/tasks/t/follow-ups", "bad token")]
