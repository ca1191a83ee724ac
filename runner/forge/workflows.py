"""Which of the bot's GitHub workflows run on the agent's branches, and the one line `serve` says about it.

PURE at the core (`exposed` reads workflow files; `notice` words the line); `push_notice` is the thin shell
that asks the forge for the files. A workflow that runs on the agent's branch or pull request runs the
agent's code (a conftest.py, a Makefile, a setup script) with whatever the run is given: in the bot's own
repository that is its secrets and network, before the owner has approved anything.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import yaml

from runner.errors import ForgeError
from runner.forge.base import AGENT_BRANCH_PREFIX

logger = logging.getLogger(__name__)

WORKFLOW_DIR = ".github/workflows"
TRIGGERS = ("push", "pull_request", "pull_request_target", "workflow_run")
# Events that run in the base repository's context, with its secrets, even for a pull request from a fork.
PRIVILEGED = ("pull_request_target", "workflow_run")
# One name per kind of branch the supervisor pushes (runner.prbody.branch_name, a rollback's revert).
AGENT_BRANCHES = tuple(f"{AGENT_BRANCH_PREFIX}{kind}-x" for kind in ("feature", "fix", "review", "revert"))
MAX_LISTED = 8
NOTICE_TIMEOUT = 30.0
_WILDCARD = re.compile(r"[*?+\[]")


@dataclass(frozen=True, slots=True)
class WorkflowFiles:
    """The workflow files at the base branch, as the trusted side read them from the forge."""

    base_branch: str
    files: Mapping[str, str] = field(default_factory=dict)
    """path -> text, for every file under .github/workflows/."""
    disabled: frozenset[str] = frozenset()
    """Paths of workflows GitHub will not run (disabled by hand, or for inactivity)."""


@dataclass(frozen=True, slots=True)
class Exposed:
    """A workflow and the events of it that fire for an agent branch or its pull request."""

    path: str
    name: str
    events: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.path.removeprefix(WORKFLOW_DIR + '/')} ({', '.join(self.events)})"


@runtime_checkable
class WorkflowSource(Protocol):
    """A forge that can say where agent branches go and read the base repository's workflows (GitHubForge)."""

    repository: str
    fork: str | None

    async def workflow_files(self) -> WorkflowFiles: ...

    async def prepare_fork(self) -> str | None: ...


def exposed(workflows: WorkflowFiles) -> tuple[Exposed, ...]:
    """The workflows that run for the agent's branches: `push` to an `agent/*` branch, a pull request from one
    into the base branch (`pull_request`, `pull_request_target`), or a `workflow_run` after one of those.

    Branch filters are applied as GitHub does (`*`, `**`, `?`, `+`, `[]`, `!` in order); `paths` and `types`
    filters are not, so a workflow that may run is named. A file that does not parse does not run.

        >>> exposed(WorkflowFiles("main", {".github/workflows/ci.yml": "on: [push]"}))[0].label
        'ci.yml (push)'
    """
    parsed: list[tuple[str, str, dict[str, Any]]] = []
    for path in sorted(workflows.files):
        if path in workflows.disabled:
            continue
        try:
            data = yaml.safe_load(workflows.files[path])
        except yaml.YAMLError:
            continue
        if not isinstance(data, dict):
            continue
        # YAML 1.1 reads a bare `on` key as the boolean True.
        events = _events(data.get("on", data.get(True)))
        parsed.append((path, str(data.get("name") or path), events))
    found: dict[str, Exposed] = {}
    for path, name, events in parsed:
        fired = tuple(e for e in TRIGGERS[:3] if e in events and _fires(e, events[e], workflows.base_branch))
        if fired:
            found[path] = Exposed(path, name, fired)
    # workflow_run follows another workflow by name: one that runs for the agent's branch sets it off too.
    names = {e.name for e in found.values()} | {e.path for e in found.values()}
    for path, name, events in parsed:
        if "workflow_run" not in events:
            continue
        config = events["workflow_run"] if isinstance(events["workflow_run"], dict) else {}
        followed = _strings(config.get("workflows"))
        if not followed or set(followed) & names:
            previous = found.get(path)
            fired = (*(previous.events if previous else ()), "workflow_run")
            found[path] = Exposed(path, name, fired)
    return tuple(found[p] for p in sorted(found))


def notice(repository: str, fork: str | None, found: tuple[Exposed, ...] | None, *, total: int = 0,
           error: str | None = None) -> str | None:
    """The start-up line: where agent branches are pushed and which workflows run on them with secrets.

    `found` None means the workflows could not be read (`error` says why). Without a fork every workflow that
    runs is named; with one only those that still get the secrets for a fork's pull request, and nothing is
    said when there are none.
    """
    if fork is None:
        where = f"agent branches are pushed to {repository} itself (GITHUB_FORK is not set)"
        if found is None:
            return (f"{where}; its workflows could not be read ({error}): any that runs on push or pull_request "
                    "runs the agent's code with the repository's secrets before you approve")
        if not found:
            return f"{where}; none of its {total} workflow(s) runs on them"
        return f"{where}, where these workflows run the agent's code with its secrets: {_listing(found)}"
    where = f"agent branches are pushed to the fork {fork}"
    if found is None:
        return f"{where}; {repository}'s workflows could not be read ({error})"
    privileged = tuple(Exposed(e.path, e.name, tuple(v for v in e.events if v in PRIVILEGED)) for e in found
                       if set(e.events) & set(PRIVILEGED))
    if not privileged:
        return None
    return (f"{where}, but these workflows of {repository} still run with its secrets on the fork's pull "
            f"requests: {_listing(privileged)}")


async def push_notice(forge: object, *, timeout: float = NOTICE_TIMEOUT) -> str | None:
    """`notice` for the service's forge: None for a forge without workflows (the local one). Never raises and
    never holds the start-up for more than `timeout`: a forge that cannot be read is said so in the line."""
    if not isinstance(forge, WorkflowSource):
        return None
    try:
        async with asyncio.timeout(timeout):
            fork = await forge.prepare_fork()
    except (ForgeError, TimeoutError) as exc:
        why = str(exc) or f"not ready within {timeout:.0f}s; the first push waits for it"
        return f"agent branches go to the fork {forge.fork}, which is not usable yet: {why}"
    try:
        async with asyncio.timeout(timeout):
            files = await forge.workflow_files()
    except (ForgeError, TimeoutError) as exc:
        logger.warning("could not read the workflows of %s: %s", forge.repository, exc)
        return notice(forge.repository, fork, None, error=str(exc)[:200] or f"no answer within {timeout:.0f}s")
    return notice(forge.repository, fork, exposed(files), total=len(files.files))


def _listing(found: tuple[Exposed, ...]) -> str:
    shown = ", ".join(e.label for e in found[:MAX_LISTED])
    return shown + (f" and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else "")


def _events(on: Any) -> dict[str, Any]:
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return {str(e): None for e in on}
    if isinstance(on, dict):
        return {str(k): v for k, v in on.items()}
    return {}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _fires(event: str, config: Any, base_branch: str) -> bool:
    if not isinstance(config, dict):
        return True  # `push:` with nothing under it runs for every push
    if event == "push":
        if "branches" in config:
            return _may_select_agent_branch(_strings(config["branches"]))
        if "branches-ignore" in config:
            return any(not _selected(_strings(config["branches-ignore"]), b) for b in AGENT_BRANCHES)
        # tags only: a branch push does not run it
        return "tags" not in config and "tags-ignore" not in config
    # pull_request and pull_request_target filter on the branch the pull request goes into: the base
    if "branches" in config:
        return _selected(_strings(config["branches"]), base_branch)
    if "branches-ignore" in config:
        return not _selected(_strings(config["branches-ignore"]), base_branch)
    return True


def _may_select_agent_branch(patterns: list[str]) -> bool:
    if any(_selected(patterns, b) for b in AGENT_BRANCHES):
        return True
    for pattern in patterns:  # `agent/feature-add*` selects some agent branches, only not the sample names
        wild = _WILDCARD.search(pattern)
        if not pattern.startswith("!") and wild is not None and pattern[: wild.start()].startswith(
            AGENT_BRANCH_PREFIX
        ):
            return True
    return False


def _selected(patterns: list[str], branch: str) -> bool:
    """GitHub's filter: patterns in order, a `!` pattern takes back what an earlier one selected."""
    chosen = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if _matches(pattern[1:], branch):
                chosen = False
        elif _matches(pattern, branch):
            chosen = True
    return chosen


def _matches(pattern: str, branch: str) -> bool:
    regex = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            regex.append(".*")
            i += 2
            continue
        if char == "*":
            regex.append("[^/]*")
        elif char in "?+" and regex:
            regex.append(char)  # zero or one / one or more of what precedes it
        elif char == "[" and (end := pattern.find("]", i + 1)) > i + 1:
            regex.append("[" + pattern[i + 1:end].replace("\\", "\\\\") + "]")
            i = end + 1
            continue
        else:
            regex.append(re.escape(char))
        i += 1
    try:
        return re.fullmatch("".join(regex), branch) is not None
    except re.error:
        return True  # a pattern we cannot read may select the branch: say so rather than stay quiet
