"""NoneDeployer: does nothing, says so, never rolls back."""

from __future__ import annotations

from runner.deploy import DeploySource, create_deployer, deploy_with_rollback
from runner.deploy.none import NONE_DETAIL, NoneDeployer

SHA = "1" * 40


async def test_none_deployer_says_it_did_nothing() -> None:
    async with NoneDeployer() as deployer:
        result = await deployer.deploy(DeploySource("/srv/bot.git", SHA))
    assert result.succeeded
    assert result.version == SHA
    assert result.detail == NONE_DETAIL == "no deployer configured"


async def test_none_deployer_outcome_is_deployed_without_rollback() -> None:
    deployer = create_deployer("none")
    outcome = await deploy_with_rollback(deployer, DeploySource("/srv/bot.git", SHA, previous_sha="2" * 40))
    await deployer.aclose()
    assert isinstance(deployer, NoneDeployer)
    assert outcome.status == "deployed"
    assert outcome.rolled_back is None
