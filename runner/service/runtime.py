"""Build the backends a task needs from Settings, once, and close them in reverse order; and keep house."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import policy
from runner import tasklock
from runner.config import Settings, check_local_repo, is_git_url
from runner.deploy import check_deployer
from runner.errors import ConfigError, ForgeError, StateFull
from runner.forge import create_forge, default_repo
from runner.model_gateway import Refusal
from runner.model_proxy import ModelProxy
from runner.models import RunResult, TaskState
from runner.sandbox.base import Sandbox
from runner.sandbox.docker import DockerSandbox
from runner.sqlite import check_file
from runner.store import Store, TaskRecord
from runner.supervisor import Deps, run_task, task_lock

if TYPE_CHECKING:
    import httpx

SCRIPTED_KEY = "scripted-model-key"  # what the scripted upstream is given; it checks nothing
# What `serve` plays with no model key: the demo's first task, so the README's curl fix works with nothing set.
DEFAULT_SCENARIO = Path(str(resources.files("runner") / "data" / "scenarios" / "fix-balance.yaml"))
# A task clones the repository under AGENT_RUNNER_HOME and records every step in its state file: below this,
# it would fail part-way with its work lost, so nothing starts.
MIN_FREE_BYTES = 32 * 2**20
DEFAULT_REAP_INTERVAL = 30.0
DEFAULT_REAP_RETRY = 5.0
FORGE_CHECK_TIMEOUT = 15.0  # one GET at start; a forge slower than this would time out every task's step too

log = logging.getLogger("agent_runner.runtime")


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


def check_room(home: Path, *, minimum: int = MIN_FREE_BYTES) -> None:
    """StateFull, one line, when the disk holding `home` has less than `minimum` bytes free."""
    probe = home
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stat = os.statvfs(probe)
    free = stat.f_bavail * stat.f_frsize
    if free < minimum:
        raise StateFull(f"the disk holding AGENT_RUNNER_HOME ({home}) is full: {free / 2**20:.1f} MiB free, and a task "
                        f"needs at least {minimum / 2**20:.0f} MiB for its clone and its state; free space there and "
                        "start again", str(home / "state.db"))


def preflight(settings: Settings, *, policy_path: Path | None = None) -> Settings:
    """What `serve` checks before it listens, so that a bad start is one line naming the fix: room on the disk,
    a state file that is whole (StateCorrupt names it), the forge (check_forge), the deployer (check_deployer),
    a policy that loads (PolicyError). The health URL's form is Settings' to check. Returns the settings to
    serve with, the deployer's defaults chosen."""
    check_room(settings.home)
    check_file(settings.home / "state.db")
    asyncio.run(check_forge(settings, default_repo(settings)))
    ready = check_deployer(settings)
    load_policy(settings, policy_path)
    return ready


async def check_forge(settings: Settings, repo: str | None, *,
                      transport: httpx.AsyncBaseTransport | None = None) -> None:
    """ConfigError, one line naming the setting, unless the forge can work: with GitHub, GitHub's first answer
    to the token (GET of GITHUB_REPOSITORY) is a 2xx; without, `repo` is a git repository on this disk, not a
    URL no token can push to. `transport` reaches a fake GitHub in tests."""
    if settings.github_token is None:
        if repo is not None and is_git_url(repo):
            raise ConfigError(f"AGENT_RUNNER_REPO {repo!r} is a git URL, but GITHUB_TOKEN is not set: set "
                              "GITHUB_TOKEN (contents and pull requests: write) and GITHUB_REPOSITORY, or give "
                              "the path of the bot's bare repository")
        if repo is not None:
            check_local_repo(repo, name="AGENT_RUNNER_REPO")
        return
    from runner.forge.github_api import GitHubApi, messages

    repository = settings.github_repository or ""
    api = GitHubApi(settings.github_api_url, settings.github_token.reveal(), transport=transport,
                    timeout=FORGE_CHECK_TIMEOUT, retries=0)
    try:
        response = await api.request("GET", f"/repos/{repository}", allow=(401, 403, 404))
    except ForgeError as exc:
        # Not the token's fault, and maybe for a minute only: a supervisor restarted mid-release must come up
        # to finish it (and to roll back), so an outage is said, not a reason to stay down.
        log.warning("GitHub at GITHUB_API_URL (%s) did not answer the start-up check (%s); starting anyway: "
                    "pull requests wait until it answers", settings.github_api_url, exc)
        return
    finally:
        await api.aclose()
    said = f"{response.status_code} {messages(response)}"
    if response.status_code == 401:
        raise ConfigError(f"GITHUB_TOKEN is refused by GitHub: {said}; the token is invalid, expired or revoked: "
                          "make a new one (contents and pull requests: write) and set GITHUB_TOKEN")
    if response.status_code == 403:
        raise ConfigError(f"GITHUB_TOKEN may not read GITHUB_REPOSITORY {repository}: {said}; give the token "
                          "access to it (contents and pull requests: write)")
    if response.status_code == 404:
        raise ConfigError(f"GITHUB_REPOSITORY {repository} is not found with GITHUB_TOKEN: {said}; check the "
                          "owner/name, and that the token is granted that repository")


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
        say(f"policy {active.source}: version {active.version}, sha256 {active.sha256[:12]}")  # file, name, hash
        upstream, key = settings.anthropic_base_url, settings.anthropic_api_key
        if scenario is not None or key is None:
            from runner.scripted_model import Scenario, ScenarioError, serve_scripted_model

            scenario = scenario or DEFAULT_SCENARIO  # no key: the embedded default, never a dead service
            try:
                script = Scenario.from_file(scenario)
            except ScenarioError as exc:
                raise ConfigError(str(exc)) from None
            server = await stack.enter_async_context(serve_scripted_model(script))
            upstream, api_key = server.base_url, SCRIPTED_KEY
            say(scripted_notice(settings, scenario))
        else:
            api_key = key.reveal()
        check_room(settings.home)
        store = await stack.enter_async_context(Store(settings.home / "state.db"))
        for late in store.recorded_late:
            say(f"task {late.task_id}: recorded what the state file refused before the restart ({late.state})")
        sandbox = await stack.enter_async_context(DockerSandbox(runtime=settings.sandbox_runtime))
        for notice in sandbox.notices:
            say(notice)
        proxy = await stack.enter_async_context(ModelProxy(upstream, api_key, on_refusal=audit_refusals(store)))
        forge = await stack.enter_async_context(create_forge(settings, repo=_local_repo(repo)))
        reaped = await reap_orphans(store, sandbox, settings.home)
        if reaped:
            say(f"reaped {len(reaped)} container(s) of tasks no longer running: {', '.join(reaped)}")
        deps = Deps(home=settings.home, store=store, sandbox=sandbox, proxy=proxy, policy=active,
                    image=settings.sandbox_image, forge=forge)
        yield Runtime(settings, deps, say)


def scripted_notice(settings: Settings, scenario: Path) -> str:
    """The one start-up line that says a scripted model, not the real one, plays the agent, and how to change it."""
    if settings.anthropic_api_key is None:
        return (f"no ANTHROPIC_API_KEY: a scripted model plays the agent ({scenario.name}); set ANTHROPIC_API_KEY "
                "to use the real model")
    return (f"--scenario: a scripted model plays the agent ({scenario.name}), not the model at "
            f"{settings.anthropic_base_url}; start without --scenario to use it")


def audit_refusals(store: Store) -> Callable[[str, Refusal], Awaitable[None]]:
    """Each request the gateway refused lands in the task's audit log with its reason (it never reached the
    upstream)."""
    async def audit(task_id: str, refusal: Refusal) -> None:
        await store.audit(task_id, "model_proxy", "model_refusal", refusal.to_json())
    return audit


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


@dataclass(frozen=True, slots=True)
class Housekeeping:
    """How often `serve` reaps orphaned sandboxes (`interval`), and how soon it tries again after a reap failed,
    the engine being down (`retry`): a container an engine restart orphaned goes as soon as the engine is back."""

    interval: float = DEFAULT_REAP_INTERVAL
    retry: float = DEFAULT_REAP_RETRY


Sleep = Callable[[float], Awaitable[None]]


class Housekeeper:
    """Runs `reap` on the Housekeeping timer until cancelled; says what it reaped and when reaping fails or
    works again. `sleep` is the clock (tests pass one that does not wait)."""

    def __init__(self, reap: Callable[[], Awaitable[list[str]]], *, config: Housekeeping = Housekeeping(),
                 say: Callable[[str], None] = log.info, sleep: Sleep = asyncio.sleep) -> None:
        self._reap = reap
        self._config = config
        self._say = say
        self._sleep = sleep
        self.failing: str | None = None
        """Why the last reap failed, while it keeps failing."""
        self.reaped: list[str] = []

    async def run(self) -> None:
        """Forever: wait, reap. The first wait comes first: the runtime reaped as it opened."""
        while True:
            await self._sleep(self._config.retry if self.failing is not None else self._config.interval)
            await self.once()

    async def once(self) -> list[str]:
        try:
            reaped = await self._reap()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the engine down, the state file full: try again soon, never stop
            if self.failing is None:
                self._say(f"housekeeping: reaping orphaned sandboxes failed ({exc}); trying again every "
                          f"{self._config.retry:g}s")
            self.failing = str(exc) or type(exc).__name__
            return []
        back = self.failing is not None
        self.failing = None
        self.reaped.extend(reaped)
        said = [*(["reaping works again"] if back else []),
                *([f"reaped {len(reaped)} orphaned container(s): {', '.join(reaped)}"] if reaped else [])]
        if said:
            self._say(f"housekeeping: {'; '.join(said)}")
        return reaped



def _local_repo(repo: str) -> str | None:
    """The local forge works on a repository on disk; a URL needs GitHub settings."""
    return repo if Path(repo).exists() else None
