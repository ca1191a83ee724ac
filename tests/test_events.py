"""A task's event stream: every event but `end` has an id, and a reconnect with Last-Event-ID gets what came
after it, nothing twice."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from runner.api.events import Cursor, stream
from runner.models import TaskState
from tests.fakes.app import OWNER, app_client, owner_app

Event = tuple[str | None, str, dict[str, Any]]


async def _read(client: httpx.AsyncClient, task_id: str, last_event_id: str | None = None) -> list[Event]:
    """(id, event, data) of each event, read as an EventSource would (blocks end at a blank line)."""
    headers = {**OWNER, **({"Last-Event-ID": last_event_id} if last_event_id is not None else {})}
    out: list[Event] = []
    block: dict[str, str] = {}
    async with asyncio.timeout(30), client.stream("GET", f"/tasks/{task_id}/events", headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line == "":
                if "event" in block:
                    out.append((block.get("id"), block["event"], json.loads(block["data"])))
                block = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                block[name] = value
    return out


def test_cursor_reads_back_what_it_writes_and_starts_over_on_anything_else() -> None:
    for cursor in (Cursor(), Cursor(3), Cursor(12, TaskState.RUNNING)):
        assert Cursor.parse(str(cursor)) == cursor
    for garbage in (None, "", "x", "-1", "3.nosuchstate", "1" * 13, "٣", "3.running.extra"):
        assert Cursor.parse(garbage) == Cursor(), garbage


async def test_events_resume_after_the_last_event_id_with_nothing_twice(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path / "home")) as client:
        task_id = (await client.post("/agent/command", headers=OWNER,
                                     json={"prompt": "add /balance", "dry_run": True})).json()["task_id"]
        full = await _read(client, task_id)  # the task fails in provisioning: no repository, no container
        progress = [i for i, (_, name, _) in enumerate(full) if name == "progress"]
        resumed = {i: await _read(client, task_id, full[i][0]) for i in (progress[0], progress[-1], len(full) - 2)}
        restarted = await _read(client, task_id, "garbage")
    ids = [event_id for event_id, _, _ in full]
    assert full[-1] == (None, "end", {"state": "failed"}) and None not in ids[:-1]
    assert len(set(ids[:-1])) == len(ids) - 1
    assert len(progress) >= 2 and full[-2][1] == "state" and full[-2][2]["state"] == "failed"
    for i, after in resumed.items():
        had = {event_id for event_id, _, _ in full[:i + 1]}
        assert not had & {event_id for event_id, _, _ in after}, i  # nothing it already has
        lines = [data for _, name, data in after if name == "progress"]
        assert lines == [data for _, name, data in full[i + 1:] if name == "progress"], i  # every line after it
        assert after[-1] == (None, "end", {"state": "failed"})
    assert [name for _, name, _ in resumed[len(full) - 2]] == ["end"]  # had the final state: only the end
    # An id we never sent: from the start (the state as it is now, not each one it passed through).
    assert [e[2] for e in restarted if e[1] == "progress"] == [e[2] for e in full if e[1] == "progress"]
    assert [(name, data["state"]) for _, name, data in restarted if name != "progress"] == [
        ("state", "failed"), ("end", "failed")]


async def test_an_idle_stream_sends_keep_alive_comments(tmp_path: Path) -> None:
    app = owner_app(tmp_path / "home")
    async with app_client(app):
        service = app.state.service
        # Queued after the scheduler's start-up resume, never submitted to it: it waits, nothing happens.
        task = await service.store.create_task(kind="feature", prompt="x", repo="r", source="api",
                                               requested_by="owner", dry_run=True)
        chunks = stream(service, task.id, Cursor(), keepalive=0.2)
        async with asyncio.timeout(10):
            first, second, third = [await anext(chunks) for _ in range(3)]
        await chunks.aclose()
    assert first == f"id: 0.queued\nevent: state\ndata: {json.dumps({'state': 'queued', 'reason': ''})}\n\n"
    assert second == third == ": keep-alive\n\n"
