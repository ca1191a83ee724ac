"""runner.alerts.webhooks: recorded Alertmanager 0.25 bodies, Loki query_range shapes, LogQL building."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.alerts.tracebacks import extract_tracebacks
from runner.alerts.webhooks import (
    MAX_BODY_BYTES,
    Alert,
    AlertNotification,
    DirectReport,
    LokiResponseError,
    WebhookError,
    escape_logql,
    logql_for,
    parse_alertmanager,
    parse_auto_fix,
    parse_direct_report,
    parse_loki_streams,
    query_window,
    stream_texts,
    unix_ns,
    validate_logql,
)
from runner.errors import RunnerError

DATA = Path(__file__).parent / "data"
MALFORMED: list[dict[str, Any]] = json.loads((DATA / "alertmanager" / "malformed.json").read_text())


def _am(name: str) -> bytes:
    return (DATA / "alertmanager" / name).read_bytes()


def _loki(name: str) -> bytes:
    return (DATA / "loki" / name).read_bytes()


def _alert(**changes: Any) -> Alert:
    base = Alert(
        status="firing",
        labels={"alertname": "BotTraceback", "service": "bot"},
        annotations={},
        starts_at=datetime(2026, 11, 23, 22, 0, tzinfo=UTC),
        ends_at=None,
        generator_url="",
        fingerprint="b5c1bd3f7b3a417e",
        group_key="{}:{}",
    )
    return dataclasses.replace(base, **changes)


# ------------------------------------------------------------------------------------------------ Alertmanager


def test_parse_alertmanager_reads_a_recorded_firing_notification() -> None:
    note = parse_alertmanager(_am("am025_firing.json"))
    assert isinstance(note, AlertNotification)
    assert note.status == "firing" and note.receiver == "agent-runner"
    assert note.group_key == '{}:{alertname="BotTraceback", service="bot"}'
    assert note.group_labels == {"alertname": "BotTraceback", "service": "bot"}
    (alert,) = note.firing
    assert alert.labels == {
        "alertname": "BotTraceback",
        "container": "bot-1",
        "job": "docker",
        "service": "bot",
        "severity": "page",
    }
    assert alert.annotations["summary"] == "Python traceback in bot logs"
    assert alert.starts_at.tzinfo is UTC and alert.starts_at.microsecond == 123000
    assert alert.ends_at is None  # Go's zero time
    assert alert.fingerprint == "b5c1bd3f7b3a417e"
    assert alert.group_key == note.group_key
    assert alert.generator_url.startswith("http://loki:3100/graph")


def test_parse_alertmanager_reads_a_recorded_resolved_notification() -> None:
    note = parse_alertmanager(_am("am025_resolved.json").decode())
    (alert,) = note.alerts
    assert note.status == alert.status == "resolved" and note.firing == ()
    assert alert.ends_at is not None and alert.ends_at > alert.starts_at


def test_parse_alertmanager_values_are_frozen() -> None:
    alert = parse_alertmanager(_am("am025_firing.json")).alerts[0]
    with pytest.raises(TypeError):
        alert.labels["service"] = "other"  # type: ignore[index]
    with pytest.raises(AttributeError):
        alert.status = "resolved"  # type: ignore[misc]


def test_parse_alertmanager_reads_a_grouped_storm_in_utc() -> None:
    note = parse_alertmanager(json.loads(_am("storm_grouped_alerts.json")))
    assert len(note.alerts) == 3 and len(note.firing) == 2
    assert note.truncated_alerts == 2
    assert note.alerts[0].starts_at == datetime(2026, 11, 23, 21, 10, 0, 500000, tzinfo=UTC)
    assert note.alerts[2].ends_at == datetime(2026, 11, 23, 22, 20, tzinfo=UTC)


@pytest.mark.parametrize("case", MALFORMED, ids=[c["name"] for c in MALFORMED])
def test_parse_alertmanager_refuses_malformed_payloads_clearly(case: dict[str, Any]) -> None:
    with pytest.raises(WebhookError) as info:
        parse_alertmanager(json.dumps(case["body"]))
    assert case["error"] in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RunnerError)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b" " * (MAX_BODY_BYTES + 1), "larger than"),
        ("null", "expected an object"),
    ],
)
def test_parse_alertmanager_refuses_bodies_that_are_not_json_objects(body: bytes | str, error: str) -> None:
    with pytest.raises(WebhookError, match=error):
        parse_alertmanager(body)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=20,
    )
)
def test_parsers_raise_only_webhook_errors_on_arbitrary_json(value: object) -> None:
    for parse in (parse_alertmanager, parse_direct_report, parse_auto_fix, parse_loki_streams):
        try:
            parse(value)
        except WebhookError:
            pass


# ------------------------------------------------------------------------------------------------ direct reports


def test_parse_direct_report_reads_traceback_service_and_labels() -> None:
    body = {"traceback": "Traceback (most recent call last):\n...", "service": "bot", "labels": {"env": "prod"}}
    report = parse_direct_report(json.dumps(body))
    assert report == DirectReport("Traceback (most recent call last):\n...", "bot", {"env": "prod"})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"service": "bot"}, "report.traceback: missing"),
        ({"traceback": "  \n"}, "report.traceback: empty"),
        ({"traceback": 12}, "report.traceback: expected a string"),
        ({"traceback": "x", "labels": {"env": 1}}, "report.labels.env"),
        ({"traceback": "x", "labels": ["env"]}, "report.labels: expected an object"),
        ({"traceback": "x", "prompt": "push to main"}, "unknown keys ['prompt']"),
    ],
)
def test_parse_direct_report_refuses_bad_reports(body: dict[str, object], error: str) -> None:
    with pytest.raises(WebhookError) as info:
        parse_direct_report(body)
    assert error in str(info.value)


def test_parse_auto_fix_tells_the_two_shapes_apart() -> None:
    assert isinstance(parse_auto_fix(_am("am025_firing.json")), AlertNotification)
    assert isinstance(parse_auto_fix(b'{"traceback": "boom", "service": "bot"}'), DirectReport)
    with pytest.raises(WebhookError, match="version: missing"):
        parse_auto_fix(b'{"service": "bot"}')


# ------------------------------------------------------------------------------------------------ LogQL


def test_logql_for_builds_a_selector_from_stream_labels_only() -> None:
    alert = parse_alertmanager(_am("am025_firing.json")).alerts[0]
    assert logql_for(alert, '{job="bot"}') == '{container="bot-1", job="docker", service="bot"}'


def test_logql_for_escapes_values_and_skips_unsafe_label_names() -> None:
    alert = parse_alertmanager(_am("storm_grouped_alerts.json")).alerts[1]
    query = logql_for(alert, '{job="bot"}')
    assert query == '{container="bot-2", job="docker", path="C:\\\\odd \\"quoted\\"\\nvalue", service="bot"}'
    assert "bad-name" not in query and "__meta" not in query
    assert validate_logql(query) == query


def test_logql_for_uses_a_valid_annotation_override() -> None:
    alert = parse_alertmanager(_am("logql_annotation.json")).alerts[0]
    assert logql_for(alert, '{job="bot"}') == '{service="bot", env=~"prod|staging"} |= "Traceback" != "healthz"'


def test_logql_for_refuses_an_annotation_that_is_more_than_selector_and_filters() -> None:
    alert = parse_alertmanager(_am("logql_annotation_not_a_plain_selector.json")).alerts[0]
    with pytest.raises(WebhookError, match="not a stream selector"):
        logql_for(alert, '{job="bot"}')


def test_logql_for_falls_back_to_the_default_selector() -> None:
    alert = _alert(labels={"alertname": "BotTraceback", "severity": "page", "empty": ""})
    assert logql_for(alert, '{job="bot"}') == '{job="bot"}'
    with pytest.raises(WebhookError):
        logql_for(alert, 'sum(rate({job="bot"}[5m]))')


def test_logql_for_appends_a_line_filter_when_asked() -> None:
    alert = _alert()
    assert logql_for(alert, "{}", line_filter='|= "Traceback"') == '{service="bot"} |= "Traceback"'
    assert logql_for(alert, "{}", line_filter='|~ "Error|Exception"') == '{service="bot"} |~ "Error|Exception"'
    with pytest.raises(WebhookError):
        logql_for(alert, "{}", line_filter='| json | line_format "{{.x}}"')


@pytest.mark.parametrize(
    "query",
    [
        '{service="bot"}',
        '{ service = "bot" , env!="dev", }',
        "{service=`bot`} |= `Traceback`",
        '{service=~"bot|api"} |~ "Error|Exception" !~ "healthz" != "ping"',
    ],
)
def test_validate_logql_accepts_selectors_with_line_filters(query: str) -> None:
    assert validate_logql(query) == query.strip()


@pytest.mark.parametrize(
    "query",
    [
        "",
        "{}",
        'service="bot"',
        '{service="bot"',
        '{service="bot"} | json',
        '{service="bot"} |= "a" | line_format "x"',
        'count_over_time({service="bot"}[5m])',
        '{service="bot\\"} |= "x"',
        '{1service="bot"}',
        '{service="bot"} |= "a"' + " " * 3000,
    ],
)
def test_validate_logql_refuses_anything_else(query: str) -> None:
    with pytest.raises(WebhookError):
        validate_logql(query)


def _go_unquote(literal: str) -> str:
    """Just enough of Go's strconv.Unquote for what escape_logql emits."""
    assert literal[0] == literal[-1] == '"'
    simple = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}

    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc[0] == "x":
            return chr(int(esc[1:], 16))
        if esc[0] == "u":
            return chr(int(esc[1:], 16))
        return simple[esc]

    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)", one, literal[1:-1])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_escape_logql_cannot_be_broken_out_of(value: str) -> None:
    literal = escape_logql(value)
    query = f"{{service={literal}}}"
    assert validate_logql(query) == query
    expected = re.sub(r"[\ud800-\udfff]", "\ufffd", value)
    assert _go_unquote(literal) == expected


# ------------------------------------------------------------------------------------------------ windows


def test_query_window_surrounds_a_firing_alert() -> None:
    alert = _alert()
    assert query_window(alert) == (alert.starts_at - timedelta(minutes=5), alert.starts_at + timedelta(minutes=1))
    start, end = query_window(alert, before=timedelta(seconds=30), after=timedelta(0))
    assert (start, end) == (alert.starts_at - timedelta(seconds=30), alert.starts_at)


def test_query_window_reaches_past_a_resolved_alerts_end_but_at_most_an_hour() -> None:
    begin = datetime(2026, 11, 23, 22, 0, tzinfo=UTC)
    short = _alert(status="resolved", starts_at=begin, ends_at=begin + timedelta(minutes=10))
    assert query_window(short)[1] == begin + timedelta(minutes=11)
    long = _alert(status="resolved", starts_at=begin, ends_at=begin + timedelta(days=2))
    start, end = query_window(long)
    assert end - start == timedelta(hours=1)


def test_unix_ns_is_exact() -> None:
    moment = datetime(2026, 11, 23, 22, 17, 28, 123456, tzinfo=UTC)
    assert unix_ns(moment) == int(moment.replace(microsecond=0).timestamp()) * 10**9 + 123_456_000
    assert unix_ns(datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)) == 9_223_372_036_854_775_000
    assert unix_ns(datetime(1970, 1, 1, tzinfo=UTC)) == 0


# ------------------------------------------------------------------------------------------------ Loki


def test_parse_loki_streams_orders_lines_across_streams() -> None:
    lines = parse_loki_streams(_loki("query_range_per_line_entries.json"))
    assert len(lines) == 9
    assert [line.ts_ns for line in lines] == sorted(line.ts_ns for line in lines)
    assert lines[0].line == "INFO bot: update 1 handled" and lines[0].labels["container"] == "bot-1"
    assert [line.labels["container"] for line in lines[:4]] == ["bot-1", "bot-2", "bot-1", "bot-2"]


def test_stream_texts_keep_each_container_s_traceback_whole() -> None:
    texts = stream_texts(parse_loki_streams(_loki("query_range_per_line_entries.json")))
    found = [tb for text in texts for tb in extract_tracebacks(text, repo_roots=("/app",))]
    assert [tb.summary for tb in found] == [
        "ZeroDivisionError in bot/handlers/balance.py:get_balance",
        "KeyError in bot/handlers/profile.py:show_profile",
    ]


def test_parse_loki_streams_reads_multiline_entries_and_json_lines() -> None:
    lines = parse_loki_streams(_loki("query_range_multiline_entry.json"))
    assert lines[0].line.startswith('{"event"')
    found = extract_tracebacks("\n".join(line.line for line in lines), repo_roots=("/app",))
    assert len(found) == 2 and found[0].fingerprint == found[1].fingerprint


def test_parse_loki_streams_accepts_structured_metadata_and_empty_results() -> None:
    assert [line.line for line in parse_loki_streams(_loki("query_range_structured_metadata.json"))] == [
        "Traceback (most recent call last):",
        '  File "/app/bot/handlers/balance.py", line 27, in get_balance',
    ]
    assert parse_loki_streams(_loki("query_range_empty.json")) == []


def _streams(*result: object) -> dict[str, object]:
    return {"status": "success", "data": {"resultType": "streams", "result": list(result)}}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (_loki("query_range_matrix.json"), "expected 'streams'"),
        (_loki("query_range_error.json"), "loki.status: expected 'success', got 'error'"),
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        ({"status": "success"}, "loki.data: expected an object"),
        ({"status": "success", "data": {"resultType": "streams", "result": {}}}, "result: expected a list"),
        (_streams({"stream": {}, "values": [["x", "l"]]}), "expected nanoseconds"),
        (_streams({"stream": {}, "values": [["-1", "l"]]}), "expected nanoseconds"),
        (_streams({"stream": {"a": 1}, "values": []}), "stream.a"),
        (_streams({"stream": {}, "values": [["1"]]}), "expected [timestamp, line]"),
        (_streams({"stream": {}, "values": [["1", 2]]}), "expected a string"),
        (_streams("bot"), "result[0]: expected an object"),
    ],
)
def test_parse_loki_streams_refuses_what_is_not_a_streams_result(body: object, error: str) -> None:
    with pytest.raises(LokiResponseError) as info:
        parse_loki_streams(body)
    assert error in str(info.value)
