"""A FakeSandbox that keeps a workspace in memory and records every call, for the supervisor's bookkeeping.

Faithful to the Sandbox protocol (a tar in, a tar out, processes that run until killed, copy_out refusing
while one is alive, the workspace limit), so a supervisor that read the workspace before killing the task's
processes, or tested in the agent's container, fails the tests that use it. Never for the tests that prove
isolation or the end-to-end cycle: those use the real daemon (runner.sandbox.docker).
"""

from __future__ import annotations

import io
import tarfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import SandboxError
from runner.sandbox.base import Container, ExecResult, SandboxSpec, WorkspaceFull

__all__ = ["Box", "FakeSandbox", "Files", "Process", "used"]

Files = dict[str, tuple[int, bytes]]  # path -> (git mode, content or link target)
Process = Callable[[Files], None]  # one step of a process the agent left running


@dataclass
class Box:
    container: Container
    role: str
    files: Files = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    received: list[set[str]] = field(default_factory=list)


class FakeSandbox:
    """A Sandbox whose containers are dictionaries; `calls` is every call made, in order, with the role."""

    def __init__(self, *, on_exec: Callable[[Box, Sequence[str]], ExecResult] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.boxes: dict[str, Box] = {}
        self.gone: dict[str, Box] = {}
        self.built: list[Mapping[str, bytes]] = []
        self._on_exec = on_exec or (lambda box, argv: ExecResult(0, "1 passed", 0.1))

    def _box(self, container: Container) -> Box:
        box = self.boxes.get(container.id)
        if box is None:
            raise SandboxError(f"no container {container.id}")
        for step in box.processes:  # what is still running keeps acting between our calls
            step(box.files)
        return box

    async def start(self, spec: SandboxSpec) -> Container:
        container = Container(f"fake-{uuid.uuid4().hex[:8]}", f"agent-runner-{spec.task_id}", spec.task_id,
                              spec.limits.workspace_bytes)
        self.boxes[container.id] = Box(container, spec.role)
        self.calls.append(("start", spec.role))
        return container

    async def copy_in(self, container: Container, archive: Path) -> None:
        box = self._box(container)
        self.calls.append(("copy_in", box.role))
        with tarfile.open(archive) as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if member.issym():
                    box.files[name] = (0o120000, member.linkname.encode())
                elif member.isfile():
                    box.files[name] = (0o100755 if member.mode & 0o100 else 0o100644,
                                       tar.extractfile(member).read())  # type: ignore[union-attr]
        box.received.append(set(box.files))
        if used(box.files) > container.workspace_bytes:
            raise WorkspaceFull("the repository does not fit the workspace", container.workspace_bytes)

    async def exec(self, container: Container, argv: Sequence[str], *, timeout: float,
                   env: Mapping[str, str] | None = None, workdir: str = "/workspace") -> ExecResult:
        box = self._box(container)
        self.calls.append(("exec", box.role))
        return self._on_exec(box, argv)

    def attach_command(self, container: Container, argv: Sequence[str], env_names: Sequence[str]) -> list[str]:
        return ["false"]  # the scripted agent never starts a CLI

    async def reopen_model_channel(self, container: Container) -> None:
        self.calls.append(("reopen_model_channel", self._box(container).role))

    async def kill_processes(self, container: Container) -> None:
        box = self._box(container)
        self.calls.append(("kill_processes", box.role))
        box.processes.clear()

    async def copy_out(self, container: Container, dest: Path) -> None:
        box = self._box(container)
        self.calls.append(("copy_out", box.role))
        if box.processes:
            raise SandboxError("processes of the task are still running")
        if used(box.files) >= container.workspace_bytes:
            raise WorkspaceFull(f"the sandbox filled its workspace: it reached the size limit of "
                                f"{container.workspace_bytes} bytes", container.workspace_bytes)
        with tarfile.open(dest, "w") as tar:
            for name, (mode, data) in box.files.items():
                info = tarfile.TarInfo(f"./{name}")
                if mode == 0o120000:
                    info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                    tar.addfile(info)
                else:
                    info.size, info.mode = len(data), 0o755 if mode == 0o100755 else 0o644
                    tar.addfile(info, io.BytesIO(data))

    async def stop(self, container: Container) -> None:
        box = self.boxes.pop(container.id, None)
        if box is not None:
            self.calls.append(("stop", box.role))
            self.gone[container.id] = box

    async def running(self) -> dict[str, str]:
        return {box.container.task_id: "" for box in self.boxes.values()}

    async def reap(self, keep: set[str]) -> list[str]:
        reaped = [b.container for b in self.boxes.values() if b.container.task_id not in keep]
        for container in reaped:
            await self.stop(container)
        return [c.task_id for c in reaped]

    async def cached_dependencies(self, base_image: str, key: str) -> str | None:
        return None

    async def build_dependencies(self, base_image: str, files: Mapping[str, bytes], command: str, key: str) -> str:
        self.calls.append(("build_dependencies", "dependencies"))
        self.built.append(dict(files))
        return f"fake/deps:{key}"

    async def aclose(self) -> None:
        return None


def used(files: Files) -> int:
    return sum(len(data) for _, data in files.values())
