"""runner.alerts.tracebacks: the recorded corpus, fingerprint stability, and hostile input."""

from __future__ import annotations

import json
import random
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.alerts.tracebacks import (
    MAX_LINE_CHARS,
    MAX_TEXT_CHARS,
    ParsedTraceback,
    extract_tracebacks,
    normalise_message,
    parse_traceback,
)

CORPUS = Path(__file__).parent / "data" / "tracebacks"
EXPECTED: dict[str, Any] = yaml.safe_load((CORPUS / "expected.yaml").read_text())
ROOTS: tuple[str, ...] = tuple(EXPECTED["repo_roots"])
CORPUS_FILES = sorted(p.name for p in CORPUS.iterdir() if p.name != "expected.yaml")


def _parsed(name: str) -> list[ParsedTraceback]:
    return extract_tracebacks((CORPUS / name).read_text(encoding="utf-8"), repo_roots=ROOTS)


def _ref(ref: str) -> ParsedTraceback:
    name, _, index = ref.partition("#")
    return _parsed(name)[int(index or 0)]


def _where(tb: ParsedTraceback) -> str | None:
    if tb.repo_frame is None:
        return None
    return f"{tb.repo_path}:{tb.repo_frame.function}"


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """A hang guard, not a benchmark: fails instead of letting a runaway regex stall the suite."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------------------------------------ corpus


def test_corpus_holds_at_least_thirty_tracebacks_all_described() -> None:
    assert len(CORPUS_FILES) >= 30
    assert sorted(EXPECTED["files"]) == CORPUS_FILES


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_extract_tracebacks_matches_expected_corpus_entry(name: str) -> None:
    found = _parsed(name)
    expected = EXPECTED["files"][name]
    assert len(found) == len(expected), [tb.summary for tb in found]
    for tb, want in zip(found, expected, strict=True):
        assert tb.exc_type == want["exc_type"]
        assert _where(tb) == want["repo_frame"]
        if "message" in want:
            assert tb.message == want["message"]
        if "truncated" in want:
            assert tb.truncated is want["truncated"]
        if "chain" in want:
            assert [c.exc_type for c in tb.chain] == want["chain"]
        if "relations" in want:
            assert [c.relation for c in tb.chain] == want["relations"]
        if "members" in want:
            assert [m.exc_type for m in tb.group_members] == want["members"]
        assert re.fullmatch(r"[0-9a-f]{16}", tb.fingerprint)
        assert tb.summary and "\n" not in tb.summary


@pytest.mark.parametrize("bug", sorted(EXPECTED["same_fingerprint"]))
def test_fingerprint_is_shared_by_one_bug_in_every_shape(bug: str) -> None:
    refs = EXPECTED["same_fingerprint"][bug]
    fingerprints = {ref: _ref(ref).fingerprint for ref in refs}
    assert len(set(fingerprints.values())) == 1, fingerprints


def test_fingerprint_differs_between_different_bugs() -> None:
    for refs in EXPECTED["different_fingerprint"]:
        fingerprints = [_ref(ref).fingerprint for ref in refs]
        assert len(set(fingerprints)) == len(refs)


def test_fingerprint_groups_do_not_collide_with_each_other() -> None:
    firsts = [_ref(refs[0]).fingerprint for refs in EXPECTED["same_fingerprint"].values()]
    assert len(set(firsts)) == len(firsts)


# ------------------------------------------------------------------------------------------------ shapes

PLAIN = """\
Traceback (most recent call last):
  File "/usr/local/lib/python3.11/site-packages/aiogram/dispatcher/event/handler.py", line 43, in call
    return await wrapped()
  File "/app/bot/handlers/balance.py", line 27, in get_balance
    average = total / count
              ~~~~~~^~~~~~~
ZeroDivisionError: division by zero
"""


def test_parse_traceback_reads_frames_source_and_summary() -> None:
    tb = parse_traceback(PLAIN, repo_roots=("/app",))
    assert tb is not None
    assert tb.summary == "ZeroDivisionError in bot/handlers/balance.py:get_balance"
    assert [f.function for f in tb.frames] == ["call", "get_balance"]
    assert tb.frames[1].line == 27
    assert tb.frames[1].source_line == "average = total / count"
    assert tb.repo_frame == tb.frames[1]
    assert not tb.truncated and tb.chain == () and tb.group_members == ()


def test_parse_traceback_returns_none_without_a_traceback() -> None:
    assert parse_traceback("INFO bot started\nERROR: something failed\nKeyError: not a traceback") is None
    assert parse_traceback("") is None


def test_repo_roots_absolute_and_relative_shorten_the_same_file_alike() -> None:
    a = parse_traceback(PLAIN, repo_roots=("/app",))
    b = parse_traceback(PLAIN.replace("/app/bot/", "/srv/bot-v2/bot/"), repo_roots=("bot/",))
    assert a is not None and b is not None
    assert a.repo_path == b.repo_path == "bot/handlers/balance.py"
    assert a.fingerprint == b.fingerprint


def test_repo_roots_exclude_a_virtualenv_inside_the_repo() -> None:
    text = PLAIN.replace("/usr/local/lib/python3.11/site-packages", "/app/.venv/lib/python3.11/site-packages")
    tb = parse_traceback(text, repo_roots=("/app",))
    assert tb is not None and tb.repo_frame is not None
    assert tb.repo_frame.function == "get_balance"


def test_repo_frame_is_none_when_no_frame_is_under_a_root() -> None:
    tb = parse_traceback(PLAIN, repo_roots=("/workspace",))
    assert tb is not None and tb.repo_frame is None and tb.repo_path is None


def test_extract_tracebacks_keeps_a_multiline_message_and_stops_at_the_next_record() -> None:
    text = PLAIN.replace(
        "ZeroDivisionError: division by zero",
        "ValueError: bad row\n[SQL: SELECT 1]\n(Background on this error at: https://sqlalche.me/e/20/gkpj)",
    )
    text += "2024-05-01 12:00:00,000 INFO bot: next update\n"
    (tb,) = extract_tracebacks(text, repo_roots=("/app",))
    assert tb.message.splitlines() == [
        "bad row",
        "[SQL: SELECT 1]",
        "(Background on this error at: https://sqlalche.me/e/20/gkpj)",
    ]


def test_extract_tracebacks_reads_back_to_back_tracebacks_separately() -> None:
    found = extract_tracebacks(PLAIN + PLAIN.replace("get_balance", "get_total"), repo_roots=("/app",))
    assert [tb.repo_frame.function for tb in found if tb.repo_frame] == ["get_balance", "get_total"]


def test_exception_group_members_keep_their_own_frames_and_fingerprints() -> None:
    (tb,) = _parsed("real_py311_exception_groups.txt")[1:]
    value_error, key_error = tb.group_members
    assert value_error.message == "bad value 42"
    assert _where(value_error) == "bot/jobs/fanout.py:a"
    assert _where(key_error) == "bot/jobs/fanout.py:b"
    assert value_error.fingerprint != key_error.fingerprint


def test_nested_exception_group_is_parsed_recursively() -> None:
    (tb,) = _parsed("nested_exception_group.txt")
    inner = tb.group_members[1]
    assert inner.exc_type == "ExceptionGroup"
    assert [m.exc_type for m in inner.group_members] == ["AssertionError"]
    assert _where(inner.group_members[0]) == "bot/payments/reconcile.py:reconcile"


def test_truncated_json_line_cut_at_the_line_limit_is_salvaged() -> None:
    record = {"event": "handler failed", "exception": PLAIN, "padding": "x" * (2 * MAX_LINE_CHARS)}
    line = json.dumps({"exception": PLAIN[:200], "padding": "x" * (2 * MAX_LINE_CHARS)})
    (tb,) = extract_tracebacks(line, repo_roots=("/app",))
    assert tb.truncated and tb.exc_type == ""
    # A whole record is read as it is, and one longer than the cap is read up to the cap.
    (whole,) = extract_tracebacks(json.dumps(record), repo_roots=("/app",))
    assert whole.exc_type == "ZeroDivisionError" and whole.truncated


def test_interleaved_prefix_without_request_id_is_not_mistaken_for_a_frame() -> None:
    noise = "2024-05-01 12:00:00,500 INFO aiogram.event: Update id=1 is handled\n"
    lines = PLAIN.splitlines(keepends=True)
    text = "".join(lines[:3]) + noise + "".join(lines[3:])
    (tb,) = extract_tracebacks(text, repo_roots=("/app",))
    assert tb.exc_type == "ZeroDivisionError" and not tb.truncated


# ------------------------------------------------------------------------------------------------ normalise


@pytest.mark.parametrize(
    ("message", "normalised"),
    [
        ("'user_1001'", "<str>"),
        ("KeyError: 918273645", "KeyError: <num>"),
        ("payment 8f14e45f-ceea-467f-a0e6-1f2a3b4c5d6e failed for user 42", "payment <uuid> failed for user <num>"),
        ("<Task pending coro=<main()> at 0x7f3a2c1d9e80>", "<Task pending coro=<main()> at <addr>>"),
        ("[Errno 2] No such file: /tmp/tmpa1b2c3/upload.jpg", "[Errno <num>] No such file: <tmp>"),
        ('duplicate key "users_email_key"', "duplicate key <str>"),
        ("commit 3f2a9c1e77b04d21aa", "commit <hex>"),
        ("user_42   spent\n  -3.50", "user_<num> spent <num>"),
    ],
)
def test_normalise_message_replaces_variables(message: str, normalised: str) -> None:
    assert normalise_message(message) == normalised


def test_normalise_message_is_bounded() -> None:
    assert len(normalise_message("word " * 100_000)) <= 500


# ------------------------------------------------------------------------------------------------ hostile input


class _WholeTextGuard(str):
    """A string that fails any operation reading it whole, except a slice of the capped prefix."""

    def __getitem__(self, key: Any) -> str:
        assert isinstance(key, slice) and key.start in (None, 0) and key.stop is not None
        assert key.stop <= MAX_TEXT_CHARS, "read past the text cap"
        return str.__getitem__(self, key)

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the whole input was scanned")

    splitlines = split = find = index = count = replace = strip = encode = lower = _refuse
    __iter__ = __contains__ = _refuse


def test_extract_tracebacks_reads_only_the_capped_prefix_of_a_50_mb_line() -> None:
    huge = _WholeTextGuard(PLAIN + "x" * (50 << 20))
    with _deadline(20):
        (tb,) = extract_tracebacks(huge, repo_roots=("/app",))
    assert tb.exc_type == "ZeroDivisionError"


@pytest.mark.parametrize(
    "chunk",
    [
        'File "',
        '"exception": "Traceback (most recent call last):\\n',
        "  | ",
        "+-+",
        "0123456789abcdef",
        "'",
        'exception="Traceback (most recent call last):\\n  File \\"',
        "{",
    ],
)
def test_extract_tracebacks_handles_adversarial_lines_at_the_cap(chunk: str) -> None:
    line = (chunk * (MAX_LINE_CHARS // len(chunk) + 1))[: MAX_LINE_CHARS * 2]
    text = "Traceback (most recent call last):\n" + "\n".join([line] * 20)
    with _deadline(20):
        extract_tracebacks(text)
        normalise_message(line)


def test_extract_tracebacks_survives_many_open_prefixes() -> None:
    text = "\n".join(f"2024-05-01 12:00:00 ERROR [req-{i}] Traceback (most recent call last):" for i in range(500))
    with _deadline(20):
        found = extract_tracebacks(text)
    assert all(tb.truncated for tb in found)


_FRAGMENTS = st.sampled_from(
    [
        "Traceback (most recent call last):",
        '  File "/app/bot/x.py", line 3, in f',
        "    x = 1",
        "    ^^^^^",
        "ValueError: boom",
        "KeyError",
        "",
        "During handling of the above exception, another exception occurred:",
        "The above exception was the direct cause of the following exception:",
        "  + Exception Group Traceback (most recent call last):",
        "  +-+---------------- 1 ----------------",
        "    | ValueError: 1",
        "    +------------------------------------",
        '{"exception": "Traceback (most recent call last):\\n  File \\"a.py\\", line 1, in f\\nE: x"}',
        '{"exception": [{"exc_type": "E", "frames": [{"filename": 1}]}]}',
        '{"log": "  File \\"/app/a.py\\", line 2, in g\\n"}',
        'level=error exception="Traceback (most recent call last):\\n  File \\"x\\", line 1, in f\\nE: 1"',
        "2024-05-01 12:00:00,000 ERROR [r1] ",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_FRAGMENTS, st.text(max_size=40)), max_size=40), st.text(max_size=20))
def test_extract_tracebacks_never_raises_on_random_text(parts: list[str], prefix: str) -> None:
    text = "\n".join(prefix + p if i % 3 == 0 else p for i, p in enumerate(parts))
    for tb in extract_tracebacks(text, repo_roots=("/app", "bot/")):
        assert isinstance(tb.fingerprint, str) and len(tb.fingerprint) == 16


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(CORPUS_FILES), st.randoms(use_true_random=False))
def test_fingerprint_is_invariant_under_line_number_changes(name: str, rnd: random.Random) -> None:
    text = (CORPUS / name).read_text(encoding="utf-8")
    shifted = re.sub(r"(, line )(\d+)", lambda m: m.group(1) + str(rnd.randint(1, 9999)), text)
    before = [tb.fingerprint for tb in extract_tracebacks(text, repo_roots=ROOTS)]
    after = [tb.fingerprint for tb in extract_tracebacks(shifted, repo_roots=ROOTS)]
    assert before == after


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=10**15), st.uuids(), st.integers(min_value=0, max_value=10**15))
def test_fingerprint_is_invariant_under_user_ids_in_messages(user_id: int, uid: object, other: int) -> None:
    def variant(user: int) -> str:
        message = f"LookupError: no wallet for user {user} ({uid}) at 0x{user:x}"
        return PLAIN.replace("ZeroDivisionError: division by zero", message)

    # Under a root that matches no frame the message is what tells bugs apart: still free of ids.
    a = parse_traceback(variant(user_id), repo_roots=("/workspace",))
    b = parse_traceback(variant(other), repo_roots=("/workspace",))
    assert a is not None and b is not None and a.fingerprint == b.fingerprint


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_interleaved_requests_are_separated_in_any_order(rnd: random.Random) -> None:
    a = PLAIN.splitlines()
    b = PLAIN.replace("get_balance", "show_profile").replace("ZeroDivisionError", "KeyError").splitlines()
    queues = {"req-a": list(a), "req-b": list(b), "req-c": ["handled update"] * 5}
    lines = []
    while any(queues.values()):
        req = rnd.choice([k for k, v in queues.items() if v])
        level = "INFO " if req == "req-c" else "ERROR"
        stamp = f"2024-05-01T12:00:0{rnd.randint(0, 9)}.{rnd.randint(0, 999):03d}Z"
        lines.append(f"{stamp} {level} [{req}] {queues[req].pop(0)}")
    found = extract_tracebacks("\n".join(lines), repo_roots=("/app",))
    assert sorted(tb.summary for tb in found) == [
        "KeyError in bot/handlers/balance.py:show_profile",
        "ZeroDivisionError in bot/handlers/balance.py:get_balance",
    ]
    assert not any(tb.truncated for tb in found)
