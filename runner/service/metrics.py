"""Prometheus text exposition of the service's state, counted by SQLite so a scrape costs the same at any history."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runner.models import TERMINAL_STATES, TaskState
from runner.service.releases import RELEASE_STATES
from runner.store import DurationTotals, Store, UsageTotals

CONTENT_TYPE = "text/plain; version=0.0.4"
# A task's duration is known once it has a result: a proposal, or a terminal state.
FINISHED_STATES = TERMINAL_STATES | {TaskState.PROPOSED}
AUTOFIX_SOURCE = "alertmanager"


@dataclass(frozen=True, slots=True)
class Counts:
    """What one scrape reports about the store, however it was counted; labels are already strings."""

    tasks: Mapping[TaskState, int]
    autofix_tasks: Mapping[TaskState, int]
    decisions: Mapping[tuple[str, str], int]  # (policy effect, final decision)
    refusals: Mapping[str, int]  # by reason
    usage: UsageTotals
    finished: DurationTotals


async def render(store: Store, *, sandboxes_running: int, releases: Mapping[str, int] | None = None) -> str:
    """The exposition; `releases` (counts by release state) adds the releases gauge when there is a forge."""
    return exposition(await count(store), sandboxes_running=sandboxes_running, releases=releases)


async def count(store: Store) -> Counts:
    """The store's counts, aggregated by SQLite so no row is read into Python."""
    return Counts(
        tasks=await store.task_counts(),
        autofix_tasks=await store.task_counts(source=AUTOFIX_SOURCE),
        decisions={(effect, decision): n for (effect, decision), n in
                   _labelled(await store.audit_counts("tool_decision", ("policy_effect", "decision"))).items()},
        refusals={reason: n for (reason,), n in _labelled(await store.audit_counts("refused", ("reason",))).items()},
        usage=await store.usage_totals(),
        finished=await store.duration_totals(FINISHED_STATES),
    )


def exposition(counts: Counts, *, sandboxes_running: int, releases: Mapping[str, int] | None = None) -> str:
    """The Prometheus text of `counts`, every task state listed (zero where absent)."""
    lines = ["# HELP agent_runner_tasks Tasks by state.", "# TYPE agent_runner_tasks gauge"]
    lines += [f'agent_runner_tasks{{state="{s.value}"}} {counts.tasks.get(s, 0)}' for s in TaskState]
    lines += ["# HELP agent_runner_policy_decisions_total Tool calls decided, by policy effect and final decision.",
              "# TYPE agent_runner_policy_decisions_total counter"]
    lines += [f'agent_runner_policy_decisions_total{{effect="{_label(effect)}",decision="{_label(decision)}"}} {n}'
              for (effect, decision), n in sorted(counts.decisions.items())]
    lines += ["# HELP agent_runner_refusals_total Requests refused (auth, rate limit).",
              "# TYPE agent_runner_refusals_total counter"]
    lines += [f'agent_runner_refusals_total{{reason="{_label(reason)}"}} {n}'
              for reason, n in sorted(counts.refusals.items())]
    lines += ["# HELP agent_runner_model_tokens_total Model tokens used by tasks, through the model proxy.",
              "# TYPE agent_runner_model_tokens_total counter",
              f'agent_runner_model_tokens_total{{direction="input"}} {counts.usage.input_tokens}',
              f'agent_runner_model_tokens_total{{direction="output"}} {counts.usage.output_tokens}',
              "# HELP agent_runner_model_cost_usd_total Model cost of tasks in US dollars.",
              "# TYPE agent_runner_model_cost_usd_total counter",
              f"agent_runner_model_cost_usd_total {counts.usage.cost_usd:.6f}",
              "# HELP agent_runner_task_duration_seconds From queued to a result (proposed or terminal).",
              "# TYPE agent_runner_task_duration_seconds summary",
              f"agent_runner_task_duration_seconds_sum {counts.finished.seconds:.3f}",
              f"agent_runner_task_duration_seconds_count {counts.finished.count}",
              "# HELP agent_runner_autofix_tasks Alert-started tasks by state (their outcomes).",
              "# TYPE agent_runner_autofix_tasks gauge"]
    lines += [f'agent_runner_autofix_tasks{{state="{s.value}"}} {counts.autofix_tasks.get(s, 0)}' for s in TaskState]
    lines += ["# HELP agent_runner_sandboxes_running Tasks holding a sandbox slot now.",
              "# TYPE agent_runner_sandboxes_running gauge",
              f"agent_runner_sandboxes_running {sandboxes_running}"]
    if releases is not None:
        lines += ["# HELP agent_runner_releases Approved pull requests by release state (rolled_back: unhealthy, "
                  "or condemned by the post-deploy watch).",
                  "# TYPE agent_runner_releases gauge"]
        lines += [f'agent_runner_releases{{state="{state}"}} {releases.get(state, 0)}' for state in RELEASE_STATES]
    return "\n".join(lines) + "\n"


def _labelled(groups: Iterable[tuple[tuple[Any, ...], int]]) -> Counter[tuple[str, ...]]:
    # Labels are str() of the value, so an absent key reads "None"; groups that print alike are one series.
    counts: Counter[tuple[str, ...]] = Counter()
    for values, n in groups:
        counts[tuple(str(v) for v in values)] += n
    return counts


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
