"""CommandDeployer: an operator's own shell command ships the bot; we wait for it to be healthy."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from runner.deploy.base import (
    DEFAULT_DEPLOY_TIMEOUT,
    DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_TIMEOUT,
    LOGS_TAIL_CHARS,
    DeployError,
    DeployResult,
    DeploySource,
    tail,
)
from runner.deploy.health import Verdict, health_client, probe_http, wait_healthy

ENV_SHA = "AGENT_RUNNER_DEPLOY_SHA"
ENV_REPO = "AGENT_RUNNER_DEPLOY_REPO"
ENV_ACTION = "AGENT_RUNNER_DEPLOY_ACTION"
# The command is the operator's, but it gets none of the supervisor's secrets (model key, forge token):
# only these are inherited, plus what the operator configures in `env`.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")


@dataclass(frozen=True, slots=True)
class _Run:
    returncode: int | None  # None: killed at the timeout
    output: str


class CommandDeployer:
    """Runs `deploy_command` through /bin/sh with the SHA and repository in its environment, then waits healthy.

    Health is an HTTP probe of `health_url` (2xx), else `health_command` exiting 0, else the deploy command's
    own exit status. A rollback runs the same command for the previous SHA with `AGENT_RUNNER_DEPLOY_ACTION=rollback`.
    The command runs in its own process group, so a timeout kills everything it started.
    """

    def __init__(
        self,
        deploy_command: str,
        health_url: str | None = None,
        health_command: str | None = None,
        timeout: float = DEFAULT_DEPLOY_TIMEOUT,
        *,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        if not deploy_command.strip():
            raise DeployError("the command deployer needs a deploy command")
        self.deploy_command = deploy_command
        self.health_url = health_url
        self.health_command = health_command
        self.timeout = timeout
        self.health_timeout = health_timeout
        self.health_interval = health_interval
        self._env = dict(env or {})
        self._cwd = cwd
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> CommandDeployer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def deploy(self, checkout: DeploySource) -> DeployResult:
        return await self._release(checkout, "deploy")

    async def rollback(self, previous: DeploySource) -> DeployResult:
        return await self._release(previous, "rollback")

    async def _release(self, source: DeploySource, action: str) -> DeployResult:
        started = time.monotonic()
        env = {key: os.environ[key] for key in INHERITED if key in os.environ}
        env.update(self._env)
        env.update({ENV_SHA: source.sha, ENV_REPO: source.repo, ENV_ACTION: action})
        run = await self._shell(self.deploy_command, env, self.timeout)
        if run.returncode != 0:
            why = f"timed out after {self.timeout:g}s" if run.returncode is None else f"exited {run.returncode}"
            return DeployResult(
                ok=False,
                version=source.sha,
                healthy=False,
                detail=f"{action} command {why}",
                duration_seconds=time.monotonic() - started,
                logs_tail=tail(run.output),
            )
        command_seconds = time.monotonic() - started
        if self.health_url is None and self.health_command is None:
            health_detail, healthy = "no health check configured; the command's exit 0 stands for it", True
        else:
            health = await wait_healthy(
                lambda: self._check(env), timeout=self.health_timeout, interval=self.health_interval
            )
            healthy = health.healthy
            health_detail = f"{'healthy' if healthy else 'unhealthy'} after {health.seconds:.2f}s: {health.detail}"
        return DeployResult(
            ok=True,
            version=source.sha,
            healthy=healthy,
            detail=f"{action} command ran in {command_seconds:.2f}s; {health_detail}",
            duration_seconds=time.monotonic() - started,
            logs_tail=tail(run.output),
        )

    async def _check(self, env: Mapping[str, str]) -> tuple[Verdict, str]:
        if self.health_url is not None:
            if self._http is None:
                self._http = health_client()
            return await probe_http(self._http, self.health_url)
        assert self.health_command is not None
        # Each probe gets at most one polling interval's worth of patience beyond a floor of a few seconds.
        run = await self._shell(self.health_command, env, max(5.0, self.health_interval))
        if run.returncode == 0:
            return "healthy", f"health command exited 0: {run.output.strip()[-200:]}"
        return "waiting", f"health command exited {run.returncode}: {run.output.strip()[-200:]}"

    async def _shell(self, command: str, env: Mapping[str, str], timeout: float) -> _Run:
        # Output goes to a file, not a pipe: a server the command starts in the background without
        # redirecting would hold a pipe open, and asyncio waits for every pipe before it reports the exit.
        with tempfile.TemporaryFile() as output:
            try:
                proc = await asyncio.create_subprocess_shell(
                    command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    env=dict(env),
                    cwd=self._cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise DeployError(f"could not start the deploy command: {exc}") from exc
            returncode: int | None
            try:
                async with asyncio.timeout(timeout):
                    returncode = await proc.wait()
            except TimeoutError:
                _kill_group(proc)
                await proc.wait()
                returncode = None
            except BaseException:
                _kill_group(proc)
                await proc.wait()
                raise
            return _Run(returncode, _read_tail(output))


def _read_tail(file: IO[bytes]) -> str:
    size = file.seek(0, os.SEEK_END)
    # Bytes, not characters, but generous enough that the character tail is always inside.
    file.seek(max(0, size - 4 * LOGS_TAIL_CHARS))
    return file.read().decode("utf-8", "replace")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
