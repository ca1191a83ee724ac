"""TelegramNotifier: one progress message per task, edited in place at a pace Telegram accepts.

Lines are coalesced: at most one edit per `min_interval` seconds per message, and a `429 Too Many
Requests` is waited out for the `retry_after` Telegram names. The last edit carries the outcome and the
owner's buttons. `ask` sends Allow / Deny and waits for the router to call `answer`.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramBadRequest, TelegramRetryAfter
from aiogram.filters.callback_data import CallbackData
from aiogram.types import BufferedInputFile, InlineKeyboardButton, InlineKeyboardMarkup

import policy
from runner.errors import NotifyError
from runner.notify.base import Button, Message
from runner.review import Review, telegram_pages
from runner.store import TaskRecord

log = logging.getLogger("agent_runner.notify.telegram")
T = TypeVar("T")

MAX_TEXT = 4096  # Telegram's limit for a message's text, after entity parsing
MAX_CAPTION = 1024
DEFAULT_MIN_INTERVAL = 1.5  # seconds between edits of one message; Telegram throttles faster editors
CALL_TIMEOUT = 30.0
MAX_ATTEMPTS = 5
SHORT_DIFF = 3000  # characters: up to this a diff is shown inline, beyond it sent as a .patch file
KEPT_LINES = 40


class PrAction(CallbackData, prefix="pr"):
    """Approve / Reject / Show diff of a PR, bound to the head SHA the owner was shown."""

    action: str  # "approve" | "reject" | "diff"
    number: int
    sha: str


class AskAnswer(CallbackData, prefix="ask"):
    token: str
    allow: bool


def esc(text: str) -> str:
    """Text that is not ours, made inert for parse_mode=HTML."""
    return html.escape(text, quote=False)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """Cut `text` to `limit` characters, saying so. Cut plain text *before* escaping it, or cut at a line."""
    if len(text) <= limit:
        return text
    marker = "\n… (truncated)"
    return text[: limit - len(marker)] + marker


def pre(text: str, limit: int) -> str:
    """`text` escaped inside <pre>, cut so the whole stays under `limit` characters."""
    body = esc(text)
    while len(body) > limit - 11 and text:
        text = text[: max(0, len(text) - max(64, len(body) - limit + 32))]
        body = esc(text + "\n…")
    return f"<pre>{body}</pre>"


def markup(message: Message) -> InlineKeyboardMarkup | None:
    if not message.buttons:
        return None
    return InlineKeyboardMarkup(inline_keyboard=[[InlineKeyboardButton(text=b.text, callback_data=b.data) for b in row]
                                                 for row in message.buttons])


def outcome(task: TaskRecord, result: Mapping[str, Any] | None, link: str | None = None) -> Message:
    """The last edit of a task's message: state, summary, files, tests, cost, the task page's signed `link`,
    and the PR's buttons."""
    result = result or {}
    parts = [f"<b>Task</b> <code>{esc(task.id)}</code> · {esc(task.kind)}{' (dry run)' if task.dry_run else ''}",
             f"<b>{esc(task.state.value)}</b>" + (f": {esc(task.reason)}" if task.reason else "")]
    summary = str(result.get("summary") or "")
    if summary:
        parts.append(esc(clip(summary, 1200)))
    files = [str(f) for f in result.get("files_changed") or []]
    if files:
        shown = ", ".join(f"<code>{esc(f)}</code>" for f in files[:20])
        parts.append(f"Files ({len(files)}): {shown}{' …' if len(files) > 20 else ''}")
    tests = result.get("tests")
    if isinstance(tests, Mapping):
        verdict = "passed ✅" if tests.get("passed") else f"failed ❌ (exit {tests.get('exit_code')})"
        parts.append(f"Tests <code>{esc(str(tests.get('command', '')))}</code>: {verdict}")
    usage = result.get("usage")
    if isinstance(usage, Mapping):
        parts.append(f"Cost ${float(usage.get('cost_usd') or 0):.4f} · "
                     f"{int(usage.get('input_tokens') or 0) + int(usage.get('output_tokens') or 0)} tokens")
    denials = result.get("denials") or []
    if denials:
        parts.append(f"Denied tool calls: {len(denials)}")
    if link is not None:
        parts.append(f'<a href="{html.escape(link)}">Task page</a> (diff, tool calls, tests, release)')
    pr = result.get("pr")
    buttons: tuple[tuple[Button, ...], ...] = ()
    if isinstance(pr, Mapping) and pr.get("number") is not None:
        number, sha = int(pr["number"]), str(pr.get("head_sha", ""))
        parts.append(f"PR #{number} <code>{esc(sha[:12])}</code> {esc(str(pr.get('url', '')))}")
        buttons = ((Button("✅ Approve", PrAction(action="approve", number=number, sha=sha).pack()),
                    Button("❌ Reject", PrAction(action="reject", number=number, sha=sha).pack()),
                    Button("📄 Show diff", PrAction(action="diff", number=number, sha=sha).pack())),)
    return Message(_fit(parts), buttons)


def _fit(parts: list[str]) -> str:
    # Each part is escaped on its own, so dropping whole parts never cuts an HTML tag in half.
    while len("\n".join(parts)) > MAX_TEXT and len(parts) > 2:
        parts.pop(2)
    return "\n".join(parts)[:MAX_TEXT]


@dataclass(slots=True)
class _Board:
    """The one message of a task and what it should show next."""

    task_id: str
    lines: list[str] = field(default_factory=list)
    message_id: int | None = None
    last_sent: float = float("-inf")
    dirty: bool = False
    final: Message | None = None
    pump: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class _Asked:
    """A question waiting for the owner's press; `replies` answer its yes and its no (the pop-up's words)."""

    future: asyncio.Future[bool]
    replies: tuple[str, str]


class TelegramNotifier:
    """Talks to the owner's private chat (`chat_id`, which is the owner's user id) through `bot`."""

    def __init__(self, bot: Bot, chat_id: int, *, min_interval: float = DEFAULT_MIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self._interval = min_interval
        self._clock = clock
        self._boards: dict[str, _Board] = {}
        self._asks: dict[str, _Asked] = {}

    async def __aenter__(self) -> TelegramNotifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # progress ----------------------------------------------------------------------------------------------

    def task_progress(self, task_id: str, line: str) -> None:
        board = self._boards.setdefault(task_id, _Board(task_id))
        board.lines = [*board.lines[-(KEPT_LINES - 1):], line]
        self._touch(board)

    async def task_finished(self, task: TaskRecord, result: Mapping[str, Any] | None,
                            link: str | None = None) -> None:
        board = self._boards.setdefault(task.id, _Board(task.id))
        stored = task.result.to_json() if task.result is not None else None
        board.final = outcome(task, result if result is not None else stored, link)
        self._touch(board)
        assert board.pump is not None
        await asyncio.shield(board.pump)
        self._boards.pop(task.id, None)
        await self._send_review(task, result if result is not None else stored)

    async def _send_review(self, task: TaskRecord, result: Mapping[str, Any] | None) -> None:
        """A review arrives whole, after its task's message: as many messages as it needs, split between lines
        under Telegram's limit (runner.review renders and escapes it)."""
        found = Review.from_json((result or {}).get("review"))
        if found is None:
            return
        title = f"Review of PR #{found.pr}" if found.pr is not None else f"Review, task {task.id}"
        for page in telegram_pages(found, title=title, limit=MAX_TEXT):
            try:
                await self.send(Message(page))
            except NotifyError:
                log.warning("part of the review of %s not delivered", task.id, exc_info=True)

    def message_of(self, task_id: str) -> int | None:
        board = self._boards.get(task_id)
        return board.message_id if board else None

    def _touch(self, board: _Board) -> None:
        board.dirty = True
        if board.pump is None or board.pump.done():
            board.pump = asyncio.create_task(self._pump(board), name=f"progress-{board.task_id}")

    async def _pump(self, board: _Board) -> None:
        # Between the check of `dirty` and the return there is no await, so a line that arrives while the
        # pump sleeps or sends is always picked up by this same pump.
        while board.dirty:
            wait = board.last_sent + self._interval - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            board.dirty = False
            message = board.final or Message(self._render(board))
            try:
                await self._show(board, message)
            except NotifyError:
                log.warning("progress of %s not delivered", board.task_id, exc_info=True)
            board.last_sent = self._clock()

    def _render(self, board: _Board) -> str:
        head = f"<b>Task</b> <code>{esc(board.task_id)}</code>\n"
        lines = list(board.lines)
        while lines:
            body = "\n".join(f"• {esc(clip(line, 500))}" for line in lines)
            if len(head) + len(body) <= MAX_TEXT:
                return head + body
            lines.pop(0)
        return head + "…"

    async def _show(self, board: _Board, message: Message) -> None:
        keyboard = markup(message)
        if board.message_id is None:
            sent = await self.call(lambda: self.bot.send_message(self.chat_id, message.text, parse_mode="HTML",
                                                                 reply_markup=keyboard))
            board.message_id = sent.message_id
            return
        message_id = board.message_id
        await self.call(lambda: self.bot.edit_message_text(text=message.text, chat_id=self.chat_id,
                                                           message_id=message_id, parse_mode="HTML",
                                                           reply_markup=keyboard))

    # one-off messages --------------------------------------------------------------------------------------

    async def send(self, message: Message, chat_id: int | None = None) -> int:
        sent = await self.call(lambda: self.bot.send_message(chat_id or self.chat_id, message.text, parse_mode="HTML",
                                                             reply_markup=markup(message)))
        return sent.message_id

    async def announce(self, text: str) -> None:
        await self.send(Message(esc(clip(text, MAX_TEXT // 2))))  # room to escape

    async def send_diff(self, number: int, diff: str, chat_id: int | None = None) -> None:
        """A short diff as an inline <pre> preview; a long one as a `.patch` document a phone can open."""
        target = chat_id or self.chat_id
        if not diff.strip():
            await self.send(Message(f"PR #{number}: the diff is empty."), target)
        elif len(diff) <= SHORT_DIFF:
            body = f'<pre><code class="language-diff">{esc(diff)}</code></pre>'
            await self.send(Message(f"<b>PR #{number}</b>\n{body}"), target)
        else:
            document = BufferedInputFile(diff.encode(), filename=f"pr-{number}.patch")
            await self.call(lambda: self.bot.send_document(target, document,
                                                           caption=f"PR #{number}: {diff.count(chr(10))} lines"))

    # ask ---------------------------------------------------------------------------------------------------

    async def ask(self, task_id: str, call: policy.ToolCall, decision: policy.Decision) -> bool:
        token = secrets.token_hex(8)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._asks[token] = _Asked(future, ("Allowed", "Denied"))
        shown = json.dumps(dict(call.input), ensure_ascii=False, default=str)
        text = (f"❓ <b>Task</b> <code>{esc(task_id)}</code> wants <b>{esc(call.tool)}</b>\n"
                f"{pre(clip(shown, 2500), 2700)}\n"
                f"Policy <code>{esc(decision.rule_id)}</code>: {esc(clip(decision.reason, 500))}")
        buttons = ((Button("✅ Allow", AskAnswer(token=token, allow=True).pack()),
                    Button("⛔ Deny", AskAnswer(token=token, allow=False).pack())),)
        try:
            await self.send(Message(text, buttons))
            return await future
        finally:
            self._asks.pop(token, None)

    async def ask_owner(self, text: str) -> bool:
        """`text` (plain, escaped here) with Go and Hold buttons; True on Go. Waits until it is answered: cancel
        the caller to stop waiting (a release's question, answered another way)."""
        token = secrets.token_hex(8)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._asks[token] = _Asked(future, ("Going ahead", "Holding"))
        buttons = ((Button("✅ Go", AskAnswer(token=token, allow=True).pack()),
                    Button("✋ Hold", AskAnswer(token=token, allow=False).pack())),)
        try:
            await self.send(Message(f"❓ {esc(clip(text, MAX_TEXT // 2))}", buttons))
            return await future
        finally:
            self._asks.pop(token, None)

    def answer(self, token: str, allow: bool) -> str | None:
        """The owner pressed a question's yes or no (Allow/Deny, Go/Hold): what the press is answered with, or
        None when the question is gone (answered, timed out)."""
        asked = self._asks.get(token)
        if asked is None or asked.future.done():
            return None
        asked.future.set_result(allow)
        return asked.replies[0] if allow else asked.replies[1]

    # plumbing ----------------------------------------------------------------------------------------------

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """One Bot API call: 429 waited out as Telegram asks, `message is not modified` is success (None)."""
        for _ in range(MAX_ATTEMPTS):
            try:
                async with asyncio.timeout(CALL_TIMEOUT):
                    return await make()
            except TelegramRetryAfter as exc:
                log.info("Telegram asks to retry after %ss", exc.retry_after)
                await asyncio.sleep(exc.retry_after)
            except TelegramBadRequest as exc:
                if "message is not modified" in exc.message:
                    return None  # type: ignore[return-value]  # an edit that changes nothing has done its job
                raise NotifyError(f"Telegram refused: {exc.message}") from exc
            except (TelegramAPIError, TimeoutError) as exc:
                raise NotifyError(f"Telegram call failed: {exc}") from exc
        raise NotifyError(f"Telegram kept asking to retry after {MAX_ATTEMPTS} attempts")

    async def aclose(self) -> None:
        pumps = [b.pump for b in self._boards.values() if b.pump is not None and not b.pump.done()]
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for asked in self._asks.values():
            if not asked.future.done():
                asked.future.set_result(False)
        await self.bot.session.close()
