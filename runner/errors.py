"""Errors raised by the supervisor's I/O shell.

    RunnerError
    ├── ConfigError                 bad settings; lists every bad key
    ├── SandboxError                the container backend failed
    │   ├── SandboxStartError       the engine is down, the image is missing, the container did not start
    │   └── SandboxTimeout          a command or the task's wall clock ran out (also a TimeoutError)
    ├── ForgeError                  the forge (GitHub, local git) refused or failed
    │   ├── ForgeAuthError          401/403: bad token or missing scope
    │   ├── ForgeNotFound           404: no such repository, branch or pull request
    │   ├── ForgeConflict           not mergeable, head moved, branch protected
    │   └── ForgeRateLimited        secondary rate limit; carries retry_after seconds
    ├── NotifyError                 the notifier (Telegram) failed
    ├── UpstreamError               the model API failed or refused
    ├── TaskError                   a task cannot do what was asked (unknown id, wrong state)
    └── StateError                  the state file (SQLite) failed; the message names the file
        ├── StateFull               its disk is full: nothing more can be recorded until space is freed
        └── StateCorrupt            it is damaged (truncated, overwritten, not a database): restore a backup

Each backend maps its library's exceptions at its boundary (`raise ForgeNotFound(...) from exc`),
so callers handle these and never a third-party type.
"""

from __future__ import annotations


class RunnerError(Exception):
    """Base of every error the supervisor raises on purpose."""


class ConfigError(RunnerError):
    """Settings are missing or malformed; the message lists every bad key."""


class SandboxError(RunnerError):
    """The sandbox backend failed."""


class SandboxStartError(SandboxError):
    """The container could not be started (engine down, image missing, bad spec)."""


class SandboxTimeout(SandboxError, TimeoutError):
    """A command in the sandbox, or the task's wall clock, ran out of time."""


class ForgeError(RunnerError):
    """The forge refused or failed."""


class ForgeAuthError(ForgeError):
    """The forge rejected our credentials, or they lack a needed scope."""


class ForgeNotFound(ForgeError):
    """No such repository, branch or pull request."""


class ForgeConflict(ForgeError):
    """The pull request cannot be merged as asked (head moved, conflicts, protected branch)."""


class ForgeRateLimited(ForgeError):
    """The forge asked us to slow down."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotifyError(RunnerError):
    """The notifier failed to deliver a message."""


class UpstreamError(RunnerError):
    """The model API failed or refused a request."""


class TaskError(RunnerError):
    """A task operation is not possible (unknown task, wrong state)."""


class StateError(RunnerError):
    """The supervisor's state file could not be read or written; `path` is the file."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class StateFull(StateError):
    """The state file's disk is full: the write was refused, and nothing more can be recorded until space is freed."""


class StateCorrupt(StateError):
    """The state file is damaged (its integrity check failed, it was truncated or is not a database)."""
