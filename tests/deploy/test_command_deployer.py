"""CommandDeployer with real shell commands and a real HTTP server on loopback."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.deploy import DeployEvent, DeploySource, create_deployer, deploy_with_rollback
from runner.deploy.command import CommandDeployer
from runner.errors import ConfigError
from tests.fakes.health import health_server

GOOD = "a" * 40
BAD = "b" * 40
OLD = "c" * 40


@dataclass
class Bot:
    """A stand-in for a deployed bot: /health answers for the SHA last written to `state`, 500 for BAD."""

    url: str
    state: Path


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[Bot]:
    state = tmp_path / "deployed-sha"
    with health_server(state, lambda sha: 200 if sha and sha != BAD else (500 if sha else 503)) as url:
        yield Bot(url, state)


def _deployer(bot: Bot, **kwargs: object) -> CommandDeployer:
    command = f'echo "deploying $AGENT_RUNNER_DEPLOY_SHA from $AGENT_RUNNER_DEPLOY_REPO"; ' \
              f'echo "$AGENT_RUNNER_DEPLOY_SHA" > {bot.state}'
    options: dict[str, object] = {"health_url": bot.url, "health_timeout": 2.0, "health_interval": 0.05}
    options.update(kwargs)
    return CommandDeployer(command, **options)  # type: ignore[arg-type]


async def test_command_deployer_deploys_and_probes_http(bot: Bot) -> None:
    async with _deployer(bot) as deployer:
        result = await deployer.deploy(DeploySource("/srv/bot.git", GOOD, previous_sha=OLD))
    assert result.ok and result.healthy, result
    assert result.version == GOOD
    assert f"deploying {GOOD} from /srv/bot.git" in result.logs_tail
    assert f'"version": "{GOOD}"' in result.detail
    assert result.duration_seconds < 2.0


async def test_command_deployer_reports_unhealthy_after_health_timeout(bot: Bot) -> None:
    async with _deployer(bot, health_timeout=0.5) as deployer:
        started = time.monotonic()
        result = await deployer.deploy(DeploySource("/srv/bot.git", BAD))
    assert result.ok and not result.healthy
    assert "500" in result.detail
    assert 0.4 < time.monotonic() - started < 2.0


async def test_command_deployer_rolls_back_to_previous_sha(bot: Bot) -> None:
    events: list[DeployEvent] = []
    async with _deployer(bot, health_timeout=0.5) as deployer:
        await deployer.deploy(DeploySource("/srv/bot.git", GOOD))
        outcome = await deploy_with_rollback(
            deployer, DeploySource("/srv/bot.git", BAD, previous_sha=GOOD), on_event=events.append
        )
    assert outcome.status == "rolled_back"
    assert not outcome.deployed.healthy
    assert outcome.rolled_back is not None and outcome.rolled_back.succeeded
    assert outcome.rolled_back.version == GOOD
    assert bot.state.read_text().strip() == GOOD
    assert [e.kind for e in events] == ["deploying", "unhealthy", "rolling_back", "rolled_back"]


async def test_command_deployer_failing_command_is_not_ok(bot: Bot) -> None:
    async with CommandDeployer("echo broken >&2; exit 3", health_url=bot.url) as deployer:
        result = await deployer.deploy(DeploySource("/srv/bot.git", GOOD))
    assert not result.ok and not result.healthy
    assert result.detail == "deploy command exited 3"
    assert "broken" in result.logs_tail


async def test_command_deployer_kills_command_at_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    async with CommandDeployer(f"sleep 30; touch {marker}", timeout=0.3) as deployer:
        started = time.monotonic()
        result = await deployer.deploy(DeploySource("/srv/bot.git", GOOD))
    assert not result.ok
    assert "timed out after 0.3s" in result.detail
    assert time.monotonic() - started < 3.0
    assert not marker.exists()


async def test_command_deployer_does_not_wait_for_background_children(tmp_path: Path) -> None:
    # A command that launches a daemon without redirecting its output leaves our pipe open.
    async with CommandDeployer("sleep 3 & echo started") as deployer:
        started = time.monotonic()
        result = await deployer.deploy(DeploySource("/srv/bot.git", GOOD))
    assert result.succeeded
    assert "started" in result.logs_tail
    assert time.monotonic() - started < 2.5


async def test_command_deployer_health_command_decides(tmp_path: Path) -> None:
    state = tmp_path / "sha"
    deployer = CommandDeployer(
        f'echo "$AGENT_RUNNER_DEPLOY_SHA" > {state}',
        health_command=f'test "$(cat {state})" != {BAD}',
        health_timeout=0.5,
        health_interval=0.05,
    )
    async with deployer:
        good = await deployer.deploy(DeploySource("/srv/bot.git", GOOD))
        bad = await deployer.deploy(DeploySource("/srv/bot.git", BAD))
    assert good.succeeded
    assert bad.ok and not bad.healthy
    assert "health command exited 1" in bad.detail


async def test_command_deployer_keeps_supervisor_secrets_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret_value")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret-value")
    async with CommandDeployer("env", env={"BOT_ENV": "prod"}) as deployer:
        result = await deployer.rollback(DeploySource("/srv/bot.git", OLD))
    assert result.succeeded
    assert "secret_value" not in result.logs_tail and "secret-value" not in result.logs_tail
    assert "BOT_ENV=prod" in result.logs_tail
    assert f"AGENT_RUNNER_DEPLOY_SHA={OLD}" in result.logs_tail
    assert "AGENT_RUNNER_DEPLOY_ACTION=rollback" in result.logs_tail


async def test_command_deployer_runs_python_as_a_real_subprocess(tmp_path: Path) -> None:
    command = f'{sys.executable} -c "import os; print(os.environ[\'AGENT_RUNNER_DEPLOY_REPO\'])"'
    async with CommandDeployer(command) as deployer:
        result = await deployer.deploy(DeploySource(str(tmp_path), GOOD))
    assert result.logs_tail.strip() == str(tmp_path)


def test_create_deployer_builds_command_and_rejects_bad_options() -> None:
    deployer = create_deployer("command", deploy_command="true", health_url="http://127.0.0.1:1/health")
    assert isinstance(deployer, CommandDeployer)
    with pytest.raises(ConfigError, match="bad options for the command deployer"):
        create_deployer("command", deploy_command="true", nonsense=1)
    with pytest.raises(ConfigError, match="unknown deployer 'kubernetes'"):
        create_deployer("kubernetes")
