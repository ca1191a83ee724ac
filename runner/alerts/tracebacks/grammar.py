"""PURE: what the lines of a Python traceback look like, as anchored regexes shared by routing and parsing.

Every pattern here is anchored or free of nested quantifiers, so an enormous line costs the line cap, not its size.
"""

from __future__ import annotations

import re

TS = (
    r"(?:\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?"
    r"|\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?"
    r"|[A-Z][a-z]{2} {1,2}\d{1,2} \d{2}:\d{2}:\d{2}"
    r"|\d{10}(?:\.\d{1,9})?)"
)
TS_RE = re.compile(TS)
LEVELS = frozenset({"DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL", "FATAL", "EXCEPTION"})
LOG_START_RE = re.compile(
    r"\s*[\[(]?" + TS + r"|(?:DEBUG|INFO|WARN|WARNING|ERROR|CRITICAL|FATAL)\b|[A-Z]+:[\w.]+:"
)
ANCHOR_RE = re.compile(
    r"Traceback \(most recent call last\):"
    r"|\+ Exception Group Traceback \(most recent call last\):"
    r'|File "[^"\n]*", line \d+'
    r"|During handling of the above exception, another exception occurred:"
    r"|The above exception was the direct cause of the following exception:"
)
HEADER_RE = re.compile(r"Traceback \(most recent call last\):\s*$")
GROUP_HEADER_RE = re.compile(r"( *)\+ Exception Group Traceback \(most recent call last\):\s*$")
FRAME_RE = re.compile(r' *File "([^"\n]*)", line (\d+)(?:, in ([^\n]*?))?\s*$')
CAUSE = "The above exception was the direct cause of the following exception:"
CONTEXT = "During handling of the above exception, another exception occurred:"
SKIP_RE = re.compile(  # caret lines, recursion notes, 3.13's elided source lines
    r"\s*(?:[\^~]+\s*|\[Previous line repeated \d+ more times?\]\s*|\.\.\.<\d+ lines>\.\.\.\s*)$"
)
EXC_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?::(?: (.*)|\s*)$|\s*$)")
BARE_EXC_SUFFIXES = ("Error", "Exception", "Warning", "Interrupt", "Exit", "Group", "Iteration", "Failure")


def is_exception_line(content: str) -> bool:
    m = EXC_RE.match(content)
    if m is None or m.group(1) in LEVELS or m.group(1) == "Traceback":
        return False
    if content.rstrip().endswith(":") or m.group(2) is not None:
        return True
    name = m.group(1)
    return "." in name or name.endswith(BARE_EXC_SUFFIXES)
