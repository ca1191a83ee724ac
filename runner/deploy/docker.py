"""DockerDeployer: build the merged commit into an image, replace the bot's container, wait healthy, roll back.

Size: about 460 lines, one backend of the Deployer protocol (runner.deploy.base): build, replace, wait and
roll back share the client and the one-release-at-a-time lock; the health probes are runner.deploy.health,
and the container's recreation spec (docker's create arguments read back from the running one) stays here
beside the only code that uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, InitVar, dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import docker
import docker.errors

from runner.deploy.base import (
    DEFAULT_DEPLOY_TIMEOUT,
    DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_TIMEOUT,
    DeployAction,
    DeployError,
    DeployResult,
    DeploySource,
    Fence,
)
from runner.deploy.health import HttpProbe, Verdict, wait_healthy
from runner.docker_engine import EngineUnavailable, connect, short
from runner.errors import ConfigError
from runner.gitops import GitError, run_git
from runner.resource import AsyncResource

T = TypeVar("T")

LABEL_ROLE = "org.agent-runner.role"
LABEL_SERVICE = "org.agent-runner.service"
LABEL_SHA = "org.agent-runner.sha"
ROLE_DEPLOYED = "deployed"
COMPOSE_SERVICE = "com.docker.compose.service"
IMAGE_REPO_PREFIX = "agent-runner/deployed-"
BUILD_ARG_BASE = "BASE_IMAGE"
ENV_SHA = "AGENT_RUNNER_DEPLOY_SHA"
DEFAULT_CONTAINER_PORT = 8000
# The bot's build base when none is configured, as the demo and the image scripts pick it: the registry's
# image where one was pulled, else the Debian base built here (sandbox-image/build.sh).
DEFAULT_BASE_IMAGES = ("python:3.12-slim", "agent-runner/base:bookworm")
STOP_TIMEOUT = 10
LOG_LINES = 200
# Docker's own HEALTHCHECK cadence: fast enough that a deploy is judged in seconds.
HEALTHCHECK_INTERVAL_NS = 500_000_000
HEALTHCHECK_TIMEOUT_NS = 2_000_000_000
HEALTHCHECK_RETRIES = 3

# Lower-case because the service name becomes part of an image repository name.
_SERVICE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def image_tag(service: str, sha: str) -> str:
    """The image a commit of `service` is built into: `agent-runner/deployed-<service>:<sha12>`."""
    return f"{IMAGE_REPO_PREFIX}{service}:{sha[:12]}"


def check_deployer_engine(service: str, base_image: str | None) -> str:
    """At start (blocking): the name is one Docker takes, an engine answers, and the build's base image is in
    it (a build never pulls), each a ConfigError naming the setting; else the first release would fail after
    its merge. Returns the base image: `base_image`, or with None the first of DEFAULT_BASE_IMAGES present."""
    if not _SERVICE.match(service):
        raise ConfigError(f"AGENT_RUNNER_DEPLOY_SERVICE {service!r} is not a container name Docker takes: "
                          "lower-case letters, digits, '_', '.', '-'")
    try:
        client = connect(timeout=10)
    except EngineUnavailable as exc:
        raise ConfigError(f"AGENT_RUNNER_DEPLOYER=docker: {exc} (or point DOCKER_HOST at one)") from None
    try:
        for candidate in (base_image,) if base_image is not None else DEFAULT_BASE_IMAGES:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.get(candidate)
                return candidate
    except docker.errors.DockerException as exc:
        raise ConfigError(f"AGENT_RUNNER_DEPLOYER=docker: the engine did not answer for the base image: "
                          f"{short(exc)}") from None
    finally:
        client.close()
    if base_image is None:
        raise ConfigError(f"AGENT_RUNNER_DEPLOYER=docker: none of {', '.join(DEFAULT_BASE_IMAGES)} is in the Docker "
                          "engine; set AGENT_RUNNER_DEPLOY_BASE_IMAGE to the image the bot's Dockerfile builds FROM")
    raise ConfigError(f"AGENT_RUNNER_DEPLOY_BASE_IMAGE {base_image!r} is not in the Docker engine, and builds "
                      f"never pull: `docker pull {base_image}` first, or name an image `docker images` lists")


@dataclass(frozen=True, slots=True)
class _Image:
    tag: str
    seconds: float
    built: bool


class _BuildFailed(Exception):
    def __init__(self, detail: str, log: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.log = log


@dataclass(eq=False)
class DockerDeployer(AsyncResource):
    """Runs the bot as the container `service`, built from the repository's own Dockerfile at each SHA.

    deploy: clone the repository with trusted git, check out the SHA, build `image_tag(service, sha)` with
    `--build-arg BASE_IMAGE=<build_base_image>` and no pull, stop and remove the running `service` container,
    start the new one (labelled `org.agent-runner.role=deployed`), and wait for it to be healthy: running,
    its Docker health status `healthy` if it has a HEALTHCHECK, and an HTTP 2xx from
    `http://127.0.0.1:<port><health_path>` when `port` is published. Without a port, a HEALTHCHECK probing
    `health_path` with the image's python3 is added (or `healthcheck`, a CMD argv, when given).
    Images are kept, so a rollback to a SHA deployed before starts its image again without building.

    Nothing of a step outlives the supervisor (it is API calls; the engine drops a build whose client went
    away), so a fence needs no place: `settle` reads what the service's container runs instead.
    """

    service: str
    _: KW_ONLY
    build_base_image: str
    port: int | None = None
    container_port: int = DEFAULT_CONTAINER_PORT
    health_path: str = "/health"
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    healthcheck: Sequence[str] | None = None
    network: str | None = None
    build_network: str | None = None
    environment: Mapping[str, str] | None = field(default=None, repr=False)
    version_env: str | None = None
    build_timeout: float = DEFAULT_DEPLOY_TIMEOUT
    work_dir: Path | None = None
    client: InitVar[Any | None] = None
    """A docker client to use (and leave open); by default the deployer connects, and closes its own."""

    def __post_init__(self, client: Any | None) -> None:
        if not _SERVICE.match(self.service):
            raise DeployError(f"bad service name {self.service!r}: lower-case letters, digits, '_', '.', '-'")
        if not self.health_path.startswith("/"):
            raise DeployError(f"health_path must start with '/': {self.health_path!r}")
        self.healthcheck = tuple(self.healthcheck) if self.healthcheck is not None else None
        self.environment = dict(self.environment or {})
        self._client = client
        self._owns_client = client is None
        self._probe = HttpProbe()
        # One release at a time: two deploys racing would fight over the container name and port.
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self._docker()
        return self

    async def aclose(self) -> None:
        await self._probe.aclose()
        if self._client is not None and self._owns_client:
            await asyncio.to_thread(self._client.close)
            self._client = None

    async def deploy(self, checkout: DeploySource, *, fence: Fence | None = None) -> DeployResult:
        return await self._release(checkout, "deploy")

    async def rollback(self, previous: DeploySource, *, fence: Fence | None = None) -> DeployResult:
        return await self._release(previous, "rollback")

    def fence(self, key: str, action: DeployAction, sha: str) -> Fence:
        return Fence(key, action, sha, time.time())

    async def settle(self, fence: Fence, source: DeploySource) -> DeployResult | None:
        """The step's result when the service's container already runs `fence.sha` (health checked now); None
        when it runs something else or nothing, and the step must run again."""
        async with self._lock:
            started = time.monotonic()
            container = await self._current()
            if container is None or (container.labels or {}).get(LABEL_SHA) != fence.sha:
                return None
            health = await wait_healthy(
                lambda: self._check(container), timeout=self.health_timeout, interval=self.health_interval
            )
            verdict = "healthy" if health.healthy else "unhealthy"
            return DeployResult.done(
                fence.sha, health.healthy,
                f"{fence.action} {fence.sha[:12]} found running as {self.service} (begun by a previous "
                f"supervisor process); {verdict} after {health.seconds:.2f}s: {health.detail}",
                started, await self._logs(container))

    async def _release(self, source: DeploySource, action: str) -> DeployResult:
        if not _SHA.match(source.sha):
            raise DeployError(f"{action} needs a full commit SHA, got {source.sha!r}")
        async with self._lock:
            started = time.monotonic()
            try:
                image = await self._image(source)
            except _BuildFailed as exc:
                # The running container was not touched: the old version still serves.
                return DeployResult.failed(
                    source.sha, f"{action}: {exc.detail}; the running container was left as it was", started, exc.log)
            replace_started = time.monotonic()
            container = await self._replace(image.tag, source.sha)
            replace_seconds = time.monotonic() - replace_started
            health = await wait_healthy(
                lambda: self._check(container), timeout=self.health_timeout, interval=self.health_interval
            )
            logs = await self._logs(container)
            how = f"built in {image.seconds:.2f}s" if image.built else f"image reused ({image.seconds:.2f}s)"
            verdict = "healthy" if health.healthy else "unhealthy"
            return DeployResult.done(
                source.sha, health.healthy,
                f"{action} {source.sha[:12]} as {self.service}: {how}, container replaced in "
                f"{replace_seconds:.2f}s, {verdict} after {health.seconds:.2f}s: {health.detail}",
                started, logs)

    async def _image(self, source: DeploySource) -> _Image:
        client = await self._docker()
        tag = image_tag(self.service, source.sha)
        started = time.monotonic()
        try:
            existing = await asyncio.to_thread(client.images.get, tag)
        except docker.errors.ImageNotFound:
            existing = None
        except docker.errors.DockerException as exc:
            raise DeployError(f"Docker engine error: {short(exc)}") from exc
        # The tag holds 12 hex digits; the label holds the full SHA, so a prefix collision is rebuilt.
        if existing is not None and (existing.labels or {}).get(LABEL_SHA) == source.sha:
            return _Image(tag, time.monotonic() - started, built=False)
        root = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="deploy-", dir=self.work_dir))
        try:
            context = await self._checkout(source, root)
            await self._build(client, context, tag, source.sha)
        finally:
            await asyncio.to_thread(shutil.rmtree, root, True)
        return _Image(tag, time.monotonic() - started, built=True)

    async def _checkout(self, source: DeploySource, root: Path) -> Path:
        src = root / "src"
        try:
            await run_git(["clone", "--quiet", "--no-checkout", "--", source.repo, str(src)])
            await run_git(["rev-parse", "--verify", "--quiet", f"{source.sha}^{{commit}}"], cwd=src)
            await run_git(["checkout", "--quiet", "--detach", source.sha], cwd=src)
        except GitError as exc:
            raise DeployError(f"could not check out {source.sha[:12]} from {source.repo}: {exc}") from exc
        # The build context is the tree, not its history.
        await asyncio.to_thread(shutil.rmtree, src / ".git")
        return src

    async def _build(self, client: Any, context: Path, tag: str, sha: str) -> None:
        if not (context / "Dockerfile").is_file():
            raise _BuildFailed(f"the repository has no Dockerfile at {sha[:12]}", "")
        try:
            async with asyncio.timeout(self.build_timeout):
                await asyncio.to_thread(
                    client.images.build,
                    path=str(context),
                    tag=tag,
                    buildargs={BUILD_ARG_BASE: self.build_base_image},
                    labels={LABEL_ROLE: ROLE_DEPLOYED, LABEL_SERVICE: self.service, LABEL_SHA: sha},
                    pull=False,
                    rm=True,
                    forcerm=True,
                    network_mode=self.build_network,
                )
        except TimeoutError:
            raise _BuildFailed(f"image build timed out after {self.build_timeout:g}s", "") from None
        except docker.errors.BuildError as exc:
            log = "".join(str(chunk.get("stream") or chunk.get("error") or "") for chunk in exc.build_log)
            raise _BuildFailed(f"image build failed: {short(exc)}", log) from exc
        except docker.errors.DockerException as exc:
            raise DeployError(f"Docker engine error while building {tag}: {short(exc)}") from exc

    async def _replace(self, tag: str, sha: str) -> Any:
        client = await self._docker()
        old = await self._current()
        if old is not None and (old.labels or {}).get(COMPOSE_SERVICE) == self.service:
            return await self._recreate(client, old, tag, sha)
        if old is not None:
            await self._call(old.stop, timeout=STOP_TIMEOUT)
            await self._call(old.remove, force=True)
        environment = {**(self.environment or {}), ENV_SHA: sha}
        if self.version_env:
            environment[self.version_env] = sha
        ports = {f"{self.container_port}/tcp": ("127.0.0.1", self.port)} if self.port is not None else None
        return await self._call(
            client.containers.run,
            tag,
            name=self.service,
            detach=True,
            labels={LABEL_ROLE: ROLE_DEPLOYED, LABEL_SERVICE: self.service, LABEL_SHA: sha},
            environment=environment,
            ports=ports,
            network=self.network,
            restart_policy={"Name": "unless-stopped"},
            healthcheck=self._healthcheck(),
            init=True,
        )

    async def _current(self) -> Any | None:
        """The running release: the container named `service` that agent-runner deployed, else the one container
        of the compose service `service` (compose's labels say whose it is)."""
        client = await self._docker()
        try:
            old = await asyncio.to_thread(client.containers.get, self.service)
        except docker.errors.NotFound:
            old = None
        except docker.errors.DockerException as exc:
            raise DeployError(f"Docker engine error: {short(exc)}") from exc
        if old is None:
            found = await self._call(client.containers.list, all=True,
                                     filters={"label": f"{COMPOSE_SERVICE}={self.service}"})
            if len(found) > 1:
                raise DeployError(f"compose service {self.service!r} has {len(found)} containers; scale it to one "
                                  "(or name one container) for agent-runner to replace")
            return found[0] if found else None
        labels = old.labels or {}
        mine = labels.get(LABEL_ROLE) == ROLE_DEPLOYED and labels.get(LABEL_SERVICE) == self.service
        if not mine and labels.get(COMPOSE_SERVICE) != self.service:
            # Never stop a container we did not start: the name may belong to something else.
            raise DeployError(f"a container named {self.service!r} exists that agent-runner did not deploy")
        return old

    async def _recreate(self, client: Any, old: Any, tag: str, sha: str) -> Any:
        """Replace a compose service's container with one of `tag`, as `docker compose up` would: same name,
        compose labels, environment, ports, volumes, networks and aliases, restart policy and logging; what
        came from the old image (its env, command, entrypoint, labels) comes from the new one instead."""
        spec = await asyncio.to_thread(_recreation_spec, client, old.attrs, tag, sha, self.version_env)
        name = old.name
        await self._call(old.stop, timeout=STOP_TIMEOUT)
        await self._call(old.rename, f"{name}-replaced-{sha[:12]}")
        try:
            created = await self._call(client.api.create_container, tag, name=name, **spec.create)
            for network, endpoint in spec.more_networks.items():
                await self._call(client.api.connect_container_to_network, created["Id"], network, **endpoint)
            await self._call(client.api.start, created["Id"])
        except DeployError:
            # Put the old container back as it was: the release failed before anything new ran.
            with contextlib.suppress(docker.errors.DockerException):
                stale = await asyncio.to_thread(client.containers.get, name)
                await asyncio.to_thread(stale.remove, force=True)
            await self._call(old.rename, name)
            await self._call(old.start)
            raise
        await self._call(old.remove, force=True)
        return await self._call(client.containers.get, created["Id"])

    def _healthcheck(self) -> dict[str, Any] | None:
        if self.healthcheck is not None:
            test = ["CMD", *self.healthcheck]
        elif self.port is None:
            url = f"http://127.0.0.1:{self.container_port}{self.health_path}"
            probe = f"import urllib.request as u; u.urlopen({url!r}, timeout=2)"
            test = ["CMD", "python3", "-c", probe]
        else:
            return None  # the HTTP probe from here decides; an image's own HEALTHCHECK still counts
        return {
            "test": test,
            "interval": HEALTHCHECK_INTERVAL_NS,
            "timeout": HEALTHCHECK_TIMEOUT_NS,
            "retries": HEALTHCHECK_RETRIES,
            "start_period": 0,
        }

    async def _check(self, container: Any) -> tuple[Verdict, str]:
        await self._call(container.reload)
        state: Mapping[str, Any] = container.attrs.get("State") or {}
        restarts = int(container.attrs.get("RestartCount") or 0)
        status = str(state.get("Status", "unknown"))
        if status in ("exited", "dead") or restarts > 0:
            return "unhealthy", f"container {status}, exit code {state.get('ExitCode')}, restarts {restarts}"
        if status != "running":
            return "waiting", f"container {status}"
        docker_health = state.get("Health")
        if docker_health:
            health_status = str(docker_health.get("Status"))
            last = (docker_health.get("Log") or [{}])[-1]
            said = f"Docker health {health_status} ({str(last.get('Output', '')).strip()[-200:]})"
            if health_status == "unhealthy":
                return "unhealthy", said
            if health_status != "healthy":
                return "waiting", said
            if self.port is None:
                return "healthy", said
        if self.port is None:
            return "healthy", "container running (no health check configured)"
        return await self._probe(f"http://127.0.0.1:{self.port}{self.health_path}")

    async def _logs(self, container: Any) -> str:
        try:
            raw: bytes = await asyncio.to_thread(container.logs, tail=LOG_LINES)
        except docker.errors.DockerException:
            return ""
        return raw.decode("utf-8", "replace")

    async def _docker(self) -> Any:
        if self._client is None:
            try:
                self._client = await asyncio.to_thread(connect, max(60, int(self.build_timeout)))
            except EngineUnavailable as exc:
                raise DeployError(str(exc)) from None
        return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except docker.errors.DockerException as exc:
            raise DeployError(f"Docker engine error: {short(exc)}") from exc


@dataclass(frozen=True, slots=True)
class _Recreation:
    create: dict[str, Any]
    """Keyword arguments of the engine's create-container call, besides the image and the name."""
    more_networks: dict[str, dict[str, Any]]
    """Networks beyond the first, with their aliases: connected before the container starts."""


def _recreation_spec(client: Any, attrs: Mapping[str, Any], tag: str, sha: str,
                     version_env: str | None) -> _Recreation:
    """The old container's own settings, minus what its image gave it, for a container of the new image."""
    config: Mapping[str, Any] = attrs.get("Config") or {}
    try:
        image: Mapping[str, Any] = client.images.get(attrs["Image"]).attrs.get("Config") or {}
    except docker.errors.ImageNotFound:
        image = {}
    own = {key: config.get(key) for key in ("Cmd", "Entrypoint", "WorkingDir", "User", "Healthcheck")
           if config.get(key) and config.get(key) != image.get(key)}
    pinned = {ENV_SHA, *([version_env] if version_env else [])}
    env = [e for e in config.get("Env") or [] if e not in (image.get("Env") or []) and e.split("=", 1)[0] not in pinned]
    env += [f"{ENV_SHA}={sha}", *([f"{version_env}={sha}"] if version_env else [])]
    image_labels = image.get("Labels") or {}
    labels = {k: v for k, v in (config.get("Labels") or {}).items() if image_labels.get(k) != v}
    labels.update({LABEL_ROLE: ROLE_DEPLOYED, LABEL_SHA: sha})
    networks: Mapping[str, Any] = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    short_id = str(attrs.get("Id", ""))[:12]

    def endpoint(settings: Mapping[str, Any]) -> dict[str, Any]:
        aliases = [a for a in settings.get("Aliases") or [] if a != short_id]  # the old id is no name for the new
        return {"aliases": aliases} if aliases else {}

    names = list(networks)
    host = dict(attrs.get("HostConfig") or {})
    first = names[0] if names and host.get("NetworkMode") not in ("host", "none") else None
    create: dict[str, Any] = {
        "command": own.get("Cmd"), "entrypoint": own.get("Entrypoint"), "working_dir": own.get("WorkingDir"),
        "user": own.get("User"), "healthcheck": own.get("Healthcheck"), "environment": env, "labels": labels,
        "ports": [(int(port), proto) for port, _, proto in (p.partition("/") for p in config.get("ExposedPorts") or {})]
        or None,
        "host_config": host, "stop_signal": config.get("StopSignal"),
    }
    if first is not None:
        create["networking_config"] = client.api.create_networking_config(
            {first: client.api.create_endpoint_config(**endpoint(networks[first]))})
    return _Recreation({k: v for k, v in create.items() if v is not None},
                       {n: endpoint(networks[n]) for n in names if n != first and first is not None})
