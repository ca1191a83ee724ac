"""Errors raised by the supervisor's I/O shell: one tree, drawn here whichever module defines a branch.

    RunnerError
    ├── ConfigError                 bad settings; lists every bad key
    ├── SandboxError                the container backend failed
    │   ├── SandboxStartError       the engine is down, the image is missing, the container did not start
    │   ├── SandboxTimeout          a command or the task's wall clock ran out (also a TimeoutError)
    │   ├── WorkspaceFull           the task wrote its workspace full (runner.sandbox.base)
    │   └── ArchiveError            the workspace's tar does not read as one (also an OSError; runner.sandbox.archive)
    ├── EngineUnavailable           the Docker engine does not answer (runner.docker_engine)
    │   └── EngineGone              it stopped answering a client that had reached it
    ├── ForgeError                  the forge (GitHub, local git) refused or failed
    │   ├── ForgeAuthError          401/403: bad token or missing scope
    │   ├── ForgeNotFound           404: no such repository, branch or pull request
    │   ├── ForgeConflict           not mergeable, head moved, branch protected
    │   │   └── MergeConflict       the PR no longer merges cleanly; names the files (runner.forge.base)
    │   └── ForgeRateLimited        secondary rate limit; carries retry_after seconds
    ├── GitError                    git exited non-zero, stderr redacted (runner.gitops)
    │   └── GitTimeout              git ran out of time (also a TimeoutError)
    ├── DeployError                 the deployer could not do its work at all (runner.deploy.base)
    ├── NotifyError                 the notifier (Telegram) failed
    ├── UpstreamError               the model API failed or refused
    ├── SessionInvalid              a kept agent transcript cannot be resumed (a ValueError; runner.session)
    ├── ScenarioError               a scripted model's scenario cannot be played (ValueError; runner.scenario)
    ├── LokiUnavailable             Loki gave no usable answer after its retries (runner.alerts.loki)
    ├── WatchSourceError            the post-deploy watch cannot read its error source now (runner.service.watch)
    ├── WebhookError                a webhook body or LogQL query is refused (a ValueError; runner.alerts.payload)
    │   └── LokiResponseError       Loki answered something that is not a query result
    ├── LinkError                   a task-page link or Mini App initData is refused (runner.links)
    ├── GrafanaAuthError            a Grafana alert lacks the contact point's credentials (runner.grafana)
    ├── OperationError              an owner or alert action (runner.service.operations) cannot be done
    │   ├── TaskError               a task cannot do what was asked (wrong state, nothing configured)
    │   │   └── TaskNotFound        no task with that id
    │   ├── RateLimited             a limit or a fingerprint's cooldown refused it; carries retry_after
    │   ├── PolicyVersionNotFound   no policy version with that number
    │   ├── ProposalVoid            a policy proposal that can no longer be confirmed
    │   └── BadRequest              an HTTP request that is malformed: 400, or 413 (runner.api.endpoints)
    └── StateError                  the state file (SQLite) failed; the message names the file
        ├── StateFull               its disk is full: nothing more can be recorded until space is freed
        └── StateCorrupt            it is damaged (truncated, overwritten, not a database): restore a backup

Each backend maps its library's exceptions at its boundary (`raise ForgeNotFound(...) from exc`),
so callers handle these and never a third-party type. A policy that does not load is policy's own
PolicyLoadError (the pure core's tree), which front ends answer 422 / "not valid".
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


class OperationError(RunnerError):
    """An owner or alert action cannot be done as asked; the message is written for the owner."""


class TaskError(OperationError):
    """A task operation is not possible (wrong state, no repository or forge configured)."""


class TaskNotFound(TaskError):
    """No task has that id."""


class RateLimited(OperationError):
    """A rate limit (or a fingerprint's cooldown after a failed fix) refused the request.

    `limit` says which, for the owner ("2 commands per hour"); try again in `retry_after` seconds.
    """

    def __init__(self, message: str, *, retry_after: int, limit: str, cooldown: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit
        self.cooldown = cooldown


class PolicyVersionNotFound(OperationError, KeyError):
    """No recorded policy version has that number (also a KeyError, as the policy store's lookups were)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ProposalVoid(OperationError):
    """A policy proposal that can no longer be confirmed: unknown, expired, or made against a replaced policy."""


class StateError(RunnerError):
    """The supervisor's state file could not be read or written; `path` is the file."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class StateFull(StateError):
    """The state file's disk is full: the write was refused, and nothing more can be recorded until space is freed."""


class StateCorrupt(StateError):
    """The state file is damaged (its integrity check failed, it was truncated or is not a database)."""
