"""A supervisor killed mid-follow-up (SIGKILL of `serve`, so nothing of it runs its clean-up): the next start fails
the follow-up cleanly (nothing was pushed, the PR stays at the head the owner was shown and can be approved
there), reaps its sandbox, and the PR takes a new follow-up; without a kept session that one starts a new session
and says so."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import docker
import httpx
import pytest

from runner.gitops import git_env
from runner.sample import create_sample_repo
from runner.service.followups import FollowUpStore
from runner.store import Store

pytestmark = pytest.mark.docker

FOLLOW_UP = Path(__file__).parents[1] / "runner" / "data" / "scenarios" / "follow-up.yaml"
AUTH = {"Authorization": "Bearer api-token"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _serve(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "runner.cli", "serve", "--scenario",
                                                str(FOLLOW_UP), env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)


async def _healthy(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(90):  # two shared cores: start-up takes seconds
        while True:
            try:
                if (await client.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)


async def test_serve_killed_mid_follow_up_fails_it_cleanly_and_the_pr_stays_usable(tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    home = tmp_path / "home"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_", "TELEGRAM"))}
    env.update(AGENT_RUNNER_HOME=str(home), AGENT_RUNNER_REPO=str(repo), AGENT_RUNNER_PORT=str(port),
               AGENT_API_TOKEN="api-token")
    engine = docker.from_env()
    task_id = ""
    proc = await _serve(env)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as client:
            await _healthy(client)
            task_id = (await client.post("/agent/command", json={
                "prompt": "fix average_spend for users without spending, and add a greet(name) helper"})).json()[
                "task_id"]
            async with asyncio.timeout(300):
                while (task := (await client.get(f"/tasks/{task_id}")).json())["state"] not in (
                        "proposed", "failed", "timed_out"):
                    await asyncio.sleep(1)
            assert task["state"] == "proposed", task
            pr = task["pr"]
            answer = await client.post(f"/tasks/{task_id}/follow-ups", json={"text": "greet with a !"})
            assert answer.status_code == 202, answer.text
            follow_id = answer.json()["follow_up"]
            box = f"agent-runner-{task_id}-f{follow_id}"
            async with asyncio.timeout(120):  # the follow-up's sandbox is up: it is mid-run
                while not engine.containers.list(filters={"name": box}):
                    await asyncio.sleep(0.2)
            proc.kill()
            await proc.wait()

        proc = await _serve(env)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=30) as client:
            await _healthy(client)
            rows = FollowUpStore(home / "state.db")
            try:
                follow = await rows.get(follow_id)
            finally:
                await rows.aclose()
            assert follow.state == "failed", follow
            assert "supervisor stopped during the follow-up; nothing was pushed" in follow.reason
            assert pr["head_sha"][:12] in follow.reason
            async with Store(home / "state.db") as store:
                after = await store.get_task(task_id)
            assert after.state.value == "proposed" and after.result is not None and after.result.pr is not None
            assert after.result.pr.head_sha == pr["head_sha"]
            branch = subprocess.run(["git", "--git-dir", str(repo), "rev-parse", f"refs/heads/{pr['branch']}"],
                                    env=git_env(), capture_output=True, text=True, check=True).stdout.strip()
            assert branch == pr["head_sha"]  # nothing reached the forge
            assert not engine.containers.list(all=True, filters={"name": box})  # reaped at the start
            # The PR is as the owner last saw it: a new follow-up is admitted, the one left is not "running".
            # Its kept session is gone here, so it starts a new one and says why; the scripted model, given a new
            # conversation, plays its first turn again (the fix's Edit applies once more): a commit all the same.
            shutil.rmtree(home / "tasks" / task_id / "session")
            again = await client.post(f"/tasks/{task_id}/follow-ups", json={"text": "greet with a !"})
            assert again.status_code == 202, again.text
            rows = FollowUpStore(home / "state.db")
            try:
                async with asyncio.timeout(300):
                    while (second := await rows.get(again.json()["follow_up"])).open:
                        await asyncio.sleep(1)
            finally:
                await rows.aclose()
            assert second.session == "new: no session was kept for the task", second
            assert second.state == "done" and second.base_sha == pr["head_sha"], second
            parent = subprocess.run(["git", "--git-dir", str(repo), "rev-parse", f"{second.head_sha}^"],
                                    env=git_env(), capture_output=True, text=True, check=True).stdout.strip()
            assert parent == pr["head_sha"]
    finally:
        proc.kill()
        await proc.wait()
        for container in engine.containers.list(all=True, filters={"label": "org.agent-runner.task"}):
            if task_id and container.name.startswith(f"agent-runner-{task_id}"):
                container.remove(force=True)  # the second follow-up's, still running when the test ends
