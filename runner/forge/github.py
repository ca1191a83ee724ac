"""GitHubForge: pull requests over GitHub's REST API (httpx), branches over git's smart HTTP.

Fork mode (`fork="owner/name"`, GITHUB_FORK): agent branches are pushed to a fork the supervisor owns and the
pull requests are opened from it (`head: "forkowner:branch"`), so the bot's workflows run on them without its
secrets. Everything that reads a pull request works the same for both; a fork's branch is deleted once its
pull request is merged or closed.

Size: about 450 lines, one backend of the Forge protocol (runner.forge.base): its methods share the
client, the retry and rate-limit handling and the fork logic; the error mapping and parsers are small helpers
beside the only code that uses them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from runner.errors import ForgeAuthError, ForgeConflict, ForgeError, ForgeNotFound
from runner.forge.base import (
    AGENT_BRANCH_PREFIX,
    MERGE_METHODS,
    Comment,
    GitAuth,
    MergeConflict,
    MergeMethod,
    MergeResult,
    PostedReview,
    PrState,
    PullRequest,
    ReviewComment,
    check_push_onto,
    check_pushable,
)
from runner.forge.fork import DEFAULT_FORK_WAIT, Clock, Fork, Sleep, ensure_fork
from runner.forge.github_api import (
    DEFAULT_API_URL,
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    GitHubApi,
    default_git_url,
    json_object,
    messages,
    require_safe_url,
)
from runner.forge.workflows import WORKFLOW_DIR, WorkflowFiles
from runner.gitops import GitTimeout, head_sha, redact, run_git, secret_forms
from runner.resource import AsyncResource

__all__ = ["DEFAULT_API_URL", "GitHubForge", "default_git_url"]

logger = logging.getLogger(__name__)

DEFAULT_PUSH_TIMEOUT = 300.0
MAX_WORKFLOW_FILES = 100

_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


class GitHubForge(AsyncResource):
    """A GitHub (or GitHub Enterprise) repository as a Forge, optionally pushing to a fork of it.

    The token goes only into an `Authorization` header: the API client's default header, and for `git push`
    an `http.<url>.extraHeader` per repository URL handed to git through GIT_CONFIG_* environment variables, so
    it is never in a URL, an argv, a `.git/config`, a log line or an exception message.
    """

    def __init__(
        self,
        repository: str,
        token: str,
        *,
        api_url: str = DEFAULT_API_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        git_url: str | None = None,
        fork: str | None = None,
        fork_git_url: str | None = None,
        fork_wait: float = DEFAULT_FORK_WAIT,
        timeout: float = DEFAULT_TIMEOUT,
        push_timeout: float = DEFAULT_PUSH_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        for name in (repository, fork):
            if name is not None and not _REPOSITORY.match(name):
                raise ForgeError(f"GitHub repository must be owner/name, got {name!r}")
        if fork is not None and fork.lower() == repository.lower():
            raise ForgeError(f"the fork {fork} is the repository itself")
        if not token:
            raise ForgeAuthError("no GitHub token given")
        self.repository = repository
        self.owner = repository.split("/", 1)[0]
        self.fork = fork
        self.api_url = api_url.rstrip("/")
        self.git_url = git_url or default_git_url(self.api_url, repository)
        self.fork_git_url = (fork_git_url or default_git_url(self.api_url, fork)) if fork else None
        for url in (self.api_url, self.git_url, self.fork_git_url):
            if url is not None:
                require_safe_url(url)
        self._token = token
        self._push_timeout = push_timeout
        self._fork_wait = fork_wait
        self._sleep = sleep
        self._clock = clock
        self._fork: Fork | None = None
        self._fork_lock = asyncio.Lock()
        self._api = GitHubApi(self.api_url, token, transport=transport, timeout=timeout, retries=retries,
                              backoff=backoff)

    def __repr__(self) -> str:
        fork = f", fork={self.fork!r}" if self.fork else ""
        return f"GitHubForge({self.repository!r}, api_url={self.api_url!r}{fork})"

    async def aclose(self) -> None:
        await self._api.aclose()

    @property
    def push_repository(self) -> str:
        """Where agent branches are pushed: the fork in fork mode, else the repository."""
        return self.fork or self.repository

    async def prepare_fork(self) -> str | None:
        """In fork mode, the fork (created and waited for if it does not exist yet); None without one."""
        if self.fork is None:
            return None
        async with self._fork_lock:  # two tasks pushing at once create one fork
            if self._fork is None:
                self._fork = await ensure_fork(self._api, self.repository, self.fork, wait=self._fork_wait,
                                               sleep=self._sleep, clock=self._clock)
        return self._fork.repository

    # -- pull requests ---------------------------------------------------------------------------------

    async def open_pr(self, title: str, body: str, head: str, base: str) -> PullRequest:
        payload: dict[str, Any] = {"title": title, "body": body, "head": head, "base": base}
        label = f"{self.owner}:{head}"
        if self.fork is not None:
            fork = await self.prepare_fork()
            assert fork is not None
            label = f"{fork.split('/', 1)[0]}:{head}"
            # head_repo is required when the fork belongs to the same organization; the maintainers of the bot's
            # repository get no push to the agent's branch: what the owner approves is only what we pushed.
            payload.update(head=label, head_repo=fork, maintainer_can_modify=False)
        response = await self._api.request("POST", self._repo("/pulls"), json=payload, allow=(422,))
        if response.status_code == 422:
            if "pull request already exists" not in messages(response).lower():
                raise ForgeError(f"GitHub refused to open the pull request: {messages(response)}")
            existing = await self._find_open(label)
            if existing is None:
                raise ForgeError(f"GitHub says a pull request exists for {label!r} but none is open")
            logger.info("reusing pull request #%d for %s", existing.number, label)
            return existing
        pr = _pull_request(json_object(response))
        logger.info("opened pull request #%d (%s -> %s)", pr.number, label, base)
        return pr

    async def get_pr(self, number: int) -> PullRequest:
        return _pull_request(await self._get_pr_json(number))

    async def list_open(self) -> tuple[PullRequest, ...]:
        prs = [_pull_request(item) for item in await self._api.pages(self._repo("/pulls"), {"state": "open"})]
        return tuple(sorted(prs, key=lambda pr: pr.number))

    async def comment(self, number: int, body: str) -> Comment:
        response = await self._api.request("POST", self._repo(f"/issues/{int(number)}/comments"),
                                           json={"body": body})
        return _comment(number, json_object(response))

    async def list_comments(self, number: int) -> tuple[Comment, ...]:
        items = await self._api.pages(self._repo(f"/issues/{int(number)}/comments"), {})
        return tuple(_comment(number, item) for item in items)

    async def post_review(self, number: int, *, commit_sha: str, body: str,
                          comments: Sequence[ReviewComment] = ()) -> PostedReview:
        # GitHub posts the review and its comments together or answers 422 and posts none. Event COMMENT
        # always: an APPROVE from the supervisor's token would count as an approval the owner never gave.
        payload: dict[str, Any] = {"commit_id": commit_sha, "body": body, "event": "COMMENT",
                                   "comments": [{"path": c.path, "line": c.line, "side": "RIGHT", "body": c.body}
                                                for c in comments]}
        response = await self._api.request("POST", self._repo(f"/pulls/{int(number)}/reviews"), json=payload)
        logger.info("posted a review with %d line comments on pull request #%d", len(comments), number)
        return _review(number, json_object(response), tuple(comments))

    async def list_reviews(self, number: int) -> tuple[PostedReview, ...]:
        reviews = await self._api.pages(self._repo(f"/pulls/{int(number)}/reviews"), {})
        comments = await self._api.pages(self._repo(f"/pulls/{int(number)}/comments"), {})
        by_review: dict[object, list[ReviewComment]] = {}
        for item in comments:
            line = item.get("line")
            if isinstance(line, int):  # null once the line is outdated by a newer head
                by_review.setdefault(item.get("pull_request_review_id"), []).append(
                    ReviewComment(str(item.get("path", "")), line, str(item.get("body") or "")))
        return tuple(_review(number, item, tuple(by_review.get(item.get("id"), ()))) for item in reviews)

    async def close(self, number: int) -> PullRequest:
        response = await self._api.request("PATCH", self._repo(f"/pulls/{int(number)}"), json={"state": "closed"})
        logger.info("closed pull request #%d", number)
        pr = _pull_request(json_object(response))
        await self._drop_fork_branch(pr)
        return pr

    async def merge(self, number: int, expected_head_sha: str, method: MergeMethod = "squash") -> MergeResult:
        if method not in MERGE_METHODS:
            raise ValueError(f"merge method must be one of {MERGE_METHODS}, got {method!r}")
        data = await self._get_pr_json(number)
        pr = _pull_request(data)
        if pr.state != "open":
            raise ForgeConflict(f"pull request #{number} is {pr.state}, not open: nothing merged")
        if pr.head_sha != expected_head_sha:
            raise ForgeConflict(
                f"pull request #{number} head moved: approved {expected_head_sha[:12]}, now {pr.head_sha[:12]}; "
                "nothing merged"
            )
        if data.get("mergeable") is False:
            state = data.get("mergeable_state", "dirty")
            raise MergeConflict(f"pull request #{number} does not merge cleanly into {pr.base_branch} ({state})")
        # `sha` makes GitHub itself refuse (409) if the head moves between our check and the merge; for a pull
        # request from a fork, GitHub merges the head it holds in refs/pull/N/head, the fork's commit.
        payload = {
            "sha": expected_head_sha,
            "merge_method": method,
            "commit_title": f"{pr.title} (#{number})",
        }
        response = await self._api.request("PUT", self._repo(f"/pulls/{int(number)}/merge"), json=payload)
        result = json_object(response)
        if result.get("merged") is not True or not isinstance(result.get("sha"), str):
            raise ForgeConflict(f"GitHub did not merge pull request #{number}: {result.get('message', '')}")
        logger.info("merged pull request #%d at %s as %s", number, expected_head_sha[:12], result["sha"][:12])
        await self._drop_fork_branch(pr)
        return MergeResult(
            number=number,
            merged=True,
            sha=result["sha"],
            method=method,
            head_sha=expected_head_sha,
            message=str(result.get("message", "")),
        )

    # -- branches --------------------------------------------------------------------------------------

    async def push_branch(self, clone: Path, branch: str) -> str:
        repo = await self._api.get_object(self._repo(""))
        default_branch = repo.get("default_branch")
        open_prs = await self.list_open()
        check_pushable(
            branch,
            base_branches=[str(default_branch), *(pr.base_branch for pr in open_prs)],
            open_pr_branches=[pr.head_branch for pr in open_prs],
        )
        return await self._push(clone, branch)

    async def push_onto(self, clone: Path, number: int, head_sha: str) -> str:
        pr = await self.get_pr(number)
        check_push_onto(pr, head_sha)
        return await self._push(clone, pr.head_branch)

    async def _push(self, clone: Path, branch: str) -> str:
        """Push the clone's HEAD to `branch` of the repository (or the fork) PRs are opened from; its sha. No `+`:
        git refuses anything but creating the branch or fast-forwarding it."""
        await self._refuse_url_rewrites(clone)
        target = self.git_url
        if self.fork is not None:
            await self.prepare_fork()
            assert self.fork_git_url is not None
            target = self.fork_git_url
        sha = await head_sha(clone)
        auth = self.git_auth()
        try:
            result = await run_git(["push", "--porcelain", "--no-verify", target, f"{sha}:refs/heads/{branch}"],
                                   cwd=clone, env=auth.env, secrets=auth.secrets, timeout=self._push_timeout,
                                   check=False)
        except GitTimeout as exc:
            raise ForgeError(f"git push of {branch} to {self.push_repository} timed out") from exc
        if result.returncode != 0:
            raise _push_error(branch, self.push_repository,
                              redact(f"{result.out}\n{result.stderr}", secret_forms(self._token)))
        logger.info("pushed %s to %s at %s", sha[:12], branch, self.push_repository)
        return sha

    async def edit_body(self, number: int, body: str) -> PullRequest:
        response = await self._api.request("PATCH", self._repo(f"/pulls/{int(number)}"), json={"body": body})
        return _pull_request(json_object(response))

    def git_auth(self) -> GitAuth:
        # One header per repository URL: should anything rewrite a URL, git would not send it elsewhere.
        credential = base64.b64encode(f"x-access-token:{self._token}".encode()).decode()
        urls = [self.git_url, *([self.fork_git_url] if self.fork_git_url else [])]
        env = {"GIT_CONFIG_COUNT": str(len(urls))}
        for i, url in enumerate(urls):
            env[f"GIT_CONFIG_KEY_{i}"] = f"http.{url}.extraHeader"
            env[f"GIT_CONFIG_VALUE_{i}"] = f"Authorization: Basic {credential}"
        return GitAuth(self.git_url, env, (self._token, credential))

    async def _refuse_url_rewrites(self, clone: Path) -> None:
        found = await run_git(["config", "--get-regexp", r"^url\..*insteadof$"], cwd=clone, check=False)
        if found.out:
            raise ForgeError("refusing to push: the clone's git config rewrites URLs (url.*.insteadOf)")

    async def _drop_fork_branch(self, pr: PullRequest) -> None:
        """Delete a finished pull request's branch from our fork. GitHub keeps its commits in the repository's
        refs/pull/N/head; on the fork the branch would only collide with a later task's branch of that name,
        and the supervisor's mirror, which is of the repository, cannot see it to avoid it."""
        if self.fork is None or pr.head_repo is None or pr.head_repo.lower() != self.push_repository.lower():
            return
        if not pr.head_branch.startswith(AGENT_BRANCH_PREFIX):
            return
        try:
            await self._api.request("DELETE", f"/repos/{pr.head_repo}/git/refs/heads/{pr.head_branch}",
                                    allow=(404, 422))  # 422: "Reference does not exist"
        except ForgeError as exc:  # the pull request is done; a leftover branch is not worth failing it
            logger.warning("could not delete %s from the fork %s: %s", pr.head_branch, pr.head_repo, exc)
        else:
            logger.info("deleted %s from the fork %s", pr.head_branch, pr.head_repo)

    # -- workflows -------------------------------------------------------------------------------------

    async def workflow_files(self) -> WorkflowFiles:
        """The repository's workflow files at its default branch (the contents API), and which of them GitHub
        will not run (the Actions API, when the token may read it)."""
        repo = await self._api.get_object(self._repo(""))
        branch = str(repo.get("default_branch") or "main")
        listing = await self._api.request("GET", self._repo(f"/contents/{WORKFLOW_DIR}"), params={"ref": branch},
                                          allow=(404,))
        entries = listing.json() if listing.status_code != 404 else []
        if not isinstance(entries, list):
            raise ForgeError(f"GitHub sent {WORKFLOW_DIR} as a {type(entries).__name__}, not a directory")
        paths = sorted(str(e["path"]) for e in entries if isinstance(e, dict) and e.get("type") == "file"
                       and str(e.get("name", "")).endswith((".yml", ".yaml")))[:MAX_WORKFLOW_FILES]
        files = {}
        for path in paths:
            data = await self._api.get_object(self._repo(f"/contents/{path}"), params={"ref": branch})
            try:
                files[path] = base64.b64decode(str(data.get("content", ""))).decode("utf-8", "replace")
            except (binascii.Error, ValueError) as exc:
                raise ForgeError(f"GitHub sent {path} in an unexpected encoding") from exc
        disabled: set[str] = set()
        try:
            for workflow in await self._api.pages(self._repo("/actions/workflows"), {}, key="workflows"):
                if str(workflow.get("state", "active")) != "active":
                    disabled.add(str(workflow.get("path", "")))
        except (ForgeAuthError, ForgeNotFound) as exc:  # no actions:read: every file counts as running
            logger.info("workflow states of %s unknown: %s", self.repository, exc)
        return WorkflowFiles(branch, files, frozenset(disabled))

    # -- HTTP ------------------------------------------------------------------------------------------

    def _repo(self, suffix: str) -> str:
        return f"/repos/{self.repository}{suffix}"

    async def _get_pr_json(self, number: int) -> dict[str, Any]:
        return await self._api.get_object(self._repo(f"/pulls/{int(number)}"))

    async def _find_open(self, label: str) -> PullRequest | None:
        response = await self._api.request("GET", self._repo("/pulls"), params={"state": "open", "head": label})
        items = response.json()
        prs = [_pull_request(item) for item in items] if isinstance(items, list) else []
        branch = label.split(":", 1)[1]
        return next((pr for pr in prs if pr.head_branch == branch), None)


def _push_error(branch: str, repository: str, output: str) -> ForgeError:
    lowered = output.lower()
    what = f"git push of {branch} to {repository} failed: {output.strip()[-500:]}"
    if any(s in lowered for s in ("authentication failed", "could not read username", "error: 401", "error: 403")):
        return ForgeAuthError(f"{what}; the token needs contents=write (OAuth scope: repo)")
    if "not found" in lowered or "error: 404" in lowered:
        return ForgeNotFound(what)
    if any(s in lowered for s in ("[rejected]", "non-fast-forward", "fetch first", "protected branch", "declined")):
        return ForgeConflict(what)
    return ForgeError(what)


def _pull_request(data: Any) -> PullRequest:
    try:
        merged = bool(data.get("merged")) or data.get("merged_at") is not None
        state: PrState = "merged" if merged else "open" if data["state"] == "open" else "closed"
        if data["state"] not in ("open", "closed"):
            raise ValueError(data["state"])
        head_repo = data["head"].get("repo")  # null once the fork is deleted
        return PullRequest(
            number=int(data["number"]),
            url=str(data["html_url"]),
            title=str(data["title"]),
            body=str(data.get("body") or ""),
            head_branch=str(data["head"]["ref"]),
            base_branch=str(data["base"]["ref"]),
            head_sha=str(data["head"]["sha"]),
            state=state,
            # For an open pull request GitHub's merge_commit_sha is a test merge, not a merge.
            merge_sha=str(data["merge_commit_sha"]) if merged and data.get("merge_commit_sha") else None,
            head_repo=str(head_repo["full_name"]) if isinstance(head_repo, dict) and head_repo.get("full_name")
            else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ForgeError(f"GitHub sent a pull request in an unexpected shape ({type(exc).__name__}: {exc})") from None


def _review(number: int, data: Any, comments: tuple[ReviewComment, ...]) -> PostedReview:
    try:
        return PostedReview(id=int(data["id"]), number=number, body=str(data.get("body") or ""),
                            commit_sha=str(data.get("commit_id") or ""), comments=comments,
                            url=str(data.get("html_url", "")), state=str(data.get("state", "")))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ForgeError(f"GitHub sent a review in an unexpected shape ({type(exc).__name__})") from None


def _comment(number: int, data: Any) -> Comment:
    try:
        return Comment(
            id=int(data["id"]),
            number=number,
            body=str(data.get("body") or ""),
            author=str((data.get("user") or {}).get("login", "")),
            created_at=str(data.get("created_at", "")),
            url=str(data.get("html_url", "")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ForgeError(f"GitHub sent a comment in an unexpected shape ({type(exc).__name__})") from None
