"""The final change of a task, decided against the write rules and limits before anything is committed.

The sandbox's own view of the change is untrusted; the supervisor computes the change itself and passes
it here. Every path is re-checked, symlink targets and file modes included. A symlink is resolved the way
the kernel would resolve it in a checkout of the new tree: component by component, through every other
symlink of that tree, with Linux's limit of 40 links per lookup.
"""

from __future__ import annotations

import posixpath
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from policy.model import Policy
from policy.paths import normalize

MODE_FILE = 0o100644
MODE_EXECUTABLE = 0o100755
MODE_SYMLINK = 0o120000
MODE_SUBMODULE = 0o160000

MAX_SYMLINK_HOPS = 40  # Linux's MAXSYMLINKS: more links than this in one lookup is ELOOP

# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt). Most are Cf or Cn, which are refused
# by category anyway; the rest (variation selectors, the combining grapheme joiner, Hangul fillers, Mongolian free
# variation selectors) are letters or marks that render as nothing.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
# Control, format (bidi overrides, zero-width joiners), line and paragraph separators, private use, surrogates
# (what git's bytes decode to when they are not UTF-8) and unassigned code points.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})


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
    """Whether the change may be proposed; `reasons` lists every rejection, in the order of the changes.

    `needs_owner` names the changed paths under `paths.ask_write` (dependency files): they are not a reason to
    reject, but the change may only be pushed once the owner said yes to that content.
    """

    ok: bool
    reasons: tuple[str, ...]
    needs_owner: tuple[str, ...] = ()


def is_hidden(char: str) -> bool:
    """True for a code point that renders as nothing or changes how the text around it reads: control and format
    characters (bidi overrides, zero-width joiners), line and paragraph separators, private use, surrogates (what
    git's bytes decode to when they are not UTF-8), unassigned and default-ignorable code points (variation
    selectors, Hangul fillers). Tabs and newlines are controls too; callers that keep them say so.

    >>> is_hidden("\u202e"), is_hidden("\ufe0f"), is_hidden("a"), is_hidden(" ")
    (True, True, False, False)
    """
    point = ord(char)
    return unicodedata.category(char) in _REFUSED_CATEGORIES or any(
        low <= point <= high for low, high in _DEFAULT_IGNORABLE
    )


def invisible_characters(text: str) -> tuple[str, ...]:
    """The code points of `text` that a reader of a path cannot see, as ``U+XXXX``: every `is_hidden` one and
    every space but the plain one (a no-break space makes `a.py` and `a.py\u00a0` look alike).

    >>> invisible_characters("tests/test_\u202egnp.py"), invisible_characters("my notes.txt")
    (('U+202E',), ())
    """
    found: list[str] = []
    for char in text:
        if is_hidden(char) or (char != " " and unicodedata.category(char) == "Zs"):
            name = f"U+{ord(char):04X}"
            if name not in found:
                found.append(name)
    return tuple(found)


def _is_git_dir(component: str) -> bool:
    # What git itself refuses to check out (core.protectNTFS / protectHFS): `.GIT`, `.git.`, `.git ` are `.git`
    # to the filesystems of the machines this change is checked out on.
    return component.lower().rstrip(". ") == ".git"


def _path_problem(policy: Policy, path: str, what: str) -> str | None:
    if not path or path.startswith("/") or path.startswith("~"):
        return f"{what} {path!r} is not a relative path inside the workspace"
    hidden = invisible_characters(path)
    if hidden:
        return f"{what} {path!r} holds invisible or control characters ({', '.join(hidden)})"
    loc = normalize(path, policy.workspace)
    if loc.rel is None or loc.rel == "":
        return f"{what} {path!r} leaves the workspace"
    return _location_problem(policy, loc.rel, what, path)


def _location_problem(policy: Policy, rel: str, what: str, shown: str, *, subtree: bool = False) -> str | None:
    if any(_is_git_dir(part) for part in rel.split("/")):
        return f"{what} {shown!r} is inside a .git directory"
    rules = policy.paths
    if subtree:  # a symlink to a directory reaches everything below it
        hit = rules.read_protected.match_subtree(rel) or rules.write_protected.match_subtree(rel)
    else:
        hit = rules.read_protected.match(rel) or rules.write_protected.match(rel)
    if hit is not None:
        return f"{what} {shown!r} is protected by {hit!r}"
    return None


def check_changeset(
    policy: Policy,
    kind: str,
    changes: Sequence[FileChange],
    diff_bytes: int,
    *,
    symlinks: Mapping[str, str] | None = None,
) -> ChangesetVerdict:
    """Check a task's final change: protected or `.git` paths, paths with invisible characters, symlinks that
    resolve out of the workspace or onto protected files, submodules, executable bits outside
    `paths.executable`, and the profile's limits; and name the changed dependency files (`needs_owner`).

    `symlinks` maps every symlink of the new tree (workspace-relative path, as `git ls-tree -r` lists entries of
    mode 120000) to its target. A changed symlink is resolved through all of them, and so is every unchanged one
    whose resolution passes through a changed one. Without it, only the changed symlinks are known.

    >>> check_changeset(policy, "fix", [FileChange(".env", "added", mode=0o100644)], 10).ok
    False
    >>> chain = {"a": "b", "b": "../../etc/passwd"}
    >>> verdict = check_changeset(policy, "fix", [FileChange("a", "added", mode=0o120000, symlink_target="b")], 10,
    ...                           symlinks=chain)
    >>> verdict.reasons[0].endswith("(through 2 symlinks, the last pointing at '../../etc/passwd'): it leaves the "
    ...                             "workspace")
    True
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
    tree = _new_tree_links(changes, symlinks)
    changed_links = {c.path for c in changes if c.status != "deleted" and c.mode == MODE_SYMLINK}
    needs_owner: list[str] = []
    for change in changes:
        for path, what in ((change.path, "path"), (change.old_path, "renamed-from path")):
            if path is None:
                continue
            why = _path_problem(policy, path, what)
            if why is not None:
                reasons.append(why)
            loc = normalize(path, policy.workspace)
            if loc.rel and policy.paths.ask_write.match(loc.rel) is not None and path not in needs_owner:
                needs_owner.append(path)
        if change.status == "renamed" and change.old_path is None:
            reasons.append(f"the rename to {change.path!r} does not say where it came from")
        if change.status == "deleted":
            continue
        if change.mode == MODE_SUBMODULE:
            reasons.append(f"{change.path!r} is a submodule; submodules cannot be added or changed")
        elif change.mode == MODE_SYMLINK:
            reasons += _symlink_problems(policy, change.path, tree)
        elif change.mode == MODE_EXECUTABLE and change.status in ("added", "renamed"):
            loc = normalize(change.path, policy.workspace)
            if loc.rel is not None and policy.paths.executable.match(loc.rel) is None:
                reasons.append(f"{change.path!r} is a new executable file outside the allowed places")
        elif change.mode not in (None, MODE_FILE, MODE_EXECUTABLE):
            reasons.append(f"{change.path!r} has an unknown file mode {oct(change.mode)}")
    # An unchanged link can be redirected by a changed one it passes through: `docs/cfg -> ../conf/app.yaml`
    # reaches a protected file once `conf` becomes a link to `deploy`.
    for path in sorted(set(tree) - changed_links):
        if _resolve(path, tree).through & changed_links:
            reasons += _symlink_problems(policy, path, tree)
    return ChangesetVerdict(not reasons, tuple(reasons), tuple(needs_owner))


def _new_tree_links(changes: Sequence[FileChange], symlinks: Mapping[str, str] | None) -> dict[str, str]:
    """Every symlink of the new tree: the given listing, with the change's own view of its symlinks on top."""
    tree = {_clean_key(path): target for path, target in (symlinks or {}).items()}
    for change in changes:
        if change.status == "renamed" and change.old_path is not None:
            tree.pop(_clean_key(change.old_path), None)
        if change.status == "deleted" or change.mode != MODE_SYMLINK:
            tree.pop(_clean_key(change.path), None)
        else:
            tree[_clean_key(change.path)] = change.symlink_target or ""
    return tree


def _clean_key(path: str) -> str:
    return posixpath.normpath(path).lstrip("/") if path else path


@dataclass(frozen=True, slots=True)
class _Resolution:
    """Where a symlink leads: `rel` (workspace-relative; None with `problem`), the links it went through."""

    rel: str | None
    problem: str | None
    through: frozenset[str]
    hops: int
    last_target: str


def _resolve(link: str, tree: Mapping[str, str]) -> _Resolution:
    """Follow `link` as path lookup does: each component of each target in turn, `..` from the directory the
    lookup has really reached (not the lexical one), every symlink met on the way followed."""
    done: list[str] = [p for p in posixpath.dirname(link).split("/") if p]
    target = tree.get(link, "")
    todo: list[str] = list(reversed(target.split("/")))
    through = {link}
    hops = 1
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return _Resolution(None, "it leaves the workspace", frozenset(through), hops, target)
            done.pop()
            continue
        candidate = "/".join([*done, part])
        if candidate not in tree:
            done.append(part)  # a directory or file of the tree, or nothing yet: taken as it is named
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            why = f"it goes through more than {MAX_SYMLINK_HOPS} symlinks (a loop, or a chain too long)"
            return _Resolution(None, why, frozenset(through), hops, target)
        through.add(candidate)
        target = tree[candidate]
        if target.startswith(("/", "~")):
            return _Resolution(None, f"{candidate!r} points at the absolute path {target!r}",
                               frozenset(through), hops, target)
        todo.extend(reversed(target.split("/")))
    rel = "/".join(done)
    if not rel:
        return _Resolution(None, "it is the workspace itself", frozenset(through), hops, target)
    return _Resolution(rel, None, frozenset(through), hops, target)


def _symlink_problems(policy: Policy, path: str, tree: Mapping[str, str]) -> list[str]:
    target = tree.get(_clean_key(path))
    if not target:
        return [f"the symlink {path!r} has no readable target"]
    hidden = invisible_characters(target)
    if hidden:
        return [f"the symlink {path!r} has a target with invisible or control characters ({', '.join(hidden)})"]
    if target.startswith("/") or target.startswith("~"):
        return [f"the symlink {path!r} points at the absolute path {target!r}"]
    resolved = _resolve(_clean_key(path), tree)
    via = f" (through {resolved.hops} symlinks, the last pointing at {resolved.last_target!r})"
    via = "" if resolved.hops == 1 else via
    if resolved.problem is not None:
        return [f"the symlink {path!r} points at {target!r}{via}: {resolved.problem}"]
    assert resolved.rel is not None
    why = _location_problem(policy, resolved.rel, "target", resolved.rel, subtree=True)
    if why is not None:
        return [f"the symlink {path!r} points at {target!r}{via}: {why}"]
    return []
