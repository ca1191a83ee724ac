"""Releases as background jobs: real git (the local forge), a real shell deploy, a real HTTP health check,
the Loki stand-in for the post-deploy watch, and restarts at each step of a release."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

import policy
from policy import Migrations
from runner.alerts import autofix
from runner.alerts.alertmanager import parse_auto_fix
from runner.alerts.loki import LokiClient
from runner.alerts.tracebacks import extract_tracebacks
from runner.app import create_app
from runner.config import Settings
from runner.deploy import Deployer
from runner.deploy.command import CommandDeployer
from runner.deploy.none import NoneDeployer
from runner.errors import ForgeConflict, ForgeNotFound
from runner.forge import PullRequest
from runner.forge.localgit import LocalGitForge
from runner.model_proxy import ModelProxy
from runner.models import TaskState
from runner.sandbox.docker import DockerSandbox
from runner.service.release_store import ReleaseStore
from runner.service.releases import NO_MIGRATIONS, NOTHING_DEPLOYED, Releases, approved_head
from runner.service.runtime import Runtime
from runner.service.watch import LokiErrors, WatchConfig
from runner.store import Store, TaskRecord
from runner.supervisor import Deps
from runner.unix_server import serve_tcp
from tests.deploy.orphans import alive, orphan, overlap_guarded
from tests.fakes.health import health_server
from tests.fakes.loki import FakeLoki, traceback_lines
from tests.fakes.service import held_service as autofix_service
from tests.forge.repos import Repos, git, make_repos

NO_WATCH = WatchConfig(seconds=0)
WATCH = WatchConfig(seconds=30, interval=0.05, baseline_seconds=600)


@dataclass
class Bot:
    """The deployed bot: the deploy command writes the SHA it runs to `state`; /health answers 500 for a SHA in
    `broken` or one whose tree holds a file named `broken.py`, 200 otherwise. `deploys` lists every SHA
    deployed, in order."""

    url: str
    state: Path
    broken: set[str] = field(default_factory=set)

    @property
    def running(self) -> str:
        return self.state.read_text().strip()

    def deploys(self) -> list[str]:
        log = self.state.with_suffix(".log")
        return log.read_text().split() if log.exists() else []


@pytest.fixture
def bot(tmp_path: Path, repos: Repos) -> Iterator[Bot]:
    state = tmp_path / "deployed-sha"
    broken: set[str] = set()

    def judge(sha: str) -> int:
        files = git("--git-dir", str(repos.origin), "ls-tree", "--name-only", sha, cwd=tmp_path).split()
        return 500 if sha in broken or "broken.py" in files else 200

    with health_server(state, judge) as url:
        yield Bot(url, state, broken)


@dataclass
class Desk:
    releases: Releases
    store: Store
    forge: LocalGitForge
    repos: Repos
    bot: Bot
    told: list[str]
    progress: list[tuple[str | None, str]]

    async def propose(self, path: str, content: str, *, fingerprint: str | None = None,
                      also: dict[str, str] | None = None) -> tuple[int, str, TaskRecord]:
        """An agent's pull request on its own branch (`path`, then each of `also`), and its task at `proposed`."""
        branch = f"agent/{path.replace('.', '-').replace('/', '-')}"
        sha = self.repos.commit(path, content, f"add {path}", branch=branch)
        for extra, text in (also or {}).items():
            sha = self.repos.commit(extra, text, f"add {extra}")
        await self.forge.push_branch(self.repos.clone, branch)
        pr = await self.forge.open_pr(f"Add {path}", "body", branch, "main")
        git("checkout", "-q", "main", cwd=self.repos.clone)
        task = await self.store.create_task(kind="fix" if fingerprint else "feature", prompt="p",
                                            repo=str(self.repos.origin), source="api", requested_by="owner",
                                            dry_run=False, fingerprint=fingerprint)
        task = await self.store.transition(task.id, TaskState.PROPOSED,
                                           result={"pr": {"number": pr.number, "head_sha": sha}})
        return pr.number, sha, task

    async def approve_broken(self, *, also: dict[str, str] | None = None) -> tuple[TaskRecord, int]:
        """The owner approves an agent's pull request adding broken.py (and each of `also`), on which the bot's
        health check fails: its task and the release's id."""
        number, sha, task = await self.propose("broken.py", "raise SystemExit\n", also=also)
        release = await self.releases.approve(number, sha, actor="owner", task=task)
        return task, release.id

    async def approve_watched(self, number: int, sha: str, task: TaskRecord | None) -> int:
        """Approve, and wait until the release is deployed and its watch listens."""
        release = await self.releases.approve(number, sha, actor="owner", task=task)
        async with asyncio.timeout(20):
            while self.releases.watched != release.id:
                await asyncio.sleep(0.01)
        return release.id


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    return make_repos(tmp_path)


def deploy_command(bot: Bot, *, pause: float = 0.0) -> str:
    return (f"sleep {pause}; echo \"$AGENT_RUNNER_DEPLOY_SHA\" > {bot.state}; "
            f"echo \"$AGENT_RUNNER_DEPLOY_SHA\" >> {bot.state.with_suffix('.log')}")


def deployer(bot: Bot, *, pause: float = 0.0, command: str | None = None, **options: Any) -> CommandDeployer:
    return CommandDeployer(command or deploy_command(bot, pause=pause), health_url=bot.url, health_timeout=0.6,
                           health_interval=0.05, **options)


@contextlib.asynccontextmanager
async def desk(tmp_path: Path, repos: Repos, bot: Bot, *, watch: WatchConfig = NO_WATCH, loki: FakeLoki | None = None,
               pause: float = 0.0, active: Deployer | None = None,
               migrations: Migrations = NO_MIGRATIONS,
               ask: Callable[[str], Awaitable[bool]] | None = None) -> AsyncIterator[Desk]:
    """Releases over the real pieces; leaving the block stops its jobs as a shutdown would (rows stay)."""
    told: list[str] = []
    progress: list[tuple[str | None, str]] = []

    async def tell(text: str) -> None:
        told.append(text)

    bot.state.write_text(repos.head("main") or "")  # what runs before any release
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(Store(tmp_path / "state.db"))
        forge = await stack.enter_async_context(LocalGitForge(repos.origin, tmp_path / "forge.sqlite3"))
        active = await stack.enter_async_context(active or deployer(bot, pause=pause))
        rows = ReleaseStore(tmp_path / "state.db")
        stack.push_async_callback(rows.aclose)
        errors = None
        if loki is not None:
            client = await stack.enter_async_context(
                LokiClient("http://loki:3100", transport=httpx.ASGITransport(app=loki.app), retries=0))
            errors = LokiErrors(client, selector='{service="bot"}', repo_roots=["/app"])
        releases = Releases(rows, store=store, forge=forge, deployer=active, repo=str(repos.origin),
                            home=tmp_path / "home", watch=watch,
                            errors=errors, progress=lambda task, line: progress.append((task, line)), tell=tell,
                            migrations=lambda: migrations, ask=ask)
        stack.push_async_callback(releases.aclose)
        yield Desk(releases, store, forge, repos, bot, told, progress)


async def settled(d: Desk, release_id: int, timeout: float = 20) -> Any:
    async with asyncio.timeout(timeout):
        await d.releases.wait_idle()
    return await d.releases.rows.get(release_id)


async def states(store: Store, task_id: str) -> list[str]:
    return [e.detail["state"] for e in await store.audit_log(task_id, event="state")]


# --------------------------------------------------------------------------------------------- approval


async def test_approve_answers_before_the_deploy_and_the_release_deploys_in_the_background(
        tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, pause=0.5) as d:
        number, sha, task = await d.propose("balance.py", "def balance():\n    return 0\n")
        started = time.monotonic()
        release = await d.releases.approve(number, sha, actor="owner", task=task)
        answered = time.monotonic() - started
        assert release.state == "approved" and release.task_id == task.id
        assert answered < 0.5, "approve waited for the deploy"  # the deploy command alone sleeps 0.5 s
        done = await settled(d, release.id)
        assert done.state == "deployed" and done.detail == "deployed and healthy"
        assert bot.running == done.merge_sha == repos.head("main")
        assert done.previous_sha == repos.log("main")[1].split()[0]
        assert await states(d.store, task.id) == ["proposed", "approved", "merging", "deploying", "deployed"]
        assert d.told == [f"PR #{number} merged as {done.merge_sha[:12]}; deploy deployed: deployed and healthy"]
        assert any(line.startswith("deploy: deployed") for t, line in d.progress if t == task.id)


async def test_approve_refuses_a_moved_head_a_closed_pr_and_a_second_approval(
        tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, pause=0.5) as d:
        number, sha, task = await d.propose("balance.py", "x = 1\n")
        with pytest.raises(ForgeConflict, match="not the approved"):
            await d.releases.approve(number, "0" * 40, actor="owner", task=task)
        with pytest.raises(ForgeNotFound):
            await d.releases.approve(99, sha, actor="owner", task=None)
        assert await d.releases.rows.find() == []  # a refusal records nothing
        first = await d.releases.approve(number, sha, actor="owner", task=task)
        with pytest.raises(ForgeConflict, match="already being released"):
            await d.releases.approve(number, sha, actor="owner", task=task)
        await settled(d, first.id)
        with pytest.raises(ForgeConflict, match="merged"):
            await d.releases.approve(number, sha, actor="owner", task=task)
    assert len(repos.log("main")) == 2  # merged once


def test_approved_head_takes_a_unique_prefix_and_refuses_with_both_shas_at_one_length() -> None:
    head = "b615bc5483b0" + "9" * 28
    assert approved_head(1, head, head) == head
    assert approved_head(1, head, "B615BC5") == head  # git's short SHA, as `git log --oneline` shows it
    assert approved_head(1, head, head[:12]) == head  # what `prs` and the chat print
    with pytest.raises(ForgeConflict) as near:
        approved_head(1, head, head[:39] + "0")
    assert str(near.value) == f"pull request #1 head is {head}, not the approved {head[:39]}0; nothing merged"
    with pytest.raises(ForgeConflict) as other:
        approved_head(1, head, "a615bc5")
    assert str(other.value) == "pull request #1 head is b615bc5, not the approved a615bc5; nothing merged"
    for short in ("b615bc", "b615bcz", ""):
        with pytest.raises(ForgeConflict, match=r"at least 7 hex digits \(its head is b615bc5483b0\)"):
            approved_head(1, head, short)


async def test_approve_with_a_short_sha_releases_the_full_head(tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot) as d:
        number, sha, task = await d.propose("balance.py", "x = 1\n")
        release = await d.releases.approve(number, sha[:7], actor="owner", task=task)
        assert release.head_sha == sha
        done = await settled(d, release.id)
        assert done.state == "deployed" and bot.running == repos.head("main")


async def test_a_release_with_the_none_deployer_says_nothing_was_deployed_checked_or_watched(
        tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, watch=WATCH, active=NoneDeployer()) as d:
        number, sha, task = await d.propose("balance.py", "x = 1\n")
        release = await d.releases.approve(number, sha, actor="owner", task=task)
        done = await settled(d, release.id)
    assert done.state == "deployed" and done.watch_until is None and done.merge_sha == repos.head("main")
    assert done.detail == NOTHING_DEPLOYED == ("merged; no deployer configured (AGENT_RUNNER_DEPLOYER=none), so "
                                               "nothing was deployed, health-checked or watched")
    assert d.told == [f"PR #{number} merged as {done.merge_sha[:12]}; no deployer configured "
                      "(AGENT_RUNNER_DEPLOYER=none), so nothing was deployed, health-checked or watched"]
    said = [*d.told, *(line for _, line in d.progress)]
    assert not [line for line in said if "watching" in line or "healthy" in line], said


async def test_a_watch_with_no_log_to_read_says_only_alerts_can_roll_back(tmp_path: Path, repos: Repos,
                                                                         bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, watch=WATCH) as d:  # no Loki, no container log
        number, sha, task = await d.propose("balance.py", "x = 1\n")
        release_id = await d.approve_watched(number, sha, task)
        watched = await d.releases.rows.get(release_id)
        said = [*d.told, *(line for _, line in d.progress)]
    assert watched.state == "watching"  # alerts posted to the service can still condemn it
    assert watched.detail == ("deployed and healthy; for 30s an alert posted to /alerts rolls it back; no logs are "
                              "read (no LOKI_URL, and no container log without the docker deployer)")
    assert not [line for line in said if "watching" in line], said
    assert any("an alert posted to /alerts rolls it back; no logs are read" in line for line in said)


async def test_an_unhealthy_release_is_rolled_back_and_reverted_on_main(tmp_path: Path, repos: Repos,
                                                                         bot: Bot) -> None:
    async with desk(tmp_path, repos, bot) as d:
        before = repos.head("main")
        task, release_id = await d.approve_broken()
        done = await settled(d, release_id)
        assert (await d.store.get_task(task.id)).state is TaskState.ROLLED_BACK
    assert done.state == "rolled_back" and done.revert_sha == repos.head("main")
    assert bot.deploys() == [done.merge_sha, before] and bot.running == before  # the previous version runs again
    assert "broken.py" not in git("--git-dir", str(repos.origin), "ls-tree", "--name-only", "main", cwd=tmp_path)
    assert "deploy rolled_back" in d.told[-1] and "reverted on main" in d.told[-1]


async def test_a_rollback_stands_when_the_base_branch_refuses_the_revert(tmp_path: Path, repos: Repos,
                                                                        bot: Bot) -> None:
    """A protected branch refuses the revert push: the previous version still runs, the release says
    rolled_back, and the revert becomes a pull request the owner is asked to approve."""
    hook = repos.origin / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nwhile read old new ref; do\n  if [ \"$ref\" = refs/heads/main ]; then\n"
                    "    echo 'main is protected' >&2; exit 1\n  fi\ndone\n")
    hook.chmod(0o755)
    async with desk(tmp_path, repos, bot) as d:
        before = repos.head("main")
        task, release_id = await d.approve_broken()
        done = await settled(d, release_id)
        assert (await d.store.get_task(task.id)).state is TaskState.ROLLED_BACK
        [revert_pr] = [pr for pr in await d.forge.list_open() if pr.head_branch.startswith("agent/revert-")]
    assert done.state == "rolled_back" and done.revert_sha is None and bot.running == before
    assert "main is protected" in done.detail and f"pull request #{revert_pr.number}: approve it" in done.detail
    assert repos.head("main") == done.merge_sha  # the merge is still there until the revert PR is approved
    assert git("--git-dir", str(repos.origin), "diff", "--name-only", "main", revert_pr.head_sha,
               cwd=tmp_path).split() == ["broken.py"]
    assert f"#{revert_pr.number}: approve it" in d.told[-1]


async def test_without_a_forge_pr_the_release_is_still_recorded_and_reported(tmp_path: Path, repos: Repos,
                                                                             bot: Bot) -> None:
    async with desk(tmp_path, repos, bot) as d:
        number, sha, _ = await d.propose("notes.py", "NOTES = []\n")
        release = await d.releases.approve(number, sha, actor="telegram:owner", task=None)
        done = await settled(d, release.id)
        assert [e.detail["state"] for e in await d.store.audit_log(event="release")] == \
            ["merging", "deploying", "deployed"]
    assert done.state == "deployed" and done.task_id is None and done.actor == "telegram:owner"


# ------------------------------------------------------------------------------------------ the watch


def push_traceback(loki: FakeLoki, at: float, **kwargs: Any) -> str:
    lines = traceback_lines(**kwargs)
    base = int(at * 10**9)
    loki.add({"service": "bot", "container": "bot-1"}, [(base + i, line) for i, line in enumerate(lines)])
    return extract_tracebacks("\n".join(lines), repo_roots=["/app"])[0].fingerprint


async def test_the_watch_rolls_back_a_healthy_release_when_a_new_error_appears(tmp_path: Path, repos: Repos,
                                                                               bot: Bot) -> None:
    loki = FakeLoki()
    push_traceback(loki, time.time() - 300, line=42)  # an old error, there before the release
    async with desk(tmp_path, repos, bot, watch=WATCH, loki=loki) as d:
        before = repos.head("main")
        number, sha, task = await d.propose("ledger.py", "TOTALS = {}\n")
        release_id = await d.approve_watched(number, sha, task)
        await asyncio.sleep(0.3)  # several polls: the old error alone condemns nothing
        assert (await d.releases.rows.get(release_id)).state == "watching"
        assert (await d.store.get_task(task.id)).state is TaskState.DEPLOYED
        new = push_traceback(loki, time.time(), message="ZeroDivisionError: division by zero")
        done = await settled(d, release_id)
        verdicts = await d.store.audit_log(task.id, event="watch_verdict")
        assert (await d.store.get_task(task.id)).state is TaskState.ROLLED_BACK
    assert done.state == "rolled_back" and "a new error appeared after the deploy" in done.detail
    assert new in done.detail and bot.running == before and repos.head("main") == done.revert_sha
    assert [v.detail["fingerprint"] for v in verdicts] == [new]
    assert d.told[-1].startswith(f"PR #{number} rolled back: post-deploy watch: a new error appeared")
    assert "ZeroDivisionError" in d.told[-1]


async def test_the_watch_rolls_back_a_fix_whose_error_comes_back_through_an_alert(tmp_path: Path, repos: Repos,
                                                                                  bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, watch=WATCH) as d:  # no Loki: alerts are all the watch hears
        number, sha, task = await d.propose("ledger.py", "TOTALS = {}\n", fingerprint="fp-keyerror")
        await d.store.create_task(kind="fix", prompt="p", repo="r", source="alertmanager", requested_by="am",
                                  dry_run=False, fingerprint="fp-old")  # an error an earlier auto-fix knew
        release_id = await d.approve_watched(number, sha, task)
        assert d.releases.observe("fp-old", 5) is None  # known, and no baseline to compare rates with
        condemned = d.releases.observe("fp-keyerror", 2, "KeyError: 1001 in bot/ledger.py")
        assert condemned is not None and condemned.release.id == release_id
        done = await settled(d, release_id)
    assert done.state == "rolled_back" and "the error this release fixed happened again 2 time(s)" in done.detail
    assert "KeyError: 1001" in d.told[-1]


async def test_an_alert_for_an_error_the_watched_release_brought_rolls_it_back_instead_of_starting_a_fix(
        tmp_path: Path, repos: Repos, bot: Bot) -> None:
    report = parse_auto_fix(json.dumps({"traceback": "\n".join(traceback_lines()), "service": "bot"}))
    async with desk(tmp_path, repos, bot, watch=WATCH) as d, autofix_service(tmp_path / "svc") as (svc, _):
        number, sha, task = await d.propose("ledger.py", "TOTALS = {}\n")
        release_id = await d.approve_watched(number, sha, task)
        outcomes = await autofix.admit(dataclasses.replace(svc, releases=d.releases), report)
        done = await settled(d, release_id)
        fix_tasks = await svc.store.list_tasks()
        noted = await svc.store.audit_log(event="watch_alert")
    assert [o.status for o in outcomes] == ["rolled_back"] and fix_tasks == []  # no fix chases the rolled-back bug
    assert outcomes[0].note.startswith(f"the release of PR #{number} is being rolled back: a new error appeared")
    assert [(e.detail["release"], e.detail["number"]) for e in noted] == [(release_id, number)]
    assert done.state == "rolled_back" and "KeyError" in done.detail


async def test_a_clean_watch_ends_deployed_and_says_so(tmp_path: Path, repos: Repos, bot: Bot) -> None:
    loki = FakeLoki()
    async with desk(tmp_path, repos, bot, watch=WatchConfig(seconds=0.4, interval=0.05), loki=loki) as d:
        number, sha, task = await d.propose("ok.py", "OK = True\n")
        release = await d.releases.approve(number, sha, actor="owner", task=task)
        done = await settled(d, release.id)
        assert (await d.store.get_task(task.id)).state is TaskState.DEPLOYED
    assert done.state == "deployed" and done.detail.startswith("watched 0s after the deploy: no error came back")
    assert "0 failed" in done.detail and done.watch_until is not None and done.deployed_at is not None
    assert d.told[-1] == f"PR #{number}: {done.detail}"


async def test_the_next_release_ends_the_previous_watch(tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, watch=WATCH) as d:
        first_pr, first_sha, _ = await d.propose("a.py", "A = 1\n")
        second_pr, second_sha, _ = await d.propose("b.py", "B = 1\n")
        first = await d.approve_watched(first_pr, first_sha, None)
        second = await d.approve_watched(second_pr, second_sha, None)
        ended = await d.releases.rows.get(first)
    assert ended.state == "deployed" and ended.detail == \
        f"watch ended early: release {second} (PR #{second_pr}) started after it"


async def test_a_watch_whose_rollback_is_unhealthy_too_fails_loudly(tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, watch=WATCH) as d:
        number, sha, task = await d.propose("x.py", "X = 1\n", fingerprint="fp")
        release_id = await d.approve_watched(number, sha, task)
        bot.broken.add(str((await d.releases.rows.get(release_id)).previous_sha))
        assert d.releases.observe("fp", 1) is not None
        done = await settled(d, release_id)
        assert (await d.store.get_task(task.id)).state is TaskState.FAILED
    assert done.state == "failed" and "the previous version is not healthy either" in done.detail
    assert d.told[-1].endswith("Look now.")


# ------------------------------------------------------------------------------------------- restarts


async def test_a_release_killed_while_merging_is_not_merged_twice(tmp_path: Path, repos: Repos, bot: Bot) -> None:
    """The process died after the forge merged but before the row said so: the next start deploys that merge."""
    async with desk(tmp_path, repos, bot) as d:
        number, sha, task = await d.propose("m.py", "M = 1\n")
        row = await d.releases.rows.add(number=number, head_sha=sha, task_id=task.id, actor="owner")
        await d.releases.rows.update(row.id, "merging")
        merged = await d.forge.merge(number, sha)  # what the dead process got done
    async with desk(tmp_path, repos, bot) as d:
        assert await d.releases.start() == [row.id]
        done = await settled(d, row.id)
    assert done.state == "deployed" and done.merge_sha == merged.sha == bot.running
    assert len(repos.log("main")) == 2 and bot.deploys() == [merged.sha]


async def test_releases_resume_at_each_step_after_a_restart(tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, watch=WATCH) as d:
        number, sha, _ = await d.propose("a.py", "A = 1\n")
        approved = await d.releases.rows.add(number=number, head_sha=sha, task_id=None, actor="owner")
        passed = await d.releases.rows.add(number=1000, head_sha="f" * 40, task_id=None, actor="owner")
        await d.releases.rows.update(passed.id, "watching", deployed_at=time.time() - 100,
                                     watch_until=time.time() - 1)
    # Start 1: the approved release merges, deploys and starts watching; the lapsed watch ends.
    async with desk(tmp_path, repos, bot, watch=WATCH) as d:
        assert await d.releases.start() == [approved.id]
        async with asyncio.timeout(20):
            while d.releases.watched != approved.id:
                await asyncio.sleep(0.01)
        ended = await d.releases.rows.get(passed.id)
        watching = await d.releases.rows.get(approved.id)
    assert ended.state == "deployed" and ended.detail == "the watch window passed while the supervisor was stopped"
    assert watching.state == "watching" and watching.merge_sha == repos.head("main") == bot.running
    # Start 2, mid-watch: it watches out the rest of the same window and still acts on what it hears.
    async with desk(tmp_path, repos, bot, watch=WATCH) as d:
        assert await d.releases.start() == [approved.id]
        async with asyncio.timeout(20):
            while d.releases.watched != approved.id:
                await asyncio.sleep(0.01)
        assert d.releases.observe("an-error-never-seen", 1) is not None
        done = await settled(d, approved.id)
    assert done.state == "rolled_back" and done.watch_until == watching.watch_until
    assert len(repos.log("main")) == 3 and bot.deploys() == [watching.merge_sha, watching.previous_sha]


async def test_a_verdict_recorded_before_a_kill_is_acted_on_at_the_next_start(tmp_path: Path, repos: Repos,
                                                                              bot: Bot) -> None:
    """The watch condemned the release (from an alert, which is not in any log) and the supervisor died before
    the rollback: the next start rolls back without waiting to hear the error again."""
    async with desk(tmp_path, repos, bot, watch=WATCH) as d:
        number, sha, task = await d.propose("x.py", "X = 1\n")
        release_id = await d.approve_watched(number, sha, task)
        before = (await d.releases.rows.get(release_id)).previous_sha
        await d.store.audit(task.id, "watch", "watch_verdict", {"release": release_id, "fingerprint": "fp-alert",
                                                                "reason": "a new error appeared after the deploy"})
    async with desk(tmp_path, repos, bot, watch=WATCH) as d:
        assert await d.releases.start() == [release_id]
        done = await settled(d, release_id)
        verdicts = await d.store.audit_log(task.id, event="watch_verdict")
    assert done.state == "rolled_back" and "a new error appeared after the deploy" in done.detail
    assert bot.running == before and len(verdicts) == 1  # acted on, not recorded twice


async def test_two_approvals_at_once_start_one_release(tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot) as d:
        number, sha, task = await d.propose("a.py", "A = 1\n")
        answers = await asyncio.gather(*(d.releases.approve(number, sha, actor=who, task=task)
                                         for who in ("owner", "telegram:owner")), return_exceptions=True)
        [release] = [a for a in answers if not isinstance(a, BaseException)]
        [refused] = [a for a in answers if isinstance(a, BaseException)]
        done = await settled(d, release.id)
        assert (await d.store.get_task(task.id)).state is TaskState.DEPLOYED
        assert [r.id for r in await d.releases.rows.find()] == [release.id]
    assert isinstance(refused, ForgeConflict) and "already being released" in str(refused)
    assert done.state == "deployed" and len(repos.log("main")) == 2  # merged once


async def test_a_deploy_a_killed_process_left_running_is_stopped_at_its_timeout_then_deployed_again_alone(
        tmp_path: Path, repos: Repos, bot: Bot) -> None:
    """The supervisor died mid-deploy and its deploy command hangs on: the next start waits for it until its
    timeout (counted from when it began), kills its process group, and only then deploys again."""
    log, runs, stuck = tmp_path / "deploys.log", tmp_path / "runs", tmp_path / "stuck"
    stuck.touch()  # the first run hangs (and takes the file, so the next one does not)
    command = overlap_guarded(f"if [ -e {stuck} ]; then rm {stuck}; sleep 60; fi; {deploy_command(bot)}", log,
                              tmp_path / "exclusive")
    async with desk(tmp_path, repos, bot) as d:
        number, sha, task = await d.propose("m.py", "M = 1\n")
        row = await d.releases.rows.add(number=number, head_sha=sha, task_id=task.id, actor="owner")
        merged = await d.forge.merge(number, sha)
        await d.releases.rows.update(row.id, "deploying", merge_sha=merged.sha, base_branch="main",
                                     previous_sha=repos.log("main")[1].split()[0])
        # What the dead process did last: record the step's fence, start the command under it, die.
        left = deployer(bot, command=command, runs=runs).fence(f"release-{row.id}-deploy-1", "deploy", merged.sha)
        await d.releases.rows.update(row.id, "deploying", fence=left)
        orphan(left, command, runs, repo=str(repos.origin))
    async with desk(tmp_path, repos, bot, active=deployer(bot, command=command, runs=runs, timeout=2.0)) as d:
        assert await d.releases.start() == [row.id]
        done = await settled(d, row.id)
        progress = [line for _, line in d.progress]
    starts = [line.split()[:3] for line in log.read_text().splitlines()]
    assert starts == [["start", "deploy", merged.sha], ["start", "deploy", merged.sha], ["end", "deploy", merged.sha]]
    assert not alive(left)
    assert done.state == "deployed" and done.fence is None and bot.running == merged.sha
    assert done.deployed is not None and done.deployed.succeeded and "begun by" not in done.deployed.detail
    assert any(line.startswith(f"waiting for the deploy of {merged.sha[:12]}") for line in progress)
    assert any("begun before the restart is over; it runs again" in line for line in progress)
    assert len(repos.log("main")) == 2 and bot.deploys() == [merged.sha]  # merged once; deployed to its end once


# ------------------------------------------------------------------------------------- migration releases

MIGRATIONS = Migrations()  # the policy's default paths: Alembic, Django, SQL under migrations/; deployed as usual
ASK_FIRST = Migrations(ask_before_deploy=True)  # migrations.ask_before_deploy: the owner's go before the deploy too
MIGRATION = "app/migrations/0002_balance.py"


async def asking(d: Desk, release_id: int, question: str) -> Any:
    """Until the release waits for the owner on `question` (no job of it runs then)."""
    done = await settled(d, release_id)
    assert (done.state, done.asked) == ("asking", question), (done.state, done.detail)
    return done


async def test_a_migration_release_waits_for_the_owner_before_its_deploy_and_go_deploys_it(
        tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, migrations=ASK_FIRST) as d:
        before = repos.head("main")
        number, sha, task = await d.propose(MIGRATION, "def upgrade():\n    pass\n")
        release = await d.releases.approve(number, sha, actor="owner", task=task)
        waiting = await asking(d, release.id, "deploy")
        assert bot.deploys() == [] and bot.running == before  # merged, and nothing deployed yet
        asked = d.told[-1]
        answered = await d.releases.answer(release.id, True, actor="telegram:owner")
        done = await settled(d, release.id)
        answers = await d.store.audit_log(task.id, event="release_answer")
        with pytest.raises(ForgeConflict, match="waits for no answer"):
            await d.releases.answer(release.id, True, actor="owner")
        assert (await d.store.get_task(task.id)).state is TaskState.DEPLOYED
    assert waiting.migrations == MIGRATION and waiting.merge_sha == repos.head("main")
    assert "waiting for the owner before the deploy" in waiting.detail
    assert f"changes database migrations ({MIGRATION})" in asked and f"answer release {release.id}" in asked
    assert answered.state == "deploying" and answered.consent == "deploy"
    assert done.state == "deployed" and bot.deploys() == [done.merge_sha] and bot.running == done.merge_sha
    assert [(a.actor, a.detail["question"], a.detail["answer"]) for a in answers] == [
        ("telegram:owner", "deploy", "go")]


async def test_a_migration_release_held_by_the_owner_is_never_deployed(tmp_path: Path, repos: Repos,
                                                                       bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, migrations=ASK_FIRST) as d:
        before = repos.head("main")
        number, sha, task = await d.propose(MIGRATION, "def upgrade():\n    pass\n")
        release = await d.releases.approve(number, sha, actor="owner", task=task)
        await asking(d, release.id, "deploy")
        await d.releases.answer(release.id, False, actor="owner")
        done = await settled(d, release.id)
        assert (await d.store.get_task(task.id)).state is TaskState.CANCELLED
    assert done.state == "held" and "held by the owner: not deployed" in done.detail
    assert bot.deploys() == [] and bot.running == before
    assert d.told[-1] == f"PR #{number}: {done.detail}"


async def test_a_release_without_migrations_is_not_asked_anything(tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, migrations=MIGRATIONS) as d:
        number, sha, task = await d.propose("app/models.py", "BALANCE = 0\n")
        release = await d.releases.approve(number, sha, actor="owner", task=task)
        done = await settled(d, release.id)
    assert done.state == "deployed" and done.migrations == "" and done.asked is None


async def test_an_unhealthy_migration_release_is_not_rolled_back_until_the_owner_says_go(
        tmp_path: Path, repos: Repos, bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, migrations=MIGRATIONS) as d:
        before = repos.head("main")
        task, release_id = await d.approve_broken(also={MIGRATION: "def upgrade(): ...\n"})
        # Deployed as usual (nothing asked before it): only its failure waits for the owner.
        waiting = await asking(d, release_id, "rollback")
        # Unhealthy, and still running: a rollback of the code would not undo the migration.
        assert bot.deploys() == [waiting.merge_sha] and bot.running == waiting.merge_sha
        asked = d.told[-1]
        await d.releases.answer(release_id, True, actor="owner")
        done = await settled(d, release_id)
        assert (await d.store.get_task(task.id)).state is TaskState.ROLLED_BACK
    assert "unhealthy after the deploy" in waiting.detail and "before any rollback" in waiting.detail
    assert "rollback of the code does not undo a migration" in asked and "go (roll back anyway) or hold" in asked
    assert done.state == "rolled_back" and bot.running == before and repos.head("main") == done.revert_sha
    assert bot.deploys() == [done.merge_sha, before]


async def test_an_unhealthy_migration_release_held_by_the_owner_keeps_running(tmp_path: Path, repos: Repos,
                                                                              bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, migrations=MIGRATIONS) as d:
        task, release_id = await d.approve_broken(also={MIGRATION: "def upgrade(): ...\n"})
        # Deployed as usual (nothing asked before it): only its failure waits for the owner.
        await asking(d, release_id, "rollback")
        await d.releases.answer(release_id, False, actor="owner")
        done = await settled(d, release_id)
        assert (await d.store.get_task(task.id)).state is TaskState.DEPLOYED
    assert done.state == "deployed" and "kept running on the owner's word" in done.detail
    assert "roll forward with a fix" in done.detail and done.revert_sha is None
    assert bot.deploys() == [done.merge_sha] and bot.running == done.merge_sha == repos.head("main")


async def test_a_migration_release_condemned_by_its_watch_asks_before_rolling_back(tmp_path: Path, repos: Repos,
                                                                                   bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, watch=WATCH, migrations=MIGRATIONS) as d:
        before = repos.head("main")
        number, sha, task = await d.propose(MIGRATION, "def upgrade(): ...\n", fingerprint="fp-keyerror")
        release = await d.releases.approve(number, sha, actor="owner", task=task)
        # Deployed as usual (nothing asked before it): only its failure waits for the owner.
        async with asyncio.timeout(20):
            while d.releases.watched != release.id:
                await asyncio.sleep(0.01)
        assert d.releases.observe("fp-keyerror", 2, "KeyError: 1001") is not None
        waiting = await asking(d, release.id, "rollback")
        assert bot.running == waiting.merge_sha  # the watch condemned it; nothing was rolled back
        await d.releases.answer(release.id, True, actor="owner")
        done = await settled(d, release.id)
    assert "post-deploy watch: the error this release fixed happened again" in waiting.detail
    assert done.state == "rolled_back" and bot.running == before


async def test_a_migration_question_outlives_a_restart_and_is_answered_after_it(tmp_path: Path, repos: Repos,
                                                                                bot: Bot) -> None:
    async with desk(tmp_path, repos, bot, migrations=ASK_FIRST) as d:
        number, sha, task = await d.propose(MIGRATION, "def upgrade(): ...\n")
        release = await d.releases.approve(number, sha, actor="owner", task=task)
        await asking(d, release.id, "deploy")
    async with desk(tmp_path, repos, bot, migrations=ASK_FIRST) as d:
        assert await d.releases.start() == []  # nothing runs while it waits
        assert (await d.releases.rows.get(release.id)).state == "asking"
        await d.releases.answer(release.id, True, actor="owner")
        done = await settled(d, release.id)
    assert done.state == "deployed" and bot.running == done.merge_sha


async def _migration_pr(tmp_path: Path, repos: Repos, bot: Bot, *, broken: bool = False) -> PullRequest:
    async with LocalGitForge(repos.origin, tmp_path / "forge.sqlite3") as forge:
        repos.commit(MIGRATION, "def upgrade(): ...\n", "add a migration", branch="agent/migration")
        if broken:  # the bot's health check fails on a tree holding broken.py
            repos.commit("broken.py", "raise SystemExit\n", "break the bot")
        await forge.push_branch(repos.clone, "agent/migration")
        pr = await forge.open_pr("Add a migration", "body", "agent/migration", "main")
    bot.state.write_text(repos.head("main") or "")
    return pr


def _service(tmp_path: Path, repos: Repos, bot: Bot, *, ask_first: bool = False,
             **env: str) -> tuple[Starlette, Settings]:
    """create_app as `serve` builds it, over the local forge of `repos` and the bot's deploy command; the default
    policy, with `migrations.ask_before_deploy` turned on when `ask_first`."""
    text = policy.default_text()
    if ask_first:
        assert "ask_before_deploy: false" in text
        text = text.replace("ask_before_deploy: false", "ask_before_deploy: true", 1)
    active = policy.load(text)
    settings = Settings.from_env({"AGENT_RUNNER_HOME": str(tmp_path / "home"), "AGENT_API_TOKEN": "owner-token",
                                  "AGENT_RUNNER_REPO": str(repos.origin), "AGENT_RUNNER_WATCH_SECONDS": "0", **env})

    @contextlib.asynccontextmanager
    async def open_backends() -> AsyncIterator[Runtime]:
        async with Store(settings.home / "state.db") as store, DockerSandbox() as sandbox, \
                ModelProxy("http://127.0.0.1:9", "unused") as proxy, \
                LocalGitForge(repos.origin, tmp_path / "forge.sqlite3") as served_forge:
            deps = Deps(home=settings.home, store=store, sandbox=sandbox, proxy=proxy, policy=active,
                        image=settings.sandbox_image, forge=served_forge)
            yield Runtime(settings, deps, lambda _line: None)

    return create_app(settings, runtime=open_backends, deployer=deployer(bot), say=lambda _line: None), settings


OWNER_API = {"Authorization": "Bearer owner-token"}


async def _release_state(client: httpx.AsyncClient, link: str, leave: tuple[str, ...]) -> Any:
    async with asyncio.timeout(30):
        while (release := (await client.get(link, headers=OWNER_API)).json())["state"] in leave:
            await asyncio.sleep(0.05)
    return release


async def test_the_owner_answers_a_migration_release_over_the_api(tmp_path: Path, repos: Repos, bot: Bot) -> None:
    """Through create_app as `serve` builds it: approve over HTTP, the release waits (visible at /releases), the
    answer route is the owner's alone, and its `go` deploys."""
    pr = await _migration_pr(tmp_path, repos, bot)
    app, _ = _service(tmp_path, repos, bot, ask_first=True)
    async with serve_tcp(app, lifespan="on") as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        approved = await client.post("/agent/approve-pr", headers=OWNER_API,
                                     json={"number": pr.number, "head_sha": pr.head_sha})
        assert approved.status_code == 202, approved.text
        link = approved.json()["links"]["release"]
        waiting = await _release_state(client, link, ("approved", "merging", "deploying"))
        answer = f"/releases/{waiting['id']}/answer"
        stranger = await client.post(answer, json={"answer": "go"})
        garbled = await client.post(answer, headers=OWNER_API, json={"answer": "yes"})
        missing = await client.post("/releases/999/answer", headers=OWNER_API, json={"answer": "go"})
        assert bot.deploys() == []  # waiting: nothing deployed, whoever asks
        went = await client.post(answer, headers=OWNER_API, json={"answer": "go"})
        done = await _release_state(client, link, ("asking", "deploying"))
        again = await client.post(answer, headers=OWNER_API, json={"answer": "hold"})
    assert waiting["state"] == "asking"
    assert "waiting for the owner before the deploy" in waiting["detail"] and MIGRATION in waiting["detail"]
    assert [stranger.status_code, garbled.status_code, missing.status_code] == [401, 400, 404]
    assert went.status_code == 200 and went.json()["consent"] == "deploy"
    assert done["state"] == "deployed" and bot.deploys() == [done["merge_sha"]] and bot.running == done["merge_sha"]
    assert again.status_code == 409 and "waits for no answer" in again.json()["error"]


async def test_the_owner_answers_a_migration_release_with_telegrams_go_button(tmp_path: Path, repos: Repos,
                                                                              bot: Bot) -> None:
    """The question reaches the owner's chat (the Bot API stand-in, real aiogram) with Go and Hold; pressing Go
    deploys, and the answer is audited as the chat owner's."""
    from tests.fakes.telegram import FakeTelegram, serve

    pr = await _migration_pr(tmp_path, repos, bot)
    fake, owner_id = FakeTelegram(), 777
    async with serve(fake) as telegram:
        app, _ = _service(tmp_path, repos, bot, ask_first=True, TELEGRAM_BOT_TOKEN=fake.token,
                          TELEGRAM_API_BASE=telegram, OWNER_TELEGRAM_ID=str(owner_id))
        async with serve_tcp(app, lifespan="on", timeout=120) as url, \
                httpx.AsyncClient(base_url=url, timeout=30) as client:
            approved = await client.post("/agent/approve-pr", headers=OWNER_API,
                                         json={"number": pr.number, "head_sha": pr.head_sha})
            link = approved.json()["links"]["release"]

            def question() -> tuple[int, str, str] | None:
                for (chat, mid), message in sorted(fake.messages.items()):
                    for label, data in fake.buttons(chat, mid):
                        if "Go" in label:
                            return mid, str(message.get("text", "")), data
                return None

            await fake.wait_for(lambda: question() is not None, timeout=60)
            found = question()
            assert found is not None
            mid, text, go = found
            assert bot.deploys() == []
            fake.press(owner_id, owner_id, mid, go)
            done = await _release_state(client, link, ("approved", "merging", "deploying", "asking"))
        async with Store(tmp_path / "home" / "state.db") as store:
            answers = await store.audit_log(event="release_answer")
    assert MIGRATION in text and "go (deploy it now) or hold" in text
    assert [label for label, _ in fake.buttons(owner_id, mid)] == ["✅ Go", "✋ Hold"]
    assert done["state"] == "deployed" and bot.running == done["merge_sha"]
    assert [(a.actor, a.detail["answer"]) for a in answers] == [("telegram:owner", "go")]


async def test_a_migration_question_put_with_buttons_takes_their_answer(tmp_path: Path, repos: Repos,
                                                                        bot: Bot) -> None:
    questions: list[str] = []

    async def owner_presses_go(text: str) -> bool:  # the chat's Go / Hold buttons, pressed at once
        questions.append(text)
        return True

    async with desk(tmp_path, repos, bot, migrations=ASK_FIRST, ask=owner_presses_go) as d:
        number, sha, task = await d.propose(MIGRATION, "def upgrade(): ...\n")
        release = await d.releases.approve(number, sha, actor="owner", task=task)
        async with asyncio.timeout(20):
            while (done := await d.releases.rows.get(release.id)).state != "deployed":
                await asyncio.sleep(0.02)
        answers = await d.store.audit_log(task.id, event="release_answer")
    assert len(questions) == 1 and f"answer release {release.id}: go (deploy it now)" in questions[0]
    assert bot.running == done.merge_sha and done.consent == "deploy"
    assert [(a.actor, a.detail["answer"]) for a in answers] == [("telegram:owner", "go")]


async def test_an_api_answer_spends_the_chats_question_and_a_restart_puts_it_again(tmp_path: Path, repos: Repos,
                                                                                  bot: Bot) -> None:
    asked: list[str] = []
    stopped: list[str] = []

    async def owner_away(text: str) -> bool:  # nobody presses anything
        asked.append(text)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stopped.append(text)
            raise
        return False

    async with desk(tmp_path, repos, bot, migrations=ASK_FIRST, ask=owner_away) as d:
        number, sha, task = await d.propose(MIGRATION, "def upgrade(): ...\n")
        release = await d.releases.approve(number, sha, actor="owner", task=task)
        await asking(d, release.id, "deploy")
    assert len(asked) == 1 and len(stopped) == 1  # shut down: its buttons answer nothing now
    async with desk(tmp_path, repos, bot, migrations=ASK_FIRST, ask=owner_away) as d:
        await d.releases.start()
        async with asyncio.timeout(10):
            while len(asked) < 2:
                await asyncio.sleep(0.01)
        await d.releases.answer(release.id, False, actor="owner")
        done = await settled(d, release.id)
        await asyncio.sleep(0)
        assert len(stopped) == 2  # answered over the API: the question put again is withdrawn
    assert done.state == "held" and bot.deploys() == []


@pytest.mark.docker  # the fix task it queues starts a sandbox
async def test_holding_an_unhealthy_migration_release_queues_a_fix_to_roll_forward(tmp_path: Path, repos: Repos,
                                                                                   bot: Bot) -> None:
    pr = await _migration_pr(tmp_path, repos, bot, broken=True)
    app, _ = _service(tmp_path, repos, bot)
    async with serve_tcp(app, lifespan="on") as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        approved = await client.post("/agent/approve-pr", headers=OWNER_API,
                                     json={"number": pr.number, "head_sha": pr.head_sha})
        link = approved.json()["links"]["release"]
        release_id = approved.json()["release_id"]
        async with asyncio.timeout(30):  # deployed as usual, unhealthy: asking about the rollback
            while "before any rollback" not in (unhealthy := (await client.get(link, headers=OWNER_API)).json())[
                    "detail"]:
                await asyncio.sleep(0.05)
        assert bot.running == unhealthy["merge_sha"]  # not rolled back without the owner
        held = await client.post(f"/releases/{release_id}/answer", headers=OWNER_API, json={"answer": "hold"})
        done = await _release_state(client, link, ("asking",))
        tasks = (await client.get("/tasks", headers=OWNER_API)).json()["tasks"]
        fix = (await client.get(f"/tasks/{tasks[0]['id']}", headers=OWNER_API)).json() if tasks else {}
    assert "before any rollback" in unhealthy["detail"] and held.status_code == 200
    assert done["state"] == "deployed" and bot.running == done["merge_sha"] and done["revert_sha"] is None
    assert len(tasks) == 1 and f"fix task {fix['id']} is queued" in done["detail"]
    assert fix["kind"] == "fix" and "fix forward rather than roll back" in fix["prompt"]
    assert "unhealthy after the deploy" in fix["prompt"] and "release-data" in fix["prompt"]
