"""NoneDeployer: the default, for setups where something else ships the bot after a merge."""

from __future__ import annotations

import time

from runner.deploy.base import DeployAction, DeployResult, DeploySource, Fence
from runner.resource import AsyncResource

NONE_DETAIL = "no deployer configured"


class NoneDeployer(AsyncResource):
    """Deploys nothing and says so; every result is ok and healthy, so nothing is ever rolled back."""

    async def deploy(self, checkout: DeploySource, *, fence: Fence | None = None) -> DeployResult:
        return DeployResult(ok=True, version=checkout.sha, healthy=True, detail=NONE_DETAIL, duration_seconds=0.0,
                            ran=False)

    async def rollback(self, previous: DeploySource, *, fence: Fence | None = None) -> DeployResult:
        return DeployResult(ok=True, version=previous.sha, healthy=True, detail=NONE_DETAIL, duration_seconds=0.0,
                            ran=False)

    def fence(self, key: str, action: DeployAction, sha: str) -> Fence:
        return Fence(key, action, sha, time.time())

    async def settle(self, fence: Fence, source: DeploySource) -> DeployResult | None:
        # Nothing ran, so nothing can still run: the step's result is what it always is.
        return await self.deploy(source)

    async def aclose(self) -> None:
        return None
