"""After the owner approves: merge at the reviewed SHA, deploy, and if unhealthy roll back and revert the merge."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.deploy import Deployer, DeployEvent, DeploySource, Outcome, deploy_with_rollback
from runner.forge import Forge, MergeResult
from runner.forge_cli import approve_pr
from runner.gitops import run_git


@dataclass(frozen=True, slots=True)
class Release:
    merge: MergeResult
    deploy: Outcome
    revert_sha: str | None
    """The commit that reverted the merge on the base branch after a rollback."""

    @property
    def status(self) -> str:
        return self.deploy.status


async def approve_and_deploy(
    forge: Forge,
    deployer: Deployer,
    repo: str,
    number: int,
    head_sha: str | None,
    *,
    say: Callable[[str], None] = lambda _line: None,
) -> Release:
    """Merge PR `number` only at `head_sha`, deploy the merge, and undo both if the bot is unhealthy."""
    pr = await forge.get_pr(number)
    merge = await approve_pr(forge, number, head_sha)
    say(f"merged #{number} into {pr.base_branch} as {merge.sha[:12]}")
    previous = (await run_git(["rev-parse", "--verify", f"{merge.sha}^1"], cwd=repo)).out

    def on_event(event: DeployEvent) -> None:
        say(f"deploy: {event.kind} {event.sha[:12]}{' - ' + event.detail if event.detail else ''}")

    outcome = await deploy_with_rollback(deployer, DeploySource(repo, merge.sha, previous_sha=previous),
                                         on_event=on_event)
    revert_sha = None
    if outcome.status == "rolled_back":
        revert_sha = await revert_on_base(repo, pr.base_branch, merge.sha)
        say(f"reverted {merge.sha[:12]} on {pr.base_branch} as {revert_sha[:12]}: the branch matches what runs")
    return Release(merge, outcome, revert_sha)


async def revert_on_base(repo: str, branch: str, sha: str) -> str:
    """Revert `sha` on `branch` of the bare repository `repo`; a fast-forward push, so a racing change fails it."""
    with tempfile.TemporaryDirectory(prefix="agent-runner-revert-") as tmp:
        clone = Path(tmp) / "clone"
        await run_git(["clone", "--quiet", "--branch", branch, "--", repo, str(clone)])
        await run_git(["revert", "--no-edit", sha], cwd=clone)
        await run_git(["push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"], cwd=clone)
        return (await run_git(["rev-parse", "HEAD"], cwd=clone)).out
