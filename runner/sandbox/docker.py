"""DockerSandbox: one locked-down container per task and role, through the docker SDK (blocking calls in threads).

Why the workspace is a tmpfs of the container and crosses by tar (issue 13): a bind mount let the trusted
side read the tree while processes the agent started still ran in it (a file swapped for a symlink between
git's lstat and open put host bytes in the change), and on overlay2 over ext4 with cgroup v1 (this engine)
a container's disk use has no limit (`--storage-opt size` needs xfs project quotas). A tmpfs mount has a hard
size (`size=`: a sandbox writing past it gets ENOSPC inside, and the host's disk, with the state and the
mirrors, is never touched), dies with the container, and works the same under runc and gVisor (where it is
the sentry's own memory, not a slow gofer mount). The engine's archive API cannot reach it (it reads the
image's directory under the mount, and refuses a read-only root), so the tree goes in and out through
`docker exec -i tar -x` and `docker exec tar -c` — what the Kubernetes backend will do over `pods/exec`,
since no bind mount crosses nodes (docs/kubernetes.md).

PID 1 is docker-init running `sleep` as root (with no capabilities): no process of the sandbox user can
signal or trace it, so killing everything of that user leaves the container, and its workspace, alive for
the copy out; a root survey (ours, the only root processes besides init) then proves nothing is left.

Size: about 540 lines, one backend of the Sandbox protocol (runner.sandbox.base): its methods are the steps
of one container's life and share the client, the labels and the limits; the pure parts (tar in and out,
runner.sandbox.archive) are already their own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import docker
import docker.errors

from runner.docker_engine import EngineUnavailable, connect, runtimes, short
from runner.errors import SandboxError, SandboxStartError
from runner.resource import AsyncResource
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
    WorkspaceFull,
    archive_cap,
    inode_limit,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

IDLE_CMD = ["sleep", "infinity"]
FORWARDER_CMD = ["python3", "/opt/agent-runner/model-forwarder.py"]
DEPS_IMAGE_REPO = "agent-runner/deps"
GVISOR = "runsc"
# Kill grace for `timeout` inside the container, and the outer backstop beyond it.
KILL_GRACE_SECONDS = 5
BACKSTOP_SECONDS = 15
COPY_TIMEOUT_SECONDS = 600.0
KILL_ROUNDS = 20
EXEC_NOT_STARTED = 126  # docker exec: the command could not be invoked
EXEC_START_ATTEMPTS = 3
# The dependency set-up's own network: a bridge whose containers cannot reach each other (icc off) nor, with
# the INPUT rule below, any address of this host (its bridge IPs, where a listener on 0.0.0.0 answers).
SETUP_NETWORK = "agent-runner-setup"
SETUP_BRIDGE = "ar-setup0"
HOST_RULE = ["INPUT", "-i", SETUP_BRIDGE, "-j", "DROP"]

# Run as the sandbox user: every process of that user but this one is stopped (a stopped process cannot fork, so
# the set stops growing), then killed. Named one by one from /proc, never `kill(-1)`: under gVisor (Debian's
# runsc) that broadcast from the sandbox user now and then killed the container's root-owned init too.
KILL_SCRIPT = r"""
import os, signal
me, uid = os.getpid(), os.getuid()
def mine():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":	", 1) for line in f if ":	" in line)
        except OSError:
            continue
        if str(uid) in status.get("Uid", "").split() and status.get("State", "")[:1] not in "ZX":
            found.append(int(pid))
    return found
def send(pids, sig):
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
stopped = set()
for _ in range(100):
    new = [pid for pid in mine() if pid not in stopped]
    if not new:
        break
    send(new, signal.SIGSTOP)
    stopped.update(new)
send(stopped | set(mine()), signal.SIGKILL)
"""
# Run as root, whom no process of the sandbox user can signal or trace: the processes that are not root's
# (zombies are dead) and the workspace's use, as JSON.
SURVEY_SCRIPT = r"""
import json, os
me, alive = os.getpid(), []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        continue
    if int(pid) != me and status.get("Uid", "0").split()[0] != "0" and status.get("State", "")[:1] not in "ZX":
        alive.append([int(pid), status.get("Name", "?")])
fs = os.statvfs("/workspace")
print(json.dumps({"alive": alive, "size": fs.f_frsize * fs.f_blocks, "free": fs.f_frsize * fs.f_bavail,
                  "files": fs.f_files, "free_files": fs.f_favail}))
"""


def tar_out_argv(directory: str = WORKSPACE) -> list[str]:
    """The tar that reads a workspace out: links stored as links (never followed), hard links as data, the
    sandbox's own `.git` left behind (the trusted side ignores it anyway)."""
    return ["tar", "-c", "-f", "-", "-C", directory, "--format=gnu", "--hard-dereference", "--exclude=./.git", "."]


class DockerSandbox(AsyncResource):
    """Sandbox backend on a Docker engine.

    The docker SDK is blocking, so every call goes through asyncio.to_thread. The agent's CLI is
    attached with the docker CLI's `docker exec -i` (see attach_command): its stdin half-close is
    what ends a streamed CLI session cleanly, which the SDK's raw exec sockets do not give us; the
    workspace's tar streams use it for the same reason.

    `runtime` is the OCI runtime of every container (AGENT_RUNNER_RUNTIME); None picks gVisor's `runsc`
    when the engine has it, else `runc`, with a line in `notices`. The dependency set-up, the one container
    with network, runs under `<runtime>-net` when the engine has it (runsc's `runsc` entry is registered
    with `--network=none`), else under runc.
    """

    def __init__(self, client: Any | None = None, *, docker_cli: str = "docker", runtime: str | None = None) -> None:
        self._client = client
        self._docker_cli = docker_cli
        self._wanted = runtime
        self.runtime = ""
        self.setup_runtime = ""
        self.notices: list[str] = []
        self._network_ready = False

    async def __aenter__(self) -> Self:
        await self._docker()
        return self

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
        if not self.runtime:
            self._choose_runtimes(await self._call(runtimes, self._client))
        return self._client

    def _choose_runtimes(self, available: set[str]) -> None:
        if self._wanted and self._wanted not in available:
            raise SandboxStartError(f"AGENT_RUNNER_RUNTIME={self._wanted} is not a runtime of this Docker engine "
                                    f"(it has {', '.join(sorted(available))}); scripts/docker-engine.sh registers "
                                    "runsc")
        self.runtime = self._wanted or (GVISOR if GVISOR in available else "runc")
        if not self._wanted and self.runtime == "runc":
            self.notices.append("warning: gVisor (runsc) is not registered with the Docker engine, so sandboxes run "
                                "under runc with the host's kernel as their only wall (scripts/docker-engine.sh "
                                "registers it; AGENT_RUNNER_RUNTIME=runc silences this)")
        networked = f"{self.runtime}-net"
        self.setup_runtime = networked if networked in available else "runc"
        if self.runtime != "runc" and self.setup_runtime == "runc":
            self.notices.append(f"warning: the engine has no {networked} runtime, so the dependency set-up runs "
                                "under runc")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except docker.errors.ImageNotFound as exc:
            raise SandboxStartError(f"image missing: {short(exc)}; build it with sandbox-image/build.sh") from exc
        except EngineUnavailable as exc:  # its own words: "no Docker engine answers (Connection refused); ..."
            raise SandboxError(str(exc)) from exc
        except docker.errors.DockerException as exc:
            raise SandboxError(f"Docker engine error: {short(exc)}") from exc

    async def start(self, spec: SandboxSpec) -> Container:
        client = await self._docker()
        volumes = {}
        if spec.model_socket_dir is not None:
            volumes[str(spec.model_socket_dir)] = {"bind": MODEL_SOCKET_DIR, "mode": "ro"}
        tmpfs_opts = f"rw,nosuid,nodev,size={spec.limits.tmp_bytes}"
        ws = spec.limits.workspace_bytes
        owned = f"uid={SANDBOX_UID},gid={SANDBOX_UID}"
        suffix = "" if spec.role == "agent" else f"-{spec.role}"
        try:
            raw = await self._call(
                client.containers.run,
                spec.image,
                command=IDLE_CMD,
                detach=True,
                name=f"agent-runner-{spec.task_id}{suffix}",
                labels={LABEL_TASK: spec.task_id, LABEL_ROLE: spec.role,
                        LABEL_OWNER_LOCK: str(spec.owner_lock or "")},
                user="0:0",  # only init and its `sleep`; every exec runs as the sandbox user
                runtime=self.runtime,
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=True,
                tmpfs={
                    "/tmp": tmpfs_opts,
                    f"/home/{SANDBOX_USER}": f"{tmpfs_opts},{owned}",
                    WORKSPACE: f"rw,exec,nosuid,nodev,size={ws},nr_inodes={inode_limit(ws)},{owned},mode=0755",
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
        container = Container(id=raw.id, name=raw.name, task_id=spec.task_id, workspace_bytes=ws)
        if spec.model_socket_dir is not None:
            try:
                await self.reopen_model_channel(container)
            except SandboxError as exc:
                await self.stop(container)
                raise SandboxStartError(str(exc)) from None
        return container

    async def reopen_model_channel(self, container: Container) -> None:
        # The forwarder binds its port before this returns, so the CLI's first request finds it.
        code, out = await self._run(container, [*FORWARDER_CMD, "--background"], user=SANDBOX_USER)
        if code != 0:
            raise SandboxError(f"the model forwarder did not start (exit {code}): {out[-300:]!r}")

    async def copy_in(self, container: Container, archive: Path) -> None:
        argv = ["-i", "-u", SANDBOX_USER, "-w", "/", container.id, "tar", "-x", "-f", "-", "-C", WORKSPACE]
        with archive.open("rb") as source:
            code, _, err = await self._docker_exec(argv, stdin=source)
        if code != 0:
            if "No space left" in err or _full(await self._survey(container)):
                raise WorkspaceFull(f"the repository does not fit the workspace's size limit of "
                                    f"{_size(container.workspace_bytes)}", container.workspace_bytes)
            raise SandboxError(f"copying the workspace in failed (exit {code}): {err.strip()[-500:]}")

    async def kill_processes(self, container: Container) -> None:
        alive: list[Any] = []
        for attempt in range(KILL_ROUNDS):
            await self._run(container, ["python3", "-c", KILL_SCRIPT], user=SANDBOX_USER)
            alive = (await self._survey(container))["alive"]
            if not alive:
                return
            await asyncio.sleep(0.05 * (attempt + 1))
        raise SandboxError(f"processes of task {container.task_id} survived SIGKILL: {alive[:10]}")

    async def _survey(self, container: Container) -> dict[str, Any]:
        code, out = await self._run(container, ["python3", "-c", SURVEY_SCRIPT], user="0")
        try:
            survey: dict[str, Any] = json.loads(out)
        except ValueError:
            raise SandboxError(f"the process survey failed (exit {code}): {out[-300:]!r}") from None
        return survey

    async def copy_out(self, container: Container, dest: Path) -> None:
        survey = await self._survey(container)
        if survey["alive"]:
            raise SandboxError(f"not reading the workspace of task {container.task_id}: processes of it are "
                               f"still running ({survey['alive'][:10]})")
        limit = container.workspace_bytes
        if _full(survey):
            raise WorkspaceFull(f"the sandbox filled its workspace: it reached the size limit of {_size(limit)} "
                                "(limits.workspace_bytes)", limit)
        cap = archive_cap(limit)
        for attempt in range(1, EXEC_START_ATTEMPTS + 1):
            with dest.open("wb") as sink:
                code, written, err = await self._docker_exec(["-u", SANDBOX_USER, "-w", "/", container.id,
                                                              *tar_out_argv()], stdout=sink, cap=cap)
            # 126: the engine could not start the tar at all (seen from runsc on a loaded machine, with no
            # message). Nothing runs in the box any more, so reading it again reads the same files.
            if code != EXEC_NOT_STARTED or attempt == EXEC_START_ATTEMPTS:
                break
            log.warning("reading task %s's workspace out: the tar did not start (exit 126), trying again",
                        container.task_id)
            await asyncio.sleep(0.5 * attempt)
        if written > cap:
            dest.unlink(missing_ok=True)
            raise WorkspaceFull(f"the workspace's archive passed {_size(cap)}, more than its size limit of "
                                f"{_size(limit)} allows", limit)
        if code != 0:
            dest.unlink(missing_ok=True)
            raise SandboxError(f"reading the workspace out failed (exit {code}): {err.strip()[-500:]}")

    async def _docker_exec(self, argv: Sequence[str], *, stdin: Any = None, stdout: Any = None,
                           cap: int = 0) -> tuple[int, int, str]:
        """`docker exec ARGV` with stdin from a file and stdout streamed into one, at most `cap` bytes;
        (exit code, bytes written, stderr)."""
        await self._docker()
        cli = shutil.which(self._docker_cli)
        if cli is None:
            raise SandboxError("the docker CLI is not on PATH; it streams workspaces in and out of sandboxes")
        proc = await asyncio.create_subprocess_exec(
            cli, "exec", *argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout is not None else subprocess.DEVNULL, stderr=subprocess.PIPE)
        written = 0

        async def pump() -> None:
            nonlocal written
            if proc.stdout is None:
                return
            while chunk := await proc.stdout.read(1024**2):
                written += len(chunk)
                if written > cap:
                    proc.kill()
                    return
                await asyncio.to_thread(stdout.write, chunk)

        async def drain() -> bytes:
            assert proc.stderr is not None
            return await proc.stderr.read()

        try:
            async with asyncio.timeout(COPY_TIMEOUT_SECONDS):
                _, err = await asyncio.gather(pump(), drain())
                await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        return proc.returncode or 0, written, err.decode("utf-8", "replace")

    async def _run(self, container: Container, argv: Sequence[str], *, user: str,
                   timeout: float = 60.0) -> tuple[int, str]:
        """One of our own commands in the container, as `user`: (exit code, stdout)."""
        api = (await self._docker()).api
        exec_id = await self._call(api.exec_create, container.id, list(argv), user=user, workdir="/",
                                   stdout=True, stderr=True)
        try:
            async with asyncio.timeout(timeout):
                out, _err = await self._call(api.exec_start, exec_id["Id"], stream=False, demux=True)
        except TimeoutError:
            raise SandboxError(f"{argv[0]} in task {container.task_id}'s container did not finish in {timeout:g}s"
                               ) from None
        info = await self._call(api.exec_inspect, exec_id["Id"])
        return int(info.get("ExitCode") or 0), (out or b"").decode("utf-8", "replace")

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
        except EngineUnavailable as exc:
            raise SandboxError(f"could not remove container {container_id[:12]}: {exc}") from exc
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
                if task_id not in reaped:
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
        except EngineUnavailable as exc:
            raise SandboxError(str(exc)) from exc
        return tag

    async def build_dependencies(self, base_image: str, files: Mapping[str, bytes], command: str, key: str) -> str:
        client = await self._docker()
        tag = await self._dependency_tag(base_image, key)
        repository, _, tag_key = tag.partition(":")
        await self.setup_network()
        # The one phase with network, running the repository's own install scripts: its dependency files
        # copied in, no secret, no socket, no capability (root only because /opt/venv is root's in the image,
        # and root owns it without any), on a network from which this host is unreachable.
        raw = await self._call(
            client.containers.create,
            base_image,
            command=["sh", "-c", command],
            # No task label: the reaper must not take a build another supervisor is running for its orphan.
            labels={LABEL_ROLE: "dependencies"},
            user="0:0",
            runtime=self.setup_runtime,
            network=SETUP_NETWORK,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            working_dir=WORKSPACE,
            mem_limit=2 * 1024**3,
            pids_limit=512,
        )
        try:
            await self._call(raw.put_archive, WORKSPACE, _tar_of(files))
            await self._call(raw.start)
            status = await self._call(raw.wait, timeout=1800)
            if status.get("StatusCode") != 0:
                logs = (await self._call(raw.logs))[-4000:].decode("utf-8", errors="replace")
                raise SandboxError(f"dependency set-up `{command}` failed (exit {status.get('StatusCode')}):\n{logs}")
            await self._call(
                raw.commit,
                repository=repository,
                tag=tag_key,
                changes=[f"USER {SANDBOX_USER}", f"WORKDIR {WORKSPACE}", f"CMD {_json_list(IDLE_CMD)}"],
            )
        finally:
            await self._remove(raw.id)
        return tag

    async def setup_network(self) -> None:
        """Make the dependency set-up's network, and the host's rule that drops what it sends to this host."""
        if self._network_ready:
            return
        client = await self._docker()
        try:
            await asyncio.to_thread(client.networks.get, SETUP_NETWORK)
        except EngineUnavailable as exc:
            raise SandboxError(str(exc)) from exc
        except docker.errors.NotFound:
            with contextlib.suppress(docker.errors.APIError):  # another supervisor made it first
                await asyncio.to_thread(
                    client.networks.create, SETUP_NETWORK, driver="bridge", check_duplicate=True,
                    labels={LABEL_ROLE: "dependencies"},
                    options={"com.docker.network.bridge.name": SETUP_BRIDGE,
                             "com.docker.network.bridge.enable_icc": "false"})
            await self._call(client.networks.get, SETUP_NETWORK)
        problem = await asyncio.to_thread(_drop_host_traffic)
        if problem:
            log.warning("the dependency set-up container can reach this host's non-loopback listeners (%s); as root "
                        "on the host run: iptables -I %s", problem, " ".join(HOST_RULE))
        self._network_ready = True


def _drop_host_traffic() -> str:
    """Make sure the host's INPUT chain drops what the set-up bridge sends to any of its addresses; "" when done,
    else why it could not be (the supervisor runs without the host's iptables, e.g. in a container)."""
    iptables = shutil.which("iptables")
    if iptables is None:
        return "no iptables here"
    try:
        check = subprocess.run([iptables, "-w", "5", "-C", *HOST_RULE], capture_output=True, timeout=30)
        if check.returncode == 0:
            return ""
        insert = subprocess.run([iptables, "-w", "5", "-I", *HOST_RULE[:1], "1", *HOST_RULE[1:]],
                                capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"iptables failed: {exc}"
    if insert.returncode != 0:
        return f"iptables refused: {insert.stderr.decode(errors='replace').strip()[:200]}"
    return ""


def _full(survey: Mapping[str, Any]) -> bool:
    """Whether the workspace is (as good as) full: a write past its limit got ENOSPC. Under gVisor a tmpfs
    reports no inode counts (`files` is 0)."""
    margin = min(1024**2, survey["size"] // 64)
    return bool(survey["free"] < margin or (survey["files"] and survey["free_files"] == 0))


def _tar_of(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, content in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(content), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _size(n: int) -> str:
    return f"{n / 1024**2:g} MiB" if n % 1024**2 == 0 or n >= 1024**2 else f"{n} bytes"


def _json_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"
