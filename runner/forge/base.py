"""The Forge protocol and the values it returns: pull requests, merges, comments, reviews."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from runner.errors import ForgeConflict
from runner.resource import AsyncResource

PrState = Literal["open", "merged", "closed"]
MergeMethod = Literal["squash", "merge", "rebase"]
MERGE_METHODS: tuple[MergeMethod, ...] = ("squash", "merge", "rebase")

# The supervisor pushes only branches under this prefix: never the base branch, never a human's branch.
AGENT_BRANCH_PREFIX = "agent/"


@dataclass(frozen=True, slots=True)
class PullRequest:
    number: int
    url: str
    title: str
    body: str
    head_branch: str
    base_branch: str
    head_sha: str
    state: PrState
    merge_sha: str | None = None
    head_repo: str | None = None
    """The repository holding the head branch (owner/name): a fork's for a pull request from a fork; None when
    the forge does not say (the local forge, a deleted fork)."""


@dataclass(frozen=True, slots=True)
class MergeResult:
    number: int
    merged: bool
    sha: str
    method: MergeMethod
    head_sha: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class GitAuth:
    """What trusted git needs to fetch from and push to the forge's repository at `url` over HTTPS.

    `env` holds git config scoped to `url` (an extraHeader: never on a command line, never in a file, never
    sent to another URL); `secrets` are redacted from git's output and errors.
    """

    url: str
    """The repository's URL (what the mirror is cloned from); `env` may scope the header to a fork's URL too."""
    env: Mapping[str, str] = field(repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class Comment:
    id: int
    number: int
    body: str
    author: str
    created_at: str
    url: str = ""


@dataclass(frozen=True, slots=True)
class ReviewComment:
    """A line comment of a review: on `line` of `path` in the pull request's head (GitHub's side RIGHT), which
    the forge may require to be a line the pull request's diff shows."""

    path: str
    line: int
    body: str


@dataclass(frozen=True, slots=True)
class PostedReview:
    """A review as the forge holds it: one body, its line comments, the commit it was made on."""

    id: int
    number: int
    body: str
    commit_sha: str
    comments: tuple[ReviewComment, ...] = ()
    url: str = ""
    state: str = "COMMENTED"


class MergeConflict(ForgeConflict):
    """The pull request no longer merges cleanly into its base; `files` names the conflicting paths."""

    def __init__(self, message: str, files: Iterable[str] = ()) -> None:
        self.files: tuple[str, ...] = tuple(files)
        if self.files:
            message = f"{message}; conflicting files: {', '.join(self.files)}"
        super().__init__(message)


class Forge(AsyncResource, Protocol):
    """Where the owner reviews the agent's work: branches, pull requests, comments, merges.

    Only the supervisor talks to a forge, and it alone holds the forge's credentials. Every call that
    changes state returns the forge's own view of the result. Errors are `ForgeError`s: `ForgeAuthError`,
    `ForgeNotFound`, `ForgeConflict` (`MergeConflict` for content conflicts), `ForgeRateLimited`.

        async with LocalGitForge("/srv/bot.git", db_path) as forge:
            sha = await forge.push_branch(clone, "agent/feature-balance")
            pr = await forge.open_pr("Add /balance", body, "agent/feature-balance", "main")
            result = await forge.merge(pr.number, pr.head_sha)
    """

    async def push_branch(self, clone: Path, branch: str) -> str:
        """Push HEAD of the supervisor's trusted `clone` to `branch`; return the pushed SHA.

        The branch goes where pull requests are opened from: the repository itself, or the supervisor's fork
        of it (GitHub's fork mode), so that the repository's CI never runs the agent's code with its secrets.

        Refuses (ForgeConflict) a branch outside `agent/`, the base (default) branch, and the branch of
        any open pull request. Never force-pushes: a diverged existing branch is a ForgeConflict too.
        """
        ...

    async def open_pr(self, title: str, body: str, head: str, base: str) -> PullRequest:
        """Open a pull request from the pushed branch `head` into `base`; if one is already open for `head`,
        return it."""
        ...

    async def push_onto(self, clone: Path, number: int, head_sha: str) -> str:
        """Push HEAD of `clone` onto the branch of open pull request `number` (an owner's follow-up), as a
        fast-forward of `head_sha`, the head the follow-up built on; return the pushed SHA.

        Raises ForgeConflict when the pull request is not open, its head is no longer `head_sha`, or the push
        is not a fast-forward: never a force-push.
        """
        ...

    async def edit_body(self, number: int, body: str) -> PullRequest:
        """Replace pull request `number`'s description with `body`; return it."""
        ...

    def git_auth(self) -> GitAuth | None:
        """How the supervisor's own git reaches the repository (mirror fetches, a rollback's revert push) and
        the fork it pushes agent branches to; None when no credential is needed (the local forge)."""
        ...

    async def get_pr(self, number: int) -> PullRequest:
        """The pull request `number` (any state); ForgeNotFound if there is none."""
        ...

    async def list_open(self) -> tuple[PullRequest, ...]:
        """Every open pull request, lowest number first."""
        ...

    async def comment(self, number: int, body: str) -> Comment:
        """Add a comment to pull request `number` and return it."""
        ...

    async def list_comments(self, number: int) -> tuple[Comment, ...]:
        """The comments on pull request `number`, oldest first."""
        ...

    async def post_review(self, number: int, *, commit_sha: str, body: str,
                          comments: Sequence[ReviewComment] = ()) -> PostedReview:
        """Post one review of pull request `number` made at `commit_sha`: `body` and its line comments, all or
        nothing. Only ever a comment (GitHub's event COMMENT): approving is the owner's.

        Raises ForgeConflict if the head is no longer `commit_sha`, ForgeError (GitHub: 422) for a comment on
        a line the diff does not show, ForgeNotFound for no such pull request.

            await forge.post_review(7, commit_sha=pr.head_sha, body="2 findings",
                                    comments=[ReviewComment("bot.py", 12, "**major** ...")])
        """
        ...

    async def list_reviews(self, number: int) -> tuple[PostedReview, ...]:
        """The reviews of pull request `number` with their line comments, oldest first."""
        ...

    async def merge(self, number: int, expected_head_sha: str, method: MergeMethod = "squash") -> MergeResult:
        """Merge pull request `number`, but only at `expected_head_sha`, the head the owner approved.

        Raises ForgeConflict if the head moved, the pull request is not open, or it was merged meanwhile
        (so two concurrent approvals merge once), and MergeConflict if the base moved so that it no longer
        merges cleanly. Nothing is merged when it raises.
        """
        ...

    async def close(self, number: int) -> PullRequest:
        """Close pull request `number` without merging; return it as closed. A branch the supervisor pushed to
        its fork goes with it (nothing else shows it: the supervisor's mirror is of the repository)."""
        ...

    async def aclose(self) -> None:
        """Release connections; the forge is unusable afterwards."""
        ...


def check_pushable(branch: str, *, base_branches: Iterable[str], open_pr_branches: Iterable[str]) -> None:
    """Branch protection on our side: raise ForgeConflict unless `branch` is a fresh agent branch."""
    if not branch.startswith(AGENT_BRANCH_PREFIX) or branch == AGENT_BRANCH_PREFIX:
        raise ForgeConflict(f"refusing to push {branch!r}: the supervisor pushes only {AGENT_BRANCH_PREFIX}* branches")
    if branch in set(base_branches):
        raise ForgeConflict(f"refusing to push {branch!r}: it is a base branch")
    if branch in set(open_pr_branches):
        raise ForgeConflict(f"refusing to push {branch!r}: it is the branch of an open pull request")
    if any(part in branch for part in ("..", "@{", "\\", " ", "~", "^", ":", "?", "*", "[")) or branch.endswith(
        (".lock", "/", ".")
    ):
        raise ForgeConflict(f"refusing to push {branch!r}: not a valid branch name")


def check_push_onto(pr: PullRequest, head_sha: str) -> None:
    """A follow-up pushes onto `pr` only while it is open and its head is still `head_sha`, the head the follow-up
    built on: else ForgeConflict, and nothing is pushed."""
    if pr.state != "open":
        raise ForgeConflict(f"pull request #{pr.number} is {pr.state}; a follow-up pushes only onto an open one")
    if pr.head_sha != head_sha:
        raise ForgeConflict(f"pull request #{pr.number} head is {pr.head_sha[:12]}, not {head_sha[:12]}, which the "
                            "follow-up built on; nothing pushed")
