"""The owner's verdict on a pull request, whichever front end it came through (HTTP API or Telegram)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from runner.errors import ForgeError, TaskError
from runner.forge import PullRequest
from runner.models import TaskState
from runner.release import Release, approve_and_deploy
from runner.store import TaskRecord

if TYPE_CHECKING:
    from runner.app import Service

RELEASE_STATES = {"deployed": TaskState.DEPLOYED, "rolled_back": TaskState.ROLLED_BACK}


async def task_of_pr(service: Service, number: int) -> TaskRecord | None:
    """The proposed task whose pull request is `number`, if any."""
    for task in await service.store.list_tasks(states=[TaskState.PROPOSED], limit=10_000):
        pr = (task.result or {}).get("pr")
        if isinstance(pr, Mapping) and pr.get("number") == number:
            return task
    return None


async def approve(service: Service, number: int, head_sha: str, *, actor: str) -> tuple[TaskRecord | None, Release]:
    """Merge PR `number` at `head_sha` and deploy, moving its task through approved → merging → outcome.

    Raises ForgeError (head moved, conflict, not found) or TaskError (no forge); the task is then back
    at `proposed` with the reason.
    """
    forge, repo = service.forge, service.settings.repo
    if forge is None or repo is None:
        raise TaskError("no forge is configured")
    task = await task_of_pr(service, number)
    await service.store.audit(task.id if task else None, actor, "approve", {"number": number, "head_sha": head_sha})
    async with service.release_lock:  # one merge and deploy at a time
        if task is not None:
            await service.store.transition(task.id, TaskState.APPROVED, actor=actor)
            await service.store.transition(task.id, TaskState.MERGING)
        try:
            release = await approve_and_deploy(forge, service.deployer, repo, number, head_sha)
        except (ForgeError, TaskError) as exc:
            if task is not None:
                await service.store.transition(task.id, TaskState.PROPOSED, reason=f"not merged: {exc}")
            raise
        if task is not None:
            await service.store.transition(task.id, RELEASE_STATES.get(release.status, TaskState.FAILED),
                                           reason=f"merged as {release.merge.sha[:12]}; deploy {release.status}")
    return task, release


async def reject(service: Service, number: int, *, actor: str) -> tuple[TaskRecord | None, PullRequest]:
    """Close PR `number` without merging; its task ends `rejected`."""
    if service.forge is None:
        raise TaskError("no forge is configured")
    task = await task_of_pr(service, number)
    await service.store.audit(task.id if task else None, actor, "reject", {"number": number})
    pr = await service.forge.close(number)
    if task is not None:
        await service.store.transition(task.id, TaskState.REJECTED, reason=f"PR #{number} rejected", actor=actor)
    return task, pr
