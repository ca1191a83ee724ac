"""PURE: what a task's model calls cost, what it may still spend, and the usage read out of an answer.

A request is forwarded only once its worst case fits what is left (`Account.reserve`: `max_tokens` of
output plus an estimate of its input, at the model's price), so parallel requests cannot go past the cap
together. When the answer is over the reservation is settled from the answer's own usage; an answer whose
usage could not be read in full (no usage, a stream cut short, an event too big to parse) is charged its
reservation, so being unreadable never makes a request cheaper.

    account = Account(Budget(max_cost_usd=1.0))
    held = account.reserve(reservation_for("claude-sonnet-4-5", max_tokens=1024, body_size=4000, prices))
    ...                                   # None: it does not fit, refuse the request
    account.settle(held, measured, prices)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "DEFAULT_MAX_EVENT",
    "DEFAULT_PRICES",
    "Account",
    "Budget",
    "MessageUsage",
    "Price",
    "PriceTable",
    "Reservation",
    "SSEUsageParser",
    "Usage",
    "estimate_input_tokens",
    "reservation_for",
]

# The biggest SSE event read for usage. Usage sits in `message_start` and `message_delta`, both small;
# a content delta past this is passed on to the client untouched but not parsed.
DEFAULT_MAX_EVENT = 1024 * 1024
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by model family: the first family whose name is in the model id wins."""

    families: Mapping[str, Price]
    default: Price

    def for_model(self, model: str) -> Price:
        lowered = model.lower()
        for family, price in self.families.items():
            if family in lowered:
                return price
        return self.default


DEFAULT_PRICES = PriceTable(
    families={
        "opus": Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
        "sonnet": Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30),
        "haiku": Price(input=1.0, output=5.0, cache_write=1.25, cache_read=0.10),
    },
    # An unknown model is billed as the dearest family, so a budget errs on the safe side.
    default=Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
)


@dataclass(frozen=True, slots=True)
class Budget:
    """What a task may spend; None means no limit on that axis. Tokens count input, output and cache."""

    max_tokens: int | None = None
    max_cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """What a task was charged. `unmetered`: answers charged their reservation because their usage was unreadable."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0
    unmetered: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def exceeds(self, budget: Budget) -> bool:
        return (budget.max_tokens is not None and self.total_tokens >= budget.max_tokens) or (
            budget.max_cost_usd is not None and self.cost_usd >= budget.max_cost_usd
        )


@dataclass(frozen=True, slots=True)
class Reservation:
    """The most one request can cost: its input estimate and all of `max_tokens`, at its model's price."""

    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def estimate_input_tokens(body_size: int) -> int:
    """Input tokens a body of `body_size` bytes is reserved at: about four bytes a token (English, code, JSON).

    An estimate, not a bound (base64 images cost far less than their bytes); settling uses the real count, so
    an estimate that was low can only let a task's last request end a little past what was left.
    """
    return max(1, math.ceil(body_size / 4))


def reservation_for(model: str, *, max_tokens: int, body_size: int, prices: PriceTable) -> Reservation:
    price = prices.for_model(model)
    input_tokens = estimate_input_tokens(body_size)
    return Reservation(model, input_tokens, max_tokens, (input_tokens * price.input + max_tokens * price.output) / 1e6)


@dataclass(slots=True)
class MessageUsage:
    """Usage of one model answer, assembled from the stream (message_delta values are cumulative).

    `complete` once the final usage (message_delta, or a JSON answer's usage) was read; `overflowed` when an
    event was too big to parse, so a usage it held may have been missed.
    """

    model: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    started: bool = False
    complete: bool = False
    overflowed: bool = False

    def update(self, usage: Any) -> None:
        if isinstance(usage, dict):
            for key in _USAGE_KEYS:
                value = usage.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    self.counts[key] = value

    def feed_event(self, event: Any) -> None:
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            message = event["message"]
            if isinstance(message.get("model"), str):
                self.model = message["model"]
            self.update(message.get("usage"))
            self.started = True
        elif event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
            self.update(event["usage"])
            self.complete = True

    def feed_json(self, content: bytes) -> None:
        with contextlib.suppress(ValueError, RecursionError):
            data = json.loads(content)
            if isinstance(data, dict) and isinstance(data.get("usage"), dict):
                if isinstance(data.get("model"), str):
                    self.model = data["model"]
                self.update(data["usage"])
                self.started = self.complete = True


class SSEUsageParser:
    """Reads usage out of an SSE byte stream in memory bounded by `max_event` and time linear in its size.

    Each byte is looked at a bounded number of times: events are cut where a blank line ends them (a C-level
    `find` over the new bytes only, never the whole buffer again), and an event that grows past `max_event`
    is dropped as it arrives, its bytes skipped up to the next blank line, and the answer marked `overflowed`.
    Lines end in LF or CRLF (what the Messages API sends); a lone CR is not a line end here, which at worst
    leaves usage unread, and an unread answer is charged its reservation.
    """

    def __init__(self, message: MessageUsage, *, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._message = message
        self._max_event = max_event
        self._pending: list[bytes] = []
        self._size = 0
        self._skipping = False
        self._carry = b""  # a CR that may start a CRLF, or the LF that may start a blank line
        self.events = 0

    @property
    def buffered(self) -> int:
        """Bytes held for the event being read (at most max_event + 2)."""
        return self._size + len(self._carry)

    def feed(self, chunk: bytes) -> None:
        data = self._carry + chunk
        self._carry = b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        data = data.replace(b"\r\n", b"\n")
        start = 0
        while True:
            end = data.find(b"\n\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                self._pending.append(data[start:end])
                self._dispatch(b"".join(self._pending))
            self._pending.clear()
            self._size = 0
            start = end + 2
        rest = data[start:]
        if rest.endswith(b"\n"):
            # The LF may be the first half of a blank line that the next chunk completes.
            rest, lf = rest[:-1], b"\n"
            self._carry = lf + self._carry
        if self._skipping or not rest:
            return
        self._size += len(rest)
        if self._size > self._max_event:
            self._pending.clear()
            self._size = 0
            self._skipping = True
            self._message.overflowed = True
        else:
            self._pending.append(rest)

    def _dispatch(self, raw: bytes) -> None:
        self.events += 1
        lines = raw.split(b"\n")
        data = b"\n".join(line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:"))
        if data:
            with contextlib.suppress(ValueError, RecursionError):
                self._message.feed_event(json.loads(data))


class Account:
    """One task's money: settled usage plus what requests in flight hold."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.usage = Usage()
        self._held: dict[int, Reservation] = {}
        self._ids = itertools.count(1)

    @property
    def in_flight(self) -> int:
        return len(self._held)

    def fits(self, reservation: Reservation) -> bool:
        held_tokens = sum(r.total_tokens for r in self._held.values())
        held_cost = sum(r.cost_usd for r in self._held.values())
        budget = self.budget
        return (budget.max_tokens is None
                or self.usage.total_tokens + held_tokens + reservation.total_tokens <= budget.max_tokens) and (
            budget.max_cost_usd is None or self.usage.cost_usd + held_cost + reservation.cost_usd
            <= budget.max_cost_usd + 1e-12)

    def reserve(self, reservation: Reservation) -> int | None:
        """A handle for the reservation, or None when it does not fit what is left (nothing is held then)."""
        if self.usage.exceeds(self.budget) or not self.fits(reservation):
            return None
        handle = next(self._ids)
        self._held[handle] = reservation
        self.usage = replace(self.usage, requests=self.usage.requests + 1)
        return handle

    def release(self, handle: int) -> None:
        """The request was not billed (refused or failed upstream before an answer)."""
        self._held.pop(handle, None)

    def settle(self, handle: int, measured: MessageUsage, prices: PriceTable) -> Usage:
        """Charge an answer: what it reported when that was read in full, else its reservation."""
        reservation = self._held.pop(handle, None)
        if reservation is None:
            return self.usage
        counts = dict(measured.counts)
        metered = measured.complete and not measured.overflowed
        if not metered:
            # The input count of message_start is exact; the output of a cut or unread answer is unknown.
            if not (measured.started and "input_tokens" in counts) or measured.overflowed:
                counts["input_tokens"] = max(counts.get("input_tokens", 0), reservation.input_tokens)
            counts["output_tokens"] = max(counts.get("output_tokens", 0), reservation.output_tokens)
        price = prices.for_model(measured.model or reservation.model)
        inputs, outputs = counts.get("input_tokens", 0), counts.get("output_tokens", 0)
        writes, reads = counts.get("cache_creation_input_tokens", 0), counts.get("cache_read_input_tokens", 0)
        cost = (inputs * price.input + outputs * price.output + writes * price.cache_write
                + reads * price.cache_read) / 1e6
        usage = self.usage
        self.usage = replace(
            usage,
            input_tokens=usage.input_tokens + inputs,
            output_tokens=usage.output_tokens + outputs,
            cache_creation_input_tokens=usage.cache_creation_input_tokens + writes,
            cache_read_input_tokens=usage.cache_read_input_tokens + reads,
            cost_usd=usage.cost_usd + cost,
            unmetered=usage.unmetered + (0 if metered else 1),
        )
        return self.usage
