"""runner.alerts.alertmanager: recorded Alertmanager 0.25 bodies, directly posted reports, hostile JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.alerts.alertmanager import (
    MAX_BODY_BYTES,
    AlertNotification,
    DirectReport,
    WebhookError,
    parse_alertmanager,
    parse_auto_fix,
    parse_direct_report,
)
from runner.alerts.loki import parse_loki_streams
from runner.errors import RunnerError

DATA = Path(__file__).parent / "data"
MALFORMED: list[dict[str, Any]] = json.loads((DATA / "alertmanager" / "malformed.json").read_text())


def _am(name: str) -> bytes:
    return (DATA / "alertmanager" / name).read_bytes()


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
