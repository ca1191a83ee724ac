"""The task page in the running service: a Grafana alert's task, its Telegram message's signed link, the page
that link opens, and the links that do not open it."""

from __future__ import annotations

import contextlib
import html
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette

import policy
from runner.app import GRAFANA_TIMESTAMP_HEADER, create_app, page_link
from runner.config import Settings
from runner.grafana import ROUTE_PATH
from runner.links import task_link
from runner.model_proxy import ModelProxy
from runner.sandbox.docker import DockerSandbox
from runner.service.runtime import Runtime
from runner.store import Store
from runner.supervisor import Deps
from runner.unix_server import serve_tcp
from tests.fakes.grafana import FakeGrafana, GrafanaAlertSpec
from tests.fakes.telegram import FakeTelegram, serve

OWNER_TOKEN = "owner-token-for-page-tests"
GRAFANA_TOKEN = "grafana-token-for-page-tests"
GRAFANA_HMAC = "grafana-hmac-for-page-tests"
PUBLIC = "https://agent.example"
OWNER = 777
LINK = re.compile(r'<a href="([^"]+)">Task page</a>')


def _settings(home: Path, **env: str) -> Settings:
    return Settings.from_env({"AGENT_RUNNER_HOME": str(home), "AGENT_API_TOKEN": OWNER_TOKEN,
                              "AGENT_RUNNER_REPO": str(home / "missing.git"), "AGENT_RUNNER_PUBLIC_URL": PUBLIC,
                              "GRAFANA_WEBHOOK_TOKEN": GRAFANA_TOKEN, "GRAFANA_WEBHOOK_HMAC_SECRET": GRAFANA_HMAC,
                              **env})


def _app(settings: Settings) -> Starlette:
    """create_app as `serve` builds it, on backends whose tasks fail before they need a container (the
    repository does not exist): the task has states, a note of the alert that started it, and an end."""

    @contextlib.asynccontextmanager
    async def open_backends() -> AsyncIterator[Runtime]:
        async with Store(settings.home / "state.db") as store, DockerSandbox() as sandbox, \
                ModelProxy("http://127.0.0.1:9", "unused") as proxy:
            deps = Deps(home=settings.home, store=store, sandbox=sandbox, proxy=proxy, policy=policy.load_default(),
                        image=settings.sandbox_image)
            yield Runtime(settings, deps, lambda _line: None)

    return create_app(settings, runtime=open_backends, say=lambda _line: None)


def _alert() -> GrafanaAlertSpec:
    return GrafanaAlertSpec(labels={"alertname": "PythonTraceback", "service": "bot", "container": "bot-1"},
                            annotations={"summary": "Python traceback in bot (bot-1)"}, values={"B": 2.0})


def _served(link: str, base: str) -> str:
    """The link the owner got, aimed at the server under test instead of the public address."""
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC, link
    return f"{base}{parts.path}?{parts.query}"


async def test_a_grafana_alerts_task_message_links_to_its_page_and_only_that_link_opens_it(tmp_path: Path) -> None:
    fake = FakeTelegram()
    grafana = FakeGrafana(credentials=GRAFANA_TOKEN, hmac_secret=GRAFANA_HMAC,
                          timestamp_header=GRAFANA_TIMESTAMP_HEADER)
    owner = {"Authorization": f"Bearer {OWNER_TOKEN}"}
    async with serve(fake) as telegram:
        settings = _settings(tmp_path, TELEGRAM_BOT_TOKEN=fake.token, TELEGRAM_API_BASE=telegram,
                             OWNER_TELEGRAM_ID=str(OWNER))
        # The chat's front end (aiogram) is imported at start-up: seconds on two shared cores.
        async with serve_tcp(_app(settings), lifespan="on", timeout=120) as url, \
                httpx.AsyncClient(base_url=url, timeout=30) as client:
            admitted = await grafana.send(client, ROUTE_PATH, [_alert()], now=time.time())
            assert admitted.status_code == 202, admitted.text
            task_id = admitted.json()["alerts"][0]["task_id"]

            def linked() -> list[str]:
                return [m for c in fake.sent() if c.method in ("sendMessage", "editMessageText")
                        for m in LINK.findall(str(c.params.get("text", "")))]

            await fake.wait_for(lambda: bool(linked()), timeout=60)
            link = html.unescape(linked()[-1])
            page = await client.get(_served(link, url))
            other = (await client.post("/agent/command", headers=owner,
                                       json={"prompt": "another task", "dry_run": True})).json()["task_id"]
            key = settings.task_link_key()
            assert key is not None
            expired = await client.get(_served(task_link(key, task_id, now=time.time() - 8 * 86400,
                                                         base_url=PUBLIC), url))
            forged = await client.get(_served(link[:-6] + "000000", url))
            swapped = await client.get(_served(link.replace(task_id, other), url))
            bare = await client.get(f"/tasks/{task_id}/page")
            unsigned_key = await client.get(_served(task_link(b"not-the-servers-key-0123456789", task_id,
                                                              now=time.time(), base_url=PUBLIC), url))
    async with Store(tmp_path / "state.db") as store:
        refused = await store.audit_log(None, event="refused")
        task = await store.get_task(task_id)
    assert link.startswith(f"{PUBLIC}/tasks/{task_id}/page?exp=") and "&sig=" in link
    assert OWNER_TOKEN not in link and GRAFANA_TOKEN not in link  # no bearer token in a URL
    assert page.status_code == 200, page.text
    text = html.unescape(re.sub(r"<[^>]+>", " ", page.text))
    assert task_id in text and task.state.value in text and "auto_fix" in text  # its states and its alert
    assert "PythonTraceback" in text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert [r.status_code for r in (expired, forged, swapped, bare, unsigned_key)] == [403] * 5
    assert all("PythonTraceback" not in r.text for r in (expired, forged, swapped, bare, unsigned_key))
    whys = [r.detail["why"] for r in refused if r.detail.get("reason") == "task_link"]
    assert whys == ["the link has expired", "the link's signature does not match this task",
                    "the link's signature does not match this task", "the link has no signature",
                    "the link's signature does not match this task"]


def test_page_link_needs_a_public_url_and_a_key(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    link = page_link(settings, "t-1", now=1000.0)
    assert link is not None and link.startswith(f"{PUBLIC}/tasks/t-1/page?exp=")
    no_url = Settings.from_env({"AGENT_RUNNER_HOME": str(tmp_path), "AGENT_API_TOKEN": OWNER_TOKEN})
    no_key = Settings.from_env({"AGENT_RUNNER_HOME": str(tmp_path), "AGENT_RUNNER_PUBLIC_URL": PUBLIC})
    assert page_link(no_url, "t-1", now=1000.0) is None and page_link(no_key, "t-1", now=1000.0) is None
