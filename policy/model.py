"""Frozen values of the policy core: the loaded Policy, a ToolCall and the Decision made on it."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, Literal

from policy.paths import PathRules, PatternSet

KNOWN_TOOLS = (
    "Read",
    "Write",
    "Edit",
    "MultiEdit",
    "NotebookEdit",
    "Glob",
    "Grep",
    "LS",
    "Bash",
    "TodoWrite",
    # the CLI's own todo list; CLI 2.1 offers these instead of TodoWrite for most models
    "TaskCreate",
    "TaskGet",
    "TaskList",
    "TaskUpdate",
)


class Effect(enum.Enum):
    """What happens to a call: run it, refuse it, or ask the owner first.

    Ordered by strictness: combining effects keeps the strictest (``Effect.strictest``).
    """

    ALLOW = "allow"
    ASK = "ask"
    DENY = "deny"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @staticmethod
    def strictest(a: Effect, b: Effect) -> Effect:
        """Return the stricter of two effects: deny > ask > allow."""
        return a if a.rank >= b.rank else b


_RANK = {Effect.ALLOW: 0, Effect.ASK: 1, Effect.DENY: 2}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call the agent wants to make, in Claude Code's shape.

    >>> ToolCall("Bash", {"command": "git status"}, kind="fix")
    """

    tool: str
    input: Mapping[str, Any]
    kind: str = "feature"


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one ToolCall.

    `rule_id` names the policy entry or built-in check that decided (e.g. ``paths.write_protected``,
    ``bash.not-allowed``); `command` is the offending simple command for Bash calls; `policy_version` and
    `policy_sha256` say which policy decided, for the audit log.
    """

    effect: Effect
    rule_id: str
    reason: str
    command: str | None
    policy_version: str
    policy_sha256: str

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON shape: ``{"decision", "rule", "reason", "command", "policy_version", "policy_sha256"}``."""
        return {
            "decision": self.effect.value,
            "rule": self.rule_id,
            "reason": self.reason,
            "command": self.command,
            "policy_version": self.policy_version,
            "policy_sha256": self.policy_sha256,
        }


@dataclass(frozen=True, slots=True)
class Step:
    """How one part of a call was decided: a simple command of a Bash string, or the tool call itself."""

    command: str
    argv: tuple[str, ...]
    effect: Effect
    rule_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """The final Decision and every Step that led to it, in source order (for ``policy explain``)."""

    decision: Decision
    steps: tuple[Step, ...]


DEFAULT_TEST_ROUNDS = 2  # a real model's first attempt often needs one more round; a third rarely helps
DEFAULT_WORKSPACE_BYTES = 1 << 30  # 1 GiB: a clone with history is rarely past 100 MB; the rest is test output


@dataclass(frozen=True, slots=True)
class Limits:
    """Budgets of one task kind; enforced by the supervisor from outside the sandbox.

    `models` are glob patterns (fnmatch) of the model names the task's model calls may use; empty means "the family
    the supervisor is configured for" (the model gateway decides what that is). `workspace_bytes` caps the size of
    the sandbox's workspace. `test_rounds` is how many more times the agent is given the supervisor's failing
    test run (or a fix's failed verification) to correct its change, inside the same budgets; 0 turns it off.

    >>> Limits(40, 2_000_000, 5.0, 1800, 30, 200_000, models=("claude-sonnet-4-*",)).allows_model("claude-sonnet-4-5")
    True
    """

    max_turns: int
    max_tokens: int
    max_cost_usd: float
    wall_time_seconds: int
    max_changed_files: int
    max_diff_bytes: int
    models: tuple[str, ...] = ()
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    test_rounds: int = DEFAULT_TEST_ROUNDS

    def allows_model(self, model: str) -> bool | None:
        """Whether `model` matches `models`; None when `models` is empty (the caller's default family decides)."""
        if not self.models:
            return None
        return any(fnmatchcase(model, pattern) for pattern in self.models)


KNOWN_SOURCES = ("api", "telegram", "alertmanager")  # where the supervisor's tasks come from


@dataclass(frozen=True, slots=True)
class RateLimits:
    """How often tasks may start, per hour, and a cooldown.

    The owner's commands (API and Telegram together) count against `commands_per_hour`; alert-triggered
    auto-fixes against `autofixes_per_hour`. `per_source` caps one source on its own (e.g. ``{"telegram": 5}``);
    for the alert source it replaces `autofixes_per_hour`, for the owner's sources it applies as well.

    >>> RateLimits(per_source={"telegram": 5}).per_source["telegram"]
    5
    """

    commands_per_hour: int = 10
    autofixes_per_hour: int = 5
    cooldown_after_failure_seconds: int = 900
    # Not hashed: RateLimits stays hashable though a mapping proxy is not.
    per_source: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        # A caller's dict is copied, so nobody can change the limits of a loaded policy under its feet.
        object.__setattr__(self, "per_source", MappingProxyType(dict(self.per_source)))


@dataclass(frozen=True, slots=True)
class Profile:
    """What one task kind (``feature``, ``fix``, ``review``, ``dry-run``) may do."""

    kind: str
    tools: tuple[str, ...]
    read_only: bool
    limits: Limits


@dataclass(frozen=True, slots=True)
class Rule:
    """An owner rule, tried in order before the built-in defaults; the first that matches decides its part.

    A rule matches a part of a call when every condition it sets holds: `tools` (tool names), `kinds`
    (task kinds), `commands` (argv prefixes of a bash simple command, e.g. ``("git", "push")``) and
    `paths` (gitignore patterns matched against a path the part reads or writes, with `access`).
    Rules cannot loosen the structural checks of bash parsing nor the protected paths.
    """

    id: str
    effect: Effect
    reason: str
    tools: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    commands: tuple[tuple[str, ...], ...] = ()
    paths: tuple[str, ...] = ()
    access: Literal["read", "write", "any"] = "any"


@dataclass(frozen=True, slots=True)
class BashRules:
    """What the Bash tool may run."""

    allow: frozenset[str]
    ask: frozenset[str]
    git_subcommands: frozenset[str]
    python_modules: frozenset[str]
    interpreters: Effect
    protected_variables: tuple[str, ...]
    max_command_length: int
    max_commands: int


@dataclass(frozen=True, slots=True)
class Example:
    """A policy test: a call and the decision it must get (``rule`` optional)."""

    name: str
    call: ToolCall
    expect: Effect
    rule: str | None
    line: int | None


DEFAULT_MIGRATION_PATHS = (
    "**/alembic/versions/*.py",  # Alembic: revisions in versions/ under an alembic/ or migrations/ folder
    "**/migrations/versions/*.py",
    "**/migrations/*.py",  # Django: each app's migrations/ package
    "**/migrations/**/*.sql",  # plain SQL under a migrations folder (Flyway, golang-migrate, dbmate, ...)
)


@dataclass(frozen=True, slots=True)
class Migrations:
    """Which changed files alter the database: a release touching one is not rolled back without the owner.

    >>> Migrations(DEFAULT_MIGRATION_PATHS).touched(["app/models.py", "app/migrations/0002_balance.py"])
    ('app/migrations/0002_balance.py',)
    """

    paths: tuple[str, ...] = DEFAULT_MIGRATION_PATHS
    ask_before_deploy: bool = False
    """Also wait for the owner's go before deploying such a release (by default it deploys as usual, and only a
    failed health check or watch waits for the owner instead of rolling back)."""
    _set: PatternSet = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_set", PatternSet(self.paths))

    def touched(self, changed: Iterable[str]) -> tuple[str, ...]:
        """The workspace-relative paths among `changed` that are migrations, in their order (each once).

        A path is matched as the repository has it (`./a/b` and `a//b` read as `a/b`); a path that leaves
        the repository (`../x`, absolute) is no file of it and matches nothing.
        """
        out: list[str] = []
        for path in changed:
            rel = _repo_relative(path)
            if rel and rel not in out and not rel.endswith("/") and self._set.match(rel) is not None:
                out.append(rel)
        return tuple(out)


def _repo_relative(path: str) -> str | None:
    parts: list[str] = []
    for part in path.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            return None
        parts.append(part)
    return "/".join(parts) if parts and not path.startswith("/") else None


@dataclass(frozen=True, slots=True)
class Policy:
    """A loaded, validated policy. Build it with ``policy.load`` or ``policy.load_file``; never by hand.

    >>> p = load_file("policy.yaml"); p.profile("review").read_only
    True
    """

    schema: int
    version: str
    sha256: str
    source: str
    workspace: str
    profiles: Mapping[str, Profile]
    paths: PathRules
    bash: BashRules
    rules: tuple[Rule, ...]
    rate_limits: RateLimits
    test_command: str
    setup_command: str
    dependency_files: tuple[str, ...]
    autofix_mode: Literal["pr", "dry-run"]
    ask_timeout_seconds: int
    examples: tuple[Example, ...] = field(default=(), compare=False)
    migrations: Migrations = field(default_factory=Migrations)

    def profile(self, kind: str) -> Profile:
        """The profile of a task kind; KeyError if the policy has none (the engine denies such calls)."""
        return self.profiles[kind]

    def allowed_tools(self, kind: str) -> tuple[str, ...]:
        """Tool names the profile of `kind` allows (empty for an unknown kind)."""
        prof = self.profiles.get(kind)
        return prof.tools if prof is not None else ()

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.profiles)
