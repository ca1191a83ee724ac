"""The values a bash string is parsed into: words, redirections, simple commands, and the problems found."""

from __future__ import annotations

from dataclasses import dataclass

from policy.paths import GlobPart


@dataclass(frozen=True, slots=True)
class Word:
    """One shell word. `value` is its text after quote removal when nothing in it is decided at run time
    (glob characters included, as bash leaves an unmatched glob as is); `parts` describes it as a path pattern."""

    raw: str
    value: str | None
    parts: tuple[GlobPart, ...]
    glob: bool
    dynamic: bool
    #: an unquoted expansion: bash may split it into several words (so it could also become an option)
    splits: bool = False

    @property
    def text(self) -> str:
        """The value, or the raw source when the value is only known at run time."""
        return self.value if self.value is not None else self.raw


@dataclass(frozen=True, slots=True)
class Redirect:
    """A redirection: `op` as written (``>``, ``>>``, ``<``, ``&>``, ``<<``...), `target` its word, if any."""

    op: str
    target: Word | None


@dataclass(frozen=True, slots=True)
class SimpleCommand:
    """A simple command: assignments, words (argv), redirections, and its source text.

    `feeder` is the argv of the simple command whose output this one reads through a pipe (``find . | xargs wc``),
    empty when there is none or it is not a simple command.
    """

    text: str
    assignments: tuple[Word, ...]
    argv: tuple[Word, ...]
    redirects: tuple[Redirect, ...]
    feeder: tuple[Word, ...] = ()


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the string the policy will not run: the check's id, a reason, and the text concerned."""

    rule_id: str
    reason: str
    text: str


@dataclass(frozen=True, slots=True)
class ParsedBash:
    """A bash string as simple commands in source order, plus every structural problem found.

    `hidden` lists constructs that may run code the string does not show (arithmetic on variables, whose values
    bash evaluates as expressions); the engine decides them like interpreters (``bash.interpreters``).
    """

    commands: tuple[SimpleCommand, ...]
    problems: tuple[Problem, ...]
    hidden: tuple[Problem, ...] = ()
