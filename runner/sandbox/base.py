"""The Sandbox protocol: where an agent's container lives, and the values that describe it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

WORKSPACE = "/workspace"
MODEL_SOCKET_DIR = "/run/agent-runner"
MODEL_FORWARD_PORT = 8082
LABEL_TASK = "org.agent-runner.task"
LABEL_ROLE = "org.agent-runner.role"
LABEL_OWNER_LOCK = "org.agent-runner.owner-lock"
SANDBOX_USER = "agent"
SANDBOX_UID = 1000


@dataclass(frozen=True, slots=True)
class Limits:
    memory_bytes: int = 2 * 1024**3
    cpus: float = 1.0
    pids: int = 512
    tmp_bytes: int = 256 * 1024**2


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything needed to start one task's container. Nothing in it may be secret."""

    task_id: str
    image: str
    workspace: Path
    """Host directory bind-mounted read-write at /workspace; the only host path the container sees
    besides the model socket directory."""
    model_socket_dir: Path | None = None
    """Host directory holding the model proxy's socket, mounted read-only at /run/agent-runner."""
    limits: Limits = field(default_factory=Limits)
    env: Mapping[str, str] = field(default_factory=dict)
    owner_lock: Path | None = None
    """The flock its supervisor holds while the task runs (see runner.tasklock); a reaper that can take
    it knows the container is an orphan."""


@dataclass(frozen=True, slots=True)
class Container:
    """A running sandbox, as its backend knows it."""

    id: str
    name: str
    task_id: str


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    output: str
    """stdout and stderr interleaved, capped to the last OUTPUT_CAP bytes."""
    duration_seconds: float
    timed_out: bool = False


OUTPUT_CAP = 64 * 1024


class Sandbox(Protocol):
    """A backend that runs throwaway containers for tasks.

    Every container carries the label `org.agent-runner.task=<task id>`, so `reap` can find the
    containers of tasks that are no longer running after a crash.
    """

    async def start(self, spec: SandboxSpec) -> Container:
        """Start the container: no network, no capabilities, read-only root, non-root user.

        Raises SandboxStartError when the engine is down, the image is missing or the start fails.
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

    async def build_dependencies(self, base_image: str, workspace: Path, command: str, key: str) -> str:
        """Run the dependency set-up command once, with network, and keep the result as an image; its tag."""
        ...

    async def aclose(self) -> None: ...
