"""PURE: find Python tracebacks in log text, parse them into frozen values and fingerprint them.

Log text arrives in many shapes: plain stderr, `logging` records whose first line carries a prefix,
per-line prefixes (timestamp, level, request id, `bot-1  | `), JSON lines (structlog, python-json-logger,
ECS/Datadog `error.stack`), logfmt, several requests' tracebacks interleaved line by line, and lines cut
at a size limit. `extract_tracebacks` reads all of them; `parse_traceback` reads one.

The work is done in two passes. A router assigns each line to an open traceback by its *prefix*: the
text before the anchor (`Traceback (most recent call last):`, `File "...", line N`, ...) that opened it,
with timestamps generalised, so lines of concurrent requests land in their own buckets. Each finished
bucket is then parsed as a clean traceback: chained exceptions, exception groups, frames.

Input is capped (`MAX_TEXT_CHARS`, `MAX_LINE_CHARS`) before anything else looks at it, and every regex
here is anchored or free of nested quantifiers, so an enormous line costs the cap, not its size.

Size: about 750 lines holding four concepts still (log-line routing, structured log formats, block parsing,
the fingerprint); they split into an alerts/tracebacks/ package along those seams (issue 15).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "MAX_LINE_CHARS",
    "MAX_TEXT_CHARS",
    "ChainedException",
    "Frame",
    "ParsedTraceback",
    "extract_tracebacks",
    "normalise_message",
    "parse_traceback",
]

MAX_TEXT_CHARS = 1 << 20  # only this much of a log text is read
MAX_LINE_CHARS = 64 << 10  # longer lines are cut (and whatever they carry is marked truncated)
MAX_BLOCK_LINES = 4000
MAX_MESSAGE_CHARS = 4096
MAX_CONTINUATION_LINES = 20
MAX_FOREIGN_LINES = 50  # unrelated log lines tolerated inside an unprefixed traceback's frames
MAX_OPEN = 64  # tracebacks being collected at once (distinct prefixes)
MAX_RESULTS = 500
MAX_DEPTH = 8  # exception-group nesting
FINGERPRINT_CHARS = 16

Relation = Literal["cause", "context"]


@dataclass(frozen=True, slots=True)
class Frame:
    file: str
    line: int
    function: str
    source_line: str | None = None


@dataclass(frozen=True, slots=True)
class ChainedException:
    """An earlier exception of a chain; `relation` says how it led to the next one."""

    exc_type: str
    message: str
    frames: tuple[Frame, ...]
    relation: Relation


@dataclass(frozen=True, slots=True)
class ParsedTraceback:
    """The exception that propagated, with its chain (root cause first) and group members.

    `exc_type` is "" when the exception line was lost (`truncated`). `repo_frame` is the innermost
    frame of the repository in the most telling exception: the one the final exception was raised
    `from` (followed back), else the final one, else earlier context; for a group, its own frames,
    else a member's. `repo_path` is that frame's repo-relative path.
    """

    exc_type: str
    message: str
    frames: tuple[Frame, ...]
    chain: tuple[ChainedException, ...] = ()
    group_members: tuple[ParsedTraceback, ...] = ()
    truncated: bool = False
    repo_frame: Frame | None = None
    repo_path: str | None = None
    fingerprint: str = ""
    summary: str = ""
    text: str = field(default="", repr=False)

    @property
    def root_cause(self) -> ChainedException | None:
        return self.chain[0] if self.chain else None


# ---------------------------------------------------------------------------------------------- lines

_TS = (
    r"(?:\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?"
    r"|[A-Z][a-z]{2} {1,2}\d{1,2} \d{2}:\d{2}:\d{2}"
    r"|\d{10}(?:\.\d{1,9})?)"
)
_TS_RE = re.compile(_TS)
_LEVELS = frozenset({"DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL", "FATAL", "EXCEPTION"})
_LOG_START_RE = re.compile(
    r"\s*[\[(]?" + _TS + r"|(?:DEBUG|INFO|WARN|WARNING|ERROR|CRITICAL|FATAL)\b|[A-Z]+:[\w.]+:"
)
_ANCHOR_RE = re.compile(
    r"Traceback \(most recent call last\):"
    r"|\+ Exception Group Traceback \(most recent call last\):"
    r'|File "[^"\n]*", line \d+'
    r"|During handling of the above exception, another exception occurred:"
    r"|The above exception was the direct cause of the following exception:"
)
_HEADER_RE = re.compile(r"Traceback \(most recent call last\):\s*$")
_GROUP_HEADER_RE = re.compile(r"( *)\+ Exception Group Traceback \(most recent call last\):\s*$")
_FRAME_RE = re.compile(r' *File "([^"\n]*)", line (\d+)(?:, in ([^\n]*?))?\s*$')
_CAUSE = "The above exception was the direct cause of the following exception:"
_CONTEXT = "During handling of the above exception, another exception occurred:"
_SKIP_RE = re.compile(  # caret lines, recursion notes, 3.13's elided source lines
    r"\s*(?:[\^~]+\s*|\[Previous line repeated \d+ more times?\]\s*|\.\.\.<\d+ lines>\.\.\.\s*)$"
)
_EXC_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?::(?: (.*)|\s*)$|\s*$)")
_BARE_EXC_SUFFIXES = ("Error", "Exception", "Warning", "Interrupt", "Exit", "Group", "Iteration", "Failure")


def _is_exception_line(content: str) -> bool:
    m = _EXC_RE.match(content)
    if m is None or m.group(1) in _LEVELS or m.group(1) == "Traceback":
        return False
    if content.rstrip().endswith(":") or m.group(2) is not None:
        return True
    name = m.group(1)
    return "." in name or name.endswith(_BARE_EXC_SUFFIXES)


def _prefix_pattern(prefix: str) -> re.Pattern[str]:
    """A regex matching `prefix` with each timestamp in it replaced by any timestamp."""
    parts: list[str] = []
    pos = 0
    for m in _TS_RE.finditer(prefix):
        parts.append(re.escape(prefix[pos : m.start()]))
        parts.append(_TS)
        pos = m.end()
    parts.append(re.escape(prefix[pos:]))
    return re.compile("".join(parts))


# ---------------------------------------------------------------------------------------------- routing

_Kind = Literal["frames", "exc", "blank", "sep", "group"]
_Verdict = Literal["take", "skip", "done"]


@dataclass(slots=True)
class _Bucket:
    key: str
    rx: re.Pattern[str] | None
    start: int
    lines: list[str] = field(default_factory=list)
    state: _Kind = "frames"
    col: int = 0
    truncated: bool = False
    foreign: int = 0
    continuation: int = 0
    ended: bool = False  # a group's member list has been closed

    def strip(self, line: str) -> str | None:
        if self.rx is None:
            return line
        m = self.rx.match(line)
        if m is None:
            return None
        return line[m.end() :]

    def feed(self, content: str) -> _Verdict:
        """Whether `content` continues this traceback, belongs to someone else, or ends it."""
        state = self.state
        if state in ("frames", "group") and self.rx is None and _LOG_START_RE.match(content):
            # Traceback lines never start with a timestamp or a level: another record, interleaved.
            self.foreign += 1
            return "skip" if self.foreign <= MAX_FOREIGN_LINES else self._fail()
        if state == "frames":
            if _FRAME_RE.match(content) or _SKIP_RE.match(content):
                return self._take(content, "frames")
            if content[:1] in (" ", "\t") and content.strip():
                return self._take(content, "frames")
            if not content.strip():
                return "take"
            if _is_exception_line(content):
                return self._take(content, "exc")
            return self._fail()
        if state == "exc":
            if not content.strip():
                self.state = "blank"
                return "take"
            if content.startswith((_CAUSE, _CONTEXT)):
                return self._take(content, "sep")
            if (
                self.continuation < MAX_CONTINUATION_LINES
                and not _ANCHOR_RE.search(content)
                and not _LOG_START_RE.match(content)
            ):
                self.continuation += 1
                return self._take(content, "exc")
            return "done"
        if state == "blank":
            if not content.strip():
                return "take"
            if content.startswith((_CAUSE, _CONTEXT)):
                return self._take(content, "sep")
            return "done"
        if state == "sep":
            if not content.strip():
                return "take"
            if _HEADER_RE.match(content):
                return self._take(content, "frames")
            return self._take(content, "group") if self._group_col(content) else self._fail()
        # Exception-group lines: a margin of `|` and `+`. A bare `+-----` line closes a member list;
        # Python prints only the innermost one, so the group is over at the first line past it.
        stripped = content.lstrip(" ")
        indent = len(content) - len(stripped)
        if indent >= self.col and stripped[:1] in ("|", "+") and not _GROUP_HEADER_RE.match(content):
            self.ended = indent >= self.col + 2 and re.fullmatch(r"\+-+\s*", stripped) is not None
            return self._take(content, "group")
        if self.ended:
            self.state = "exc"
            return self.feed(content)
        return self._fail()

    def _take(self, content: str, state: _Kind) -> _Verdict:
        if state != "exc":
            self.continuation = 0
        self.lines.append(content)
        self.state = state
        return "take" if len(self.lines) < MAX_BLOCK_LINES else self._fail()

    def _group_col(self, content: str) -> bool:
        m = _GROUP_HEADER_RE.match(content)
        if m is not None:
            self.col = len(m.group(1))
        return m is not None

    def _fail(self) -> _Verdict:
        self.truncated = True
        return "done"

    def open_with(self, content: str) -> None:
        if _HEADER_RE.match(content):
            self._take(content, "frames")
        elif self._group_col(content):
            self._take(content, "group")
        elif content.lstrip().startswith((_CAUSE, _CONTEXT)):
            self.truncated = True
            self._take(content.lstrip(), "sep")
        else:  # a frame: the head of this traceback was lost
            self.truncated = True
            self._take(content, "frames")

    @property
    def complete(self) -> bool:
        return self.state in ("exc", "blank") or (self.state == "group" and self.ended)


@dataclass(slots=True)
class _Router:
    roots: tuple[str, ...]
    nested: bool = False
    open: list[_Bucket] = field(default_factory=list)
    found: list[tuple[int, int, ParsedTraceback]] = field(default_factory=list)
    seq: int = 0

    def line(self, index: int, raw: str, cut: bool) -> None:
        if not self.nested and self._structured(index, raw, cut):
            return
        for bucket in list(self.open):
            content = bucket.strip(raw)
            if content is None:
                continue
            verdict = bucket.feed(content)
            if verdict == "take":
                bucket.truncated = bucket.truncated or cut
                return
            if verdict == "done":
                self._close(bucket)
        m = _ANCHOR_RE.search(raw)
        if m is None:
            return
        start = m.start()
        if raw.startswith(("File", "+"), start):
            back = 0
            while back < 2 and start > 0 and raw[start - 1] == " ":
                start -= 1
                back += 1
        elif raw[:start].strip() and start > 0 and raw[start - 1] != " ":
            return  # an anchor glued to other text is a mention, not a traceback
        prefix = raw[:start]
        rx = _prefix_pattern(prefix) if prefix else None
        bucket = _Bucket(key=_TS_RE.sub("<ts>", prefix), rx=rx, start=index)
        for old in [b for b in self.open if b.key == bucket.key]:
            self._close(old)
        bucket.open_with(raw[start:])
        bucket.truncated = bucket.truncated or cut
        self.open.append(bucket)
        # Longest prefixes first: the empty prefix matches every line and must be asked last.
        self.open.sort(key=lambda b: -len(b.key))
        if len(self.open) > MAX_OPEN:
            oldest = min(self.open, key=lambda b: b.start)
            oldest.truncated = True
            self._close(oldest)

    def finish(self) -> list[ParsedTraceback]:
        for bucket in list(self.open):
            if not bucket.complete:
                bucket.truncated = True
            self._close(bucket)
        self.found.sort(key=lambda item: (item[0], item[1]))
        return [tb for _, _, tb in self.found[:MAX_RESULTS]]

    def _close(self, bucket: _Bucket) -> None:
        self.open.remove(bucket)
        if not bucket.complete and bucket.state in ("group", "sep"):
            bucket.truncated = True
        tb = _parse_block(bucket.lines, bucket.truncated, self.roots, 0)
        if tb is not None:
            self._add(bucket.start, tb)

    def _add(self, index: int, tb: ParsedTraceback) -> None:
        self.seq += 1
        self.found.append((index, self.seq, tb))

    def _structured(self, index: int, raw: str, cut: bool) -> bool:
        """JSON and logfmt lines carry a whole traceback in one field; parse it on its own."""
        brace = raw.find("{")
        if brace != -1 and '"' not in raw[:brace]:
            found = _from_json_line(raw[brace:], cut)
            if isinstance(found, tuple):
                self._add_text(index, *found)
                return True
            if isinstance(found, str):
                # Docker's json-file driver: one JSON object per line of output.
                self.line(index, raw[:brace] + found, cut)
                return True
            if found and not raw[:1].isspace():
                return True  # another JSON record; an indented one may be a source line, so route it
        if "Traceback" in raw or 'File \\"' in raw:
            text = _from_logfmt(raw)
            if text is not None:
                self._add_text(index, text, cut)
                return True
        return False

    def _add_text(self, index: int, text: str, truncated: bool) -> None:
        inner = _Router(self.roots, nested=True)
        for i, (line, line_cut) in enumerate(_capped_lines(text)):
            inner.line(i, line, line_cut)
        for tb in inner.finish():
            if truncated and not tb.truncated:
                tb = _rebuild(tb, self.roots)
            self._add(index, tb)


def _capped_lines(text: str) -> Iterable[tuple[str, bool]]:
    for line in text[:MAX_TEXT_CHARS].splitlines():
        yield (line[:MAX_LINE_CHARS], len(line) > MAX_LINE_CHARS)


# ---------------------------------------------------------------------------------------------- JSON, logfmt

_TB_KEYS = (
    "exception", "exc_info", "exc_text", "traceback", "stack_trace", "stacktrace", "stack", "error.stack"
)
_SALVAGE_RE = re.compile(r'"(?:' + "|".join(re.escape(k) for k in _TB_KEYS) + r')"\s*:\s*"((?:[^"\\]|\\.)*)')
_LOGFMT_RE = re.compile(
    r'(?:^|\s)(?:exception|exc_info|exc_text|traceback|stack|stack_trace|error)="((?:[^"\\]|\\.)*)"'
)
_LOGFMT_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _looks_like_traceback(value: str) -> bool:
    return "Traceback (most recent call last)" in value or 'File "' in value


def _from_json_line(candidate: str, cut: bool) -> tuple[str, bool] | str | bool:
    """(traceback text, truncated), or a docker `log` line to route, or whether it was JSON at all."""
    try:
        obj = json.loads(candidate)
    except ValueError:
        # A line cut at the log size limit: recover what the traceback field holds so far.
        m = _SALVAGE_RE.search(candidate)
        if m is None or not _looks_like_traceback(m.group(1)):
            return False
        partial = re.sub(r"\\(?:u[0-9a-fA-F]{0,3})?$", "", m.group(1))
        try:
            return str(json.loads('"' + partial + '"')), True
        except ValueError:
            return False
    if not isinstance(obj, dict):
        return False
    value = _traceback_field(obj)
    if value is not None:
        return value, cut
    log = obj.get("log")
    if isinstance(log, str) and "\n" not in log.rstrip("\n"):
        return log.rstrip("\n")
    return True


def _traceback_field(obj: Mapping[str, object]) -> str | None:
    candidates: list[object] = [obj.get(k) for k in _TB_KEYS]
    error = obj.get("error")
    if isinstance(error, dict):
        candidates += [error.get("stack"), error.get("stack_trace")]
    candidates.append(error)
    for value in candidates:
        if isinstance(value, str) and _looks_like_traceback(value):
            return value
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            rendered = _render_structlog(value)
            if rendered:
                return rendered
    return None


def _render_structlog(stacks: list[dict[str, object]]) -> str:
    """structlog's `dict_tracebacks`: a list, outermost exception first, each with its frames."""
    out: list[str] = []
    ordered = list(reversed(stacks))
    for i, stack in enumerate(ordered):
        exc_type = stack.get("exc_type")
        if not isinstance(exc_type, str):
            return ""
        if i:
            out += ["", _CAUSE if ordered[i - 1].get("is_cause") else _CONTEXT, ""]
        frames = stack.get("frames")
        if isinstance(frames, list) and frames:
            out.append("Traceback (most recent call last):")
            for fr in frames:
                if isinstance(fr, dict):
                    where = f'"{fr.get("filename", "?")}", line {fr.get("lineno", 0)}'
                    out.append(f'  File {where}, in {fr.get("name", "?")}')
                    if isinstance(fr.get("line"), str) and fr["line"]:
                        out.append(f"    {str(fr['line']).strip()}")
        value = stack.get("exc_value")
        out.append(f"{exc_type}: {value}" if isinstance(value, str) and value else exc_type)
    return "\n".join(out)


def _from_logfmt(raw: str) -> str | None:
    for m in _LOGFMT_RE.finditer(raw):
        value = re.sub(r"\\(.)", lambda e: _LOGFMT_ESCAPES.get(e.group(1), e.group(1)), m.group(1))
        if "\n" in value and _looks_like_traceback(value):
            return value
    return None


# ---------------------------------------------------------------------------------------------- parsing


@dataclass(slots=True)
class _Exc:
    exc_type: str
    message: str
    frames: tuple[Frame, ...]
    members: tuple[ParsedTraceback, ...] = ()


def _parse_block(
    lines: Sequence[str], truncated: bool, roots: tuple[str, ...], depth: int
) -> ParsedTraceback | None:
    segments: list[list[str]] = [[]]
    relations: list[Relation] = []
    for line in lines:
        if line.startswith(_CAUSE) or line.startswith(_CONTEXT):
            relations.append("cause" if line.startswith(_CAUSE) else "context")
            segments.append([])
        else:
            segments[-1].append(line)
    parsed: list[tuple[_Exc, Relation]] = []
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
    return _assemble(final, chain, truncated, roots, "\n".join(lines)[:MAX_LINE_CHARS])


def _parse_segment(lines: list[str], roots: tuple[str, ...], depth: int) -> _Exc | None:
    while lines and not lines[0].strip():
        lines = lines[1:]
    if not lines:
        return None
    m = _GROUP_HEADER_RE.match(lines[0])
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


def _parse_group(lines: list[str], roots: tuple[str, ...], depth: int) -> _Exc:
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
                parsed.append(_assemble(sub, (), False, roots, "\n".join(member)))
            else:
                tb = _parse_block([_demargin(ln) for ln in member], False, roots, depth + 1)
                if tb is not None:
                    parsed.append(tb)
        exc.members = tuple(parsed)
    return exc


def _parse_plain(lines: Sequence[str]) -> _Exc:
    frames: list[Frame] = []
    exc_type = ""
    message: list[str] = []
    for line in lines:
        if exc_type:
            if sum(len(m) for m in message) < MAX_MESSAGE_CHARS:
                message.append(line)
            continue
        fm = _FRAME_RE.match(line)
        if fm is not None:
            frames.append(Frame(fm.group(1), int(fm.group(2)[:9]), fm.group(3) or ""))
        elif _HEADER_RE.match(line) or line.startswith("Exception Group Traceback") or _SKIP_RE.match(line):
            continue
        elif line[:1] in (" ", "\t"):
            if frames and frames[-1].source_line is None and line.strip():
                last = frames[-1]
                frames[-1] = Frame(last.file, last.line, last.function, line.strip())
        elif line.strip():
            m = _EXC_RE.match(line)
            if m is not None:
                exc_type = m.group(1)
                message.append(m.group(2) or "")
    text = "\n".join(message).strip("\n")[:MAX_MESSAGE_CHARS]
    return _Exc(exc_type, text, tuple(frames))


# ------------------------------------------------------------------------------------ repo, fingerprint

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


def _assemble(
    final: _Exc, chain: tuple[ChainedException, ...], truncated: bool, roots: tuple[str, ...], text: str
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


def _rebuild(tb: ParsedTraceback, roots: tuple[str, ...]) -> ParsedTraceback:
    final = _Exc(tb.exc_type, tb.message, tb.frames, tb.group_members)
    return _assemble(final, tb.chain, True, roots, tb.text)


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


# ---------------------------------------------------------------------------------------------- API


def extract_tracebacks(text: str, *, repo_roots: Sequence[str] = ()) -> list[ParsedTraceback]:
    """Every traceback in `text` (log lines of any of the shapes above), in order of first line.

    `repo_roots` says which frames are the repository's: absolute roots (`"/app"`) match files under
    them, relative ones (`"bot/"`) match a path segment; either way the path is shortened to start at
    the repo. With no roots every frame outside site-packages, the stdlib and `<frozen ...>` counts.
    Never raises on any text; reads at most `MAX_TEXT_CHARS`.
    """
    router = _Router(tuple(repo_roots))
    for index, (line, cut) in enumerate(_capped_lines(text)):
        router.line(index, line, cut)
    return router.finish()


def parse_traceback(text: str, *, repo_roots: Sequence[str] = ()) -> ParsedTraceback | None:
    """The first traceback in `text`, or None. Use for a traceback posted on its own."""
    found = extract_tracebacks(text, repo_roots=repo_roots)
    return found[0] if found else None
