"""Metrics: the exposition text, and that SQLite does the counting however long the history."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runner.models import TaskId, TaskState
from runner.service import metrics
from runner.store import Store
from tests.fakes.metrics import insert_rows, per_row_render


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "state.db") as s:
        yield s


async def _task(store: Store, state: TaskState, *, source: str = "api", seconds: float = 0.0,
                result: dict[str, Any] | None = None) -> TaskId:
    task = await store.create_task(kind="command", prompt="p", repo="r", source=source, requested_by="owner",
                                   dry_run=True)
    if state is not TaskState.QUEUED or result is not None:
        await store.transition(task.id, state, result=result)
    # Fixed clock values, so the duration sum is exact.
    with store._lock:
        store._db.execute("UPDATE tasks SET created_at = 1000.0, updated_at = ? WHERE id = ?",
                          (1000.0 + seconds, task.id))
    return task.id


def _usage(tokens_in: Any, tokens_out: Any, cost: Any) -> dict[str, Any]:
    return {"status": "done", "usage": {"input_tokens": tokens_in, "output_tokens": tokens_out, "cost_usd": cost}}


def _sample(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


async def test_render_of_an_empty_store_has_every_series_at_zero(store: Store) -> None:
    text = await metrics.render(store, sandboxes_running=0)
    assert text == await per_row_render(store, sandboxes_running=0)
    assert _sample(text, "agent_runner_tasks{") == [f'agent_runner_tasks{{state="{s.value}"}} 0' for s in TaskState]
    assert _sample(text, "agent_runner_policy_decisions_total") == []
    assert "agent_runner_model_cost_usd_total 0.000000\n" in text
    assert "agent_runner_task_duration_seconds_sum 0.000\nagent_runner_task_duration_seconds_count 0\n" in text
    assert text.endswith("# TYPE agent_runner_sandboxes_running gauge\nagent_runner_sandboxes_running 0\n")


async def test_render_counts_tasks_usage_durations_and_audit_events(store: Store) -> None:
    await _task(store, TaskState.FAILED, seconds=10.5, result=_usage(100, 20, 0.25))
    await _task(store, TaskState.PROPOSED, source="alertmanager", seconds=4.25, result=_usage(7, 3, 0.125))
    await _task(store, TaskState.FAILED, source="alertmanager", seconds=2.0)
    await _task(store, TaskState.RUNNING, seconds=99.0, result={"status": "running"})  # not finished: no duration
    await _task(store, TaskState.QUEUED)
    for effect, decision in [("allow", "allow"), ("allow", "allow"), ("ask", "deny"), ("deny", "deny")]:
        await store.audit("t", "agent", "tool_decision", {"policy_effect": effect, "decision": decision, "tool": "x"})
    await store.audit("t", "agent", "tool_decision", {"policy_effect": "deny"})  # no decision key: "None"
    for reason in ["rate_limited", "rate_limited", 'bad "token"\nline\\2']:
        await store.audit(None, "api", "refused", {"reason": reason})

    text = await metrics.render(store, sandboxes_running=2)

    assert text == await per_row_render(store, sandboxes_running=2)
    assert 'agent_runner_tasks{state="failed"} 2' in text.splitlines()
    assert 'agent_runner_tasks{state="queued"} 1' in text.splitlines()
    assert 'agent_runner_tasks{state="deployed"} 0' in text.splitlines()
    assert _sample(text, "agent_runner_policy_decisions_total{") == [
        'agent_runner_policy_decisions_total{effect="allow",decision="allow"} 2',
        'agent_runner_policy_decisions_total{effect="ask",decision="deny"} 1',
        'agent_runner_policy_decisions_total{effect="deny",decision="None"} 1',
        'agent_runner_policy_decisions_total{effect="deny",decision="deny"} 1',
    ]
    assert _sample(text, "agent_runner_refusals_total{") == [
        'agent_runner_refusals_total{reason="bad \\"token\\"\\nline\\\\2"} 1',
        'agent_runner_refusals_total{reason="rate_limited"} 2',
    ]
    assert _sample(text, "agent_runner_model_") == [
        'agent_runner_model_tokens_total{direction="input"} 107',
        'agent_runner_model_tokens_total{direction="output"} 23',
        "agent_runner_model_cost_usd_total 0.375000",
    ]
    assert _sample(text, "agent_runner_task_duration_seconds_") == [
        "agent_runner_task_duration_seconds_sum 16.750",
        "agent_runner_task_duration_seconds_count 3",
    ]
    assert [line for line in _sample(text, "agent_runner_autofix_tasks{") if not line.endswith(" 0")] == [
        'agent_runner_autofix_tasks{state="proposed"} 1',
        'agent_runner_autofix_tasks{state="failed"} 1',
    ]
    assert "agent_runner_sandboxes_running 2" in text.splitlines()


async def test_render_labels_odd_detail_values_as_the_per_row_count_did(store: Store) -> None:
    # Non-string values get str() of the decoded JSON, and values that print alike are one series.
    odd: list[Any] = [True, 1, "1", None, 1.5, {"b": 1, "a": [1, "x"]}, [], "A", "caf\u00e9", 0, False]
    for value in odd:
        await store.audit(None, "api", "refused", {"reason": value})
        await store.audit("t", "agent", "tool_decision", {"policy_effect": value, "decision": "allow"})
    await store.audit(None, "api", "refused", {})
    with store._lock:  # the same string written with an escape: another JSON text, the same label
        store._db.execute("INSERT INTO audit (at, actor, event, detail) VALUES (0, 'api', 'refused', ?)",
                          ('{"reason": "\\u0041"}',))
    await _task(store, TaskState.DEPLOYED, result=_usage(2.9, True, 1))
    await _task(store, TaskState.DEPLOYED, result={"usage": None})
    await _task(store, TaskState.DEPLOYED, result={"usage": {"cost_usd": "0.5"}})

    text = await metrics.render(store, sandboxes_running=0)

    assert text == await per_row_render(store, sandboxes_running=0)
    assert 'agent_runner_refusals_total{reason="A"} 2' in text.splitlines()
    assert 'agent_runner_refusals_total{reason="None"} 2' in text.splitlines()
    assert 'agent_runner_refusals_total{reason="True"} 1' in text.splitlines()
    assert 'agent_runner_refusals_total{reason="1"} 2' in text.splitlines()
    assert 'agent_runner_model_tokens_total{direction="input"} 2' in text.splitlines()
    assert "agent_runner_model_cost_usd_total 1.500000" in text.splitlines()


async def test_render_matches_the_per_row_count_on_a_random_history(store: Store) -> None:
    rnd = random.Random(3)
    states = list(TaskState)
    for _ in range(300):
        result = rnd.choice([None, {"status": "x"}, _usage(rnd.randint(0, 9999), rnd.randint(0, 999),
                                                           round(rnd.random(), 4))])
        await _task(store, rnd.choice(states), source=rnd.choice(["api", "alertmanager", "telegram"]),
                    seconds=rnd.randint(0, 4000) / 8, result=result)
    for _ in range(500):
        await store.audit("t", "agent", "tool_decision", {"policy_effect": rnd.choice(["allow", "ask", "deny"]),
                                                          "decision": rnd.choice(["allow", "deny"])})
        await store.audit(None, "api", "refused", {"reason": rnd.choice(["rate_limited", "bad_token", "x\ny"])})
    assert await metrics.render(store, sandboxes_running=1) == await per_row_render(store, sandboxes_running=1)


async def test_render_aggregates_in_sqlite_without_reading_rows(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks, audit = 20_000, 50_000
    states = list(TaskState)
    task_rows = [
        (f"t{i:05d}", "command", "p", "r", "alertmanager" if i % 4 == 0 else "api", "owner", 1,
         states[i % len(states)].value, 1000.0, 1000.0 + (i % 8) / 4,
         json.dumps(_usage(i % 100, 1, 0.001)) if i % 2 else None)
        for i in range(tasks)
    ]
    audit_rows = [
        (1000.0, None, "agent", "tool_decision" if i % 5 else "refused",
         json.dumps({"policy_effect": "allow" if i % 3 else "ask", "decision": "allow", "reason": "rate_limited"}))
        for i in range(audit)
    ]
    insert_rows(store, task_rows, audit_rows)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("metrics read rows into Python")

    monkeypatch.setattr(Store, "list_tasks", refuse)
    monkeypatch.setattr(Store, "audit_log", refuse)
    text = (await metrics.render(store, sandboxes_running=0)).splitlines()

    per_state = tasks // len(states)  # 20_000 = 15 * 1333 + 5: the first five states hold one more
    assert [line.rsplit(" ", 1)[1] for line in text if line.startswith("agent_runner_tasks{")] == [
        str(per_state + (i < tasks % len(states))) for i in range(len(states))
    ]
    decided = [i for i in range(audit) if i % 5]
    assert _sample("\n".join(text), "agent_runner_policy_decisions_total{") == [
        f'agent_runner_policy_decisions_total{{effect="allow",decision="allow"}} {sum(1 for i in decided if i % 3)}',
        f'agent_runner_policy_decisions_total{{effect="ask",decision="allow"}} {sum(1 for i in decided if not i % 3)}',
    ]
    assert f'agent_runner_refusals_total{{reason="rate_limited"}} {audit // 5}' in text
    odd = range(1, tasks, 2)
    assert f'agent_runner_model_tokens_total{{direction="input"}} {sum(i % 100 for i in odd)}' in text
    assert f'agent_runner_model_tokens_total{{direction="output"}} {len(odd)}' in text
    assert f"agent_runner_model_cost_usd_total {len(odd) * 0.001:.6f}" in text
    finished = [i for i in range(tasks) if states[i % len(states)] in metrics.FINISHED_STATES]
    assert f"agent_runner_task_duration_seconds_sum {sum((i % 8) / 4 for i in finished):.3f}" in text
    assert f"agent_runner_task_duration_seconds_count {len(finished)}" in text
    autofix = Counter(states[i % len(states)] for i in range(0, tasks, 4))
    assert [line for line in text if line.startswith("agent_runner_autofix_tasks{")] == [
        f'agent_runner_autofix_tasks{{state="{s.value}"}} {autofix[s]}' for s in states
    ]


async def test_release_states_are_a_gauge_when_there_is_a_forge(tmp_path: Path) -> None:
    async with Store(tmp_path / "state.db") as store:
        without = await metrics.render(store, sandboxes_running=0)
        with_forge = await metrics.render(store, sandboxes_running=0, releases={"rolled_back": 2, "deployed": 1})
    assert "agent_runner_releases" not in without
    lines = with_forge.splitlines()
    assert 'agent_runner_releases{state="rolled_back"} 2' in lines
    assert 'agent_runner_releases{state="deployed"} 1' in lines
    assert 'agent_runner_releases{state="watching"} 0' in lines
