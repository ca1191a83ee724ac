"""runner.session: the CLI's transcript is data. Only JSON-object lines of its own session, under the cap, are kept,
re-serialised by us; anything else is refused with a reason (the follow-up then starts a new session)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import session
from runner.prompts import follow_up_prompt
from runner.session import SessionInvalid, Transcript

SID = "0b9c4e52-8d41-4a53-9d62-3f0c2a6b7e10"


def _lines(*records: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_parse_keeps_the_sessions_records_reserialised() -> None:
    raw = _lines({"type": "user", "sessionId": SID, "message": {"role": "user", "content": "hi"}},
                 {"type": "summary", "summary": "t"}) + b"\n"
    transcript = session.parse(SID, raw.replace(b'": "', b'":   "'))
    assert transcript.records == 2
    assert transcript.text.splitlines()[0] == json.dumps(
        {"type": "user", "sessionId": SID, "message": {"role": "user", "content": "hi"}}, separators=(",", ":"))


@pytest.mark.parametrize(("session_id", "raw", "why"), [
    ("../../etc/passwd", _lines({"sessionId": SID}), "not a session id"),
    (SID, b"", "no record of its session"),
    (SID, _lines({"type": "summary"}), "no record of its session"),
    (SID, b'{"sessionId": "' + SID.encode() + b'"}\nnot json\n', "line 2 of the transcript is not JSON"),
    (SID, _lines({"sessionId": SID}, [1, 2]), "line 2 of the transcript is not a JSON object"),
    (SID, _lines({"sessionId": SID}, {"sessionId": "11111111-2222-4333-8444-555555555555"}), "another session"),
    (SID, b'{"sessionId": "' + SID.encode() + b'", "x": "\xff"}\n', "not UTF-8"),
])
def test_parse_refuses_what_is_not_this_sessions_transcript(session_id: str, raw: bytes, why: str) -> None:
    with pytest.raises(SessionInvalid, match=why):
        session.parse(session_id, raw)


def test_parse_refuses_a_transcript_over_the_cap() -> None:
    raw = _lines({"sessionId": SID, "pad": "x" * 200})
    with pytest.raises(SessionInvalid, match="over the cap of 100"):
        session.parse(SID, raw, cap=100)


def test_load_reads_back_the_one_kept_session_and_says_when_there_is_none(tmp_path: Path) -> None:
    with pytest.raises(SessionInvalid, match="no session was kept"):
        session.load(tmp_path)
    kept = tmp_path / session.KEPT_DIR
    kept.mkdir()
    (kept / f"{SID}.jsonl").write_bytes(_lines({"sessionId": SID, "type": "user"}))
    assert session.load(tmp_path) == Transcript(SID, json.dumps({"sessionId": SID, "type": "user"},
                                                                separators=(",", ":")) + "\n", 1)
    (kept / f"{SID}.jsonl").write_bytes(b"{damaged\n")
    with pytest.raises(SessionInvalid, match="not JSON"):
        session.load(tmp_path)


def test_a_new_session_is_told_so_and_given_the_task_the_diff_and_the_owners_words() -> None:
    prompt = follow_up_prompt("greet with a !", number=3, resumed=False, task_prompt="add greet()",
                              diff="+def greet(name):", why_new="no session was kept for the task")
    assert "This is a new session" in prompt and "no session was kept for the task" in prompt
    assert "add greet()" in prompt and "+def greet(name):" in prompt and "greet with a !" in prompt
    resumed = follow_up_prompt("greet with a !", number=3, resumed=True)
    assert "new session" not in resumed and "+def greet" not in resumed and "pull request #3" in resumed
