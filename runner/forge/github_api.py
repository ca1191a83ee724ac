"""GitHubApi: GitHub's REST v3 over httpx, with bounded retries and GitHub's errors mapped to ForgeErrors.

    ForgeError
     ├── ForgeAuthError      401, or 403 naming the permission or scope the token lacks
     ├── ForgeNotFound       404 (GitHub's answer too when the token cannot see the repository)
     ├── ForgeConflict       405 / 409 (MergeConflict for "not mergeable")
     └── ForgeRateLimited    403 / 429 with Retry-After or an exhausted rate limit
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from runner.errors import ForgeAuthError, ForgeConflict, ForgeError, ForgeNotFound, ForgeRateLimited
from runner.forge.base import MergeConflict

logger = logging.getLogger("runner.forge.github")

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
DEFAULT_RATE_LIMIT_WAIT = 60.0
API_VERSION = "2022-11-28"
PAGE_SIZE = 100
MAX_PAGES = 50

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_RETRYABLE = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class GitHubApi:
    """One authenticated client for `api_url`: the token is its default header and goes nowhere else (no
    redirects are followed, pages are numbered rather than read from Link headers)."""

    def __init__(
        self,
        api_url: str,
        token: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        require_safe_url(self.api_url)
        self._timeout = timeout
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

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        """The response to `method path`, retried on network errors, timeouts and 5xx; a status outside 2xx
        and `allow` raises its ForgeError."""
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
            raise status_error(method, path, response)
        raise AssertionError("unreachable")

    async def get_object(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return json_object(await self.request("GET", path, params=params))

    async def pages(self, path: str, params: dict[str, str], *, key: str | None = None) -> list[dict[str, Any]]:
        """Every item of a paginated list (or of the list under `key`, as /actions/workflows answers)."""
        # Numbered pages rather than following Link headers, so the token only ever goes to api_url.
        items: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            response = await self.request("GET", path, params={**params, "per_page": str(PAGE_SIZE), "page": str(page)})
            batch = response.json()
            if key is not None and isinstance(batch, dict):
                batch = batch.get(key)
            if not isinstance(batch, list):
                raise ForgeError(f"GitHub GET {path}: expected a list, got {type(batch).__name__}")
            items.extend(item for item in batch if isinstance(item, dict))
            if len(batch) < PAGE_SIZE:
                break
        return items


def default_git_url(api_url: str, repository: str) -> str:
    """Where git pushes go: github.com for the public API, the same host for GitHub Enterprise (/api/v3)."""
    parts = urlsplit(api_url)
    if parts.hostname == "api.github.com":
        return f"https://github.com/{repository}.git"
    root = parts.path.removesuffix("/").removesuffix("/api/v3")
    return f"{parts.scheme}://{parts.netloc}{root}/{repository}.git"


def require_safe_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ForgeError("forge URLs must not carry credentials; the token is sent in a header")
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return
    raise ForgeError(f"refusing to send the token to {parts.scheme}://{parts.hostname}: https is required")


def json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ForgeError(f"GitHub answered {response.status_code} without a JSON object")
    return data


def messages(response: httpx.Response) -> str:
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


def status_error(method: str, path: str, response: httpx.Response) -> ForgeError:
    status = response.status_code
    what = f"GitHub {method} {path} -> {status}: {messages(response)}"
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
