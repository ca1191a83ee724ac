"""The word scanner: one shell word read as bash would (quote removal, ``$'...'``), with every expansion noted.

bashlex and tree-sitter give the structure and the position of each word, but neither gives bash's words: both keep
parameter expansions as text (hiding ``${X:-$(cmd)}``) and neither decodes ``$'\\x72m'``. So each word is re-read from
the source here, and whatever would run or expand at run time is reported.
"""

from __future__ import annotations

import re

from policy.paths import GlobPart
from policy.syntax import Word

# --- the word scanner ----------------------------------------------------------------------------------------------

_ANSI = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_ANSI.update({"\\": "\\", "'": "'", '"': '"', "?": "?"})
_SPECIAL_PARAMS = set("@*#?-$!0123456789")
_NAME_START = re.compile(r"[A-Za-z_]")
_SAFE_PARAM = re.compile(r"#?[A-Za-z_][A-Za-z0-9_]*$|#?[0-9@*#?$!-]$")
_PARAM_OPS = re.compile(r"([A-Za-z_][A-Za-z0-9_]*|[0-9]+)(:?[-+=?]|##?|%%?|//?|\^\^?|,,?)")


def _decode_ansi(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\" or i + 1 >= len(body):
            out.append(c)
            i += 1
            continue
        n = body[i + 1]
        if n in _ANSI:
            out.append(_ANSI[n])
            i += 2
        elif n in "01234567":
            m = re.match(r"[0-7]{1,3}", body[i + 1 :])
            assert m is not None
            out.append(chr(int(m.group(), 8) & 0xFF))
            i += 1 + len(m.group())
        elif n in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[n]
            m = re.match(rf"[0-9A-Fa-f]{{1,{width}}}", body[i + 2 :])
            if m is None:
                out.append("\\" + n)
                i += 2
            else:
                code = int(m.group(), 16)
                out.append(chr(code) if code <= 0x10FFFF else "\ufffd")
                i += 2 + len(m.group())
        elif n == "c" and i + 2 < len(body):
            out.append(chr(ord(body[i + 2]) & 0x1F))
            i += 3
        else:
            out.append("\\" + n)
            i += 2
    return "".join(out)


def _param_problem(content: str) -> str | None:
    """Why a ``${...}`` expansion could run a command, or None. Arithmetic contexts (subscripts, substring
    offsets), indirection and ``@P``-style transformations can all evaluate text as code."""
    if "$(" in content or "`" in content or "<(" in content or ">(" in content:
        return "a command substitution hidden inside ${...}, which the parser does not see"
    if _SAFE_PARAM.match(content):
        return None
    m = _PARAM_OPS.match(content)
    if m is None:
        return f"the parameter expansion ${{{content}}} (indirection, subscripts or transformations)"
    rest = content[m.end() :]
    if "[" in rest or "$[" in rest or "$((" in rest:
        return f"arithmetic inside the parameter expansion ${{{content}}}"
    if "${" in rest:
        # nested expansions are checked one by one
        for inner in _iter_params(rest):
            why = _param_problem(inner)
            if why is not None:
                return why
    return None


def _iter_params(text: str) -> list[str]:
    out: list[str] = []
    i = text.find("${")
    while i != -1:
        end = _match_brace(text, i + 1)
        if end == -1:
            out.append(text[i + 2 :])
            break
        out.append(text[i + 2 : end])
        i = text.find("${", end)
    return out


def _match_brace(text: str, open_at: int) -> int:
    depth = 0
    i = open_at
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


# Characters that never change a word's meaning in bash (`~` only does at the start, and `=` words are fine).
_PLAIN = re.compile(r"[A-Za-z0-9_./,:=+%@^-][A-Za-z0-9_./,:=+%@^~-]*\Z")
_BRACE = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")


class _Scan:
    __slots__ = ("value", "parts", "lit", "glob", "dynamic", "problems", "unquoted", "splits", "quoted")

    def __init__(self) -> None:
        self.value: list[str] = []
        self.parts: list[GlobPart] = []
        self.lit: list[str] = []
        self.glob = False
        self.dynamic = False
        self.problems: list[str] = []
        self.unquoted: list[str] = []  # unquoted text, to spot brace expansion
        self.splits = False
        self.quoted = False  # inside double quotes or a here-document: no word splitting

    def char(self, c: str) -> None:
        self.value.append(c)
        self.lit.append(c)

    def flush(self) -> None:
        if self.lit:
            self.parts.append(GlobPart("lit", "".join(self.lit)))
            self.lit = []

    def meta(self, kind: str, text: str = "") -> None:
        self.flush()
        self.parts.append(GlobPart(kind, text))
        if kind == "unknown":
            self.dynamic = True
            if not self.quoted:
                self.splits = True
        else:
            self.glob = True
            self.value.append(text or ("*" if kind == "star" else "?"))


def scan_word(raw: str, subst: tuple[tuple[int, int], ...] = (), *, heredoc: bool = False) -> tuple[Word, list[str]]:
    """Read one word as bash would: quote removal, ``$'...'`` decoding, and a note of every expansion.

    `subst` holds the (start, end) offsets, within `raw`, of the command, process and arithmetic substitutions
    the parser found; any other ``$(``, backtick or ``<(`` is hidden from the parser and reported as a problem.
    Returns the word and a list of problems (reasons).

    >>> scan_word("r'm'")[0].value
    'rm'
    """
    if not subst and _PLAIN.match(raw):
        # most words are plain text: nothing to unquote, expand or glob
        return Word(raw, raw, (GlobPart("lit", raw),) if raw else (), False, False), []
    s = _Scan()
    i = 0
    n = len(raw)
    quote = ""  # "" outside quotes, '"' inside double quotes
    starts = {a: b for a, b in subst}
    s.quoted = heredoc
    while i < n:
        s.quoted = heredoc or quote != ""
        if i in starts:
            s.meta("unknown")
            i = starts[i]
            continue
        c = raw[i]
        if quote == "" and not heredoc:
            if c == "\\":
                if i + 1 < n and raw[i + 1] == "\n":
                    i += 2
                    continue
                if i + 1 < n:
                    s.char(raw[i + 1])
                i += 2
                continue
            if c == "'":
                end = raw.find("'", i + 1)
                if end == -1:
                    s.problems.append("an unterminated single quote")
                    end = n
                for ch in raw[i + 1 : end]:
                    s.char(ch)
                i = end + 1
                continue
            if c == "$" and raw.startswith("$'", i):
                j = i + 2
                while j < n and raw[j] != "'":
                    j += 2 if raw[j] == "\\" else 1
                for ch in _decode_ansi(raw[i + 2 : j]):
                    s.char(ch)
                i = j + 1
                continue
            if c == '"' or (c == "$" and raw.startswith('$"', i)):
                quote = '"'
                i += 1 if c == '"' else 2
                continue
            if c == "~" and i == 0:
                # kept as text: normalize() treats a leading ~ as outside the workspace
                s.char(c)
                i += 1
                continue
            if c in "*?":
                if i + 1 < n and raw[i + 1] == "(":
                    s.problems.append("an extended glob pattern")
                s.meta("star" if c == "*" else "any")
                i += 1
                continue
            if c == "[":
                end = raw.find("]", i + 2)
                if end != -1 and "/" not in raw[i:end]:
                    s.meta("class", raw[i : end + 1])
                    s.value[-1] = raw[i : end + 1]
                    i = end + 1
                    continue
            if c in "<>+@!" and i + 1 < n and raw[i + 1] == "(":
                s.problems.append("a process substitution or extended glob the parser did not see")
            s.unquoted.append(c)
        elif quote == '"' and not heredoc:
            if c == '"':
                quote = ""
                i += 1
                continue
            if c == "\\" and i + 1 < n and raw[i + 1] in '$`"\\\n':
                if raw[i + 1] != "\n":
                    s.char(raw[i + 1])
                i += 2
                continue
        # shared by unquoted, double-quoted and here-doc text: expansions
        if c == "$" and i + 1 < n:
            nxt = raw[i + 1]
            if nxt == "(":
                s.problems.append(
                    "arithmetic expansion $(( ))"
                    if raw.startswith("$((", i)
                    else "a command substitution the parser did not see"
                )
                s.meta("unknown")
                i += 2
                continue
            if nxt == "[":
                s.problems.append("arithmetic expansion $[ ]")
                s.meta("unknown")
                i += 2
                continue
            if nxt == "{":
                end = _match_brace(raw, i + 1)
                content = raw[i + 2 : end] if end != -1 else raw[i + 2 :]
                why = _param_problem(content) if end != -1 else "an unterminated ${"
                if why is not None:
                    s.problems.append(why)
                s.meta("unknown")
                i = end + 1 if end != -1 else n
                continue
            if _NAME_START.match(nxt):
                j = i + 1
                while j < n and (raw[j].isalnum() or raw[j] == "_") and raw[j].isascii():
                    j += 1
                s.meta("unknown")
                i = j
                continue
            if nxt in _SPECIAL_PARAMS:
                s.meta("unknown")
                i += 2
                continue
        if c == "`":
            s.problems.append("a backtick command substitution the parser did not see")
            s.meta("unknown")
            i += 1
            continue
        s.char(c)
        i += 1
    if quote:
        s.problems.append("an unterminated double quote")
    if _BRACE.search("".join(s.unquoted)):
        s.problems.append("brace expansion (the policy does not expand {a,b}; write the names out)")
    s.flush()
    value = None if s.dynamic else "".join(s.value)
    return Word(raw, value, tuple(s.parts), s.glob, s.dynamic, s.splits), s.problems
