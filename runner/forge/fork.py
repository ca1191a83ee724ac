"""The fork the supervisor pushes agent branches to: found, or created and waited for, and checked to be a fork
of the bot's repository.

Pull requests from a fork run the bot's `pull_request` workflows without its secrets and with a read-only
token, so the agent's code (a conftest.py, a Makefile) meets no secret before the owner approves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runner.errors import ForgeAuthError, ForgeError
from runner.forge.github_api import GitHubApi, json_object

logger = logging.getLogger("runner.forge.github")

# GitHub: "Forking a Repository happens asynchronously... If this takes longer than 5 minutes, contact support."
DEFAULT_FORK_WAIT = 300.0
FIRST_POLL = 0.5
MAX_POLL = 10.0

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Fork:
    repository: str
    """owner/name, as GitHub spells it."""
    owner: str
    default_branch: str
    created: bool = False


async def ensure_fork(
    api: GitHubApi,
    upstream: str,
    fork: str,
    *,
    wait: float = DEFAULT_FORK_WAIT,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
) -> Fork:
    """The fork `fork` (owner/name) of `upstream`, created through `POST /repos/{upstream}/forks` if it does not
    exist yet, once its git objects can be read. ForgeError if it is not a fork of `upstream`, ForgeAuthError if
    the token cannot push to it."""
    response = await api.request("GET", f"/repos/{fork}", allow=(404,))
    created = response.status_code == 404
    data = await _create(api, upstream, fork) if created else json_object(response)
    _check(data, upstream, fork, created=created)
    name = str(data["full_name"])
    default_branch = str(data.get("default_branch") or "main")
    await _wait_for_objects(api, name, default_branch, wait=wait, sleep=sleep, clock=clock)
    if created:
        logger.info("created the fork %s of %s for agent branches", name, upstream)
    return Fork(name, name.split("/", 1)[0], default_branch, created)


async def _create(api: GitHubApi, upstream: str, fork: str) -> dict[str, Any]:
    owner, name = fork.split("/", 1)
    login = str((await api.get_object("/user")).get("login", ""))
    payload: dict[str, Any] = {"name": name, "default_branch_only": True}
    if owner.lower() != login.lower():
        payload["organization"] = owner  # forking into an organization the token's user belongs to
    data = json_object(await api.request("POST", f"/repos/{upstream}/forks", json=payload))
    made = str(data.get("full_name", ""))
    if made.lower() != fork.lower():
        # GitHub answers with the existing fork when the account already has one, under its own name.
        raise ForgeError(f"GitHub forked {upstream} as {made or '?'}, not {fork} (that account already has a fork "
                         f"of it): set GITHUB_FORK={made}" if made else f"GitHub did not fork {upstream} as {fork}")
    return data


def _check(data: dict[str, Any], upstream: str, fork: str, *, created: bool) -> None:
    if not isinstance(data.get("full_name"), str):
        raise ForgeError(f"GitHub sent the repository {fork} in an unexpected shape")
    parents = {str((data.get(key) or {}).get("full_name", "")).lower() for key in ("parent", "source")}
    if data.get("fork") is not True or upstream.lower() not in parents:
        raise ForgeError(f"GITHUB_FORK {fork} is not a fork of {upstream}: pull requests can only come from a "
                         "fork in its network")
    permissions = data.get("permissions")
    if not created and isinstance(permissions, dict) and permissions.get("push") is False:
        raise ForgeAuthError(f"the token cannot push to the fork {fork}: it needs contents=write there")


async def _wait_for_objects(api: GitHubApi, fork: str, branch: str, *, wait: float, sleep: Sleep,
                            clock: Clock) -> None:
    deadline = clock() + wait
    delay = FIRST_POLL
    while True:
        response = await api.request("GET", f"/repos/{fork}/git/ref/heads/{branch}", allow=(404, 409))
        if response.is_success:
            return
        if clock() + delay > deadline:
            raise ForgeError(f"the fork {fork} was not ready after {wait:.0f}s (its branch {branch} cannot be read)")
        logger.info("waiting for GitHub to finish forking %s", fork)
        await sleep(delay)
        delay = min(delay * 2, MAX_POLL)
