"""tree-sitter-bash trees to simple commands, for the strings bashlex refuses.

tree-sitter is error-tolerant: it always returns a tree, marking what it could not read with ERROR or MISSING
nodes. Any such node is a problem (the string is denied, naming the construct); so is any node type this walker
does not know. Words are re-read from the source by `scan_word`, as in the bashlex walker, so both parsers give
the engine the same values.

Offsets: tree-sitter counts bytes of UTF-8, the scanner counts characters; `_Walker.str` converts.
"""

from __future__ import annotations

import re
import threading

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

from policy.syntax import ParsedBash, Problem, Redirect, SimpleCommand, Word
from policy.words import scan_word

_LANGUAGE = Language(tree_sitter_bash.language())
_local = threading.local()  # a Parser is not safe to share between threads

# Node types that are one shell word (an argument, a redirection target, a loop item...).
WORD_TYPES = frozenset(
    "word string raw_string ansi_c_string translated_string concatenation simple_expansion expansion "
    "command_substitution process_substitution arithmetic_expansion number extglob_pattern regex "
    "variable_assignment".split()
)
# Statements whose named children are statements or words, with nothing else to check.
_CONTAINERS = frozenset(
    "program list compound_statement subshell do_group if_statement elif_clause else_clause while_statement "
    "for_statement negated_command case_statement case_item".split()
)
_EXPRESSIONS = frozenset(
    "binary_expression unary_expression postfix_expression parenthesized_expression ternary_expression".split()
)
_REDIRECTS = frozenset(("file_redirect", "heredoc_redirect", "herestring_redirect"))
_ARITH_COMPARE = frozenset(("-eq", "-ne", "-lt", "-le", "-gt", "-ge"))
_SUBSTITUTIONS = frozenset(("command_substitution", "process_substitution"))
_DECLARATIONS = frozenset(("declaration_command", "unset_command"))
# What to call the construct around an ERROR node, in a denial's reason.
_NAMES = {
    "heredoc_redirect": "a here-document",
    "heredoc_body": "a here-document",
    "herestring_redirect": "a here-string",
    "test_command": "the [[ ]] conditional",
    "case_statement": "a case statement",
    "case_item": "a case statement",
    "arithmetic_expansion": "arithmetic expansion $(( ))",
    "string": "a double-quoted string",
    "raw_string": "a single-quoted string",
    "command_substitution": "a command substitution",
    "process_substitution": "a process substitution",
    "expansion": "a parameter expansion ${...}",
    "if_statement": "an if statement",
    "while_statement": "a loop",
    "for_statement": "a loop",
    "c_style_for_statement": "a for (( )) loop",
    "do_group": "a loop body",
    "subshell": "a subshell",
    "compound_statement": "a { } group",
    "function_definition": "a function definition",
    "pipeline": "a pipeline",
    "file_redirect": "a redirection",
}


def _parser() -> Parser:
    parser: Parser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = Parser(_LANGUAGE)
    return parser


def parse(text: str) -> ParsedBash:
    """Parse `text` (already checked for length and control characters) with tree-sitter-bash.

    >>> [c.argv[0].value for c in parse("[[ -f x ]] && ls").commands]
    ['ls']
    """
    walker = _Walker(text)
    try:
        tree = _parser().parse(walker.src)
        walker.visit(tree.root_node)
    except RecursionError:
        return ParsedBash((), (Problem("bash.parse-error", "cannot parse: nesting too deep", text),))
    return ParsedBash(tuple(walker.commands), tuple(walker.problems), tuple(walker.hidden))


class _Walker:
    def __init__(self, text: str):
        self.text = text
        self.src = text.encode("utf-8", "surrogatepass")
        self.ascii = len(self.src) == len(text)
        self.commands: list[SimpleCommand] = []
        self.problems: list[Problem] = []
        self.hidden: list[Problem] = []

    def slice(self, start: int, end: int) -> str:
        if self.ascii:
            return self.text[start:end]
        return self.src[start:end].decode("utf-8", "surrogatepass")

    def node_text(self, node: Node) -> str:
        return self.slice(node.start_byte, node.end_byte)

    def problem(self, rule_id: str, reason: str, node: Node) -> None:
        self.problems.append(Problem(rule_id, reason, self.node_text(node)))

    def error(self, node: Node) -> None:
        around = node.parent
        while around is not None and around.type not in _NAMES and around.parent is not None:
            around = around.parent
        name = _NAMES.get(around.type, "") if around is not None else ""
        what = "something missing" if node.is_missing else "unexpected text"
        snippet = self.node_text(node)[:40] if not node.is_missing else node.type
        where = f" in {name}" if name else ""
        self.problem("bash.parse-error", f"cannot parse: {what}{where} ({snippet!r})", node)

    # --- statements ------------------------------------------------------------------------------------------------

    def visit(self, node: Node, feeder: tuple[Word, ...] = ()) -> None:
        kind = node.type
        if node.is_missing or kind == "ERROR":
            self.error(node)
            return
        if kind == "command":
            self.command(node, [], feeder)
        elif kind == "redirected_statement":
            self.redirected(node, feeder)
        elif kind == "pipeline":
            prev: tuple[Word, ...] = ()
            for child in node.named_children:
                before = len(self.commands)
                self.visit(child, prev)
                body = _body(child) if child.type == "redirected_statement" else child
                simple = body is not None and body.type == "command"
                # the command itself is appended last (after the commands of its substitutions)
                prev = self.commands[-1].argv if simple and len(self.commands) > before else ()
        elif kind in _CONTAINERS:
            for child in node.named_children:
                self.child(child)
        elif kind == "c_style_for_statement":
            for child in node.named_children:
                if child.type == "do_group" or child.type == "compound_statement":
                    self.visit(child)
                else:
                    self.arith(child)
        elif kind == "test_command":
            for child in node.named_children:
                self.test(child)
        elif kind in _DECLARATIONS:
            self.declaration(node)
        elif kind == "variable_assignment" or kind == "variable_assignments":
            words = [self.word(c) for c in (node.named_children if kind == "variable_assignments" else [node])]
            self.commands.append(SimpleCommand(self.node_text(node), tuple(words), (), ()))
        elif kind == "function_definition":
            self.problem(
                "bash.function-definition",
                "defining a shell function is not allowed: it could shadow an allowed command",
                node,
            )
        elif kind == "comment":
            return
        elif kind in _EXPRESSIONS:
            self.arith(node)  # the (( )) arithmetic command, inside a compound_statement
        else:
            self.problem("bash.unsupported", f"cannot parse: unsupported shell construct ({kind})", node)

    def child(self, node: Node) -> None:
        """A named child of a container: a statement, or a word (loop items, case values)."""
        kind = node.type
        if kind in ("variable_name", "comment"):
            return
        if kind in WORD_TYPES and kind != "variable_assignment":
            self.word(node)
        else:
            self.visit(node)

    def redirected(self, node: Node, feeder: tuple[Word, ...]) -> None:
        body = _body(node)
        redirects = [c for c in node.named_children if c.type in _REDIRECTS]
        others = [c for c in node.named_children if c != body and c.type not in _REDIRECTS]
        for other in others:
            self.visit(other)
        if body is not None and body.type == "command":
            self.command(body, redirects, feeder)
            return
        if body is not None:
            self.visit(body, feeder)
        for r in redirects:
            # a redirection on a compound command: record it as a command with no words
            into: list[Redirect] = []
            self.redirect(r, into)
            for redirect in into:
                self.commands.append(SimpleCommand(self.node_text(r), (), (), (redirect,)))

    def command(self, node: Node, extra: list[Node], feeder: tuple[Word, ...]) -> None:
        assignments: list[Word] = []
        argv: list[Word] = []
        redirects: list[Redirect] = []
        for child in node.named_children:
            kind = child.type
            if child.is_missing or kind == "ERROR":
                self.error(child)
            elif kind == "variable_assignment" and not argv:
                assignments.append(self.word(child))
            elif kind == "command_name":
                argv.append(self.word(child))
            elif kind in _REDIRECTS:
                self.redirect(child, redirects)
            elif kind in WORD_TYPES:
                argv.append(self.word(child))
            elif kind == "comment":
                continue
            else:
                self.problem("bash.unsupported", f"cannot parse: unsupported shell construct ({kind})", child)
        for r in extra:
            self.redirect(r, redirects)
        text = self.node_text(node) if not extra else self.slice(node.start_byte, extra[-1].end_byte)
        self.commands.append(SimpleCommand(text, tuple(assignments), tuple(argv), tuple(redirects), feeder))

    def declaration(self, node: Node) -> None:
        keyword = node.children[0]
        name = self.node_text(keyword)
        argv = [Word(name, name, (), False, False)]
        for child in node.named_children:
            if child.type in WORD_TYPES or child.type == "variable_name":
                argv.append(self.word(child))
            elif child.type == "comment":
                continue
            else:
                self.visit(child)
        self.commands.append(SimpleCommand(self.node_text(node), (), tuple(argv), ()))

    def redirect(self, node: Node, into: list[Redirect]) -> None:
        if node.type == "heredoc_redirect":
            self.heredoc(node, into)
            return
        op = ""
        target: Word | None = None
        for child in node.children:
            if child.is_missing or child.type == "ERROR":
                self.error(child)
            elif not child.is_named:
                op = child.type
            elif child.type == "file_descriptor":
                continue
            elif child.type in WORD_TYPES:
                target = self.word(child)
            else:
                self.problem("bash.unsupported", f"cannot parse: unsupported redirection ({child.type})", child)
        into.append(Redirect(op, target))

    def heredoc(self, node: Node, into: list[Redirect]) -> None:
        op = "<<"
        quoted = False
        for child in node.children:
            kind = child.type
            if child.is_missing or kind == "ERROR":
                self.error(child)
            elif kind in ("<<", "<<-"):
                op = kind
            elif kind == "heredoc_start":
                quoted = any(q in self.node_text(child) for q in "'\"\\")
            elif kind == "heredoc_body":
                if not quoted:
                    self.heredoc_body(child)
            elif kind in _REDIRECTS:
                self.redirect(child, into)
            elif kind == "heredoc_end" or not child.is_named:
                continue
            else:
                self.visit(child)  # the rest of the line the here-document starts on (`cat <<EOF | grep x`)
        into.append(Redirect(op, None))

    def heredoc_body(self, node: Node) -> None:
        spans = self.substitutions(node)
        _, problems = scan_word(self.node_text(node), spans, heredoc=True)
        for why in problems:
            self.problems.append(
                Problem("bash.heredoc-expansion", f"the here-document body contains {why}; bash would run it",
                        self.node_text(node))
            )

    # --- words ---------------------------------------------------------------------------------------------------

    def word(self, node: Node) -> Word:
        raw = self.node_text(node)
        # walking a word's nodes is the walker's main cost: only words that can hold a substitution need it
        spans = self.substitutions(node) if _MAY_SUBSTITUTE.search(raw) or node.has_error else ()
        word, problems = scan_word(raw, spans)
        for why in problems:
            self.problems.append(Problem("bash.hidden-expansion", f"the word {raw!r} contains {why}", raw))
        return word

    def substitutions(self, node: Node) -> tuple[tuple[int, int], ...]:
        """Character offsets, within `node`, of its outermost substitutions; their commands are visited."""
        spans: list[tuple[int, int]] = []
        stack = [node]
        while stack:
            child = stack.pop()
            kind = child.type
            if child.is_missing or kind == "ERROR":
                self.error(child)
                continue
            if kind in _SUBSTITUTIONS or kind == "arithmetic_expansion":
                spans.append(self.offsets(node, child))
                if kind == "arithmetic_expansion":
                    self.arith(child)
                else:
                    for inner in child.named_children:
                        self.visit(inner)
                continue
            stack.extend(reversed(child.children))
        return tuple(spans)

    def offsets(self, outer: Node, inner: Node) -> tuple[int, int]:
        start = outer.start_byte
        if self.ascii:
            return inner.start_byte - start, inner.end_byte - start
        return len(self.slice(start, inner.start_byte)), len(self.slice(start, inner.end_byte))

    def arith(self, node: Node) -> None:
        """An arithmetic context: commands inside are visited; a variable makes it hidden code, since bash
        evaluates a variable's value as an expression (``x='a[$(id)]'; echo $((x))`` runs id)."""
        stack = [node]
        marked = False
        while stack:
            n = stack.pop()
            kind = n.type
            if n.is_missing or kind == "ERROR":
                self.error(n)
                continue
            if kind in _SUBSTITUTIONS:
                for inner in n.named_children:
                    self.visit(inner)
                continue
            if not marked and kind in ("variable_name", "simple_expansion", "expansion", "subscript", "word"):
                marked = True
                self.hidden.append(
                    Problem("bash.arithmetic", "arithmetic on variables can run code hidden in their values",
                            self.node_text(node))
                )
            stack.extend(n.children)

    def test(self, node: Node) -> None:
        """A part of ``[[ ]]``: words are scanned; an arithmetic comparison of variables is hidden code."""
        kind = node.type
        if node.is_missing or kind == "ERROR":
            self.error(node)
            return
        if kind in WORD_TYPES and kind != "variable_assignment":
            self.word(node)
            return
        if kind == "test_operator":
            return
        if kind in _EXPRESSIONS:
            operators = {self.node_text(c) for c in node.children if c.type == "test_operator"}
            if operators & _ARITH_COMPARE:
                self.arith(node)
                return
            for child in node.named_children:
                self.test(child)
            return
        self.problem("bash.unsupported", f"cannot parse: unsupported [[ ]] part ({kind})", node)


_MAY_SUBSTITUTE = re.compile(r"\$[(\[]|`|[<>]\(")


def _body(node: Node) -> Node | None:
    return node.child_by_field_name("body")
