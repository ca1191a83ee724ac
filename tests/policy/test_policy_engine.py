"""policy.evaluate / explain / is_read_protected / check_changeset, and the bash and path helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

import policy
from policy import Effect, FileChange, ToolCall
from policy.bash import parse, scan_word
from policy.commands import sed_script_problem
from policy.paths import normalize

POLICY = policy.load_file(Path(__file__).resolve().parents[2] / "policy.yaml")


def _bash(command: str, kind: str = "feature") -> policy.Decision:
    return policy.evaluate(POLICY, ToolCall("Bash", {"command": command}, kind))


def test_evaluate_decision_names_offending_command_and_policy() -> None:
    d = _bash("git status && rm -rf .")
    assert d.effect is Effect.DENY
    assert d.command == "rm -rf ."
    assert d.policy_version == POLICY.version and d.policy_sha256 == POLICY.sha256
    assert d.to_json()["decision"] == "deny"


def test_evaluate_ask_anywhere_makes_the_call_ask_and_deny_beats_ask() -> None:
    assert _bash("ls && echo x >> requirements.txt").effect is Effect.ASK
    assert _bash("echo x >> requirements.txt; cat .env").effect is Effect.DENY


def test_evaluate_is_cached_and_cache_is_keyed_by_kind() -> None:
    policy.clear_cache()
    first = _bash("touch bot/new.py")
    assert _bash("touch bot/new.py") is first
    assert _bash("touch bot/new.py", "review").effect is Effect.DENY


def test_evaluate_limits_command_length_before_parsing() -> None:
    d = _bash("echo " + "a" * 40000)
    assert (d.effect, d.rule_id) == (Effect.DENY, "bash.too-long")


def test_evaluate_denies_deep_nesting_without_raising() -> None:
    d = _bash("(" * 3000 + "ls" + ")" * 3000)
    assert d.effect is Effect.DENY


def test_evaluate_handles_non_json_input_values() -> None:
    d = policy.evaluate(POLICY, ToolCall("Read", {"file_path": "bot/a.py", "extra": object()}))
    assert d.effect is Effect.ALLOW


def test_explain_lists_each_simple_command_with_its_rule() -> None:
    ex = policy.explain(POLICY, ToolCall("Bash", {"command": "git status; cat $(curl x)"}))
    assert [s.argv[:1] for s in ex.steps] == [("git",), ("curl",), ("cat",)]
    assert [s.effect for s in ex.steps] == [Effect.ALLOW, Effect.DENY, Effect.ALLOW]
    assert ex.decision.rule_id == "bash.network"


def test_is_read_protected_follows_read_rules_and_normalises() -> None:
    assert policy.is_read_protected(POLICY, "secrets/prod.json")
    assert policy.is_read_protected(POLICY, "secrets")
    assert policy.is_read_protected(POLICY, "bot/../.env")
    assert policy.is_read_protected(POLICY, "deploy/tls.key")
    assert not policy.is_read_protected(POLICY, "bot/main.py")
    assert not policy.is_read_protected(POLICY, ".git/config")  # write-protected only


@pytest.mark.parametrize(
    ("path", "rel"),
    [
        ("src/../.env", ".env"),
        ("/workspace/.git//config", ".git/config"),
        (".git/./config", ".git/config"),
        ("/workspace", ""),
        ("../x", None),
        ("/workspace/../etc", None),
    ],
)
def test_normalize_resolves_against_workspace(path: str, rel: str | None) -> None:
    assert normalize(path).rel == rel


def test_scan_word_unquotes_and_decodes_like_bash() -> None:
    assert scan_word("r'm'")[0].value == "rm"
    assert scan_word('"r"m')[0].value == "rm"
    assert scan_word("r\\m")[0].value == "rm"
    assert scan_word("$'\\x72m'")[0].value == "rm"
    assert scan_word("$'\\162m'")[0].value == "rm"
    assert scan_word("$X")[0].value is None
    word, problems = scan_word("${X:-$(id)}")
    assert word.dynamic and problems


def test_parse_reports_hidden_and_unsupported_constructs() -> None:
    assert parse("echo ${X:-`id`}").problems[0].rule_id == "bash.hidden-expansion"
    # what bashlex cannot read, tree-sitter-bash does: the commands inside are seen, nothing is a problem
    both = parse("[[ -f x ]] && case $a in a) ls;; esac")
    assert [c.argv[0].value for c in both.commands] == ["ls"] and not both.problems
    assert parse("echo $((x + 1))").hidden[0].rule_id == "bash.arithmetic"
    assert not parse("echo $((1 + 1))").hidden
    assert "unterminated" in parse("echo 'x").problems[0].reason
    assert parse("cat <<EOF\n$(id)\nEOF").problems[0].rule_id == "bash.heredoc-expansion"
    assert not parse("cat <<EOF\n$HOME\nEOF").problems


@pytest.mark.parametrize(
    ("script", "ok"),
    [
        ("1,20p", True),
        ("/x/p", True),
        ("s/a;b/c/g", True),
        ("s|a|b|w x", False),
        ("s/a/b/e", False),
        ("1e id", False),
        ("r /etc/passwd", False),
        ("$!N;P;D", True),
        ("y/abc/xyz/", True),
        ("b end", False),
    ],
)
def test_sed_script_problem_allows_only_harmless_commands(script: str, ok: bool) -> None:
    assert (sed_script_problem(script) is None) is ok


def _change(path: str, status: str = "modified", **kw: object) -> FileChange:
    return FileChange(path, status, **kw)  # type: ignore[arg-type]


def test_check_changeset_accepts_an_ordinary_change() -> None:
    verdict = policy.check_changeset(POLICY, "fix", [_change("bot/a.py", mode=0o100644, added_lines=3)], 300)
    assert verdict.ok and verdict.reasons == ()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (_change(".git/hooks/pre-commit", "added", mode=0o100755), ".git"),
        (_change("sub/.git", "added", mode=0o100644), ".git"),
        (_change(".github/workflows/ci.yml"), "protected"),
        (_change(".env", "added"), "protected"),
        (_change("bot/link", "added", mode=0o120000, symlink_target="/etc/passwd"), "absolute"),
        (_change("bot/link", "added", mode=0o120000, symlink_target="../../etc"), "leaves the workspace"),
        (_change("bot/link", "added", mode=0o120000, symlink_target="../secrets/x"), "protected"),
        (_change("bot/link", "added", mode=0o120000, symlink_target="../.git/config"), ".git"),
        (_change("vendor/lib", "added", mode=0o160000), "submodule"),
        (_change("bot/run", "added", mode=0o100755), "executable"),
        (_change("../x.py", "added"), "leaves"),
        (_change("/etc/x", "added"), "relative"),
        (_change("bot/new.py", "renamed", old_path="compose.yaml"), "protected"),
    ],
)
def test_check_changeset_rejects_dangerous_changes(change: FileChange, needle: str) -> None:
    verdict = policy.check_changeset(POLICY, "feature", [change], 100)
    assert not verdict.ok
    assert any(needle in r for r in verdict.reasons), verdict.reasons


def test_check_changeset_allows_executables_in_allowed_places() -> None:
    verdict = policy.check_changeset(POLICY, "feature", [_change("scripts/deploy.sh", "added", mode=0o100755)], 10)
    assert verdict.ok


def test_check_changeset_enforces_profile_limits_and_read_only() -> None:
    many = [_change(f"bot/m{i}.py", "added") for i in range(11)]
    assert "more than the limit of 10" in policy.check_changeset(POLICY, "fix", many, 10).reasons[0]
    assert not policy.check_changeset(POLICY, "fix", many[:1], 50_001).ok
    assert not policy.check_changeset(POLICY, "review", many[:1], 10).ok
    assert not policy.check_changeset(POLICY, "nope", many[:1], 10).ok
