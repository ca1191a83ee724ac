"""A long review reaches the owner whole: real aiogram against the fake Bot API server on loopback."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser

import pytest
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from runner.models import RunResult, TaskId, TaskState
from runner.notify.telegram import TelegramNotifier
from runner.review import Finding, Review
from runner.store import TaskRecord
from tests.fakes.telegram import FakeTelegram, serve

OWNER = 1001


class Balanced(HTMLParser):
    """Fails on a tag closed out of order or left open: what Telegram's HTML parse mode refuses."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in ("b", "code"), tag
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open.pop() == tag, tag


@pytest.fixture
async def notifier() -> AsyncIterator[tuple[FakeTelegram, TelegramNotifier]]:
    fake = FakeTelegram()
    async with serve(fake) as base:
        bot = Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(base)))
        async with TelegramNotifier(bot, OWNER, min_interval=0.05) as n:
            yield fake, n


def review_task(result: RunResult) -> TaskRecord:
    return TaskRecord(id=TaskId("t-r"), kind="review", prompt="Review pull request #3", repo="r", source="telegram",
                      requested_by="owner", dry_run=True, state=result.status, created_at=0.0, updated_at=0.0,
                      fingerprint=None, base_sha=None, reason=result.reason, result=result)


async def test_a_long_review_arrives_whole_in_messages_under_the_limit(
        notifier: tuple[FakeTelegram, TelegramNotifier]) -> None:
    fake, n = notifier
    findings = tuple(Finding("bot.py", i + 1, "major", f"Finding {i}: <i>balance</i> & co\n" + f"line {i} " * 90)
                     for i in range(30))
    result = RunResult(task_id=TaskId("t-r"), status=TaskState.DIFF_READY, reason="review: 30 findings",
                       review=Review(summary="Overall: risky.", findings=findings, dropped_count=2, pr=3))
    assert sum(len(f.text) for f in findings) > 20_000  # ten times what the old 2,000-character cut kept

    await n.task_finished(review_task(result), result.to_json())

    sent = [s.params["text"] for s in fake.sent("sendMessage")]
    pages = sent[1:]  # the first is the task's own message
    assert len(pages) >= 5
    assert all(len(p) < 4096 for p in pages)
    for page in pages:
        parser = Balanced()
        parser.feed(page)
        parser.close()
        assert parser.open == []
    assert pages[0].startswith("<b>Review of PR #3</b>") and "2 dropped as invalid" in pages[0]
    bodies = [pages[0], *(p.split("\n", 1)[1] for p in pages[1:])]  # each later page headed by its marker
    assert all(p.startswith("<b>Review of PR #3</b> (continued, ") for p in pages[1:])
    text = html.unescape(re.sub(r"</?(b|code)>", "", "\n".join(bodies)))
    for finding in findings:
        assert f"major bot.py:{finding.line}\n{finding.text}" in text  # every finding, whole, in order
    assert "<i>" not in "".join(pages)  # the agent's markup arrives as text


async def test_a_task_without_a_review_sends_nothing_more(notifier: tuple[FakeTelegram, TelegramNotifier]) -> None:
    fake, n = notifier
    result = RunResult(task_id=TaskId("t-r"), status=TaskState.DIFF_READY)
    await n.task_finished(review_task(result), result.to_json())
    assert len(fake.sent("sendMessage")) == 1
