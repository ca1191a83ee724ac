"""Workspace paths: normalisation, gitignore-style matching, and whether a glob could match a protected path.

Literal paths are matched with `pathspec` (gitignore semantics). A glob or a path built at run time cannot be
matched that way, so both sides are compiled to small automata and their intersection is tested: a glob
argument is protected when *some* file it could expand to is protected.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import pathspec

# --- normalisation ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Location:
    """A normalised path: `rel` is workspace-relative ("" for the workspace itself) or None when outside;
    `abs` is the absolute path, or None when it cannot be known (``~``)."""

    rel: str | None
    abs: str | None


def normalize(path: str, workspace: str = "/workspace", cwd: str | None = None) -> Location:
    """Resolve `path` lexically against `cwd` (default: the workspace).

    >>> normalize("src/../.env")
    Location(rel='.env', abs='/workspace/.env')
    >>> normalize("/workspace/.git//config").rel
    '.git/config'
    """
    if path.startswith("~"):
        return Location(None, None)
    base = cwd if cwd is not None else workspace
    joined = path if path.startswith("/") else f"{base}/{path}"
    absolute = posixpath.normpath(joined)
    if absolute.startswith("//"):
        absolute = "/" + absolute.lstrip("/")
    if absolute == workspace:
        return Location("", absolute)
    if absolute.startswith(workspace + "/"):
        return Location(absolute[len(workspace) + 1 :], absolute)
    return Location(None, absolute)


# --- automata over path strings -----------------------------------------------------------------------------------
# A predicate is (allowed, excluded): allowed None means "any character"; a character matches when it is in
# `allowed` (or allowed is None) and not in `excluded`.

Pred = tuple[frozenset[str] | None, frozenset[str]]
ANY: Pred = (None, frozenset())
NOSLASH: Pred = (None, frozenset("/"))
NOSLASH_NODOT: Pred = (None, frozenset("/."))
_MAX_CLASS = 512


def _lit(c: str) -> Pred:
    return (frozenset(c), frozenset())


def _overlap(a: Pred, b: Pred) -> bool:
    (pa, ea), (pb, eb) = a, b
    excluded = ea | eb
    if pa is None and pb is None:
        return True  # two co-finite sets over an infinite alphabet always meet
    if pa is None:
        assert pb is not None
        return bool(pb - excluded)
    if pb is None:
        return bool(pa - excluded)
    return bool((pa & pb) - excluded)


class Nfa:
    """A tiny NFA: state i has char edges `edges[i]` and epsilon edges `eps[i]`; `accept` is the final state."""

    __slots__ = ("edges", "eps", "accept")

    def __init__(self) -> None:
        self.edges: list[list[tuple[Pred, int]]] = [[]]
        self.eps: list[list[int]] = [[]]
        self.accept = 0

    def new(self) -> int:
        self.edges.append([])
        self.eps.append([])
        return len(self.edges) - 1

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        seen = set(states)
        todo = list(seen)
        while todo:
            s = todo.pop()
            for t in self.eps[s]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return frozenset(seen)


def _parse_class(pattern: str, i: int) -> tuple[Pred, int] | None:
    """Parse a bracket expression at pattern[i] == '['; return its predicate and the index after ']'."""
    j = i + 1
    negate = False
    if j < len(pattern) and pattern[j] in "!^":
        negate = True
        j += 1
    chars: set[str] = set()
    first = True
    too_big = False
    while j < len(pattern) and (first or pattern[j] != "]"):
        first = False
        c = pattern[j]
        if c == "\\" and j + 1 < len(pattern):
            j += 1
            c = pattern[j]
        if j + 2 < len(pattern) and pattern[j + 1] == "-" and pattern[j + 2] != "]":
            lo, hi = ord(c), ord(pattern[j + 2])
            if hi - lo > _MAX_CLASS:
                too_big = True
            else:
                chars.update(chr(k) for k in range(lo, hi + 1))
            j += 3
        else:
            chars.add(c)
            j += 1
    if j >= len(pattern):
        return None
    if negate:
        return (None, frozenset(chars) | {"/"}), j + 1
    if too_big:
        return NOSLASH, j + 1
    return (frozenset(chars) - {"/"}, frozenset()), j + 1


def _add_star(nfa: Nfa, s: int, pred: Pred, first: Pred | None = None) -> int:
    """Zero or more chars of `pred` (the first one of `first`, when bash's dot rule applies)."""
    loop = nfa.new()
    end = nfa.new()
    nfa.eps[s].append(end)
    nfa.edges[s].append((first if first is not None else pred, loop))
    nfa.edges[loop].append((pred, loop))
    nfa.eps[loop].append(end)
    return end


def _add_edge(nfa: Nfa, s: int, pred: Pred) -> int:
    t = nfa.new()
    nfa.edges[s].append((pred, t))
    return t


def _finish(nfa: Nfa, s: int) -> Nfa:
    nfa.accept = s
    return nfa


@lru_cache(maxsize=4096)
def gitignore_nfa(pattern: str) -> Nfa:
    """Automaton of every workspace-relative path the gitignore pattern excludes (a matched directory
    excludes everything under it, so ``secrets/**`` and ``secrets/`` both cover ``secrets`` itself)."""
    p = pattern
    if p.endswith("/"):
        p = p.rstrip("/")
    anchored = "/" in p
    p = p.lstrip("/")
    while p.endswith("/**"):
        p = p[:-3]
    nfa = Nfa()
    s = 0
    if not anchored:
        s = _add_dirs(nfa, s)
    i = 0
    while i < len(p):
        if p.startswith("**/", i) and (i == 0 or p[i - 1] == "/"):
            s = _add_dirs(nfa, s)
            i += 3
            continue
        c = p[i]
        if c == "*":
            while i + 1 < len(p) and p[i + 1] == "*":
                i += 1
            s = _add_star(nfa, s, NOSLASH)
        elif c == "?":
            s = _add_edge(nfa, s, NOSLASH)
        elif c == "[":
            parsed = _parse_class(p, i)
            if parsed is not None:
                pred, i = parsed
                s = _add_edge(nfa, s, pred)
                continue
            s = _add_edge(nfa, s, _lit("["))
        elif c == "\\" and i + 1 < len(p):
            i += 1
            s = _add_edge(nfa, s, _lit(p[i]))
        else:
            s = _add_edge(nfa, s, _lit(c))
        i += 1
    # optional "/anything" tail: a matched directory covers its contents
    end = nfa.new()
    nfa.eps[s].append(end)
    slash = _add_edge(nfa, s, _lit("/"))
    nfa.edges[slash].append((ANY, slash))
    nfa.eps[slash].append(end)
    return _finish(nfa, end)


def _add_dirs(nfa: Nfa, s: int) -> int:
    """Zero or more leading directories: '' or any string ending in '/'."""
    end = nfa.new()
    nfa.eps[s].append(end)
    mid = nfa.new()
    nfa.edges[s].append((ANY, mid))
    nfa.edges[mid].append((ANY, mid))
    nfa.edges[s].append((_lit("/"), end))
    nfa.edges[mid].append((_lit("/"), end))
    return end


@dataclass(frozen=True, slots=True)
class GlobPart:
    """One piece of a shell word seen as a path: literal text, a glob metacharacter, or a run-time unknown."""

    kind: str  # "lit" | "star" | "any" | "class" | "unknown"
    text: str = ""


def glob_nfa(parts: Sequence[GlobPart]) -> Nfa:
    """Automaton of every workspace-relative path a shell word could name. Bash's `*`, `?` and `[...]` do
    not match '/' nor a leading '.' of a component; an unknown (``$VAR``, ``$(...)``) may be anything."""
    nfa = Nfa()
    s = 0
    at_start = True
    for part in parts:
        if part.kind == "lit":
            for c in part.text:
                s = _add_edge(nfa, s, _lit(c))
                at_start = c == "/"
            continue
        if part.kind == "star":
            s = _add_star(nfa, s, NOSLASH, NOSLASH_NODOT if at_start else None)
        elif part.kind == "any":
            s = _add_edge(nfa, s, NOSLASH_NODOT if at_start else NOSLASH)
        elif part.kind == "class":
            parsed = _parse_class(part.text, 0)
            # bash will not let a bracket match a leading '.', but assuming it may is the safe side
            pred = parsed[0] if parsed is not None else NOSLASH
            s = _add_edge(nfa, s, pred)
        else:
            s = _add_star(nfa, s, ANY)
        at_start = False
    return _finish(nfa, s)


def intersects(a: Nfa, b: Nfa) -> bool:
    """True when some string is accepted by both automata (product reachability)."""
    start = (a.closure([0]), b.closure([0]))
    seen = {start}
    todo = [start]
    fa, fb = a.accept, b.accept
    while todo:
        sa, sb = todo.pop()
        if fa in sa and fb in sb:
            return True
        for x in sa:
            for pa, ta in a.edges[x]:
                for y in sb:
                    for pb, tb in b.edges[y]:
                        if _overlap(pa, pb):
                            nxt = (a.closure([ta]), b.closure([tb]))
                            if nxt not in seen:
                                seen.add(nxt)
                                todo.append(nxt)
    return False


# --- compiled rule sets -------------------------------------------------------------------------------------------


class PatternSet:
    """A list of gitignore patterns, matched against literal paths (pathspec) and against globs (automata)."""

    __slots__ = ("patterns", "_regex", "_subtrees")

    def __init__(self, patterns: Sequence[str]):
        self.patterns = tuple(patterns)
        self._subtrees: dict[str, str | None] = {}  # match_subtree's answers: the automata cost ~0.1 ms a path
        # pathspec compiles each gitignore line to a regex; one alternation of them all matches a path in one
        # pass, and the group that matched names the first matching pattern
        alternatives = []
        for i, pat in enumerate(self.patterns):
            (compiled,) = pathspec.GitIgnoreSpec.from_lines([pat]).patterns
            regex = getattr(compiled, "regex", None)
            if regex is None:  # a blank or comment line matches nothing
                continue
            alternatives.append(f"(?P<p{i}>{regex.pattern.replace('(?P<ps_d>', '(?:')})")
        self._regex = re.compile("|".join(alternatives)) if alternatives else None

    def __repr__(self) -> str:
        return f"PatternSet({list(self.patterns)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PatternSet) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def match(self, rel: str) -> str | None:
        """The first pattern matching the literal path `rel` or the directory `rel/`, else None."""
        if self._regex is None:
            return None
        for candidate in (rel, rel + "/") if rel else ("/",):
            m = self._regex.match(candidate)
            if m is not None and m.lastgroup is not None:
                return self.patterns[int(m.lastgroup[1:])]
        return None

    def match_glob(self, nfa: Nfa) -> str | None:
        """The first pattern that some path accepted by `nfa` matches, else None."""
        for pat in self.patterns:
            if intersects(gitignore_nfa(pat), nfa):
                return pat
        return None

    def match_subtree(self, rel: str) -> str | None:
        """The first pattern matching `rel`, or something below it by an anchored pattern (for writes that move
        or delete a whole tree: ``rm -r .github`` reaches ``.github/workflows/``). Unanchored patterns
        (``secrets/``, ``*.key``) would match below any directory; the changeset check catches those."""
        if rel in self._subtrees:
            return self._subtrees[rel]
        hit = self._match_subtree(rel)
        if len(self._subtrees) < 4096:
            self._subtrees[rel] = hit
        return hit

    def _match_subtree(self, rel: str) -> str | None:
        hit = self.match(rel)
        if hit is not None or not self.patterns:
            return hit
        if rel == "":
            return self.patterns[0]
        nfa = glob_nfa([GlobPart("lit", rel + "/"), GlobPart("unknown")])
        for pat in self.patterns:
            if "/" in pat.strip("/") or pat.startswith("/"):
                if intersects(gitignore_nfa(pat), nfa):
                    return pat
        return None


@dataclass(frozen=True, slots=True)
class PathRules:
    """The policy's path section, compiled."""

    read_protected: PatternSet
    write_protected: PatternSet
    ask_write: PatternSet
    outside_read: PatternSet
    outside_write: PatternSet
    executable: PatternSet
