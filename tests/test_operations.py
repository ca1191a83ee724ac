"""runner.service.operations: each owner action audited once, under one name, whichever front end asked.

The chat's side is the real `ServiceActions` adapter (what the bot calls); the API's side is the same function
with the API's caller, as runner.api.routes calls it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import policy
from runner.errors import PolicyVersionNotFound, RateLimited, TaskError, TaskNotFound
from runner.models import PrRef, RunResult, TaskState
from runner.service import operations
from runner.service.operations import Caller
from runner.telegram.wiring import ServiceActions
from tests.fakes.service import held_service

API = Caller("owner", "api", {"path": "/x", "client": "127.0.0.1"})


def _named(name: str) -> str:
    return policy.default_text().replace('version: "default-2025-06"', f'version: "{name}"', 1)


async def test_policy_rollback_is_audited_policy_rolled_back_from_the_api_and_the_chat(tmp_path: Path) -> None:
    async with held_service(tmp_path) as (svc, _):
        desk, store = svc.policies, svc.store
        first = await operations.activate_policy(desk, store, API, _named("one"))
        await operations.activate_policy(desk, store, API, _named("two"))
        v1 = (await desk.store.history())[-1].version
        over_api = await operations.rollback_policy(desk, store, API, v1)
        in_chat = await ServiceActions(svc).rollback_policy(v1)
        with pytest.raises(PolicyVersionNotFound):
            await ServiceActions(svc).rollback_policy(999)
        rolled = await store.audit_log(event="policy_rolled_back")
        activated = await store.audit_log(event="policy_activated")
    assert over_api.sha256 == in_chat.sha256 == first.sha256
    assert [(e.actor, e.detail["to"]) for e in rolled] == [("owner", v1), ("telegram:owner", v1)]
    assert [e.detail["version"] for e in activated] == ["one", "two"]  # a rollback is not also an activation


async def test_rate_limit_refusals_are_audited_alike_from_the_api_and_the_chat(tmp_path: Path) -> None:
    async with held_service(tmp_path, commands=1) as (svc, _):
        await operations.queue_task(svc, API, kind="feature", prompt="one", dry_run=True)
        with pytest.raises(RateLimited) as over_api:
            await operations.queue_task(svc, API, kind="feature", prompt="two", dry_run=True)
        with pytest.raises(RateLimited) as in_chat:
            await ServiceActions(svc).submit(kind="feature", prompt="three", dry_run=True)
        refused = await svc.store.audit_log(event="refused")
        tasks = await svc.store.list_tasks()
    assert len(tasks) == 1
    assert over_api.value.limit == in_chat.value.limit == "1 commands per hour"
    assert 3500 < over_api.value.retry_after <= 3600
    assert [(e.actor, e.detail["reason"], sorted(e.detail)) for e in refused] == [
        ("owner", "rate_limited", ["client", "limit", "path", "reason", "retry_after"]),
        ("telegram:owner", "rate_limited", ["limit", "reason", "retry_after"]),
    ]


async def test_reject_closes_nothing_without_a_forge_and_cancel_names_an_unknown_task(tmp_path: Path) -> None:
    async with held_service(tmp_path) as (svc, _):
        with pytest.raises(TaskError, match="no forge"):
            await operations.reject(svc, API, 7)
        with pytest.raises(TaskError, match="no forge"):
            await operations.approve(svc, API, 7, "a" * 40)
        with pytest.raises(TaskNotFound):
            await operations.cancel_task(svc, API, "nope")
        audited = [e.event for e in await svc.store.audit_log()]
    assert "reject" not in audited and "approve" not in audited  # refused before anything was recorded


async def test_the_chat_finds_the_task_of_a_pr_through_the_store(tmp_path: Path) -> None:
    async with held_service(tmp_path) as (svc, hold):
        task = await operations.queue_task(svc, API, kind="fix", prompt="the crash", dry_run=False)
        await svc.scheduler.cancel(task.id)
        result = RunResult(task.id, TaskState.PROPOSED, pr=PrRef(7, "local://7", "agent/x", "c" * 40))
        await svc.store.transition(task.id, TaskState.PROPOSED, result=result)
        found = await ServiceActions(svc).pr_task(7)
        missing = await ServiceActions(svc).pr_task(8)
    assert found is not None and found.id == task.id and found.result == result
    assert missing is None
