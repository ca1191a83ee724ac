"""The Sandbox protocol: where an agent's container lives, and the values that describe it.

A sandbox's /workspace is its own size-limited filesystem, never a host directory: the supervisor copies a
tree in (`copy_in`), and reads the result back (`copy_out`) only after `kill_processes` has proved that no
process of the task is left, so nothing the agent started can change the tree while it is read.

    SandboxError (runner.errors)
    └── WorkspaceFull       the sandbox filled its workspace (or its archive outgrew the limit)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from runner.errors import SandboxError

WORKSPACE = "/workspace"
MODEL_SOCKET_DIR = "/run/agent-runner"
MODEL_FORWARD_PORT = 8082
LABEL_TASK = "org.agent-runner.task"
LABEL_ROLE = "org.agent-runner.role"
LABEL_OWNER_LOCK = "org.agent-runner.owner-lock"
SANDBOX_USER = "agent"
SANDBOX_UID = 1000
# What a task's /workspace may hold (the policy's `limits.workspace_bytes` when it has one). It is memory
# (a tmpfs), counted against the container's memory limit, so it is well below it.
DEFAULT_WORKSPACE_BYTES = 1024**3

Role = Literal["agent", "tests", "verify"]


class WorkspaceFull(SandboxError):
    """The sandbox wrote its workspace full: the task fails, naming the limit."""

    def __init__(self, message: str, limit_bytes: int) -> None:
        super().__init__(message)
        self.limit_bytes = limit_bytes


@dataclass(frozen=True, slots=True)
class Limits:
    memory_bytes: int = 2 * 1024**3
    cpus: float = 1.0
    pids: int = 512
    tmp_bytes: int = 256 * 1024**2
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything needed to start one of a task's containers. Nothing in it may be secret."""

    task_id: str
    image: str
    model_socket_dir: Path | None = None
    """Host directory holding the model proxy's socket, mounted read-only at /run/agent-runner: the only
    host path the container sees. None for the supervisor's own test and verification runs."""
    limits: Limits = field(default_factory=Limits)
    env: Mapping[str, str] = field(default_factory=dict)
    owner_lock: Path | None = None
    """The flock its supervisor holds while the task runs (see runner.tasklock); a reaper that can take
    it knows the container is an orphan."""
    role: Role = "agent"
    """What the container is for: the agent's session, or the supervisor's test or verification run."""


@dataclass(frozen=True, slots=True)
class Container:
    """A running sandbox, as its backend knows it."""

    id: str
    name: str
    task_id: str
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    output: str
    """stdout and stderr interleaved, capped to the last OUTPUT_CAP bytes."""
    duration_seconds: float
    timed_out: bool = False


OUTPUT_CAP = 64 * 1024


def archive_cap(workspace_bytes: int) -> int:
    """The most bytes a workspace's tar may take: its data plus a header or two per file it can hold."""
    return workspace_bytes + inode_limit(workspace_bytes) * 1024 + 1024**2


def inode_limit(workspace_bytes: int) -> int:
    """How many files a workspace may hold: one per 4 KiB page, and never fewer than a large repository needs."""
    return max(16_384, workspace_bytes // 4096)


class Sandbox(Protocol):
    """A backend that runs throwaway containers for tasks.

    Every container carries the label `org.agent-runner.task=<task id>`, so `reap` can find the
    containers of tasks that are no longer running after a crash.
    """

    async def start(self, spec: SandboxSpec) -> Container:
        """Start the container: no network, no capabilities, read-only root, and an empty /workspace of its
        own (at most `spec.limits.workspace_bytes`); the agent's role also gets the model forwarder.

        Raises SandboxStartError when the engine is down, the image is missing or the start fails.
        """
        ...

    async def copy_in(self, container: Container, archive: Path) -> None:
        """Unpack the tar file `archive` into /workspace, as the sandbox user.

        Raises WorkspaceFull when it does not fit the workspace's limit.
        """
        ...

    async def exec(
        self,
        container: Container,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        workdir: str = WORKSPACE,
    ) -> ExecResult:
        """Run argv in the container as the sandbox user; on timeout the result says so."""
        ...

    def attach_command(self, container: Container, argv: Sequence[str], env_names: Sequence[str]) -> list[str]:
        """The host command line that runs argv in the container with stdin/stdout attached.

        Only the variables named in env_names are passed in, with the values of the caller's
        environment; this is how the Agent SDK's CLI subprocess crosses into the sandbox.
        """
        ...

    async def reopen_model_channel(self, container: Container) -> None:
        """Start the container's model channel again (the forwarder `start` began for a spec with a model
        socket): `kill_processes` ends it with every other process, and the next round's agent reaches the
        model only through it. Raises SandboxError when it does not start."""
        ...

    async def kill_processes(self, container: Container) -> None:
        """Kill every process the task started in the container (the agent's CLI with them), keeping the
        container and its workspace; return only once none is left. Idempotent.

        Raises SandboxError when a process survives.
        """
        ...

    async def copy_out(self, container: Container, dest: Path) -> None:
        """Write /workspace as a tar file at `dest` (symlinks as links, never followed), at most
        `archive_cap(container.workspace_bytes)` bytes. Call it after kill_processes.

        Raises WorkspaceFull when the sandbox filled its workspace or the archive would pass the cap (`dest`
        is then removed), SandboxError when a process of the task is still there.
        """
        ...

    async def stop(self, container: Container) -> None:
        """Kill and remove the container; idempotent."""
        ...

    async def running(self) -> dict[str, str]:
        """Every labelled container: task id -> its owner-lock path ("" when none was given)."""
        ...

    async def reap(self, keep: set[str]) -> list[str]:
        """Remove every labelled container whose task id is not in keep; return the task ids reaped."""
        ...

    async def cached_dependencies(self, base_image: str, key: str) -> str | None:
        """The tag of the dependency image built before for `key` on `base_image`, if there is one."""
        ...

    async def build_dependencies(self, base_image: str, files: Mapping[str, bytes], command: str, key: str) -> str:
        """Run the dependency set-up command once, with network but no secret and no way to the supervisor,
        on a copy of the repository's dependency `files` (relative path -> content) in /workspace, and keep
        the result as an image; its tag."""
        ...

    async def aclose(self) -> None: ...
