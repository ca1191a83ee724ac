"""runner.alerts.logql: the selector built from an alert, the check any configured query passes, the window."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.alerts.alertmanager import Alert, WebhookError, parse_alertmanager
from runner.alerts.logql import escape_logql, logql_for, query_window, validate_logql

ALERTMANAGER = Path(__file__).parent / "data" / "alertmanager"


def _am(name: str) -> bytes:
    return (ALERTMANAGER / name).read_bytes()


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
