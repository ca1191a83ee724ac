"""An owner's follow-up on a task's pull request, carried through: a new sandbox from the PR's head, the agent's
kept session resumed (runner.session), the supervisor's tests, and a fast-forward commit onto the PR's branch,
after which the task's result and the PR's description speak of the new head.

It shares the task pipeline's steps (runner.pipeline: the read-out after every process is killed, the tests in a
fresh container, the dependency image, the owner's yes on dependency files), so a follow-up's change is checked
exactly as a task's is.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from runner import pipeline, session, tasklock, workspace
from runner.agent import Gate
from runner.config import is_git_url
from runner.errors import RunnerError, SandboxError
from runner.models import Denial, FollowUp, FollowUpOutcome, Progress, TaskState, TestRun, Usage
from runner.pipeline import LIMITS, Deps, RunScope, task_lock
from runner.prbody import PrRequest, pr_title, render_pr_body
from runner.prompts import follow_up_prompt
from runner.sandbox.base import Limits, SandboxSpec
from runner.store import TaskRecord


def task_dir(home: Path, task_id: str) -> Path:
    """Where a task's trusted clone and its kept session live (runner.workspace.prepare made it)."""
    return home / "tasks" / task_id


async def run_follow_up(deps: Deps, task: TaskRecord, follow: FollowUp, *, progress: Progress | None = None,
                        on_pushed: Callable[[str], Awaitable[None]] | None = None) -> FollowUpOutcome:
    """Carry the owner's follow-up on `task`'s pull request through: a new sandbox from the PR's head
    (`follow.base_sha`), the agent's kept session continued (or a new one, said so), the supervisor's tests, and a
    new commit pushed onto the PR's branch (a fast-forward, never a force-push), its body and the task's result
    then bound to the new head. Nothing is pushed unless every check passes.

    The task's own state stays `proposed` throughout (its PR is open, at its old head until the push); the
    follow-up's own row (runner.service.followups) holds where it is. `on_pushed` hears the new head the moment
    the forge has it, before the task's result says so, so that a restart in between knows it."""
    with tasklock.hold(task_lock(deps.home, follow.work_id)):
        return await _run_follow_up(deps, task, follow, progress or (lambda _line: None), on_pushed)


async def _run_follow_up(deps: Deps, task: TaskRecord, follow: FollowUp, say: Progress,
                         on_pushed: Callable[[str], Awaitable[None]] | None) -> FollowUpOutcome:
    assert deps.forge is not None and task.result is not None and task.result.pr is not None
    store, active, forge, pr = deps.store, deps.policy, deps.forge, task.result.pr
    limits = active.profile(task.kind).limits
    wall_time = float(limits.wall_time_seconds)
    box_limits = Limits(workspace_bytes=limits.workspace_bytes)
    work = follow.work_id
    lock = task_lock(deps.home, work)
    scope = RunScope(deps, work)
    containers = scope.containers
    gate = Gate(work, active, task.kind,
                audit=lambda event, detail: store.audit(task.id, "policy", event, {**detail, "follow_up": follow.id}),
                ask=deps.ask, ask_timeout=float(active.ask_timeout_seconds), progress=say)
    home_dir = task_dir(deps.home, task.id)
    how = ""
    try:
        say(f"follow-up {follow.id} on PR #{pr.number}: a new sandbox from its head {follow.base_sha[:12]}")
        auth = forge.git_auth()
        prepared = await workspace.prepare(deps.home, work, task.repo, active, base_ref=follow.base_sha, auth=auth)
        populating = scope.populate(prepared)
        image = await pipeline.dependency_image(deps, prepared, say)
        sock_dir = scope.socket_dir()
        async with deps.proxy.serve_unix(sock_dir / "model.sock"):
            box = await deps.sandbox.start(SandboxSpec(work, image, sock_dir, limits=box_limits, owner_lock=lock))
            containers.append(box)
            await populating
            await deps.sandbox.copy_in(box, prepared.given_archive)
            try:
                transcript = session.load(home_dir)
                await session.restore(deps.sandbox, box, transcript)
                resume, why_new = transcript.session_id, ""
                how = "resumed"
            except (session.SessionInvalid, SandboxError) as exc:
                resume, why_new = None, str(exc)
                how = f"new: {why_new}"
                say(f"the agent's earlier session cannot be continued ({why_new}): a new session starts with the "
                    "task's words, the PR's diff and the owner's")
            system = await pipeline.agent_system_prompt(task.kind, prepared, active)
            token = pipeline.issue_model_token(deps, work, limits)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wall_time
            try:
                while True:
                    prompt = follow_up_prompt(follow.text, number=pr.number, resumed=resume is not None,
                                              task_prompt=task.prompt, diff=task.result.diff, why_new=why_new)
                    say(f"running: agent in container {box.id[:12]}, session {how.split(':')[0]}")
                    outcome = await deps.agent(
                        sandbox=deps.sandbox, container=box, gate=gate, prompt=prompt, system_prompt=system,
                        model_token=token, workdir=prepared.task_dir, max_turns=limits.max_turns,
                        wall_time=max(0.0, deadline - loop.time()), budget_spent=deps.proxy.exhausted(work),
                        model=deps.model, resume=resume)
                    if outcome.stopped == "error" and resume is not None:
                        # The CLI would not take the kept transcript: once more, as a new session that says so.
                        resume, why_new = None, f"the CLI did not resume it ({outcome.error})"
                        how = f"new: {why_new}"
                        say(f"the kept session did not resume ({outcome.error}): a new session starts")
                        continue
                    break
            finally:
                deps.proxy.revoke(work)
        if outcome.stopped == "unrecorded":
            return FollowUpOutcome(None, "the supervisor could not record the agent's decisions", how)
        if outcome.stopped == "error":
            return FollowUpOutcome(None, await pipeline.agent_failure(deps, work, outcome), how)
        change = await pipeline.read_out(deps, box, containers, prepared, task.kind, say,
                                         session_to=(outcome.session_id, home_dir))
        if outcome.stopped in LIMITS:
            return FollowUpOutcome(None, f"{outcome.stopped.replace('_', ' ')} reached; nothing pushed", how)
        if not change.verdict.ok:
            return FollowUpOutcome(None, "change rejected: " + "; ".join(change.verdict.reasons), how)
        if change.empty:
            return FollowUpOutcome(None, "the agent made no change; nothing pushed", how)
        # The PR's head already passed a fix's verification; the follow-up is checked by the project's tests.
        tests, _ = await pipeline.test_change(deps, "feature", prepared, change, SandboxSpec(
            work, image, None, limits=box_limits, owner_lock=lock, role="tests"), containers, say)
        if not tests.passed:
            return FollowUpOutcome(None, f"the supervisor's tests failed (exit {tests.exit_code}); nothing pushed",
                                   how, tests)
        refused = await pipeline.owner_refusals(gate, change)
        if refused:
            return FollowUpOutcome(None, "change rejected: dependency files changed without the owner's yes: "
                                   + ", ".join(refused), how, tests)
        title = pr_title(task.kind, task.prompt)
        first = " ".join(follow.text.split())[:72]
        await workspace.commit(prepared, change, f"{title} (follow-up)\n\nThe owner asked: {first}\n\n"
                               f"agent-runner task {task.id}, follow-up {follow.id}", pr.branch)
        sha = await forge.push_onto(prepared.trusted, pr.number, follow.base_sha)
        say(f"pushed {sha[:12]} onto {pr.branch} (PR #{pr.number}); approvals at {follow.base_sha[:12]} no longer "
            "merge")
        if on_pushed is not None:
            await on_pushed(sha)
        await _bind_to_head(deps, task, prepared, sha, tests, outcome.summary, gate.denials, say)
        return FollowUpOutcome(sha, "", how, tests)
    finally:
        await scope.close()


async def _bind_to_head(deps: Deps, task: TaskRecord, prepared: workspace.Prepared, sha: str, tests: TestRun,
                        summary: str, denials: list[Denial], say: Progress) -> None:
    """The task's result and the PR's body now speak of `sha`: the whole change from the task's base, the
    follow-ups so far, the latest tests. An approval is checked against the forge's head, so the old one is
    refused whatever happens here; a body the forge would not take is said, not fatal."""
    assert deps.forge is not None and task.result is not None and task.result.pr is not None
    result, pr = task.result, task.result.pr
    base = task.base_sha or prepared.base_sha
    diff, counts = await workspace.change_between(prepared, base, sha)
    # The follow-up's own usage (under its work id), added to the task's.
    spent = pipeline.usage_of(deps.proxy, prepared.task_dir.name)
    total = Usage(result.usage.input_tokens + spent.input_tokens, result.usage.output_tokens + spent.output_tokens,
                  result.usage.cost_usd + spent.cost_usd, result.usage.requests + spent.requests)
    updated = dataclasses.replace(result, diff=diff, files_changed=tuple(counts), tests=tests, usage=total,
                                  pr=dataclasses.replace(pr, head_sha=sha))
    await deps.store.transition(task.id, TaskState.PROPOSED, reason="", result=updated.to_json())
    texts = tuple(e.detail.get("text", "") for e in await deps.store.audit_log(task.id, event="follow_up_pushed"))
    request = dataclasses.replace(
        PrRequest.from_task(task, summary=summary, files=[_Counted(p, *n) for p, n in counts.items()], tests=tests,
                            denials=denials, usage=total, verification=result.verification, rounds=result.rounds,
                            number=pr.number, head_sha=sha),
        follow_ups=texts, repo=None if is_git_url(task.repo) else task.repo)
    try:
        await deps.forge.edit_body(pr.number, render_pr_body(request))
    except RunnerError as exc:
        say(f"the PR's description could not be updated ({exc}); its head is {sha[:12]} all the same")


@dataclass(frozen=True, slots=True)
class _Counted:
    path: str
    added_lines: int
    removed_lines: int
