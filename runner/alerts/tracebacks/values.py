"""PURE: the frozen values a traceback is parsed into, and the limits every stage of the parse shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["MAX_LINE_CHARS", "MAX_MESSAGE_CHARS", "MAX_TEXT_CHARS", "ChainedException", "Frame",
           "ParsedTraceback", "RaisedException", "Relation"]

MAX_TEXT_CHARS = 1 << 20  # only this much of a log text is read
MAX_LINE_CHARS = 64 << 10  # longer lines are cut (and whatever they carry is marked truncated)
MAX_MESSAGE_CHARS = 4096

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



@dataclass(slots=True)
class RaisedException:
    """One exception of a block while it is being read: a group's members are filled in after its own lines."""

    exc_type: str
    message: str
    frames: tuple[Frame, ...]
    members: tuple[ParsedTraceback, ...] = ()
