"""DockerSandbox: one locked-down container per task, through the docker SDK (blocking calls in threads)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors

from runner.docker_engine import EngineUnavailable, connect, short
from runner.errors import SandboxError, SandboxStartError
from runner.sandbox.base import (
    LABEL_OWNER_LOCK,
    LABEL_ROLE,
    LABEL_TASK,
    MODEL_SOCKET_DIR,
    OUTPUT_CAP,
    SANDBOX_UID,
    SANDBOX_USER,
    WORKSPACE,
    Container,
    ExecResult,
    SandboxSpec,
)

T = TypeVar("T")
FORWARDER_CMD = ["python3", "/opt/agent-runner/model-forwarder.py"]
DEPS_IMAGE_REPO = "agent-runner/deps"
# Kill grace for `timeout` inside the container, and the outer backstop beyond it.
KILL_GRACE_SECONDS = 5
BACKSTOP_SECONDS = 15


class DockerSandbox:
    """Sandbox backend on a Docker engine.

    The docker SDK is blocking, so every call goes through asyncio.to_thread. The agent's CLI is
    attached with the docker CLI's `docker exec -i` (see attach_command): its stdin half-close is
    what ends a streamed CLI session cleanly, which the SDK's raw exec sockets do not give us.
    """

    def __init__(self, client: Any | None = None, *, docker_cli: str = "docker") -> None:
        self._client = client
        self._docker_cli = docker_cli

    async def __aenter__(self) -> DockerSandbox:
        await self._docker()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None

    async def _docker(self) -> Any:
        if self._client is None:
            try:
                self._client = await asyncio.to_thread(connect)
            except EngineUnavailable as exc:
                raise SandboxStartError(str(exc)) from None
        return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise SandboxStartError(f"image missing: {short(exc)}; build it with sandbox-image/build.sh") from exc
        except docker.errors.DockerException as exc:
            raise SandboxError(f"Docker engine error: {short(exc)}") from exc

    async def start(self, spec: SandboxSpec) -> Container:
        client = await self._docker()
        volumes = {str(spec.workspace): {"bind": WORKSPACE, "mode": "rw"}}
        if spec.model_socket_dir is not None:
            volumes[str(spec.model_socket_dir)] = {"bind": MODEL_SOCKET_DIR, "mode": "ro"}
        tmpfs_opts = f"rw,nosuid,nodev,size={spec.limits.tmp_bytes}"
        try:
            raw = await self._call(
                client.containers.run,
                spec.image,
                command=FORWARDER_CMD,
                detach=True,
                name=f"agent-runner-{spec.task_id}",
                labels={LABEL_TASK: spec.task_id, LABEL_ROLE: "sandbox",
                        LABEL_OWNER_LOCK: str(spec.owner_lock or "")},
                user=f"{SANDBOX_UID}:{SANDBOX_UID}",
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=True,
                tmpfs={
                    "/tmp": tmpfs_opts,
                    f"/home/{SANDBOX_USER}": f"{tmpfs_opts},uid={SANDBOX_UID},gid={SANDBOX_UID}",
                },
                mem_limit=spec.limits.memory_bytes,
                memswap_limit=spec.limits.memory_bytes,
                nano_cpus=int(spec.limits.cpus * 1e9),
                pids_limit=spec.limits.pids,
                volumes=volumes,
                environment=dict(spec.env),
                working_dir=WORKSPACE,
                init=True,
            )
        except SandboxStartError:
            raise
        except SandboxError as exc:
            raise SandboxStartError(f"could not start the sandbox for task {spec.task_id}: {exc}") from exc
        return Container(id=raw.id, name=raw.name, task_id=spec.task_id)

    async def exec(
        self,
        container: Container,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        workdir: str = WORKSPACE,
    ) -> ExecResult:
        client = await self._docker()
        api = client.api
        # `timeout` inside the container kills what the agent planted (a test that never ends);
        # the outer asyncio timeout is a backstop should the exec itself hang.
        wrapped = ["timeout", "-k", str(KILL_GRACE_SECONDS), str(max(1, int(timeout))), *argv]
        started = time.monotonic()
        exec_id = await self._call(
            api.exec_create,
            container.id,
            wrapped,
            user=SANDBOX_USER,
            workdir=workdir,
            environment=dict(env or {}),
            stdout=True,
            stderr=True,
        )
        try:
            async with asyncio.timeout(timeout + KILL_GRACE_SECONDS + BACKSTOP_SECONDS):
                output: bytes = await self._call(api.exec_start, exec_id["Id"], stream=False, demux=False)
        except TimeoutError:
            return ExecResult(-1, "", time.monotonic() - started, timed_out=True)
        info = await self._call(api.exec_inspect, exec_id["Id"])
        code = int(info.get("ExitCode") or 0)
        text = output[-OUTPUT_CAP:].decode("utf-8", errors="replace")
        # coreutils timeout exits 124 (TERM) or 137 (KILL after the grace) when it fired.
        return ExecResult(code, text, time.monotonic() - started, timed_out=code in (124, 137))

    def attach_command(self, container: Container, argv: Sequence[str], env_names: Sequence[str]) -> list[str]:
        cli = shutil.which(self._docker_cli)
        if cli is None:
            raise SandboxStartError("the docker CLI is not on PATH; it attaches the agent to its sandbox")
        command = [cli, "exec", "-i", "-u", SANDBOX_USER, "-w", WORKSPACE]
        for name in env_names:
            command += ["-e", name]  # name only: the value comes from our environment, not argv
        return [*command, container.id, *argv]

    async def stop(self, container: Container) -> None:
        await self._remove(container.id)

    async def _remove(self, container_id: str) -> None:
        client = await self._docker()
        try:
            raw = await asyncio.to_thread(client.containers.get, container_id)
            await asyncio.to_thread(raw.remove, force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if "already in progress" in str(exc) or exc.status_code == 404:
                return
            raise SandboxError(f"could not remove container {container_id[:12]}: {short(exc)}") from exc

    async def _labelled(self) -> list[Any]:
        client = await self._docker()
        return await self._call(client.containers.list, all=True, filters={"label": LABEL_TASK})

    async def running(self) -> dict[str, str]:
        return {c.labels.get(LABEL_TASK, ""): c.labels.get(LABEL_OWNER_LOCK, "") for c in await self._labelled()}

    async def reap(self, keep: set[str]) -> list[str]:
        reaped = []
        for raw in await self._labelled():
            task_id = raw.labels.get(LABEL_TASK, "")
            if task_id not in keep:
                await self._remove(raw.id)
                reaped.append(task_id)
        return reaped

    async def _dependency_tag(self, base_image: str, key: str) -> str:
        client = await self._docker()
        # Keyed by the base image's id too: a rebuilt sandbox image must not reuse dependencies built on the old one.
        base_id = (await self._call(client.images.get, base_image)).id
        digest = hashlib.sha256(key.encode() + b"\0" + base_id.encode()).hexdigest()[:20]
        return f"{DEPS_IMAGE_REPO}:{digest}"

    async def cached_dependencies(self, base_image: str, key: str) -> str | None:
        client = await self._docker()
        tag = await self._dependency_tag(base_image, key)
        try:
            await asyncio.to_thread(client.images.get, tag)
        except docker.errors.ImageNotFound:
            return None
        return tag

    async def build_dependencies(self, base_image: str, workspace: Path, command: str, key: str) -> str:
        client = await self._docker()
        tag = await self._dependency_tag(base_image, key)
        repository, _, tag_key = tag.partition(":")
        # The one phase with network: the repo's own dependency files, mounted read-only, and
        # no secret and no socket. Root only because /opt/venv belongs to root in the image.
        raw = await self._call(
            client.containers.run,
            base_image,
            command=["sh", "-c", command],
            detach=True,
            # No task label: the reaper must not take a build another supervisor is running for its orphan.
            labels={LABEL_ROLE: "dependencies"},
            user="0:0",
            cap_drop=["ALL"],
            cap_add=["CHOWN", "DAC_OVERRIDE", "FOWNER"],
            security_opt=["no-new-privileges"],
            volumes={str(workspace): {"bind": WORKSPACE, "mode": "ro"}},
            working_dir=WORKSPACE,
            mem_limit=2 * 1024**3,
            pids_limit=512,
        )
        try:
            status = await self._call(raw.wait, timeout=1800)
            if status.get("StatusCode") != 0:
                logs = (await self._call(raw.logs))[-4000:].decode("utf-8", errors="replace")
                raise SandboxError(f"dependency set-up `{command}` failed (exit {status.get('StatusCode')}):\n{logs}")
            await self._call(
                raw.commit,
                repository=repository,
                tag=tag_key,
                changes=[f"USER {SANDBOX_USER}", f"WORKDIR {WORKSPACE}", f"CMD {_json_list(FORWARDER_CMD)}"],
            )
        finally:
            await self._remove(raw.id)
        return tag


def _json_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"
