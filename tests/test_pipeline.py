"""The steps a task and a follow-up share (runner.pipeline); their use in order is tested with the supervisor
(test_supervisor) and the follow-up (test_followups)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

import policy
from runner.model_proxy import ModelProxy
from runner.pipeline import Deps, RunScope, file_diff
from runner.sandbox.base import SandboxSpec
from runner.store import Store
from tests.fakes.sandbox import FakeSandbox


def test_file_diff_picks_one_files_section() -> None:
    diff = ("diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+b\n"
            "diff --git a/requirements.txt b/requirements.txt\n@@ -0,0 +1 @@\n+x\n")
    wanted = "diff --git a/requirements.txt b/requirements.txt\n@@ -0,0 +1 @@\n+x\n"
    assert file_diff(diff, "requirements.txt") == wanted
    assert file_diff(diff, "missing.txt") == ""


async def _status(sock: Path, token: str) -> int:
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)), base_url="http://model") as c:
        answer = await c.post("/v1/messages", headers={"x-api-key": token}, json={
            "model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        return answer.status_code


async def test_close_takes_down_what_the_run_started_and_nothing_of_another(tmp_path: Path) -> None:
    """Whatever step failed: every container still up is removed, the checkout in flight is cancelled, the socket's
    directory is gone, and the run's model token is refused (401), while another run's token still passes."""
    sandbox = FakeSandbox()
    # The upstream is a port of this machine's loopback that nothing listens on: a live token gets a gateway error.
    async with Store(tmp_path / "state.db") as store, ModelProxy("http://127.0.0.1:9", "unused") as proxy:
        deps = Deps(home=tmp_path, store=store, sandbox=sandbox, proxy=proxy, policy=policy.load_default(),
                    image="agent-runner/sandbox:latest")
        scope, other = RunScope(deps, "t1"), RunScope(deps, "t2")
        for run in (scope, other):
            box = await sandbox.start(SandboxSpec(run.work_id, "img", None))
            run.containers.append(box)
        scope.populating = asyncio.ensure_future(asyncio.sleep(3600))
        sock_dir = scope.socket_dir()
        assert sock_dir.stat().st_mode & 0o777 == 0o755  # the sandbox user reaches the socket in it
        mine, theirs = proxy.issue_token("t1"), proxy.issue_token("t2")
        async with proxy.serve_unix(tmp_path / "model.sock") as sock:
            await scope.close()
            assert await _status(sock, mine) == 401
            assert await _status(sock, theirs) != 401
        assert scope.populating.cancelled()
        assert not sock_dir.exists()
        assert [box.container.task_id for box in sandbox.boxes.values()] == ["t2"]
        await scope.close()  # twice is harmless: a `finally` may meet a scope already closed
