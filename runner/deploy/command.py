"""CommandDeployer: an operator's own shell command ships the bot; we wait for it to be healthy.

Each deploy or rollback runs under a fence, a directory of its own under `runs`: a small wrapper shell holds
the directory's lock (an flock the kernel drops when the wrapper exits, even if the supervisor was SIGKILLed
meanwhile) for exactly as long as the operator's command runs, and leaves its pid (the run's process group),
the command's exit status and its output there. A run of a supervisor that is gone is therefore visible: the
next run of this deployer waits for it, or kills its process group once the timeout has passed since it
began, before it starts; `settle` does the same for one fence and reads how that run ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import IO, Literal

from runner import tasklock
from runner.deploy.base import (
    DEFAULT_DEPLOY_TIMEOUT,
    DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_TIMEOUT,
    LOGS_TAIL_CHARS,
    DeployAction,
    DeployError,
    DeployResult,
    DeploySource,
    Fence,
)
from runner.deploy.health import HttpProbe, Verdict, wait_healthy
from runner.errors import ConfigError
from runner.resource import AsyncResource

ENV_SHA = "AGENT_RUNNER_DEPLOY_SHA"
ENV_REPO = "AGENT_RUNNER_DEPLOY_REPO"
ENV_ACTION = "AGENT_RUNNER_DEPLOY_ACTION"
# The command is the operator's, but it gets none of the supervisor's secrets (model key, forge token):
# only these are inherited, plus what the operator configures in `env`.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")
# The wrapper holds the lock on its stdin and gives the command /dev/null instead, so that nothing the command
# leaves running in the background (a server started with `&`) keeps the run looking alive. $1 is the command,
# $2 the run's directory: arguments, never spliced into the script.
WRAPPER = 'echo $$ > "$2/pid"; /bin/sh -c "$1" </dev/null; status=$?; echo $status > "$2/status"; exit $status'
SETTLE_POLL = 0.2  # how often a run left by a previous supervisor is looked at
STOP_GRACE = 10.0  # how long a killed process group may take to let go of its lock
KEEP_RUNS = 20  # finished runs' directories kept for inspection


# Words /bin/sh runs itself: a command that starts with one (`cd /srv/bot && make deploy`) has no program to
# look for, and the shell finds out the rest when it runs.
SHELL_WORDS = frozenset(". : [ alias break case cd command continue eval exec exit export false for getopts "
                        "if read readonly return set shift test trap true type ulimit umask unset until wait "
                        "while".split())
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def deploy_program(command: str) -> str | None:
    """The program `command` starts first (after any `VAR=value`), or None when the shell runs it itself; the
    command is only split as /bin/sh would split it, never run. ValueError when it does not split (a quote open)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    for word in list(lexer):  # the whole string, so an open quote anywhere is refused
        if _ASSIGNMENT.match(word) or word in ("(", "{", "!"):  # what comes before the program
            continue
        return None if word in SHELL_WORDS or not word.strip("();&|<>") else word
    return None


def check_deploy_command(command: str, *, path: str | None = None, cwd: Path | None = None) -> None:
    """At start: the command's program is on `path` (the PATH it will run with) or is an executable file, so a
    typo is one line naming AGENT_RUNNER_DEPLOY_COMMAND, not a failed release after the merge."""
    try:
        program = deploy_program(command)
    except ValueError as exc:
        raise ConfigError(f"AGENT_RUNNER_DEPLOY_COMMAND does not parse as a shell command ({exc}): "
                          f"{command!r}") from None
    if program is None:
        return
    if "/" in program:
        file = (cwd or Path.cwd()) / Path(program).expanduser()
        if not (file.is_file() and os.access(file, os.X_OK)):
            state = "is not executable (chmod +x it)" if file.is_file() else "does not exist"
            raise ConfigError(f"AGENT_RUNNER_DEPLOY_COMMAND runs {program}, which {state}; give the deploy "
                              "script's path, or a program on PATH")
        return
    if shutil.which(program, path=path) is None:
        raise ConfigError(f"AGENT_RUNNER_DEPLOY_COMMAND runs {program!r}, which is not on PATH; install it, or give "
                          "its full path")


@dataclass(frozen=True, slots=True)
class _Run:
    returncode: int | None  # None: killed at the timeout
    output: str


Ending = Literal["finished", "stopped", "gone"]


@dataclass(eq=False)
class CommandDeployer(AsyncResource):
    """Runs `deploy_command` through /bin/sh with the SHA and repository in its environment, then waits healthy.

    Health is an HTTP probe of `health_url` (2xx), else `health_command` exiting 0, else the deploy command's
    own exit status. A rollback runs the same command for the previous SHA with `AGENT_RUNNER_DEPLOY_ACTION=rollback`.
    The command runs in its own process group, so a timeout kills everything it started. `runs` is where runs
    leave their traces (AGENT_RUNNER_HOME/deploys for the service); without it, a directory of this deployer's
    own that goes with it, so nothing of a run is found after a restart.
    """

    deploy_command: str
    health_url: str | None = None
    health_command: str | None = None
    timeout: float = DEFAULT_DEPLOY_TIMEOUT
    _: KW_ONLY
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    health_interval: float = DEFAULT_HEALTH_INTERVAL
    env: Mapping[str, str] | None = field(default=None, repr=False)
    cwd: Path | str | None = None
    runs: Path | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.deploy_command.strip():
            raise DeployError("the command deployer needs a deploy command")
        self.env = dict(self.env or {})
        self._scratch: Path | None = None
        self._probe = HttpProbe()
        self._one = asyncio.Lock()  # one command at a time: two would race over the one service

    async def aclose(self) -> None:
        await self._probe.aclose()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _runs_dir(self) -> Path:
        if self.runs is not None:
            return self.runs
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="agent-runner-deploys-"))
        return self._scratch

    def fence(self, key: str, action: DeployAction, sha: str) -> Fence:
        assert key and "/" not in key and not key.startswith("."), key
        return Fence(key, action, sha, self.clock(), str(self._runs_dir() / key))

    async def deploy(self, checkout: DeploySource, *, fence: Fence | None = None) -> DeployResult:
        return await self._release(checkout, "deploy", fence)

    async def rollback(self, previous: DeploySource, *, fence: Fence | None = None) -> DeployResult:
        return await self._release(previous, "rollback", fence)

    async def settle(self, fence: Fence, source: DeploySource) -> DeployResult | None:
        place = Path(fence.place) if fence.place else None
        if place is None or not (place / "lock").exists():
            return None  # the step never started its command (or its traces are gone): run it
        async with self._one:
            ending = await self._wait_for(place, fence.started_at)
        if ending != "finished":
            return None
        started = time.monotonic()
        output = _read_tail_of(place / "output")
        status = int((place / "status").read_text().strip() or "1")
        by = "begun by a previous supervisor process"
        if status != 0:
            return DeployResult.failed(fence.sha, f"{fence.action} command {by} exited {status}", started, output)
        healthy, health_detail = await self._health(self._environment(source, fence.action))
        return DeployResult.done(fence.sha, healthy, f"{fence.action} command {by} ran to its end; {health_detail}",
                                 started, output)

    def _environment(self, source: DeploySource, action: str) -> dict[str, str]:
        env = {key: os.environ[key] for key in INHERITED if key in os.environ}
        env.update(self.env or {})
        env.update({ENV_SHA: source.sha, ENV_REPO: source.repo, ENV_ACTION: action})
        return env

    async def _release(self, source: DeploySource, action: DeployAction, fence: Fence | None) -> DeployResult:
        async with self._one:
            await self._wait_for_others()
            fence = fence or self.fence(f"{action}-{time.time_ns()}", action, source.sha)
            assert fence.place is not None
            started = time.monotonic()
            env = self._environment(source, action)
            run = await self._fenced(Path(fence.place), fence, env)
        if run.returncode != 0:
            why = f"timed out after {self.timeout:g}s" if run.returncode is None else f"exited {run.returncode}"
            return DeployResult.failed(source.sha, f"{action} command {why}", started, run.output)
        command_seconds = time.monotonic() - started
        healthy, health_detail = await self._health(env)
        detail = f"{action} command ran in {command_seconds:.2f}s; {health_detail}"
        return DeployResult.done(source.sha, healthy, detail, started, run.output)

    async def _health(self, env: Mapping[str, str]) -> tuple[bool, str]:
        if self.health_url is None and self.health_command is None:
            return True, "no health check configured; the command's exit 0 stands for it"
        health = await wait_healthy(lambda: self._check(env), timeout=self.health_timeout,
                                    interval=self.health_interval)
        return health.healthy, f"{'healthy' if health.healthy else 'unhealthy'} after {health.seconds:.2f}s: " \
                               f"{health.detail}"

    async def _check(self, env: Mapping[str, str]) -> tuple[Verdict, str]:
        if self.health_url is not None:
            return await self._probe(self.health_url)
        assert self.health_command is not None
        # Each probe gets at most one polling interval's worth of patience beyond a floor of a few seconds.
        run = await self._shell(self.health_command, env, max(5.0, self.health_interval))
        if run.returncode == 0:
            return "healthy", f"health command exited 0: {run.output.strip()[-200:]}"
        return "waiting", f"health command exited {run.returncode}: {run.output.strip()[-200:]}"

    # runs under a fence -------------------------------------------------------------------------------------

    async def _fenced(self, place: Path, fence: Fence, env: Mapping[str, str]) -> _Run:
        try:
            place.mkdir(parents=True)
            (place / "run.json").write_text(json.dumps(fence.to_json()))
            lock = os.open(place / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DeployError(f"could not prepare the deploy's run directory {place}: {exc}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new directory: nobody else holds it
            with open(place / "output", "wb") as output:
                proc = await self._spawn(["/bin/sh", "-c", WRAPPER, "agent-runner-deploy", self.deploy_command,
                                          str(place)], env, stdin=lock, stdout=output)
        finally:
            os.close(lock)  # the wrapper holds it now: the lock lasts exactly as long as the wrapper
        returncode = await self._wait(proc, self.timeout)
        return _Run(returncode, _read_tail_of(place / "output"))

    async def _wait_for_others(self) -> None:
        """Runs of a previous supervisor that still hold their lock: wait for them, or stop them at their timeout."""
        runs = self._runs_dir()
        if not runs.is_dir():
            return
        finished = []
        for place in sorted(p for p in runs.iterdir() if p.is_dir()):
            if tasklock.is_held(place / "lock"):
                await self._wait_for(place, _started_at(place))
            finished.append(place)
        for old in sorted(finished, key=lambda p: p.stat().st_mtime)[:-KEEP_RUNS]:
            shutil.rmtree(old, ignore_errors=True)

    async def _wait_for(self, place: Path, started_at: float) -> Ending:
        """Until nothing of the run at `place` holds its lock. Killed (its whole process group) once `timeout`
        seconds have passed since `started_at`, as the supervisor that began it would have done."""
        lock = place / "lock"
        while tasklock.is_held(lock):
            if self.clock() >= started_at + self.timeout:
                await self._stop(place)
                return "stopped"
            await asyncio.sleep(SETTLE_POLL)
        return "finished" if (place / "status").exists() else "gone"

    async def _stop(self, place: Path) -> None:
        for pid in _holders(place):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        deadline = time.monotonic() + STOP_GRACE
        while tasklock.is_held(place / "lock"):
            if time.monotonic() > deadline:
                raise DeployError(f"the deploy run at {place} (begun by a previous supervisor process) still runs "
                                  f"{STOP_GRACE:g}s after it was killed; stop it, then retry")
            await asyncio.sleep(0.05)

    # plain commands -----------------------------------------------------------------------------------------

    async def _shell(self, command: str, env: Mapping[str, str], timeout: float) -> _Run:
        # Output goes to a file, not a pipe: a server the command starts in the background without
        # redirecting would hold a pipe open, and asyncio waits for every pipe before it reports the exit.
        with tempfile.TemporaryFile() as output:
            proc = await self._spawn(["/bin/sh", "-c", command], env, stdin=asyncio.subprocess.DEVNULL,
                                     stdout=output)
            returncode = await self._wait(proc, timeout)
            return _Run(returncode, _read_tail(output))

    async def _spawn(self, argv: list[str], env: Mapping[str, str], *, stdin: int,
                     stdout: IO[bytes]) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *argv, stdin=stdin, stdout=stdout, stderr=asyncio.subprocess.STDOUT, env=dict(env), cwd=self.cwd,
                start_new_session=True)
        except OSError as exc:
            raise DeployError(f"could not start the deploy command: {exc}") from exc

    async def _wait(self, proc: asyncio.subprocess.Process, timeout: float) -> int | None:
        try:
            async with asyncio.timeout(timeout):
                return await proc.wait()
        except TimeoutError:
            _kill_group(proc)
            await proc.wait()
            return None
        except BaseException:
            _kill_group(proc)
            await proc.wait()
            raise


def _started_at(place: Path) -> float:
    try:
        return float(json.loads((place / "run.json").read_text())["started_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return (place / "lock").stat().st_mtime


def _holders(place: Path) -> set[int]:
    """The run's process group leader (the wrapper wrote its pid), else whoever has its lock file open."""
    with contextlib.suppress(OSError, ValueError):
        return {int((place / "pid").read_text().strip())}
    lock = str((place / "lock").resolve())
    found = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == lock for fd in fd_dir.iterdir()):
                found.add(int(fd_dir.parent.name))
    return found


def _read_tail_of(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            return _read_tail(file)
    except OSError:
        return ""


def _read_tail(file: IO[bytes]) -> str:
    size = file.seek(0, os.SEEK_END)
    # Bytes, not characters, but generous enough that the character tail is always inside.
    file.seek(max(0, size - 4 * LOGS_TAIL_CHARS))
    return file.read().decode("utf-8", "replace")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
