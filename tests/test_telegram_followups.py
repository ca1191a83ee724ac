"""Follow-ups from the chat, through real aiogram long-polling the Bot API fake: a reply to a task's message and
`/revise N <text>` reach the follow-up actions (the words as the owner wrote them); anything else does not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.errors import TaskError
from runner.models import FollowUp, TaskId
from runner.notify.base import Message
from runner.notify.telegram import TelegramNotifier
from tests.fakes.telegram import BOT_ID, FakeTelegram
from tests.fakes.telegram_bot import OWNER, STRANGER, StubActions, polling_bot

TASK = "20261202-120000-abc123"


@dataclass
class FollowingActions(StubActions):
    followed: list[tuple[str, str, str]] = field(default_factory=list)

    def _row(self, task_id: str, number: int, text: str) -> FollowUp:
        return FollowUp(id=len(self.followed), task_id=TaskId(task_id), number=number, text=text, actor="owner",
                        source="telegram", state="queued", created_at=0.0, updated_at=0.0, base_sha="d" * 40)

    async def follow_up(self, task_id: str, text: str) -> FollowUp:
        if task_id != TASK:
            raise TaskError(f"no task {task_id!r}")
        row = self._row(task_id, 7, text)
        self.followed.append(("task", task_id, text))
        return row

    async def follow_up_pr(self, number: int, text: str) -> FollowUp:
        row = self._row(TASK, number, text)
        self.followed.append(("pr", str(number), text))
        return row


@pytest.fixture
async def chat(tmp_path: Path) -> AsyncIterator[tuple[FakeTelegram, FollowingActions, TelegramNotifier]]:
    async with polling_bot(tmp_path, FollowingActions) as bot:
        yield bot.fake, bot.ops, bot.notifier


def _reply(fake: FakeTelegram, user: int, to: int, text: str) -> None:
    fake._push({"message": fake._user_message(user, text=text, reply_to_message=fake.messages[(OWNER, to)])})


async def test_a_reply_to_a_tasks_message_is_a_follow_up_on_that_task(
        chat: tuple[FakeTelegram, FollowingActions, TelegramNotifier]) -> None:
    fake, ops, notifier = chat
    board = await notifier.send(Message(f"<b>Task</b> <code>{TASK}</code> · feature\n<b>proposed</b>"))
    other = await notifier.send(Message("Policy v3 is active."))
    _reply(fake, OWNER, board, "greet with an exclamation mark")
    await fake.wait_for(lambda: any("Follow-up 0 on PR #7 queued" in t for t in fake.texts(OWNER)))
    assert ops.followed == [("task", TASK, "greet with an exclamation mark")]
    _reply(fake, OWNER, other, "and this?")  # no task in that message: not a follow-up
    await fake.wait_for(lambda: any("did not understand" in t for t in fake.texts(OWNER)))
    _reply(fake, STRANGER, board, "push my backdoor")
    await fake.wait_for(lambda: any("owner only" in t for t in fake.texts(STRANGER)))
    assert ops.followed == [("task", TASK, "greet with an exclamation mark")]
    assert all(m["from"]["id"] == BOT_ID for (c, _), m in fake.messages.items() if c == STRANGER and
               "owner only" in m.get("text", ""))


async def test_revise_names_the_pr_and_says_how_when_it_does_not(
        chat: tuple[FakeTelegram, FollowingActions, TelegramNotifier]) -> None:
    fake, ops, _ = chat
    fake.send_text(OWNER, "/revise #12 also handle a missing user")
    await fake.wait_for(lambda: any("Follow-up 0 on PR #12 queued" in t for t in fake.texts(OWNER)))
    fake.send_text(OWNER, "/revise twelve")
    await fake.wait_for(lambda: any("Say which PR and what to change" in t for t in fake.texts(OWNER)))
    assert ops.followed == [("pr", "12", "also handle a missing user")]
