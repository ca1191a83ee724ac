"""The design's key claim, end to end: the CLI runs in the container, its decisions are made here."""

from __future__ import annotations

import os
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from claude_agent_sdk import ClaudeAgentOptions, HookMatcher, ResultMessage, query

from runner import tasklock
from runner.agent import FORWARDED_ENV, write_cli_wrapper
from runner.sandbox.base import MODEL_FORWARD_PORT, SandboxSpec
from runner.sandbox.docker import DockerSandbox
from runner.scripted_model import Scenario, TextBlock, ToolUseBlock, serve_scripted_model
from tests.sandbox.runtimes import RUNTIMES, need_runtime

pytestmark = pytest.mark.docker


def _scenario() -> Scenario:
    return Scenario.of(
        [TextBlock("Writing the file."),
         ToolUseBlock("Write", {"file_path": "/workspace/hello.txt", "content": "hello from the sandbox\n"})],
        [ToolUseBlock("Bash", {"command": "id -u > /workspace/uid.txt", "description": "who am I"})],
        [ToolUseBlock("Bash", {"command": "touch /workspace/denied.txt", "description": "must never run"})],
        final_text="All done.",
    )


def _sockets(tmp_path: Path) -> Path:
    sockets = tmp_path / "sock"
    sockets.mkdir()
    os.chmod(sockets, 0o755)
    return sockets


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_cli_in_container_is_gated_by_hook_in_this_process(tmp_path: Path, sandbox_image: str,
                                                                 runtime: str) -> None:
    sockets = _sockets(tmp_path)
    seen: list[tuple[str, dict[str, Any]]] = []

    async def gate(hook_input: Any, tool_use_id: str | None, context: Any) -> Any:
        seen.append((hook_input["tool_name"], hook_input["tool_input"]))
        denied = "denied.txt" in str(hook_input["tool_input"])
        return {"hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": "deny" if denied else "allow",
            "permissionDecisionReason": "the test's gate said so",
        }}

    task_id = f"smoke-{uuid.uuid4().hex[:8]}"
    lock = tmp_path / "owner.lock"  # held, so no other supervisor's reaper takes this container for an orphan
    async with (serve_scripted_model(_scenario(), uds=sockets / "model.sock") as model,
                DockerSandbox(runtime=need_runtime(runtime)) as sandbox):
        os.chmod(sockets / "model.sock", 0o666)
        with tasklock.hold(lock):
            container = await sandbox.start(SandboxSpec(task_id, sandbox_image, sockets, owner_lock=lock))
            try:
                command = sandbox.attach_command(container, ["claude"], FORWARDED_ENV)
                options = ClaudeAgentOptions(
                    cli_path=write_cli_wrapper(tmp_path / "bin", command),
                    cwd=tmp_path,
                    tools=["Write", "Bash", "Read"],
                    setting_sources=[],
                    hooks={"PreToolUse": [HookMatcher(matcher=None, hooks=[gate], on_failure="block")]},
                    env={"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{MODEL_FORWARD_PORT}",
                         "ANTHROPIC_API_KEY": "smoke-token", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                         "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1"},
                )
                results = [m async for m in query(prompt="Make hello.txt", options=options)
                           if isinstance(m, ResultMessage)]
                probe = await sandbox.exec(container, ["sh", "-c", "cat /workspace/hello.txt"], timeout=30)
                await sandbox.kill_processes(container)
                await sandbox.copy_out(container, tmp_path / "out.tar")
            finally:
                await sandbox.stop(container)

    assert results and not results[-1].is_error
    assert [tool for tool, _ in seen] == ["Write", "Bash", "Bash"]
    assert "hello from the sandbox" in probe.output
    files = _members(tmp_path / "out.tar")  # the workspace is the container's own: read back by tar
    assert files["./hello.txt"] == b"hello from the sandbox\n"
    assert files["./uid.txt"].strip() == b"1000"  # the CLI ran as the sandbox user
    assert "./denied.txt" not in files
    # The model was reached only through the mounted socket, with the token the test gave.
    agent_requests = [r for r in model.requests if r.path.endswith("/v1/messages")]
    assert agent_requests and all(r.headers.get("x-api-key") == "smoke-token" for r in agent_requests)


async def test_stop_removes_the_container_and_reap_finds_orphans(tmp_path: Path, sandbox_image: str) -> None:
    async with DockerSandbox() as sandbox:
        kept = await sandbox.start(SandboxSpec(f"keep-{uuid.uuid4().hex[:6]}", sandbox_image))
        orphan = await sandbox.start(SandboxSpec(f"orphan-{uuid.uuid4().hex[:6]}", sandbox_image))
        try:
            live = set(await sandbox.running()) - {orphan.task_id}
            reaped = await sandbox.reap(keep=live)
            assert reaped == [orphan.task_id]
            assert kept.task_id in await sandbox.running()
        finally:
            await sandbox.stop(kept)
            await sandbox.stop(orphan)
        assert kept.task_id not in await sandbox.running()
        await sandbox.stop(kept)  # idempotent
