"""The owner's verdict on a pull request, whichever front end it came through (HTTP API or Telegram)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from runner.errors import TaskError
from runner.forge import PullRequest
from runner.models import TaskState
from runner.releases import ReleaseRecord
from runner.store import Store, TaskRecord

if TYPE_CHECKING:
    from runner.app import Service


async def task_of_pr(store: Store, number: int) -> TaskRecord | None:
    """The proposed task whose pull request is `number`, if any."""
    for task in await store.list_tasks(states=[TaskState.PROPOSED], limit=10_000):
        pr = (task.result or {}).get("pr")
        if isinstance(pr, Mapping) and pr.get("number") == number:
            return task
    return None


async def approve(service: Service, number: int, head_sha: str, *, actor: str) -> tuple[TaskRecord | None,
                                                                                        ReleaseRecord]:
    """Start the release of PR `number` at `head_sha`: merge, deploy, watch, in the background.

    Raises ForgeError (not found, not open, head moved, already being released) or TaskError (no forge)
    before anything is merged; the outcome of the release reaches the owner when it is known.
    """
    if service.releases is None:
        raise TaskError("no forge is configured")
    task = await task_of_pr(service.store, number)
    await service.store.audit(task.id if task else None, actor, "approve", {"number": number, "head_sha": head_sha})
    release = await service.releases.approve(number, head_sha, actor=actor, task=task)
    return task, release


async def reject(service: Service, number: int, *, actor: str) -> tuple[TaskRecord | None, PullRequest]:
    """Close PR `number` without merging; its task ends `rejected`."""
    if service.forge is None:
        raise TaskError("no forge is configured")
    task = await task_of_pr(service.store, number)
    await service.store.audit(task.id if task else None, actor, "reject", {"number": number})
    pr = await service.forge.close(number)
    if task is not None:
        await service.store.transition(task.id, TaskState.REJECTED, reason=f"PR #{number} rejected", actor=actor)
    return task, pr
