"""NoneDeployer: the default, for setups where something else ships the bot after a merge."""

from __future__ import annotations

from runner.deploy.base import DeployResult, DeploySource

NONE_DETAIL = "no deployer configured"


class NoneDeployer:
    """Deploys nothing and says so; every result is ok and healthy, so nothing is ever rolled back."""

    async def __aenter__(self) -> NoneDeployer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def deploy(self, checkout: DeploySource) -> DeployResult:
        return DeployResult(ok=True, version=checkout.sha, healthy=True, detail=NONE_DETAIL, duration_seconds=0.0)

    async def rollback(self, previous: DeploySource) -> DeployResult:
        return DeployResult(ok=True, version=previous.sha, healthy=True, detail=NONE_DETAIL, duration_seconds=0.0)

    async def aclose(self) -> None:
        return None
