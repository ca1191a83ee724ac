"""The owner's bot end to end: real aiogram long-polling a loopback Bot API fake, over stub `Actions`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import policy
from runner.models import TaskState
from runner.notify.telegram import PrAction
from runner.telegram.bot import kind_of
from runner.telegram.wiring import webhook_route
from tests.fakes.telegram import BOT_ID
from tests.fakes.telegram_bot import OWNER, STRANGER, Harness, StubActions, polling_bot

SHA = "b" * 40


@pytest.fixture
async def bot(tmp_path: Path) -> AsyncIterator[Harness[StubActions]]:
    async with polling_bot(tmp_path, StubActions) as harness:
        yield harness


RESULT = {"summary": "Added /balance", "files_changed": ["bot/app.py"], "diff": "--- a/bot/app.py\n+++ b/bot/app.py\n",
          "tests": {"command": "pytest -q", "exit_code": 0, "passed": True, "output_tail": ""},
          "usage": {"input_tokens": 10, "output_tokens": 5, "cost_usd": 0.01},
          "pr": {"number": 7, "url": "local://7", "branch": "agent/x", "head_sha": SHA}}


def test_kind_of_reads_fix_from_wording_or_explicit_word() -> None:
    assert kind_of("add a /balance command") == ("feature", "add a /balance command")
    assert kind_of("the /balance crash on empty ledger") == ("fix", "the /balance crash on empty ledger")
    assert kind_of("fix rounding") == ("fix", "rounding")
    assert kind_of("feature show errors nicely") == ("feature", "show errors nicely")


async def test_telegram_agent_conversation_progress_then_approve(bot: Harness[StubActions]) -> None:
    bot.fake.send_text(OWNER, "/agent add a /balance command")
    await bot.fake.wait_for(lambda: any("queued" in t for t in bot.replies(OWNER)))
    assert bot.ops.submitted == [("feature", "add a /balance command", False)]
    task = (await bot.store.list_tasks())[0]
    # The scheduler's progress lines, as fast as the supervisor produces them.
    for i in range(25):
        bot.notifier.task_progress(task.id, f"phase {i}: <reading> bot/app.py")
        await asyncio.sleep(0.01)
    proposed = await bot.store.transition(task.id, TaskState.PROPOSED, result=RESULT)
    await bot.notifier.task_finished(proposed, RESULT)
    assert len(bot.fake.sent("sendMessage")) == 1  # one message for the whole task
    assert 1 <= len(bot.fake.sent("editMessageText")) <= 5  # edited in place, not once per line
    board = max(mid for (chat, mid), m in bot.fake.messages.items() if m["from"]["id"] == BOT_ID)
    final = bot.fake.messages[(OWNER, board)]["text"]
    assert "PR #7" in final and "passed" in final and "bot/app.py" in final
    approve = next(data for text, data in bot.fake.buttons(OWNER, board) if "Approve" in text)
    bot.fake.press(OWNER, OWNER, board, approve)
    await bot.fake.wait_for(lambda: any("merged as" in t for t in bot.replies(OWNER)))
    assert bot.ops.approved == [(7, SHA)]
    assert "deploy deployed" in bot.replies(OWNER)[-1]
    # The buttons that were used are gone, so the decision cannot be pressed twice; the diff stays available.
    await bot.fake.wait_for(lambda: len(bot.fake.buttons(OWNER, board)) == 1)
    assert [text for text, _ in bot.fake.buttons(OWNER, board)] == ["📄 Show diff"]


async def test_telegram_show_diff_and_typed_approve_use_the_shown_head(bot: Harness[StubActions]) -> None:
    task = await bot.ops.submit(kind="feature", prompt="x", dry_run=False)
    await bot.store.transition(task.id, TaskState.PROPOSED, result=RESULT)
    bot.fake.send_text(OWNER, "/approve_pr 7")
    await bot.fake.wait_for(lambda: bool(bot.ops.approved))
    assert bot.ops.approved == [(7, SHA)]
    bot.fake.send_text(OWNER, "/approve_pr 8")
    await bot.fake.wait_for(lambda: any("No proposed task has PR #8" in t for t in bot.replies(OWNER)))
    sent = bot.fake.send_text(OWNER, "/help")
    await bot.fake.wait_for(lambda: any("/agent_status" in t for t in bot.replies(OWNER)))
    assert sent
    help_id = max(mid for (chat, mid), m in bot.fake.messages.items() if m["from"]["id"] == BOT_ID)
    bot.fake.press(OWNER, OWNER, help_id, PrAction(action="diff", number=7, sha=SHA).pack())
    await bot.fake.wait_for(lambda: any("language-diff" in t for t in bot.replies(OWNER)))


async def test_telegram_429_on_reply_is_waited_out(bot: Harness[StubActions]) -> None:
    bot.fake.fail_next("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    bot.fake.send_text(OWNER, "/agent_status")
    texts = await bot.said(OWNER, 1)
    assert "up 1h02m" in texts[-1] and "$0.5000" in texts[-1] and "PR #7: deployed, its errors watched" in texts[-1]
    assert len(bot.fake.sent("sendMessage")) == 2


COMMANDS = ["/agent add a command", "/dryrun add a command", "/review HEAD~1", "/approve_pr 7", "/reject_pr 7",
            "/tasks", "/task x", "/cancel x", "/agent_status", "/policy", "/policy history", "/policy rollback 1",
            "/help", "hello"]


async def test_telegram_refuses_strangers_commands_and_buttons(bot: Harness[StubActions]) -> None:
    task = await bot.ops.submit(kind="feature", prompt="x", dry_run=False)
    bot.ops.submitted.clear()
    await bot.store.transition(task.id, TaskState.PROPOSED, result=RESULT)
    for i, command in enumerate(COMMANDS, start=1):
        bot.fake.send_text(STRANGER, command)
        texts = await bot.said(STRANGER, i)
        assert texts[-1] == "This bot answers its owner only."
    bot.fake.send_document(STRANGER, "p.yaml", policy.default_text().encode(), "/policy set")
    await bot.said(STRANGER, len(COMMANDS) + 1)
    # A button from the owner's chat, forwarded and pressed by someone else.
    owner_message = bot.fake.send_text(OWNER, "hi")
    for action in ("approve", "reject", "diff"):
        bot.fake.press(STRANGER, OWNER, owner_message, PrAction(action=action, number=7, sha=SHA).pack())
    await bot.fake.wait_for(lambda: len(bot.fake.answered) >= 3)
    assert all(a.get("show_alert") in (True, "true") for a in bot.fake.answered)
    assert (bot.ops.submitted, bot.ops.approved, bot.ops.rejected, bot.ops.cancelled) == ([], [], [], [])
    refused = await bot.store.audit_log(event="refused")
    assert len(refused) == len(COMMANDS) + 1 + 3
    assert {e.actor for e in refused} == {f"telegram:{STRANGER}"}
    assert await bot.desk.store.history() == []
    assert [t.id for t in await bot.store.list_tasks()] == [task.id]


async def test_telegram_broken_policy_yaml_names_the_line_and_changes_nothing(bot: Harness[StubActions]) -> None:
    before = await bot.desk.active_text()
    broken = "schema: 1\nversion: broken\npaths: [unclosed\n"
    bot.fake.send_document(OWNER, "policy.yaml", broken.encode(), "/policy set")
    texts = await bot.said(OWNER, 1)
    assert "Policy not valid" in texts[-1] and "line " in texts[-1] and "active policy is unchanged" in texts[-1]
    assert await bot.desk.active_text() == before and await bot.desk.store.history() == []
    assert not bot.fake.buttons(OWNER, max(mid for (_, mid) in bot.fake.messages))


async def test_telegram_valid_policy_activates_only_after_confirm(bot: Harness[StubActions]) -> None:
    activated: list[policy.Policy] = []
    bot.desk.on_activate = activated.append
    text = policy.default_text().replace("version:", "version: chat-edit #", 1)
    bot.fake.send_document(OWNER, "policy.yaml", text.encode(), "/policy set")
    await bot.fake.wait_for(lambda: any("Confirm" in b for _, mid in bot.fake.messages
                                        for b, _d in bot.fake.buttons(OWNER, mid) if (OWNER, mid) in bot.fake.messages))
    proposal = max(mid for (_, mid) in bot.fake.messages)
    assert activated == [] and await bot.desk.store.history() == []
    confirm = next(d for b, d in bot.fake.buttons(OWNER, proposal) if "Confirm" in b)
    bot.fake.press(OWNER, OWNER, proposal, confirm)
    await bot.fake.wait_for(lambda: any("is active" in t for t in bot.replies(OWNER)))
    assert [p.sha256 for p in activated] == [policy.load(text).sha256]
    assert await bot.desk.active_text() == text
    assert bot.fake.buttons(OWNER, proposal) == []  # Confirm and Cancel are spent


async def _proposal(bot: Harness[StubActions], text: str) -> tuple[int, str]:
    before = set(bot.fake.messages)
    bot.fake.send_document(OWNER, "policy.yaml", text.encode(), "/policy set")
    await bot.fake.wait_for(lambda: any(bot.fake.buttons(*key) for key in set(bot.fake.messages) - before))
    proposal = max(mid for (chat, mid) in set(bot.fake.messages) - before if bot.fake.buttons(chat, mid))
    return proposal, next(d for b, d in bot.fake.buttons(OWNER, proposal) if "Confirm" in b)


async def test_telegram_policy_proposal_is_void_once_another_policy_was_activated(bot: Harness[StubActions]) -> None:
    """The owner saw a diff against the active policy; if it changed meanwhile (over the API, say), confirming
    would silently undo that change."""
    mine = policy.default_text().replace("version:", "version: from-chat #", 1)
    theirs = policy.default_text().replace("version:", "version: from-api #", 1)
    proposal, confirm = await _proposal(bot, mine)
    await bot.desk.activate(theirs, actor="owner")
    bot.fake.press(OWNER, OWNER, proposal, confirm)
    await bot.fake.wait_for(lambda: any("Not activated" in t for t in bot.replies(OWNER)))
    assert "the active policy changed after this proposal was made" in bot.replies(OWNER)[-1]
    assert await bot.desk.active_text() == theirs


async def test_telegram_policy_proposal_expires(bot: Harness[StubActions]) -> None:
    from runner.service.policy_store import PROPOSAL_SECONDS

    now = [1000.0]
    bot.desk.clock = lambda: now[0]
    proposal, confirm = await _proposal(bot, policy.default_text().replace("version:", "version: late #", 1))
    now[0] += PROPOSAL_SECONDS + 1
    bot.fake.press(OWNER, OWNER, proposal, confirm)
    await bot.fake.wait_for(lambda: any("Not activated" in t for t in bot.replies(OWNER)))
    assert "this proposal has expired" in bot.replies(OWNER)[-1]
    assert await bot.desk.store.history() == []


async def test_telegram_webhook_refuses_a_wrong_secret_and_feeds_a_right_one(bot: Harness[StubActions]) -> None:
    import httpx
    from aiogram import Dispatcher
    from starlette.applications import Starlette

    seen: list[int] = []
    dp = Dispatcher()
    dp.message.register(lambda message: seen.append(message.message_id))
    app = Starlette(routes=[webhook_route(dp, bot.notifier.bot, "s3cret")])
    update = {"update_id": 1, "message": {"message_id": 5, "date": 0, "chat": {"id": OWNER, "type": "private"},
                                          "from": {"id": OWNER, "is_bot": False, "first_name": "o"}, "text": "x"}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        wrong = await client.post("/telegram/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "no"})
        right = await client.post("/telegram/webhook", json=update,
                                  headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret"})
    assert (wrong.status_code, right.status_code) == (401, 200)
    assert seen == [5]


async def test_telegram_review_of_a_pr_arrives_whole_after_the_task_message(bot: Harness[StubActions]) -> None:
    from runner.models import RunResult
    from runner.review import Finding, Review, pr_request

    bot.fake.send_text(OWNER, "/review #3")
    await bot.fake.wait_for(lambda: bool(bot.ops.submitted))
    assert bot.ops.submitted == [("review", pr_request(3), True)]  # the PR's head against its base
    task = (await bot.store.list_tasks())[0]
    findings = tuple(Finding("bot/app.py", i + 1, "minor", f"point {i} <b>&</b> " + "word " * 120) for i in range(25))
    result = RunResult(task_id=task.id, status=TaskState.DIFF_READY, reason="review: 25 findings",
                       review=Review(summary="Mostly fine.", findings=findings, pr=3)).to_json()
    done = await bot.store.transition(task.id, TaskState.DIFF_READY, reason="review: 25 findings", result=result)
    await bot.notifier.task_finished(done, result)
    texts = [s.params["text"] for s in bot.fake.sent("sendMessage")]
    first = next(i for i, t in enumerate(texts) if t.startswith("<b>Review of PR #3</b> · 25 findings"))
    pages = texts[first:]
    assert first >= 1 and len(pages) >= 4 and all(len(p) < 4096 for p in pages)  # after the task's message
    assert [p.split("\n", 1)[0] for p in pages[1:]] == [
        f"<b>Review of PR #3</b> (continued, {i}/{len(pages)})" for i in range(2, len(pages) + 1)]
    shown = "\n".join(pages)
    for finding in findings:
        assert f"<code>bot/app.py:{finding.line}</code>" in shown
        assert finding.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").strip() in shown
