"""The Deployer protocol, its values, and the deploy-then-roll-back-if-unhealthy step the supervisor runs.

    RunnerError
    └── DeployError         the deploy machinery itself failed (engine down, unknown SHA, bad configuration)

An unhealthy release is not an error: it is a `DeployResult` with `healthy=False`, which
`deploy_with_rollback` answers by redeploying the previous version.

Each step can run under a `Fence`: what carries it out, recorded by the caller before the step starts. A
supervisor killed mid-step may leave the step running (the command deployer's process group outlives it), so the
next one settles the fence first (`Deployer.settle`: wait for it, or stop it once its timeout has passed) and
keeps its result when the deployer can tell it: a deploy runs once, and never alongside another.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from runner.errors import RunnerError
from runner.resource import AsyncResource

# Enough of a log to see why a release failed, small enough to put in a Telegram message.
LOGS_TAIL_CHARS = 4000
DEFAULT_DEPLOY_TIMEOUT = 600.0
DEFAULT_HEALTH_TIMEOUT = 60.0
DEFAULT_HEALTH_INTERVAL = 0.5


class DeployError(RunnerError):
    """The deployer could not do its work at all (as opposed to deploying a release that turned out unhealthy)."""


@dataclass(frozen=True, slots=True)
class DeploySource:
    """What to deploy: commit `sha` of the repository at `repo` (a bare repo's path, or a URL).

    `previous_sha` is what ran before, the version a rollback returns to (None on a first deploy).
    """

    repo: str
    sha: str
    previous_sha: str | None = None

    def previous(self) -> DeploySource | None:
        """The source a rollback deploys, or None when there is nothing to return to."""
        if self.previous_sha is None:
            return None
        return DeploySource(repo=self.repo, sha=self.previous_sha, previous_sha=None)


DeployAction = Literal["deploy", "rollback"]


@dataclass(frozen=True, slots=True)
class Fence:
    """What carries out one deploy step: `action` of `sha`, begun at `started_at` (wall clock; its timeout counts
    from then), named `key` by the caller (unique per step).

    `place` is where the deployer keeps the step's traces: the command deployer's directory holding the lock its
    process group holds while it runs, its pid, exit status and output. None when nothing of the step can outlive
    the supervisor (a docker deploy is API calls; the service's container then says what runs).
    """

    key: str
    action: DeployAction
    sha: str
    started_at: float
    place: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "action": self.action, "sha": self.sha, "started_at": self.started_at,
                "place": self.place}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fence:
        action: DeployAction = "rollback" if data.get("action") == "rollback" else "deploy"
        place = data.get("place")
        return cls(str(data["key"]), action, str(data["sha"]), float(data["started_at"]),
                   str(place) if place is not None else None)


@dataclass(frozen=True, slots=True)
class DeployResult:
    """How one deploy or rollback went. `ok`: the release step ran; `healthy`: the service then passed its check;
    `ran` False: nothing was deployed or checked at all (the `none` deployer), so ok and healthy only mean that
    nothing failed, and a release must not say it deployed anything."""

    ok: bool
    version: str
    healthy: bool
    detail: str
    duration_seconds: float
    logs_tail: str = ""
    ran: bool = True

    @classmethod
    def failed(cls, version: str, detail: str, started: float, logs: str = "") -> DeployResult:
        """The step did not run to its end; timed from `started` (time.monotonic()), its logs' tail kept."""
        return cls(ok=False, version=version, healthy=False, detail=detail,
                   duration_seconds=time.monotonic() - started, logs_tail=tail(logs))

    @classmethod
    def done(cls, version: str, healthy: bool, detail: str, started: float, logs: str = "") -> DeployResult:
        """The step ran, and the service then was `healthy` or not; timed and tailed as `failed` is."""
        return cls(ok=True, version=version, healthy=healthy, detail=detail,
                   duration_seconds=time.monotonic() - started, logs_tail=tail(logs))

    @property
    def succeeded(self) -> bool:
        return self.ok and self.healthy

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "version": self.version, "healthy": self.healthy, "detail": self.detail,
                "duration_seconds": self.duration_seconds, "logs_tail": self.logs_tail, "ran": self.ran}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeployResult:
        return cls(bool(data["ok"]), str(data["version"]), bool(data["healthy"]), str(data["detail"]),
                   float(data["duration_seconds"]), str(data.get("logs_tail", "")), bool(data.get("ran", True)))


DeployEventKind = Literal["deploying", "deployed", "unhealthy", "rolling_back", "rolled_back", "rollback_failed"]


@dataclass(frozen=True, slots=True)
class DeployEvent:
    kind: DeployEventKind
    sha: str
    detail: str = ""


OutcomeStatus = Literal["deployed", "rolled_back", "failed"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What `deploy_with_rollback` did: the deploy, and the rollback if one was needed.

    `status` maps onto the task states: `deployed`, `rolled_back` (the previous version answers again), or
    `failed` (unhealthy with nothing to return to, or the rollback was unhealthy too). Reverting the merge
    on the base branch is the caller's job; this only says what is running.
    """

    deployed: DeployResult
    rolled_back: DeployResult | None = None

    @property
    def status(self) -> OutcomeStatus:
        if self.deployed.succeeded:
            return "deployed"
        if self.rolled_back is not None and self.rolled_back.succeeded:
            return "rolled_back"
        return "failed"


EventSink = Callable[[DeployEvent], Awaitable[None] | None]


class Deployer(AsyncResource, Protocol):
    """Puts a commit of the bot's repository into service and checks that it is healthy.

    Implementations are async context managers; `aclose()` releases what they hold (a Docker client),
    never the deployed service. Errors of the machinery raise `DeployError`; an unhealthy release is
    reported in the result.

        async with CommandDeployer("systemctl restart bot", health_url="http://127.0.0.1:8000/health") as d:
            result = await d.deploy(DeploySource("/srv/bot.git", sha, previous_sha=old))
            if not result.healthy:
                await d.rollback(DeploySource("/srv/bot.git", old))
    """

    async def deploy(self, checkout: DeploySource, *, fence: Fence | None = None) -> DeployResult:
        """Release `checkout.sha` and wait for it to be healthy within the deployer's timeout.

        Returns `ok=False` when the release step itself failed (command exit, image build), `healthy=False`
        when it ran but the health check did not pass in time; `logs_tail` holds the end of what it printed.
        With `fence` (from `self.fence`, recorded by the caller first) the step runs under it.
        """
        ...

    async def rollback(self, previous: DeploySource, *, fence: Fence | None = None) -> DeployResult:
        """Return to `previous.sha` (a version deployed before) and wait for it to be healthy again."""
        ...

    def fence(self, key: str, action: DeployAction, sha: str) -> Fence:
        """The fence the step `key` will run under, to record before passing it to `deploy` or `rollback`."""
        ...

    async def settle(self, fence: Fence, source: DeploySource) -> DeployResult | None:
        """The step `fence` names, begun by a supervisor process that is gone: wait until nothing of it runs
        (stopping it once the deployer's timeout has passed since `fence.started_at`), then its result, the
        service's health checked now, when the deployer can tell how it ended; None when it cannot, and the step
        must run again. `source` is where `fence.sha` is read from.

            result = await deployer.settle(recorded_fence, DeploySource(repo, recorded_fence.sha))
            if result is None:
                result = await deployer.deploy(DeploySource(repo, recorded_fence.sha), fence=new_fence)
        """
        ...

    async def aclose(self) -> None:
        """Release the deployer's own resources; the deployed service keeps running."""
        ...


async def _emit(on_event: EventSink | None, event: DeployEvent) -> None:
    if on_event is None:
        return
    result = on_event(event)
    if inspect.isawaitable(result):
        await result


def failed_result(source: DeploySource, exc: DeployError, started: float) -> DeployResult:
    """A step whose machinery failed, as a result (`started`: time.monotonic() when it began)."""
    return DeployResult.failed(source.sha, str(exc), started)


Step = Callable[[DeployAction, DeploySource], Awaitable[DeployResult]]
"""Runs one step: the release's fenced runner, or by default `deployer.deploy` / `deployer.rollback`."""


async def deploy_with_rollback(
    deployer: Deployer, source: DeploySource, *, on_event: EventSink | None = None, step: Step | None = None
) -> Outcome:
    """Deploy `source`; if it is not healthy, roll back to `source.previous_sha` and report both.

    A `DeployError` from the deploy becomes a failed result and still triggers the rollback, because the
    service may be half-replaced. A `DeployError` from the rollback becomes a failed rollback result:
    the caller gets one `Outcome` either way. `on_event` (sync or async) hears each step. `step` runs each
    step instead of calling the deployer directly (to fence it, or to reuse a result recorded before a restart).

        outcome = await deploy_with_rollback(deployer, DeploySource(repo, merge_sha, previous_sha=base_sha))
        if outcome.status == "rolled_back":
            await forge.revert(...)  # the supervisor's job
    """

    async def direct(action: DeployAction, target: DeploySource) -> DeployResult:
        return await (deployer.deploy(target) if action == "deploy" else deployer.rollback(target))

    async def attempt(action: DeployAction, target: DeploySource) -> DeployResult:
        started = time.monotonic()
        try:
            return await (step or direct)(action, target)
        except DeployError as exc:
            return failed_result(target, exc, started)

    await _emit(on_event, DeployEvent("deploying", source.sha))
    deployed = await attempt("deploy", source)
    if deployed.succeeded:
        await _emit(on_event, DeployEvent("deployed", source.sha, deployed.detail))
        return Outcome(deployed)
    await _emit(on_event, DeployEvent("unhealthy", source.sha, deployed.detail))
    previous = source.previous()
    if previous is None:
        return Outcome(deployed)
    await _emit(on_event, DeployEvent("rolling_back", previous.sha))
    rolled_back = await attempt("rollback", previous)
    kind: DeployEventKind = "rolled_back" if rolled_back.succeeded else "rollback_failed"
    await _emit(on_event, DeployEvent(kind, previous.sha, rolled_back.detail))
    return Outcome(deployed, rolled_back)


def tail(text: str, limit: int = LOGS_TAIL_CHARS) -> str:
    """The last `limit` characters of `text`."""
    return text[-limit:]
