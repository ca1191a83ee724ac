"""Settings: read once from an environment mapping, validated, frozen."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from runner.alerts.logql import WebhookError, validate_logql
from runner.errors import ConfigError

DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
DEFAULT_GITHUB_API_URL = "https://api.github.com"
DEFAULT_SANDBOX_IMAGE = "agent-runner/sandbox:latest"
DEFAULT_MAX_SANDBOXES = 2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DEPLOYER = "none"
DEPLOYERS = ("none", "command", "docker")
DEFAULT_WATCH_SECONDS = 600
DEFAULT_WATCH_INTERVAL = 30
DEFAULT_WATCH_BASELINE_SECONDS = 3600
DEFAULT_WATCH_SELECTOR = '{service=~".+"}'
MIN_LINK_SECRET_CHARS = 16
MAX_PORT = 65535


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Settings:
    home: Path
    anthropic_base_url: str = DEFAULT_ANTHROPIC_BASE_URL
    anthropic_api_key: Secret | None = None
    api_token: Secret | None = None
    alert_webhook_secret: Secret | None = None
    loki_url: str | None = None
    github_token: Secret | None = None
    github_repository: str | None = None
    github_api_url: str = DEFAULT_GITHUB_API_URL
    github_fork: str | None = None
    """Fork mode (GITHUB_FORK, owner/name): agent branches are pushed to this fork of GITHUB_REPOSITORY, created
    if missing, and pull requests are opened from it, so the bot's workflows never run them with its secrets."""
    telegram_bot_token: Secret | None = None
    telegram_api_base: str | None = None
    owner_telegram_id: int | None = None
    telegram_webhook_url: str | None = None
    """Webhook mode: Telegram posts updates to this public URL (ending in /telegram/webhook); else long polling."""
    telegram_webhook_secret: Secret | None = None
    github_webhook_secret: Secret | None = None
    """The GitHub webhook's secret (X-Hub-Signature-256 of PR comment events); None: PR comments are polled."""
    github_owner_login: str | None = None
    """The GitHub login whose `/agent` PR comments are follow-ups (default: the owner of GITHUB_REPOSITORY)."""
    sandbox_image: str = DEFAULT_SANDBOX_IMAGE
    sandbox_runtime: str | None = None
    """The OCI runtime of every container a task starts (AGENT_RUNNER_RUNTIME); None: gVisor's runsc when the
    engine has it, else runc with a warning at start."""
    policy_path: Path | None = None
    max_sandboxes: int = DEFAULT_MAX_SANDBOXES
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    repo: str | None = None
    """The repository `serve` works on (AGENT_RUNNER_REPO): a bare repository's path, or a git URL."""
    deployer: str = DEFAULT_DEPLOYER
    deploy_command: str | None = None
    health_url: str | None = None
    deploy_service: str | None = None
    deploy_base_image: str | None = None
    """The docker deployer's build base (AGENT_RUNNER_DEPLOY_BASE_IMAGE); None: the first of python:3.12-slim and
    agent-runner/base:bookworm the engine has, chosen at `serve` start."""
    deploy_port: int | None = None
    """The loopback port the docker deployer publishes the bot's port 8000 on and health-checks over HTTP
    (AGENT_RUNNER_DEPLOY_PORT); None: nothing is published and the container's HEALTHCHECK decides."""
    repo_roots: tuple[str, ...] = ()
    """Where the bot's code lives in production tracebacks (AGENT_RUNNER_REPO_ROOTS, comma-separated: `/app`,
    `bot/`); frames under them are the repository's. Empty: every frame outside site-packages and the stdlib."""
    watch_seconds: int = DEFAULT_WATCH_SECONDS
    """Post-deploy watch (AGENT_RUNNER_WATCH_SECONDS): how long after a deploy its errors are compared with
    before; 0 turns it off."""
    watch_interval: int = DEFAULT_WATCH_INTERVAL
    watch_baseline_seconds: int = DEFAULT_WATCH_BASELINE_SECONDS
    watch_selector: str = DEFAULT_WATCH_SELECTOR
    """The LogQL stream selector of the bot's logs, for the watch's Loki queries."""
    public_url: str | None = None
    """Where the owner's browser reaches the supervisor (AGENT_RUNNER_PUBLIC_URL): the task page links in Telegram
    point here. None: no link is sent (a loopback address would open nothing on a phone)."""
    link_secret: Secret | None = None
    """The key that signs task page links (AGENT_RUNNER_LINK_SECRET); None: derived from AGENT_API_TOKEN, so
    rotating the token also voids every link sent."""
    grafana_webhook_token: Secret | None = None
    """The bearer credentials Grafana's webhook contact point sends to POST /agent/grafana."""
    grafana_webhook_hmac_secret: Secret | None = None
    """The contact point's HMAC secret (Grafana 11.6+ `hmacConfig`); with it, an unsigned body is refused."""
    extra: Mapping[str, str] = field(default_factory=dict)

    def task_link_key(self) -> bytes | None:
        """The key task page links are signed with: AGENT_RUNNER_LINK_SECRET, else one derived from the API token
        (domain-separated, so a link's signature says nothing about the token); None with neither."""
        if self.link_secret is not None:
            return self.link_secret.reveal().encode()
        if self.api_token is None:
            return None
        return hmac.new(self.api_token.reveal().encode(), b"agent-runner task page links", hashlib.sha256).digest()

    @property
    def scripted_model(self) -> bool:
        """No key: the demo and `run` play a scripted model and say so."""
        return self.anthropic_api_key is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse and validate; one ConfigError lists every bad key."""
        problems: list[str] = []

        def secret(key: str) -> Secret | None:
            value = environ.get(key, "")
            return Secret(value) if value else None

        def integer(key: str, default: int | None, low: int = 0) -> int | None:
            raw = environ.get(key, "")
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"{key} must be an integer, got {raw!r}")
                return default
            if value < low:
                problems.append(f"{key} must be at least {low}, got {value}")
            return value

        def url(key: str, default: str | None) -> str | None:
            value = environ.get(key, "") or default
            if value is not None and not well_formed_url(value):
                problems.append(f"{key} must be an http(s) URL with a host, like http://127.0.0.1:8000/health, "
                                f"got {value!r}")
            return value.rstrip("/") if value else value

        home = Path(environ.get("AGENT_RUNNER_HOME") or Path(environ.get("HOME", "/root")) / ".agent-runner")
        repository = environ.get("GITHUB_REPOSITORY") or None
        if repository is not None and repository.count("/") != 1:
            problems.append(f"GITHUB_REPOSITORY must be owner/name, got {repository!r}")
        github_token = secret("GITHUB_TOKEN")
        if github_token is not None and repository is None:
            problems.append("GITHUB_TOKEN is set but GITHUB_REPOSITORY (owner/name) is not")
        fork = environ.get("GITHUB_FORK") or None
        if fork is not None:
            if fork.count("/") != 1 or not all(fork.split("/")):
                problems.append(f"GITHUB_FORK must be owner/name, got {fork!r}")
            elif github_token is None or repository is None:
                problems.append("GITHUB_FORK is set but GITHUB_TOKEN and GITHUB_REPOSITORY are not")
            elif fork.lower() == repository.lower():
                problems.append("GITHUB_FORK must name a fork, not GITHUB_REPOSITORY itself")
        policy = environ.get("AGENT_RUNNER_POLICY")
        deployer = environ.get("AGENT_RUNNER_DEPLOYER") or DEFAULT_DEPLOYER
        deploy_command = environ.get("AGENT_RUNNER_DEPLOY_COMMAND") or None
        deploy_service = environ.get("AGENT_RUNNER_DEPLOY_SERVICE") or None
        if deployer not in DEPLOYERS:
            problems.append(f"AGENT_RUNNER_DEPLOYER must be one of {', '.join(DEPLOYERS)}, got {deployer!r}")
        elif deployer == "command" and deploy_command is None:
            problems.append("AGENT_RUNNER_DEPLOYER=command needs AGENT_RUNNER_DEPLOY_COMMAND")
        elif deployer == "docker" and deploy_service is None:
            problems.append("AGENT_RUNNER_DEPLOYER=docker needs AGENT_RUNNER_DEPLOY_SERVICE")

        runtime = environ.get("AGENT_RUNNER_RUNTIME") or None
        if runtime is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", runtime):
            problems.append(f"AGENT_RUNNER_RUNTIME must be the name of a Docker runtime (runsc, runc), got {runtime!r}")

        settings = cls(
            home=home.expanduser().resolve(),
            anthropic_base_url=url("ANTHROPIC_BASE_URL", DEFAULT_ANTHROPIC_BASE_URL) or "",
            anthropic_api_key=secret("ANTHROPIC_API_KEY"),
            api_token=secret("AGENT_API_TOKEN"),
            alert_webhook_secret=secret("ALERT_WEBHOOK_SECRET"),
            loki_url=url("LOKI_URL", None),
            github_token=github_token,
            github_repository=repository,
            github_api_url=url("GITHUB_API_URL", DEFAULT_GITHUB_API_URL) or "",
            github_fork=fork,
            telegram_bot_token=secret("TELEGRAM_BOT_TOKEN"),
            telegram_api_base=url("TELEGRAM_API_BASE", None),
            owner_telegram_id=integer("OWNER_TELEGRAM_ID", None, low=1),
            telegram_webhook_url=url("TELEGRAM_WEBHOOK_URL", None),
            telegram_webhook_secret=secret("TELEGRAM_WEBHOOK_SECRET"),
            github_webhook_secret=secret("GITHUB_WEBHOOK_SECRET"),
            github_owner_login=environ.get("GITHUB_OWNER_LOGIN") or None,
            sandbox_image=environ.get("AGENT_RUNNER_SANDBOX_IMAGE") or DEFAULT_SANDBOX_IMAGE,
            sandbox_runtime=runtime,
            policy_path=Path(policy) if policy else None,
            max_sandboxes=integer("AGENT_RUNNER_MAX_SANDBOXES", DEFAULT_MAX_SANDBOXES, low=1)
            or DEFAULT_MAX_SANDBOXES,
            host=environ.get("AGENT_RUNNER_HOST") or DEFAULT_HOST,
            port=integer("AGENT_RUNNER_PORT", DEFAULT_PORT, low=1) or DEFAULT_PORT,
            repo=environ.get("AGENT_RUNNER_REPO") or None,
            deployer=deployer,
            deploy_command=deploy_command,
            health_url=url("AGENT_RUNNER_HEALTH_URL", None),
            deploy_service=deploy_service,
            deploy_base_image=environ.get("AGENT_RUNNER_DEPLOY_BASE_IMAGE") or None,
            deploy_port=integer("AGENT_RUNNER_DEPLOY_PORT", None, low=1),
            repo_roots=tuple(r.strip() for r in environ.get("AGENT_RUNNER_REPO_ROOTS", "").split(",") if r.strip()),
            watch_seconds=integer("AGENT_RUNNER_WATCH_SECONDS", DEFAULT_WATCH_SECONDS) or 0,
            watch_interval=integer("AGENT_RUNNER_WATCH_INTERVAL", DEFAULT_WATCH_INTERVAL, low=1)
            or DEFAULT_WATCH_INTERVAL,
            watch_baseline_seconds=integer("AGENT_RUNNER_WATCH_BASELINE_SECONDS", DEFAULT_WATCH_BASELINE_SECONDS,
                                           low=1) or DEFAULT_WATCH_BASELINE_SECONDS,
            watch_selector=environ.get("AGENT_RUNNER_WATCH_SELECTOR") or DEFAULT_WATCH_SELECTOR,
            public_url=url("AGENT_RUNNER_PUBLIC_URL", None),
            link_secret=secret("AGENT_RUNNER_LINK_SECRET"),
            grafana_webhook_token=secret("GRAFANA_WEBHOOK_TOKEN"),
            grafana_webhook_hmac_secret=secret("GRAFANA_WEBHOOK_HMAC_SECRET"),
        )
        if settings.deploy_port is not None and settings.deploy_port > MAX_PORT:
            problems.append(f"AGENT_RUNNER_DEPLOY_PORT must be at most {MAX_PORT}, got {settings.deploy_port}")
        if settings.link_secret is not None and len(settings.link_secret.reveal()) < MIN_LINK_SECRET_CHARS:
            problems.append(f"AGENT_RUNNER_LINK_SECRET must be at least {MIN_LINK_SECRET_CHARS} characters")
        try:
            validate_logql(settings.watch_selector)
        except WebhookError as exc:
            problems.append(f"AGENT_RUNNER_WATCH_SELECTOR: {exc}")
        if environ.get("TELEGRAM_WEBHOOK_URL") and not environ.get("TELEGRAM_WEBHOOK_SECRET"):
            problems.append("TELEGRAM_WEBHOOK_URL is set but TELEGRAM_WEBHOOK_SECRET is not")
        if problems:
            raise ConfigError("bad configuration: " + "; ".join(problems))
        return settings


def well_formed_url(value: str) -> bool:
    """http(s), a host and, if given, a numeric port: `http://` or `http://:8000/health` would only fail later,
    at the first request made to them (the first deploy's health check), far from the setting to fix."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - parsing the port is the check: a bad one raises
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def is_git_url(repo: str) -> bool:
    """`https://…`, `ssh://…`, `file://…` or scp-like `git@host:owner/name`: a remote, not a path on this disk."""
    return "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo) is not None


def check_local_repo(repo: str | Path, *, name: str) -> Path:
    """The resolved path of a git repository on this disk, or one ConfigError naming `name` (the option or
    variable it came from) and the fix. Checked on the files, so nothing is created and git is not run."""
    path = Path(repo).expanduser()
    if not path.exists():
        raise ConfigError(f"{name} {str(repo)!r}: the path does not exist; give the path of the bot's bare "
                          "repository (`agent-runner demo` creates one), or a git URL with GITHUB_TOKEN and "
                          "GITHUB_REPOSITORY")
    bare = (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()
    if not bare and not (path / ".git").exists():
        raise ConfigError(f"{name} {str(repo)!r} is not a git repository; give the path of the bot's bare "
                          "repository (`git clone --bare <repo> <dir>.git` makes one)")
    return path.resolve()


class _Recording(dict[str, str]):
    """An empty environment that remembers every key asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        if key not in self.asked:
            self.asked.append(key)
        return default


def environment_keys() -> tuple[str, ...]:
    """Every variable `Settings.from_env` reads, in the order it reads them: taken from the parser itself, so the
    `--help` lists built from it cannot drift from what is read."""
    recording = _Recording()
    Settings.from_env(recording)
    return tuple(recording.asked)


def environment_help() -> str:
    """The epilog of `serve --help` and `run --help`: the variables read, wrapped."""
    import textwrap

    return "environment (read at start):\n" + textwrap.fill(", ".join(environment_keys()), width=100,
                                                             initial_indent="  ", subsequent_indent="  ")


def settings_from_os() -> Settings:
    """The one place that reads os.environ (used by the CLI entry point)."""
    return Settings.from_env(os.environ)
