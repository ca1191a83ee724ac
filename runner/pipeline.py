"""The steps a task's way through (runner.supervisor) and a follow-up's (runner.followup) share, so that a
follow-up's change is read out, checked and tested exactly as a task's is: the dependency image, the read-out
after every process is killed, the supervisor's tests in a fresh container, the model token and system prompt,
the owner's yes on dependency files, and the scope whose close takes down whatever a run started.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import policy
from runner import session, workspace
from runner.agent import AgentOutcome, Asker, Gate, deny_asks, run_agent, system_prompt
from runner.errors import RunnerError, SandboxError
from runner.forge.base import Forge
from runner.guidance import read_guidance
from runner.model_gateway import model_patterns
from runner.model_proxy import Budget, ModelProxy
from runner.models import Progress, TestRun, Usage
from runner.sandbox.base import Container, Sandbox, SandboxSpec
from runner.store import Store
from runner.verify import Verification, verify_fix

RunAgent = Callable[..., Awaitable[AgentOutcome]]
TEST_TIMEOUT_SECONDS = 900.0
OUTPUT_TAIL = 4000
LIMITS = ("turn_limit", "wall_time", "budget")
ENGINE_PROBE_SECONDS = 15.0
# A request that had waited less than this for the upstream's answer when the time ran out was merely in flight:
# it says nothing of the upstream (streamed answers start within a second or two).
SLOW_UPSTREAM_SECONDS = 5.0
STDERR_IN_REASON = 3  # the CLI's last stderr lines quoted in a failed task's reason


@dataclass(slots=True)
class Deps:
    """Ready-built backends a task needs; create_app and the CLI build them once."""

    home: Path
    store: Store
    sandbox: Sandbox
    proxy: ModelProxy
    policy: policy.Policy
    image: str
    forge: Forge | None = None
    ask: Asker = deny_asks
    model: str | None = None
    agent: RunAgent = run_agent
    """Drives the agent's session (runner.agent.run_agent; a test may give its own scripted one)."""


def task_lock(home: Path, task_id: str) -> Path:
    return home / "locks" / f"{task_id}.lock"


@dataclass(slots=True)
class RunScope:
    """What one run (a task's, or a follow-up's under its own work id) starts and must take down whatever step
    fails: its containers not yet removed, the workspace's checkout in flight, the model socket's directory and
    the model token. `close` is the run's `finally`."""

    deps: Deps
    work_id: str
    containers: list[Container] = field(default_factory=list)
    populating: asyncio.Future[None] | None = None

    @property
    def sock_dir(self) -> Path:
        return self.deps.home / "run" / self.work_id

    def populate(self, prepared: workspace.Prepared) -> asyncio.Future[None]:
        """Check the workspace out in the background: starting the container needs none of it."""
        self.populating = asyncio.ensure_future(workspace.populate(prepared))
        return self.populating

    def socket_dir(self) -> Path:
        """The directory of the model socket, made for the sandbox user to reach."""
        self.sock_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.sock_dir, 0o755)
        return self.sock_dir

    async def close(self) -> None:
        self.deps.proxy.revoke(self.work_id)
        if self.populating is not None and not self.populating.done():
            self.populating.cancel()
            await asyncio.gather(self.populating, return_exceptions=True)
        for container in self.containers:
            with contextlib.suppress(Exception):
                await self.deps.sandbox.stop(container)
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def issue_model_token(deps: Deps, work_id: str, limits: policy.Limits) -> str:
    """The run's model token, its budget and deadline: the gateway refuses and cuts model calls from then on (a
    hung upstream cannot outlast the run). The policy's models go with it (limits.models; empty means the
    configured model's family)."""
    return deps.proxy.issue_token(
        work_id, Budget(max_tokens=limits.max_tokens, max_cost_usd=limits.max_cost_usd),
        models=limits.models or (model_patterns(deps.model) if deps.model else None),
        time_limit=float(limits.wall_time_seconds))


async def agent_system_prompt(kind: str, prepared: workspace.Prepared, active: policy.Policy) -> str:
    """Our rules for `kind`, then the repository's CLAUDE.md / AGENTS.md, read from the trusted clone at the base
    (never the CLI's project settings, which could carry hooks), fenced below them."""
    return "\n\n".join(filter(None, [system_prompt(kind), (await read_guidance(prepared, active)).prompt_section()]))


async def owner_refusals(gate: Gate, change: workspace.Change) -> list[str]:
    """The changed dependency files the owner did not say yes to, each asked with its content and its diff."""
    return [path for path in change.verdict.needs_owner
            if not (await gate.confirm(path, change.contents.get(path), file_diff(change.diff, path)))[0]]



async def dependency_image(deps: Deps, prepared: workspace.Prepared, say: Progress) -> str:
    """The sandbox image plus the repo's dependencies, built once per dependency-file hash.

    The only step with network, in its own container given only the dependency files; the agent then
    starts from its image with none.
    """
    command = deps.policy.setup_command.strip()
    files = await workspace.dependency_files(prepared, deps.policy.dependency_files)
    if not command or not files:
        return deps.image
    digest = hashlib.sha256(f"{deps.image}\0{command}".encode())
    for path, content in files.items():
        digest.update(path.encode() + b"\0" + content + b"\0")
    key = digest.hexdigest()[:20]
    tag = await deps.sandbox.cached_dependencies(deps.image, key)
    if tag is not None:
        say(f"dependencies: cached {tag} (`{command}`)")
        return tag
    tag = await deps.sandbox.build_dependencies(deps.image, files, command, key)
    say(f"dependencies: built {tag} (`{command}`)")
    return tag


async def read_out(deps: Deps, box: Container, containers: list[Container], prepared: workspace.Prepared,
                   kind: str, say: Progress, *, keep: bool = False,
                   session_to: tuple[str, Path] | None = None) -> workspace.Change:
    """Kill every process of the agent's container, read its workspace out, remove it, and extract the change
    from the archive on the trusted side. Also after a limit: the work so far is read the same way.

    `keep`: another round may follow, so the container stays, with no process of the task in it: its workspace
    and the CLI's transcript (in its config directory) are what the next round's session resumes.
    `session_to`: (session id, task directory): the transcript is kept there before the container can go, for
    a follow-up to continue (runner.session); a transcript that cannot be kept is said, never fatal."""
    say("stopping: every process of the task is killed before its workspace is read")
    await deps.sandbox.kill_processes(box)
    if session_to is not None and session_to[0]:
        try:
            kept_session = await session.save(deps.sandbox, box, session_to[0], session_to[1])
            say(f"session kept on the supervisor's side ({kept_session.records} records)")
        except (session.SessionInvalid, SandboxError, OSError) as exc:
            say(f"the session could not be kept ({exc}); a follow-up will start a new one")
    archive = prepared.task_dir / "workspace.tar"
    try:
        await deps.sandbox.copy_out(box, archive)
        if not keep:
            await deps.sandbox.stop(box)
            containers.remove(box)
        return await workspace.extract(prepared, archive, deps.policy, kind)
    finally:
        archive.unlink(missing_ok=True)


async def test_change(deps: Deps, kind: str, prepared: workspace.Prepared, change: workspace.Change,
                      spec: SandboxSpec, containers: list[Container],
                      say: Progress) -> tuple[TestRun, Verification | None]:
    """The supervisor's own test run (and, for a `kind` "fix", the fix's verification) in a fresh container
    holding the extracted tree: the agent's word, and its container, are not taken for it."""
    command = deps.policy.test_command
    say(f"testing: {command} (in a fresh container of the extracted change)")
    archive = prepared.task_dir / "tests.tar"
    await workspace.tree_archive(prepared, change.tree, archive)
    box = await deps.sandbox.start(spec)
    containers.append(box)
    try:
        await deps.sandbox.copy_in(box, archive)
        tests = await _run_tests(deps.sandbox, box, command)
        say(f"tests {'passed' if tests.passed else 'failed'} (exit {tests.exit_code})")
        verification = None
        if kind == "fix" and tests.passed and not change.empty:
            say("verifying the fix: the new regression test against the base commit, in a second sandbox")
            verification = await verify_fix(deps.sandbox, box, dataclasses.replace(spec, role="verify"), prepared,
                                            change, command)
            say(verification.describe())
        return tests, verification
    finally:
        await deps.sandbox.stop(box)
        containers.remove(box)
        archive.unlink(missing_ok=True)


async def _run_tests(sandbox: Sandbox, container: Container, command: str) -> TestRun:
    result = await sandbox.exec(container, ["sh", "-c", command], timeout=TEST_TIMEOUT_SECONDS)
    tail = result.output[-OUTPUT_TAIL:]
    if result.timed_out:
        tail += f"\n[agent-runner: the test command ran out of time after {TEST_TIMEOUT_SECONDS:.0f}s]"
    return TestRun(command=command, exit_code=result.exit_code, passed=result.exit_code == 0 and not result.timed_out,
                   output_tail=tail)


async def engine_down(sandbox: Sandbox) -> str | None:
    """Why the sandbox's engine does not answer (its backend's words), or None when it does."""
    try:
        async with asyncio.timeout(ENGINE_PROBE_SECONDS):
            await sandbox.running()
    except TimeoutError:
        return f"it did not answer within {ENGINE_PROBE_SECONDS:g} s"
    except RunnerError as exc:
        return str(exc) or type(exc).__name__
    return None


def stopped_answering(engine: str) -> str:
    """An engine that had answered this task and no longer does: "the Docker engine stopped answering
    (Connection refused); start one with ..." from the backend's "no Docker engine answers (...); ..."."""
    words = engine.removeprefix("no Docker engine answers ")
    return f"the Docker engine stopped answering {words}" if words != engine else \
        f"the Docker engine stopped answering: {engine}"


def upstream_cause(proxy: ModelProxy, task_id: str) -> str | None:
    """How the model upstream was failing when the session ended, if it was: its last requests failed (a status,
    unreachable, broken off), or the last one had long had no answer when the time ran out."""
    failures = proxy.upstream_failures(task_id)
    if not failures.repeats:
        return None
    if failures.last_kind == "timeout" and (failures.waited_seconds or 0.0) < SLOW_UPSTREAM_SECONDS:
        return None
    return failures.describe()


async def agent_failure(deps: Deps, task_id: str, outcome: AgentOutcome) -> str:
    """A failed session's reason, by what is known to have failed: the engine under the sandbox, the model
    upstream, else the CLI's own error and its last words on stderr."""
    if (engine := await engine_down(deps.sandbox)) is not None:
        return stopped_answering(engine)
    words = f"the agent failed: {outcome.error}"
    if (upstream := upstream_cause(deps.proxy, task_id)) is not None:
        words = f"{upstream}, and the agent stopped: {outcome.error}"
    if outcome.stderr:
        # Partly the sandbox's text (the CLI runs there): printable, short, quoted.
        last = " | ".join(line[:300] for line in outcome.stderr[-STDERR_IN_REASON:])
        words += f"; the CLI's last lines on stderr: «{last}»"
    return words


def file_diff(diff: str, path: str) -> str:
    """The part of a `git diff` about `path` (what the owner is shown for one dependency file)."""
    sections = ("\n" + diff).split("\ndiff --git ")
    for section in sections[1:]:
        header = section.split("\n", 1)[0]
        if header.endswith(f" b/{path}") or header.startswith(f"a/{path} "):
            return "diff --git " + section.rstrip("\n") + "\n"
    return ""


def usage_of(proxy: ModelProxy, task_id: str) -> Usage:
    u = proxy.usage(task_id)
    return Usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens, cost_usd=u.cost_usd, requests=u.requests)
