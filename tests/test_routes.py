"""The API's read routes over real HTTP: open pull requests with their head and task, the audit log paged and
filtered, tasks with their prompt and pull request."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

import policy
from runner.app import create_app
from runner.forge import local_forge_db
from runner.forge.localgit import LocalGitForge
from runner.gitops import git_env
from runner.model_proxy import ModelProxy
from runner.models import PrRef, RunResult, TaskId, TaskState
from runner.sample import create_sample_repo
from runner.sandbox.docker import DockerSandbox
from runner.service.runtime import Runtime
from runner.store import Store
from runner.supervisor import Deps
from tests.fakes.app import OWNER, app_client, owner_app, owner_settings


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True,
                          check=True).stdout.strip()


def _forge_app(home: Path, repo: Path) -> Starlette:
    """The service over the local forge of `repo`; its tasks are never run (none is submitted)."""
    settings = owner_settings(home, AGENT_RUNNER_REPO=str(repo))

    @contextlib.asynccontextmanager
    async def open_backends() -> AsyncIterator[Runtime]:
        async with Store(home / "state.db") as store, DockerSandbox() as sandbox, \
                ModelProxy("http://127.0.0.1:9", "unused") as proxy, \
                LocalGitForge(repo, local_forge_db(home)) as forge:
            deps = Deps(home=home, store=store, sandbox=sandbox, proxy=proxy, policy=policy.load_default(),
                        image=settings.sandbox_image, forge=forge)
            yield Runtime(settings, deps, lambda _line: None)

    return create_app(settings, runtime=open_backends, say=lambda _line: None)


async def _open_pr(repo: Path, home: Path, work: Path, branch: str) -> tuple[int, str]:
    """A pull request on the local forge from a new commit on `branch`: its number and head."""
    _git("clone", "-q", str(repo), str(work), cwd=repo.parent)
    _git("checkout", "-q", "-b", branch, cwd=work)
    (work / "NOTE.md").write_text(f"{branch}\n")
    _git("add", "NOTE.md", cwd=work)
    _git("-c", "user.name=agent", "-c", "user.email=agent@example.invalid", "commit", "-q", "-m", branch, cwd=work)
    async with LocalGitForge(repo, local_forge_db(home)) as forge:
        sha = await forge.push_branch(work, branch)
        pr = await forge.open_pr(f"Change {branch}", "body", branch, "main")
    return pr.number, sha


async def test_prs_lists_open_pull_requests_with_their_head_and_task(tmp_path: Path) -> None:
    repo, home = await create_sample_repo(tmp_path / "origin"), tmp_path / "home"
    ours, ours_head = await _open_pr(repo, home, tmp_path / "w1", "agent/balance")
    theirs, theirs_head = await _open_pr(repo, home, tmp_path / "w2", "agent/by-hand")
    async with Store(home / "state.db") as store:
        task = await store.create_task(kind="feature", prompt="add /balance", repo=str(repo), source="api",
                                       requested_by="owner", dry_run=False)
        pr = PrRef(ours, f"local://{ours}", "agent/balance", ours_head)
        await store.transition(task.id, TaskState.PROPOSED, result=RunResult(task.id, TaskState.PROPOSED, pr=pr))
    async with app_client(_forge_app(home, repo)) as client:
        prs = (await client.get("/prs", headers=OWNER)).json()["prs"]
        anonymous = await client.get("/prs")
    assert [(p["number"], p["head_sha"], p["task_id"], p["task_state"]) for p in prs] == [
        (ours, ours_head, task.id, "proposed"), (theirs, theirs_head, None, None)]
    assert prs[0]["links"]["task"] == f"/tasks/{task.id}" and prs[0]["links"]["events"] == f"/tasks/{task.id}/events"
    assert prs[1]["links"]["task"] is None and prs[0]["head_branch"] == "agent/balance"
    assert anonymous.status_code == 401


async def test_prs_without_a_forge_says_so_instead_of_listing_nothing(tmp_path: Path) -> None:
    async with app_client(owner_app(tmp_path / "home")) as client:
        response = await client.get("/prs", headers=OWNER)
    assert response.status_code == 409 and response.json() == {"error": "no forge is configured"}


async def test_tasks_show_their_prompt_and_pull_request(tmp_path: Path) -> None:
    app = owner_app(tmp_path / "home")
    async with app_client(app) as client:
        store = app.state.service.store
        plain = await store.create_task(kind="fix", prompt="fix the crash", repo="r", source="api",
                                        requested_by="owner", dry_run=True)
        proposed = await store.create_task(kind="feature", prompt="add /balance", repo="r", source="api",
                                           requested_by="owner", dry_run=False)
        pr = PrRef(7, "https://forge.example/pr/7", "agent/add-balance", "a" * 40)
        await store.transition(proposed.id, TaskState.PROPOSED,
                               result=RunResult(proposed.id, TaskState.PROPOSED, pr=pr))
        listed = {t["id"]: t for t in (await client.get("/tasks", headers=OWNER)).json()["tasks"]}
        one = (await client.get(f"/tasks/{proposed.id}", headers=OWNER)).json()
    assert listed[plain.id]["prompt"] == "fix the crash" and listed[plain.id]["pr"] is None
    expected = {"number": 7, "url": "https://forge.example/pr/7", "branch": "agent/add-balance", "head_sha": "a" * 40}
    assert listed[proposed.id]["pr"] == expected and one["pr"] == expected and one["prompt"] == "add /balance"


async def _audit(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/audit", headers=OWNER, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_audit_is_paged_newest_first_and_filtered_by_task_event_and_time(tmp_path: Path) -> None:
    now = [1000.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    app = owner_app(tmp_path / "home")
    async with app_client(app) as client:
        store: Store = app.state.service.store
        store.clock = clock
        for i in range(5):
            now[0] = 1000.0 + i
            await store.audit(TaskId("t1" if i % 2 == 0 else "t2"), "supervisor", "state" if i < 3 else "approve",
                              {"i": i})
        everything = (await store.audit_page(limit=1000))
        pages, before = [], None
        while True:
            page = await _audit(client, limit=2, **({"before": before} if before is not None else {}))
            pages.append([e["detail"].get("i") for e in page["entries"]])
            if (before := page["next"]) is None:
                break
        by_task = await _audit(client, task_id="t1")
        by_event = await _audit(client, event="approve")
        window = await _audit(client, since=1001, until=1003, task_id="t2")
        bad = await client.get("/audit", headers=OWNER, params={"limit": "lots"})
        anonymous = await client.get("/audit")
    mine = [e for e in everything if e.actor == "supervisor"]
    assert [i for page in pages for i in page][:5] == [4, 3, 2, 1, 0]  # then what the app itself audited
    assert sum(len(p) for p in pages) == len(everything) and all(len(p) <= 2 for p in pages)
    assert [e["detail"]["i"] for e in by_task["entries"]] == [4, 2, 0] and by_task["next"] is None
    assert [e["detail"]["i"] for e in by_event["entries"]] == [4, 3]
    assert [e["detail"]["i"] for e in window["entries"]] == [1]  # t2 has 1 and 3; 1003 is not before 1003
    assert by_task["entries"][0]["event"] == "approve" and by_task["entries"][0]["at"] == 1004.0
    assert len(mine) == 5
    assert bad.status_code == 400 and "limit" in bad.json()["error"]
    assert anonymous.status_code == 401


async def test_health_names_the_policy_active_now(tmp_path: Path) -> None:
    named = policy.default_text().replace('version: "default-2025-06"', 'version: "owner-7"', 1)
    async with app_client(owner_app(tmp_path / "home")) as client:
        before = (await client.get("/health")).json()["policy"]
        assert (await client.put("/policy", headers=OWNER, content=named)).status_code == 200
        after = (await client.get("/health")).json()["policy"]
        active = (await client.get("/policy", headers=OWNER)).json()
    assert before["version"] == "default-2025-06"
    assert after == {"version": "owner-7", "sha256": active["sha256"]} and after["sha256"] != before["sha256"]
