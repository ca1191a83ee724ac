"""The owner's whole conversation with the real service: Telegram → sandboxed task → PR → Approve → merged."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from runner.sample import create_sample_repo
from runner.scripted_model import Scenario, serve_scripted_model
from runner.store import Store
from tests.fakes.net import free_port
from tests.fakes.telegram import BOT_ID, FakeTelegram, serve

FIX_SCENARIO = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "fix-balance.yaml"
OWNER, STRANGER = 777, 999

pytestmark = pytest.mark.docker


async def test_owner_fixes_a_bug_from_telegram_through_the_real_service(tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    home = tmp_path / "home"
    fake = FakeTelegram()
    async with serve(fake) as telegram, serve_scripted_model(Scenario.from_file(FIX_SCENARIO)) as model:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_", "TELEGRAM"))}
        env.update(AGENT_RUNNER_HOME=str(home), AGENT_RUNNER_REPO=str(repo), AGENT_RUNNER_PORT=str(free_port()),
                   AGENT_API_TOKEN="api-token", ANTHROPIC_BASE_URL=model.base_url, ANTHROPIC_API_KEY="scripted",
                   TELEGRAM_BOT_TOKEN=fake.token, TELEGRAM_API_BASE=telegram, OWNER_TELEGRAM_ID=str(OWNER))
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "runner.cli", "serve", env=env,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            await fake.wait_for(lambda: bool(fake.sent("getUpdates")), timeout=90)  # 2 shared cores: start-up
            fake.send_text(STRANGER, "/agent delete everything")
            fake.send_text(OWNER, "/agent fix average_spend crashes for users without spending")

            def board() -> int | None:
                for (chat, mid), message in sorted(fake.messages.items()):
                    labels = [text for text, _ in fake.buttons(chat, mid)] if chat == OWNER else []
                    if message["from"]["id"] == BOT_ID and any("Approve" in label for label in labels):
                        return mid
                return None

            await fake.wait_for(lambda: board() is not None, timeout=240)
            progress = board()
            assert progress is not None
            final = fake.messages[(OWNER, progress)]["text"]
            approve = next(data for text, data in fake.buttons(OWNER, progress) if "Approve" in text)
            fake.press(OWNER, OWNER, progress, approve)
            await fake.wait_for(lambda: any("merged as" in t for t in fake.texts(OWNER)), timeout=120)
        finally:
            proc.terminate()
            _, err = await asyncio.wait_for(proc.communicate(), 60)

    assert "bot/ledger.py" in final and "passed" in final, final
    edits = [c for c in fake.sent("editMessageText") if int(c.params.get("message_id", 0)) == progress]
    assert len(edits) >= 2  # the progress message was edited in place as the task went on
    # The default `none` deployer: the owner is told the merge, and that nothing was deployed, checked or watched.
    assert any("nothing was deployed, health-checked or watched" in t for t in fake.texts(OWNER)), fake.texts(OWNER)
    assert any("owner only" in t for t in fake.texts(STRANGER)), "the stranger got no refusal"
    async with Store(home / "state.db") as store:
        tasks = await store.list_tasks()
        refusals = await store.audit_log(event="refused")
    assert [t.state.value for t in tasks] == ["deployed"], err.decode()[-3000:]
    assert any(e.actor == f"telegram:{STRANGER}" for e in refusals)


async def test_webhook_mode_registers_its_secret_and_refuses_updates_without_it(tmp_path: Path) -> None:
    import httpx

    repo = await create_sample_repo(tmp_path / "origin")
    fake = FakeTelegram()
    port = free_port()
    hook = f"http://127.0.0.1:{port}/telegram/webhook"
    async with serve(fake) as telegram:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_", "TELEGRAM"))}
        env.update(AGENT_RUNNER_HOME=str(tmp_path / "home"), AGENT_RUNNER_REPO=str(repo), AGENT_RUNNER_PORT=str(port),
                   AGENT_API_TOKEN="api-token", ANTHROPIC_API_KEY="unused", TELEGRAM_BOT_TOKEN=fake.token,
                   TELEGRAM_API_BASE=telegram, OWNER_TELEGRAM_ID=str(OWNER), TELEGRAM_WEBHOOK_URL=hook,
                   TELEGRAM_WEBHOOK_SECRET="hook-secret")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "runner.cli", "serve", env=env,
                                                    stderr=asyncio.subprocess.PIPE)
        update = {"update_id": 1, "message": {"message_id": 1, "date": 0, "text": "/help",
                                              "chat": {"id": OWNER, "type": "private"},
                                              "from": {"id": OWNER, "is_bot": False, "first_name": "owner"},
                                              "entities": [{"type": "bot_command", "offset": 0, "length": 5}]}}
        try:
            await fake.wait_for(lambda: fake.webhook is not None, timeout=30)
            async with httpx.AsyncClient(timeout=10) as client:
                wrong = await client.post(hook, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "guess"})
                right = await client.post(hook, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "hook-secret"})
            await fake.wait_for(lambda: bool(fake.texts(OWNER)), timeout=10)
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.communicate(), 60)
    registered = fake.sent("setWebhook")[0].params
    assert registered["url"] == hook and registered["secret_token"] == "hook-secret"
    assert fake.sent("deleteWebhook")  # removed again when the service stopped
    assert wrong.status_code == 401 and right.status_code == 200
    assert not fake.sent("getUpdates")  # webhook mode: no long polling
    assert "/agent" in fake.texts(OWNER)[-1]
