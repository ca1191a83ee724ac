"""runner.alerts.loki: LokiClient against the Loki stand-in (in process) and against nothing at all; the stand-in's
LogQL and ruler; recorded query_range answers parsed."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml

from runner.alerts.loki import LokiClient, LokiResponseError, LokiUnavailable, parse_loki_streams, stream_texts, unix_ns
from runner.alerts.tracebacks import extract_tracebacks
from tests.fakes.loki import FakeLoki, LogQLError, LogQuery, Rule

RULES = Path(__file__).parents[1] / "monitoring" / "loki-rules.yaml"
NOW = datetime(2026, 11, 23, 22, 0, tzinfo=UTC)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 10**9


def _client(fake: FakeLoki, **kwargs: float) -> LokiClient:
    return LokiClient("http://loki:3100", transport=httpx.ASGITransport(app=fake.app), backoff=0, **kwargs)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_query_range_returns_matching_lines_oldest_first() -> None:
    fake = FakeLoki()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://loki") as push:
        body = {"streams": [
            {"stream": {"service": "bot", "container": "bot-1"},
             "values": [[str(_ns(NOW) + 2), "second"], [str(_ns(NOW) + 1), "first"]]},
            {"stream": {"service": "bot", "container": "bot-2"}, "values": [[str(_ns(NOW) + 3), "third"]]},
            {"stream": {"service": "web"}, "values": [[str(_ns(NOW)), "elsewhere"]]},
        ]}
        assert (await push.post("/loki/api/v1/push", json=body)).status_code == 204
    async with _client(fake) as loki:
        lines = await loki.query_range('{service="bot"}', NOW - timedelta(minutes=1), NOW + timedelta(minutes=1))
        filtered = await loki.query_range('{service="bot", container=~"bot-[0-9]"} |~ "th.rd"',
                                          NOW - timedelta(minutes=1), NOW + timedelta(minutes=1))
    assert [line.line for line in lines] == ["first", "second", "third"]
    assert lines[0].labels == {"container": "bot-1", "service": "bot"}
    assert [line.line for line in filtered] == ["third"]
    sent = fake.queries[0]
    assert sent["direction"] == "forward" and sent["start"] == str(_ns(NOW - timedelta(minutes=1)))
    assert sent["end"] == str(_ns(NOW + timedelta(minutes=1))) and sent["limit"] == "5000"


async def test_query_range_retries_a_restarting_loki() -> None:
    fake = FakeLoki()
    fake.add({"service": "bot"}, [(_ns(NOW), "hello")])
    fake.down = 2
    async with _client(fake, retries=2) as loki:
        lines = await loki.query_range('{service="bot"}', NOW - timedelta(minutes=1), NOW + timedelta(minutes=1))
    assert [line.line for line in lines] == ["hello"] and len(fake.queries) == 3


async def test_query_range_gives_up_after_its_retries_with_loki_unavailable() -> None:
    fake = FakeLoki()
    fake.down = 10
    async with _client(fake, retries=2) as loki:
        with pytest.raises(LokiUnavailable, match="after 3 attempt.*HTTP 503"):
            await loki.query_range('{service="bot"}', NOW, NOW + timedelta(minutes=1))
    assert len(fake.queries) == 3


async def test_query_range_does_not_retry_a_bad_query() -> None:
    fake = FakeLoki()
    async with _client(fake, retries=3) as loki:
        with pytest.raises(LokiUnavailable, match="HTTP 400"):
            await loki.query_range('{service=~".*"}', NOW, NOW + timedelta(minutes=1))
    assert len(fake.queries) == 1


async def test_query_range_maps_a_refused_connection() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    async with LokiClient(url, retries=2, backoff=0.01) as loki:
        with pytest.raises(LokiUnavailable, match="ConnectError"):
            await loki.query_range('{service="bot"}', NOW, NOW + timedelta(minutes=1))
    assert time.monotonic() - started < 5


async def test_query_range_bounds_a_hung_loki_with_its_timeout() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(60)
        return httpx.Response(200)

    started = time.monotonic()
    async with LokiClient("http://loki", transport=httpx.MockTransport(hang), timeout=0.2, retries=1,
                          backoff=0) as loki:
        with pytest.raises(LokiUnavailable, match="no answer within 0.2s"):
            await loki.query_range('{service="bot"}', NOW, NOW + timedelta(minutes=1))
    assert time.monotonic() - started < 2


async def test_query_range_maps_an_answer_that_is_not_streams() -> None:
    async def matrix(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": []}})

    async with LokiClient("http://loki", transport=httpx.MockTransport(matrix), backoff=0) as loki:
        with pytest.raises(LokiUnavailable, match="other than log streams"):
            await loki.query_range('{service="bot"}', NOW, NOW + timedelta(minutes=1))


def test_fake_logql_anchors_label_regexes_and_refuses_empty_selectors() -> None:
    query = LogQuery.parse('{service=~"bo", env!="dev"} |= "Trace" != "health"')
    assert not query.selects({"service": "bot"}) and LogQuery.parse('{service=~"bo.*"}').selects({"service": "bot"})
    assert LogQuery.parse('{a="b"} |= "Trace" != "health"').keeps("Traceback") is True
    assert LogQuery.parse('{a="b"} |= "Trace" != "health"').keeps("Traceback /health") is False
    with pytest.raises(LogQLError):
        LogQuery.parse('{service=~".*"}')
    with pytest.raises(LogQLError):
        LogQuery.parse('sum(rate({a="b"}[1m]))')


def test_shipped_rules_fire_per_service_and_container_when_a_traceback_is_logged() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [Rule.from_yaml(r) for g in groups for r in g["rules"] if "alert" in r]
    assert rules, "monitoring/loki-rules.yaml holds no alerting rule"
    fake = FakeLoki()
    fake.add({"service": "bot", "container": "bot-1"}, [(_ns(NOW) - 10**9, "Traceback (most recent call last):"),
                                                        (_ns(NOW) - 10**9, "ValueError: x")])
    fake.add({"service": "bot", "container": "bot-2"}, [(_ns(NOW) - 10**9, "all fine")])
    alerts = [a for rule in rules for a in fake.evaluate(rule, now=NOW)]
    assert [a["labels"]["container"] for a in alerts] == ["bot-1"]
    alert = alerts[0]
    assert alert["labels"]["service"] == "bot" and alert["labels"]["alertname"]
    assert alert["startsAt"] == "2026-11-23T22:00:00.000Z" and alert["generatorURL"].startswith("http://")
    assert "{{" not in alert["annotations"]["summary"]


# ------------------------------------------------------------------------------------------------ answers

LOKI_DATA = Path(__file__).parent / "data" / "loki"


def _loki(name: str) -> bytes:
    return (LOKI_DATA / name).read_bytes()


def test_unix_ns_is_exact() -> None:
    moment = datetime(2026, 11, 23, 22, 17, 28, 123456, tzinfo=UTC)
    assert unix_ns(moment) == int(moment.replace(microsecond=0).timestamp()) * 10**9 + 123_456_000
    assert unix_ns(datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)) == 9_223_372_036_854_775_000
    assert unix_ns(datetime(1970, 1, 1, tzinfo=UTC)) == 0



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
