"""End to end on loopback: Loki stand-in → its ruler → the real Alertmanager → the supervisor → one fix task.

Alertmanager is the real program (Debian's `prometheus-alertmanager`; `make alertmanager` installs it), with
the route and receiver of monitoring/alertmanager.yml pointed at this test's supervisor. The ruler evaluates
the shipped rule from monitoring/loki-rules.yaml. The supervisor is the real service; its tasks fail at
provisioning (no repository on disk), which is after the point this test is about.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.types import ASGIApp

import policy
from policy.model import RateLimits
from runner.alerts.tracebacks import extract_tracebacks
from runner.app import create_app
from runner.config import Settings
from runner.model_proxy import ModelProxy
from runner.sandbox.docker import DockerSandbox
from runner.service.runtime import Runtime
from runner.store import Store
from runner.supervisor import Deps
from runner.unix_server import serve_tcp
from tests.fakes.loki import FakeLoki, Rule
from tests.fakes.net import free_port

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
MONITORING = Path(__file__).parents[1] / "monitoring"
SECRET = "e2e-alert-secret"
TOKEN = "e2e-owner-token"

pytestmark = pytest.mark.alertmanager


def _error_lines(line: int, user: int) -> list[str]:
    return ["ERROR bot.app: handler failed",
            "Traceback (most recent call last):",
            '  File "/app/bot/app.py", line 31, in handle_balance',
            "    return ledger.balance(user_id)",
            f'  File "/app/bot/ledger.py", line {line}, in balance',
            "    return self.totals[user_id] / self.counts[user_id]",
            f"ZeroDivisionError: division by zero (user {user})"]


@contextlib.asynccontextmanager
async def _uvicorn(app: ASGIApp) -> AsyncIterator[str]:
    async with serve_tcp(app, lifespan="auto") as url:
        yield url


@contextlib.contextmanager
def _alertmanager(tmp_path: Path, webhook_url: str) -> Iterator[str]:
    """The real Alertmanager with the shipped route, its receiver aimed at `webhook_url`, on loopback."""
    if not Path(ALERTMANAGER).exists():
        pytest.fail(f"{ALERTMANAGER} is missing: run `make alertmanager` (apt-get install prometheus-alertmanager)",
                    pytrace=False)
    config = yaml.safe_load((MONITORING / "alertmanager.yml").read_text())
    secret_file = tmp_path / "alert-webhook-secret"
    secret_file.write_text(SECRET + "\n")
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url
            hook["http_config"]["authorization"] = {"type": "Bearer", "credentials_file": str(secret_file)}
    config_file = tmp_path / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "alertmanager.log").open("wb")
    process = subprocess.Popen(
        [ALERTMANAGER, f"--config.file={config_file}", f"--storage.path={tmp_path / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=debug"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "alertmanager.log").read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=1, trust_env=False).status_code == 200:
                    break
            assert time.monotonic() < deadline, "Alertmanager did not become ready"
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _service(home: Path, loki_url: str) -> Any:
    settings = Settings.from_env({"AGENT_RUNNER_HOME": str(home), "AGENT_API_TOKEN": TOKEN,
                                  "ALERT_WEBHOOK_SECRET": SECRET, "LOKI_URL": loki_url,
                                  "AGENT_RUNNER_REPO": str(home / "missing.git"), "AGENT_RUNNER_REPO_ROOTS": "/app"})

    @contextlib.asynccontextmanager
    async def backends() -> AsyncIterator[Runtime]:
        active = dataclasses.replace(policy.load_default(), rate_limits=RateLimits(autofixes_per_hour=100))
        async with Store(home / "state.db") as store, DockerSandbox() as sandbox, \
                ModelProxy("http://127.0.0.1:9", "unused") as proxy:
            yield Runtime(settings, Deps(home=home, store=store, sandbox=sandbox, proxy=proxy, policy=active,
                                         image=settings.sandbox_image), lambda _l: None)

    return create_app(settings, runtime=backends, say=lambda _l: None)


async def _until(check: Any, timeout: float, what: str) -> Any:
    try:
        async with asyncio.timeout(timeout):
            while not (value := await check()):
                await asyncio.sleep(0.1)
            return value
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_alertmanager_delivers_a_loki_alert_and_a_storm_stays_one_task(tmp_path: Path) -> None:
    rules = [Rule.from_yaml(r) for g in yaml.safe_load((MONITORING / "loki-rules.yaml").read_text())["groups"]
             for r in g["rules"] if "alert" in r]
    fake = FakeLoki()
    async with _uvicorn(fake.app) as loki_url:
        app = _service(tmp_path / "home", loki_url)
        async with _uvicorn(app) as supervisor_url, httpx.AsyncClient(base_url=loki_url, trust_env=False) as loki:
            store = app.state.service.store
            with _alertmanager(tmp_path, f"{supervisor_url}/agent/auto-fix") as am_url:

                async def push(container: str, lines: list[str]) -> None:
                    now = time.time_ns()
                    body = {"streams": [{"stream": {"service": "bot", "container": container},
                                         "values": [[str(now + i), line] for i, line in enumerate(lines)]}]}
                    assert (await loki.post("/loki/api/v1/push", json=body)).status_code == 204

                async def ruler() -> int:
                    alerts = [a for rule in rules for a in fake.evaluate(rule)]
                    await fake.notify(am_url, alerts)
                    return len(alerts)

                started = time.monotonic()
                await push("bot-0", _error_lines(line=42, user=1001))
                assert await ruler() == 1
                tasks = await _until(lambda: store.list_tasks(), 30, "the first task")
                first_latency = time.monotonic() - started

                for i in range(1, 201):  # 200 more identical errors, other containers, line numbers, users
                    await push(f"bot-{i}", _error_lines(line=40 + i % 5, user=2000 + i))
                assert await ruler() == 201

                async def storm_seen() -> bool:  # the supervisor asked Loki about every container
                    asked = {q["query"] for q in fake.queries}
                    return all(any(f'container="bot-{i}"' in q for q in asked) for i in (1, 100, 200))

                await _until(storm_seen, 60, "the storm's webhook")
                storm_latency = time.monotonic() - started
                await asyncio.sleep(1.5)  # room for any late or repeated delivery
                after = await store.list_tasks()
                created = await store.audit_log(event="auto_fix")
                answers = [e.detail for e in await store.audit_log() if e.event in ("repeat", "refused")]
    expected = extract_tracebacks("\n".join(_error_lines(line=42, user=1001)), repo_roots=["/app"])[0]
    [task] = tasks
    assert [t.id for t in after] == [task.id], "200 more identical errors made a second task"
    assert task.kind == "fix" and task.source == "alertmanager" and task.fingerprint == expected.fingerprint
    assert task.requested_by == "alertmanager:agent-runner"
    assert "ZeroDivisionError" in task.prompt and expected.fingerprint in task.prompt
    assert "raised in bot/ledger.py, function balance" in task.prompt
    assert [e.task_id for e in created] == [task.id] and created[0].detail["labels"]["container"] == "bot-0"
    # The storm was answered as the same bug: counted on the open task, or held off by its cooldown.
    assert answers and all(d.get("fingerprint") == expected.fingerprint for d in answers)
    print(f"\nfirst task {first_latency:.2f}s after the push; storm of 201 alerts handled by {storm_latency:.2f}s")
