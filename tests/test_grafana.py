"""Grafana-managed alerts: parsing what the contact point sends, its credentials and signature, the endpoint,
and the provisioning files that make Grafana send it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import policy
from runner.alerts.alertmanager import WebhookError, parse_alertmanager
from runner.alerts.logql import ALERT_ONLY_LABELS, logql_for
from runner.app import GRAFANA_TIMESTAMP_HEADER, create_app
from runner.config import Settings
from runner.grafana import (
    DEFAULT_SIGNATURE_HEADER,
    ROUTE_PATH,
    GrafanaAuth,
    GrafanaAuthError,
    GrafanaNotification,
    grafana_endpoint,
    parse_grafana,
    verify,
)
from runner.model_proxy import ModelProxy
from runner.sample import create_sample_repo
from runner.sandbox.docker import DockerSandbox
from runner.service.runtime import Runtime
from runner.store import Store
from runner.supervisor import Deps
from runner.unix_server import serve_tcp
from tests.fakes.app import wait_healthy
from tests.fakes.grafana import FakeGrafana, GrafanaAlertSpec, go_json, label_fingerprint
from tests.fakes.loki import FakeLoki, traceback_lines
from tests.fakes.net import free_port

NOW = 1_777_777_777.0
TOKEN = "grafana-token-0123456789"
HMAC_SECRET = "hmac-secret-abcdef"
PROVISIONING = Path(__file__).parent.parent / "monitoring" / "grafana" / "provisioning"


def _spec(container: str = "bot-1", **kw: Any) -> GrafanaAlertSpec:
    return GrafanaAlertSpec(labels={"alertname": "PythonTraceback", "service": "bot", "container": container,
                                    "severity": "page"},
                            annotations={"summary": f"Python traceback in bot ({container})"},
                            values={"A": 3.0, "B": 3.0, "C": 1.0}, **kw)


# ----------------------------------------------------------------------------------------------- parsing

# Grafana's documentation's example, as published (one alert shown; the published one has two).
DOCS_EXAMPLE = {
    "receiver": "My Super Webhook", "status": "firing", "orgId": 1,
    "alerts": [{"status": "firing",
                "labels": {"alertname": "High memory usage", "team": "blue", "zone": "us-1"},
                "annotations": {"description": "The system has high memory usage",
                                "runbook_url": "https://myrunbook.com/runbook/1234",
                                "summary": "This alert was triggered for zone us-1"},
                "startsAt": "2021-10-12T09:51:03.157076+02:00", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "https://play.grafana.org/alerting/1afz29v7z/edit", "fingerprint": "c6eadffa33fcdf37",
                "silenceURL": "https://play.grafana.org/alerting/silence/new?alertmanager=grafana&matchers=alertname%3DT2",
                "dashboardURL": "", "panelURL": "", "values": {"B": 44.23943737541908, "C": 1}}],
    "groupLabels": {}, "commonLabels": {"team": "blue"}, "commonAnnotations": {},
    "externalURL": "https://play.grafana.org/", "version": "1",
    "groupKey": "{}:{}", "truncatedAlerts": 0, "title": "[FIRING:2]  (blue)", "state": "alerting",
    "message": "**Firing**\n\nLabels:\n - alertname = T2\n",
}


def test_parse_grafana_reads_the_documented_example() -> None:
    parsed = parse_grafana(json.dumps(DOCS_EXAMPLE))
    (alert,) = parsed.notification.alerts
    assert (parsed.org_id, parsed.state, parsed.title) == (1, "alerting", "[FIRING:2]  (blue)")
    assert alert.starts_at == datetime(2021, 10, 12, 7, 51, 3, 157076, tzinfo=UTC)
    assert alert.ends_at is None and alert.fingerprint == "c6eadffa33fcdf37"
    assert parsed.alerts[0].values == {"B": 44.23943737541908, "C": 1.0}
    assert parsed.notification.receiver == "My Super Webhook"


def test_parse_grafana_gives_the_value_the_alertmanager_path_gives() -> None:
    fake = FakeGrafana()
    body = fake.payload([_spec("bot-1"), _spec("bot-2")], group_by=("alertname", "service"))
    parsed = parse_grafana(body)
    raw = json.loads(body)
    # The same alerts as Alertmanager would post them: version 4, no Grafana-only fields, no grafana_folder.
    as_alertmanager = {
        "version": "4", "receiver": raw["receiver"], "status": raw["status"], "groupKey": raw["groupKey"],
        "truncatedAlerts": 0, "externalURL": raw["externalURL"],
        "groupLabels": {"alertname": "PythonTraceback", "service": "bot"},
        "commonLabels": {k: v for k, v in raw["commonLabels"].items() if k != "grafana_folder"},
        "alerts": [{**{k: a[k] for k in ("status", "annotations", "startsAt", "endsAt", "generatorURL",
                                         "fingerprint")},
                    "labels": {k: v for k, v in a["labels"].items() if k != "grafana_folder"}}
                   for a in raw["alerts"]]}
    # The same value, but for who sent it (the task says `requested_by: grafana:<receiver>`).
    assert parsed.notification == dataclasses.replace(parse_alertmanager(as_alertmanager), sender="grafana")
    assert [a.grafana_labels for a in parsed.alerts] == [{"grafana_folder": "agent-runner"}] * 2
    # So the Loki query is the Alertmanager path's: the stream labels only.
    assert logql_for(parsed.notification.alerts[0], '{job=~".+"}') == '{container="bot-1", service="bot"}'
    assert [a.fingerprint for a in parsed.notification.alerts] == [
        label_fingerprint({**_spec(c).labels, "grafana_folder": "agent-runner"}) for c in ("bot-1", "bot-2")]


def test_parse_grafana_reads_a_resolved_notification() -> None:
    ended = datetime(2026, 5, 1, 12, 10, tzinfo=UTC)
    parsed = parse_grafana(FakeGrafana().payload([_spec(ends_at=ended)]))
    assert parsed.state == "ok" and parsed.notification.status == "resolved"
    assert parsed.notification.alerts[0].ends_at == ended and parsed.notification.firing == ()


def test_parse_grafana_counts_truncated_alerts_and_keeps_their_order() -> None:
    fake = FakeGrafana(max_alerts=2)
    parsed = parse_grafana(fake.payload([_spec(f"bot-{i}") for i in range(5)]))
    assert parsed.notification.truncated_alerts == 3
    assert [a.labels["container"] for a in parsed.notification.alerts] == ["bot-0", "bot-1"]


def test_parse_grafana_reads_gos_html_safe_escapes() -> None:
    spec = _spec()
    spec.annotations["summary"] = "<b> & </b> \u2028"
    body = FakeGrafana().payload([spec])
    assert b"\\u003cb\\u003e \\u0026" in body
    assert parse_grafana(body).notification.alerts[0].annotations["summary"] == "<b> & </b> \u2028"


@pytest.mark.parametrize(("change", "where"), [
    (lambda b: b.update(version="4"), "not a Grafana webhook"),
    (lambda b: b.pop("orgId"), "not a Grafana webhook"),
    (lambda b: b.update(orgId="1"), "orgId"),
    (lambda b: b["alerts"][0].update(values={"B": "high"}), "values.B"),
    (lambda b: b["alerts"][0].update(startsAt="yesterday"), "startsAt"),
    (lambda b: b["alerts"][0].update(labels=None), "labels"),
    (lambda b: b.update(alerts={}), "alerts"),
])
def test_parse_grafana_refuses_malformed_bodies(change: Any, where: str) -> None:
    body = json.loads(json.dumps(DOCS_EXAMPLE))
    change(body)
    with pytest.raises(WebhookError, match=where):
        parse_grafana(body)


def test_parse_grafana_refuses_non_json() -> None:
    with pytest.raises(WebhookError, match="not JSON"):
        parse_grafana(b"{nope")


# ----------------------------------------------------------------------------------------------- auth


def _headers(fake: FakeGrafana, body: bytes, now: float = NOW) -> dict[str, str]:
    return {k.lower(): v for k, v in fake.headers(body, now=now).items()}


def test_verify_accepts_the_contact_points_bearer_and_refuses_others() -> None:
    auth = GrafanaAuth(authorization=TOKEN)
    body = FakeGrafana().payload([_spec()])
    verify(auth, _headers(FakeGrafana(credentials=TOKEN), body), body, now=NOW)
    with pytest.raises(GrafanaAuthError, match="bad credentials"):
        verify(auth, _headers(FakeGrafana(credentials="nope"), body), body, now=NOW)
    with pytest.raises(GrafanaAuthError, match="bad credentials"):
        verify(auth, _headers(FakeGrafana(credentials=TOKEN, scheme="Token"), body), body, now=NOW)
    with pytest.raises(GrafanaAuthError, match="no Authorization"):
        verify(auth, _headers(FakeGrafana(), body), body, now=NOW)


def test_verify_accepts_basic_credentials_and_refuses_wrong_ones() -> None:
    auth = GrafanaAuth(basic=("grafana", "pa:ss"))
    body = b"{}"
    verify(auth, _headers(FakeGrafana(basic=("grafana", "pa:ss")), body), body, now=NOW)
    for basic in (("grafana", "pass"), ("other", "pa:ss")):
        with pytest.raises(GrafanaAuthError, match="bad credentials"):
            verify(auth, _headers(FakeGrafana(basic=basic), body), body, now=NOW)
    with pytest.raises(GrafanaAuthError, match="bad credentials"):
        verify(auth, {"authorization": "Basic %%%"}, body, now=NOW)
    with pytest.raises(GrafanaAuthError, match="no basic"):
        verify(auth, {"authorization": f"Bearer {base64.b64encode(b'grafana:pa:ss').decode()}"}, body, now=NOW)


def test_verify_checks_the_body_signature_without_a_timestamp() -> None:
    auth = GrafanaAuth(hmac_secret=HMAC_SECRET)
    fake = FakeGrafana(hmac_secret=HMAC_SECRET)
    body = fake.payload([_spec()])
    verify(auth, _headers(fake, body), body, now=NOW)
    with pytest.raises(GrafanaAuthError, match="bad signature"):
        verify(auth, _headers(fake, body), body.replace(b"bot-1", b"bot-9"), now=NOW)
    with pytest.raises(GrafanaAuthError, match="bad signature"):
        verify(auth, _headers(FakeGrafana(hmac_secret="other"), body), body, now=NOW)
    with pytest.raises(GrafanaAuthError, match="no signature"):
        verify(auth, _headers(FakeGrafana(), body), body, now=NOW)


def test_verify_checks_a_timestamped_signature_and_refuses_replays() -> None:
    header = "X-Grafana-Alerting-Timestamp"
    auth = GrafanaAuth(authorization=TOKEN, hmac_secret=HMAC_SECRET, timestamp_header=header, max_age=300)
    fake = FakeGrafana(credentials=TOKEN, hmac_secret=HMAC_SECRET, timestamp_header=header)
    body = fake.payload([_spec()])
    sent = _headers(fake, body, now=NOW)
    verify(auth, sent, body, now=NOW + 299)
    with pytest.raises(GrafanaAuthError, match="too old"):
        verify(auth, sent, body, now=NOW + 301)  # the same request, replayed later
    with pytest.raises(GrafanaAuthError, match="bad signature"):
        verify(auth, {**sent, header.lower(): str(int(NOW) + 200)}, body, now=NOW + 301)  # re-dated
    with pytest.raises(GrafanaAuthError, match="future"):
        verify(auth, _headers(fake, body, now=NOW + 120), body, now=NOW)
    with pytest.raises(GrafanaAuthError, match="no signature timestamp"):
        verify(auth, {k: v for k, v in sent.items() if k != header.lower()}, body, now=NOW)
    # A signature made without the timestamp does not pass where one is configured.
    untimed = _headers(FakeGrafana(credentials=TOKEN, hmac_secret=HMAC_SECRET), body)
    with pytest.raises(GrafanaAuthError):
        verify(auth, {**untimed, header.lower(): str(int(NOW))}, body, now=NOW)


def test_grafana_auth_needs_a_credential_and_hides_its_secrets() -> None:
    with pytest.raises(ValueError):
        GrafanaAuth()
    with pytest.raises(ValueError):
        GrafanaAuth(authorization=TOKEN, basic=("a", "b"))
    assert TOKEN not in repr(GrafanaAuth(authorization=TOKEN)) and HMAC_SECRET not in repr(
        GrafanaAuth(hmac_secret=HMAC_SECRET))


# ----------------------------------------------------------------------------------------------- endpoint


async def test_endpoint_admits_a_signed_notification_and_refuses_and_audits_a_forged_one(tmp_path: Path) -> None:
    header = "X-Grafana-Alerting-Timestamp"
    auth = GrafanaAuth(authorization=TOKEN, hmac_secret=HMAC_SECRET, timestamp_header=header)
    admitted: list[GrafanaNotification] = []

    async def admit(parsed: GrafanaNotification) -> Response:
        admitted.append(parsed)
        return JSONResponse({"alerts": len(parsed.notification.firing)}, status_code=202)

    async with Store(tmp_path / "state.db") as store:
        async def refuse(request: Request, reason: str) -> None:
            await store.audit(None, "grafana", "refused", {"path": request.url.path, "reason": "grafana",
                                                           "why": reason})

        app = Starlette(routes=[Route(ROUTE_PATH, grafana_endpoint(auth, admit, refuse=refuse, clock=lambda: NOW),
                                      methods=["POST"])])
        good = FakeGrafana(credentials=TOKEN, hmac_secret=HMAC_SECRET, timestamp_header=header)
        forged = FakeGrafana(credentials=TOKEN, hmac_secret="guessed", timestamp_header=header)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sv") as client:
            ok = await good.send(client, ROUTE_PATH, [_spec("bot-1"), _spec("bot-2")], now=NOW)
            bad = await forged.send(client, ROUTE_PATH, [_spec()], now=NOW)
            old = await good.send(client, ROUTE_PATH, [_spec()], now=NOW - 3600)
            junk = await good.send(client, ROUTE_PATH, [], now=NOW, body=b'{"version": "4"}')
        refused = await store.audit_log(None, event="refused")
    assert (ok.status_code, ok.json()) == (202, {"alerts": 2})
    assert [bad.status_code, old.status_code, junk.status_code] == [401, 401, 400]
    assert bad.json()["reason"] == "bad signature"
    assert len(admitted) == 1 and admitted[0].org_id == 1
    assert [r.detail["why"] for r in refused] == ["bad signature", "signature timestamp too old (a replay?)"]


async def test_endpoint_without_configured_auth_refuses_everything() -> None:
    async def admit(parsed: GrafanaNotification) -> Response:
        raise AssertionError("admitted without credentials")

    app = Starlette(routes=[Route(ROUTE_PATH, grafana_endpoint(None, admit, clock=lambda: NOW), methods=["POST"])])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sv") as client:
        response = await FakeGrafana(credentials=TOKEN).send(client, ROUTE_PATH, [_spec()], now=NOW)
    assert response.status_code == 401 and response.json()["reason"] == "no credential configured"


# ----------------------------------------------------------------------------------------------- provisioning


def _load(name: str) -> Mapping[str, Any]:
    data = yaml.safe_load((PROVISIONING / name).read_text())
    assert isinstance(data, dict) and data["apiVersion"] == 1
    return data


def test_provisioning_contact_point_points_at_the_route_with_its_signature() -> None:
    (point,) = _load("alerting/contact-points.yaml")["contactPoints"]
    (receiver,) = point["receivers"]
    settings = receiver["settings"]
    assert receiver["type"] == "webhook" and settings["httpMethod"] == "POST"
    assert urlsplit(settings["url"]).path == ROUTE_PATH
    assert urlsplit(settings["url"]).port == 8080  # compose.yaml's AGENT_RUNNER_PORT
    assert settings["authorization_scheme"] == "Bearer"
    assert settings["authorization_credentials"].startswith("${")  # from Grafana's environment, not this file
    assert settings["hmacConfig"]["header"] == DEFAULT_SIGNATURE_HEADER
    assert settings["hmacConfig"]["secret"].startswith("${") and settings["hmacConfig"]["timestampHeader"]


def test_provisioning_policy_routes_the_rules_alerts_to_the_contact_point() -> None:
    (point,) = _load("alerting/contact-points.yaml")["contactPoints"]
    (policy,) = _load("alerting/policies.yaml")["policies"]
    (group,) = _load("alerting/rules.yaml")["groups"]
    (rule,) = group["rules"]
    (route,) = policy["routes"]
    assert route["receiver"] == point["name"]
    labels = {"alertname": rule["title"], **rule["labels"]}
    for name, op, value in route["object_matchers"]:
        assert op == "=" and labels[name] == value
    # Rule labels other than these would land in the LogQL stream selector and match no stream.
    assert set(rule["labels"]) <= ALERT_ONLY_LABELS


def test_provisioning_rule_queries_the_loki_datasource_by_stream_labels() -> None:
    datasources = {d["uid"]: d for d in _load("datasources/datasources.yaml")["datasources"]}
    (group,) = _load("alerting/rules.yaml")["groups"]
    (rule,) = group["rules"]
    refs = {d["refId"]: d for d in rule["data"]}
    assert rule["condition"] in refs
    query = refs["A"]
    assert datasources[query["datasourceUid"]]["type"] == "loki"
    assert "sum by (service, container)" in query["model"]["expr"]
    assert {d["datasourceUid"] for d in rule["data"] if d["refId"] != "A"} == {"__expr__"}
    # An alert as Grafana would send it for this rule: its LogQL is the stream of the container that failed.
    spec = GrafanaAlertSpec(labels={"alertname": rule["title"], **rule["labels"], "service": "bot",
                                    "container": "bot-1"})
    alert = parse_grafana(FakeGrafana(folder=group["folder"]).payload([spec])).notification.alerts[0]
    assert logql_for(alert, '{job=~".+"}') == '{container="bot-1", service="bot"}'


def test_go_json_matches_gos_marshal_escapes() -> None:
    assert go_json({"a": "<&>", "b": "é"}) == '{"a":"\\u003c\\u0026\\u003e","b":"é"}'.encode()


# ----------------------------------------------------------------------------------------------- through the service

OWNER_TOKEN = "owner-token-for-grafana-tests"


def _service_app(home: Path, **env: str) -> Starlette:
    """create_app as `serve` builds it, on backends whose tasks fail before they need a container (the
    repository does not exist), so what is measured is admission: which alerts became tasks."""
    settings = Settings.from_env({"AGENT_RUNNER_HOME": str(home), "AGENT_API_TOKEN": OWNER_TOKEN,
                                  "AGENT_RUNNER_REPO": str(home / "missing.git"), **env})

    @contextlib.asynccontextmanager
    async def open_backends() -> AsyncIterator[Runtime]:
        async with Store(home / "state.db") as store, DockerSandbox() as sandbox, \
                ModelProxy("http://127.0.0.1:9", "unused") as proxy:
            deps = Deps(home=home, store=store, sandbox=sandbox, proxy=proxy, policy=policy.load_default(),
                        image=settings.sandbox_image)
            yield Runtime(settings, deps, lambda _line: None)

    return create_app(settings, runtime=open_backends, say=lambda _line: None)


async def test_service_turns_a_signed_grafana_alert_into_one_fix_task_and_refuses_a_forged_one(tmp_path: Path) -> None:
    app = _service_app(tmp_path, GRAFANA_WEBHOOK_TOKEN=TOKEN, GRAFANA_WEBHOOK_HMAC_SECRET=HMAC_SECRET)
    grafana = FakeGrafana(credentials=TOKEN, hmac_secret=HMAC_SECRET, timestamp_header=GRAFANA_TIMESTAMP_HEADER)
    forged = FakeGrafana(credentials=TOKEN, hmac_secret="guessed", timestamp_header=GRAFANA_TIMESTAMP_HEADER)
    unsigned = FakeGrafana(credentials=TOKEN)
    owner = {"Authorization": f"Bearer {OWNER_TOKEN}"}
    async with serve_tcp(app, lifespan="on") as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        first = await grafana.send(client, ROUTE_PATH, [_spec("bot-1")], now=time.time())
        # Grafana repeats a firing alert every repeat_interval: the same fingerprint, no second task.
        again = await grafana.send(client, ROUTE_PATH, [_spec("bot-1")], now=time.time())
        bad = await forged.send(client, ROUTE_PATH, [_spec("bot-2")], now=time.time())
        bare = await unsigned.send(client, ROUTE_PATH, [_spec("bot-3")], now=time.time())
        replayed = await grafana.send(client, ROUTE_PATH, [_spec("bot-4")], now=time.time() - 3600)
        tasks = (await client.get("/tasks", headers=owner)).json()["tasks"]
        shown = [(await client.get(f"/tasks/{t['id']}", headers=owner)).json() for t in tasks]
        metrics = (await client.get("/metrics")).text
    async with Store(tmp_path / "state.db") as store:
        refused = await store.audit_log(None, event="refused")
    assert first.status_code == 202, first.text
    (outcome,) = first.json()["alerts"]
    assert outcome["status"] == "accepted"
    # The first task may already have failed (its repository does not exist): then the cooldown turns it away.
    assert [o["status"] for o in again.json()["alerts"]] in (["duplicate"], ["cooling_down"])
    assert [bad.status_code, bare.status_code, replayed.status_code] == [401, 401, 401]
    assert bad.json()["reason"] == "bad signature" and bare.json()["reason"] == "no signature"
    (task,) = shown  # exactly one, from the one good alert
    assert task["id"] == outcome["task_id"] and task["kind"] == "fix" and task["source"] == "alertmanager"
    assert task["fingerprint"] == outcome["fingerprint"] and "PythonTraceback" in task["prompt"]
    assert "bot-1" in task["prompt"] and "grafana_folder" not in task["prompt"]
    auth_refusals = [r for r in refused if r.detail["reason"] != "cooling_down"]
    assert [(r.actor, r.detail["reason"], r.detail["path"]) for r in auth_refusals] == [
        ("grafana", "bad signature", ROUTE_PATH), ("grafana", "no signature", ROUTE_PATH),
        ("grafana", "signature timestamp too old (a replay?)", ROUTE_PATH)]
    assert 'agent_runner_refusals_total{reason="bad signature"} 1' in metrics


async def test_service_without_grafana_secrets_refuses_every_grafana_request(tmp_path: Path) -> None:
    app = _service_app(tmp_path)
    async with serve_tcp(app, lifespan="on") as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await FakeGrafana(credentials=TOKEN).send(client, ROUTE_PATH, [_spec()], now=time.time())
        tasks = (await client.get("/tasks", headers={"Authorization": f"Bearer {OWNER_TOKEN}"})).json()["tasks"]
    assert response.status_code == 401 and response.json()["reason"] == "no credential configured"
    assert tasks == []


FIX_SCENARIO = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "fix-balance.yaml"


@pytest.mark.docker
async def test_serve_turns_a_grafana_storm_for_one_bug_into_exactly_one_fix_task(tmp_path: Path) -> None:
    """`agent-runner serve` as an owner runs it, with Loki (the stand-in) holding one traceback logged by two
    containers: Grafana's notification of both, and its repeat, make one fix task; a forged one makes none."""
    repo = await create_sample_repo(tmp_path / "origin")
    loki, started = FakeLoki(), datetime.now(UTC)
    for container in ("bot-1", "bot-2"):
        base = int((started.timestamp() - 20) * 10**9)
        loki.add({"service": "bot", "container": container},
                 [(base + i, line) for i, line in enumerate(traceback_lines())])
    port = free_port()
    grafana = FakeGrafana(credentials=TOKEN, hmac_secret=HMAC_SECRET, timestamp_header=GRAFANA_TIMESTAMP_HEADER)
    forged = FakeGrafana(credentials=TOKEN, hmac_secret="guessed", timestamp_header=GRAFANA_TIMESTAMP_HEADER)
    storm = [_spec("bot-1", starts_at=started), _spec("bot-2", starts_at=started)]
    async with serve_tcp(loki.app) as loki_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_",
                                                                          "GRAFANA_", "TELEGRAM_", "LOKI_"))}
        env.update(AGENT_RUNNER_HOME=str(tmp_path / "home"), AGENT_RUNNER_REPO=str(repo), AGENT_RUNNER_PORT=str(port),
                   AGENT_API_TOKEN=OWNER_TOKEN, LOKI_URL=loki_url, AGENT_RUNNER_REPO_ROOTS="/app",
                   GRAFANA_WEBHOOK_TOKEN=TOKEN, GRAFANA_WEBHOOK_HMAC_SECRET=HMAC_SECRET)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "runner.cli", "serve", "--scenario",
                                                    str(FIX_SCENARIO), env=env, stderr=asyncio.subprocess.PIPE)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                await wait_healthy(client, 90)
                first = await grafana.send(client, ROUTE_PATH, storm, now=time.time())
                repeat = await grafana.send(client, ROUTE_PATH, storm, now=time.time())
                bad = await forged.send(client, ROUTE_PATH, [_spec("bot-3", starts_at=started)], now=time.time())
                owner = {"Authorization": f"Bearer {OWNER_TOKEN}"}
                tasks = (await client.get("/tasks", headers=owner)).json()["tasks"]
                task = (await client.get(f"/tasks/{tasks[0]['id']}", headers=owner)).json() if tasks else {}
        finally:
            proc.terminate()
            _, err = await asyncio.wait_for(proc.communicate(), 90)
    async with Store(tmp_path / "home" / "state.db") as store:
        refused = await store.audit_log(None, event="refused")
    assert first.status_code == 202, (first.text, err.decode()[-2000:])
    outcomes = first.json()["alerts"]
    assert len({o["fingerprint"] for o in outcomes}) == 1  # two containers, one traceback: one bug
    assert [o["status"] for o in outcomes] == ["accepted", "accepted"] and len({o["task_id"] for o in outcomes}) == 1
    assert {o["status"] for o in repeat.json()["alerts"]} <= {"duplicate", "cooling_down"}
    assert bad.status_code == 401 and bad.json()["reason"] == "bad signature"
    assert len(tasks) == 1, tasks  # exactly one fix task
    assert task["kind"] == "fix" and task["fingerprint"] == outcomes[0]["fingerprint"]
    assert task["requested_by"].startswith("grafana:")  # who asked, as the owner reads it: not alertmanager
    assert "KeyError" in task["prompt"] and "bot/ledger.py" in task["prompt"]
    assert [(r.actor, r.detail["reason"]) for r in refused if r.detail["reason"] != "cooling_down"] == [
        ("grafana", "bad signature")]
    assert loki.queries, "the traceback was not read from Loki"
