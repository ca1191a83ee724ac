"""Build the backends a task needs from Settings, once, and close them in reverse order."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import policy
from runner import tasklock
from runner.config import Settings
from runner.errors import ConfigError
from runner.forge import create_forge
from runner.model_proxy import ModelProxy
from runner.models import RunResult, TaskState
from runner.sandbox.base import Sandbox
from runner.sandbox.docker import DockerSandbox
from runner.store import Store, TaskRecord
from runner.supervisor import Deps, run_task, task_lock

SCRIPTED_KEY = "scripted-model-key"  # what the scripted upstream is given; it checks nothing


@dataclass(slots=True)
class Runtime:
    settings: Settings
    deps: Deps
    say: Callable[[str], None]

    @property
    def store(self) -> Store:
        return self.deps.store

    async def run(self, task: TaskRecord) -> RunResult:
        return await run_task(self.deps, task, progress=self.say)


def load_policy(settings: Settings, explicit: Path | None) -> policy.Policy:
    """--policy, else AGENT_RUNNER_POLICY, else ./policy.yaml, else the built-in default."""
    for candidate in (explicit, settings.policy_path, Path("policy.yaml")):
        if candidate is not None and (candidate == explicit or candidate == settings.policy_path or candidate.exists()):
            return policy.load_file(candidate)
    return policy.load_default()


@contextlib.asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    repo: str,
    say: Callable[[str], None],
    policy_path: Path | None = None,
    scenario: Path | None = None,
) -> AsyncIterator[Runtime]:
    async with contextlib.AsyncExitStack() as stack:
        active = load_policy(settings, policy_path)
        say(f"policy {active.version} (sha256 {active.sha256[:12]})")
        upstream, key = settings.anthropic_base_url, settings.anthropic_api_key
        if scenario is not None or key is None:
            from runner.scripted_model import Scenario, serve_scripted_model

            if scenario is None:
                raise ConfigError("no ANTHROPIC_API_KEY and no scripted scenario")
            server = await stack.enter_async_context(serve_scripted_model(Scenario.from_file(scenario)))
            upstream, api_key = server.base_url, SCRIPTED_KEY
            say(f"no real model: a scripted model plays the agent ({scenario.name}, on {upstream})")
        else:
            api_key = key.reveal()
        store = await stack.enter_async_context(Store(settings.home / "state.db"))
        sandbox = await stack.enter_async_context(DockerSandbox(runtime=settings.sandbox_runtime))
        for notice in sandbox.notices:
            say(notice)
        proxy = await stack.enter_async_context(ModelProxy(upstream, api_key))
        forge = await stack.enter_async_context(create_forge(settings, repo=_local_repo(repo)))
        reaped = await reap_orphans(store, sandbox, settings.home)
        if reaped:
            say(f"reaped {len(reaped)} container(s) of tasks no longer running: {', '.join(reaped)}")
        deps = Deps(home=settings.home, store=store, sandbox=sandbox, proxy=proxy, policy=active,
                    image=settings.sandbox_image, forge=forge)
        yield Runtime(settings, deps, say)


async def reap_orphans(store: Store, sandbox: Sandbox, home: Path) -> list[str]:
    """Remove containers whose owner is gone and mark their interrupted tasks failed.

    Ownership is the task's flock (runner.tasklock): a live supervisor, this one or another sharing the
    engine, holds it; a killed one cannot. Containers of other homes carry their own lock path.
    """
    live = {task_id for task_id, lock in (await sandbox.running()).items() if lock and tasklock.is_held(Path(lock))}
    stranded = await store.list_tasks(states=[s for s in TaskState if s.sandbox_phase], limit=10_000)
    for task in stranded:
        if not tasklock.is_held(task_lock(home, task.id)):
            await store.transition(task.id, TaskState.FAILED,
                                   reason=f"the supervisor stopped while the task was {task.state.value}; "
                                          "its sandbox was removed")
    return await sandbox.reap(keep=live)



def _local_repo(repo: str) -> str | None:
    """The local forge works on a repository on disk; a URL needs GitHub settings."""
    return repo if Path(repo).exists() else None
