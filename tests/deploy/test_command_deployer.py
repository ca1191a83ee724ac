"""CommandDeployer with real shell commands and a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.deploy import DeployEvent, DeploySource, create_deployer, deploy_with_rollback
from runner.deploy.command import CommandDeployer, check_deploy_command, deploy_program
from runner.errors import ConfigError
from tests.deploy.orphans import alive, orphan, overlap_guarded
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


# ----------------------------------------------------------------------------------- runs a killed supervisor left


def lines(log: Path) -> list[list[str]]:
    return [line.split()[:3] for line in log.read_text().splitlines()] if log.exists() else []


async def test_settle_waits_for_a_run_left_by_a_killed_supervisor_and_keeps_its_result(tmp_path: Path,
                                                                                       bot: Bot) -> None:
    log, slow, runs = tmp_path / "deploys.log", tmp_path / "slow", tmp_path / "runs"
    slow.touch()
    command = overlap_guarded(f'while [ -e {slow} ]; do sleep 0.05; done; echo "$AGENT_RUNNER_DEPLOY_SHA" > '
                              f'{bot.state}; echo deployed it', log, tmp_path / "exclusive")
    deployer = CommandDeployer(command, health_url=bot.url, health_timeout=2.0, health_interval=0.05, runs=runs)
    fence = deployer.fence("release-1-deploy-1", "deploy", GOOD)
    orphan(fence, command, runs)
    assert alive(fence)
    async with deployer:
        settling = asyncio.ensure_future(deployer.settle(fence, DeploySource("/srv/bot.git", GOOD)))
        await asyncio.sleep(0.5)
        assert not settling.done()  # it waits: the run goes on
        slow.unlink()
        result = await asyncio.wait_for(settling, 10)
    assert result is not None and result.succeeded, result
    assert "begun by a previous supervisor process ran to its end" in result.detail and "deployed it" in \
        result.logs_tail
    assert lines(log) == [["start", "deploy", GOOD], ["end", "deploy", GOOD]]  # it ran once


async def test_settle_stops_a_run_past_its_timeout_and_a_new_run_never_overlaps_it(tmp_path: Path) -> None:
    log, runs = tmp_path / "deploys.log", tmp_path / "runs"
    command = overlap_guarded("sleep 60", log, tmp_path / "exclusive")
    deployer = CommandDeployer(command, timeout=1.0, runs=runs)
    fence = deployer.fence("release-1-deploy-1", "deploy", GOOD)
    orphan(fence, command, runs)
    # The orphan's timeout counts from its fence; on a loaded machine it can pass before the command has even
    # logged its start, and a kill then would leave nothing to check: wait for that line.
    deadline = time.monotonic() + 30
    while not lines(log):
        assert time.monotonic() < deadline, "the orphaned command never started"
        await asyncio.sleep(0.02)
    async with deployer:
        started = time.monotonic()
        assert await deployer.settle(fence, DeploySource("/srv/bot.git", GOOD)) is None  # stopped: run it again
        assert time.monotonic() - started < 5 and not alive(fence)
    assert lines(log) == [["start", "deploy", GOOD]]  # killed before its end


async def test_a_plain_deploy_waits_for_a_run_a_killed_supervisor_left(tmp_path: Path) -> None:
    """Even without its fence, a new run of the deployer waits for a run still holding its lock (until it ends,
    or stops it at its timeout): two deploy commands never run at once."""
    log, runs, slow = tmp_path / "deploys.log", tmp_path / "runs", tmp_path / "slow"
    slow.touch()
    command = overlap_guarded(f"while [ -e {slow} ]; do sleep 0.05; done", log, tmp_path / "exclusive")
    # The timeout only bounds the test: the orphan ends when `slow` goes. It counts from the orphan's fence, and
    # starting the orphan (a Python child) took more than 1.5 s on two loaded cores, so the deploy stopped it at once.
    deployer = CommandDeployer(command, timeout=15.0, runs=runs)
    orphan(deployer.fence("left", "deploy", OLD), command, runs)
    slow.unlink()  # the next run (a new one) must not wait: only the orphan is slow... were it not gone already
    slow.touch()
    async with deployer:
        deploying = asyncio.ensure_future(deployer.deploy(DeploySource("/srv/bot.git", GOOD)))
        await asyncio.sleep(0.5)
        assert lines(log) == [["start", "deploy", OLD]]
        slow.unlink()
        result = await asyncio.wait_for(deploying, 10)
    assert result.succeeded
    assert lines(log) == [["start", "deploy", OLD], ["end", "deploy", OLD], ["start", "deploy", GOOD],
                          ["end", "deploy", GOOD]]


async def test_settle_reads_a_failed_run_and_knows_nothing_of_a_step_that_never_ran(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    command = "echo no way >&2; exit 3"
    deployer = CommandDeployer(command, runs=runs)
    fence = deployer.fence("release-1-deploy-1", "deploy", GOOD)
    orphan(fence, f"sleep 0.3; {command}", runs)
    async with deployer:
        failed = await deployer.settle(fence, DeploySource("/srv/bot.git", GOOD))
        never = await deployer.settle(deployer.fence("never-ran", "deploy", GOOD), DeploySource("r", GOOD))
    assert failed is not None and not failed.ok and failed.detail.endswith("exited 3")
    assert "no way" in failed.logs_tail
    assert never is None


# ------------------------------------------------------------------------------------------- start-up check


def test_deploy_program_is_the_first_word_the_shell_would_look_up() -> None:
    assert deploy_program("systemctl restart bot") == "systemctl"
    assert deploy_program("BOT_ENV=prod ./deploy.sh --now") == "./deploy.sh"
    assert deploy_program("(docker compose up -d bot)") == "docker"
    assert deploy_program("cd /srv/bot && make deploy") is None  # a builtin: nothing on PATH to look for


def _program(where: Path, name: str, *, executable: bool = True) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    script = where / name
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755 if executable else 0o644)
    return script


def test_check_deploy_command_refuses_a_program_not_on_path_and_takes_one_that_is(tmp_path: Path) -> None:
    path = str(tmp_path / "bin")
    _program(tmp_path / "bin", "restart-bot")
    with pytest.raises(ConfigError) as caught:
        check_deploy_command("restart-bott --now", path=path)
    assert str(caught.value) == ("AGENT_RUNNER_DEPLOY_COMMAND runs 'restart-bott', which is not on PATH; install "
                                 "it, or give its full path")
    check_deploy_command("restart-bot --now", path=path)  # the program found: no error


def test_check_deploy_command_refuses_a_script_that_is_missing_or_not_executable(tmp_path: Path) -> None:
    script = _program(tmp_path, "deploy.sh", executable=False)
    with pytest.raises(ConfigError, match=r"runs .*deploy\.sh, which is not executable \(chmod \+x it\)"):
        check_deploy_command(f"{script} main", path="")
    with pytest.raises(ConfigError, match=r"runs .*nowhere\.sh, which does not exist; give the deploy script's path"):
        check_deploy_command(f"{tmp_path / 'nowhere.sh'}", path="")
    script.chmod(0o755)
    check_deploy_command(f"{script} main", path="")
    check_deploy_command("./deploy.sh main", path="", cwd=tmp_path)


def test_check_deploy_command_refuses_a_command_that_does_not_split() -> None:
    with pytest.raises(ConfigError) as caught:
        check_deploy_command("systemctl restart 'bot", path="")
    assert str(caught.value) == ("AGENT_RUNNER_DEPLOY_COMMAND does not parse as a shell command (No closing "
                                 "quotation): \"systemctl restart 'bot\"")
