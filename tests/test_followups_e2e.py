"""The owner's follow-ups end to end, through the real service, the real CLI in a real sandbox and a scripted model:
from the API, a Telegram reply and a signed GitHub PR comment, each ending with a second commit on the same PR
(a fast-forward of its head), the agent's earlier session resumed, and an approval at the old head refused.

One service for the module (fake GitHub over its real REST shapes and git's smart HTTP, fake Telegram over the
Bot API, the service's own HTTP on loopback) starts one first task per test side by side; each test takes its
task at its PR and follows up through one front end.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

import policy
from runner.app import create_app
from runner.config import Settings
from runner.errors import ForgeConflict
from runner.forge.github import GitHubForge
from runner.gitops import git_env
from runner.model_proxy import ModelProxy
from runner.models import FollowUp, TaskState
from runner.sample import create_sample_repo
from runner.sandbox.docker import DockerSandbox
from runner.scripted_model import Scenario, serve_scripted_model
from runner.service import operations
from runner.service.operations import Caller
from runner.service.runtime import Runtime
from runner.service.state import Service
from runner.store import Store, TaskRecord
from runner.supervisor import Deps
from runner.unix_server import serve_tcp
from tests.fakes.github import FakeGitHub, GitHttpServer
from tests.fakes.github_webhooks import add_comment, comment_event, deliver
from tests.fakes.telegram import BOT_ID, FakeTelegram, serve

pytestmark = [pytest.mark.docker, pytest.mark.asyncio(loop_scope="module")]

FOLLOW_UP = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "follow-up.yaml"
TOKEN = "ghp_fake-token-of-the-supervisor"
API_TOKEN = "owner-api-token"
HOOK_SECRET = "github-webhook-secret"
OWNER_TG = 777
ASK = "greet with an exclamation mark"
PROMPT = "fix average_spend for users without spending, and add a greet(name) helper"


@dataclass
class Stack:
    url: str
    service: Service
    github: FakeGitHub
    telegram: FakeTelegram
    bare: Path
    task: TaskRecord
    """The first task, proposed: its PR at its first head."""

    @property
    def number(self) -> int:
        assert self.task.result is not None and self.task.result.pr is not None
        return self.task.result.pr.number

    @property
    def first_head(self) -> str:
        assert self.task.result is not None and self.task.result.pr is not None
        return self.task.result.pr.head_sha

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(self.bare), *args], env=git_env(), capture_output=True,
                              text=True, check=True).stdout.strip()


async def until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not await _value(predicate()):
            await asyncio.sleep(0.5)


async def _value(value: object) -> object:
    return await value if asyncio.iscoroutine(value) else value


@dataclass
class Service_:
    url: str
    service: Service
    github: FakeGitHub
    telegram: FakeTelegram
    bare: Path
    first_tasks: list[str]
    """One first task per test, all submitted at start-up so that they run side by side."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service_]:
    tmp_path = tmp_path_factory.mktemp("followups")
    bare = await create_sample_repo(tmp_path / "served")
    home = tmp_path / "home"
    with GitHttpServer(bare.parent, TOKEN).running() as git_server:
        github = FakeGitHub(TOKEN, "octo/bot", git_dir=bare)
        telegram = FakeTelegram()
        async with serve(telegram) as telegram_url, serve_scripted_model(Scenario.from_file(FOLLOW_UP)) as model:
            settings = Settings.from_env({
                "AGENT_RUNNER_HOME": str(home), "AGENT_RUNNER_REPO": git_server.url("sample-bot.git"),
                "AGENT_API_TOKEN": API_TOKEN, "GITHUB_WEBHOOK_SECRET": HOOK_SECRET, "GITHUB_OWNER_LOGIN": "octo",
                "TELEGRAM_BOT_TOKEN": telegram.token, "TELEGRAM_API_BASE": telegram_url,
                "OWNER_TELEGRAM_ID": str(OWNER_TG)})

            @contextlib.asynccontextmanager
            async def runtime() -> AsyncIterator[Runtime]:
                async with Store(home / "state.db") as store, DockerSandbox() as sandbox, \
                        ModelProxy(model.base_url, "scripted") as proxy, \
                        GitHubForge("octo/bot", TOKEN, api_url="https://api.github.test",
                                    transport=httpx.ASGITransport(app=github.app),
                                    git_url=git_server.url("sample-bot.git")) as forge:
                    yield Runtime(settings, Deps(home=home, store=store, sandbox=sandbox, proxy=proxy,
                                                 policy=policy.load_default(), image=settings.sandbox_image,
                                                 forge=forge), lambda _line: None)

            app = create_app(settings, runtime=runtime)
            async with serve_tcp(app, lifespan="on", timeout=180) as url:  # start-up on shared cores
                firsts = []
                async with httpx.AsyncClient(base_url=url, headers=_auth(), timeout=30) as client:
                    # Words that differ early: two tasks with the same words, side by side, would pick the same
                    # branch name (runner.prbody.branch_name only knows the branches that exist already).
                    for front in ("api", "telegram", "github"):
                        answer = await client.post("/agent/command", json={"prompt": f"{front}: {PROMPT}"})
                        assert answer.status_code == 202, answer.text
                        firsts.append(answer.json()["task_id"])
                yield Service_(url, app.state.service, github, telegram, bare, firsts)


@pytest_asyncio.fixture(loop_scope="module")
async def stack(running: Service_) -> Stack:
    """The service, and a first task of its own at its PR (one each test follows up)."""
    task_id = running.first_tasks.pop(0)
    service = running.service

    async def ended() -> bool:
        task = await service.store.get_task(task_id)
        return task.state.terminal or task.state is TaskState.PROPOSED

    await until(ended, 400, "the first task's PR")
    task = await service.store.get_task(task_id)
    assert task.state is TaskState.PROPOSED, task.reason
    return Stack(running.url, service, running.github, running.telegram, running.bare, task)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}


async def _ended(stack: Stack, follow_id: int) -> FollowUp:
    assert stack.service.followups is not None
    return await asyncio.wait_for(stack.service.followups.wait(follow_id), 300)


async def _second_commit_landed(stack: Stack, follow: FollowUp) -> str:
    """What every front end must end with: the follow-up done, a second commit on the PR's branch whose parent
    is the first head (no force-push), the agent's session resumed, the task and the PR bound to the new head."""
    assert follow.state == "done", follow.reason
    assert follow.session == "resumed", follow.session  # a new session would have replayed turn 1: no change
    task = await stack.service.store.get_task(stack.task.id)
    assert task.state is TaskState.PROPOSED and task.result is not None and task.result.pr is not None
    new_head = task.result.pr.head_sha
    assert new_head == follow.head_sha != stack.first_head
    branch = task.result.pr.branch
    assert stack.git("rev-parse", f"refs/heads/{branch}") == new_head
    assert stack.git("rev-parse", f"{new_head}^") == stack.first_head  # a fast-forward of the reviewed head
    assert len(stack.git("rev-list", f"main..{branch}").split()) == 2
    assert 'return f"Hello, {name}!"' in stack.git("show", f"{new_head}:bot/greeting.py")
    pr = stack.github.pulls[stack.number]
    assert "## Follow-ups" in pr["body"] and ASK in pr["body"] and new_head in pr["body"]
    assert "bot/greeting.py" in task.result.files_changed and task.result.tests is not None
    assert task.result.tests.passed
    return new_head


async def test_api_follow_up_adds_a_second_commit_and_binds_the_approval_to_it(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        anonymous = await client.post(f"/tasks/{stack.task.id}/follow-ups", json={"text": ASK})
        answer = await client.post(f"/tasks/{stack.task.id}/follow-ups", json={"text": ASK}, headers=_auth())
        assert anonymous.status_code == 401
        assert answer.status_code == 202, answer.text
        # A second one while the first has not ended is refused with the reason, and so is an approval.
        second = await client.post(f"/tasks/{stack.task.id}/follow-ups", json={"text": "and more"}, headers=_auth())
        assert second.status_code == 409 and "already has follow-up" in second.json()["error"]
        early = await client.post("/agent/approve-pr", json={"number": stack.number, "head_sha": stack.first_head},
                                  headers=_auth())
        assert early.status_code == 409, early.text
        follow = await _ended(stack, answer.json()["follow_up"])
        new_head = await _second_commit_landed(stack, follow)
        stale = await client.post("/agent/approve-pr", json={"number": stack.number, "head_sha": stack.first_head},
                                  headers=_auth())
        assert stale.status_code == 409 and "not the approved" in stale.text, stale.text
        fresh = await client.post("/agent/approve-pr", json={"number": stack.number, "head_sha": new_head},
                                  headers=_auth())
        assert fresh.status_code == 202, fresh.text
    events = [e.event for e in await stack.service.store.audit_log(stack.task.id)]
    assert events.count("follow_up") == 2 and "follow_up_pushed" in events and "follow_up_ended" in events


async def test_telegram_reply_follow_up_adds_a_second_commit_and_the_old_buttons_stop_working(stack: Stack) -> None:
    tg = stack.telegram

    def board() -> int | None:
        for (chat, mid), message in sorted(tg.messages.items()):
            if chat == OWNER_TG and message["from"]["id"] == BOT_ID and stack.task.id in message.get("text", "") \
                    and any("Approve" in text for text, _ in tg.buttons(chat, mid)):
                return mid
        return None

    await tg.wait_for(lambda: board() is not None, timeout=60)
    first = board()
    assert first is not None
    old_approve = next(data for text, data in tg.buttons(OWNER_TG, first) if "Approve" in text)
    reply = tg._user_message(OWNER_TG, text=ASK, reply_to_message=tg.messages[(OWNER_TG, first)])
    tg._push({"message": reply})
    await tg.wait_for(lambda: any(f"on PR #{stack.number} queued" in t for t in tg.texts(OWNER_TG)), timeout=60)
    assert stack.service.followups is not None
    follow = (await stack.service.followups.rows.find(task_id=stack.task.id))[0]
    assert follow.source == "telegram" and follow.actor == "telegram:owner"
    new_head = await _second_commit_landed(stack, await _ended(stack, follow.id))
    # A new message carries buttons at the new head; the old message's Approve is refused.
    await tg.wait_for(lambda: any(new_head[:12] in data for (c, m) in list(tg.messages) if c == OWNER_TG
                                  for _, data in tg.buttons(c, m)), timeout=60)
    tg.press(OWNER_TG, OWNER_TG, first, old_approve)
    await tg.wait_for(lambda: any("not the approved" in t for t in tg.texts(OWNER_TG)), timeout=60)
    assert stack.service.releases is not None
    assert not await stack.service.releases.rows.find(number=stack.number, limit=1)  # nothing was merged


async def test_github_pr_comment_follow_up_verified_by_signature_adds_a_second_commit(stack: Stack) -> None:
    hook = f"{stack.url}/github/webhook"
    stranger = add_comment(stack.github, stack.number, f"/agent {ASK}", "mallory")
    forged = await deliver(hook, comment_event(stack.github, stack.number, stranger), "not-the-secret")
    unsigned = await deliver(hook, comment_event(stack.github, stack.number, stranger), None)
    ignored = await deliver(hook, comment_event(stack.github, stack.number, stranger), HOOK_SECRET)
    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert ignored.status_code == 200 and "not the owner" in ignored.json()["ignored"]
    refusals = [e.detail for e in await stack.service.store.audit_log(event="refused") if e.actor == "github"]
    assert [r["reason"] for r in refusals] == ["bad signature", "no signature"]
    skipped = await stack.service.store.audit_log(event="pr_comment_ignored")
    assert [e.detail["comment_id"] for e in skipped] == [stranger["id"]]

    owners = add_comment(stack.github, stack.number, f"/agent {ASK}", "octo")
    answer = await deliver(hook, comment_event(stack.github, stack.number, owners), HOOK_SECRET)
    assert answer.status_code == 202, answer.text
    follow = await _ended(stack, answer.json()["follow_up"])
    assert follow.actor == "github:octo" and follow.text == ASK
    await _second_commit_landed(stack, follow)
    with pytest.raises(ForgeConflict, match="not the approved"):
        await operations.approve(stack.service, Caller("owner", "api"), stack.number, stack.first_head)
