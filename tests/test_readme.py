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
import uuid
from pathlib import Path
from typing import Any

import pytest

from runner.config import Settings
from runner.deploy.docker import IMAGE_REPO_PREFIX, LABEL_SHA
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


def _fresh_env(port: int, bot: str, bot_port: int) -> dict[str, str]:
    # A new user's shell: none of this machine's agent-runner, model, forge or chat settings, the venv on PATH.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "AGENT_", "GITHUB_", "TELEGRAM_", "OWNER_", "LOKI_", "ALERT_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # The block's knobs, so a busy 8080 or 8000 on a shared machine is no failure, and the bot's container has a
    # name of this run's own that the test removes, whatever happened.
    env.update(AGENT_RUNNER_PORT=str(port), AGENT_RUNNER_DEPLOY_SERVICE=bot, AGENT_RUNNER_DEPLOY_PORT=str(bot_port))
    return env


def _remove_bot(client: Any, name: str) -> None:
    """The bot's container and every image the deployer built for it."""
    for container in client.containers.list(all=True, filters={"name": f"^{name}$"}):
        container.remove(force=True)
    for image in client.images.list(name=f"{IMAGE_REPO_PREFIX}{name}"):
        client.images.remove(image.id, force=True)


def test_readme_try_without_a_key_block_shows_the_real_commands() -> None:
    block = readme_block(HEADING)
    assert "agent-runner sample-repo" in block and "agent-runner serve 2>" in block  # the embedded default model
    assert "AGENT_RUNNER_DEPLOYER=docker" in block  # released as the demo releases: a container, health-checked
    assert "ANTHROPIC_API_KEY" not in block  # the point of the section: no key anywhere


@pytest.mark.docker
def test_readme_try_without_a_key_runs_verbatim(tmp_path: Path, docker_client: Any) -> None:
    block = readme_block(HEADING)
    port, bot_port = _free_port(), _free_port()
    bot = f"readme-bot-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path,
                            env=_fresh_env(port, bot, bot_port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=900)
        running = docker_client.containers.list(filters={"name": f"^{bot}$"})
    finally:
        # The block starts `serve` in the background and the release starts the bot's container; whatever
        # happened, nothing of either outlives the test.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _remove_bot(docker_client, bot)
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
    # Merged, built, started, health-checked, watched: what the release says, and the bot answering as fixed.
    assert lines[-3] == "deployed and healthy; watching its errors for 600s", out
    assert json.loads(lines[-2])["balance"], out  # /balance?user=2, the crash the task fixed, answers 200
    assert lines[-1] == "deployed", out  # and the task followed its release
    main = subprocess.run(["git", "rev-parse", "main"], cwd=bare, capture_output=True, text=True, check=True)
    [container] = running
    assert container.labels[LABEL_SHA] == main.stdout.strip(), container.labels  # the merge runs, nothing older
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
