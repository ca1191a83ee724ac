"""One /metrics scrape counted in SQLite against the per-row count in Python it replaced, on the same store.

Run: .venv/bin/python bench/bench_metrics.py [--tasks 10000] [--audit 100000] [--rounds 5]
Fills a store with tasks (prompt, result with usage) and audit rows shaped like the agent's, then times
`runner.service.metrics.render` and the old handler's body (list every task, read every audit row of the two events,
count in Python), checks that both render the same text, and prints their ratio and peak Python memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.models import TaskState  # noqa: E402
from runner.service import metrics  # noqa: E402
from runner.store import Store  # noqa: E402
from tests.fakes.metrics import insert_rows, per_row_render  # noqa: E402

Render = Callable[[Store], Awaitable[str]]


async def sql_render(store: Store) -> str:
    return await metrics.render(store, sandboxes_running=0)


def fill(store: Store, tasks: int, audit: int, seed: int = 11) -> None:
    """Rows shaped like the service's own, written in one transaction on the store's connection."""
    rnd = random.Random(seed)
    states = list(TaskState)
    task_rows = []
    for i in range(tasks):
        state = rnd.choice(states)
        # Dyadic seconds and costs, so both sums are exact whatever order they are added in.
        created = 1.7e9 + i * 60
        result = None if not (state.terminal or state is TaskState.PROPOSED) else {
            "task_id": f"t{i}", "status": state.value, "diff": "+x\n" * rnd.randint(0, 200),
            "files_changed": ["bot/main.py"], "tests": None, "denials": [], "pr": None, "reason": "",
            "usage": {"input_tokens": rnd.randint(0, 200_000), "output_tokens": rnd.randint(0, 20_000),
                      "cost_usd": rnd.randint(0, 4096) / 1024, "requests": rnd.randint(1, 40)},
            "verification": None,
        }
        task_rows.append((f"t{i:07d}", "command", "fix the balance handler " * rnd.randint(1, 40), "bot",
                          rnd.choice(["api", "telegram", "alertmanager"]), "owner", 0, state.value, created,
                          created + rnd.randint(0, 80_000) / 8, json.dumps(result) if result else None))
    events = ["tool_decision"] * 6 + ["state", "task_created", "refused"]
    audit_rows = []
    for i in range(audit):
        event = rnd.choice(events)
        if event == "tool_decision":
            effect = rnd.choice(["allow", "allow", "allow", "ask", "deny"])
            detail = {"tool": "Bash", "input_digest": f"{i:064x}", "decision": "deny" if effect == "deny" else "allow",
                      "policy_effect": effect, "rule": "bash-read", "reason": "matched rule bash-read",
                      "command": "grep -rn balance bot | head -20", "policy_sha256": "ab" * 32}
        elif event == "refused":
            detail = {"reason": rnd.choice(["rate_limited", "bad_token", "too_large"])}
        else:
            detail = {"state": rnd.choice(states).value, "reason": ""}
        audit_rows.append((1.7e9 + i, f"t{rnd.randrange(max(tasks, 1)):07d}", "agent", event,
                           json.dumps(detail, sort_keys=True)))
    insert_rows(store, task_rows, audit_rows)


async def _best(render: Render, store: Store, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        await render(store)
        best = min(best, time.perf_counter() - start)
    return best


async def _peak_bytes(render: Render, store: Store) -> int:
    tracemalloc.start()
    try:
        await render(store)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def run(tasks: int, audit: int, rounds: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        async with Store(Path(tmp) / "state.db") as store:
            fill(store, tasks, audit)
            same = await sql_render(store) == await per_row_render(store)
            old = await _best(per_row_render, store, rounds)
            new = await _best(sql_render, store, rounds)
            old_mem = await _peak_bytes(per_row_render, store)
            new_mem = await _peak_bytes(sql_render, store)
    print(f"store: {tasks} tasks, {audit} audit rows; best of {rounds} rounds; same text: {'yes' if same else 'NO'}")
    print(f"per-row count in Python : {old * 1000:8.1f} ms/scrape   peak Python memory {old_mem / 2**20:7.1f} MiB")
    print(f"aggregated in SQLite    : {new * 1000:8.1f} ms/scrape   peak Python memory {new_mem / 2**20:7.1f} MiB")
    print(f"ratio (SQLite/Python time) {new / old:.3f}x, i.e. {old / new:.1f}x faster")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--audit", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    return asyncio.run(run(args.tasks, args.audit, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
