"""Forges: where the agent's work becomes a pull request the owner approves (GitHub, or a local bare repo)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from runner.forge.base import (
    AGENT_BRANCH_PREFIX,
    MERGE_METHODS,
    Comment,
    Forge,
    GitAuth,
    MergeConflict,
    MergeMethod,
    MergeResult,
    PostedReview,
    PrState,
    PullRequest,
    ReviewComment,
)

if TYPE_CHECKING:
    from runner.config import Settings

__all__ = [
    "AGENT_BRANCH_PREFIX",
    "MERGE_METHODS",
    "Comment",
    "Forge",
    "GitAuth",
    "MergeConflict",
    "MergeMethod",
    "MergeResult",
    "PostedReview",
    "PrState",
    "PullRequest",
    "ReviewComment",
    "create_forge",
    "default_repo",
    "local_forge_db",
]

LOCAL_FORGE_DB = "forge.sqlite3"


def local_forge_db(home: Path) -> Path:
    """Where the local forge keeps its pull requests under AGENT_RUNNER_HOME."""
    return home / LOCAL_FORGE_DB


def default_repo(settings: Settings) -> str | None:
    """The repository the service works on: AGENT_RUNNER_REPO, else with GitHub the repository's git URL (the
    one the forge's credential is scoped to)."""
    if settings.repo is not None:
        return settings.repo
    if settings.github_token is not None and settings.github_repository:
        from runner.forge.github import default_git_url

        return default_git_url(settings.github_api_url, settings.github_repository)
    return None


def create_forge(settings: Settings, *, repo: str | Path | None = None) -> Forge:
    """GitHub when a token and repository are configured, else the local forge on the bare repo `repo`.

    Backends are imported lazily, so the local forge never imports httpx.
    """
    if settings.github_token is not None and settings.github_repository:
        from runner.forge.github import GitHubForge

        return GitHubForge(settings.github_repository, settings.github_token.reveal(), api_url=settings.github_api_url,
                           fork=settings.github_fork)
    if repo is None:
        from runner.errors import ConfigError

        raise ConfigError(
            "no forge configured: set GITHUB_TOKEN and GITHUB_REPOSITORY, or give the path of a bare repository"
        )
    from runner.forge.localgit import LocalGitForge

    return LocalGitForge(repo, local_forge_db(settings.home))
