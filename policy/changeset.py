"""The final change of a task, decided against the write rules and limits before anything is committed.

The sandbox's own view of the change is untrusted; the supervisor computes the change itself and passes
it here. Every path is re-checked, symlink targets and file modes included.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from policy.model import Policy
from policy.paths import normalize

MODE_FILE = 0o100644
MODE_EXECUTABLE = 0o100755
MODE_SYMLINK = 0o120000
MODE_SUBMODULE = 0o160000


@dataclass(frozen=True, slots=True)
class FileChange:
    """One changed path, as git reports it (`mode` is git's: 0o100644, 0o100755, 0o120000 or 0o160000)."""

    path: str
    status: Literal["added", "modified", "deleted", "renamed"]
    old_path: str | None = None
    mode: int | None = None
    symlink_target: str | None = None
    added_lines: int = 0
    removed_lines: int = 0


@dataclass(frozen=True, slots=True)
class ChangesetVerdict:
    """Whether the change may be proposed; `reasons` lists every rejection, in the order of the changes."""

    ok: bool
    reasons: tuple[str, ...]


def _path_problem(policy: Policy, path: str, what: str) -> str | None:
    if not path or "\x00" in path or path.startswith("/") or path.startswith("~"):
        return f"{what} {path!r} is not a relative path inside the workspace"
    loc = normalize(path, policy.workspace)
    if loc.rel is None or loc.rel == "":
        return f"{what} {path!r} leaves the workspace"
    if ".git" in loc.rel.split("/"):
        return f"{what} {path!r} is inside a .git directory"
    hit = policy.paths.read_protected.match(loc.rel) or policy.paths.write_protected.match(loc.rel)
    if hit is not None:
        return f"{what} {path!r} is protected by {hit!r}"
    return None


def check_changeset(policy: Policy, kind: str, changes: Sequence[FileChange], diff_bytes: int) -> ChangesetVerdict:
    """Check a task's final change: protected or `.git` paths, symlinks leaving the workspace or pointing at
    protected files, submodules, executable bits outside `paths.executable`, and the profile's limits.

    >>> check_changeset(policy, "fix", [FileChange(".env", "added", mode=0o100644)], 10).ok
    False
    """
    reasons: list[str] = []
    profile = policy.profiles.get(kind)
    if profile is None:
        return ChangesetVerdict(False, (f"the task kind {kind!r} has no profile",))
    if profile.read_only and changes:
        reasons.append(f"{kind} tasks are read-only but the change touches {len(changes)} file(s)")
    limits = profile.limits
    if len(changes) > limits.max_changed_files:
        reasons.append(f"{len(changes)} files changed, more than the limit of {limits.max_changed_files}")
    if diff_bytes > limits.max_diff_bytes:
        reasons.append(f"the diff is {diff_bytes} bytes, more than the limit of {limits.max_diff_bytes}")
    for change in changes:
        for path, what in ((change.path, "path"), (change.old_path, "renamed-from path")):
            if path is None:
                continue
            why = _path_problem(policy, path, what)
            if why is not None:
                reasons.append(why)
        if change.status == "renamed" and change.old_path is None:
            reasons.append(f"the rename to {change.path!r} does not say where it came from")
        if change.status == "deleted":
            continue
        if change.mode == MODE_SUBMODULE:
            reasons.append(f"{change.path!r} is a submodule; submodules cannot be added or changed")
        elif change.mode == MODE_SYMLINK:
            reasons += _symlink_problems(policy, change)
        elif change.mode == MODE_EXECUTABLE and change.status in ("added", "renamed"):
            loc = normalize(change.path, policy.workspace)
            if loc.rel is not None and policy.paths.executable.match(loc.rel) is None:
                reasons.append(f"{change.path!r} is a new executable file outside the allowed places")
        elif change.mode not in (None, MODE_FILE, MODE_EXECUTABLE):
            reasons.append(f"{change.path!r} has an unknown file mode {oct(change.mode)}")
    return ChangesetVerdict(not reasons, tuple(reasons))


def _symlink_problems(policy: Policy, change: FileChange) -> list[str]:
    target = change.symlink_target
    if target is None or not target or "\x00" in target:
        return [f"the symlink {change.path!r} has no readable target"]
    if target.startswith("/") or target.startswith("~"):
        return [f"the symlink {change.path!r} points at the absolute path {target!r}"]
    joined = posixpath.join(posixpath.dirname(change.path), target)
    why = _path_problem(policy, joined, "target")
    if why is not None:
        return [f"the symlink {change.path!r} points at {target!r}: {why}"]
    return []
