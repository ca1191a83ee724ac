"""runner.review: findings read from the agent's message as untrusted data, checked, and rendered inert."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Sequence

import pytest

from runner.review import (
    MAX_FINDING_CHARS,
    MAX_FINDINGS,
    SCHEMA,
    SEVERITIES,
    Finding,
    Review,
    candidates,
    diff_lines,
    line_count,
    markdown_body,
    markdown_comment,
    pr_request,
    structured,
    target_of,
    telegram_pages,
    validate,
    wanted_paths,
)

LINES = {"bot.py": 20, "tests/test_bot.py": 8, "logo.png": None}


def message(findings: Sequence[object], prose: str = "Two problems.", verdict: str = "request_changes") -> str:
    block = json.dumps({"verdict": verdict, "findings": findings}, indent=2)
    return f"{prose}\n\n```json\n{block}\n```\n"


def test_candidates_read_the_last_json_block_and_its_prose() -> None:
    text = "```json\n{\"findings\": []}\n```\n" + message([{"path": "bot.py", "line": 3, "severity": "major",
                                                            "text": "x"}])
    prose, verdict, found, problem = candidates(text)
    assert problem == ""
    assert verdict == "request_changes"
    assert [c.path for c in found] == ["bot.py"]
    assert "Two problems." in prose and "```json" in prose  # the earlier block is prose, the last is data


@pytest.mark.parametrize(("text", "problem"), [
    ("No block here.", "no ```json block"),
    ("```json\n{not json\n```", "not JSON"),
    ("```json\n[1, 2]\n```", "not an object with a findings list"),
])
def test_candidates_say_why_nothing_was_read(text: str, problem: str) -> None:
    _, _, found, why = candidates(text)
    assert found == () and problem in why


def test_validate_keeps_good_findings_and_drops_each_bad_one_with_its_reason() -> None:
    bad = [
        {"path": "../etc/passwd", "line": 1, "severity": "major", "text": "outside"},
        {"path": "/etc/passwd", "line": 1, "severity": "major", "text": "absolute"},
        {"path": "bot.py", "line": 21, "severity": "major", "text": "past the end"},
        {"path": "bot.py", "line": 0, "severity": "major", "text": "line zero"},
        {"path": "bot.py", "line": True, "severity": "major", "text": "a bool is no line"},
        {"path": "bot.py", "line": 2, "severity": "blocker", "text": "unknown severity"},
        {"path": "bot.py", "line": 2, "severity": "minor", "text": "x" * 10_000_000},
        {"path": "missing.py", "line": 1, "severity": "nit", "text": "no such file"},
        {"path": "logo.png", "line": 1, "severity": "nit", "text": "binary"},
        {"path": ".git/config", "line": 1, "severity": "nit", "text": "git's own"},
        "not an object",
    ]
    good = {"path": "bot.py", "line": 20, "severity": "critical", "text": "  divides by zero  "}
    _, _, found, _ = candidates(message([*bad, good]))
    kept, dropped, count = validate(found, LINES)
    assert kept == (Finding("bot.py", 20, "critical", "divides by zero"),)
    assert count == len(bad)
    reasons = [d.reason for d in dropped]
    assert reasons[0] == reasons[1] == "path outside the repository"
    assert reasons[2] == "line 21 is past the end (20 lines)"
    assert reasons[3] == reasons[4] == "no line number"
    assert reasons[5] == "unknown severity 'blocker'"
    assert reasons[6] == f"text of 10000000 characters is over {MAX_FINDING_CHARS}"
    assert reasons[7:10] == ["no such file in the reviewed tree", "not a text file", "path outside the repository"]
    assert reasons[10] == "no path"


def test_validate_caps_the_number_of_findings() -> None:
    many = [{"path": "bot.py", "line": 1, "severity": "nit", "text": f"n{i}"} for i in range(MAX_FINDINGS + 5)]
    kept, dropped, count = validate(candidates(message(many))[2], LINES)
    assert len(kept) == MAX_FINDINGS and count == 5
    assert {d.reason for d in dropped} == {f"more than {MAX_FINDINGS} findings"}


def test_wanted_paths_names_only_well_formed_paths() -> None:
    found = candidates(message([{"path": p} for p in ("bot.py", "../x", "a/./b", "bot.py", 7)]))[2]
    assert wanted_paths(found) == ("bot.py",)


def test_line_count_counts_a_last_line_without_newline_and_refuses_binary() -> None:
    assert line_count(b"a\nb\n") == 2
    assert line_count(b"a\nb") == 2
    assert line_count(b"") == 0
    assert line_count(b"\x89PNG\0\0") is None


def test_target_of_reads_back_a_pr_request_and_a_ref() -> None:
    assert target_of(pr_request(12)).pr == 12
    assert target_of("Review the change feature/x and report findings; change nothing.").ref == "feature/x"
    assert target_of("Review the change HEAD~1 and report findings").ref == "HEAD~1"
    assert target_of("Review the change a..b; change nothing.").ref == "HEAD"
    assert target_of("Review the change --upload-pack=x and report").ref == "HEAD"  # never an option to git
    assert target_of("anything else").pr is None


def test_diff_lines_are_the_new_side_lines_of_each_hunk() -> None:
    diff = ("diff --git a/bot.py b/bot.py\n--- a/bot.py\n+++ b/bot.py\n@@ -1,3 +1,4 @@\n a\n-b\n+B\n+C\n c\n"
            "@@ -10,2 +11,2 @@\n x\n+y\ndiff --git a/gone.py b/gone.py\n--- a/gone.py\n+++ /dev/null\n"
            "@@ -1 +0,0 @@\n-z\n")
    assert diff_lines(diff) == {"bot.py": frozenset({1, 2, 3, 4, 11, 12})}


def test_markdown_fences_the_agents_text_so_it_cannot_close_the_fence_or_ping() -> None:
    finding = Finding("bot.py", 1, "major", "```\n@octocat ![x](https://example.invalid/p.png)\n````")
    body = markdown_comment(finding)
    fence = re.search(r"^(`{3,})text$", body, re.M)
    assert fence is not None and len(fence.group(1)) == 5
    assert body.endswith("\n" + fence.group(1))
    whole = markdown_body(Review(summary="ok", findings=(finding,), dropped_count=2), [finding])
    assert "2 findings dropped as invalid" in whole and "`bot.py:1` (outside the diff)" in whole


def test_telegram_pages_carry_the_whole_review_split_between_lines_and_escaped() -> None:
    findings = tuple(Finding("bot.py", i + 1, "minor", f"<b>finding {i}</b> & more\n" + "detail " * 60)
                     for i in range(20))
    review = Review(summary="Summary <script>", findings=findings)
    pages = telegram_pages(review, title="PR #3")
    assert len(pages) > 1
    assert all(len(p) < 4096 for p in pages)
    text = html.unescape(re.sub(r"</?(b|code)>", "", "\n".join(pages)))
    for finding in findings:
        assert finding.text in text  # whole, not cut
    assert "<script>" not in "".join(pages) and "<b>finding" not in "".join(pages)


def test_telegram_pages_cut_a_line_longer_than_a_message_outside_entities() -> None:
    review = Review(summary="&" * 9000)
    pages = telegram_pages(review)
    assert all(len(p) < 4096 for p in pages)
    assert html.unescape("".join(p.split("\n", 1)[-1] if i == 0 else p for i, p in enumerate(pages))) \
        .count("&") == 9000


def test_review_survives_json_and_stored_findings_are_checked_again() -> None:
    review = Review(summary="s", findings=(Finding("bot.py", 2, "nit", "t"),), dropped_count=3, verdict="approve",
                    head_sha="abc", base_sha="def", pr=4, posted="https://x/pull/4#r1")
    assert Review.from_json(json.loads(json.dumps(review.to_json()))) == review
    tampered = review.to_json()
    tampered["findings"].append({"path": "bot.py", "line": 0, "severity": "nit", "text": "t"})
    restored = Review.from_json(tampered)
    assert restored is not None and len(restored.findings) == 1
    assert Review.from_json("nonsense") is None


def test_structured_output_is_read_as_the_block_is_and_its_schema_asks_the_same_shape() -> None:
    findings = [{"path": "bot.py", "line": 3, "severity": "major", "text": "x"}]
    data = {"verdict": "approve", "findings": findings}
    assert structured(data) == candidates(message(findings, verdict="approve"))[1:]
    item = SCHEMA["properties"]["findings"]["items"]
    assert set(item["required"]) == set(findings[0]) and item["properties"]["severity"]["enum"] == list(SEVERITIES)


def test_candidates_read_a_message_full_of_unclosed_fences_in_linear_time() -> None:
    hostile = "```json\n" * 300_000  # no closing fence: a regex rescanning from each opening one takes hours
    started = time.monotonic()
    _, _, found, problem = candidates(hostile)
    assert time.monotonic() - started < 10.0
    assert found == () and "no ```json block" in problem


def test_markdown_body_stays_under_githubs_limit() -> None:
    many = [Finding("bot.py", i + 1, "minor", "y" * MAX_FINDING_CHARS) for i in range(MAX_FINDINGS)]
    body = markdown_body(Review(summary="s" * 3000, findings=tuple(many)), many)
    assert len(body) < 65_536
    assert body.endswith("more findings, too long for one review: the task's result holds them all.")
