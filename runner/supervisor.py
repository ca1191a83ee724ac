"""A task's way through: provision, agent, stop and extract, validate, test afresh, then a diff or a pull request.

The order and the task's state transitions are here; the steps it shares with a follow-up (runner.followup) are
in runner.pipeline. Self-correction rounds loop over the same steps in the same container.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import cast

import policy
from runner import kept, reviewer, tasklock, workspace
from runner.agent import Gate, deny_asks
from runner.config import is_git_url
from runner.errors import RunnerError, SandboxError, StateError
from runner.gitops import run_git
from runner.models import Denial, Progress, PrRef, RunResult, TaskState, TestRun
from runner.pipeline import (
    LIMITS,
    Deps,
    RunScope,
    agent_failure,
    agent_system_prompt,
    dependency_image,
    engine_down,
    issue_model_token,
    owner_refusals,
    read_out,
    stopped_answering,
    task_lock,
    test_change,
    upstream_cause,
    usage_of,
)
from runner.prbody import PrRequest, branch_name, pr_title, render_pr_body
from runner.prompts import correction_prompt
from runner.sandbox.base import Container, Limits, SandboxSpec, WorkspaceFull
from runner.store import TaskRecord
from runner.verify import Verification

__all__ = ["Deps", "run_task", "task_lock"]  # Deps and task_lock live in runner.pipeline; callers know them here

DEADLINE_SLACK_SECONDS = 1.0  # a session that ends this close to its deadline ended on it
# Another round needs time for a session, the read-out and a test run: with less left, the task ends as it is.
MIN_ROUND_SECONDS = 30.0


async def run_task(deps: Deps, task: TaskRecord, *, progress: Progress | None = None) -> RunResult:
    """Carry one task to a terminal state (or `proposed`), persisting each transition before acting.

    The task's lock is held throughout, so a reaper can tell a running task from one whose
    supervisor died (runner.tasklock).
    """
    with tasklock.hold(task_lock(deps.home, task.id)):
        return await _run_task(deps, task, progress)


async def _run_task(deps: Deps, task: TaskRecord, progress: Progress | None) -> RunResult:
    """The order that matters: the agent's container has every process killed before its workspace is read
    (copy_out), and is removed before anything is tested; tests and verification run in fresh containers
    made from the extracted tree, with no model socket."""
    say = progress or (lambda _line: None)
    store, active = deps.store, deps.policy
    profile = active.profile(task.kind if not task.dry_run else "dry-run")
    limits = profile.limits
    wall_time = float(limits.wall_time_seconds)
    box_limits = Limits(workspace_bytes=limits.workspace_bytes)  # each container's /workspace
    lock = task_lock(deps.home, task.id)
    scope = RunScope(deps, task.id)
    containers = scope.containers  # every container of the task not yet removed
    gate = Gate(
        task.id, active, task.kind,
        audit=lambda event, detail: store.audit(task.id, "policy", event, detail),
        ask=deps.ask, ask_timeout=float(active.ask_timeout_seconds), progress=say,
    )
    # What a refused transition must not lose: the work, once the agent ran, and where it is.
    prepared: workspace.Prepared | None = None
    agent_box: Container | None = None
    change: workspace.Change | None = None
    started = False  # a container of the task started: an engine that fails after that "stopped answering"

    async def finish(state: TaskState, reason: str = "", **extra: object) -> RunResult:
        result = RunResult(task_id=task.id, status=state, usage=usage_of(deps.proxy, task.id),
                           denials=tuple(gate.denials), reason=reason, **extra)  # type: ignore[arg-type]
        try:
            await store.transition(task.id, state, reason=reason, result=result.to_json())
        except StateError as exc:
            return await unrecorded(exc, result)
        say(f"{state.value}{': ' + reason if reason else ''}")
        return result

    async def unrecorded(exc: StateError, final: RunResult | None = None) -> RunResult:
        """The state file refused a transition (the Store kept it as a note for the next start): stop, keep the
        work on disk beside the task, and say so in one line. `final`: the result whose own transition it was."""
        nonlocal change
        lost = ""
        if prepared is not None:
            kept.release(prepared.task_dir)  # the room set aside for exactly this
        if change is None and agent_box is not None and agent_box in containers and prepared is not None:
            try:
                change = await read_out(deps, agent_box, containers, prepared, task.kind, say)
            except (RunnerError, policy.PolicyError, OSError) as why:
                lost = f"; its work could not be read out ({why})"
        where = ""
        if change is not None and not change.empty and prepared is not None:
            try:
                where = f"; its diff is kept in {kept.keep(prepared.task_dir, change.diff)}"
            except OSError as why:
                lost = f"; its diff could not be kept ({why})"
        if final is not None:
            # The outcome stands (a pull request may be open): the note holds it, the next start records it.
            result = dataclasses.replace(final, reason="; ".join(filter(None, [
                final.reason, f"the state file refused to record this result, the next start records it: {exc}"
                f"{where}{lost}"])))
            say(f"{final.status.value}, unrecorded: {result.reason}")
            return result
        reason = f"the task was stopped because the state file refused to record it: {exc}{where}{lost}"
        extra = {} if change is None else {"diff": change.diff, "files_changed": change.paths}
        result = RunResult(task_id=task.id, status=TaskState.FAILED, usage=usage_of(deps.proxy, task.id),
                           denials=tuple(gate.denials), reason=reason, **extra)  # type: ignore[arg-type]
        try:  # the room given back may be what the file needed
            await store.transition(task.id, TaskState.FAILED, reason=reason, result=result.to_json())
        except StateError:
            result = dataclasses.replace(result, reason=f"{reason}; the next start records this")
        say(f"failed: {result.reason}")
        return result

    try:
        await store.transition(task.id, TaskState.PROVISIONING)
        say("provisioning: mirror, clone, strip read-protected files")
        auth = deps.forge.git_auth() if deps.forge is not None else None
        # A review's workspace holds what is reviewed (a PR's head); the change itself is given as data.
        reviewed = await reviewer.plan(deps.forge, task.prompt) if task.kind == "review" else None
        prepared = await workspace.prepare(deps.home, task.id, task.repo, active, auth=auth,
                                           base_ref=reviewed.head_ref if reviewed is not None else None)
        await store.transition(task.id, TaskState.PROVISIONING, base_sha=prepared.base_sha)
        review_base, review_diff = (await reviewer.change(prepared, active, reviewed) if reviewed is not None
                                    else ("", ""))
        # Checking out the workspace and starting the container overlap: neither needs the other.
        populating = scope.populate(prepared)
        image = await dependency_image(deps, prepared, say)
        sock_dir = scope.socket_dir()
        async with deps.proxy.serve_unix(sock_dir / "model.sock"):
            spec = SandboxSpec(task.id, image, sock_dir, limits=box_limits, owner_lock=lock)
            running_or_error, populated = await asyncio.gather(deps.sandbox.start(spec), populating,
                                                               return_exceptions=True)
            if isinstance(running_or_error, Container):
                containers.append(running_or_error)  # known before any error below, so `finally` removes it
            for failure in (running_or_error, populated):
                if isinstance(failure, BaseException):
                    raise failure
            running = cast(Container, running_or_error)
            started = True
            kept.reserve(prepared.task_dir, kept.room_for(prepared.given_archive))
            await deps.sandbox.copy_in(running, prepared.given_archive)
            await store.transition(task.id, TaskState.RUNNING)
            say(f"running: agent in container {running.id[:12]} (no network, no secrets)")
            # One deadline for the session and its model channel, taken at the same moment.
            token = issue_model_token(deps, task.id, limits)
            agent_box = running
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wall_time
            # Review tasks have nothing to test; a round is another session in the same container, resumed.
            most = max(0, limits.test_rounds) + 1 if task.kind != "review" else 1
            history: list[str] = []  # every failed round's reason, for the result
            system = await agent_system_prompt(task.kind, prepared, active)
            prompt, resume, turns_left = task.prompt, None, limits.max_turns
            if reviewed is not None:
                prompt = reviewer.agent_prompt(task.prompt, review_diff)
            rounds = 0  # agent sessions run so far
            try:
                while True:
                    rounds += 1
                    outcome = await deps.agent(
                        sandbox=deps.sandbox, container=running, gate=gate, prompt=prompt,
                        system_prompt=system, model_token=token, workdir=prepared.task_dir,
                        max_turns=turns_left, wall_time=max(0.0, deadline - loop.time()),
                        budget_spent=deps.proxy.exhausted(task.id), model=deps.model, resume=resume,
                    )
                    turns_left -= outcome.turns
                    if outcome.stopped == "error" and loop.time() >= deadline - DEADLINE_SLACK_SECONDS:
                        # The gateway cut the model call at the task's deadline (the same instant as the session's),
                        # and the CLI ended on that answer a moment before the session's own timer: the wall time
                        # ran out, whichever of the two was first to say so.
                        outcome = dataclasses.replace(outcome, stopped="wall_time")
                    if outcome.stopped == "unrecorded":
                        assert gate.unrecorded is not None
                        return await unrecorded(gate.unrecorded)
                    if outcome.stopped == "error":
                        return await finish(TaskState.FAILED, await agent_failure(deps, task.id, outcome),
                                            rounds=rounds)
                    previous = change
                    # The container stays (every process killed) while another round may follow.
                    change = await read_out(deps, running, containers, prepared, task.kind, say,
                                            keep=rounds < most, session_to=(outcome.session_id, prepared.task_dir))
                    if outcome.stopped in LIMITS:
                        upstream = upstream_cause(deps.proxy, task.id) if outcome.stopped == "wall_time" else None
                        why = (f"{upstream}: the wall time ({wall_time:g} s) ran out waiting for it" if upstream
                               else f"{outcome.stopped.replace('_', ' ')} reached")
                        return await finish(TaskState.TIMED_OUT,
                                            _with_history(f"{why}; work so far kept", history, rounds),
                                            diff=change.diff, files_changed=change.paths, rounds=rounds)
                    if not change.verdict.ok:
                        return await finish(TaskState.FAILED, "change rejected: " + "; ".join(change.verdict.reasons),
                                            diff=change.diff, files_changed=change.paths, rounds=rounds)
                    if task.kind != "review" and change.empty:
                        return await finish(TaskState.FAILED,
                                            _with_history("the agent made no change", history, rounds), rounds=rounds)
                    if previous is not None and previous.diff == change.diff:
                        # Testing the same change again would only repeat its failure.
                        history.append(f"round {rounds}: the agent made no further change")
                        break
                    await store.transition(task.id, TaskState.TESTING)
                    tests, checked = await test_change(deps, task.kind, prepared, change, SandboxSpec(
                        task.id, image, None, limits=box_limits, owner_lock=lock, role="tests"), containers, say)
                    verification = checked.describe() if checked is not None else None
                    problem = _round_problem(tests, checked)
                    if problem is None:
                        break
                    history.append(f"round {rounds}: {problem}")
                    stop = _no_more_rounds(rounds, most, deadline - loop.time(), turns_left,
                                           deps.proxy.exhausted(task.id).is_set())
                    if stop is not None:
                        if most > 1:
                            say(f"no further round: {stop}")
                        break
                    say(f"round {rounds + 1} of {most}: {problem}; back to the agent in the same session")
                    await store.transition(task.id, TaskState.RUNNING)
                    await deps.sandbox.reopen_model_channel(running)
                    prompt = correction_prompt(rounds + 1, most, command=tests.command,
                                               exit_code=tests.exit_code, output=tests.output_tail,
                                               verification=verification if tests.passed else None)
                    resume = outcome.session_id or None
                    if resume is None:  # no session to continue: the task's words come again
                        prompt = f"{task.prompt}\n\n{prompt}"
            finally:
                # Before the socket's server stops: it waits for its requests, and this cuts the ones in flight.
                deps.proxy.revoke(task.id)
        if agent_box in containers:
            await deps.sandbox.stop(agent_box)
            containers.remove(agent_box)
        if reviewed is not None:
            findings = await reviewer.conclude(deps.forge, store, task.id, prepared, outcome.summary, reviewed,
                                               review_base, review_diff)
            return await finish(TaskState.DIFF_READY, reviewer.reason(findings), diff=change.diff,
                                files_changed=change.paths, tests=tests, rounds=rounds, review=findings)
        if task.dry_run or deps.forge is None:
            reason = "; ".join(history) if not tests.passed and rounds > 1 else ""
            return await finish(TaskState.DIFF_READY, reason, diff=change.diff, files_changed=change.paths,
                                tests=tests, verification=verification, rounds=rounds)
        if not tests.passed:
            return await finish(TaskState.FAILED, _with_history("the supervisor's test run failed; nothing was "
                                                                "pushed", history, rounds),
                                diff=change.diff, files_changed=change.paths, tests=tests, rounds=rounds)
        refused = await owner_refusals(gate, change)
        if refused:
            why = "no owner channel to ask" if deps.ask is deny_asks else "the owner did not say yes"
            return await finish(TaskState.FAILED, "change rejected: dependency files changed without the owner's "
                                f"yes for that content ({why}): {', '.join(refused)}",
                                diff=change.diff, files_changed=change.paths, tests=tests, rounds=rounds)

        pr = await _propose(deps, task, prepared, change, tests, outcome.summary, gate.denials, verification,
                            rounds)
        return await finish(TaskState.PROPOSED, diff=change.diff, files_changed=change.paths, tests=tests, pr=pr,
                            verification=verification, rounds=rounds)
    except StateError as exc:
        return await unrecorded(exc)
    except WorkspaceFull as exc:
        return await finish(TaskState.FAILED, str(exc))
    except SandboxError as exc:
        # Whatever step met it, an engine that no longer answers is the cause to name.
        engine = await engine_down(deps.sandbox)
        if engine is None:
            return await finish(TaskState.FAILED, f"{type(exc).__name__}: {exc}")
        return await finish(TaskState.FAILED, stopped_answering(engine) if started else engine)
    except (RunnerError, policy.PolicyError, OSError) as exc:
        return await finish(TaskState.FAILED, f"{type(exc).__name__}: {exc}")
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await store.transition(task.id, TaskState.CANCELLED, reason="cancelled")
        raise
    finally:
        await scope.close()
        if prepared is not None:
            kept.release(prepared.task_dir)


def _round_problem(tests: TestRun, verification: Verification | None) -> str | None:
    """Why the change goes back to the agent, or None when it is done: the tests failed, or a fix's regression
    test is missing or does not fail on the base commit."""
    if not tests.passed:
        return f"the supervisor's tests failed (exit {tests.exit_code})"
    if verification is not None and not verification.verified:
        return verification.describe()
    return None


def _no_more_rounds(done: int, most: int, seconds_left: float, turns_left: int, budget_spent: bool) -> str | None:
    """Why no further round starts after `done` of at most `most`, or None when one may: each runs inside the
    task's own turns, tokens and wall time, never on a fresh allowance."""
    if done >= most:
        n = most - 1
        return f"the {n} correction round{'s' if n != 1 else ''} of limits.test_rounds {'are' if n != 1 else 'is'} used"
    if budget_spent:
        return "the task's token/cost budget is spent"
    if seconds_left < MIN_ROUND_SECONDS:
        return f"{max(seconds_left, 0.0):.0f} s of the wall time are left"
    if turns_left <= 0:
        return "no turn of limits.max_turns is left"
    return None


def _with_history(reason: str, history: list[str], rounds: int) -> str:
    """A reason followed by every round's failure when there was more than one round, so the owner sees each
    attempt (with one round the reason says it all, as before rounds existed)."""
    return f"{reason} ({'; '.join(history)})" if history and rounds > 1 else reason


async def _propose(deps: Deps, task: TaskRecord, prepared: workspace.Prepared, change: workspace.Change,
                   tests: TestRun, summary: str, denials: list[Denial], verification: str | None,
                   rounds: int = 1) -> PrRef:
    assert deps.forge is not None
    title = pr_title(task.kind, task.prompt)
    usage = usage_of(deps.proxy, task.id)
    request = dataclasses.replace(
        PrRequest.from_task(task, summary=summary, files=change.files, tests=tests, denials=denials, usage=usage,
                            verification=verification, rounds=rounds),
        repo=None if is_git_url(task.repo) else task.repo)
    # Choosing a branch name, pushing it and opening its PR happen in turn across this home's tasks: two tasks
    # whose words make the same name would otherwise both pick it, and the second push be refused as diverged.
    async with tasklock.waiting(deps.home / "locks" / "publish.lock"):
        # Not only open PRs' branches: a rejected PR's branch stays, and pushing onto it would be refused.
        existing = await run_git(["for-each-ref", "--format=%(refname:strip=2)", "refs/heads/"], cwd=prepared.mirror)
        taken = {pr.head_branch for pr in await deps.forge.list_open()} | set(existing.out.split())
        branch = branch_name(task.kind, task.fingerprint or task.prompt, taken)
        await workspace.commit(prepared, change, f"{title}\n\nagent-runner task {task.id}", branch)
        await deps.forge.push_branch(prepared.trusted, branch)
        pr = await deps.forge.open_pr(title, render_pr_body(request), branch, prepared.base_branch)
    # The number exists only once the PR does: the body's approve/reject commands get it, and the head, now.
    with contextlib.suppress(RunnerError):  # on failure the PR is open all the same; only its commands say N
        await deps.forge.edit_body(pr.number, render_pr_body(dataclasses.replace(request, number=pr.number,
                                                                                 head_sha=pr.head_sha)))
    return PrRef(number=pr.number, url=pr.url, branch=branch, head_sha=pr.head_sha)


