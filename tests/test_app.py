"""The service over real HTTP: auth and its audit, rate limits, tasks and their events, alerts, a burst, end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.app import create_app
from runner.deploy import create_deployer
from runner.errors import ConfigError
from runner.sample import create_sample_repo
from runner.service.releases import NOTHING_DEPLOYED
from runner.service.runtime import check_forge
from runner.store import Store
from tests.fakes.app import (
    ALERTS,
    OWNER,
    TOKEN,
    app_client,
    owner_app,
    owner_settings,
    raw_post,
    serve_app,
    serve_process,
    wait_healthy,
)
from tests.fakes.github import FakeGitHub
from tests.fakes.net import free_port

FIX_SCENARIO = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "fix-balance.yaml"


async def _wait_state(client: httpx.AsyncClient, task_id: str, states: set[str], timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            body: dict[str, Any] = (await client.get(f"/tasks/{task_id}", headers=OWNER)).json()
            if body["state"] in states and not body["active"]:
                return body
            await asyncio.sleep(0.05)


async def _events(client: httpx.AsyncClient, task_id: str, timeout: float = 300) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(timeout), client.stream("GET", f"/tasks/{task_id}/events", headers=OWNER) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def _alert(labels: dict[str, str], status: str = "firing") -> dict[str, Any]:
    return {"status": status, "labels": labels, "annotations": {"summary": "ZeroDivisionError in /balance"},
            "startsAt": "2026-11-23T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
            "fingerprint": "abc"}


def _webhook(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "groupKey": "{}:{alertname=\"BotErrors\"}", "truncatedAlerts": 0, "status": "firing",
            "receiver": "agent-runner", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093", "alerts": list(alerts)}


async def test_command_refusals_are_answered_401_and_audited(tmp_path: Path) -> None:
    app = owner_app(tmp_path / "home")
    async with app_client(app) as client:
        body = {"prompt": "add /balance", "dry_run": True}
        assert (await client.post("/agent/command", json=body)).status_code == 401
        wrong = {"Authorization": "Bearer nope-" + TOKEN}
        assert (await client.post("/agent/command", json=body, headers=wrong)).status_code == 401
        # The alert secret is a different, weaker credential: it may not command the agent.
        assert (await client.post("/agent/command", json=body, headers=ALERTS)).status_code == 401
        assert (await client.get("/tasks")).status_code == 401
        assert (await client.post("/agent/auto-fix", json=_webhook(), headers=OWNER)).status_code == 401
        store = app.state.service.store
        refusals = await store.audit_log(event="refused")
    assert [(e.actor, e.detail["reason"], e.detail["path"]) for e in refusals] == [
        ("api", "no bearer token", "/agent/command"),
        ("api", "bad token", "/agent/command"),
        ("api", "bad token", "/agent/command"),
        ("api", "no bearer token", "/tasks"),
        ("alertmanager", "bad token", "/agent/auto-fix"),
    ]
    assert all(e.detail["client"] == "127.0.0.1" for e in refusals)
    assert TOKEN not in (tmp_path / "home" / "state.db").read_bytes().decode("latin-1")


async def test_command_validates_its_body(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path / "home")) as client:
        for body, needle in [({}, "prompt"), ({"prompt": "x", "kind": "deploy"}, "kind"),
                             ({"prompt": "x", "dry_run": "yes"}, "dry_run"),
                             ({"prompt": "x", "repo": "/elsewhere.git"}, "only a dry run")]:
            response = await client.post("/agent/command", json=body, headers=OWNER)
            assert response.status_code == 400 and needle in response.json()["error"], (body, response.text)
        response = await client.post("/agent/command", content=b"not json", headers=OWNER)
        assert response.status_code == 400


async def test_command_answers_202_at_once_and_streams_the_task_to_its_end(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path / "home")) as client:
        response = await client.post("/agent/command", headers=OWNER,
                                     json={"prompt": "add /balance", "kind": "feature", "dry_run": True})
        assert response.status_code == 202
        task_id = response.json()["task_id"]
        assert response.json()["links"]["events"] == f"/tasks/{task_id}/events"
        events = await _events(client, task_id, timeout=30)
        task = await _wait_state(client, task_id, {"failed"})
        listed = (await client.get("/tasks", headers=OWNER, params={"state": "failed"})).json()["tasks"]
    names = [name for name, _ in events]
    assert names[-1] == "end" and events[-1][1] == {"state": "failed"}
    assert ("state", {"state": "failed", "reason": task["reason"]}) in events
    assert any(name == "progress" and "provisioning" in data["line"] for name, data in events)
    assert "GitError" in task["reason"]  # the repository does not exist: failed in provisioning, no container
    assert [s["state"] for s in task["timings"]["states"]] == ["queued", "provisioning", "failed"]
    assert task["result"]["status"] == "failed" and task["result"]["diff"] == ""
    assert task["source"] == "api" and task["requested_by"] == "owner" and task["dry_run"] is True
    assert [t["id"] for t in listed] == [task_id]


async def test_command_over_the_hourly_limit_is_answered_429_with_retry_after(tmp_path: Path) -> None:
    home = tmp_path / "home"
    body = {"prompt": "add /balance", "dry_run": True}
    async with app_client(owner_app(home, commands=2)) as client:
        assert [(await client.post("/agent/command", json=body, headers=OWNER)).status_code
                for _ in range(2)] == [202, 202]
        refused = await client.post("/agent/command", json=body, headers=OWNER)
        assert refused.status_code == 429
        assert 3500 < int(refused.headers["Retry-After"]) <= 3600
        assert refused.json()["retry_after"] == int(refused.headers["Retry-After"])
    # A restart does not reset the count: it comes from the tasks the store holds.
    app = owner_app(home, commands=2)
    async with app_client(app) as client:
        assert (await client.post("/agent/command", json=body, headers=OWNER)).status_code == 429
        refusals = await app.state.service.store.audit_log(event="refused")
        metrics = (await client.get("/metrics")).text
    assert [e.detail["reason"] for e in refusals] == ["rate_limited", "rate_limited"]
    assert 'agent_runner_refusals_total{reason="rate_limited"} 2' in metrics


async def test_task_routes_answer_404_and_409(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path / "home")) as client:
        assert (await client.get("/tasks/nope", headers=OWNER)).status_code == 404
        assert (await client.get("/tasks/nope/events", headers=OWNER)).status_code == 404
        assert (await client.post("/tasks/nope/cancel", headers=OWNER)).status_code == 404
        task_id = (await client.post("/agent/command", headers=OWNER,
                                     json={"prompt": "x", "dry_run": True})).json()["task_id"]
        await _wait_state(client, task_id, {"failed"})
        assert (await client.post(f"/tasks/{task_id}/cancel", headers=OWNER)).status_code == 409
        # The local forge needs a repository on disk; none is configured here.
        approve = await client.post("/agent/approve-pr", headers=OWNER, json={"number": 1, "head_sha": "0" * 40})
        assert approve.status_code == 409


async def test_auto_fix_starts_one_fix_task_per_firing_alert(tmp_path: Path) -> None:
    app = owner_app(tmp_path / "home")
    async with app_client(app) as client:
        body = _webhook(_alert({"alertname": "BotErrors", "service": "bot"}),
                        _alert({"alertname": "BotErrors", "service": "worker"}),
                        _alert({"alertname": "BotErrors", "service": "old"}, status="resolved"))
        response = await client.post("/agent/auto-fix", json=body, headers=ALERTS)
        assert response.status_code == 202
        outcomes = response.json()["alerts"]
        assert [o["status"] for o in outcomes] == ["accepted", "accepted"]
        assert len({o["fingerprint"] for o in outcomes}) == 2
        task = (await client.get(f"/tasks/{outcomes[0]['task_id']}", headers=OWNER)).json()
        bad = await client.post("/agent/auto-fix", json={"version": "3"}, headers=ALERTS)
        direct = await client.post("/agent/auto-fix", json={"traceback": "Traceback..."}, headers=ALERTS)
    assert task["kind"] == "fix" and task["source"] == "alertmanager" and task["dry_run"] is False
    assert task["fingerprint"] == outcomes[0]["fingerprint"]
    assert "BotErrors" in task["prompt"] and "ZeroDivisionError" in task["prompt"]
    assert bad.status_code == 400 and "version" in bad.json()["error"]
    assert direct.status_code == 202  # a posted traceback is admitted like an alert (runner/alerts/autofix.py)


async def test_auto_fix_over_its_limit_is_answered_429(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path / "home", autofixes=1)) as client:
        first = await client.post("/agent/auto-fix", json=_webhook(_alert({"alertname": "A"})), headers=ALERTS)
        second = await client.post("/agent/auto-fix", json=_webhook(_alert({"alertname": "B"})), headers=ALERTS)
        # The owner's own allowance is separate.
        own = await client.post("/agent/command", json={"prompt": "x", "dry_run": True}, headers=OWNER)
    assert first.status_code == 202
    assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0
    assert own.status_code == 202


async def test_health_needs_no_token_and_metrics_count_tasks_by_state(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path / "home")) as client:
        health = await client.get("/health")
        task_id = (await client.post("/agent/command", headers=OWNER,
                                     json={"prompt": "x", "dry_run": True})).json()["task_id"]
        await _wait_state(client, task_id, {"failed"})
        metrics = await client.get("/metrics")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["max_sandboxes"] == 2
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'agent_runner_tasks{state="failed"} 1' in metrics.text
    assert 'agent_runner_tasks{state="queued"} 0' in metrics.text
    assert "# TYPE agent_runner_policy_decisions_total counter" in metrics.text
    assert 'agent_runner_model_tokens_total{direction="input"} 0' in metrics.text
    assert "agent_runner_model_cost_usd_total 0.000000" in metrics.text
    assert "agent_runner_task_duration_seconds_count 1" in metrics.text
    assert 'agent_runner_autofix_tasks{state="failed"} 0' in metrics.text


async def test_app_burst_of_commands_every_request_answered(tmp_path: Path) -> None:
    burst, limit = 200, 150
    app = owner_app(tmp_path / "home", commands=limit)
    body = {"prompt": "add /balance", "dry_run": True, "repo": str(tmp_path / "nowhere.git")}
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        port = int(url.rsplit(":", 1)[1])
        started = time.perf_counter()
        raw = json.dumps(body).encode()
        answers = [(code, data) for code, _, data in
                   await asyncio.gather(*(raw_post(port, "/agent/command", raw) for _ in range(burst)))]
        elapsed = time.perf_counter() - started
        codes = [code for code, _ in answers]
        accepted = {data["task_id"] for code, data in answers if code == 202}
        assert all(data["retry_after"] > 0 for code, data in answers if code == 429)
        async with asyncio.timeout(120):  # the queue drains: every accepted task reaches its end
            while (await client.get("/health")).json()["waiting"] or app.state.service.scheduler.running:
                await asyncio.sleep(0.1)
        tasks = (await client.get("/tasks", headers=OWNER, params={"limit": "1000"})).json()["tasks"]
    print(f"\nburst: {burst} POST /agent/command from {burst} clients in {elapsed:.2f}s = {burst / elapsed:.0f} "
          f"requests/s ({codes.count(202)} accepted, {codes.count(429)} rate-limited)", file=sys.stderr)
    assert codes.count(202) == limit and codes.count(429) == burst - limit  # every request answered
    assert {t["id"] for t in tasks} == accepted  # none lost, none extra
    assert {t["state"] for t in tasks} == {"failed"}


# -------------------------------------------------------------------------------------------- end to end


@pytest.mark.docker
async def test_serve_runs_a_task_through_the_api_to_a_pull_request_and_deploys_it(tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    port = free_port()
    # No key and no --scenario: `serve` plays its embedded default (fix-balance), as a new user tries it offline.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_"))}
    env.update(AGENT_RUNNER_HOME=str(tmp_path / "home"), AGENT_RUNNER_REPO=str(repo),
               AGENT_RUNNER_PORT=str(port), AGENT_API_TOKEN=TOKEN)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "runner.cli", "serve", env=env,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            await wait_healthy(client, 60)
            response = await client.post("/agent/command", headers=OWNER, json={
                "prompt": "average_spend crashes for users without spending; fix it", "kind": "fix"})
            assert response.status_code == 202
            task_id = response.json()["task_id"]
            events = await _events(client, task_id)
            task = (await client.get(f"/tasks/{task_id}", headers=OWNER)).json()
            pr = task["result"]["pr"]
            approved = await client.post("/agent/approve-pr", headers=OWNER,
                                         json={"number": pr["number"], "head_sha": pr["head_sha"]})
            again = await client.post("/agent/approve-pr", headers=OWNER,
                                      json={"number": pr["number"], "head_sha": pr["head_sha"]})
            after = await _wait_state(client, task_id, {"deployed", "rolled_back", "failed"})
            release = (await client.get(approved.json()["links"]["release"], headers=OWNER)).json()
            listed = (await client.get("/releases", headers=OWNER)).json()["releases"]
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    states = [data["state"] for name, data in events if name == "state"]
    assert states[-1] == "proposed" and events[-1] == ("end", {"state": "proposed"}), err.decode()[-3000:]
    lines = [data["line"] for name, data in events if name == "progress"]
    assert any(line.startswith("running: agent in container") for line in lines)
    assert any("tests passed" in line for line in lines)
    assert task["state"] == "proposed" and task["result"]["files_changed"] == ["bot/ledger.py", "tests/test_ledger.py"]
    assert task["result"]["tests"]["passed"] and task["result"]["usage"]["requests"] >= 5
    assert approved.status_code == 202, approved.text  # answered at once; the release runs in the background
    assert approved.json()["state"] == "approved" and approved.json()["task_id"] == task_id
    assert again.status_code == 409  # merged once, never twice
    assert after["state"] == "deployed"
    assert [s["state"] for s in after["timings"]["states"]][-4:] == ["approved", "merging", "deploying", "deployed"]
    # The default `none` deployer: merged, and the release says nothing was deployed, checked or watched.
    assert release["state"] == "deployed" and release["merge_sha"] and release["task_id"] == task_id
    assert release["detail"] == NOTHING_DEPLOYED and release["watch_until"] is None
    assert [r["id"] for r in listed] == [release["id"]]
    assert [r["id"] for r in after["releases"]] == [release["id"]]  # the task links its release
    assert NO_KEY_LINE.format("fix-balance.yaml") in err.decode().splitlines()
    # uvicorn shuts the lifespan down on SIGTERM, then re-raises the signal, so -15 is its clean exit.
    assert proc.returncode in (0, -15), err.decode()[-3000:]


def _cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_", "TELEGRAM_"))}
    env.update(AGENT_RUNNER_HOME=str(home), **extra)
    return env


NO_KEY_LINE = ("[agent-runner] no ANTHROPIC_API_KEY: a scripted model plays the agent ({}); set ANTHROPIC_API_KEY "
               "to use the real model")


async def _serve_until_healthy(env: dict[str, str], port: int, *args: str) -> tuple[int, str]:
    """Start `serve` (with `args`), wait for /health, stop it: the status /health answered and all of stderr."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "runner.cli", "serve", *args, env=env,
                                                stderr=asyncio.subprocess.PIPE)
    status = 0
    try:
        async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(90):
            while proc.returncode is None:
                with contextlib.suppress(httpx.TransportError):
                    status = (await client.get(f"http://127.0.0.1:{port}/health")).status_code
                    break
                await asyncio.sleep(0.1)
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    return status, err.decode()


@pytest.mark.docker
@pytest.mark.parametrize(("args", "played"), [((), "fix-balance.yaml"),
                                              (("--scenario", "health-users"), "health-users.yaml")])
async def test_serve_without_a_key_plays_a_scripted_model_and_says_so_in_one_line(
        tmp_path: Path, args: tuple[str, ...], played: str) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    port = free_port()
    status, err = await _serve_until_healthy(
        _cli_env(tmp_path / "home", AGENT_API_TOKEN=TOKEN, AGENT_RUNNER_REPO=str(repo), AGENT_RUNNER_PORT=str(port)),
        port, *args)
    assert status == 200, err[-3000:]  # it started, where it used to exit 2
    said = [line for line in err.splitlines() if "scripted model" in line or "ANTHROPIC_API_KEY" in line]
    assert said == [NO_KEY_LINE.format(played)], err[-3000:]  # one plain line, naming what plays and the fix


@pytest.mark.docker
async def test_create_app_without_a_key_or_a_scenario_opens_on_the_embedded_default(tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    said: list[str] = []
    app = create_app(owner_settings(tmp_path / "home", AGENT_RUNNER_REPO=str(repo)), deployer=create_deployer("none"),
                     say=said.append)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        health = await client.get("/health")
    assert health.status_code == 200  # the lifespan opened: it used to stop on "no scripted scenario"
    assert NO_KEY_LINE.format("fix-balance.yaml").removeprefix("[agent-runner] ") in said, said


def test_scripted_notice_with_a_key_says_the_scenario_overrides_the_real_model(tmp_path: Path) -> None:
    from runner.service.runtime import DEFAULT_SCENARIO, scripted_notice

    keyed = owner_settings(tmp_path / "home", ANTHROPIC_API_KEY="sk-real")
    assert scripted_notice(keyed, DEFAULT_SCENARIO) == (
        "--scenario: a scripted model plays the agent (fix-balance.yaml), not the model at https://api.anthropic.com; "
        "start without --scenario to use it")
    assert DEFAULT_SCENARIO.is_file()  # the embedded default ships with the package


async def test_serve_with_a_broken_scenario_exits_2_with_the_line_that_names_it(tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    broken = tmp_path / "broken.yaml"
    broken.write_text("turns: 3\n")
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "runner.cli", "serve", "--scenario", str(broken)], capture_output=True,
        text=True, timeout=120, env=_cli_env(tmp_path / "home", AGENT_API_TOKEN=TOKEN, AGENT_RUNNER_REPO=str(repo)))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"agent-runner: scenario {broken}: 'turns' must be a list of turns"]


def test_serve_help_lists_scenario_and_every_variable_settings_reads() -> None:
    from runner.config import environment_keys

    done = subprocess.run([sys.executable, "-m", "runner.cli", "serve", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    assert "--scenario FILE" in done.stdout
    keys = environment_keys()
    assert {"ANTHROPIC_API_KEY", "AGENT_API_TOKEN", "AGENT_RUNNER_REPO", "TELEGRAM_BOT_TOKEN"} <= set(keys)
    text = " ".join(done.stdout.split())
    missing = [key for key in keys if key not in text]
    assert not missing, missing


async def test_create_app_refuses_to_start_without_a_repository(tmp_path: Path) -> None:
    from runner.errors import ConfigError

    with pytest.raises(ConfigError, match="AGENT_RUNNER_REPO"):
        create_app(owner_settings(tmp_path / "home"), deployer=create_deployer("none"))


@pytest.mark.docker
async def test_serve_killed_mid_task_fails_it_reaps_its_container_and_resumes_the_queue(
        tmp_path: Path, docker_client: Any) -> None:
    from runner.sandbox.base import LABEL_TASK
    from runner.scripted_model import Scenario, ToolUseBlock, serve_scripted_model

    repo = await create_sample_repo(tmp_path / "origin")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_"))}
    env.update(AGENT_RUNNER_HOME=str(tmp_path / "home"), AGENT_RUNNER_REPO=str(repo), AGENT_RUNNER_PORT=str(port),
               AGENT_API_TOKEN=TOKEN, ANTHROPIC_API_KEY="scripted-anything", AGENT_RUNNER_MAX_SANDBOXES="1")
    stall = Scenario.of([ToolUseBlock("Bash", {"command": "sleep 300"})])
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with serve_scripted_model(stall) as model, \
                serve_process({**env, "ANTHROPIC_BASE_URL": model.base_url}, port) as proc:
            body = {"prompt": "average_spend crashes; fix it", "kind": "fix", "dry_run": True}
            first = (await client.post("/agent/command", headers=OWNER, json=body)).json()["task_id"]
            second = (await client.post("/agent/command", headers=OWNER, json=body)).json()["task_id"]
            async with asyncio.timeout(120):
                while (await client.get(f"/tasks/{first}", headers=OWNER)).json()["state"] != "running":
                    await asyncio.sleep(0.2)
            assert (await client.get(f"/tasks/{second}", headers=OWNER)).json()["state"] == "queued"
            proc.kill()  # SIGKILL: no shutdown code runs, the container and the rows stay as they were
            await proc.wait()
        assert docker_client.containers.list(filters={"label": f"{LABEL_TASK}={first}"})

        async with serve_scripted_model(Scenario.from_file(FIX_SCENARIO)) as model, \
                serve_process({**env, "ANTHROPIC_BASE_URL": model.base_url}, port):
            interrupted = (await client.get(f"/tasks/{first}", headers=OWNER)).json()
            assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_TASK}={first}"}) == []
            resumed = await _wait_state(client, second, {"diff_ready", "failed"}, timeout=240)
            tasks = (await client.get("/tasks", headers=OWNER)).json()["tasks"]
    assert interrupted["state"] == "failed" and "supervisor stopped" in interrupted["reason"]
    assert resumed["state"] == "diff_ready", resumed["reason"]
    assert resumed["result"]["files_changed"] == ["bot/ledger.py", "tests/test_ledger.py"]
    assert sorted(t["id"] for t in tasks) == sorted([first, second])  # none lost, none doubled


async def test_create_app_refuses_a_local_repository_that_does_not_exist(tmp_path: Path) -> None:
    from runner.errors import ConfigError

    settings = owner_settings(tmp_path / "home", AGENT_RUNNER_REPO=str(tmp_path / "missing.git"))
    with pytest.raises(ConfigError, match="does not exist"):
        create_app(settings, deployer=create_deployer("none"))


@pytest.mark.docker
async def test_serve_stopped_mid_task_fails_it_and_removes_its_container(tmp_path: Path, docker_client: Any) -> None:
    from runner.sandbox.base import LABEL_TASK
    from runner.scripted_model import Scenario, ToolUseBlock, serve_scripted_model

    repo = await create_sample_repo(tmp_path / "origin")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_"))}
    env.update(AGENT_RUNNER_HOME=str(tmp_path / "home"), AGENT_RUNNER_REPO=str(repo), AGENT_RUNNER_PORT=str(port),
               AGENT_API_TOKEN=TOKEN, ANTHROPIC_API_KEY="scripted-anything")
    stall = Scenario.of([ToolUseBlock("Bash", {"command": "sleep 300"})])
    async with serve_scripted_model(stall) as model, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        async with serve_process({**env, "ANTHROPIC_BASE_URL": model.base_url}, port) as proc:
            body = {"prompt": "fix it", "kind": "fix", "dry_run": True}
            task_id = (await client.post("/agent/command", headers=OWNER, json=body)).json()["task_id"]
            async with asyncio.timeout(120):
                while (await client.get(f"/tasks/{task_id}", headers=OWNER)).json()["state"] != "running":
                    await asyncio.sleep(0.2)
            proc.terminate()  # SIGTERM: the lifespan stops the scheduler, which stops the task
            assert await asyncio.wait_for(proc.wait(), 60) in (0, -15)
    async with Store(tmp_path / "home" / "state.db") as store:
        task = await store.get_task(task_id)
    assert task.state.value == "failed" and task.reason == "the supervisor shut down while the task was running"
    assert docker_client.containers.list(all=True, filters={"label": f"{LABEL_TASK}={task_id}"}) == []


# A child process: this one has imported every front end already.
BUILD_WITHOUT_CHAT = """
import sys
from runner.app import chat_front_end, create_app
from runner.config import Settings
from runner.deploy import create_deployer

settings = Settings.from_env({"AGENT_RUNNER_HOME": sys.argv[1], "AGENT_RUNNER_REPO": sys.argv[2]})
create_app(settings, deployer=create_deployer("none"))
assert chat_front_end(settings) is None
print(sorted(m for m in sys.modules if m.split(".")[0] == "aiogram" or m.startswith("runner.telegram")))
"""


async def test_create_app_with_telegram_off_never_imports_aiogram(tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", BUILD_WITHOUT_CHAT, str(tmp_path / "home"), str(repo)],
        capture_output=True, text=True, timeout=120, env=_cli_env(tmp_path / "home"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"], done.stdout  # nothing of the chat after building the app without it
    # The list would not be empty had the chat been built (checked here, in this process, where aiogram may be
    # loaded already: importing it in the child as well costs ~10 s of CPU).
    from runner.app import chat_front_end
    from runner.config import Settings

    chat = Settings.from_env({"AGENT_RUNNER_HOME": str(tmp_path / "home"), "AGENT_RUNNER_REPO": str(repo),
                              "TELEGRAM_BOT_TOKEN": "1:x", "OWNER_TELEGRAM_ID": "7"})
    front = chat_front_end(chat)
    # What a built chat is: a runner.telegram module, which the child's list names whenever it was imported.
    assert front is not None and front.__name__ == "runner.telegram.wiring"


async def test_serve_refuses_a_repository_folder_that_is_not_git_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-repo"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"AGENT_RUNNER_REPO '.*not-a-repo' is not a git repository; "):
        create_app(owner_settings(tmp_path / "home", AGENT_RUNNER_REPO=str(folder)), deployer=create_deployer("none"))
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "runner.cli", "serve", "--scenario", str(FIX_SCENARIO)],
        capture_output=True, text=True, timeout=120,
        env=_cli_env(tmp_path / "home", AGENT_API_TOKEN=TOKEN, AGENT_RUNNER_REPO=str(folder)))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("agent-runner: AGENT_RUNNER_REPO ") and "is not a git repository" in line



# ------------------------------------------------------------------------------------ validated at start

GITHUB_TOKEN_VALUE = "ghp_fake-start-up-token"


def _github_settings(home: Path, token: str, repository: str = "octo/bot") -> Any:
    return owner_settings(home, GITHUB_TOKEN=token, GITHUB_REPOSITORY=repository,
                          GITHUB_API_URL="https://api.github.test")


async def test_check_forge_names_a_refused_github_token_and_passes_a_good_one(tmp_path: Path) -> None:
    fake = FakeGitHub(GITHUB_TOKEN_VALUE)
    transport = httpx.ASGITransport(app=fake.app)
    with pytest.raises(ConfigError) as caught:
        await check_forge(_github_settings(tmp_path, "ghp_revoked"), None, transport=transport)
    assert str(caught.value) == ("GITHUB_TOKEN is refused by GitHub: 401 Bad credentials; the token is invalid, "
                                 "expired or revoked: make a new one (contents and pull requests: write) and set "
                                 "GITHUB_TOKEN")
    await check_forge(_github_settings(tmp_path, GITHUB_TOKEN_VALUE), None, transport=transport)
    assert [(r.method, r.path, r.authorized) for r in fake.requests] == [
        ("GET", "/repos/octo/bot", False), ("GET", "/repos/octo/bot", True)]  # one request each, the token's


async def test_check_forge_names_a_repository_the_token_cannot_find(tmp_path: Path) -> None:
    transport = httpx.ASGITransport(app=FakeGitHub(GITHUB_TOKEN_VALUE).app)
    with pytest.raises(ConfigError) as caught:
        await check_forge(_github_settings(tmp_path, GITHUB_TOKEN_VALUE, "octo/bott"), None, transport=transport)
    assert str(caught.value).startswith("GITHUB_REPOSITORY octo/bott is not found with GITHUB_TOKEN: 404 Not Found; "
                                        "check the owner/name")


async def test_check_forge_starts_anyway_when_github_does_not_answer(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """An outage is not the token's fault: a supervisor restarted mid-release must come up to finish (or roll
    back) it, so a 503 at start is a warning line, not a refusal to start."""
    seen: list[str] = []

    def down(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(503, json={"message": "Service Unavailable"})

    with caplog.at_level("WARNING", logger="agent_runner.runtime"):
        await check_forge(_github_settings(tmp_path, GITHUB_TOKEN_VALUE), None,
                          transport=httpx.MockTransport(down))
    assert seen == ["/repos/octo/bot"]
    assert "did not answer the start-up check" in caplog.text and "starting anyway" in caplog.text


async def test_check_forge_refuses_a_git_url_without_a_token_and_a_missing_bare_repository(tmp_path: Path) -> None:
    settings = owner_settings(tmp_path / "home")
    with pytest.raises(ConfigError) as caught:
        await check_forge(settings, "https://github.com/octo/bot.git")
    assert str(caught.value).startswith("AGENT_RUNNER_REPO 'https://github.com/octo/bot.git' is a git URL, but "
                                        "GITHUB_TOKEN is not set: set GITHUB_TOKEN")
    with pytest.raises(ConfigError, match="the path does not exist"):
        await check_forge(settings, str(tmp_path / "missing.git"))
    await check_forge(settings, str(await create_sample_repo(tmp_path / "origin")))  # a bare repository: fine


def _serve_refused(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runner.cli", "serve"], capture_output=True, text=True,
                          timeout=120, env=env)


async def test_serve_refuses_a_github_token_github_refuses_in_one_line_before_it_listens(tmp_path: Path) -> None:
    fake = FakeGitHub(GITHUB_TOKEN_VALUE)
    async with serve_app(fake.app) as api:
        env = _cli_env(tmp_path / "home", AGENT_API_TOKEN=TOKEN, GITHUB_TOKEN="ghp_revoked",
                       GITHUB_REPOSITORY="octo/bot", GITHUB_API_URL=api, AGENT_RUNNER_PORT=str(free_port()))
        done = await asyncio.to_thread(_serve_refused, env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "agent-runner: GITHUB_TOKEN is refused by GitHub: 401 Bad credentials; the token is invalid, expired or "
        "revoked: make a new one (contents and pull requests: write) and set GITHUB_TOKEN"]
    assert [r.path for r in fake.requests] == ["/repos/octo/bot"]  # refused at its first answer, nothing after


@pytest.mark.docker
async def test_serve_starts_on_github_with_a_token_github_accepts(tmp_path: Path) -> None:
    fake = FakeGitHub(GITHUB_TOKEN_VALUE)
    port = free_port()
    async with serve_app(fake.app) as api:
        status, err = await _serve_until_healthy(
            _cli_env(tmp_path / "home", AGENT_API_TOKEN=TOKEN, GITHUB_TOKEN=GITHUB_TOKEN_VALUE,
                     GITHUB_REPOSITORY="octo/bot", GITHUB_API_URL=api, AGENT_RUNNER_PORT=str(port)), port)
    assert status == 200, err[-3000:]
    assert fake.requests[0].path == "/repos/octo/bot" and fake.requests[0].authorized


@pytest.mark.parametrize(("deploy", "line"), [
    ({"AGENT_RUNNER_DEPLOYER": "command", "AGENT_RUNNER_DEPLOY_COMMAND": "restart-the-bott now"},
     "agent-runner: AGENT_RUNNER_DEPLOY_COMMAND runs 'restart-the-bott', which is not on PATH; install it, or give "
     "its full path"),
    pytest.param({"AGENT_RUNNER_DEPLOYER": "docker", "AGENT_RUNNER_DEPLOY_SERVICE": "bot",
                  "AGENT_RUNNER_DEPLOY_BASE_IMAGE": "agent-runner/no-such-base:1"},
                 "agent-runner: AGENT_RUNNER_DEPLOY_BASE_IMAGE 'agent-runner/no-such-base:1' is not in the Docker "
                 "engine, and builds never pull: `docker pull agent-runner/no-such-base:1` first, or name an image "
                 "`docker images` lists", marks=pytest.mark.docker),
    ({"AGENT_RUNNER_DEPLOYER": "command", "AGENT_RUNNER_DEPLOY_COMMAND": "true", "AGENT_RUNNER_HEALTH_URL": "http://"},
     "agent-runner: bad configuration: AGENT_RUNNER_HEALTH_URL must be an http(s) URL with a host, like "
     "http://127.0.0.1:8000/health, got 'http://'"),
])
async def test_serve_refuses_a_deployer_it_cannot_run_in_one_line(tmp_path: Path, deploy: dict[str, str],
                                                                   line: str) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    env = _cli_env(tmp_path / "home", AGENT_API_TOKEN=TOKEN, AGENT_RUNNER_REPO=str(repo),
                   AGENT_RUNNER_PORT=str(free_port()), **deploy)
    done = await asyncio.to_thread(_serve_refused, env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [line]


@pytest.mark.docker
async def test_serve_starts_with_a_deploy_command_it_finds_and_a_well_formed_health_url(tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    port = free_port()
    status, err = await _serve_until_healthy(
        _cli_env(tmp_path / "home", AGENT_API_TOKEN=TOKEN, AGENT_RUNNER_REPO=str(repo), AGENT_RUNNER_PORT=str(port),
                 AGENT_RUNNER_DEPLOYER="command", AGENT_RUNNER_DEPLOY_COMMAND="git --version",
                 AGENT_RUNNER_HEALTH_URL="http://127.0.0.1:9/health"), port)
    assert status == 200, err[-3000:]
