"""DockerSandbox against the real engine: the workspace is the container's own, killed clean before it is read,
size-limited, and the one container with network cannot reach this host. Under runc and under gVisor."""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from runner.errors import SandboxError
from runner.sandbox.base import Limits, SandboxSpec, WorkspaceFull
from runner.sandbox.docker import SETUP_NETWORK, DockerSandbox
from tests.sandbox.processes import user_processes
from tests.sandbox.runtimes import RUNTIMES, need_runtime

pytestmark = pytest.mark.docker

def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _spec(image: str, **limits: int) -> SandboxSpec:
    return SandboxSpec(f"sbx-{uuid.uuid4().hex[:8]}", image, limits=Limits(**limits))


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_kill_processes_leaves_nothing_of_the_task_and_keeps_the_workspace(
        tmp_path: Path, sandbox_image: str, runtime: str) -> None:
    async with DockerSandbox(runtime=need_runtime(runtime)) as sandbox:
        box = await sandbox.start(_spec(sandbox_image))
        try:
            await sandbox.copy_in(box, _tar(tmp_path / "in.tar", {"app.py": b"print('hi')\n"}))
            # What a test the agent ran leaves behind: a detached loop that keeps rewriting the workspace.
            loop = "nohup sh -c 'while :; do date +%s%N > /workspace/beat; done' >/dev/null 2>&1 &"
            await sandbox.exec(box, ["sh", "-c", loop], timeout=30)
            await asyncio.sleep(0.5)
            assert any("sh" in line for line in user_processes(box.id)), "the planted loop is not running"
            with pytest.raises(SandboxError, match="still running"):
                await sandbox.copy_out(box, tmp_path / "early.tar")

            await sandbox.kill_processes(box)
            assert user_processes(box.id) == []
            await sandbox.copy_out(box, tmp_path / "one.tar")
            await asyncio.sleep(0.3)
            await sandbox.copy_out(box, tmp_path / "two.tar")
            await sandbox.kill_processes(box)  # idempotent
        finally:
            await sandbox.stop(box)
    one, two = _files(tmp_path / "one.tar"), _files(tmp_path / "two.tar")
    assert one["./app.py"] == b"print('hi')\n" and "./beat" in one
    assert one == two  # nothing moved between the two reads: nothing of the task was left to move it


def _flaky_docker_cli(tmp_path: Path, failures: int) -> Path:
    """A docker CLI whose first `failures` workspace reads exit 126 with no message, as the engine's exec does
    now and then under gVisor on a loaded machine; everything else goes to the real CLI."""
    real, count, cli = shutil.which("docker"), tmp_path / "tar-failures", tmp_path / "docker"
    assert real is not None
    cli.write_text(f"""#!/bin/sh
case " $* " in
  *" tar -c "*) n=$(cat {count} 2>/dev/null || echo 0)
    if [ "$n" -lt {failures} ]; then echo $((n + 1)) > {count}; exit 126; fi ;;
esac
exec {real} "$@"
""")
    cli.chmod(0o755)
    return cli


@pytest.mark.parametrize(("failures", "read"), [(2, True), (3, False)])
async def test_a_workspace_read_the_engine_could_not_start_is_read_again_a_bounded_number_of_times(
        tmp_path: Path, sandbox_image: str, failures: int, read: bool) -> None:
    async with DockerSandbox(docker_cli=str(_flaky_docker_cli(tmp_path, failures))) as sandbox:
        box = await sandbox.start(_spec(sandbox_image))
        try:
            await sandbox.copy_in(box, _tar(tmp_path / "in.tar", {"app.py": b"print('hi')\n"}))
            await sandbox.kill_processes(box)
            if read:
                await sandbox.copy_out(box, tmp_path / "out.tar")
                assert _files(tmp_path / "out.tar")["./app.py"] == b"print('hi')\n"
            else:  # an engine that never starts it: the task fails naming the exit, with no partial archive
                with pytest.raises(SandboxError, match=r"reading the workspace out failed \(exit 126\)"):
                    await sandbox.copy_out(box, tmp_path / "out.tar")
                assert not (tmp_path / "out.tar").exists()
        finally:
            await sandbox.stop(box)
    assert int((tmp_path / "tar-failures").read_text()) == failures


def _files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_sandbox_writing_past_its_workspace_limit_gets_enospc_and_the_host_disk_nothing(
        tmp_path: Path, sandbox_image: str, runtime: str, docker_client: Any) -> None:
    limit = 8 * 1024**2
    async with DockerSandbox(runtime=need_runtime(runtime)) as sandbox:
        box = await sandbox.start(_spec(sandbox_image, workspace_bytes=limit))
        try:
            wrote = await sandbox.exec(box, ["sh", "-c", "head -c 64000000 /dev/zero > /workspace/big"], timeout=60)
            assert wrote.exit_code != 0 and "No space left on device" in wrote.output
            await sandbox.kill_processes(box)
            with pytest.raises(WorkspaceFull, match="size limit of 8 MiB") as failure:
                await sandbox.copy_out(box, tmp_path / "out.tar")
            assert failure.value.limit_bytes == limit and not (tmp_path / "out.tar").exists()
            # Nothing of it reached the container's writable layer on this host's disk.
            upper = docker_client.containers.get(box.id).attrs["GraphDriver"]["Data"]["UpperDir"]
            used = int(subprocess.run(["du", "-sb", upper], capture_output=True, text=True,
                                      check=True).stdout.split()[0])
            assert used < 1024**2
        finally:
            await sandbox.stop(box)


async def test_copy_in_past_the_limit_is_workspace_full(tmp_path: Path, sandbox_image: str) -> None:
    async with DockerSandbox() as sandbox:
        box = await sandbox.start(_spec(sandbox_image, workspace_bytes=1024**2))
        try:
            with pytest.raises(WorkspaceFull, match="does not fit"):
                await sandbox.copy_in(box, _tar(tmp_path / "big.tar", {"blob": os.urandom(2 * 1024**2)}))
        finally:
            await sandbox.stop(box)


def _gateway(client: Any, network: str) -> str:
    config = client.networks.get(network).attrs["IPAM"]["Config"][0]
    return str(config.get("Gateway") or ipaddress.ip_network(config["Subnet"])[1])


# Runs inside the set-up container (never on this host): what it holds and what it can reach.
SETUP_PROBE = '''
import json, os, socket
def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__
status = dict(l.split(":\\t", 1) for l in open("/proc/self/status") if ":\\t" in l)
report = {"targets": {h: reach(h, p) for h, p in TARGETS}, "cap_eff": status["CapEff"].strip(),
          "environ": sorted(os.environ), "files": sorted(os.listdir("."))}
json.dump(report, open("/opt/venv/setup-probe.json", "w"))
'''


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_the_dependency_set_up_holds_no_capability_and_cannot_reach_this_host(
        tmp_path: Path, sandbox_image: str, runtime: str, docker_client: Any) -> None:
    hits: list[str] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append("connected")
        writer.close()

    async with DockerSandbox(runtime=need_runtime(runtime)) as sandbox:
        await sandbox.setup_network()
        hosts = ["127.0.0.1", _gateway(docker_client, "bridge"), _gateway(docker_client, SETUP_NETWORK)]
        hosts += sorted({a for a in _host_addresses() if a not in hosts})
        listener = await asyncio.start_server(on_connect, host=hosts, port=0)
        port = listener.sockets[0].getsockname()[1]
        probe = SETUP_PROBE.replace("TARGETS", repr([(h, port) for h in hosts]))
        files = {"requirements.txt": b"# nothing\n", "sub/setup.cfg": b"[x]\n"}
        tag = None
        async with listener:
            tag = await sandbox.build_dependencies(sandbox_image, files, f"python3 -c {shlex.quote(probe)}",
                                                   f"probe-{uuid.uuid4().hex}")
        try:
            report = json.loads(docker_client.containers.run(tag, ["cat", "/opt/venv/setup-probe.json"],
                                                             remove=True, network_mode="none"))
        finally:
            docker_client.images.remove(tag, force=True)
    assert hits == [] and set(report["targets"].values()) <= {"ConnectionRefusedError", "TimeoutError",
                                                              "OSError", "ConnectionResetError"}, report["targets"]
    assert int(report["cap_eff"], 16) == 0
    assert set(report["files"]) == {"requirements.txt", "sub"}
    assert not [k for k in report["environ"] if k.startswith(("ANTHROPIC", "GITHUB", "TELEGRAM", "AGENT_"))]


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if " lo " not in line]
