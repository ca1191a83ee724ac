"""The table-driven corpus: tests/policy/cases/*.yaml, each case a call and the decision it must get.

A case with ``strict: true`` is decided by the shipped policy with ``interpreters: deny``, the owner who wants to
see every piece of code the agent runs; ``parser: tree-sitter`` forces the parser bashlex hands over to.
"""

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


def strict_text() -> str:
    text = (ROOT / "policy.yaml").read_text(encoding="utf-8")
    assert "\n  interpreters: allow\n" in text
    return text.replace("\n  interpreters: allow\n", "\n  interpreters: deny\n", 1)


@pytest.fixture(scope="module")
def default_policy() -> policy.Policy:
    return policy.load_file(ROOT / "policy.yaml")


@pytest.fixture(scope="module")
def strict_policy() -> policy.Policy:
    return policy.load(strict_text(), source="strict")


def test_corpus_has_at_least_150_cases() -> None:
    assert len(CASES) >= 150


def test_corpus_has_at_least_150_ordinary_commands_all_allowed() -> None:
    ordinary = yaml.safe_load((CASES_DIR / "ordinary.yaml").read_text(encoding="utf-8"))
    assert len(ordinary) >= 150
    assert {c["expect"] for c in ordinary} == {"allow"}


@pytest.mark.parametrize("case", CASES)
def test_corpus_case(default_policy: policy.Policy, strict_policy: policy.Policy, case: dict[str, Any]) -> None:
    if "cmd" in case:
        call = ToolCall("Bash", {"command": case["cmd"]}, case.get("kind", "feature"))
    else:
        call = ToolCall(case["tool"], case["input"], case.get("kind", "feature"))
    chosen = strict_policy if case.get("strict") else default_policy
    decision = policy.evaluate(chosen, call)
    assert decision.effect is Effect(case["expect"]), decision
    if "rule" in case:
        assert decision.rule_id == case["rule"], decision
    assert decision.rule_id != "engine.error", decision
    assert decision.reason
    assert decision.policy_sha256 == chosen.sha256
