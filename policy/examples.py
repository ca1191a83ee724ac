"""A policy's own tests, like OPA's: example calls with the decision each must get."""

from __future__ import annotations

from dataclasses import dataclass

from policy.engine import evaluate
from policy.model import Decision, Example, Policy


@dataclass(frozen=True, slots=True)
class ExampleResult:
    """One example run: `ok` when the decision (and the rule, if the example names one) is as expected."""

    example: Example
    decision: Decision
    ok: bool

    def describe(self) -> str:
        ex, d = self.example, self.decision
        want = ex.expect.value + (f" by {ex.rule}" if ex.rule else "")
        got = f"{d.effect.value} by {d.rule_id}: {d.reason}"
        where = f"line {ex.line}: " if ex.line is not None else ""
        return f"{where}{ex.name}: expected {want}, got {got}"


def run_examples(policy: Policy) -> tuple[ExampleResult, ...]:
    """Evaluate every example of the policy (its ``tests:`` section) and say which pass."""
    out = []
    for ex in policy.examples:
        d = evaluate(policy, ex.call)
        ok = d.effect is ex.expect and (ex.rule is None or d.rule_id == ex.rule)
        out.append(ExampleResult(ex, d, ok))
    return tuple(out)
