"""deploy_with_rollback: when it rolls back, what it reports, and how deployer errors become results."""

from __future__ import annotations

import time
from pathlib import Path

from runner.deploy import (
    DeployAction,
    DeployError,
    DeployEvent,
    DeployResult,
    DeploySource,
    Fence,
    Outcome,
    deploy_with_rollback,
)
from runner.deploy.command import CommandDeployer

OLD = "0" * 40
NEW = "1" * 40


class BrokenEngineDeployer:
    """A deployer whose machinery fails outright on deploy, and optionally on rollback too."""

    def __init__(self, *, rollback_fails: bool = False) -> None:
        self.rollback_fails = rollback_fails
        self.rolled_back_to: list[str] = []

    async def __aenter__(self) -> BrokenEngineDeployer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def deploy(self, checkout: DeploySource, *, fence: Fence | None = None) -> DeployResult:
        raise DeployError("no Docker engine answers")

    def fence(self, key: str, action: DeployAction, sha: str) -> Fence:
        return Fence(key, action, sha, time.time())

    async def settle(self, fence: Fence, source: DeploySource) -> DeployResult | None:
        return None

    async def rollback(self, previous: DeploySource, *, fence: Fence | None = None) -> DeployResult:
        self.rolled_back_to.append(previous.sha)
        if self.rollback_fails:
            raise DeployError("still no Docker engine")
        return DeployResult(ok=True, version=previous.sha, healthy=True, detail="back", duration_seconds=0.1)

    async def aclose(self) -> None:
        return None


async def test_deploy_with_rollback_without_previous_sha_fails_without_rollback(tmp_path: Path) -> None:
    async with CommandDeployer("true", health_command="false", health_timeout=0.2, health_interval=0.05) as deployer:
        outcome = await deploy_with_rollback(deployer, DeploySource(str(tmp_path), NEW))
    assert outcome.status == "failed"
    assert outcome.rolled_back is None
    assert not outcome.deployed.healthy


async def test_deploy_with_rollback_turns_deploy_error_into_result_and_rolls_back() -> None:
    deployer = BrokenEngineDeployer()
    events: list[DeployEvent] = []

    async def record(event: DeployEvent) -> None:  # async sinks are awaited
        events.append(event)

    outcome = await deploy_with_rollback(deployer, DeploySource("/srv/bot.git", NEW, previous_sha=OLD), on_event=record)
    assert outcome.status == "rolled_back"
    assert not outcome.deployed.ok
    assert outcome.deployed.detail == "no Docker engine answers"
    assert deployer.rolled_back_to == [OLD]
    assert [(e.kind, e.sha) for e in events] == [
        ("deploying", NEW), ("unhealthy", NEW), ("rolling_back", OLD), ("rolled_back", OLD)
    ]


async def test_deploy_with_rollback_reports_failed_rollback() -> None:
    events: list[DeployEvent] = []
    outcome = await deploy_with_rollback(
        BrokenEngineDeployer(rollback_fails=True),
        DeploySource("/srv/bot.git", NEW, previous_sha=OLD),
        on_event=events.append,
    )
    assert outcome.status == "failed"
    assert outcome.rolled_back is not None and outcome.rolled_back.detail == "still no Docker engine"
    assert events[-1].kind == "rollback_failed"


def test_outcome_status_prefers_deployed() -> None:
    good = DeployResult(ok=True, version=NEW, healthy=True, detail="", duration_seconds=1.0)
    bad = DeployResult(ok=True, version=NEW, healthy=False, detail="", duration_seconds=1.0)
    assert Outcome(good).status == "deployed"
    assert Outcome(bad, good).status == "rolled_back"
    assert Outcome(bad, bad).status == "failed"


def test_deploy_source_previous_drops_its_own_previous() -> None:
    assert DeploySource("r", NEW, previous_sha=OLD).previous() == DeploySource("r", OLD)
    assert DeploySource("r", NEW).previous() is None
