"""The owner's chat: aiogram routers for commands, the policy conversation and buttons, owner-only, over `Actions`.

Runs inside the supervisor process (one place holds the Telegram token, the scheduler and the store; no
second API hop to secure). Everything the bot does goes through `Actions`, which runner.telegram.wiring's
`ServiceActions` implements over the running `Service` with runner.service.operations, the functions the
HTTP routes call: the chat only parses and renders, and audits nothing itself.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiogram import Bot, Dispatcher, F, Router
from aiogram.filters import Command, CommandObject
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery
from aiogram.types import Message as TgMessage

import policy
from runner.errors import NotifyError, ProposalVoid, RunnerError
from runner.notify.base import Button, Message
from runner.notify.telegram import AskAnswer, PrAction, TelegramNotifier, clip, esc, markup, pre
from runner.review import pr_request
from runner.service.operations import PolicyProposal
from runner.service.policy_store import PolicyDesk
from runner.store import TaskRecord
from runner.telegram.followups import FollowUpActions, follow_up_router

FIX_WORDS = re.compile(r"\b(fix|bug|broken|crash\w*|error|exception|traceback|fails?|failing|regression)\b", re.I)
MAX_POLICY_BYTES = 256_000
HELP = """<b>agent-runner</b>
/agent &lt;task&gt; — a feature, or a fix if it reads like one (<code>/agent fix …</code> to say so)
/dryrun &lt;task&gt; — the diff only, no PR
/review [N | ref] — a read-only review of PR N (posted on it) or of a commit
/approve_pr N · /reject_pr N — the PR you were shown
/revise N &lt;text&gt; — a follow-up on PR N (or reply to the task's message)
/tasks · /task ID · /cancel ID
/agent_status — health, queue, today's cost
/policy · /policy diff · /policy history · /policy rollback V
send a YAML file captioned <code>/policy set</code> to propose a new policy
"""


@dataclass(frozen=True, slots=True)
class Status:
    version: str
    uptime_seconds: float
    running: int
    waiting: int
    max_running: int
    cost_today_usd: float
    open_tasks: int
    releases: tuple[str, ...] = ()
    """One line per release in flight or under its post-deploy watch."""


class Actions(Protocol):
    """What the owner can make the supervisor do from the chat. Refusals are `RunnerError`s with a message
    for the owner (PolicyLoadError for a policy that does not load)."""

    async def submit(self, *, kind: str, prompt: str, dry_run: bool) -> TaskRecord:
        """Admit a task (RunnerError when a limit refuses it)."""

    async def approve(self, number: int, head_sha: str) -> str:
        """Merge PR `number` only at `head_sha`, deploy; a one-line outcome."""

    async def reject(self, number: int) -> str:
        """Close PR `number`; a one-line outcome."""

    async def tasks(self, limit: int) -> list[TaskRecord]:
        """The newest tasks first."""

    async def task(self, task_id: str) -> TaskRecord:
        """One task (TaskError when unknown)."""

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a queued or running task (TaskError otherwise)."""

    async def pr_task(self, number: int) -> TaskRecord | None:
        """The proposed task whose PR is `number`."""

    async def status(self) -> Status:
        """Health, queue and today's cost."""

    async def propose_policy(self, text: str, name: str) -> PolicyProposal:
        """Validate `text` and hold it for the owner's Confirm (PolicyLoadError when it is not valid)."""

    async def confirm_policy(self, token: str) -> policy.Policy:
        """Activate a held proposal (ProposalVoid when it expired or the policy changed since)."""

    def withdraw_policy(self, token: str) -> None:
        """Forget a held proposal (the owner pressed Cancel)."""

    async def rollback_policy(self, version: int) -> policy.Policy:
        """Make recorded policy `version` active again (PolicyVersionNotFound when there is none)."""

    async def refuse(self, actor: str, reason: str, **detail: Any) -> None:
        """Audit a refusal of someone who is not the owner."""


class PolicyConfirm(CallbackData, prefix="pol"):
    token: str
    ok: bool


def kind_of(words: str) -> tuple[str, str]:
    """`/agent` arguments → (kind, prompt): an explicit leading `fix`/`feature`, else by wording."""
    head, _, rest = words.strip().partition(" ")
    if head.lower() in ("fix", "feature") and rest.strip():
        return head.lower(), rest.strip()
    return ("fix" if FIX_WORDS.search(words) else "feature"), words.strip()


def describe(task: TaskRecord) -> str:
    line = f"<code>{esc(task.id)}</code> {esc(task.kind)} <b>{esc(task.state.value)}</b>"
    line += f" — {esc(clip(task.prompt.splitlines()[0] if task.prompt else '', 80))}"
    return line + (f"\n   {esc(clip(task.reason, 200))}" if task.reason else "")


def build_dispatcher(ops: Actions, notifier: TelegramNotifier, owner_id: int, desk: PolicyDesk) -> Dispatcher:
    """The owner's router first; whatever it does not take (anyone else) lands in the refusing one."""
    dp = Dispatcher()
    if isinstance(ops, FollowUpActions):  # before the owner's router, whose last handler takes any message
        dp.include_router(follow_up_router(ops, notifier, owner_id))
    dp.include_router(owner_router(ops, notifier, owner_id, desk))
    dp.include_router(outsider_router(ops, owner_id))
    return dp


def outsider_router(ops: Actions, owner_id: int) -> Router:
    router = Router(name="outsiders")
    router.message.filter(F.from_user.id != owner_id)
    router.callback_query.filter(F.from_user.id != owner_id)

    @router.message()
    async def refuse_message(message: TgMessage) -> None:
        who = message.from_user.id if message.from_user else None
        await ops.refuse(f"telegram:{who}", "not the owner", chat=message.chat.id,
                         text=clip(message.text or message.caption or "", 200))
        await message.answer("This bot answers its owner only.")

    @router.callback_query()
    async def refuse_button(query: CallbackQuery) -> None:
        await ops.refuse(f"telegram:{query.from_user.id}", "not the owner", button=clip(query.data or "", 64))
        await query.answer("Only the owner can press this.", show_alert=True)

    return router


def owner_router(ops: Actions, notifier: TelegramNotifier, owner_id: int, desk: PolicyDesk) -> Router:
    router = Router(name="owner")
    router.message.filter(F.from_user.id == owner_id)
    router.callback_query.filter(F.from_user.id == owner_id)

    async def reply(message: TgMessage, text: str, buttons: tuple[tuple[Button, ...], ...] = ()) -> None:
        await notifier.send(Message(clip(text), buttons), message.chat.id)

    async def start(message: TgMessage, kind: str, prompt: str, dry_run: bool) -> None:
        if not prompt:
            await reply(message, "Say what to do, e.g. <code>/agent add a /balance command</code>")
            return
        try:
            task = await ops.submit(kind=kind, prompt=prompt, dry_run=dry_run)
        except RunnerError as exc:
            await reply(message, f"Not started: {esc(str(exc))}")
            return
        notifier.task_progress(task.id, f"queued: {kind}{' (dry run)' if dry_run else ''}: {clip(prompt, 200)}")

    @router.message(Command("agent"))
    async def agent(message: TgMessage, command: CommandObject) -> None:
        kind, prompt = kind_of(command.args or "")
        await start(message, kind, prompt, False)

    @router.message(Command("dryrun"))
    async def dryrun(message: TgMessage, command: CommandObject) -> None:
        kind, prompt = kind_of(command.args or "")
        await start(message, kind, prompt, True)

    @router.message(Command("review"))
    async def review(message: TgMessage, command: CommandObject) -> None:
        ref = (command.args or "HEAD").strip()
        if ref.lstrip("#").isdigit():  # a pull request: its head against its base, the findings posted on it
            await start(message, "review", pr_request(int(ref.lstrip("#"))), True)
            return
        await start(message, "review", f"Review the change {ref} and report findings; change nothing.", True)

    async def pr_number(message: TgMessage, command: CommandObject) -> int | None:
        args = (command.args or "").strip().lstrip("#")
        if args.isdigit():
            return int(args)
        await reply(message, f"Usage: <code>/{esc(command.command)} N</code>")
        return None

    async def do_approve(chat: TgMessage, number: int, head_sha: str) -> bool:
        try:
            outcome = await ops.approve(number, head_sha)
        except RunnerError as exc:
            await reply(chat, f"PR #{number} not merged: {esc(str(exc))}")
            return False
        await reply(chat, esc(outcome))
        return True

    async def do_reject(chat: TgMessage, number: int) -> bool:
        try:
            outcome = await ops.reject(number)
        except RunnerError as exc:
            await reply(chat, f"PR #{number} not rejected: {esc(str(exc))}")
            return False
        await reply(chat, esc(outcome))
        return True

    async def spent(message: TgMessage, number: int, sha: str) -> None:
        """The PR was approved or rejected: its Approve / Reject buttons go, Show diff stays."""
        diff = Button("📄 Show diff", PrAction(action="diff", number=number, sha=sha).pack())
        with contextlib.suppress(NotifyError):  # too old to edit: the release or rejection stands anyway
            await notifier.call(lambda: message.edit_reply_markup(reply_markup=markup(Message("", ((diff,),)))))

    @router.message(Command("approve_pr"))
    async def approve_pr(message: TgMessage, command: CommandObject) -> None:
        number = await pr_number(message, command)
        if number is None:
            return
        task = await ops.pr_task(number)
        pr = task.result.pr if task is not None and task.result is not None else None
        if pr is None or not pr.head_sha:
            await reply(message, f"No proposed task has PR #{number}; nothing to approve.")
            return
        await do_approve(message, number, pr.head_sha)  # the head the owner was shown

    @router.message(Command("reject_pr"))
    async def reject_pr(message: TgMessage, command: CommandObject) -> None:
        number = await pr_number(message, command)
        if number is not None:
            await do_reject(message, number)

    @router.message(Command("tasks"))
    async def tasks(message: TgMessage) -> None:
        found = await ops.tasks(15)
        await reply(message, "\n".join(describe(t) for t in found) if found else "No tasks yet.")

    @router.message(Command("task"))
    async def task(message: TgMessage, command: CommandObject) -> None:
        try:
            found = await ops.task((command.args or "").strip())
        except RunnerError as exc:
            await reply(message, esc(str(exc)))
            return
        await reply(message, describe(found) + "\n" + esc(clip(found.prompt, 1500)))

    @router.message(Command("cancel"))
    async def cancel(message: TgMessage, command: CommandObject) -> None:
        try:
            found = await ops.cancel((command.args or "").strip())
        except RunnerError as exc:
            await reply(message, f"Not cancelled: {esc(str(exc))}")
            return
        await reply(message, describe(found))

    @router.message(Command("agent_status"))
    async def status(message: TgMessage) -> None:
        s = await ops.status()
        hours, rest = divmod(int(s.uptime_seconds), 3600)
        await reply(message, f"✅ agent-runner {esc(s.version)}, up {hours}h{rest // 60:02d}m\n"
                             f"sandboxes {s.running}/{s.max_running}, waiting {s.waiting}, open tasks {s.open_tasks}\n"
                             f"cost today ${s.cost_today_usd:.4f}"
                             + "".join(f"\n{esc(line)}" for line in s.releases))

    @router.message(Command("help", "start"))
    async def help_(message: TgMessage) -> None:
        await reply(message, HELP)

    # policy -------------------------------------------------------------------------------------------------

    @router.message(F.document, Command("policy"))
    async def policy_file(message: TgMessage, command: CommandObject, bot: Bot) -> None:
        if (command.args or "").strip() != "set" or message.document is None:
            await reply(message, "Caption the YAML file with <code>/policy set</code>.")
            return
        if (message.document.file_size or 0) > MAX_POLICY_BYTES:
            await reply(message, "That policy file is too large.")
            return
        buffer = io.BytesIO()
        await bot.download(message.document.file_id, destination=buffer)
        await propose(message, buffer.getvalue(), message.document.file_name or "policy.yaml")

    async def propose(message: TgMessage, raw: bytes, name: str) -> None:
        try:
            proposal = await ops.propose_policy(raw.decode(), name)
        except UnicodeDecodeError:
            await reply(message, "❌ The policy must be UTF-8 text. The active policy is unchanged.")
            return
        except policy.PolicyLoadError as exc:
            problems = "\n".join(f"line {line if line is not None else '?'}: {key + ': ' if key else ''}{msg}"
                                 for line, key, msg in exc.problems[:20])
            await reply(message, f"❌ Policy not valid ({esc(exc.message)}); the active policy is unchanged.\n"
                                 f"{pre(problems, 3500)}")
            return
        proposed, token = proposal.policy, proposal.token
        await reply(message, f"Policy <b>{esc(proposed.version)}</b> is valid; {len(proposed.examples)} examples pass."
                             f"\n{pre(proposal.diff or '(no change)', 3500)}",
                    ((Button("✅ Confirm", PolicyConfirm(token=token, ok=True).pack()),
                      Button("✖ Cancel", PolicyConfirm(token=token, ok=False).pack())),))

    @router.message(Command("policy"))
    async def policy_command(message: TgMessage, command: CommandObject) -> None:
        verb, _, arg = (command.args or "").strip().partition(" ")
        if verb == "history":
            versions = await desk.store.history()
            lines = [f"v{v.version} {esc(v.name)} <code>{v.sha256[:12]}</code> by {esc(v.actor)} "
                     f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(v.at))}" for v in versions]
            await reply(message, "\n".join(lines) or "No versions recorded yet: the configured policy is active.")
        elif verb == "diff":
            versions = await desk.store.history(2)
            new = versions[0].text if versions else desk.initial_text
            old = versions[1].text if len(versions) > 1 else desk.initial_text
            diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "previous", "active"))
            await reply(message, pre(diff or "(no change)", 4000))
        elif verb == "rollback" and arg.strip().lstrip("v").isdigit():
            version = int(arg.strip().lstrip("v"))
            try:
                loaded = await ops.rollback_policy(version)
            except (RunnerError, policy.PolicyLoadError) as exc:
                await reply(message, f"Policy v{version} not activated: {esc(str(exc))}")
                return
            await reply(message, f"Policy v{version} ({esc(loaded.version)}) is active again.")
        elif verb == "set":
            await reply(message, "Send the YAML as a file with the caption <code>/policy set</code>.")
        elif verb:
            await reply(message, "Usage: /policy [diff | history | rollback V]")
        else:
            active = policy.load(await desk.active_text())
            await reply(message, f"Policy <b>{esc(active.version)}</b> <code>{active.sha256[:12]}</code>\n"
                                 f"profiles: {esc(', '.join(active.profiles))}\nrules: {len(active.rules)}, "
                                 f"examples: {len(active.examples)}\ntests: <code>{esc(active.test_command)}</code>")

    # buttons ------------------------------------------------------------------------------------------------

    @router.callback_query(PrAction.filter())
    async def pr_button(query: CallbackQuery, callback_data: PrAction) -> None:
        await query.answer()
        chat = query.message
        if not isinstance(chat, TgMessage):
            return
        if callback_data.action == "approve":
            if await do_approve(chat, callback_data.number, callback_data.sha):
                await spent(chat, callback_data.number, callback_data.sha)
        elif callback_data.action == "reject":
            if await do_reject(chat, callback_data.number):
                await spent(chat, callback_data.number, callback_data.sha)
        else:
            task = await ops.pr_task(callback_data.number)
            diff = task.result.diff if task is not None and task.result is not None else ""
            await notifier.send_diff(callback_data.number, diff, chat.chat.id)

    @router.callback_query(AskAnswer.filter())
    async def ask_button(query: CallbackQuery, callback_data: AskAnswer) -> None:
        reply = notifier.answer(callback_data.token, callback_data.allow)
        await query.answer(reply or "This question has expired.")

    @router.callback_query(PolicyConfirm.filter())
    async def policy_button(query: CallbackQuery, callback_data: PolicyConfirm) -> None:
        message = query.message if isinstance(query.message, TgMessage) else None
        if message is not None:  # Confirm and Cancel are spent whatever the answer
            with contextlib.suppress(NotifyError):
                await notifier.call(lambda: message.edit_reply_markup(reply_markup=None))
        if not callback_data.ok:
            ops.withdraw_policy(callback_data.token)
            await query.answer("Cancelled; the active policy is unchanged.")
            return
        try:
            loaded = await ops.confirm_policy(callback_data.token)
        except ProposalVoid as exc:
            await query.answer("Not activated")
            if message is not None:
                await reply(message, f"❌ Not activated: {esc(str(exc))}. The active policy is unchanged.")
            return
        await query.answer("Activated")
        if message is not None:
            await reply(message, f"✅ Policy <b>{esc(loaded.version)}</b> is active.")

    @router.message()
    async def unknown(message: TgMessage) -> None:
        await reply(message, "I did not understand that; /help lists what I can do.")

    return router
