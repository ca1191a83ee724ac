"""The Deployer protocol, its values, and the deploy-then-roll-back-if-unhealthy step the supervisor runs.

    RunnerError
    └── DeployError         the deploy machinery itself failed (engine down, unknown SHA, bad configuration)

An unhealthy release is not an error: it is a `DeployResult` with `healthy=False`, which
`deploy_with_rollback` answers by redeploying the previous version.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, Self

from runner.errors import RunnerError

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


@dataclass(frozen=True, slots=True)
class DeployResult:
    """How one deploy or rollback went. `ok`: the release step ran; `healthy`: the service then passed its check."""

    ok: bool
    version: str
    healthy: bool
    detail: str
    duration_seconds: float
    logs_tail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.ok and self.healthy


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


class Deployer(Protocol):
    """Puts a commit of the bot's repository into service and checks that it is healthy.

    Implementations are async context managers; `aclose()` releases what they hold (a Docker client),
    never the deployed service. Errors of the machinery raise `DeployError`; an unhealthy release is
    reported in the result.

        async with CommandDeployer("systemctl restart bot", health_url="http://127.0.0.1:8000/health") as d:
            result = await d.deploy(DeploySource("/srv/bot.git", sha, previous_sha=old))
            if not result.healthy:
                await d.rollback(DeploySource("/srv/bot.git", old))
    """

    async def deploy(self, checkout: DeploySource) -> DeployResult:
        """Release `checkout.sha` and wait for it to be healthy within the deployer's timeout.

        Returns `ok=False` when the release step itself failed (command exit, image build), `healthy=False`
        when it ran but the health check did not pass in time; `logs_tail` holds the end of what it printed.
        """
        ...

    async def rollback(self, previous: DeploySource) -> DeployResult:
        """Return to `previous.sha` (a version deployed before) and wait for it to be healthy again."""
        ...

    async def aclose(self) -> None:
        """Release the deployer's own resources; the deployed service keeps running."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


async def _emit(on_event: EventSink | None, event: DeployEvent) -> None:
    if on_event is None:
        return
    result = on_event(event)
    if inspect.isawaitable(result):
        await result


def _failed(source: DeploySource, exc: DeployError, started: float) -> DeployResult:
    return DeployResult(
        ok=False, version=source.sha, healthy=False, detail=str(exc), duration_seconds=time.monotonic() - started
    )


async def deploy_with_rollback(
    deployer: Deployer, source: DeploySource, *, on_event: EventSink | None = None
) -> Outcome:
    """Deploy `source`; if it is not healthy, roll back to `source.previous_sha` and report both.

    A `DeployError` from the deploy becomes a failed result and still triggers the rollback, because the
    service may be half-replaced. A `DeployError` from the rollback becomes a failed rollback result:
    the caller gets one `Outcome` either way. `on_event` (sync or async) hears each step.

        outcome = await deploy_with_rollback(deployer, DeploySource(repo, merge_sha, previous_sha=base_sha))
        if outcome.status == "rolled_back":
            await forge.revert(...)  # the supervisor's job
    """
    await _emit(on_event, DeployEvent("deploying", source.sha))
    started = time.monotonic()
    try:
        deployed = await deployer.deploy(source)
    except DeployError as exc:
        deployed = _failed(source, exc, started)
    if deployed.succeeded:
        await _emit(on_event, DeployEvent("deployed", source.sha, deployed.detail))
        return Outcome(deployed)
    await _emit(on_event, DeployEvent("unhealthy", source.sha, deployed.detail))
    previous = source.previous()
    if previous is None:
        return Outcome(deployed)
    await _emit(on_event, DeployEvent("rolling_back", previous.sha))
    started = time.monotonic()
    try:
        rolled_back = await deployer.rollback(previous)
    except DeployError as exc:
        rolled_back = _failed(previous, exc, started)
    kind: DeployEventKind = "rolled_back" if rolled_back.succeeded else "rollback_failed"
    await _emit(on_event, DeployEvent(kind, previous.sha, rolled_back.detail))
    return Outcome(deployed, rolled_back)


def tail(text: str, limit: int = LOGS_TAIL_CHARS) -> str:
    """The last `limit` characters of `text`."""
    return text[-limit:]
