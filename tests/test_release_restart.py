"""The real `agent-runner serve`, SIGKILLed in the middle of a release: the release resumes where it was,
nothing is merged twice, the deploy command it left running is waited for (never run alongside a second one,
never repeated once it ended), and the resumed post-deploy watch still rolls back on an error."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

import policy
from runner.forge import local_forge_db
from runner.forge.localgit import LocalGitForge
from runner.gitops import git_env
from runner.models import TaskState
from runner.sample import create_sample_repo
from runner.store import Store
from tests.fakes.app import ALERT_SECRET, ALERTS, OWNER, TOKEN, serve_process
from tests.fakes.loki import traceback_lines
from tests.fakes.net import free_port


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True,
                          check=True).stdout.strip()


async def propose(repo: Path, home: Path, work: Path) -> tuple[int, str, str]:
    """An agent's pull request on the local forge, and its task waiting at `proposed` (as a run leaves it)."""
    git("clone", "-q", str(repo), str(work), cwd=repo.parent)
    git("checkout", "-q", "-b", "agent/greeting", cwd=work)
    (work / "bot" / "greeting.py").write_text("GREETING = 'hello'\n")
    git("add", "bot/greeting.py", cwd=work)
    git("-c", "user.name=agent", "-c", "user.email=agent@example.invalid", "commit", "-q", "-m", "greeting", cwd=work)
    async with LocalGitForge(repo, local_forge_db(home)) as forge:
        sha = await forge.push_branch(work, "agent/greeting")
        pr = await forge.open_pr("Add a greeting", "body", "agent/greeting", "main")
    async with Store(home / "state.db") as store:
        task = await store.create_task(kind="feature", prompt="add a greeting", repo=str(repo), source="api",
                                       requested_by="owner", dry_run=False)
        await store.transition(task.id, TaskState.PROPOSED, result={"pr": {"number": pr.number, "head_sha": sha}})
    return pr.number, sha, task.id


def runs_of(log: str) -> list[tuple[str, str, float, float | None]]:
    """(action, sha, start, end) of each run the deploy script logged, in the order they started."""
    runs: list[tuple[str, str, float, float | None]] = []
    for line in log.splitlines():
        edge, action, sha, at = line.split()
        if edge == "start":
            runs.append((action, sha, float(at), None))
        else:
            index = next(i for i, r in enumerate(runs) if r[:2] == (action, sha) and r[3] is None)
            runs[index] = (action, sha, runs[index][2], float(at))
    return runs


async def until(client: httpx.AsyncClient, path: str, check: Any, timeout: float = 60) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            body: dict[str, Any] = (await client.get(path, headers=OWNER)).json()
            if check(body):
                return body
            await asyncio.sleep(0.1)


@pytest.mark.docker  # serve opens the sandbox backend (and reaps orphans) at start-up
async def test_serve_killed_mid_deploy_and_mid_watch_resumes_merges_once_and_still_rolls_back(
        tmp_path: Path) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    home = tmp_path / "home"
    number, sha, task_id = await propose(repo, home, tmp_path / "work")
    before = git("--git-dir", str(repo), "rev-parse", "main", cwd=tmp_path)
    log, slow, running = tmp_path / "deploys.log", tmp_path / "slow", tmp_path / "running"
    slow.touch()
    # The operator's deploy command: logs its start and end with times, hangs while `slow` exists (so the test
    # can kill the supervisor mid-deploy), and records what runs. Health is its exit status.
    deploy = (f'echo "start $AGENT_RUNNER_DEPLOY_ACTION $AGENT_RUNNER_DEPLOY_SHA $(date +%s.%N)" >> {log}; '
              f'while [ -e {slow} ]; do sleep 0.1; done; echo "$AGENT_RUNNER_DEPLOY_SHA" > {running}; '
              f'echo "end $AGENT_RUNNER_DEPLOY_ACTION $AGENT_RUNNER_DEPLOY_SHA $(date +%s.%N)" >> {log}')
    # No alert may start a fix task here (it would want a model): auto-fixes are off, so an alert that does
    # not condemn the release is refused (429), and one that does is answered `rolled_back` before any limit.
    strict = tmp_path / "policy.yaml"
    text = policy.default_text()
    assert "autofixes_per_hour: 5 " in text
    strict.write_text(text.replace("autofixes_per_hour: 5 ", "autofixes_per_hour: 0 ", 1))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "GITHUB_", "AGENT_", "LOKI"))}
    env.update(AGENT_RUNNER_HOME=str(home), AGENT_RUNNER_REPO=str(repo), AGENT_RUNNER_PORT=str(port),
               AGENT_API_TOKEN=TOKEN, ALERT_WEBHOOK_SECRET=ALERT_SECRET, ANTHROPIC_API_KEY="unused",
               ANTHROPIC_BASE_URL="http://127.0.0.1:9", AGENT_RUNNER_POLICY=str(strict),
               AGENT_RUNNER_DEPLOYER="command", AGENT_RUNNER_DEPLOY_COMMAND=deploy,
               AGENT_RUNNER_WATCH_SECONDS="600", AGENT_RUNNER_WATCH_INTERVAL="1")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        # 1. approved, merged, deploying: killed while the deploy command runs.
        async with serve_process(env, port) as proc:
            approved = await client.post("/agent/approve-pr", headers=OWNER, json={"number": number, "head_sha": sha})
            assert approved.status_code == 202, approved.text
            release_path = approved.json()["links"]["release"]
            deploying = await until(client, release_path, lambda r: r["state"] == "deploying")
            async with asyncio.timeout(30):
                while not log.exists():
                    await asyncio.sleep(0.05)
            proc.kill()  # SIGKILL: no shutdown code runs; the deploy command (its own session) runs on
            await proc.wait()

        # 2. restarted while that deploy still runs: the release waits for it, starts no second one, and keeps
        #    its result once it ends.
        async with serve_process(env, port) as proc:
            waiting = await until(client, release_path, lambda r: "waiting for the deploy" in r["detail"])
            await asyncio.sleep(1.5)  # long enough for a second deploy to have started, were one started
            starts_while_waiting = [line for line in log.read_text().splitlines() if line.startswith("start")]
            slow.unlink()  # the orphaned deploy ends
            watching = await until(client, release_path, lambda r: r["state"] == "watching")
            task = (await client.get(f"/tasks/{task_id}", headers=OWNER)).json()
            proc.kill()
            await proc.wait()

        # 3. restarted mid-watch: the watch resumes, and an error the release brought rolls it back.
        async with serve_process(env, port):
            resumed = await until(client, release_path, lambda r: r["state"] == "watching")
            report = {"traceback": "\n".join(traceback_lines()), "service": "bot"}
            async with asyncio.timeout(30):
                while True:  # the resumed watch listens once it has read the known errors
                    alert = await client.post("/agent/auto-fix", headers=ALERTS, json=report)
                    if alert.json()["alerts"][0]["status"] == "rolled_back":
                        break
                    await asyncio.sleep(0.2)
            done = await until(client, release_path, lambda r: r["state"] == "rolled_back")
            after = (await client.get(f"/tasks/{task_id}", headers=OWNER)).json()
            metrics = (await client.get("/metrics")).text
    merge = deploying["merge_sha"]
    runs = runs_of(log.read_text())
    assert [(action, sha) for action, sha, _, _ in runs] == [("deploy", merge), ("rollback", before)]
    ends = [end for _, _, _, end in runs]
    assert None not in ends  # every run went to its end
    assert all(end is not None and end <= later[2]  # none began before the one before it ended
               for end, later in zip(ends, runs[1:], strict=False))
    assert len(starts_while_waiting) == 1 and waiting["fence"]["action"] == "deploy"
    assert watching["merge_sha"] == merge and task["state"] == "deployed" and watching["fence"] is None
    assert watching["deployed"]["ok"] and "begun by a previous supervisor process ran to its end" in \
        watching["deployed"]["detail"]
    assert resumed["watch_until"] == watching["watch_until"]  # the same window, not a new one
    main_log = git("--git-dir", str(repo), "log", "--format=%s", "main", cwd=tmp_path).splitlines()
    assert len(main_log) == 3 and main_log[0].startswith("Revert")  # one merge, never two, then its revert
    assert done["revert_sha"] == git("--git-dir", str(repo), "rev-parse", "main", cwd=tmp_path)
    assert running.read_text().strip() == before
    assert after["state"] == "rolled_back" and "post-deploy watch: a new error appeared" in after["reason"]
    assert 'agent_runner_releases{state="rolled_back"} 1' in metrics.splitlines()
