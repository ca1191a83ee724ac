"""The per-row count /metrics did before SQLite counted, kept as the oracle (tests) and the baseline (bench)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from runner.models import TaskState
from runner.service import metrics
from runner.store import DurationTotals, Store, UsageTotals


async def per_row_counts(store: Store) -> metrics.Counts:
    """Every task and audit row read into Python and counted there, as the handler did per scrape."""
    tasks = await store.list_tasks(limit=1_000_000)
    decided = await store.audit_log(event="tool_decision")
    refused = await store.audit_log(event="refused")
    usage = [t.result.usage for t in tasks if t.result is not None]
    finished = [t.updated_at - t.created_at for t in tasks if t.state.terminal or t.state is TaskState.PROPOSED]
    return metrics.Counts(
        tasks=Counter(t.state for t in tasks),
        autofix_tasks=Counter(t.state for t in tasks if t.source == "alertmanager"),
        decisions=Counter((str(e.detail.get("policy_effect")), str(e.detail.get("decision"))) for e in decided),
        refusals=Counter(str(e.detail.get("reason")) for e in refused),
        usage=UsageTotals(sum(u.input_tokens for u in usage), sum(u.output_tokens for u in usage),
                          sum(u.cost_usd for u in usage)),
        finished=DurationTotals(len(finished), sum(finished)),
    )


async def per_row_render(store: Store, *, sandboxes_running: int = 0) -> str:
    """The exposition of `per_row_counts`: the same text as `metrics.render` when both count alike."""
    return metrics.exposition(await per_row_counts(store), sandboxes_running=sandboxes_running)


def insert_rows(store: Store, tasks: Iterable[tuple[Any, ...]], audit: Iterable[tuple[Any, ...]]) -> None:
    """Raw task rows (id, kind, prompt, repo, source, requested_by, dry_run, state, created_at, updated_at, result)
    and audit rows (at, task_id, actor, event, detail), in one transaction on the store's own connection, so a
    large history is quick to set up."""
    with store._lock:
        store._db.execute("BEGIN")
        store._db.executemany(
            "INSERT INTO tasks (id, kind, prompt, repo, source, requested_by, dry_run, state, created_at, updated_at,"
            " result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tasks)
        store._db.executemany("INSERT INTO audit (at, task_id, actor, event, detail) VALUES (?, ?, ?, ?, ?)", audit)
        store._db.execute("COMMIT")
