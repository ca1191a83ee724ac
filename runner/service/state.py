"""`Service`: the backends a running supervisor holds, built by the app's lifespan and shared by every front end.

It imports no front end (HTTP routes, Telegram), so the import graph runs one way: front ends → operations →
this → pipeline and backends.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.alerts.loki import LokiClient
from runner.config import Settings
from runner.deploy import Deployer
from runner.forge.base import Forge
from runner.service.followups import FollowUps
from runner.service.policy_store import PolicyDesk
from runner.service.releases import Releases
from runner.service.runtime import Runtime
from runner.service.scheduler import Scheduler
from runner.store import Store


@dataclass(slots=True)
class Service:
    """What front ends reach (HTTP through `request.app.state.service`) while the app runs."""

    settings: Settings
    runtime: Runtime
    scheduler: Scheduler
    deployer: Deployer
    policies: PolicyDesk
    releases: Releases | None = None
    """Approved pull requests on their way through merge, deploy and watch (None without a forge)."""
    loki: LokiClient | None = None
    """One client (one connection pool) for every alert's log query and the post-deploy watch."""
    followups: FollowUps | None = None
    """The owner's follow-ups on pull requests (runner.service.followups; None until the lifespan opens it)."""

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def forge(self) -> Forge | None:
        return self.runtime.deps.forge
