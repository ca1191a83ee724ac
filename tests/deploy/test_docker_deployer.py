"""DockerDeployer against the real engine: the sample bot built, run, health-checked and rolled back."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from runner.deploy import DeployError, DeployEvent, DeploySource, create_deployer, deploy_with_rollback
from runner.deploy.docker import (
    DEFAULT_BASE_IMAGES,
    IMAGE_REPO_PREFIX,
    LABEL_ROLE,
    LABEL_SERVICE,
    LABEL_SHA,
    DockerDeployer,
    check_deployer_engine,
)
from runner.errors import ConfigError
from runner.gitops import head_sha, run_git
from runner.sample import create_sample_repo
from tests.fakes.net import free_port

pytestmark = pytest.mark.docker

BASE_IMAGE = "agent-runner/base:bookworm"
HEALTH_OK = 'self._reply(200, {"status": "ok", "version": VERSION})'


@dataclass(frozen=True)
class SampleRepo:
    bare: Path
    v1: str  # the sample bot as shipped
    v2: str  # a healthy change
    broken: str  # /health answers 500
    crashing: str  # the app dies at start


async def _commit(work: Path, path: str, old: str, new: str, message: str) -> str:
    file = work / path
    text = file.read_text()
    assert old in text, f"{old!r} not in {path}"
    file.write_text(text.replace(old, new))
    await run_git(["commit", "--quiet", "-am", message], cwd=work)
    return await head_sha(work)


@pytest.fixture
async def sample(tmp_path: Path) -> SampleRepo:
    bare = await create_sample_repo(tmp_path)
    work = tmp_path / "work"
    await run_git(["clone", "--quiet", str(bare), str(work)])
    v1 = await head_sha(work)
    v2 = await _commit(work, "README.md", "", "\nA healthy change.\n", "docs: a healthy change")
    await run_git(["push", "--quiet", "origin", "HEAD:main"], cwd=work)
    broken = await _commit(work, "bot/app.py", HEALTH_OK, HEALTH_OK.replace("200", "500"), "health says 500")
    await run_git(["reset", "--quiet", "--hard", v2], cwd=work)
    crashing = await _commit(work, "bot/app.py", "def main() -> None:\n",
                             "def main() -> None:\n    raise SystemExit('boom at start')\n", "crash at start")
    # Unmerged commits are still objects in the bare repo, as a PR's head is on the forge.
    await run_git(["push", "--quiet", "origin", f"{broken}:refs/heads/broken", f"{crashing}:refs/heads/crashing"],
                  cwd=work)
    return SampleRepo(bare, v1, v2, broken, crashing)


@pytest.fixture
def service(docker_client: Any) -> Iterator[str]:
    name = f"ar-test-{uuid.uuid4().hex[:10]}"
    yield name
    for container in docker_client.containers.list(all=True, filters={"label": f"{LABEL_SERVICE}={name}"}):
        container.remove(force=True)
    for image in docker_client.images.list(name=f"{IMAGE_REPO_PREFIX}{name}"):
        docker_client.images.remove(image.id, force=True)


@pytest.fixture
async def http_deployer(service: str, docker_client: Any, tmp_path: Path) -> AsyncIterator[DockerDeployer]:
    deployer = DockerDeployer(
        service,
        build_base_image=BASE_IMAGE,
        port=free_port(),
        health_timeout=6.0,
        health_interval=0.2,
        build_network="none",
        version_env="BOT_VERSION",
        work_dir=tmp_path,
        client=docker_client,
    )
    async with deployer:
        yield deployer


async def _version(port: int | None) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/health")
    assert response.status_code == 200, response.text
    version: str = response.json()["version"]
    return version


async def test_docker_deployer_deploys_healthy_change_and_rolls_back_broken_one(
    http_deployer: DockerDeployer, sample: SampleRepo, docker_client: Any
) -> None:
    repo = str(sample.bare)
    first = await http_deployer.deploy(DeploySource(repo, sample.v1))
    assert first.succeeded, first
    assert await _version(http_deployer.port) == sample.v1

    events: list[DeployEvent] = []
    healthy = await deploy_with_rollback(
        http_deployer, DeploySource(repo, sample.v2, previous_sha=sample.v1), on_event=events.append
    )
    assert healthy.status == "deployed", healthy
    assert healthy.rolled_back is None
    assert await _version(http_deployer.port) == sample.v2
    assert [e.kind for e in events] == ["deploying", "deployed"]

    events.clear()
    outcome = await deploy_with_rollback(
        http_deployer, DeploySource(repo, sample.broken, previous_sha=sample.v2), on_event=events.append
    )
    assert outcome.status == "rolled_back", outcome
    assert outcome.deployed.ok and not outcome.deployed.healthy
    assert "-> 500" in outcome.deployed.detail
    assert outcome.rolled_back is not None and outcome.rolled_back.succeeded
    assert "image reused" in outcome.rolled_back.detail  # no rebuild on rollback
    assert await _version(http_deployer.port) == sample.v2
    assert [e.kind for e in events] == ["deploying", "unhealthy", "rolling_back", "rolled_back"]

    running = docker_client.containers.get(http_deployer.service)
    assert running.labels[LABEL_ROLE] == "deployed"
    assert running.labels[LABEL_SHA] == sample.v2
    print(
        f"\ntimings: first deploy (build) {first.duration_seconds:.2f}s; healthy change "
        f"{healthy.deployed.duration_seconds:.2f}s; broken change {outcome.deployed.duration_seconds:.2f}s "
        f"(health timeout {http_deployer.health_timeout:g}s); rollback {outcome.rolled_back.duration_seconds:.2f}s"
    )
    for result in (first, healthy.deployed, outcome.deployed, outcome.rolled_back):
        print(f"  {result.detail[:200]}")


async def test_docker_deployer_rolls_back_crash_at_start_by_docker_health(
    service: str, sample: SampleRepo, docker_client: Any, tmp_path: Path
) -> None:
    # No published port, no network: health is the container's own HEALTHCHECK, judged by the engine.
    deployer = create_deployer(
        "docker",
        service=service,
        build_base_image=BASE_IMAGE,
        network="none",
        build_network="none",
        health_timeout=20.0,
        version_env="BOT_VERSION",
        work_dir=tmp_path,
        client=docker_client,
    )
    repo = str(sample.bare)
    async with deployer:
        first = await deployer.deploy(DeploySource(repo, sample.v2))
        assert first.succeeded, first
        assert "Docker health healthy" in first.detail
        outcome = await deploy_with_rollback(deployer, DeploySource(repo, sample.crashing, previous_sha=sample.v2))
    assert outcome.status == "rolled_back", outcome
    assert not outcome.deployed.healthy
    assert "boom at start" in outcome.deployed.logs_tail
    # A crash is seen at once (the container exits), not after the health timeout.
    assert outcome.deployed.duration_seconds < 15.0
    running = docker_client.containers.get(service)
    assert running.labels[LABEL_SHA] == sample.v2
    probe = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8000/health').read().decode())"
    code, out = running.exec_run(["python3", "-c", probe])
    assert code == 0
    assert json.loads(out)["version"] == sample.v2
    print(f"\ncrash: deploy {outcome.deployed.duration_seconds:.2f}s, rollback "
          f"{outcome.rolled_back.duration_seconds if outcome.rolled_back else 0:.2f}s")


async def test_docker_deployer_unknown_sha_raises_and_leaves_service_alone(
    http_deployer: DockerDeployer, sample: SampleRepo, docker_client: Any
) -> None:
    assert (await http_deployer.deploy(DeploySource(str(sample.bare), sample.v1))).succeeded
    with pytest.raises(DeployError, match="could not check out"):
        await http_deployer.deploy(DeploySource(str(sample.bare), "f" * 40))
    with pytest.raises(DeployError, match="full commit SHA"):
        await http_deployer.deploy(DeploySource(str(sample.bare), "--upload-pack=evil"))
    assert await _version(http_deployer.port) == sample.v1


async def test_docker_deployer_refuses_to_replace_a_container_it_did_not_start(
    http_deployer: DockerDeployer, sample: SampleRepo, docker_client: Any
) -> None:
    stranger = docker_client.containers.create(
        BASE_IMAGE, ["sleep", "60"], name=http_deployer.service, labels={LABEL_SERVICE: http_deployer.service}
    )
    try:
        with pytest.raises(DeployError, match="did not deploy"):
            await http_deployer.deploy(DeploySource(str(sample.bare), sample.v1))
        stranger.reload()
        assert stranger.status == "created"
    finally:
        stranger.remove(force=True)


async def test_docker_deployer_build_failure_keeps_old_container(
    http_deployer: DockerDeployer, sample: SampleRepo, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    await run_git(["checkout", "--quiet", sample.v1], cwd=work)
    unbuildable = await _commit(work, "Dockerfile", "WORKDIR /app\n", "WORKDIR /app\nRUN exit 7\n", "unbuildable")
    await run_git(["push", "--quiet", "origin", f"{unbuildable}:refs/heads/unbuildable"], cwd=work)
    assert (await http_deployer.deploy(DeploySource(str(sample.bare), sample.v1))).succeeded
    outcome = await deploy_with_rollback(
        http_deployer, DeploySource(str(sample.bare), unbuildable, previous_sha=sample.v1)
    )
    assert not outcome.deployed.ok
    assert "image build failed" in outcome.deployed.detail
    assert "left as it was" in outcome.deployed.detail
    assert outcome.status == "rolled_back"
    assert await _version(http_deployer.port) == sample.v1


@pytest.mark.docker
async def test_docker_deployer_replaces_a_compose_services_container_keeping_its_settings(
        sample: SampleRepo, docker_client: Any, tmp_path: Path) -> None:
    """The shipped stack runs the bot as a compose service: a deploy replaces compose's container as
    `docker compose up` would (name, compose labels, environment, port, network alias, healthcheck), and a
    rollback does it again with the previous version."""
    import shutil
    import subprocess

    compose = [c for c in (["docker-compose"], ["docker", "compose"])
               if shutil.which(c[0]) and subprocess.run([*c, "version"], capture_output=True).returncode == 0][0]
    project, port = f"arc{uuid.uuid4().hex[:8]}", free_port()
    context = tmp_path / "bot-src"
    await run_git(["clone", "--quiet", str(sample.bare), str(context)])
    (tmp_path / "compose.yaml").write_text(
        "services:\n"
        "  bot:\n"
        f"    build: {{context: {context}, args: {{BASE_IMAGE: {BASE_IMAGE}}}, network: none}}\n"
        f"    image: {project}-bot:compose\n"
        "    environment: {PORT: '8000', BOT_GREETING: from-compose}\n"
        f"    ports: ['127.0.0.1:{port}:8000']\n"
        "    restart: unless-stopped\n"
        "    healthcheck:\n"
        "      test: [CMD, python3, -c, \"import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health')\"]\n"
        "      interval: 1s\n"
        "    networks: {app: {aliases: [the-bot]}}\n"
        "networks: {app: {}}\n")
    run = [*compose, "-p", project, "-f", str(tmp_path / "compose.yaml")]
    up = subprocess.run([*run, "up", "-d", "--build"], capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    try:
        [original] = docker_client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
        deployer = DockerDeployer("bot", build_base_image=BASE_IMAGE, port=port, health_timeout=20.0,
                                  health_interval=0.2, build_network="none", version_env="BOT_VERSION",
                                  work_dir=tmp_path, client=docker_client)
        async with deployer:
            deployed = await deployer.deploy(DeploySource(str(sample.bare), sample.v2, previous_sha=sample.v1))
            assert deployed.ok and deployed.healthy, deployed.detail
            assert await _version(port) == sample.v2
            [replaced] = docker_client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
            replaced_tags = replaced.image.tags
            rolled = await deployer.rollback(DeploySource(str(sample.bare), sample.v1))
            assert rolled.healthy and await _version(port) == sample.v1, rolled.detail
        listed = subprocess.run([*run, "ps", "-q"], capture_output=True, text=True).stdout.split()
    finally:
        subprocess.run([*run, "down", "-v", "--rmi", "local"], capture_output=True)
        for image in docker_client.images.list(name=f"{IMAGE_REPO_PREFIX}bot"):
            docker_client.images.remove(image.id, force=True)
    assert replaced.name == original.name and replaced.id != original.id
    assert replaced_tags == [f"{IMAGE_REPO_PREFIX}bot:{sample.v2[:12]}"]
    assert replaced.labels["com.docker.compose.service"] == "bot" and replaced.labels[LABEL_SHA] == sample.v2
    env = dict(e.split("=", 1) for e in replaced.attrs["Config"]["Env"])
    assert env["BOT_GREETING"] == "from-compose" and env["BOT_VERSION"] == sample.v2  # compose's, and ours
    aliases = next(iter(replaced.attrs["NetworkSettings"]["Networks"].values()))["Aliases"]
    assert "the-bot" in aliases and "bot" in aliases
    assert replaced.attrs["Config"]["Healthcheck"]["Interval"] == 1_000_000_000
    assert len(listed) == 1  # compose still sees exactly one container for its service


async def test_docker_deployer_settles_a_step_from_what_the_service_container_runs(
    http_deployer: DockerDeployer, sample: SampleRepo
) -> None:
    """After a restart, a deploy whose container already runs its SHA is not repeated; one of another SHA is."""
    repo = str(sample.bare)
    before = await http_deployer.deploy(DeploySource(repo, sample.v1))
    assert before.succeeded, before
    done = http_deployer.fence("release-1-deploy-1", "deploy", sample.v1)
    adopted = await http_deployer.settle(done, DeploySource(repo, sample.v1))
    assert adopted is not None and adopted.succeeded, adopted
    assert "found running as" in adopted.detail and "begun by a previous supervisor process" in adopted.detail
    assert done.place is None  # nothing of a docker step outlives its supervisor
    elsewhere = await http_deployer.settle(http_deployer.fence("k", "deploy", sample.v2), DeploySource(repo, sample.v2))
    assert elsewhere is None
    assert await _version(http_deployer.port) == sample.v1  # settling changed nothing


# ------------------------------------------------------------------------------------------- start-up check


def test_check_deployer_engine_refuses_when_no_engine_answers(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")  # where docker-py looks
    with pytest.raises(ConfigError) as caught:
        check_deployer_engine("bot", BASE_IMAGE)
    message = str(caught.value)
    assert message.startswith("AGENT_RUNNER_DEPLOYER=docker: no Docker engine answers (") and "DOCKER_HOST" in message


def test_check_deployer_engine_refuses_a_service_name_docker_would_not_take() -> None:
    with pytest.raises(ConfigError, match=r"AGENT_RUNNER_DEPLOY_SERVICE 'My Bot' is not a container name"):
        check_deployer_engine("My Bot", BASE_IMAGE)


@pytest.mark.docker
def test_check_deployer_engine_refuses_a_base_image_the_engine_lacks_and_takes_one_it_has(docker_client: Any) -> None:
    docker_client.images.get(BASE_IMAGE)  # the locally built base every docker test uses
    missing = f"agent-runner/no-such-base:{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConfigError) as caught:
        check_deployer_engine("bot", missing)
    assert str(caught.value) == (f"AGENT_RUNNER_DEPLOY_BASE_IMAGE {missing!r} is not in the Docker engine, and "
                                 f"builds never pull: `docker pull {missing}` first, or name an image `docker images` "
                                 "lists")
    assert check_deployer_engine("bot", BASE_IMAGE) == BASE_IMAGE
    # None configured: the first default the engine has (here the locally built base, or the registry's).
    assert check_deployer_engine("bot", None) in DEFAULT_BASE_IMAGES
