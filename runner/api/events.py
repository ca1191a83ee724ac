"""A task's progress as Server-Sent Events that a client can resume: every event has an `id:`, and a reconnect
with `Last-Event-ID` gets exactly the events after it.

The id is a cursor, `<n>.<state>`: how many of the scheduler's progress events the client has, and the last task
state it was sent. Nothing is kept per client, so any request (after a dropped connection, from another tab)
resumes from the id alone. `end` closes the stream and carries no id, so a reconnect after it is told `end` again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from runner.models import TaskState
from runner.service.state import Service

SSE_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0  # a comment this often while nothing happens, so proxies keep an idle stream open
STREAM_ENDS = frozenset({TaskState.PROPOSED}) | {s for s in TaskState if s.terminal}
_STATES = {s.value: s for s in TaskState}


@dataclass(frozen=True, slots=True)
class Cursor:
    seen: int = 0
    """Progress events the client has."""
    state: TaskState | None = None
    """The last state it was sent."""

    def __str__(self) -> str:
        return str(self.seen) if self.state is None else f"{self.seen}.{self.state.value}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        """The cursor an event id names; the start for none, or for an id we never sent."""
        count, _, state = (text or "").strip().partition(".")
        if not count.isascii() or not count.isdigit() or len(count) > 12 or (state and state not in _STATES):
            return cls()
        return cls(int(count), _STATES[state] if state else None)


async def stream(service: Service, task_id: str, cursor: Cursor, *,
                 keepalive: float = KEEPALIVE_SECONDS) -> AsyncGenerator[str, None]:
    """Progress lines as they come, a `state` event on each change, `end` once the task's run is over; from
    after `cursor`."""
    scheduler = service.scheduler
    loop = asyncio.get_running_loop()
    # A log shorter than the cursor was started again (the supervisor restarted): what is in it is new.
    seen = min(cursor.seen, len(scheduler.events_since(task_id, 0)[0]))
    last, quiet_since = cursor.state, loop.time()
    while True:
        events, more = scheduler.events_since(task_id, seen)
        sent = False
        for event in events:
            seen += 1
            if event["event"] != "done":  # the scheduler's own marker: the stream sends `end`
                yield _sse(event["event"], event["data"], Cursor(seen, last))
                sent = True
        task = await service.store.get_task(task_id)
        if task.state is not last:
            last = task.state
            yield _sse("state", {"state": task.state.value, "reason": task.reason},
                       Cursor(seen, last))
            sent = True
        if task.state in STREAM_ENDS and not scheduler.active(task_id):
            late, _ = scheduler.events_since(task_id, seen)
            for event in late:
                seen += 1
                if event["event"] != "done":
                    yield _sse(event["event"], event["data"], Cursor(seen, last))
            yield _sse("end", {"state": task.state.value})
            return
        if sent:
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= keepalive:
            quiet_since = loop.time()
            yield ": keep-alive\n\n"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SSE_POLL_SECONDS):
                await more.wait()


def _sse(event: str, data: Mapping[str, Any], cursor: Cursor | None = None) -> str:
    head = "" if cursor is None else f"id: {cursor}\n"
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n"
