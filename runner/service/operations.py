"""Every owner and alert action, once: queue, cancel, approve, reject, activate / propose / confirm / roll back a
policy, admit an alert.

Front ends (runner.api over HTTP, runner.telegram in the chat) parse their input, call one function here and
render what it returns or raises; they neither audit nor decide. Each action is audited here, once, under one
event name, whichever front end asked, and refuses with the one error tree (runner.errors.OperationError, the
forge's ForgeError, policy's PolicyLoadError), so HTTP and Telegram cannot drift apart again.

    action              audit event                    refuses with
    queue_task          task_created (by the store)    RateLimited (audited `refused`), TaskError (no repo)
    cancel_task         cancel_requested / state       TaskNotFound, TaskError (already ended)
    follow_up           follow_up                      TaskNotFound, TaskError (no open PR, one running),
                                                       RateLimited (audited `refused`)
    approve             approve                        ForgeNotFound, ForgeConflict, TaskError (no forge,
                                                       a follow-up of the PR not ended)
    reject              reject                         ForgeNotFound, ForgeError, TaskError (no forge)
    activate_policy     policy_activated               PolicyLoadError (audited `policy_rejected`)
    propose_policy      (nothing until confirmed)      PolicyLoadError (audited `policy_rejected`)
    confirm_policy      policy_activated               ProposalVoid
    rollback_policy     policy_rolled_back             PolicyVersionNotFound, PolicyLoadError
    admit_alert         auto_fix / repeat / refused    TaskError (no repo)
    refuse              refused                        (records a front end's refusal: bad credential)

The policy actions need only the policy desk and the audit log (not the running scheduler), so they take
those two: a front end with no running service (the chat's tests) shares them unchanged.
"""

from __future__ import annotations

import difflib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import policy
from runner.alerts import autofix
from runner.alerts.alertmanager import AlertNotification, DirectReport
from runner.alerts.autofix import Outcome
from runner.errors import RateLimited, TaskError, TaskNotFound
from runner.forge import Forge, PullRequest
from runner.models import FollowUp, TaskKind, TaskState
from runner.service.policy_store import PolicyDesk
from runner.service.releases import ReleaseRecord
from runner.service.scheduler import Duplicate, Refused
from runner.service.state import Service
from runner.store import Store, TaskRecord

__all__ = ["Admission", "Approval", "Caller", "PolicyProposal", "Rejection", "activate_policy", "admit_alert",
           "approve", "cancel_task", "confirm_policy", "follow_up", "follow_up_of_pr", "propose_policy", "queue_task",
           "refuse", "reject", "reject_pr",
           "rollback_policy", "withdraw_policy"]

REFUSALS = ("rate_limited", "cooling_down")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, through which front end. `actor` goes in the audit log ("owner" over the API, "telegram:owner"
    in the chat, "alertmanager"); `source` is the task's source for rate limits ("api", "telegram");
    `where` (an HTTP path and client address) is added to the refusals this caller's requests cause."""

    actor: str
    source: str
    where: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Approval:
    """An approval checked and recorded: the release runs in the background; `task` is None for a PR no task
    of ours proposed."""

    task: TaskRecord | None
    release: ReleaseRecord


@dataclass(frozen=True, slots=True)
class Rejection:
    task: TaskRecord | None
    pr: PullRequest


@dataclass(frozen=True, slots=True)
class PolicyProposal:
    """A valid policy waiting for the owner's Confirm: `token` confirms it, `diff` is against the active text."""

    token: str
    policy: policy.Policy
    diff: str


@dataclass(frozen=True, slots=True)
class Admission:
    """What became of each firing alert (or the posted report); `refused` when a limit took none of them."""

    outcomes: tuple[Outcome, ...]

    @property
    def refused(self) -> bool:
        return bool(self.outcomes) and all(o.status in REFUSALS for o in self.outcomes)

    @property
    def retry_after(self) -> int:
        return min((o.retry_after or 1 for o in self.outcomes if o.status in REFUSALS), default=1)


# ------------------------------------------------------------------------------------------------ tasks


async def queue_task(service: Service, caller: Caller, *, kind: TaskKind, prompt: str, dry_run: bool,
                     repo: str | None = None) -> TaskRecord:
    """Admit a task for the owner and queue it (never waits for a slot). `repo` defaults to the configured one.

    Raises RateLimited (audited `refused`, reason `rate_limited`) or TaskError when no repository is configured.
    """
    repo = repo or service.settings.repo
    if repo is None:
        raise TaskError("no AGENT_RUNNER_REPO is configured")
    admitted = await service.scheduler.submit(kind=kind, prompt=prompt, repo=repo, source=caller.source,
                                              requested_by="owner", dry_run=dry_run)
    if isinstance(admitted, Refused):
        await refuse(service.store, caller, "rate_limited", retry_after=admitted.retry_after, limit=admitted.scope)
        raise _rate_limited(admitted)
    assert not isinstance(admitted, Duplicate)  # owner commands carry no fingerprint
    return admitted


def _rate_limited(refused: Refused) -> RateLimited:
    why = "cooling down after a failed fix" if refused.cooldown else f"{refused.limit} {refused.bucket} per hour"
    return RateLimited(f"rate limited: {why}; try again in {refused.retry_after}s", retry_after=refused.retry_after,
                       limit=why, cooldown=refused.cooldown)


async def cancel_task(service: Service, caller: Caller, task_id: str) -> TaskRecord:
    """Cancel a queued or running task. Raises TaskNotFound, or TaskError when it has already ended."""
    await service.store.get_task(task_id)
    return await service.scheduler.cancel(task_id, actor=caller.actor)


async def follow_up(service: Service, caller: Caller, task_id: str, text: str) -> FollowUp:
    """The owner's follow-up on task `task_id`'s open pull request: recorded (`queued`) before anything runs,
    then run in the background (runner.service.followups): a new sandbox from the PR's head, the agent's session
    continued, the tests, a new commit on the same branch, the approval bound to the new head.

    Counted against the owner's hourly limits like a task. Raises TaskNotFound, TaskError (no open pull
    request, another follow-up of it not ended, no forge) or RateLimited (audited `refused`).
    """
    task = await service.store.get_task(task_id)
    if service.followups is None:
        raise TaskError("follow-ups are not available: the service has no forge")
    await service.store.audit(task.id, caller.actor, "follow_up",
                              {**caller.where, "source": caller.source, "text": text[:500]})
    refused = await service.scheduler.charge(caller.source, "owner")
    if isinstance(refused, Refused):
        await refuse(service.store, caller, "rate_limited", retry_after=refused.retry_after, limit=refused.scope)
        raise _rate_limited(refused)
    return await service.followups.submit(task, text, actor=caller.actor, source=caller.source)


async def follow_up_of_pr(service: Service, caller: Caller, number: int, text: str) -> FollowUp:
    """`follow_up` for the task that proposed PR `number` (a PR comment, `/revise N`). TaskNotFound when no
    proposed task of ours has it."""
    task = await service.store.task_of_pr(number)
    if task is None:
        raise TaskNotFound(f"no proposed task of agent-runner has PR #{number}")
    return await follow_up(service, caller, task.id, text)


# ------------------------------------------------------------------------------------------- pull requests


async def approve(service: Service, caller: Caller, number: int, head_sha: str) -> Approval:
    """Start the release of PR `number` at `head_sha` (merge, deploy, watch) in the background.

    Raises ForgeNotFound, ForgeConflict (not open, head moved, already being released) or TaskError (no forge)
    before anything is merged; the release's outcome reaches the owner when it is known.
    """
    if service.releases is None:
        raise TaskError("no forge is configured")
    if service.followups is not None and (busy := await service.followups.busy(number)) is not None:
        # Its head is about to move: what the owner approves must be what the follow-up leaves.
        raise TaskError(f"PR #{number} has follow-up {busy.id} {busy.state}; approve it at the head that follow-up "
                        "leaves")
    task = await service.store.task_of_pr(number)
    await service.store.audit(task.id if task else None, caller.actor, "approve",
                              {"number": number, "head_sha": head_sha})
    release = await service.releases.approve(number, head_sha, actor=caller.actor, task=task)
    return Approval(task, release)


async def reject(service: Service, caller: Caller, number: int) -> Rejection:
    """Close PR `number` without merging; its task ends `rejected` (and its fingerprint cools down)."""
    if service.forge is None:
        raise TaskError("no forge is configured")
    return await reject_pr(service.forge, service.store, caller, number)


async def reject_pr(forge: Forge, store: Store, caller: Caller, number: int) -> Rejection:
    """`reject` on the forge and the state file alone, for a front end with no running service (the CLI)."""
    task = await store.task_of_pr(number)
    await store.audit(task.id if task else None, caller.actor, "reject", {"number": number})
    pr = await forge.close(number)
    if task is not None:
        task = await store.transition(task.id, TaskState.REJECTED, reason=f"PR #{number} rejected",
                                      actor=caller.actor)
    return Rejection(task, pr)


# ------------------------------------------------------------------------------------------------ policy


async def activate_policy(desk: PolicyDesk, store: Store, caller: Caller, text: str) -> policy.Policy:
    """Validate `text` (schema with line numbers, the policy's own examples), record it and make it active.

    Raises PolicyLoadError (audited `policy_rejected`); the active policy is then unchanged.
    """
    try:
        loaded = await desk.activate(text, actor=caller.actor)
    except policy.PolicyLoadError as exc:
        await store.audit(None, caller.actor, "policy_rejected", {"error": str(exc)})
        raise
    await store.audit(None, caller.actor, "policy_activated", {"version": loaded.version, "sha256": loaded.sha256})
    return loaded


async def propose_policy(desk: PolicyDesk, store: Store, caller: Caller, text: str, *,
                         name: str = "policy.yaml") -> PolicyProposal:
    """Validate `text` and hold it until the owner confirms it (`confirm_policy`), with its diff against the
    policy active now. Raises PolicyLoadError (audited `policy_rejected`); nothing is held then."""
    try:
        proposed = policy.load(text, source=name)
        failed = [r for r in policy.run_examples(proposed) if not r.ok]
        if failed:
            raise policy.PolicyLoadError("the policy's own examples fail", source=name, problems=tuple(
                (None, "examples", r.describe()) for r in failed[:20]))
    except policy.PolicyLoadError as exc:
        await store.audit(None, caller.actor, "policy_rejected", {"error": str(exc)})
        raise
    current = await desk.active_text()
    diff = "".join(difflib.unified_diff(current.splitlines(True), text.splitlines(True), "active", name))
    token = secrets.token_hex(8)
    await desk.propose(text, token)
    return PolicyProposal(token, proposed, diff)


async def confirm_policy(desk: PolicyDesk, store: Store, caller: Caller, token: str) -> policy.Policy:
    """Activate the proposal `token`. Raises ProposalVoid when it expired or the policy changed since."""
    loaded = await desk.confirm(token, actor=caller.actor)
    await store.audit(None, caller.actor, "policy_activated", {"version": loaded.version, "sha256": loaded.sha256})
    return loaded


def withdraw_policy(desk: PolicyDesk, token: str) -> None:
    """The owner pressed Cancel: the proposal `token` can no longer be confirmed."""
    desk.pending.pop(token, None)


async def rollback_policy(desk: PolicyDesk, store: Store, caller: Caller, version: int) -> policy.Policy:
    """Make recorded policy `version` active again (as a new version: history stays append-only).

    Raises PolicyVersionNotFound, or PolicyLoadError when the old text no longer loads (a schema change).
    """
    loaded = await desk.rollback(version, actor=caller.actor)
    await store.audit(None, caller.actor, "policy_rolled_back", {"to": version, "version": loaded.version,
                                                                 "sha256": loaded.sha256})
    return loaded


# ------------------------------------------------------------------------------------------------ alerts


async def admit_alert(service: Service, caller: Caller, report: AlertNotification | DirectReport) -> Admission:
    """At most one `fix` task per traceback fingerprint among the firing alerts (or the posted traceback).

    Each fingerprint a limit or a cooldown turned away is audited `refused` once. Raises TaskError when no
    repository is configured (nothing to fix).
    """
    if service.settings.repo is None:
        raise TaskError("no AGENT_RUNNER_REPO is configured")
    outcomes = tuple(await autofix.admit(service, report, loki=service.loki))
    for outcome in {o.fingerprint: o for o in outcomes if o.status in REFUSALS}.values():
        await refuse(service.store, caller, outcome.status, retry_after=outcome.retry_after,
                     fingerprint=outcome.fingerprint)
    return Admission(outcomes)


# ------------------------------------------------------------------------------------------------ refusals


async def refuse(store: Store, caller: Caller, reason: str, **detail: Any) -> None:
    """Audit a refusal (`refused`, counted by /metrics per reason): a bad credential, a full limit."""
    await store.audit(None, caller.actor, "refused", {**caller.where, "reason": reason, **detail})
