"""TelegramNotifier against the fake Bot API server: real aiogram, real HTTP on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

import policy
from runner.models import TaskId, TaskState
from runner.notify.telegram import AskAnswer, PrAction, TelegramNotifier
from runner.store import TaskRecord
from tests.fakes.telegram import FakeTelegram, serve

OWNER = 1001


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    yield FakeTelegram()


@pytest.fixture
async def notifier(fake: FakeTelegram) -> AsyncIterator[TelegramNotifier]:
    async with serve(fake) as base:
        bot = Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(base)))
        async with TelegramNotifier(bot, OWNER, min_interval=0.2) as n:
            yield n


def task(state: TaskState = TaskState.PROPOSED, reason: str = "") -> TaskRecord:
    return TaskRecord(id=TaskId("t-1"), kind="feature", prompt="p", repo="r", source="telegram",
                      requested_by="owner", dry_run=False, state=state, created_at=0.0, updated_at=0.0,
                      fingerprint=None, base_sha=None, reason=reason, result=None)


RESULT = {"summary": "Added <b>/balance</b> & tests", "files_changed": ["bot/app.py", "tests/<x>.py"],
          "tests": {"command": "pytest -q", "exit_code": 0, "passed": True, "output_tail": ""},
          "usage": {"input_tokens": 100, "output_tokens": 50, "cost_usd": 0.0123},
          "pr": {"number": 7, "url": "local://pr/7", "branch": "agent/t-1", "head_sha": "a" * 40}}


async def test_notifier_edits_one_message_instead_of_flooding(fake: FakeTelegram, notifier: TelegramNotifier) -> None:
    for i in range(30):
        notifier.task_progress("t-1", f"step {i}")
        await asyncio.sleep(0.01)
    await notifier.task_finished(task(), RESULT)
    assert len(fake.sent("sendMessage")) == 1
    edits = fake.sent("editMessageText")
    assert 1 <= len(edits) <= 6  # 30 lines over ~0.3 s, at most one edit per 0.2 s
    gaps = [b.at - a.at for a, b in zip(fake.sent("sendMessage") + edits, edits, strict=False)]
    assert all(g >= 0.15 for g in gaps)
    final = fake.texts(OWNER)[-1]
    assert "Added &lt;b&gt;/balance&lt;/b&gt; &amp; tests" in final  # the agent's text is text, not markup
    assert "tests/&lt;x&gt;.py" in final and "passed" in final and "$0.0123" in final
    buttons = fake.buttons(OWNER, max(k[1] for k in fake.messages))
    assert [b[0] for b in buttons] == ["✅ Approve", "❌ Reject", "📄 Show diff"]
    approve = PrAction.unpack(buttons[0][1])
    assert (approve.action, approve.number, approve.sha) == ("approve", 7, "a" * 40)


async def test_notifier_waits_out_429_retry_after(fake: FakeTelegram, notifier: TelegramNotifier) -> None:
    fake.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    started = time.monotonic()
    notifier.task_progress("t-1", "queued")
    await notifier.task_finished(task(TaskState.FAILED, "tests failed"), {})
    assert time.monotonic() - started >= 1.0
    assert len(fake.sent("sendMessage")) == 2  # the refused one, then the one that landed
    assert "tests failed" in fake.texts(OWNER)[-1]


async def test_notifier_ignores_message_not_modified(fake: FakeTelegram, notifier: TelegramNotifier) -> None:
    notifier.task_progress("t-1", "same")
    await asyncio.sleep(0.3)
    board_message = notifier.message_of("t-1")
    assert board_message is not None
    notifier._boards["t-1"].dirty = True  # the same text again: Telegram says not modified
    notifier.task_progress("t-1", "next")
    await notifier.task_finished(task(), RESULT)
    assert "PR #7" in fake.texts(OWNER)[-1]


async def test_notifier_escapes_and_truncates_long_lines(fake: FakeTelegram, notifier: TelegramNotifier) -> None:
    for i in range(200):
        notifier.task_progress("t-1", f"<script>{i}</script> " + "x" * 400)
    await notifier.task_finished(task(TaskState.FAILED, "<oops>" * 2000), {"summary": "y" * 10_000})
    assert all(len(t) <= 4096 for t in fake.texts(OWNER))
    assert not [c for c in fake.calls if c.method != "getMe" and len(str(c.params.get("text", ""))) > 4096]


async def test_notifier_sends_long_diff_as_patch_and_short_as_preview(fake: FakeTelegram,
                                                                      notifier: TelegramNotifier) -> None:
    await notifier.send_diff(7, "--- a/x\n+++ b/x\n-<a>\n+<b>\n")
    assert '<pre><code class="language-diff">' in fake.texts(OWNER)[-1]
    assert "&lt;b&gt;" in fake.sent("sendMessage")[-1].params["text"]
    await notifier.send_diff(7, "+line\n" * 2000)
    assert fake.documents[-1][1] == "pr-7.patch" and fake.documents[-1][2].count(b"\n") == 2000


async def test_notifier_ask_waits_for_the_button(fake: FakeTelegram, notifier: TelegramNotifier) -> None:
    call = policy.ToolCall("Bash", {"command": "pip install <evil>"})
    decision = policy.Decision(policy.Effect.ASK, "bash.ask", "installs a package", "pip", "v1", "0" * 64)
    pending = asyncio.create_task(notifier.ask("t-1", call, decision))
    await fake.wait_for(lambda: bool(fake.sent("sendMessage")))
    buttons = fake.buttons(OWNER, max(k[1] for k in fake.messages))
    allow = AskAnswer.unpack(buttons[0][1])
    assert allow.allow and "pip install &lt;evil&gt;" in fake.sent("sendMessage")[-1].params["text"]
    assert notifier.answer(allow.token, True) == "Allowed"
    assert await pending is True
    assert notifier.answer(allow.token, False) is None  # answered once; a second press changes nothing


async def test_a_release_question_is_answered_in_its_own_words(fake: FakeTelegram, notifier: TelegramNotifier) -> None:
    """Go/Hold on a migration release: the pop-up says what happens, not a tool call's Allowed/Denied."""
    pending = asyncio.create_task(notifier.ask_owner("PR #3 changes migrations/0002.sql: deploy it?"))
    await fake.wait_for(lambda: bool(fake.sent("sendMessage")))
    buttons = fake.buttons(OWNER, max(k[1] for k in fake.messages))
    go, hold = (AskAnswer.unpack(data) for _, data in buttons)
    assert go.allow and not hold.allow and go.token == hold.token
    assert notifier.answer(hold.token, False) == "Holding"
    assert await pending is False
