"""Follow-ups from the chat: a reply to a task's message, or `/revise N <text>` for PR N, becomes the owner's
follow-up (runner.service.operations.follow_up through `FollowUpActions`); the chat only parses and renders."""

from __future__ import annotations

import re
from typing import Any, Protocol, runtime_checkable

from aiogram import F, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import Message as TgMessage

from runner.errors import RunnerError
from runner.models import FollowUp
from runner.notify.base import Message
from runner.notify.telegram import TelegramNotifier, clip, esc

# The task id every message of ours about a task shows (runner.store.new_task_id's shape).
TASK_ID = re.compile(r"\b(\d{8}-\d{6}-[0-9a-f]{6})\b")


@runtime_checkable
class FollowUpActions(Protocol):
    """What the chat's follow-ups ask of the supervisor. Refusals are RunnerErrors with a message for the owner."""

    async def follow_up(self, task_id: str, text: str) -> FollowUp:
        """The owner's follow-up on task `task_id`'s pull request, queued."""

    async def follow_up_pr(self, number: int, text: str) -> FollowUp:
        """The owner's follow-up on PR `number` (the proposed task that has it), queued."""


def replied_task(message: TgMessage) -> dict[str, Any] | bool:
    """A filter: the task id of the bot's message the owner replied to with words (not a command)."""
    replied = message.reply_to_message
    if replied is None or not message.text or message.text.startswith("/"):
        return False
    if replied.from_user is None or not replied.from_user.is_bot:
        return False
    found = TASK_ID.search(replied.text or replied.caption or "")
    return {"task_id": found.group(1)} if found else False


def follow_up_router(ops: FollowUpActions, notifier: TelegramNotifier, owner_id: int) -> Router:
    router = Router(name="follow-ups")
    router.message.filter(F.from_user.id == owner_id)

    async def reply(message: TgMessage, text: str) -> None:
        await notifier.send(Message(clip(text)), message.chat.id)

    async def queued(message: TgMessage, follow: FollowUp) -> None:
        notifier.task_progress(follow.task_id, f"follow-up {follow.id} queued: {clip(follow.text, 200)}")
        await reply(message, f"Follow-up {follow.id} on PR #{follow.number} queued: a new sandbox from its head "
                             f"<code>{esc(follow.base_sha[:12])}</code>; a new commit comes to the same PR, and "
                             "the buttons shown before it stop working.")

    @router.message(Command("revise"))
    async def revise(message: TgMessage, command: CommandObject) -> None:
        number, _, text = (command.args or "").strip().partition(" ")
        if not number.lstrip("#").isdigit() or not text.strip():
            await reply(message, "Say which PR and what to change, e.g. <code>/revise 12 also handle a missing "
                                 "user</code>, or reply to the task's message.")
            return
        try:
            follow = await ops.follow_up_pr(int(number.lstrip("#")), text.strip())
        except RunnerError as exc:
            await reply(message, f"Not started: {esc(str(exc))}")
            return
        await queued(message, follow)

    @router.message(replied_task)
    async def replied(message: TgMessage, task_id: str) -> None:
        try:
            follow = await ops.follow_up(task_id, message.text or "")
        except RunnerError as exc:
            await reply(message, f"Not started: {esc(str(exc))}")
            return
        await queued(message, follow)

    return router
