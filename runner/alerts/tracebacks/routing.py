"""PURE: log lines routed to the traceback each continues, by the prefix that opened it; the package's API.

A router assigns each line to an open traceback by its *prefix*: the text before the anchor
(`Traceback (most recent call last):`, `File "...", line N`, ...) that opened it, with timestamps
generalised, so lines of concurrent requests land in their own buckets. Each finished bucket is then parsed
as a clean traceback (runner.alerts.tracebacks.blocks); a structured line is read on its own (.structured).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from runner.alerts.tracebacks.blocks import parse_block
from runner.alerts.tracebacks.fingerprint import rebuild
from runner.alerts.tracebacks.grammar import (
    ANCHOR_RE,
    CAUSE,
    CONTEXT,
    FRAME_RE,
    GROUP_HEADER_RE,
    HEADER_RE,
    LOG_START_RE,
    SKIP_RE,
    TS,
    TS_RE,
    is_exception_line,
)
from runner.alerts.tracebacks.structured import from_json_line, from_logfmt
from runner.alerts.tracebacks.values import MAX_LINE_CHARS, MAX_TEXT_CHARS, ParsedTraceback

__all__ = ["extract_tracebacks", "parse_traceback"]

MAX_BLOCK_LINES = 4000
MAX_CONTINUATION_LINES = 20
MAX_FOREIGN_LINES = 50  # unrelated log lines tolerated inside an unprefixed traceback's frames
MAX_OPEN = 64  # tracebacks being collected at once (distinct prefixes)
MAX_RESULTS = 500

def _prefix_pattern(prefix: str) -> re.Pattern[str]:
    """A regex matching `prefix` with each timestamp in it replaced by any timestamp."""
    parts: list[str] = []
    pos = 0
    for m in TS_RE.finditer(prefix):
        parts.append(re.escape(prefix[pos : m.start()]))
        parts.append(TS)
        pos = m.end()
    parts.append(re.escape(prefix[pos:]))
    return re.compile("".join(parts))



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
        if state in ("frames", "group") and self.rx is None and LOG_START_RE.match(content):
            # Traceback lines never start with a timestamp or a level: another record, interleaved.
            self.foreign += 1
            return "skip" if self.foreign <= MAX_FOREIGN_LINES else self._fail()
        if state == "frames":
            if FRAME_RE.match(content) or SKIP_RE.match(content):
                return self._take(content, "frames")
            if content[:1] in (" ", "\t") and content.strip():
                return self._take(content, "frames")
            if not content.strip():
                return "take"
            if is_exception_line(content):
                return self._take(content, "exc")
            return self._fail()
        if state == "exc":
            if not content.strip():
                self.state = "blank"
                return "take"
            if content.startswith((CAUSE, CONTEXT)):
                return self._take(content, "sep")
            if (
                self.continuation < MAX_CONTINUATION_LINES
                and not ANCHOR_RE.search(content)
                and not LOG_START_RE.match(content)
            ):
                self.continuation += 1
                return self._take(content, "exc")
            return "done"
        if state == "blank":
            if not content.strip():
                return "take"
            if content.startswith((CAUSE, CONTEXT)):
                return self._take(content, "sep")
            return "done"
        if state == "sep":
            if not content.strip():
                return "take"
            if HEADER_RE.match(content):
                return self._take(content, "frames")
            return self._take(content, "group") if self._group_col(content) else self._fail()
        # Exception-group lines: a margin of `|` and `+`. A bare `+-----` line closes a member list;
        # Python prints only the innermost one, so the group is over at the first line past it.
        stripped = content.lstrip(" ")
        indent = len(content) - len(stripped)
        if indent >= self.col and stripped[:1] in ("|", "+") and not GROUP_HEADER_RE.match(content):
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
        m = GROUP_HEADER_RE.match(content)
        if m is not None:
            self.col = len(m.group(1))
        return m is not None

    def _fail(self) -> _Verdict:
        self.truncated = True
        return "done"

    def open_with(self, content: str) -> None:
        if HEADER_RE.match(content):
            self._take(content, "frames")
        elif self._group_col(content):
            self._take(content, "group")
        elif content.lstrip().startswith((CAUSE, CONTEXT)):
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
        m = ANCHOR_RE.search(raw)
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
        bucket = _Bucket(key=TS_RE.sub("<ts>", prefix), rx=rx, start=index)
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
        tb = parse_block(bucket.lines, bucket.truncated, self.roots, 0)
        if tb is not None:
            self._add(bucket.start, tb)

    def _add(self, index: int, tb: ParsedTraceback) -> None:
        self.seq += 1
        self.found.append((index, self.seq, tb))

    def _structured(self, index: int, raw: str, cut: bool) -> bool:
        """JSON and logfmt lines carry a whole traceback in one field; parse it on its own."""
        brace = raw.find("{")
        if brace != -1 and '"' not in raw[:brace]:
            found = from_json_line(raw[brace:], cut)
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
            text = from_logfmt(raw)
            if text is not None:
                self._add_text(index, text, cut)
                return True
        return False

    def _add_text(self, index: int, text: str, truncated: bool) -> None:
        inner = _Router(self.roots, nested=True)
        for i, (line, line_cut) in enumerate(capped_lines(text)):
            inner.line(i, line, line_cut)
        for tb in inner.finish():
            if truncated and not tb.truncated:
                tb = rebuild(tb, self.roots)
            self._add(index, tb)


def capped_lines(text: str) -> Iterable[tuple[str, bool]]:
    for line in text[:MAX_TEXT_CHARS].splitlines():
        yield (line[:MAX_LINE_CHARS], len(line) > MAX_LINE_CHARS)


def extract_tracebacks(text: str, *, repo_roots: Sequence[str] = ()) -> list[ParsedTraceback]:
    """Every traceback in `text` (log lines of any of the shapes above), in order of first line.

    `repo_roots` says which frames are the repository's: absolute roots (`"/app"`) match files under
    them, relative ones (`"bot/"`) match a path segment; either way the path is shortened to start at
    the repo. With no roots every frame outside site-packages, the stdlib and `<frozen ...>` counts.
    Never raises on any text; reads at most `MAX_TEXT_CHARS`.
    """
    router = _Router(tuple(repo_roots))
    for index, (line, cut) in enumerate(capped_lines(text)):
        router.line(index, line, cut)
    return router.finish()


def parse_traceback(text: str, *, repo_roots: Sequence[str] = ()) -> ParsedTraceback | None:
    """The first traceback in `text`, or None. Use for a traceback posted on its own."""
    found = extract_tracebacks(text, repo_roots=repo_roots)
    return found[0] if found else None
