"""The table-driven corpus: tests/policy/cases/*.yaml, each case a call and the decision it must get."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import policy
from policy import Effect, ToolCall

CASES_DIR = Path(__file__).parent / "cases"
ROOT = Path(__file__).resolve().parents[2]


def _cases() -> list[Any]:
    params = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        for i, case in enumerate(yaml.safe_load(path.read_text(encoding="utf-8"))):
            label = case.get("cmd", case.get("tool"))
            params.append(pytest.param(case, id=f"{path.stem}-{i}-{label!r}"[:90]))
    return params


CASES = _cases()


@pytest.fixture(scope="module")
def default_policy() -> policy.Policy:
    return policy.load_file(ROOT / "policy.yaml")


def test_corpus_has_at_least_150_cases() -> None:
    assert len(CASES) >= 150


@pytest.mark.parametrize("case", CASES)
def test_corpus_case(default_policy: policy.Policy, case: dict[str, Any]) -> None:
    if "cmd" in case:
        call = ToolCall("Bash", {"command": case["cmd"]}, case.get("kind", "feature"))
    else:
        call = ToolCall(case["tool"], case["input"], case.get("kind", "feature"))
    decision = policy.evaluate(default_policy, call)
    assert decision.effect is Effect(case["expect"]), decision
    if "rule" in case:
        assert decision.rule_id == case["rule"], decision
    assert decision.rule_id != "engine.error", decision
    assert decision.reason
    assert decision.policy_sha256 == default_policy.sha256
