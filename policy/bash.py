"""Bash strings to simple commands: bashlex for the structure, our own scanner for every word.

bashlex gives the tree and the position of each word, but its words are not bash's words: it keeps parameter
expansions as text (hiding ``${X:-$(cmd)}``), mangles ``$'\\x72m'``, and does not look inside here-doc bodies.
So each word is re-read from the source by `scan_word`, which unquotes as bash would and reports anything that
would run or expand at run time. Whatever cannot be understood becomes a `Problem`, and a problem denies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import bashlex
import bashlex.errors
import bashlex.subst

from policy.paths import GlobPart


def _guard_unterminated_parameter_expansion() -> None:
    """bashlex 0.18 loops forever (and grows without bound) on `${` with no closing `}` in its word:
    `subst._paramexpand` takes str.find's -1 for an index. Found by the property tests with `'${'$`.
    Make it raise bashlex's own ParsingError there, as bash says "bad substitution"; the caller then
    denies the command like any other parse failure.
    """
    original = bashlex.subst._paramexpand
    if getattr(original, "guarded", False):
        return

    def paramexpand(parserobj: Any, string: str, sindex: int) -> Any:
        if string.startswith("${", sindex) and string.find("}", sindex + 2) == -1:
            raise bashlex.errors.ParsingError("bad substitution: no closing '}' for '${'", string, sindex)
        return original(parserobj, string, sindex)

    paramexpand.guarded = True  # type: ignore[attr-defined]
    bashlex.subst._paramexpand = paramexpand


_guard_unterminated_parameter_expansion()

# --- values --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Word:
    """One shell word. `value` is its text after quote removal when nothing in it is decided at run time
    (glob characters included, as bash leaves an unmatched glob as is); `parts` describes it as a path pattern."""

    raw: str
    value: str | None
    parts: tuple[GlobPart, ...]
    glob: bool
    dynamic: bool

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
    """A simple command: assignments, words (argv), redirections, and its source text."""

    text: str
    assignments: tuple[Word, ...]
    argv: tuple[Word, ...]
    redirects: tuple[Redirect, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    """Something in the string the policy will not run: the check's id, a reason, and the text concerned."""

    rule_id: str
    reason: str
    text: str


@dataclass(frozen=True, slots=True)
class ParsedBash:
    """A bash string as simple commands in source order, plus every structural problem found."""

    commands: tuple[SimpleCommand, ...]
    problems: tuple[Problem, ...]


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


_BRACE = re.compile(r"\{[^{}]*(,|\.\.)[^{}]*\}")


class _Scan:
    __slots__ = ("value", "parts", "lit", "glob", "dynamic", "problems", "unquoted")

    def __init__(self) -> None:
        self.value: list[str] = []
        self.parts: list[GlobPart] = []
        self.lit: list[str] = []
        self.glob = False
        self.dynamic = False
        self.problems: list[str] = []
        self.unquoted: list[str] = []  # unquoted text, to spot brace expansion

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
        else:
            self.glob = True
            self.value.append(text or ("*" if kind == "star" else "?"))


def scan_word(raw: str, subst: tuple[tuple[int, int], ...] = (), *, heredoc: bool = False) -> tuple[Word, list[str]]:
    """Read one word as bash would: quote removal, ``$'...'`` decoding, and a note of every expansion.

    `subst` holds the (start, end) offsets, within `raw`, of the command and process substitutions bashlex
    found; any other ``$(``, backtick or ``<(`` is hidden from the parser and reported as a problem.
    Returns the word and a list of problems (reasons).

    >>> scan_word("r'm'")[0].value
    'rm'
    """
    s = _Scan()
    i = 0
    n = len(raw)
    quote = ""  # "" outside quotes, '"' inside double quotes
    starts = {a: b for a, b in subst}
    while i < n:
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
    return Word(raw, value, tuple(s.parts), s.glob, s.dynamic), s.problems


# --- the tree walker -----------------------------------------------------------------------------------------------

_UNSUPPORTED = (
    (re.compile(r"\[\["), "the [[ ]] conditional"),
    (re.compile(r"\$\(\("), "arithmetic expansion $(( ))"),
    (re.compile(r"(^|[;&|(\s])\(\("), "the (( )) arithmetic command"),
    (re.compile(r"(^|[;&|\s])case\s"), "a case statement"),
    (re.compile(r"(^|[;&|\s])coproc\s"), "coproc"),
    (re.compile(r"(^|[;&|\s])select\s"), "a select loop"),
    (re.compile(r"(^|[;&|\s])time\s"), "the time keyword"),
    (re.compile(r"[A-Za-z0-9_]\+?=\("), "an array assignment"),
    (re.compile(r"<<-?\s*(['\"]|\\)"), "a here-document with a quoted delimiter"),
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _construct(text: str, exc: BaseException) -> str:
    for pattern, name in _UNSUPPORTED:
        if pattern.search(text):
            return name
    if isinstance(exc, bashlex.errors.ParsingError) and "matching" in str(exc):
        return "an unterminated quote or bracket"
    if isinstance(exc, RecursionError):
        return "nesting too deep"
    return "syntax the policy's parser does not understand"


class _Walker:
    def __init__(self, text: str):
        self.text = text
        self.commands: list[SimpleCommand] = []
        self.problems: list[Problem] = []

    def problem(self, rule_id: str, reason: str, node: Any) -> None:
        start, end = node.pos
        self.problems.append(Problem(rule_id, reason, self.text[start:end]))

    def visit(self, node: Any) -> None:
        kind = node.kind
        if kind == "command":
            self.command(node)
        elif kind in ("list", "pipeline"):
            for part in node.parts:
                self.visit(part)
        elif kind == "compound":
            start = node.pos[0]
            if self.text.startswith("((", start):
                self.problem("bash.unsupported", "the (( )) arithmetic command can run code; it is not allowed", node)
            for part in node.list:
                self.visit(part)
            for redirect in getattr(node, "redirects", ()):
                self.redirect(redirect, None)
        elif kind in ("if", "for", "while", "until"):
            for part in node.parts:
                if part.kind == "word":
                    self.word(part)  # loop items and conditions' words
                else:
                    self.visit(part)
        elif kind == "function":
            self.problem(
                "bash.function-definition",
                "defining a shell function is not allowed: it could shadow an allowed command",
                node,
            )
            for part in node.parts:
                if part.kind not in ("word", "reservedword"):
                    self.visit(part)
        elif kind in ("operator", "pipe", "reservedword"):
            return
        elif kind in ("commandsubstitution", "processsubstitution"):
            self.visit(node.command)
        elif kind in ("word", "assignment"):
            self.word(node)
        elif kind == "redirect":
            self.redirect(node, None)
        else:
            self.problem("bash.unsupported", f"unsupported shell construct ({kind})", node)

    def word(self, node: Any) -> Word:
        start, end = node.pos
        raw = self.text[start:end]
        subst: list[tuple[int, int]] = []
        for part in getattr(node, "parts", ()):
            if part.kind in ("commandsubstitution", "processsubstitution"):
                subst.append((part.pos[0] - start, part.pos[1] - start))
                self.visit(part.command)
        word, problems = scan_word(raw, tuple(subst))
        for why in problems:
            self.problems.append(Problem("bash.hidden-expansion", f"the word {raw!r} contains {why}", raw))
        return word

    def redirect(self, node: Any, into: list[Redirect] | None) -> None:
        op = node.type
        target: Word | None = None
        out = node.output
        if op in ("<<", "<<-"):
            heredoc = node.heredoc
            body = self.text[heredoc.pos[0] : heredoc.pos[1]]
            _, problems = scan_word(body, heredoc=True)
            for why in problems:
                self.problems.append(
                    Problem("bash.heredoc-expansion", f"the here-document body contains {why}; bash would run it", body)
                )
        elif out is not None and not isinstance(out, int):
            target = self.word(out)
        redirect = Redirect(op, target)
        if into is not None:
            into.append(redirect)
        else:
            # a redirection on a compound command: record it as a command with no words
            self.commands.append(SimpleCommand(self.text[node.pos[0] : node.pos[1]], (), (), (redirect,)))

    def command(self, node: Any) -> None:
        assignments: list[Word] = []
        argv: list[Word] = []
        redirects: list[Redirect] = []
        for part in node.parts:
            if part.kind == "assignment" and not argv:
                assignments.append(self.word(part))
            elif part.kind in ("word", "assignment"):
                argv.append(self.word(part))
            elif part.kind == "redirect":
                self.redirect(part, redirects)
            else:
                self.visit(part)
        start, end = node.pos
        self.commands.append(SimpleCommand(self.text[start:end], tuple(assignments), tuple(argv), tuple(redirects)))


def parse(text: str, *, max_length: int = 32768) -> ParsedBash:
    """Parse a bash string into its simple commands (from every nesting level) and its problems.

    Never raises: input too long, control characters, anything bashlex cannot parse, and any construct the
    policy cannot see through come back as problems. An empty `problems` means every command is in `commands`.

    >>> [c.argv[0].value for c in parse("git status && rm -rf .").commands]
    ['git', 'rm']
    """
    if len(text) > max_length:
        return ParsedBash((), (Problem("bash.too-long", f"the command is longer than {max_length} characters", ""),))
    bad = _CONTROL.search(text)
    if bad is not None:
        what = "a NUL byte" if bad.group() == "\x00" else f"a control character ({bad.group()!r})"
        return ParsedBash((), (Problem("bash.control-character", f"the command contains {what}", ""),))
    if not text.strip():
        return ParsedBash((), (Problem("bash.empty", "the command is empty", ""),))
    try:
        trees = bashlex.parse(text)
        walker = _Walker(text)
        for tree in trees:
            walker.visit(tree)
    except RecursionError as exc:
        return ParsedBash((), (Problem("bash.parse-error", f"cannot parse: {_construct(text, exc)}", text),))
    except Exception as exc:  # bashlex raises many types (ParsingError, NotImplementedError, AttributeError...)
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        reason = f"cannot parse: {_construct(text, exc)} ({detail})"
        return ParsedBash((), (Problem("bash.parse-error", reason, text),))
    return ParsedBash(tuple(walker.commands), tuple(walker.problems))
