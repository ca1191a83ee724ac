"""PURE: one routed block of traceback lines parsed: chained exceptions, exception groups (nested), frames."""

from __future__ import annotations

import re
from collections.abc import Sequence

from runner.alerts.tracebacks.fingerprint import assemble
from runner.alerts.tracebacks.grammar import CAUSE, CONTEXT, EXC_RE, FRAME_RE, GROUP_HEADER_RE, HEADER_RE, SKIP_RE
from runner.alerts.tracebacks.values import (
    MAX_LINE_CHARS,
    MAX_MESSAGE_CHARS,
    ChainedException,
    Frame,
    ParsedTraceback,
    RaisedException,
    Relation,
)

__all__ = ["parse_block"]

MAX_DEPTH = 8  # exception-group nesting

def parse_block(
    lines: Sequence[str], truncated: bool, roots: tuple[str, ...], depth: int
) -> ParsedTraceback | None:
    segments: list[list[str]] = [[]]
    relations: list[Relation] = []
    for line in lines:
        if line.startswith(CAUSE) or line.startswith(CONTEXT):
            relations.append("cause" if line.startswith(CAUSE) else "context")
            segments.append([])
        else:
            segments[-1].append(line)
    parsed: list[tuple[RaisedException, Relation]] = []
    for i, seg in enumerate(segments):
        exc = _parse_segment(seg, roots, depth)
        if exc is not None:
            parsed.append((exc, relations[i] if i < len(relations) else "context"))
    if not parsed:
        return None
    final = parsed[-1][0]
    if not final.exc_type:
        truncated = True
    chain = tuple(ChainedException(e.exc_type, e.message, e.frames, rel) for e, rel in parsed[:-1])
    return assemble(final, chain, truncated, roots, "\n".join(lines)[:MAX_LINE_CHARS])


def _parse_segment(lines: list[str], roots: tuple[str, ...], depth: int) -> RaisedException | None:
    while lines and not lines[0].strip():
        lines = lines[1:]
    if not lines:
        return None
    m = GROUP_HEADER_RE.match(lines[0])
    if m is not None:
        col = len(m.group(1))
        return _parse_group([ln[col:] if not ln[:col].strip() else ln.lstrip() for ln in lines], roots, depth)
    if any(ln.startswith("+-+") for ln in lines):
        return _parse_group(lines, roots, depth)
    exc = _parse_plain(lines)
    return exc if exc.exc_type or exc.frames else None


def _demargin(line: str) -> str:
    if line.startswith(("| ", "+ ")):
        return line[2:]
    return "" if line in ("|", "+") else line


def _parse_group(lines: list[str], roots: tuple[str, ...], depth: int) -> RaisedException:
    """Lines in the margined shape: `+ Exception Group...`, `| ...`, `+-+--- 1 ---`, `  | ...`."""
    own: list[str] = []
    members: list[list[str]] = []
    current: list[str] | None = None
    in_members = False
    for line in lines:
        if not in_members and not line.startswith("+-+"):
            own.append(_demargin(line))
            continue
        if line.startswith("+-+") and not in_members:
            in_members = True
            current = None if "..." in line else []
        elif re.fullmatch(r"  \+-+ (?:\d+|\.\.\.) -+\s*", line):
            current = None if "..." in line else []
        elif re.fullmatch(r"  \+-+\s*", line):
            current = None
        elif line.startswith("  ") and current is not None:
            current.append(line[2:])
            continue
        else:
            continue
        if current is not None:
            members.append(current)
    exc = _parse_plain(own)
    if depth < MAX_DEPTH:
        parsed = []
        for member in members[:50]:
            if any(ln.startswith("+-+") for ln in member):
                sub = _parse_group(member, roots, depth + 1)
                parsed.append(assemble(sub, (), False, roots, "\n".join(member)))
            else:
                tb = parse_block([_demargin(ln) for ln in member], False, roots, depth + 1)
                if tb is not None:
                    parsed.append(tb)
        exc.members = tuple(parsed)
    return exc


def _parse_plain(lines: Sequence[str]) -> RaisedException:
    frames: list[Frame] = []
    exc_type = ""
    message: list[str] = []
    for line in lines:
        if exc_type:
            if sum(len(m) for m in message) < MAX_MESSAGE_CHARS:
                message.append(line)
            continue
        fm = FRAME_RE.match(line)
        if fm is not None:
            frames.append(Frame(fm.group(1), int(fm.group(2)[:9]), fm.group(3) or ""))
        elif HEADER_RE.match(line) or line.startswith("Exception Group Traceback") or SKIP_RE.match(line):
            continue
        elif line[:1] in (" ", "\t"):
            if frames and frames[-1].source_line is None and line.strip():
                last = frames[-1]
                frames[-1] = Frame(last.file, last.line, last.function, line.strip())
        elif line.strip():
            m = EXC_RE.match(line)
            if m is not None:
                exc_type = m.group(1)
                message.append(m.group(2) or "")
    text = "\n".join(message).strip("\n")[:MAX_MESSAGE_CHARS]
    return RaisedException(exc_type, text, tuple(frames))

