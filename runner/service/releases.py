"""Releases: the owner's approval carried through merge, deploy, health check and the post-deploy watch.

A release is a background job: the HTTP request and the Telegram button are answered as soon as the approval
is checked and recorded, and the outcome reaches the owner when it is known. Each release has a row in the
supervisor's SQLite file, written before each step is acted on, so a supervisor killed mid-release resumes it:

    approved  -> merge                         (the forge merges only at the approved head)
    merging   -> merge, unless the forge already did (a pull request is never merged twice)
    deploying -> settle the step in flight, then finish the deploy (see below)
    watching  -> watch out the rest of the window, or end it if the window passed meanwhile

Each deploy step (the deploy, a rollback) is fenced: the row records what runs it (`fence`, from the deployer)
before it starts, and the deploy's result once it is known. A resumed release first settles the fence: waits for
a step a previous process left running (a deploy command outlives a SIGKILLed supervisor), or stops it once its
timeout has passed, and keeps its result when the deployer can tell it (the command's exit status, the
container's image); only otherwise is the step run again. So no two steps of a release ever run at once, and a
deploy that finished is not repeated.

A release whose merge changes database migrations (the policy's `migrations.paths`) is never deployed nor rolled
back without the owner, since a code rollback does not undo a schema change: after the merge it waits in state
`asking` (question `deploy`), and after a failed health check or a condemning watch it waits again (question
`rollback`); no job runs while it waits, so it outlives restarts. `answer(go)` deploys / rolls back; `answer(hold)`
keeps it merged and undeployed (`held`) / keeps it running for a fix to roll forward (`deployed`).

One release at a time merges and deploys. A release's watch ends when the next release starts, since a
rollback can only go back one step; a watch that has already condemned its release finishes its rollback first.

The release rows are runner.service.release_store's; reverting a merge on its branch is runner.reverts'.

Size: about 720 lines, one state machine (approved → merging → deploying → watching → deployed,
rolled_back, failed, asking, held): every step records the release's row before it acts and is resumed by
`start()` after a restart, so the steps, the owner's questions and the resume logic read together; the rows
are runner.service.release_store's, the revert runner.reverts', the watch runner.service.watch's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from policy import Migrations
from runner.deploy import (
    DeployAction,
    Deployer,
    DeployError,
    DeployEvent,
    DeployResult,
    DeploySource,
    Fence,
    deploy_with_rollback,
)
from runner.errors import ForgeConflict, ForgeError
from runner.forge import Forge, MergeMethod, PullRequest
from runner.gitops import GitError, run_git
from runner.models import TaskId, TaskState
from runner.reverts import revert_on_base, reverted_clone
from runner.service.release_store import (
    IN_FLIGHT,
    RELEASE_STATES,
    Question,
    ReleaseRecord,
    ReleaseState,
    ReleaseStore,
)
from runner.service.watch import ErrorSource, Verdict, Watch, WatchConfig
from runner.store import Store, TaskRecord
from runner.workspace import update_mirror

# The release store's names, for the modules that import them from here (new code: runner.service.release_store).
__all__ = ["IN_FLIGHT", "NO_MIGRATIONS", "NOTHING_DEPLOYED", "RELEASE_STATES", "Condemned", "ReleaseRecord",
           "ReleaseState", "ReleaseStore", "Releases", "approved_head", "revert_on_base"]

log = logging.getLogger("agent_runner.releases")

TASK_STATE_OF: dict[ReleaseState, TaskState] = {
    "merging": TaskState.MERGING, "deploying": TaskState.DEPLOYING, "watching": TaskState.DEPLOYED,
    "deployed": TaskState.DEPLOYED, "rolled_back": TaskState.ROLLED_BACK, "failed": TaskState.FAILED,
    "not_merged": TaskState.PROPOSED,  # back where the owner can look again, with the reason
    "held": TaskState.CANCELLED,  # merged and never deployed, on the owner's word: the task stops there
}

TaskProgress = Callable[[str | None, str], None]
"""Hears a release's step, for the task it belongs to (None: a release of a PR no task of ours proposed)."""
Tell = Callable[[str], Awaitable[None]]



NO_MIGRATIONS = Migrations(())
NOTHING_DEPLOYED = ("merged; no deployer configured (AGENT_RUNNER_DEPLOYER=none), so nothing was deployed, "
                    "health-checked or watched")
MIN_SHA_PREFIX = 7
"""The shortest SHA an approval may give (git's own default abbreviation): a prefix of the PR's head this long
names it, since the PR has one head; shorter ones are refused as too easy to match by chance."""


def approved_head(number: int, head: str, given: str) -> str:
    """The full head SHA the owner approved with `given` (the full SHA or a prefix of it), or ForgeConflict
    saying why not. The refusal shows both at the given length, where they differ (never "head is X, not the
    approved X")."""
    wanted = given.strip().lower()
    if wanted == head:
        return head
    if not re.fullmatch(r"[0-9a-f]+", wanted) or len(wanted) < MIN_SHA_PREFIX:
        raise ForgeConflict(f"pull request #{number}: approve it with its head SHA, at least {MIN_SHA_PREFIX} hex "
                            f"digits (its head is {head[:12]}), not {given!r}; nothing merged")
    if head.startswith(wanted):
        return head
    width = min(len(wanted), len(head))
    raise ForgeConflict(f"pull request #{number} head is {head[:width]}, not the approved {wanted[:width]}; "
                        "nothing merged")


class Releases:
    """Approve, merge, deploy, watch, roll back: one release at a time, each step recorded before it is taken.

    `progress(task_id, line)` hears each step (the task's event stream); `tell(text)` reaches the owner with
    each outcome (Telegram, or the log). `errors` is where the watch reads the bot's tracebacks (Loki);
    without it the watch judges the alerts that arrive during its window only.
    """

    def __init__(self, rows: ReleaseStore, *, store: Store, forge: Forge, deployer: Deployer, repo: str,
                 home: Path, watch: WatchConfig, errors: ErrorSource | None = None,
                 progress: TaskProgress = lambda _task, _line: None, tell: Tell | None = None,
                 migrations: Callable[[], Migrations] = lambda: NO_MIGRATIONS,
                 ask: Callable[[str], Awaitable[bool]] | None = None,
                 fix: Callable[[ReleaseRecord, str], Awaitable[str]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.rows = rows
        self._store = store
        self._forge = forge
        self._deployer = deployer
        self._repo = repo
        self._home = home  # where the supervisor keeps its mirror of `repo`
        self._watch_config = watch
        self._errors = errors
        self._progress = progress
        self._tell = tell
        self._migrations = migrations  # read at each merge: the policy the owner has active then
        self._ask_owner = ask
        self._fix = fix  # (release, actor) -> the id of a fix task queued for the error it was kept running with
        self._questions: dict[int, asyncio.Task[None]] = {}
        self._clock = clock
        self._lock = asyncio.Lock()  # one merge and deploy at a time
        self._admit = asyncio.Lock()
        self._jobs: set[asyncio.Task[None]] = set()
        self._watching: _Watching | None = None

    # front door ---------------------------------------------------------------------------------------------

    async def approve(self, number: int, head_sha: str, *, actor: str, task: TaskRecord | None,
                      method: MergeMethod = "squash") -> ReleaseRecord:
        """Check and record the owner's approval of PR `number` at `head_sha`, and start its release.

        Raises ForgeNotFound, or ForgeConflict when the pull request is not open, its head is not `head_sha`
        (a prefix of MIN_SHA_PREFIX hex digits or more is the head it starts) or it is already being released:
        then nothing is recorded but the refusal.
        """
        pr = await self._forge.get_pr(number)
        if pr.state != "open":
            raise ForgeConflict(f"pull request #{number} is {pr.state}; nothing to merge")
        head_sha = approved_head(number, pr.head_sha, head_sha)
        async with self._admit:  # two approvals arriving together (API and Telegram): one release
            busy = await self.rows.find(states=IN_FLIGHT, number=number, limit=1)
            if busy:
                raise ForgeConflict(f"pull request #{number} is already being released (release {busy[0].id}, "
                                    f"{busy[0].state})")
            release = await self.rows.add(number=number, head_sha=head_sha, task_id=task.id if task else None,
                                          actor=actor, method=method)
        if task is not None:
            await self._store.transition(task.id, TaskState.APPROVED, actor=actor,
                                         reason=f"release {release.id}: merging at {head_sha[:12]}")
        self._launch(self._guarded(release, self._drive(release)))
        return release

    async def answer(self, release_id: int, go: bool, *, actor: str) -> ReleaseRecord:
        """The owner's answer to the question a migration release waits on: `go` deploys it (asked before the
        deploy) or rolls it back (asked after a failed check); otherwise it is held merged and undeployed, or kept
        running as it is. Raises KeyError for no such release, ForgeConflict when it asks nothing."""
        async with self._admit:  # two answers at once (API and chat): one is taken
            release = await self.rows.get(release_id)
            if release.state != "asking" or release.asked is None:
                raise ForgeConflict(f"release {release_id} (PR #{release.number}) is {release.state}; it waits for "
                                    "no answer")
            question = release.asked
            if (pending := self._questions.pop(release_id, None)) is not None and pending is not asyncio.current_task():
                pending.cancel()  # answered over the API: the chat's buttons are spent
            later = [r for r in await self.rows.find(limit=10) if r.id > release.id and r.merge_sha]
            if question == "rollback" and go and later:
                raise ForgeConflict(f"release {later[-1].id} (PR #{later[-1].number}) has merged since; rolling "
                                    f"release {release.id} back now would undo it too: do it by hand")
            await self._store.audit(release.task_id, actor, "release_answer",
                                    {"release": release.id, "number": release.number, "question": question,
                                     "answer": "go" if go else "hold"})
            if question == "deploy" and go:
                release = await self._set(release, "deploying", asked=None, consent="deploy",
                                          detail=f"the owner said deploy; deploying {self._migration_words(release)}")
                self._launch(self._guarded(release, self._drive(release)))
            elif question == "deploy":
                release = await self._set(release, "held", asked=None, consent="hold",
                                          detail=f"merged as {(release.merge_sha or '')[:12]} and held by the owner: "
                                                 "not deployed (the next release deploys it with the rest)")
                await self._say(release, f"PR #{release.number}: {release.detail}")
            elif go:
                # `watching` with the consent recorded: a restart resumes the rollback (start -> _watch -> verdict).
                release = await self._set(release, "watching", asked=None, consent="rollback",
                                          detail="the owner said roll back; rolling back")
                verdict = await self._verdict_of(release) or Verdict(release.detail, None)
                self._launch(self._guarded(release, self._consented_rollback(release, verdict)))
            else:
                forward = await self._roll_forward(release, actor)
                release = await self._set(release, "deployed", asked=None, consent="hold",
                                          detail=f"kept running on the owner's word ({release.detail}); roll "
                                                 f"forward with a fix{forward}")
                await self._say(release, f"PR #{release.number}: {release.detail}")
            return release

    async def _roll_forward(self, release: ReleaseRecord, actor: str) -> str:
        """Start the fix the owner chose over a rollback, if a `fix` hook was given; how that went, in words."""
        if self._fix is None:
            return ""
        try:
            task_id = await self._fix(release, actor)
        except Exception as exc:  # a full hourly limit, a missing repository: the owner starts it by hand
            log.warning("no fix task for release %s: %s", release.id, exc)
            return f" (no fix task was started: {exc})"
        return f": fix task {task_id} is queued"

    async def _consented_rollback(self, release: ReleaseRecord, verdict: Verdict) -> None:
        # Under the release lock: a release approved meanwhile deploys after this rollback, never during it.
        async with self._lock:
            await self._roll_back(release, verdict, recorded=True)

    async def _ask(self, release: ReleaseRecord, question: Question, why: str) -> ReleaseRecord:
        """Wait for the owner (state `asking`, no job runs): the release says what it waits for, and the owner is
        told the two answers."""
        files = self._migration_words(release)
        detail = (f"merged; it changes {files}: waiting for the owner before the deploy" if question == "deploy"
                  else f"{why}; it changes {files}: waiting for the owner before any rollback")
        release = await self._set(release, "asking", asked=question, detail=detail)
        await self._put(release)
        return release

    async def _put(self, release: ReleaseRecord) -> None:
        """Put the release's question to the owner: with buttons through `ask` (its answer is taken as the
        owner's, unless one came another way first), else as a message through `tell`."""
        how = f'POST /releases/{release.id}/answer {{"answer": "go"}} or {{"answer": "hold"}}'
        if release.asked == "deploy":
            text = (f"PR #{release.number} (release {release.id}): {release.detail}. Back up the database, then "
                    f"answer release {release.id}: go (deploy it now) or hold (keep it merged and undeployed); {how}.")
        else:
            text = (f"PR #{release.number} (release {release.id}): {release.detail}. A rollback of the code does not "
                    "undo a migration: the old version would run against the migrated database. Answer release "
                    f"{release.id}: go (roll back anyway) or hold (keep it running and roll forward with a fix); "
                    f"{how}.")
        ask = self._ask_owner
        if ask is None:
            await self._say(release, text)
            return
        self._note(release, text)

        async def hear() -> None:
            try:
                go = await ask(text)
            except Exception:  # the chat being down leaves the API's answer
                log.warning("could not ask the owner about release %s", release.id, exc_info=True)
                return
            with contextlib.suppress(ForgeConflict, KeyError):  # answered another way meanwhile
                await self.answer(release.id, go, actor="telegram:owner")

        # Not one of the release's jobs: waiting on the owner is not work in flight (wait_idle does not wait on it).
        job = self._questions[release.id] = asyncio.ensure_future(hear())
        job.add_done_callback(lambda done: self._questions.pop(release.id, None) if
                              self._questions.get(release.id) is done else None)

    @staticmethod
    def _migration_words(release: ReleaseRecord) -> str:
        files = [f for f in (release.migrations or "").split(",") if f]
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        return f"database migrations ({shown})" if files else "no migrations"

    async def _touched(self, source: str, release: ReleaseRecord) -> ReleaseRecord:
        """Record which migration files the merge changes (once: a resumed release keeps the first answer)."""
        if release.migrations is not None or release.merge_sha is None:
            return release
        policy_now = self._migrations()
        changed: list[str] = []
        if policy_now.paths:
            try:
                out = (await run_git(["diff", "--name-only", "--no-renames", "-z", f"{release.merge_sha}^1",
                                      release.merge_sha], cwd=source)).out
                changed = [p for p in out.split("\0") if p]
            except (GitError, OSError) as exc:
                # Unknown is not "none": a change we cannot read is treated as one that may migrate.
                log.warning("could not list the files of %s: %s", release.merge_sha[:12], exc)
                return await self.rows.update(release.id, release.state, migrations="(unreadable change)")
        return await self.rows.update(release.id, release.state, migrations=",".join(policy_now.touched(changed)))

    def observe(self, fingerprint: str, occurrences: int, summary: str = "") -> Condemned | None:
        """An alert's error arrived. When it condemns the release being watched, say so: its rollback is under
        way, and a fix task for the error would chase a bug that is about to be gone."""
        watching = self._watching
        if watching is None or watching.watch is None:
            return None
        verdict = watching.watch.observe(fingerprint, occurrences, summary)
        return Condemned(watching.release, verdict) if verdict is not None else None

    @property
    def watched(self) -> int | None:
        """The release whose watch is listening now (alerts reach it through `observe`), if any."""
        watching = self._watching
        return watching.release.id if watching is not None and watching.watch is not None else None

    async def start(self) -> list[int]:
        """Resume what a previous process left: releases in flight, and watches whose window is still open."""
        resumed = []
        for release in sorted(await self.rows.find(states=(*IN_FLIGHT, "watching"), limit=10_000),
                              key=lambda r: r.id):
            if release.state == "watching":
                window_open = release.watch_until is not None and release.watch_until > self._clock()
                # A rollback decided (or begun) before the stop is finished whatever the clock says now.
                if window_open or release.fence is not None or await self._verdict_of(release) is not None:
                    self._start_watch(release)
                else:
                    await self._set(release, "deployed",
                                    detail="the watch window passed while the supervisor was stopped")
                    continue
            else:
                self._launch(self._guarded(release, self._drive(release)))
            resumed.append(release.id)
        if self._ask_owner is not None:  # the buttons of a question put before the stop answer nothing now
            for release in await self.rows.find(states=("asking",), limit=100):
                await self._put(release)
        return resumed

    async def aclose(self) -> None:
        """Stop every job where it is; its row says where, and the next start resumes it."""
        jobs = [*self._jobs, *self._questions.values()]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Until no release job or watch runs (for tests and the demo)."""
        while self._jobs:
            await asyncio.gather(*list(self._jobs), return_exceptions=True)

    # the job ------------------------------------------------------------------------------------------------

    def _launch(self, work: Awaitable[None]) -> asyncio.Task[None]:
        job = asyncio.ensure_future(work)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    async def _drive(self, release: ReleaseRecord) -> None:
        async with self._lock:
            await self._end_watch(f"release {release.id} (PR #{release.number}) started after it")
            release = await self._merge(release)
            if release.state == "deploying":
                release = await self._deploy(release)
        if release.state == "watching":
            self._start_watch(release)

    async def _guarded(self, release: ReleaseRecord, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise  # shutdown: the row keeps its state and the next start resumes it
        except Exception as exc:  # a bug or a dead engine must not leave the release open forever
            log.exception("release %s crashed", release.id)
            with contextlib.suppress(Exception):
                await self._set(release, "failed", detail=f"internal error: {type(exc).__name__}: {exc}")
                await self._say(release, f"PR #{release.number}: the release failed: {exc}")

    async def _merge(self, release: ReleaseRecord) -> ReleaseRecord:
        if release.state == "merging":  # a previous process may have merged before it died
            pr = await self._forge.get_pr(release.number)
            if pr.state == "merged" and pr.merge_sha:
                return await self._merged(release, pr.merge_sha, pr.base_branch)
        elif release.state != "approved":
            return release
        release = await self._set(release, "merging")
        self._note(release, f"merging PR #{release.number} at {release.head_sha[:12]}")
        try:
            merge = await self._forge.merge(release.number, release.head_sha, release.method)
            pr = await self._forge.get_pr(release.number)
        except ForgeError as exc:
            release = await self._set(release, "not_merged", detail=f"not merged: {exc}")
            await self._say(release, f"PR #{release.number} was not merged: {exc}")
            return release
        return await self._merged(release, merge.sha, pr.base_branch)

    async def _merged(self, release: ReleaseRecord, merge_sha: str, base_branch: str) -> ReleaseRecord:
        self._note(release, f"merged #{release.number} into {base_branch} as {merge_sha[:12]}")
        return await self._set(release, "deploying", merge_sha=merge_sha, base_branch=base_branch,
                               detail=f"merged as {merge_sha[:12]}")

    async def _source(self) -> str:
        """Where deployers read the release from: the supervisor's mirror, just fetched (a local path, whatever
        the forge), else the repository itself."""
        try:
            return str(await update_mirror(self._home, self._repo, self._forge.git_auth()))
        except GitError as exc:
            log.warning("deploying from %s: its mirror could not be updated: %s", self._repo, exc)
            return self._repo

    async def _parent(self, source: str, merge_sha: str) -> str | None:
        """What ran before the merge (its first parent), read from `source` (the mirror: with GitHub, `repo` is
        a URL). None when it cannot be read; the release is then deployed with nothing to roll back to."""
        try:
            return (await run_git(["rev-parse", "--verify", f"{merge_sha}^1"], cwd=source)).out
        except (GitError, OSError) as exc:
            log.warning("no previous version for %s: %s", merge_sha[:12], exc)
            return None

    async def _deploy(self, release: ReleaseRecord) -> ReleaseRecord:
        merge, branch = release.merge_sha, release.base_branch
        assert merge is not None and branch is not None

        def on_event(event: DeployEvent) -> None:
            self._note(release, f"deploy: {event.kind} {event.sha[:12]}{' - ' + event.detail if event.detail else ''}")

        source = await self._source()  # one fetch: it holds the merge, and the parent a rollback returns to
        if release.previous_sha is None:
            previous = await self._parent(source, merge)
            release = await self.rows.update(release.id, "deploying", previous_sha=previous)  # before it is used
        release = await self._touched(source, release)
        migrates = bool(release.migrations)
        if (migrates and self._migrations().ask_before_deploy and release.consent is None
                and release.fence is None):
            return await self._ask(release, "deploy", "")
        release, left = await self._settle(release, source)
        steps = _Steps(self, release, left)
        # A migration release is never rolled back without the owner: deployed with nothing to return to, an
        # unhealthy one comes back "failed" and the owner is asked.
        outcome = await deploy_with_rollback(
            self._deployer, DeploySource(source, merge, previous_sha=None if migrates else release.previous_sha),
            on_event=on_event, step=steps.run)
        release = steps.release
        merged = f"PR #{release.number} merged as {merge[:12]}"
        if migrates and outcome.status == "failed" and release.previous_sha is not None:
            verdict = Verdict(f"unhealthy after the deploy ({outcome.deployed.detail})", None)
            await self._store.audit(release.task_id, "supervisor", "watch_verdict",
                                    {"release": release.id, "reason": verdict.reason, "fingerprint": None})
            return await self._ask(release, "rollback", verdict.reason)
        if outcome.status == "rolled_back":
            revert, reverted = await self._revert(branch, merge)
            release = await self._set(release, "rolled_back", revert_sha=revert,
                                      detail=f"unhealthy after the deploy ({outcome.deployed.detail}); the previous "
                                             f"version answers again; {reverted}")
        elif outcome.status == "failed":
            release = await self._set(release, "failed", detail=f"deploy failed and could not be rolled back: "
                                                                f"{(outcome.rolled_back or outcome.deployed).detail}")
        elif not outcome.deployed.ran:  # the `none` deployer: the merge is all that happened
            release = await self._set(release, "deployed", deployed_at=self._clock(), detail=NOTHING_DEPLOYED)
            await self._say(release, f"{merged}; {NOTHING_DEPLOYED.removeprefix('merged; ')}")
            return release
        elif self._watch_config.enabled:
            now = self._clock()
            release = await self._set(release, "watching", deployed_at=now,
                                      watch_until=now + self._watch_config.seconds,
                                      detail=f"deployed and healthy; {self._watch_says()}")
        else:
            release = await self._set(release, "deployed", deployed_at=self._clock(), detail="deployed and healthy")
        await self._say(release, f"{merged}; deploy {outcome.status}: {release.detail}")
        return release

    def _watch_says(self) -> str:
        """What the post-deploy watch reads, in the words the owner sees: with no error source (no Loki, no
        container log) only the alerts posted to the service can condemn the release, and no log is read."""
        seconds = f"{self._watch_config.seconds:.0f}s"
        if self._errors is None:
            return (f"for {seconds} an alert posted to /alerts rolls it back; no logs are read (no LOKI_URL, and no "
                    "container log without the docker deployer)")
        return f"watching its errors for {seconds}"

    async def _settle(self, release: ReleaseRecord, source: str) -> tuple[ReleaseRecord, _Left | None]:
        """The step a previous process left in flight: wait until nothing of it runs, and keep its result if the
        deployer can tell it. Its fence is cleared once it is settled."""
        fence = release.fence
        if fence is None:
            return release, None
        line = (f"waiting for the {fence.action} of {fence.sha[:12]} that a previous supervisor process began "
                f"(step {fence.key}) to end")
        self._note(release, line)
        release = await self.rows.update(release.id, release.state, detail=line)
        result = await self._deployer.settle(fence, DeploySource(source, fence.sha))
        said = "ended; its result stands" if result is not None else "is over; it runs again"
        self._note(release, f"the {fence.action} of {fence.sha[:12]} begun before the restart {said}")
        fields: dict[str, object] = {"fence": None}
        if result is not None and fence.action == "deploy":
            fields["deployed"] = result
        release = await self.rows.update(release.id, release.state, **fields)
        return release, _Left(fence, result)

    # the watch ----------------------------------------------------------------------------------------------

    def _start_watch(self, release: ReleaseRecord) -> None:
        watching = _Watching(release)
        watching.job = self._launch(self._guarded(release, self._watch(watching)))
        self._watching = watching

    async def _watch(self, watching: _Watching) -> None:
        release = watching.release
        if (condemned := await self._verdict_of(release)) is not None:  # decided before a restart: act on it
            if self._watching is watching:
                self._watching = None
            await self._roll_back(release, condemned, recorded=True)
            return
        assert release.deployed_at is not None and release.watch_until is not None
        fixed, known = await self._fingerprints(release)
        watch = watching.watch = Watch(deployed_at=release.deployed_at, until=release.watch_until,
                                       config=self._watch_config, fixed=fixed, known=known, source=self._errors,
                                       clock=self._clock)
        until = time.strftime('%H:%M:%S', time.localtime(watch.until))
        self._note(release, f"watching errors until {until}" if self._errors is not None
                   else f"until {until} an alert posted to /alerts rolls it back; no logs are read")
        try:
            verdict = await watch.run()
        finally:
            if self._watching is watching:
                self._watching = None
        if verdict is None:
            release = await self._set(release, "deployed",
                                      detail=f"watched {self._watch_config.seconds:.0f}s after the deploy: no error "
                                             f"came back, none appeared, the rate did not rise ({watch.polls} "
                                             f"log check(s), {watch.source_failures} failed)")
            await self._say(release, f"PR #{release.number}: {release.detail}")
            return
        await self._roll_back(release, verdict)

    async def _fingerprints(self, release: ReleaseRecord) -> tuple[frozenset[str], frozenset[str]]:
        """The error the release's task fixed, and every error an earlier auto-fix task was made for."""
        fixed: set[str] = set()
        if release.task_id is not None:
            with contextlib.suppress(Exception):
                task = await self._store.get_task(release.task_id)
                if task.fingerprint:
                    fixed.add(task.fingerprint)
        known = await self._store.fingerprints() - fixed
        return frozenset(fixed), frozenset(known)

    async def _verdict_of(self, release: ReleaseRecord) -> Verdict | None:
        """A verdict the watch recorded (audit `watch_verdict`) but a killed supervisor never acted on."""
        for entry in reversed(await self._store.audit_log(release.task_id, event="watch_verdict")):
            if entry.detail.get("release") == release.id:
                fingerprint = entry.detail.get("fingerprint")
                return Verdict(str(entry.detail.get("reason", "")), str(fingerprint) if fingerprint else None)
        return None

    async def _roll_back(self, release: ReleaseRecord, verdict: Verdict, *, recorded: bool = False) -> None:
        """Return to the version before `release`, revert its merge, and tell the owner why. The verdict is
        recorded before anything is done, so a supervisor killed meanwhile finishes the rollback on start."""
        previous, merge, branch = release.previous_sha, release.merge_sha, release.base_branch
        assert merge is not None and branch is not None
        if previous is None:
            detail = f"post-deploy watch: {verdict.reason}; there is no previous version to roll back to"
            release = await self._set(release, "failed", detail=detail)
            await self._say(release, f"PR #{release.number}: {detail}. Look now.")
            return
        if not recorded:
            await self._store.audit(release.task_id, "watch", "watch_verdict",
                                    {"release": release.id, "reason": verdict.reason,
                                     "fingerprint": verdict.fingerprint})
        if release.migrations and release.consent != "rollback":
            await self._ask(release, "rollback", f"post-deploy watch: {verdict.reason}")
            return
        self._note(release, f"post-deploy watch: {verdict.reason}; rolling back to {previous[:12]}")
        try:
            source = await self._source()
            release, left = await self._settle(release, source)
            steps = _Steps(self, release, left)
            result = await steps.run("rollback", DeploySource(source, previous))
            release = steps.release
        except DeployError as exc:
            detail = f"post-deploy watch: {verdict.reason}; the rollback failed: {exc}"
            release = await self._set(release, "failed", detail=detail)
            await self._say(release, f"PR #{release.number}: {detail}. The release is still running: look now.")
            return
        if not result.succeeded:
            detail = f"post-deploy watch: {verdict.reason}; the previous version is not healthy either: {result.detail}"
            release = await self._set(release, "failed", detail=detail)
            await self._say(release, f"PR #{release.number}: {detail}. Look now.")
            return
        revert, reverted = await self._revert(branch, merge)
        release = await self._set(release, "rolled_back", revert_sha=revert,
                                  detail=f"post-deploy watch: {verdict.reason}. Rolled back to "
                                         f"{previous[:12]}, which answers its health check; {reverted}")
        await self._say(release, f"PR #{release.number} rolled back: {release.detail}")

    async def _revert(self, branch: str, merge: str) -> tuple[str | None, str]:
        """Revert the merge on the base branch, so the branch matches what runs; and say how that went. A refusal
        (a protected branch, a change that landed meanwhile) leaves the rollback standing: the owner is told."""
        try:
            revert = await revert_on_base(self._repo, branch, merge, self._forge.git_auth())
        except GitError as exc:
            log.warning("could not revert %s on %s: %s", merge[:12], branch, exc)
            refused = str(exc)[:300]
            try:
                pr = await self._revert_pr(branch, merge)
            except (GitError, ForgeError) as again:
                return None, (f"the merge could NOT be reverted on {branch} ({refused}), nor proposed as a pull "
                              f"request ({str(again)[:200]}): revert {merge[:12]} there yourself, or the next deploy "
                              "ships it again")
            return None, (f"the revert could not be pushed to {branch} ({refused}), so it is pull request "
                          f"#{pr.number}: approve it, or the next deploy ships the rolled-back change again")
        return revert, f"reverted on {branch} as {revert[:12]}"

    async def _revert_pr(self, branch: str, merge: str) -> PullRequest:
        """The revert as a pull request, for a base branch that refuses direct pushes (branch protection)."""
        head = f"agent/revert-{merge[:12]}"
        async with reverted_clone(self._repo, branch, merge, self._forge.git_auth()) as clone:
            await self._forge.push_branch(clone, head)
        return await self._forge.open_pr(
            f"Revert {merge[:12]}: rolled back after its deploy", f"agent-runner rolled back the release of "
            f"{merge[:12]} and could not push its revert to `{branch}` directly. Merging this makes `{branch}` match "
            "what runs; until then the next deploy ships the rolled-back change again.", head, branch)

    async def _end_watch(self, why: str) -> None:
        """The next release starts: a watch with a verdict finishes its rollback; one without one ends here."""
        watching, self._watching = self._watching, None
        if watching is None or watching.job is None:
            return
        if watching.watch is None or watching.watch.verdict is None:
            watching.job.cancel()
        await asyncio.gather(watching.job, return_exceptions=True)
        release = await self.rows.get(watching.release.id)
        if release.state == "watching":
            await self._set(release, "deployed", detail=f"watch ended early: {why}")

    # records and messages -----------------------------------------------------------------------------------

    async def _set(self, release: ReleaseRecord, state: ReleaseState, **fields: object) -> ReleaseRecord:
        """Record the release's step, and move its task to the matching state (both before acting on it).

        The task moves first: whoever sees the release in a state then finds its task there too (a reader
        polling the release, then the task, never sees a release rolled back whose task still says deployed).
        A crash between the two leaves the release row one step behind, and the resumed release sets it again."""
        detail = fields.get("detail", release.detail)
        task_state = TASK_STATE_OF.get(state)
        if release.task_id is not None and task_state is not None:
            task = await self._store.get_task(release.task_id)
            if task.state is not task_state:
                await self._store.transition(TaskId(release.task_id), task_state,
                                             reason=f"release {release.id}: {detail}")
        updated = await self.rows.update(release.id, state, **fields)
        await self._store.audit(release.task_id, "supervisor", "release",
                                {"release": release.id, "number": release.number, "state": state,
                                 "detail": updated.detail})
        return updated

    def _note(self, release: ReleaseRecord, line: str) -> None:
        self._progress(release.task_id, line)

    async def _say(self, release: ReleaseRecord, text: str) -> None:
        self._note(release, text)
        if self._tell is not None:
            try:
                await self._tell(text)
            except Exception:  # the owner's channel being down must not fail the release
                log.warning("could not tell the owner about release %s", release.id, exc_info=True)



@dataclass(frozen=True, slots=True)
class Condemned:
    """The watched release an alert's error condemned, and why."""

    release: ReleaseRecord
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class _Left:
    """A step a previous process left in flight, settled: its fence, and its result if the deployer could tell."""

    fence: Fence
    result: DeployResult | None


class _Steps:
    """Runs a release's deploy steps, each under a fence recorded before it starts; a step whose result is known
    (recorded, or read from the step a previous process left) is not run again."""

    def __init__(self, releases: Releases, release: ReleaseRecord, left: _Left | None) -> None:
        self.release = release
        self._releases = releases
        self._left = left

    async def run(self, action: DeployAction, source: DeploySource) -> DeployResult:
        release, rows, deployer = self.release, self._releases.rows, self._releases._deployer
        if action == "deploy" and release.deployed is not None and release.deployed.version == source.sha:
            return release.deployed
        left = self._left
        if left is not None and left.result is not None and (left.fence.action, left.fence.sha) == \
                (action, source.sha):
            return left.result
        fence = deployer.fence(f"release-{release.id}-{action}-{time.time_ns()}", action, source.sha)
        self.release = release = await rows.update(release.id, release.state, fence=fence)
        try:
            result = await (deployer.deploy(source, fence=fence) if action == "deploy"
                            else deployer.rollback(source, fence=fence))
        except DeployError:
            # The machinery failed (nothing of the step runs): the caller reports it; a restart tries again.
            self.release = await rows.update(release.id, release.state, fence=None)
            raise
        done: dict[str, object] = {"fence": None, **({"deployed": result} if action == "deploy" else {})}
        self.release = await rows.update(release.id, release.state, **done)
        return result


@dataclass(slots=True)
class _Watching:
    release: ReleaseRecord
    job: asyncio.Task[None] | None = None
    watch: Watch | None = None
