"""Hypothesis properties: composition never launders a denied command; no input makes the engine raise."""

from __future__ import annotations

from pathlib import Path

import pathspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policy
from policy import Effect, ToolCall
from policy.paths import GlobPart, PatternSet, glob_nfa

POLICY = policy.load_file(Path(__file__).resolve().parents[2] / "policy.yaml")

ALLOWED = [
    "git status",
    "git diff",
    "pytest -q",
    "ls -la",
    "grep -rn x bot/",
    "sed -n '1,20p' bot/a.py",
    "find . -name '*.py'",
    "cat bot/main.py",
    "echo hi",
    "wc -l bot/a.py",
    "head -5 bot/a.py",
]
DENIED = [
    "rm -rf .",
    "curl x",
    "cat .env",
    "sh -c 'rm -rf .git'",
    "git push",
    "find . -delete",
    "sed 's/a/b/w x' f",
    "bash -c 'cat .env'",
    "echo x > .git/config",
    "./cat .env",
    "git reset --hard HEAD~1",
    "echo /etc/passwd | xargs cat",
    "cat secrets/a",
    "rg --pre sh x",
]


def _wrap(inner: st.SearchStrategy[tuple[str, bool]]) -> st.SearchStrategy[tuple[str, bool]]:
    def combine(pair: tuple[tuple[str, bool], tuple[str, bool]], how: str) -> tuple[str, bool]:
        (a, da), (b, db) = pair
        text = {
            ";": f"{a}; {b}",
            "&&": f"{a} && {b}",
            "||": f"{a} || {b}",
            "|": f"{a} | {b}",
            "sub": f"({a}; {b})",
            "group": f"{{ {a}; {b}; }}",
            "cmdsub": f"echo $({a}) && {b}",
            "dq": f'echo "$({a})" ; {b}',
            "if": f"if {a}; then {b}; fi",
        }[how]
        return text, da or db

    return st.builds(
        combine,
        st.tuples(inner, inner),
        st.sampled_from([";", "&&", "||", "|", "sub", "group", "cmdsub", "dq", "if"]),
    )


LEAF = st.one_of(
    st.sampled_from(ALLOWED).map(lambda c: (c, False)),
    st.sampled_from(DENIED).map(lambda c: (c, True)),
)
COMPOSED = st.recursive(LEAF, _wrap, max_leaves=6)
# bashlex cannot parse some valid bash (`$(a && b)`), and `((a); b)` reads as arithmetic: both fail closed
FAIL_CLOSED = {"bash.parse-error", "bash.unsupported"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(COMPOSED)
def test_evaluate_denies_any_composition_with_a_denied_part(pair: tuple[str, bool]) -> None:
    command, has_denied = pair
    decision = policy.evaluate(POLICY, ToolCall("Bash", {"command": command}))
    if has_denied:
        assert decision.effect is Effect.DENY, (command, decision)
    else:
        assert decision.effect is Effect.ALLOW or decision.rule_id in FAIL_CLOSED, (command, decision)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_evaluate_never_raises_on_random_bytes(data: bytes) -> None:
    command = data.decode("utf-8", "surrogateescape")
    decision = policy.evaluate(POLICY, ToolCall("Bash", {"command": command}))
    assert decision.effect in (Effect.ALLOW, Effect.DENY)
    assert decision.rule_id != "engine.error", decision


SHELLISH = st.text(alphabet=st.sampled_from(list("ab.$(){}[]`'\"\\|&;<>*?~=-/ \n#!x0")), max_size=60)


@settings(max_examples=500, deadline=None)
@given(SHELLISH)
def test_evaluate_never_raises_on_shell_punctuation(command: str) -> None:
    decision = policy.evaluate(POLICY, ToolCall("Bash", {"command": command}))
    assert decision.rule_id != "engine.error", (command, decision)
    assert decision.effect is not Effect.ASK or decision.rule_id.startswith("paths.ask_write"), decision


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["Read", "Write", "Edit", "LS", "Glob", "Grep", "Bash", "Task", "mcp__x"]),
    st.dictionaries(
        st.sampled_from(["file_path", "path", "command", "pattern", "glob"]), st.none() | st.text() | st.integers()
    ),
)
def test_evaluate_never_raises_on_odd_tool_input(tool: str, data: dict[str, object]) -> None:
    decision = policy.evaluate(POLICY, ToolCall(tool, data))
    assert decision.rule_id != "engine.error", decision


SEGMENT = st.sampled_from(["secrets", ".env", ".env.x", "a", "b.key", "x.pem", ".git", "config", "src", "compose.yaml"])
PATTERNS = ["secrets/", ".env", ".env.*", "*.key", "/compose.yaml", ".git", "src/*.pem", ".github/workflows/"]


@settings(max_examples=300, deadline=None)
@given(st.lists(SEGMENT, min_size=1, max_size=4))
def test_glob_automaton_agrees_with_pathspec_on_literal_paths(segments: list[str]) -> None:
    path = "/".join(segments)
    ps = PatternSet(PATTERNS)
    spec = pathspec.GitIgnoreSpec.from_lines(PATTERNS)
    # pathspec matches a file or, with a trailing slash, a directory (whose contents are then excluded too)
    by_pathspec = any(
        spec.match_file("/".join(segments[:i]) + suffix) for i in range(1, len(segments) + 1) for suffix in ("", "/")
    )
    by_automaton = ps.match_glob(glob_nfa([GlobPart("lit", path)])) is not None
    assert by_automaton == by_pathspec, path
