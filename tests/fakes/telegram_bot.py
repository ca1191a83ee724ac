"""The owner's bot as the chat tests run it: real aiogram long-polling the Bot API fake, over stub `Actions`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

import policy
from runner.errors import TaskError
from runner.notify.telegram import TelegramNotifier
from runner.service import operations
from runner.service.policy_store import PolicyDesk, PolicyStore
from runner.store import Store, TaskRecord
from runner.telegram.bot import Status, build_dispatcher
from runner.telegram.wiring import CHAT
from tests.fakes.telegram import FakeTelegram, serve

OWNER = 1001
STRANGER = 666


@dataclass
class StubActions:
    """The supervisor as the bot sees it: records the task and PR actions it was asked for and answers like the
    real one; the policy and refusal actions are the real operations over a real desk and store."""

    store: Store
    desk: PolicyDesk
    submitted: list[tuple[str, str, bool]] = field(default_factory=list)
    approved: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    async def submit(self, *, kind: str, prompt: str, dry_run: bool) -> TaskRecord:
        self.submitted.append((kind, prompt, dry_run))
        return await self.store.create_task(kind=kind, prompt=prompt, repo="repo", source="telegram",
                                            requested_by="owner", dry_run=dry_run)

    async def approve(self, number: int, head_sha: str) -> str:
        self.approved.append((number, head_sha))
        return f"PR #{number} merged as cafe12345678; deploy deployed"

    async def reject(self, number: int) -> str:
        self.rejected.append(number)
        return f"PR #{number} closed"

    async def tasks(self, limit: int) -> list[TaskRecord]:
        return await self.store.list_tasks(limit=limit)

    async def task(self, task_id: str) -> TaskRecord:
        return await self.store.get_task(task_id)

    async def cancel(self, task_id: str) -> TaskRecord:
        self.cancelled.append(task_id)
        raise TaskError(f"no task {task_id!r}")

    async def pr_task(self, number: int) -> TaskRecord | None:
        return await self.store.task_of_pr(number)

    async def status(self) -> Status:
        return Status("0.1.0", 3725, 1, 0, 2, 0.5, 1, ("PR #7: deployed, its errors watched until 10:20",))

    async def propose_policy(self, text: str, name: str) -> operations.PolicyProposal:
        return await operations.propose_policy(self.desk, self.store, CHAT, text, name=name)

    async def confirm_policy(self, token: str) -> policy.Policy:
        return await operations.confirm_policy(self.desk, self.store, CHAT, token)

    def withdraw_policy(self, token: str) -> None:
        operations.withdraw_policy(self.desk, token)

    async def rollback_policy(self, version: int) -> policy.Policy:
        return await operations.rollback_policy(self.desk, self.store, CHAT, version)

    async def refuse(self, actor: str, reason: str, **detail: Any) -> None:
        await operations.refuse(self.store, operations.Caller(actor, "telegram"), reason, **detail)


A = TypeVar("A", bound=StubActions)


@dataclass
class Harness(Generic[A]):
    fake: FakeTelegram
    ops: A
    notifier: TelegramNotifier
    desk: PolicyDesk
    store: Store

    def replies(self, chat: int) -> list[str]:
        return self.fake.texts(chat)

    async def said(self, chat: int, count: int) -> list[str]:
        await self.fake.wait_for(lambda: len(self.replies(chat)) >= count)
        return self.replies(chat)


@contextlib.asynccontextmanager
async def polling_bot(tmp_path: Path, actions: Callable[[Store, PolicyDesk], A]) -> AsyncIterator[Harness[A]]:
    """The bot of OWNER, polling a fresh fake, its actions built by `actions` over a store and desk in `tmp_path`."""
    fake = FakeTelegram()
    async with serve(fake) as base, Store(tmp_path / "state.db") as store:
        policies = PolicyStore(tmp_path / "state.db")
        bot = Bot(fake.token, session=AiohttpSession(api=TelegramAPIServer.from_base(base)))
        notifier = TelegramNotifier(bot, OWNER, min_interval=0.2)
        desk = PolicyDesk(policies, policy.default_text())
        ops = actions(store, desk)
        dp = build_dispatcher(ops, notifier, OWNER, desk)
        polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False, close_bot_session=False,
                                                       polling_timeout=1))
        try:
            yield Harness(fake, ops, notifier, desk, store)
        finally:
            await dp.stop_polling()
            await polling
            await notifier.aclose()
            await policies.aclose()
