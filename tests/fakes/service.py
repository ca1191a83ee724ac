"""A real `Service` (store, scheduler, policy desk) whose tasks are held open instead of run: for the tests of
operations and alert admission, which need the service's bookkeeping but no sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import policy
from policy.model import RateLimits
from runner.config import Settings
from runner.deploy import create_deployer
from runner.model_proxy import ModelProxy
from runner.models import Progress
from runner.sandbox.docker import DockerSandbox
from runner.service.policy_store import PolicyDesk, PolicyStore
from runner.service.runtime import Runtime
from runner.service.scheduler import Scheduler
from runner.service.state import Service
from runner.store import Store, TaskRecord
from runner.supervisor import Deps


@contextlib.asynccontextmanager
async def held_service(tmp_path: Path, *, mode: Literal["pr", "dry-run"] = "pr",
                  autofixes: int = 100, commands: int = 100) -> AsyncIterator[tuple[Service, asyncio.Event]]:
    """A Service whose scheduler holds every task open (running) until the event is set."""
    settings = Settings.from_env({"AGENT_RUNNER_HOME": str(tmp_path), "AGENT_RUNNER_REPO": str(tmp_path / "r.git"),
                                  "AGENT_RUNNER_REPO_ROOTS": "/app"})
    active = dataclasses.replace(policy.load_default(), autofix_mode=mode,
                                 rate_limits=RateLimits(autofixes_per_hour=autofixes,
                                                             commands_per_hour=commands))
    release = asyncio.Event()

    async def hold(task: TaskRecord, progress: Progress) -> None:
        await release.wait()

    async with Store(tmp_path / "state.db") as store, DockerSandbox() as sandbox, \
            ModelProxy("http://127.0.0.1:9", "unused") as proxy:
        deps = Deps(home=tmp_path, store=store, sandbox=sandbox, proxy=proxy, policy=active, image="unused")
        scheduler = Scheduler(store, hold, max_running=4, limits=active.rate_limits)
        policies = PolicyDesk(PolicyStore(tmp_path / "state.db"), policy.default_text())
        try:
            yield Service(settings, Runtime(settings, deps, lambda _l: None), scheduler, create_deployer("none"),
                          policies), \
                release
        finally:
            release.set()
            await scheduler.aclose()
            await policies.store.aclose()
