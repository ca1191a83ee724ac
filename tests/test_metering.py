"""Tests of metering: prices, reservations against a budget, settling, and usage read from SSE in bounded memory."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import pytest

from runner.metering import (
    DEFAULT_PRICES,
    Account,
    Budget,
    MessageUsage,
    Price,
    PriceTable,
    SSEUsageParser,
    Usage,
    reservation_for,
)

PRICES = PriceTable(families={"sonnet": Price(input=1.0, output=2.0, cache_write=0.5, cache_read=0.1)},
                    default=Price(9, 9, 9, 9))


def sse(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


START = sse({"type": "message_start", "message": {"model": "claude-sonnet-4-5",
                                                  "usage": {"input_tokens": 100, "output_tokens": 1,
                                                            "cache_read_input_tokens": 50}}})
DELTA = sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 30}})
TEXT = sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}})


def test_price_table_picks_family_by_model_name() -> None:
    assert DEFAULT_PRICES.for_model("claude-haiku-4-5").output == 5.0
    assert DEFAULT_PRICES.for_model("claude-sonnet-4-5-20250929").input == 3.0
    assert DEFAULT_PRICES.for_model("some-new-model") == DEFAULT_PRICES.default


def test_usage_exceeds_budget_on_either_axis() -> None:
    usage = Usage(input_tokens=60, output_tokens=40, cost_usd=0.5)
    assert usage.exceeds(Budget(max_tokens=100))
    assert not usage.exceeds(Budget(max_tokens=101))
    assert usage.exceeds(Budget(max_cost_usd=0.5))
    assert not usage.exceeds(Budget())


def test_reservation_is_max_tokens_plus_input_estimate_at_the_model_price() -> None:
    held = reservation_for("claude-sonnet-4-5", max_tokens=1000, body_size=4000, prices=PRICES)
    assert (held.input_tokens, held.output_tokens) == (1000, 1000)
    assert held.cost_usd == pytest.approx((1000 * 1.0 + 1000 * 2.0) / 1e6)


def test_account_holds_reservations_so_parallel_requests_cannot_overspend() -> None:
    one = reservation_for("claude-sonnet-4-5", max_tokens=400, body_size=400, prices=PRICES)  # 500 tokens
    account = Account(Budget(max_tokens=1200))
    first, second = account.reserve(one), account.reserve(one)
    assert first is not None and second is not None
    assert account.reserve(one) is None and account.in_flight == 2  # 1500 > 1200 while both are held
    account.release(first)
    assert account.reserve(one) is not None  # the released one freed its room
    assert account.usage.requests == 3


def test_account_settles_from_measured_usage() -> None:
    account = Account(Budget(max_cost_usd=1.0))
    handle = account.reserve(reservation_for("claude-sonnet-4-5", max_tokens=1000, body_size=40, prices=PRICES))
    assert handle is not None
    measured = MessageUsage()
    SSEUsageParser(measured).feed(START + TEXT + DELTA)
    usage = account.settle(handle, measured, PRICES)
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (100, 30, 50)
    assert usage.cost_usd == pytest.approx((100 * 1.0 + 30 * 2.0 + 50 * 0.1) / 1e6)
    assert usage.unmetered == 0 and account.in_flight == 0
    assert account.settle(handle, measured, PRICES) == usage  # settling twice charges once


def test_account_charges_an_answer_without_usage_its_reservation() -> None:
    account = Account(Budget())
    held = reservation_for("claude-sonnet-4-5", max_tokens=1000, body_size=400, prices=PRICES)
    handle = account.reserve(held)
    assert handle is not None
    usage = account.settle(handle, MessageUsage(), PRICES)
    assert (usage.input_tokens, usage.output_tokens, usage.unmetered) == (100, 1000, 1)
    assert usage.cost_usd == pytest.approx(held.cost_usd)


def test_account_charges_a_cut_stream_its_exact_input_and_reserved_output() -> None:
    account = Account(Budget())
    handle = account.reserve(reservation_for("claude-sonnet-4-5", max_tokens=1000, body_size=40, prices=PRICES))
    assert handle is not None
    measured = MessageUsage()
    SSEUsageParser(measured).feed(START + TEXT)  # no message_delta: cut short
    usage = account.settle(handle, measured, PRICES)
    assert (usage.input_tokens, usage.output_tokens, usage.unmetered) == (100, 1000, 1)


def test_account_refuses_everything_once_spent() -> None:
    account = Account(Budget(max_tokens=10))
    free = reservation_for("claude-sonnet-4-5", max_tokens=1, body_size=4, prices=PRICES)
    handle = account.reserve(free)
    assert handle is not None
    account.settle(handle, MessageUsage(), PRICES)  # unmetered: 2 tokens
    account.usage = Usage(input_tokens=10)
    assert account.reserve(free) is None


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_sse_parser_reads_usage_across_any_chunking(size: int) -> None:
    stream = (START + TEXT + DELTA).replace(b"\n", b"\r\n") if size % 2 else START + TEXT + DELTA
    measured = MessageUsage()
    parser = SSEUsageParser(measured)
    for start in range(0, len(stream), size):
        parser.feed(stream[start:start + size])
    assert measured.counts == {"input_tokens": 100, "output_tokens": 30, "cache_read_input_tokens": 50}
    assert measured.model == "claude-sonnet-4-5" and measured.complete and not measured.overflowed
    assert parser.events == 3


def test_sse_parser_drops_an_event_over_the_cap_and_keeps_reading() -> None:
    huge = sse({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "x" * 5000}})
    measured = MessageUsage()
    parser = SSEUsageParser(measured, max_event=1000)
    for start in range(0, len(huge), 300):
        parser.feed(huge[start:start + 300])
        assert parser.buffered <= 1002
    parser.feed(START + DELTA)
    assert measured.overflowed and measured.complete
    assert measured.counts["output_tokens"] == 30
    account = Account(Budget())
    handle = account.reserve(reservation_for("claude-sonnet-4-5", max_tokens=500, body_size=40, prices=PRICES))
    assert handle is not None
    assert account.settle(handle, measured, PRICES).unmetered == 1  # an event went unread: the reservation


def _feed(total: int, chunk: bytes, max_event: int) -> tuple[float, int, int]:
    """Seconds to feed `total` bytes of `chunk`s, the most the parser held, and the peak traced allocation."""
    parser = SSEUsageParser(MessageUsage(), max_event=max_event)
    most = 0
    tracemalloc.start()
    started = time.perf_counter()
    for _ in range(total // len(chunk)):
        parser.feed(chunk)
        most = max(most, parser.buffered)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, most, peak


@pytest.mark.parametrize("line", [b"data: " + b"x" * 58 + b"\n", b"x" * 64], ids=["lines", "one-endless-line"])
def test_sse_parser_holds_bounded_memory_and_linear_time_on_300_mib_without_a_blank_line(line: bytes) -> None:
    """300 MiB of SSE without a blank line grew the supervisor from 92 to 225 MB: the parser kept it all and
    rescanned it on every chunk. Now it holds at most one capped event, and 10x the bytes take about 10x the
    time (a quadratic parser takes ~100x: measured against its own 30 MiB run in this test)."""
    chunk = line * (65536 // len(line))
    max_event = 1024 * 1024
    small = min(_feed(30 * 2**20, chunk, max_event)[0] for _ in range(3))
    elapsed, most, peak = _feed(300 * 2**20, chunk, max_event)
    assert most <= max_event + 2
    assert peak < max_event * 3 + len(chunk) * 4, peak
    assert elapsed / small < 25, (elapsed, small)
