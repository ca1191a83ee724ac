"""A second, private Docker engine that fault tests may kill and restart, leaving the main engine alone.

It has its own data root (kept between sessions, so an image loaded into it stays), exec root, pid file and
socket, `--iptables=false`, and a bridge of its own (`arb0`, created here and removed at the end). Never
`--bridge none`: a dockerd started that way deletes the host's docker0, which the main engine's containers and
every other test use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

RUN = Path("/run/agent-runner-test-engine")  # short: unix socket paths under it must stay below 108 bytes
DATA = Path("/var/tmp/agent-runner-test-engine")
BRIDGE = "arb0"
BRIDGE_ADDRESS = "10.213.0.1/24"
MAIN_CONFIG = Path("/etc/docker/daemon.json")


@dataclass
class PrivateEngine:
    run: Path = RUN
    data: Path = DATA
    bridge: str = BRIDGE
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.run / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.data / "dockerd.log"

    def env(self) -> dict[str, str]:
        """The environment that points docker clients (the SDK, the docker CLI) at this engine."""
        return {"DOCKER_HOST": self.host}

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host, timeout=60)

    def answers(self) -> bool:
        """The engine answers its ping. Asked over a plain socket: docker-py's client leaks the socket of a
        failed version probe, which a test's warnings-as-errors then fails on at a random place."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(5)
                probe.connect(str(self.socket))
                probe.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                status = probe.recv(64).split(b"\r\n", 1)[0].split()
        except OSError:
            return False
        return len(status) >= 2 and status[1] == b"200"

    def start(self, timeout: float = 60) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.run.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        self._bury_containerd()
        for stale in (self.run / "docker.pid", self.socket, self._containerd_pidfile):  # a killed engine leaves these
            stale.unlink(missing_ok=True)
        config = self.run / "daemon.json"
        # The main engine's runtimes (runsc) and nothing else of its configuration.
        runtimes = json.loads(MAIN_CONFIG.read_text()).get("runtimes", {}) if MAIN_CONFIG.exists() else {}
        config.write_text(json.dumps({"runtimes": runtimes} if runtimes else {}))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--config-file", str(config), "--data-root", str(self.data / "root"),
                 "--exec-root", str(self.run / "x"), "--pidfile", str(self.run / "docker.pid"), "-H", self.host,
                 "--iptables=false", "--ip-masq=false", "--bridge", self.bridge],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the private engine did not start: {tail}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the engine (its containerd goes with it; the containers' shims do not)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._bury_containerd()

    @property
    def _containerd_pidfile(self) -> Path:
        return self.run / "x" / "containerd" / "containerd.pid"

    def _bury_containerd(self) -> None:
        """Until the engine's own containerd is gone (it dies with a killed dockerd, a moment later): a restarted
        dockerd that finds it still listed waits for it instead of starting its own."""
        try:
            pid = int(self._containerd_pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + 10
        while _alive(pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def load(self, image: str) -> None:
        """Copy `image` from the main engine (docker save | docker load), unless this engine has it already."""
        wanted = _image_id(image, None)
        if _image_id(image, self.host) == wanted:
            return
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        try:
            subprocess.run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout, check=True,
                           capture_output=True, timeout=900)
        finally:
            assert save.stdout is not None
            save.stdout.close()
            save.wait(60)
        assert _image_id(image, self.host) == wanted

    def clean(self) -> None:
        """Remove every container of this engine (its images stay: they are the cache)."""
        if not self.answers():
            return
        client = self.client()
        try:
            for container in client.containers.list(all=True):
                with contextlib.suppress(Exception):
                    container.remove(force=True)
        finally:
            client.close()


def _alive(pid: int) -> bool:
    """The process runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _image_id(image: str, host: str | None) -> str | None:
    argv = ["docker", *(["-H", host] if host else []), "image", "inspect", "--format", "{{.Id}}", image]
    done = subprocess.run(argv, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@contextlib.contextmanager
def _bridge(name: str) -> Iterator[None]:
    _ip("link", "del", name)  # left by a session that died
    for step in (("link", "add", "name", name, "type", "bridge"), ("addr", "add", BRIDGE_ADDRESS, "dev", name),
                 ("link", "set", name, "up")):
        done = _ip(*step)
        if done.returncode != 0:
            _ip("link", "del", name)
            raise RuntimeError(f"ip {' '.join(step)}: {done.stderr.strip()}")
    try:
        yield
    finally:
        _ip("link", "del", name)


@contextlib.contextmanager
def private_engine_running() -> Iterator[PrivateEngine]:
    """The private engine, started (one session at a time on this machine), stopped and unplugged after."""
    RUN.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{RUN}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # another session's private engine would share these paths
        engine = PrivateEngine()
        with _bridge(BRIDGE):
            try:
                engine.start()
                engine.clean()
                yield engine
            finally:
                with contextlib.suppress(Exception):
                    if not engine.answers() and (engine.proc is None or engine.proc.poll() is not None):
                        engine.start()  # a test left it killed: start it to remove what it holds
                    engine.clean()
                engine.stop()
                shutil.rmtree(RUN, ignore_errors=True)
                # dockerd bind-mounts its data root onto itself; one that was killed leaves the mount behind
                while subprocess.run(["mountpoint", "-q", str(DATA / "root")]).returncode == 0:
                    if subprocess.run(["umount", str(DATA / "root")]).returncode != 0:
                        break


@pytest.fixture(scope="session")
def private_engine() -> Iterator[PrivateEngine]:
    if os.geteuid() != 0 or shutil.which("dockerd") is None or shutil.which("ip") is None:
        from tests.conftest import _unavailable

        _unavailable("a private engine needs root, dockerd and ip")
    with private_engine_running() as engine:
        yield engine
