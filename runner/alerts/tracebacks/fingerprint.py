"""PURE: which frames are the repository's, and the fingerprint and summary that name one bug in any log shape.

The fingerprint hashes the exception type, the root cause and the repository's frames (path and function,
never line numbers); only with nothing of ours on the stack does it fall back to the normalised message.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

from runner.alerts.tracebacks.values import (
    MAX_MESSAGE_CHARS,
    ChainedException,
    Frame,
    ParsedTraceback,
    RaisedException,
)

__all__ = ["FINGERPRINT_CHARS", "assemble", "normalise_message", "rebuild"]

FINGERPRINT_CHARS = 16

_LIBRARY_RE = re.compile(
    r"(?:^|/)(?:site|dist)-packages/|/lib(?:64)?/python\d+(?:\.\d+)?t?/|^<|/asyncio/|\.pyx$"
)


def _repo_path(file: str, roots: tuple[str, ...]) -> str | None:
    """The repo-relative path of `file`, or None when it is a library, stdlib or interpreter frame."""
    if _LIBRARY_RE.search(file):
        return None
    path = file[2:] if file.startswith("./") else file
    if not roots:
        return path
    for root in roots:
        r = root.rstrip("/")
        if not r:
            continue
        if r.startswith("/"):
            if path.startswith(r + "/"):
                return path[len(r) + 1 :]
        elif path.startswith(r + "/"):
            return path
        elif (i := path.find("/" + r + "/")) != -1:
            return path[i + 1 :]
    return None


def _repo_frames(frames: Sequence[Frame], roots: tuple[str, ...]) -> list[tuple[Frame, str]]:
    out: list[tuple[Frame, str]] = []
    for frame in frames:
        path = _repo_path(frame.file, roots)
        if path is not None:
            out.append((frame, path))
    return out


def _signature(frames: Sequence[Frame], roots: tuple[str, ...]) -> list[str]:
    sig: list[str] = []
    for frame, path in _repo_frames(frames, roots):
        item = f"{path}:{frame.function}"
        if not sig or sig[-1] != item:  # recursion repeats a frame; depth is not the bug
            sig.append(item)
    return sig


def assemble(
    final: RaisedException, chain: tuple[ChainedException, ...], truncated: bool, roots: tuple[str, ...], text: str
) -> ParsedTraceback:
    # The most telling exception: follow explicit `raise ... from` causes back from the final one.
    candidates: list[tuple[str, tuple[Frame, ...]]] = [(final.exc_type, final.frames)]
    i = len(chain) - 1
    while i >= 0 and chain[i].relation == "cause":
        candidates.insert(0, (chain[i].exc_type, chain[i].frames))
        i -= 1
    candidates += [(c.exc_type, c.frames) for c in reversed(chain[: i + 1])]
    repo_frame: Frame | None = None
    repo_path: str | None = None
    for _, frames in candidates:
        found = _repo_frames(frames, roots)
        if found:
            repo_frame, repo_path = found[-1]
            break
    # A group raised by our code points at that code (the `async with TaskGroup()`); otherwise at a
    # member, chosen by fingerprint because members arrive in whatever order the tasks failed.
    for member in sorted(final.members, key=lambda m: m.fingerprint):
        if repo_frame is not None:
            break
        repo_frame, repo_path = member.repo_frame, member.repo_path

    parts = ["tb1", final.exc_type]
    if chain:
        parts += ["root", chain[0].exc_type, *_signature(chain[0].frames, roots)]
    parts += ["at", *_signature(final.frames, roots)]
    if final.members:
        parts += ["members", *sorted({m.fingerprint for m in final.members})]
    if repo_frame is None and not final.members:
        # Nothing of ours on the stack: fall back to the message and the innermost library frame.
        parts += ["msg", normalise_message(final.message)]
        if final.frames:
            parts += [final.frames[-1].file.rsplit("/", 1)[-1], final.frames[-1].function]
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()
    fingerprint = digest[:FINGERPRINT_CHARS]

    if repo_frame is not None and repo_path is not None:
        where = f"{repo_path}:{repo_frame.function}" if repo_frame.function else repo_path
    elif final.frames:
        where = f"{final.frames[-1].file}:{final.frames[-1].function}"
    else:
        where = "unknown location"
    summary = f"{final.exc_type or '<unknown exception>'} in {where}"
    if chain and chain[0].exc_type and chain[0].exc_type != final.exc_type:
        summary += f" (root cause: {chain[0].exc_type})"
    if final.members:
        names = sorted({m.exc_type for m in final.members if m.exc_type})
        summary += f" [{', '.join(names[:5])}]"
    if truncated:
        summary += " (truncated)"
    summary = re.sub(r"[\x00-\x1f\x7f]", " ", summary)[:240]
    return ParsedTraceback(
        exc_type=final.exc_type,
        message=final.message,
        frames=final.frames,
        chain=chain,
        group_members=final.members,
        truncated=truncated,
        repo_frame=repo_frame,
        repo_path=repo_path,
        fingerprint=fingerprint,
        summary=summary,
        text=text,
    )


def rebuild(tb: ParsedTraceback, roots: tuple[str, ...]) -> ParsedTraceback:
    final = RaisedException(tb.exc_type, tb.message, tb.frames, tb.group_members)
    return assemble(final, tb.chain, True, roots, tb.text)


# Order matters: the specific shapes go before the numbers they contain.
def _hex_id(m: re.Match[str]) -> str:
    # Long digit-only runs are numbers (user ids): one token for both, whatever their length.
    return "<hex>" if re.search(r"[a-fA-F]", m.group()) else m.group()


_NORMALISERS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<addr>"),
    (re.compile(r"(?:/var)?/tmp/[^\s'\",)\]]*"), "<tmp>"),
    (re.compile(r"'[^'\n]{0,400}'"), "<str>"),
    (re.compile(r'"[^"\n]{0,400}"'), "<str>"),
    (re.compile(r"\b[0-9a-fA-F]{12,}\b"), _hex_id),
    (re.compile(r"(?<![A-Za-z])-?\d+(?:\.\d+)?"), "<num>"),
    (re.compile(r"\s+"), " "),
)


def normalise_message(message: str) -> str:
    """The message with its variables (ids, numbers, quoted values, addresses, temp paths) replaced.

    >>> normalise_message("KeyError: 'user_42' at 0x7f3a2c1d")
    'KeyError: <str> at <addr>'
    """
    text = message[:MAX_MESSAGE_CHARS]
    for pattern, replacement in _NORMALISERS:
        text = pattern.sub(replacement, text)
    return text.strip()[:500]

