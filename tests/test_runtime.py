"""The runtime's housekeeping timer (its clock injected) and its start-up checks (a real full disk)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runner.errors import SandboxError, StateFull
from runner.service.runtime import Housekeeper, Housekeeping, check_room
from tests.fakes.disk import small_disk


class Clock:
    """A sleep that does not wait: it records each wait and lets the loop run `rounds` times."""

    def __init__(self, rounds: int) -> None:
        self.waits: list[float] = []
        self._rounds = rounds

    async def sleep(self, seconds: float) -> None:
        if len(self.waits) == self._rounds:
            raise asyncio.CancelledError
        self.waits.append(seconds)


async def test_housekeeper_reaps_on_its_interval_and_retries_quickly_while_the_engine_is_down() -> None:
    answers: list[list[str] | Exception] = [[], SandboxError("Docker engine error: no Docker engine answers"),
                                            SandboxError("still down"), ["task-1"], []]
    said: list[str] = []

    async def reap() -> list[str]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = Clock(rounds=5)
    keeper = Housekeeper(reap, config=Housekeeping(interval=30, retry=2), say=said.append, sleep=clock.sleep)
    with pytest.raises(asyncio.CancelledError):
        await keeper.run()
    assert clock.waits == [30, 30, 2, 2, 30]  # waits first (the runtime reaped as it opened), then per outcome
    assert keeper.reaped == ["task-1"] and keeper.failing is None and answers == []
    assert said == [
        "housekeeping: reaping orphaned sandboxes failed (Docker engine error: no Docker engine answers); trying "
        "again every 2s",  # said once, not at every retry
        "housekeeping: reaping works again; reaped 1 orphaned container(s): task-1",
    ]


async def test_housekeeper_survives_a_bug_in_reap() -> None:
    async def reap() -> list[str]:
        raise KeyError("boom")

    keeper = Housekeeper(reap, config=Housekeeping(interval=1, retry=1), say=lambda _l: None,
                         sleep=Clock(rounds=3).sleep)
    with pytest.raises(asyncio.CancelledError):
        await keeper.run()
    assert keeper.failing == "'boom'"


def test_check_room_refuses_a_full_disk_in_one_line(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        check_room(disk.root / "home", minimum=1024 * 1024)  # not there yet: its nearest parent is measured
        disk.fill()
        with pytest.raises(StateFull) as refused:
            check_room(disk.root / "home", minimum=1024 * 1024)
    assert str(refused.value).startswith(f"the disk holding AGENT_RUNNER_HOME ({tmp_path / 'disk' / 'home'}) is "
                                         "full: 0.0 MiB free")
    assert "\n" not in str(refused.value)
