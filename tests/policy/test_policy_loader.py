"""policy.load: the shipped default, schema errors with line numbers, and the policy's own examples."""

from __future__ import annotations

from pathlib import Path

import pytest

import policy
from policy import Effect, PolicyLoadError

ROOT = Path(__file__).resolve().parents[2]


def _default_text() -> str:
    return (ROOT / "policy.yaml").read_text(encoding="utf-8")


def test_default_policy_package_copy_is_byte_identical_to_repo_policy() -> None:
    assert (ROOT / "policy" / "default.yaml").read_bytes() == (ROOT / "policy.yaml").read_bytes()
    assert policy.default_text() == _default_text()


def test_load_default_exposes_the_supervisor_settings() -> None:
    p = policy.load_default()
    assert p.version == "default-2025-06"
    assert len(p.sha256) == 64
    assert p.test_command == "python -m pytest -q"
    assert "requirements*.txt" in p.dependency_files
    assert p.rate_limits.commands_per_hour == 10 and p.rate_limits.autofixes_per_hour == 5
    assert p.autofix_mode == "pr"
    assert p.ask_timeout_seconds > 0
    assert p.profile("review").read_only
    assert p.profile("fix").limits.max_changed_files == 10
    assert p.profile("feature").limits.max_turns == 40  # inherited from the top-level limits
    assert "Write" not in p.allowed_tools("review")
    assert p.allowed_tools("nope") == ()
    assert set(p.kinds) >= {"feature", "fix", "review", "dry-run"}


def test_load_default_examples_all_pass() -> None:
    results = policy.run_examples(policy.load_default())
    assert results and all(r.ok for r in results), [r.describe() for r in results if not r.ok]


def test_load_reports_bad_yaml_with_line() -> None:
    with pytest.raises(PolicyLoadError) as exc:
        policy.load("schema: 1\nversion: x\nprofiles: [\n")
    assert exc.value.line is not None


def test_load_reports_unknown_key_with_line_and_name() -> None:
    text = _default_text().replace("autofix_mode: pr", "autofix_mdoe: pr")
    with pytest.raises(PolicyLoadError) as exc:
        policy.load(text, source="p.yaml")
    assert exc.value.key == "autofix_mdoe"
    assert exc.value.line == text.splitlines().index("autofix_mdoe: pr") + 1
    assert "p.yaml" in str(exc.value)


def test_load_reports_wrong_type_in_nested_limits() -> None:
    text = _default_text().replace("      max_turns: 30", "      max_turns: lots")
    with pytest.raises(PolicyLoadError) as exc:
        policy.load(text)
    assert exc.value.key == "profiles.fix.limits.max_turns"
    assert exc.value.line == text.splitlines().index("      max_turns: lots") + 1


def test_load_rejects_missing_profile_and_bad_effect_listing_every_problem() -> None:
    text = (
        _default_text().replace("  dry-run:\n", "  dryrun:\n").replace("    effect: deny\n", "    effect: maybe\n", 1)
    )
    with pytest.raises(PolicyLoadError) as exc:
        policy.load(text)
    messages = [m for _, _, m in exc.value.problems]
    assert any("profiles.dry-run is missing" in m for m in messages)
    assert any("must be one of allow, deny, ask" in m for m in messages)


def test_load_rejects_duplicate_keys_and_negated_patterns() -> None:
    text = _default_text().replace("workspace: /workspace", "workspace: /workspace\nworkspace: /w")
    with pytest.raises(PolicyLoadError, match="duplicate key"):
        policy.load(text)
    text = _default_text().replace("    - secrets/\n", "    - '!secrets/'\n", 1)
    with pytest.raises(PolicyLoadError, match="negated"):
        policy.load(text)


def test_load_rejects_writing_tool_in_read_only_profile() -> None:
    review_tools = "    tools: [Read, Glob, Grep, LS, Bash, TodoWrite, TaskCreate"
    text = _default_text().replace(review_tools, "    tools: [Read, Write, TaskCreate")
    with pytest.raises(PolicyLoadError, match="read_only but allows the writing tool Write"):
        policy.load(text)


def _with_per_source(*lines: str) -> str:
    cooldown = "  cooldown_after_failure_seconds: 1800"
    anchor = next(line for line in _default_text().splitlines() if line.startswith(cooldown))
    return _default_text().replace(anchor, "\n".join((anchor, "  per_source:", *lines)), 1)


def test_load_rate_limits_per_source_caps() -> None:
    p = policy.load(_with_per_source("    telegram: 5", "    api: 20", "    alertmanager: 0"))
    assert dict(p.rate_limits.per_source) == {"telegram": 5, "api": 20, "alertmanager": 0}
    assert p.rate_limits.commands_per_hour == 10 and p.rate_limits.autofixes_per_hour == 5
    with pytest.raises(TypeError):
        p.rate_limits.per_source["api"] = 100  # type: ignore[index]
    assert dict(policy.load_default().rate_limits.per_source) == {}


@pytest.mark.parametrize("value", ["-1", "five", "2.5", "true", "[5]"])
def test_load_rejects_a_bad_per_source_cap_with_its_line(value: str) -> None:
    bad = f"    telegram: {value}"
    text = _with_per_source("    api: 20", bad)
    with pytest.raises(PolicyLoadError) as exc:
        policy.load(text)
    assert exc.value.key == "rate_limits.per_source.telegram"
    assert exc.value.line == text.splitlines().index(bad) + 1
    assert "0 or more" in str(exc.value)


def test_load_rejects_an_unknown_per_source_source_and_a_negative_hourly_limit() -> None:
    text = _with_per_source("    telegarm: 5")
    with pytest.raises(PolicyLoadError) as exc:
        policy.load(text)
    assert exc.value.key == "rate_limits.per_source.telegarm" and "unknown source" in str(exc.value)
    assert exc.value.line == text.splitlines().index("    telegarm: 5") + 1
    with pytest.raises(PolicyLoadError, match="commands_per_hour must be 0 or more"):
        policy.load(_default_text().replace("commands_per_hour: 10 ", "commands_per_hour: -3 ", 1))
    text = _default_text().replace("  cooldown_after_failure_seconds: 1800", "  cooldown_after_failure_seconds: 1800\n"
                                   "  per_source: 5", 1)
    with pytest.raises(PolicyLoadError, match="per_source must be a mapping"):
        policy.load(text)


def test_load_file_maps_missing_file_to_load_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="cannot read"):
        policy.load_file(tmp_path / "missing.yaml")


def test_load_examples_carry_their_line_and_fail_visibly() -> None:
    text = _default_text().replace(
        "  - {tool: Bash, input: {command: git status}, expect: allow}",
        "  - {tool: Bash, input: {command: git push}, expect: allow}",
    )
    p = policy.load(text)
    failed = [r for r in policy.run_examples(p) if not r.ok]
    assert len(failed) == 1
    assert (
        failed[0].example.line
        == text.splitlines().index("  - {tool: Bash, input: {command: git push}, expect: allow}") + 1
    )
    assert failed[0].decision.effect is Effect.DENY


def test_load_sha256_changes_with_the_text() -> None:
    a = policy.load(_default_text())
    b = policy.load(_default_text() + "\n# edited\n")
    assert a.sha256 != b.sha256 and a.version == b.version


def test_load_owner_rule_can_ask_for_a_command() -> None:
    text = _default_text().replace(
        "rules:\n",
        "rules:\n  - id: ask-make\n    effect: ask\n    reason: make runs recipes\n    commands: [make]\n",
    )
    p = policy.load(text)
    d = policy.evaluate(p, policy.ToolCall("Bash", {"command": "make test"}))
    assert (d.effect, d.rule_id) == (Effect.ASK, "rules.ask-make")
    # a rule cannot unlock a protected path
    d = policy.evaluate(p, policy.ToolCall("Bash", {"command": "make .env"}))
    assert d.effect is Effect.DENY


@pytest.mark.parametrize(("text", "said"), [
    ("a: [1, 2\nb: 3\n", "while parsing a flow sequence (begun at line 1, column 4), expected ',' or ']', but got ':' "
                         "at line 2, column 2"),
    ("a: \"unterminated\n", "while scanning a quoted scalar (begun at line 1, column 4), found unexpected end"),
    ("\tx: 1\n", "found character '\\t' that cannot start any token at line 1, column 1"),
])
def test_load_says_the_whole_yaml_error_in_one_line(text: str, said: str) -> None:
    """PyYAML's first line alone ("while parsing a flow node") says neither what went wrong nor where."""
    with pytest.raises(PolicyLoadError) as caught:
        policy.load(text)
    message = str(caught.value)
    assert said in message and "\n" not in message


def test_load_test_rounds_defaults_to_two_inherits_and_is_bounded() -> None:
    p = policy.load_default()
    assert p.profile("fix").limits.test_rounds == 2 and p.profile("review").limits.test_rounds == 2
    off = policy.load(policy.default_text().replace("  test_rounds: 2\n", "  test_rounds: 0\n", 1))
    assert off.profile("fix").limits.test_rounds == 0 and off.profile("feature").limits.test_rounds == 0
    for bad in ("-1", "11", "two"):
        with pytest.raises(PolicyLoadError) as caught:
            policy.load(policy.default_text().replace("  test_rounds: 2\n", f"  test_rounds: {bad}\n", 1))
        assert "limits.test_rounds" in str(caught.value)
