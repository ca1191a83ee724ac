"""The chat wired into the running service: `ServiceActions` (Actions over runner.service.operations), the Bot,
long polling or the webhook route, and the notifier the lifespan opens."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from aiogram import Bot, Dispatcher
from aiogram.types import Update
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import policy
from runner.config import Settings
from runner.models import FollowUp
from runner.notify.telegram import TelegramNotifier
from runner.service import operations
from runner.service.operations import Caller, PolicyProposal
from runner.service.releases import IN_FLIGHT, ReleaseRecord
from runner.service.state import Service
from runner.store import OPEN_STATES, TaskRecord
from runner.telegram.bot import Status, build_dispatcher

# ---------------------------------------------------------------------------------------- the real service

CHAT = Caller("telegram:owner", "telegram")


class ServiceActions:
    """`Actions` over the running `Service`: runner.service.operations, as the HTTP routes call them."""

    def __init__(self, service: Service, *, version: str = "0.1.0",
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.version = version
        self._clock = clock
        self.started = clock()

    async def submit(self, *, kind: str, prompt: str, dry_run: bool) -> TaskRecord:
        assert kind in ("feature", "fix", "review"), kind
        return await operations.queue_task(self.service, CHAT, kind=kind, prompt=prompt,  # type: ignore[arg-type]
                                           dry_run=dry_run)

    async def approve(self, number: int, head_sha: str) -> str:
        release = (await operations.approve(self.service, CHAT, number, head_sha)).release
        return (f"PR #{number} approved at {head_sha[:12]} (release {release.id}): merging and deploying now; "
                "the outcome comes here.")

    async def reject(self, number: int) -> str:
        return f"PR #{number} {(await operations.reject(self.service, CHAT, number)).pr.state}"

    async def follow_up(self, task_id: str, text: str) -> FollowUp:
        return await operations.follow_up(self.service, CHAT, task_id, text)

    async def follow_up_pr(self, number: int, text: str) -> FollowUp:
        return await operations.follow_up_of_pr(self.service, CHAT, number, text)

    async def tasks(self, limit: int) -> list[TaskRecord]:
        return await self.service.store.list_tasks(limit=limit)

    async def task(self, task_id: str) -> TaskRecord:
        return await self.service.store.get_task(task_id)

    async def cancel(self, task_id: str) -> TaskRecord:
        return await operations.cancel_task(self.service, CHAT, task_id)

    async def pr_task(self, number: int) -> TaskRecord | None:
        return await self.service.store.task_of_pr(number)

    async def status(self) -> Status:
        scheduler, store = self.service.scheduler, self.service.store
        now = self._clock()
        cost = (await store.usage_totals(since=now - now % 86400)).cost_usd  # since midnight UTC
        releases = self.service.releases
        live = await releases.rows.find(states=(*IN_FLIGHT, "watching"), limit=20) if releases is not None else []
        return Status(self.version, now - self.started, scheduler.running, scheduler.waiting,
                      scheduler.max_running, cost, await store.count_tasks(states=OPEN_STATES),
                      tuple(_release_line(r) for r in live))

    async def propose_policy(self, text: str, name: str) -> PolicyProposal:
        return await operations.propose_policy(self.service.policies, self.service.store, CHAT, text, name=name)

    async def confirm_policy(self, token: str) -> policy.Policy:
        return await operations.confirm_policy(self.service.policies, self.service.store, CHAT, token)

    def withdraw_policy(self, token: str) -> None:
        operations.withdraw_policy(self.service.policies, token)

    async def rollback_policy(self, version: int) -> policy.Policy:
        return await operations.rollback_policy(self.service.policies, self.service.store, CHAT, version)

    async def refuse(self, actor: str, reason: str, **detail: Any) -> None:
        await operations.refuse(self.service.store, Caller(actor, "telegram"), reason, **detail)


def _release_line(release: ReleaseRecord) -> str:
    if release.state == "watching" and release.watch_until is not None:
        until = time.strftime("%H:%M", time.localtime(release.watch_until))
        return f"PR #{release.number}: deployed, its errors watched until {until}"
    return f"PR #{release.number}: {release.state}"


# ------------------------------------------------------------------------------------- polling, webhook


def create_bot(token: str, api_base: str | None) -> Bot:
    """A Bot on TELEGRAM_API_BASE (a local Bot API server, or the fake in tests) or Telegram's own."""
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import PRODUCTION, TelegramAPIServer

    api = TelegramAPIServer.from_base(api_base) if api_base else PRODUCTION
    return Bot(token, session=AiohttpSession(api=api))


@contextlib.asynccontextmanager
async def polling(dp: Dispatcher, bot: Bot) -> AsyncIterator[None]:
    """Long polling for as long as the block runs (the default mode)."""
    task = asyncio.create_task(dp.start_polling(bot, handle_signals=False, close_bot_session=False))
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):  # polling never started
            await dp.stop_polling()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)



def webhook_route(dp: Dispatcher, bot: Bot, secret: str, path: str = "/telegram/webhook") -> Route:
    """A Starlette route for webhook mode; Telegram proves itself with the secret token set by `setWebhook`."""

    async def endpoint(request: Request) -> Response:
        presented = request.headers.get("x-telegram-bot-api-secret-token", "")
        if not hmac.compare_digest(presented.encode(), secret.encode()):
            return Response(status_code=401)
        update = Update.model_validate(await request.json(), context={"bot": bot})
        await dp.feed_update(bot, update)
        return Response(status_code=200)

    return Route(path, endpoint, methods=["POST"])


async def start_webhook(bot: Bot, url: str, secret: str) -> None:
    await bot.set_webhook(url, secret_token=secret, drop_pending_updates=False)


# ------------------------------------------------------------------------------------- in the service


async def open_notifier(stack: contextlib.AsyncExitStack, settings: Settings) -> TelegramNotifier | None:
    """The owner's Telegram channel, when TELEGRAM_BOT_TOKEN and OWNER_TELEGRAM_ID are set."""
    if settings.telegram_bot_token is None or settings.owner_telegram_id is None:
        return None
    bot = create_bot(settings.telegram_bot_token.reveal(), settings.telegram_api_base)
    return await stack.enter_async_context(TelegramNotifier(bot, settings.owner_telegram_id))


async def start_front_end(stack: contextlib.AsyncExitStack, service: Service, notifier: TelegramNotifier,
                          routes: list[BaseRoute]) -> None:
    """The owner's commands and buttons for as long as the stack is open: long polling, or, when
    TELEGRAM_WEBHOOK_URL is set, a webhook route added to `routes` (the app's) with its secret token."""
    owner = service.settings.owner_telegram_id
    assert owner is not None  # open_notifier gave us a notifier
    desk = service.policies
    dp = build_dispatcher(ServiceActions(service), notifier, owner, desk)
    settings = service.settings
    if settings.telegram_webhook_url and settings.telegram_webhook_secret:
        secret = settings.telegram_webhook_secret.reveal()
        routes.append(webhook_route(dp, notifier.bot, secret, path=urlsplit(settings.telegram_webhook_url).path))
        await start_webhook(notifier.bot, settings.telegram_webhook_url, secret)
        stack.push_async_callback(notifier.bot.delete_webhook)
    else:
        await stack.enter_async_context(polling(dp, notifier.bot))
