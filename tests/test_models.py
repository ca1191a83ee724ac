"""Values survive storage: a RunResult written with to_json comes back equal from from_json."""

from __future__ import annotations

import json

from runner.models import Denial, PrRef, RunResult, TaskId, TaskState, TestRun, Usage


def test_run_result_round_trips_through_json() -> None:
    result = RunResult(TaskId("t"), TaskState.PROPOSED, diff="--- a\n", files_changed=("bot/app.py",),
                       tests=TestRun("pytest -q", 0, True, "ok"), denials=(Denial("Bash", "r1", "curl"),),
                       pr=PrRef(7, "local://7", "agent/x", "c" * 40), usage=Usage(10, 5, 0.01, 2), reason="done",
                       verification="fails before, passes after")
    assert RunResult.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_run_result_from_an_older_or_partial_row_takes_defaults() -> None:
    read = RunResult.from_json({"status": "nonsense", "pr": {"number": 7}, "usage": {"cost_usd": "0.5"},
                                "denials": [{"tool": "Bash"}, {"tool": "Bash", "rule": "r", "reason": "x"}]})
    assert read.status is TaskState.FAILED and read.pr is None  # a PR without its head is no PR to approve
    assert read.usage == Usage(cost_usd=0.5) and read.denials == (Denial("Bash", "r", "x"),)
