"""README.md: the "Try the service without a key" block, run verbatim in an empty directory on the scripted model."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runner.config import Settings
from runner.forge import PullRequest, create_forge

README = Path(__file__).parents[1] / "README.md"
HEADING = "### Try the service without a key"
BIN = Path(sys.executable).parent


def readme_block(heading: str) -> str:
    """The first ```sh block after `heading`, exactly as the README shows it."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    found = re.search(r"^```sh\n(.*?)^```$", text[start:], flags=re.S | re.M)
    assert found is not None, f"no ```sh block after {heading!r}"
    return found.group(1)


async def _pull_request(home: Path, bare: Path, number: int) -> PullRequest:
    async with create_forge(Settings.from_env({"AGENT_RUNNER_HOME": str(home)}), repo=bare) as forge:
        return await forge.get_pr(number)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fresh_env(port: int) -> dict[str, str]:
    # A new user's shell: none of this machine's agent-runner, model, forge or chat settings, the venv on PATH.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "AGENT_", "GITHUB_", "TELEGRAM_", "OWNER_", "LOKI_", "ALERT_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["AGENT_RUNNER_PORT"] = str(port)  # the block's one knob, so a busy 8080 on a shared machine is no failure
    return env


def test_readme_try_without_a_key_block_shows_the_real_commands() -> None:
    block = readme_block(HEADING)
    assert "agent-runner sample-repo" in block and "agent-runner serve 2>" in block  # the embedded default model
    assert "ANTHROPIC_API_KEY" not in block  # the point of the section: no key anywhere


@pytest.mark.docker
def test_readme_try_without_a_key_runs_verbatim(tmp_path: Path) -> None:
    block = readme_block(HEADING)
    port = _free_port()
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=_fresh_env(port),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        # The block starts `serve` in the background; whatever happened, nothing of it outlives the test.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    log = (tmp_path / "serve.log").read_text() if (tmp_path / "serve.log").exists() else ""
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}\nserve.log:\n{log[-4000:]}"
    bare = tmp_path / "sample-bot.git"
    assert (bare / "HEAD").is_file() and (bare / "objects").is_dir()  # what `sample-repo` printed and made
    lines = out.splitlines()
    answers = [json.loads(line) for line in lines if line.startswith("{")]
    assert answers[0]["status"] == "ok", out  # /health answered
    assert re.search(r'^event: end\ndata: \{"state": "proposed"', out, flags=re.M), out  # SSE ended at the PR
    assert re.search(r"^#1  [0-9a-f]{12}  agent/", out, flags=re.M), out  # `agent-runner prs`
    assert answers[1]["number"] == 1 and answers[1]["release_id"] == 1, out  # the approval was accepted
    assert lines[-2].startswith("merged; no deployer configured"), out  # the release says what it did not do
    assert lines[-1] == "deployed", out  # and the task followed its release
    # No key and no --scenario: one plain line says what plays the agent, and how to use the real model instead.
    assert re.findall(r"^\[agent-runner\] .*(?:scripted model|ANTHROPIC_API_KEY).*$", log, flags=re.M) == [
        "[agent-runner] no ANTHROPIC_API_KEY: a scripted model plays the agent (fix-balance.yaml); set "
        "ANTHROPIC_API_KEY to use the real model"], log[:2000]
    # One start-up line names the policy in force: which file (here the built-in one), its version, its hash.
    assert re.search(r"^\[agent-runner\] policy <default policy>: version \S+, sha256 [0-9a-f]{12}$", log,
                     flags=re.M), log[:2000]
    pr = asyncio.run(_pull_request(tmp_path / "home", bare, 1))
    # The body's commands were filled in once the PR existed: its number, the bare repository, the head.
    assert f"`agent-runner approve 1 --repo {bare.resolve()} --sha {pr.head_sha}`" in pr.body, pr.body
    assert f"`agent-runner reject 1 --repo {bare.resolve()}`" in pr.body and "approve_pr N" not in pr.body
