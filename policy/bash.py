"""Bash strings to simple commands: bashlex for the structure, tree-sitter-bash where bashlex gives up, and our
own scanner (`policy.words`) for every word.

bashlex is tried first: it is the stricter reader (it refuses what bash refuses), and in pure Python it is the floor
the gate's cost is measured against. It cannot read what agents write every day (``[[ ]]``, ``case``, ``$(( ))``,
a here-document with a quoted delimiter or inside ``$(...)``, as in Claude Code's commit idiom), so a string bashlex
refuses, or reads only in part, goes to tree-sitter-bash (`policy.treesitter`); a tree-sitter tree with an ERROR or
MISSING node is refused, naming the construct. Each word is re-read from the source by `scan_word`, which unquotes
as bash would and reports anything that would run or expand at run time. Whatever cannot be understood becomes a
`Problem`, and a problem denies.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import bashlex
import bashlex.errors
import bashlex.subst

from policy import treesitter
from policy.syntax import ParsedBash, Problem, Redirect, SimpleCommand, Word
from policy.words import scan_word

__all__ = ["ParsedBash", "Problem", "Redirect", "SimpleCommand", "Word", "parse", "scan_word"]
Parser = Literal["auto", "bashlex", "tree-sitter"]


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
# A carriage return is allowed only as half of a CRLF line end (here-documents pasted with Windows line ends).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")


def construct_name(text: str, exc: BaseException | None = None) -> str:
    """Name the construct a parser could not read, for the denial's reason."""
    for pattern, name in _UNSUPPORTED:
        if pattern.search(text):
            return name
    if exc is not None and isinstance(exc, bashlex.errors.ParsingError) and "matching" in str(exc):
        return "an unterminated quote or bracket"
    if isinstance(exc, RecursionError):
        return "nesting too deep"
    return "syntax the policy's parser does not understand"


class _Walker:
    def __init__(self, text: str):
        self.text = text
        self.commands: list[SimpleCommand] = []
        self.problems: list[Problem] = []
        self._feeder: tuple[Word, ...] = ()

    def problem(self, rule_id: str, reason: str, node: Any) -> None:
        start, end = node.pos
        self.problems.append(Problem(rule_id, reason, self.text[start:end]))

    def visit(self, node: Any) -> None:
        kind = node.kind
        if kind == "command":
            self.command(node)
        elif kind == "list":
            for part in node.parts:
                self.visit(part)
        elif kind == "pipeline":
            feeder: tuple[Word, ...] = ()
            for part in node.parts:
                if part.kind == "pipe":
                    continue
                self._feeder = feeder
                before = len(self.commands)
                self.visit(part)
                self._feeder = ()
                feeder = self.commands[-1].argv if part.kind == "command" and len(self.commands) > before else ()
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
        feeder, self._feeder = self._feeder, ()
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
        self.commands.append(
            SimpleCommand(self.text[start:end], tuple(assignments), tuple(argv), tuple(redirects), feeder)
        )


def _named(parsed: ParsedBash, text: str, exc: BaseException) -> ParsedBash:
    """When tree-sitter cannot read it either, say what bashlex choked on too: it names constructs better."""
    if not any(p.rule_id == "bash.parse-error" for p in parsed.problems):
        return parsed
    name = construct_name(text, exc)
    problems = tuple(
        Problem(p.rule_id, f"{p.reason}; {name}", p.text) if p.rule_id == "bash.parse-error" else p
        for p in parsed.problems
    )
    return ParsedBash(parsed.commands, problems, parsed.hidden)


def parse(text: str, *, max_length: int = 32768, parser: Parser = "auto") -> ParsedBash:
    """Parse a bash string into its simple commands (from every nesting level) and its problems.

    Never raises: input too long, control characters, anything neither parser can read, and any construct the
    policy cannot see through come back as problems. An empty `problems` means every command is in `commands`.
    `parser` forces one parser (for the benchmark and the tests that compare them); ``auto`` is bashlex, then
    tree-sitter-bash for what bashlex refuses.

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
    if parser == "tree-sitter":
        return treesitter.parse(text)
    try:
        trees = bashlex.parse(text)
        walker = _Walker(text)
        for tree in trees:
            walker.visit(tree)
    except RecursionError as exc:
        return ParsedBash((), (Problem("bash.parse-error", f"cannot parse: {construct_name(text, exc)}", text),))
    except Exception as exc:  # bashlex raises many types (ParsingError, NotImplementedError, AttributeError...)
        if parser == "auto":
            return _named(treesitter.parse(text), text, exc)
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        reason = f"cannot parse: {construct_name(text, exc)} ({detail})"
        return ParsedBash((), (Problem("bash.parse-error", reason, text),))
    if parser == "auto" and any(p.rule_id == "bash.unsupported" for p in walker.problems):
        return treesitter.parse(text)  # bashlex read it, but not all of it (`((x = 1))`)
    return ParsedBash(tuple(walker.commands), tuple(walker.problems))
