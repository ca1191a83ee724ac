"""Trusted git: every git the supervisor runs goes through `run_git`, with config and hooks neutralised.

A repository's own `.git/config`, hooks and attributes may come from an untrusted place (the sandbox wrote
them, or an attacker pushed them), so git runs with a clean environment, no system or global config, and
the `-c` overrides below, which win over anything the repository's config says. Errors carry git's stderr
with the caller's secrets redacted.

    RunnerError
    └── GitError            git failed (exit status, redacted stderr)
        └── GitTimeout      git ran out of time (also a TimeoutError)
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from runner.errors import RunnerError

logger = logging.getLogger(__name__)

DEFAULT_GIT_TIMEOUT = 120.0
COMMITTER_NAME = "agent-runner"
COMMITTER_EMAIL = "agent-runner@localhost"
REDACTED = "[REDACTED]"

# Overrides given with -c win over the repository's config. Each one closes a way a repository's config
# could make git run a program or send our credentials somewhere.
SAFE_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.sshCommand", "ssh"),
    ("core.askPass", ""),
    ("core.pager", "cat"),
    ("core.editor", "false"),
    ("credential.helper", ""),
    ("protocol.ext.allow", "never"),
    ("protocol.allow", "user"),
    ("protocol.https.allow", "always"),
    ("protocol.http.allow", "always"),
    ("protocol.file.allow", "always"),
    ("protocol.git.allow", "never"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("advice.detachedHead", "false"),
    ("init.defaultBranch", "main"),
)

# diff.external and textconv drivers cannot be unset with -c (an empty value means "run ''"), so the
# porcelain commands that would run them get --no-ext-diff --no-textconv; plumbing never runs them.
_DIFFING = frozenset({"diff", "log", "show"})

# Only these are taken from the supervisor's own environment; every GIT_* variable is dropped.
_INHERITED = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")


class GitError(RunnerError):
    """git exited non-zero; `stderr` is already redacted."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class GitTimeout(GitError, TimeoutError):
    """git did not finish within its timeout and was killed."""


@dataclass(frozen=True, slots=True)
class GitResult:
    args: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        """stdout decoded and stripped: what most plumbing commands print."""
        return self.stdout.decode("utf-8", "replace").strip()


def secret_forms(secret: str) -> tuple[str, ...]:
    """A secret and the encodings git may echo it in (HTTP Basic credentials), for redaction."""
    forms = {secret}
    for user in ("x-access-token", ""):
        forms.add(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return tuple(forms)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each non-empty secret (longest first) with a marker."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every trusted git runs in: inherited PATH and locale only, no user config."""
    env = {key: os.environ[key] for key in _INHERITED if key in os.environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    env.update(
        {
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "GIT_PAGER": "cat",
            "GIT_EDITOR": "false",
            "GIT_AUTHOR_NAME": COMMITTER_NAME,
            "GIT_AUTHOR_EMAIL": COMMITTER_EMAIL,
            "GIT_COMMITTER_NAME": COMMITTER_NAME,
            "GIT_COMMITTER_EMAIL": COMMITTER_EMAIL,
            # HOME points nowhere useful so ~/.gitconfig, ~/.netrc and ~/.git-credentials are never read.
            "HOME": "/nonexistent",
            "XDG_CONFIG_HOME": "/nonexistent",
            "LC_ALL": "C",
        }
    )
    if extra:
        env.update(extra)
    return env


def git_argv(args: Sequence[str]) -> list[str]:
    """`git -c k=v ... <args>` with the safe overrides in front (and external diff off for porcelain diffs)."""
    argv = ["git"]
    for key, value in SAFE_CONFIG:
        argv += ["-c", f"{key}={value}"]
    rest = list(args)
    i = 0
    while i < len(rest) and rest[i].startswith("-"):
        i += 2 if rest[i] in ("-c", "-C") else 1
    if i < len(rest) and rest[i] in _DIFFING:
        rest[i + 1 : i + 1] = ["--no-ext-diff", "--no-textconv"]
    return argv + rest


async def run_git(
    args: Sequence[str],
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = DEFAULT_GIT_TIMEOUT,
    secrets: Collection[str] = (),
    check: bool = True,
) -> GitResult:
    """Run one trusted git command and return its output.

    `env` adds variables (e.g. GIT_DIR, GIT_INDEX_FILE, GIT_CONFIG_COUNT/KEY/VALUE for a credential header)
    on top of the sanitised environment; pass anything secret in it, never in `args`, and list it in
    `secrets` so it is redacted from errors. Raises GitError on a non-zero exit (unless `check=False`) and
    GitTimeout when `timeout` seconds pass, after killing git.

        >>> await run_git(["rev-parse", "HEAD"], cwd=clone)  # doctest: +SKIP
        GitResult(args=('rev-parse', 'HEAD'), returncode=0, stdout=b'3f2a...\\n', stderr='')
    """
    hidden = [form for secret in secrets if secret for form in secret_forms(secret)]
    shown = redact(" ".join(args), hidden)
    proc = await asyncio.create_subprocess_exec(
        *git_argv(args),
        cwd=cwd,
        env=git_env(env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Its own process group, so a timeout also kills the helpers git started (remote-https,
        # pack-objects, an alias's shell), which would otherwise hold its pipes open.
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, raw_err = await proc.communicate(stdin)
    except TimeoutError:
        await _kill(proc)
        raise GitTimeout(f"git {shown} timed out after {timeout:g}s") from None
    except BaseException:
        # Cancelled: never leave a git behind holding a ref lock.
        if proc.returncode is None:
            await _kill(proc)
        raise
    stderr = redact(raw_err.decode("utf-8", "replace"), hidden)
    returncode = proc.returncode if proc.returncode is not None else -1
    logger.debug("git %s -> %d", shown, returncode)
    if check and returncode != 0:
        detail = stderr.strip() or "(no output)"
        raise GitError(f"git {shown} failed with exit {returncode}: {detail}", returncode=returncode, stderr=stderr)
    return GitResult(args=tuple(args), returncode=returncode, stdout=stdout, stderr=stderr)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    await proc.wait()


async def head_sha(clone: Path, *, timeout: float = DEFAULT_GIT_TIMEOUT) -> str:
    """The full SHA of HEAD in a clone."""
    return (await run_git(["rev-parse", "--verify", "HEAD^{commit}"], cwd=clone, timeout=timeout)).out
