"""Errors raised by the policy core.

    PolicyError
    ├── PolicyLoadError      the policy text is not valid YAML or breaks the schema; carries .line and .key
    └── CommandParseError    a bash string could not be parsed; the engine turns it into a deny, never raises it

A denial is a `Decision` value, not an exception: only a broken policy file raises out of this package.
"""

from __future__ import annotations


class PolicyError(Exception):
    """Base of every error the policy package raises on purpose."""


class PolicyLoadError(PolicyError):
    """The policy could not be loaded.

    `line` is 1-based (or None when the error has no place in the file), `key` the dotted path of the
    offending key (e.g. ``profiles.review.limits.max_turns``), `source` the file name or ``<string>``.
    """

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        key: str | None = None,
        source: str = "<string>",
        problems: tuple[tuple[int | None, str, str], ...] = (),
    ):
        self.message = message
        self.line = line
        self.key = key
        self.source = source
        #: every problem found, as (line, key, message); the first is also in line/key/message
        self.problems = problems or ((line, key or "", message),)
        where = f"{source}:{line}" if line is not None else source
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"{where}: {message}{more}")


class CommandParseError(PolicyError):
    """A bash command could not be parsed; `construct` names what was not understood."""

    def __init__(self, construct: str, detail: str = ""):
        self.construct = construct
        self.detail = detail
        super().__init__(f"{construct}: {detail}" if detail else construct)
