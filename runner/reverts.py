"""Reverting a released merge on its base branch, in a throwaway clone, through trusted git (runner.gitops).

A rollback returns the running bot to the previous version; these make the branch match what runs, so the
next deploy does not ship the rolled-back change again.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from runner.forge import GitAuth
from runner.gitops import run_git

__all__ = ["reverted_clone", "revert_on_base"]


@contextlib.asynccontextmanager
async def reverted_clone(repo: str, branch: str, sha: str, auth: GitAuth | None = None) -> AsyncIterator[Path]:
    """A clone of `branch` of `repo` (a bare repository, or the forge's URL with `auth`) with `sha` reverted on
    top, removed when the block ends. Raises GitError (a revert that conflicts, an unreachable repository)."""
    env, secrets = (auth.env, auth.secrets) if auth is not None else (None, ())
    with tempfile.TemporaryDirectory(prefix="agent-runner-revert-") as tmp:
        clone = Path(tmp) / "clone"
        await run_git(["clone", "--quiet", "--branch", branch, "--", repo, str(clone)], env=env, secrets=secrets)
        await run_git(["revert", "--no-edit", sha], cwd=clone)
        yield clone


async def revert_on_base(repo: str, branch: str, sha: str, auth: GitAuth | None = None) -> str:
    """Revert `sha` on `branch` of `repo` and push it; the revert's SHA. A fast-forward push, so a change that
    landed meanwhile makes it fail (GitError) rather than be overwritten."""
    env, secrets = (auth.env, auth.secrets) if auth is not None else (None, ())
    async with reverted_clone(repo, branch, sha, auth) as clone:
        await run_git(["push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"], cwd=clone, env=env,
                      secrets=secrets)
        return (await run_git(["rev-parse", "HEAD"], cwd=clone)).out
