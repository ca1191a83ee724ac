"""bashlex 0.18 loops forever on an unterminated `${` inside a word; the engine must deny, at once."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

import policy
from policy import Effect, ToolCall

# Found by the property tests; before the guard each of these grew without bound (10 GB in CI).
HANGERS = ["'${'$", "0 ;0ba'\"${')b$>a?;/&// 0~xax\n/<}|?)[\"$"]


@pytest.fixture
def deadline() -> Iterator[list[str]]:
    """Interrupts a hung parse after 2 s and records that it had to (the engine turns the interruption into
    a deny, so the decision alone would not show the hang)."""
    fired: list[str] = []

    def expired(*_: object) -> None:
        fired.append("hung")
        raise TimeoutError("the policy engine hung on a parse")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    yield fired
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("command", HANGERS)
def test_evaluate_denies_unterminated_parameter_expansion_without_hanging(command: str, deadline: list[str]) -> None:
    policy.clear_cache()
    decision = policy.evaluate(policy.load_default(), ToolCall("Bash", {"command": command}))
    assert deadline == []
    # bashlex says "bad substitution"; tree-sitter, which then reads it, sees a command named `${$`: both deny
    assert decision.effect is Effect.DENY
