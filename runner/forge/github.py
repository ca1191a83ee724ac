"""GitHubForge: pull requests over GitHub's REST API (httpx), branches over git's smart HTTP."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from runner.errors import ForgeAuthError, ForgeConflict, ForgeError, ForgeNotFound, ForgeRateLimited
from runner.forge.base import (
    MERGE_METHODS,
    Comment,
    GitAuth,
    MergeConflict,
    MergeMethod,
    MergeResult,
    PrState,
    PullRequest,
    check_pushable,
)
from runner.gitops import GitTimeout, head_sha, redact, run_git, secret_forms

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_TIMEOUT = 30.0
DEFAULT_PUSH_TIMEOUT = 300.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
DEFAULT_RATE_LIMIT_WAIT = 60.0
API_VERSION = "2022-11-28"
PAGE_SIZE = 100
MAX_PAGES = 50

_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_RETRYABLE = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class GitHubForge:
    """A GitHub (or GitHub Enterprise) repository as a Forge.

    The token goes only into an `Authorization` header: the API client's default header, and for `git push`
    an `http.<url>.extraHeader` handed to git through GIT_CONFIG_* environment variables, so it is never in
    a URL, an argv, a `.git/config`, a log line or an exception message.
    """

    def __init__(
        self,
        repository: str,
        token: str,
        *,
        api_url: str = DEFAULT_API_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        git_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        push_timeout: float = DEFAULT_PUSH_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        if not _REPOSITORY.match(repository):
            raise ForgeError(f"GitHub repository must be owner/name, got {repository!r}")
        if not token:
            raise ForgeAuthError("no GitHub token given")
        self.repository = repository
        self.owner = repository.split("/", 1)[0]
        self.api_url = api_url.rstrip("/")
        self.git_url = git_url or default_git_url(self.api_url, repository)
        for url in (self.api_url, self.git_url):
            _require_safe_url(url)
        self._token = token
        self._timeout = timeout
        self._push_timeout = push_timeout
        self._retries = retries
        self._backoff = backoff
        self._client = httpx.AsyncClient(
            base_url=self.api_url,
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            headers={
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "agent-runner",
            },
        )

    def __repr__(self) -> str:
        return f"GitHubForge({self.repository!r}, api_url={self.api_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- pull requests ---------------------------------------------------------------------------------

    async def open_pr(self, title: str, body: str, head: str, base: str) -> PullRequest:
        payload = {"title": title, "body": body, "head": head, "base": base}
        response = await self._request("POST", self._repo("/pulls"), json=payload, allow=(422,))
        if response.status_code == 422:
            if "pull request already exists" not in _messages(response).lower():
                raise ForgeError(f"GitHub refused to open the pull request: {_messages(response)}")
            existing = await self._find_open(head)
            if existing is None:
                raise ForgeError(f"GitHub says a pull request exists for {head!r} but none is open")
            logger.info("reusing pull request #%d for %s", existing.number, head)
            return existing
        pr = _pull_request(_json(response))
        logger.info("opened pull request #%d (%s -> %s)", pr.number, head, base)
        return pr

    async def get_pr(self, number: int) -> PullRequest:
        return _pull_request(await self._get_pr_json(number))

    async def list_open(self) -> tuple[PullRequest, ...]:
        prs = [_pull_request(item) for item in await self._pages(self._repo("/pulls"), {"state": "open"})]
        return tuple(sorted(prs, key=lambda pr: pr.number))

    async def comment(self, number: int, body: str) -> Comment:
        response = await self._request("POST", self._repo(f"/issues/{int(number)}/comments"), json={"body": body})
        return _comment(number, _json(response))

    async def list_comments(self, number: int) -> tuple[Comment, ...]:
        items = await self._pages(self._repo(f"/issues/{int(number)}/comments"), {})
        return tuple(_comment(number, item) for item in items)

    async def close(self, number: int) -> PullRequest:
        response = await self._request("PATCH", self._repo(f"/pulls/{int(number)}"), json={"state": "closed"})
        logger.info("closed pull request #%d", number)
        return _pull_request(_json(response))

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
        # `sha` makes GitHub itself refuse (409) if the head moves between our check and the merge.
        payload = {
            "sha": expected_head_sha,
            "merge_method": method,
            "commit_title": f"{pr.title} (#{number})",
        }
        response = await self._request("PUT", self._repo(f"/pulls/{int(number)}/merge"), json=payload)
        result = _json(response)
        if result.get("merged") is not True or not isinstance(result.get("sha"), str):
            raise ForgeConflict(f"GitHub did not merge pull request #{number}: {result.get('message', '')}")
        logger.info("merged pull request #%d at %s as %s", number, expected_head_sha[:12], result["sha"][:12])
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
        repo = _json(await self._request("GET", self._repo("")))
        default_branch = repo.get("default_branch")
        open_prs = await self.list_open()
        check_pushable(
            branch,
            base_branches=[str(default_branch), *(pr.base_branch for pr in open_prs)],
            open_pr_branches=[pr.head_branch for pr in open_prs],
        )
        await self._refuse_url_rewrites(clone)
        sha = await head_sha(clone)
        auth = self.git_auth()
        try:
            result = await run_git(
                ["push", "--porcelain", "--no-verify", self.git_url, f"{sha}:refs/heads/{branch}"],
                cwd=clone,
                env=auth.env,
                secrets=auth.secrets,
                timeout=self._push_timeout,
                check=False,
            )
        except GitTimeout as exc:
            raise ForgeError(f"git push of {branch} to {self.repository} timed out") from exc
        if result.returncode != 0:
            output = redact(f"{result.out}\n{result.stderr}", secret_forms(self._token))
            raise _push_error(branch, self.repository, output)
        logger.info("pushed %s to %s at %s", sha[:12], branch, self.repository)
        return sha

    def git_auth(self) -> GitAuth:
        # Scoped to the repository's URL: should anything rewrite a URL, git would not send the header elsewhere.
        credential = base64.b64encode(f"x-access-token:{self._token}".encode()).decode()
        return GitAuth(self.git_url, {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{self.git_url}.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {credential}",
        }, (self._token, credential))

    async def _refuse_url_rewrites(self, clone: Path) -> None:
        found = await run_git(["config", "--get-regexp", r"^url\..*insteadof$"], cwd=clone, check=False)
        if found.out:
            raise ForgeError("refusing to push: the clone's git config rewrites URLs (url.*.insteadOf)")

    # -- HTTP ------------------------------------------------------------------------------------------

    def _repo(self, suffix: str) -> str:
        return f"/repos/{self.repository}{suffix}"

    async def _get_pr_json(self, number: int) -> dict[str, Any]:
        return _json(await self._request("GET", self._repo(f"/pulls/{int(number)}")))

    async def _find_open(self, head: str) -> PullRequest | None:
        response = await self._request(
            "GET", self._repo("/pulls"), params={"state": "open", "head": f"{self.owner}:{head}"}
        )
        items = response.json()
        prs = [_pull_request(item) for item in items] if isinstance(items, list) else []
        return next((pr for pr in prs if pr.head_branch == head), None)

    async def _pages(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        # Numbered pages rather than following Link headers, so the token only ever goes to api_url.
        items: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            response = await self._request(
                "GET", path, params={**params, "per_page": str(PAGE_SIZE), "page": str(page)}
            )
            batch = response.json()
            if not isinstance(batch, list):
                raise ForgeError(f"GitHub GET {path}: expected a list, got {type(batch).__name__}")
            items.extend(item for item in batch if isinstance(item, dict))
            if len(batch) < PAGE_SIZE:
                break
        return items

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            try:
                async with asyncio.timeout(self._timeout):
                    response = await self._client.request(method, path, json=json, params=params)
            except (TimeoutError, *_RETRYABLE) as exc:
                what = "timed out" if isinstance(exc, TimeoutError | httpx.TimeoutException) else "failed"
                if last:
                    raise ForgeError(
                        f"GitHub {method} {path} {what} after {attempt + 1} attempts ({type(exc).__name__})"
                    ) from None
                logger.warning("GitHub %s %s %s (%s); retrying", method, path, what, type(exc).__name__)
                await asyncio.sleep(self._backoff * 2**attempt)
                continue
            if response.status_code >= 500 and not last:
                logger.warning("GitHub %s %s answered %d; retrying", method, path, response.status_code)
                await asyncio.sleep(self._backoff * 2**attempt)
                continue
            if response.is_success or response.status_code in allow:
                return response
            raise _status_error(method, path, response)
        raise AssertionError("unreachable")


def default_git_url(api_url: str, repository: str) -> str:
    """Where git pushes go: github.com for the public API, the same host for GitHub Enterprise (/api/v3)."""
    parts = urlsplit(api_url)
    if parts.hostname == "api.github.com":
        return f"https://github.com/{repository}.git"
    root = parts.path.removesuffix("/").removesuffix("/api/v3")
    return f"{parts.scheme}://{parts.netloc}{root}/{repository}.git"


def _require_safe_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ForgeError("forge URLs must not carry credentials; the token is sent in a header")
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return
    raise ForgeError(f"refusing to send the token to {parts.scheme}://{parts.hostname}: https is required")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ForgeError(f"GitHub answered {response.status_code} without a JSON object")
    return data


def _messages(response: httpx.Response) -> str:
    """GitHub's `message` and any `errors[].message`, joined and bounded."""
    try:
        data = response.json()
    except ValueError:
        return response.reason_phrase
    if not isinstance(data, dict):
        return response.reason_phrase
    parts = [str(data.get("message", ""))]
    for error in data.get("errors") or ():
        if isinstance(error, dict) and error.get("message"):
            parts.append(str(error["message"]))
        elif isinstance(error, str):
            parts.append(error)
    return "; ".join(p for p in parts if p)[:300] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    headers = response.headers
    if "retry-after" in headers:
        try:
            return max(0.0, float(headers["retry-after"]))
        except ValueError:
            return DEFAULT_RATE_LIMIT_WAIT
    if headers.get("x-ratelimit-remaining") == "0":
        try:
            return max(0.0, float(headers.get("x-ratelimit-reset", "")) - time.time())
        except ValueError:
            return DEFAULT_RATE_LIMIT_WAIT
    if response.status_code == 429:
        return DEFAULT_RATE_LIMIT_WAIT
    return None


def _status_error(method: str, path: str, response: httpx.Response) -> ForgeError:
    status = response.status_code
    what = f"GitHub {method} {path} -> {status}: {_messages(response)}"
    if status in (403, 429):
        retry_after = _retry_after(response)
        if retry_after is not None:
            return ForgeRateLimited(f"{what}; rate limited, retry after {retry_after:.0f}s", retry_after)
    if status == 401:
        return ForgeAuthError(f"{what}; the token is invalid or expired")
    if status == 403:
        needed = response.headers.get("x-accepted-github-permissions", "")
        accepted = response.headers.get("x-accepted-oauth-scopes", "")
        has = response.headers.get("x-oauth-scopes")
        hints = []
        if needed:
            hints.append(f"the token needs permission {needed}")
        if accepted:
            hints.append(f"accepted OAuth scopes: {accepted}")
        if has is not None:
            hints.append(f"the token has scopes: {has or '(none)'}")
        return ForgeAuthError(f"{what}; " + ("; ".join(hints) or "the token lacks a needed permission or scope"))
    if status == 404:
        return ForgeNotFound(f"{what}; no such repository or pull request, or the token cannot see it")
    if status == 405 and "not mergeable" in what.lower():
        return MergeConflict(what)
    if status in (405, 409):
        return ForgeConflict(what)
    return ForgeError(what)


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
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ForgeError(f"GitHub sent a pull request in an unexpected shape ({type(exc).__name__}: {exc})") from None


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
