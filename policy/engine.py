"""Decide a ToolCall against a Policy: default deny, a deny anywhere decides, an ask anywhere makes it ask.

A call is cut into parts (the tool itself; each simple command of a Bash string; each path read or written)
and every part gets an effect. Owner rules are tried first for a part (first match wins); built-in checks
(bash structure, protected paths, paths outside the workspace, read-only profiles) deny regardless of them.

Size: about 480 lines, one concept (combining the parts of a call into one decision): the Bash
walk, paths and command knowledge are policy.bash, policy.paths and policy.commands; what stays is the order of
rules and checks, which reads best in one place.
"""

from __future__ import annotations

import json
import re
import shlex
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache

from policy import git
from policy.access import PathChecker, Verdict
from policy.bash import SimpleCommand, Word, parse
from policy.commands import (
    INSTALL_ADVICE,
    INTERPRETERS,
    KNOWN,
    NETWORK,
    NO_NETWORK,
    PRIVILEGED,
    SHELLS,
    TASK_RUNNERS,
    UNKNOWN_PATH,
    Access,
    Analysis,
    Mode,
    _plain,
    _python,
    is_python,
    package_install,
)
from policy.model import Decision, Effect, Explanation, Policy, Profile, Rule, Step, ToolCall
from policy.paths import GlobPart, PatternSet, normalize
from policy.wrappers import unwrap

# Directories whose programs are the image's own (read-only root): `/usr/bin/git` is git.
SYSTEM_BIN = frozenset(("/bin", "/usr/bin", "/usr/local/bin", "/sbin", "/usr/sbin", "/opt/venv/bin"))
DECLARATIONS = frozenset(("export", "declare", "local", "readonly", "typeset"))

_CACHE_SIZE = 8192
_cache: OrderedDict[tuple[str, str, str, str], Explanation] = OrderedDict()

_WRITE_TOOLS = {"Write": "file_path", "Edit": "file_path", "MultiEdit": "file_path", "NotebookEdit": "notebook_path"}
_TOOL_REASONS = {
    "Task": "subagents are not allowed: they are known to skip the policy's hooks",
    "Agent": "subagents are not allowed: they are known to skip the policy's hooks",
    "WebFetch": "the agent has no network access",
    "WebSearch": "the agent has no network access",
}


def evaluate(policy: Policy, call: ToolCall) -> Decision:
    """Decide one tool call. Never raises: malformed input and internal failures decide ``deny``.

    >>> evaluate(policy, ToolCall("Bash", {"command": "git status && rm -rf ."})).effect
    <Effect.DENY: 'deny'>
    """
    return explain(policy, call).decision


def explain(policy: Policy, call: ToolCall) -> Explanation:
    """Decide one tool call and say how: each simple command (or the tool call) with the rule that decided it.

    Results are cached by (policy hash, kind, tool, canonical input JSON).
    """
    try:
        key = (
            policy.sha256,
            call.kind,
            call.tool,
            json.dumps(call.input, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
        )
    except (TypeError, ValueError):
        return _safe_decide(policy, call)
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit
    result = _safe_decide(policy, call)
    _cache[key] = result
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return result


def clear_cache() -> None:
    """Forget every cached decision (for benchmarks and tests)."""
    _cache.clear()


def is_read_protected(policy: Policy, path: str) -> bool:
    """True when the workspace-relative `path` must not be read (and is removed from the sandbox's clone).

    >>> is_read_protected(policy, "secrets/prod.env"), is_read_protected(policy, "bot/main.py")
    (True, False)
    """
    loc = normalize(path, policy.workspace)
    return loc.rel is not None and policy.paths.read_protected.match(loc.rel) is not None


# --- assembling a decision ----------------------------------------------------------------------------------------


def _safe_decide(policy: Policy, call: ToolCall) -> Explanation:
    try:
        steps = _decide(policy, call)
    except Exception as exc:  # fail closed: a bug here must never let a call through
        steps = [Step(call.tool, (), Effect.DENY, "engine.error", f"the policy engine failed ({type(exc).__name__})")]
    return _combine(policy, call, steps)


def _combine(policy: Policy, call: ToolCall, steps: Sequence[Step]) -> Explanation:
    chosen: Step | None = None
    for wanted in (Effect.DENY, Effect.ASK):
        chosen = next((s for s in steps if s.effect is wanted), None)
        if chosen is not None:
            break
    if chosen is None:
        if not steps:
            steps = [Step(call.tool, (), Effect.DENY, "engine.empty", "nothing to decide")]
            chosen = steps[0]
        elif len(steps) == 1:
            chosen = steps[0]
        else:
            chosen = Step("", (), Effect.ALLOW, steps[0].rule_id, f"all {len(steps)} commands are allowed")
    command = chosen.command if call.tool == "Bash" and chosen.effect is not Effect.ALLOW else None
    decision = Decision(chosen.effect, chosen.rule_id, chosen.reason, command, policy.version, policy.sha256)
    return Explanation(decision, tuple(steps))


def _decide(policy: Policy, call: ToolCall) -> list[Step]:
    tool = call.tool
    profile = policy.profiles.get(call.kind)
    if profile is None:
        return [Step(tool, (), Effect.DENY, "profile.unknown-kind", f"the task kind {call.kind!r} has no profile")]
    if not isinstance(tool, str) or tool not in profile.tools:
        why = _TOOL_REASONS.get(tool, "")
        if not why and isinstance(tool, str) and tool.startswith("mcp__"):
            why = "MCP tools are not allowed"
        reason = f"the tool {tool!r} is not allowed for {call.kind} tasks" + (f": {why}" if why else "")
        return [Step(str(tool), (), Effect.DENY, "tools.default-deny", reason)]
    if not isinstance(call.input, Mapping):
        return [Step(tool, (), Effect.DENY, "input.invalid", "the tool input is not a JSON object")]
    ctx = _Ctx(policy, profile, call)
    rule = ctx.tool_rule()
    if rule is not None and rule.effect is not Effect.ALLOW:
        return [Step(tool, (), rule.effect, f"rules.{rule.id}", rule.reason)]
    if tool == "Bash":
        return ctx.bash()
    if tool in _WRITE_TOOLS or tool in ("Read", "LS", "Glob", "Grep"):
        return ctx.file_tool()
    return [Step(tool, (), Effect.ALLOW, "tools.allow", f"{tool} is allowed for {call.kind} tasks")]


@lru_cache(maxsize=1024)
def _pattern_set(patterns: tuple[str, ...]) -> PatternSet:
    return PatternSet(patterns)


def _lit(text: str) -> Word:
    return Word(text, text, (GlobPart("lit", text),), False, False)


@dataclass(slots=True)
class _Ctx:
    policy: Policy
    profile: Profile
    call: ToolCall
    depth: int = 0
    paths: PathChecker = field(init=False)

    def __post_init__(self) -> None:
        self.paths = PathChecker(self.policy, self.profile, self.call.kind, self.path_rule)

    # --- owner rules ---------------------------------------------------------------------------------------------

    def _rule_applies(self, rule: Rule) -> bool:
        if rule.kinds and self.call.kind not in rule.kinds:
            return False
        return not rule.tools or any(fnmatchcase(self.call.tool, t) for t in rule.tools)

    def tool_rule(self) -> Rule | None:
        for rule in self.policy.rules:
            if not rule.commands and not rule.paths and self._rule_applies(rule):
                return rule
        return None

    def command_rule(self, argv: Sequence[str]) -> Rule | None:
        for rule in self.policy.rules:
            if rule.commands and not rule.paths and self._rule_applies(rule):
                for prefix in rule.commands:
                    if len(argv) >= len(prefix) and all(fnmatchcase(a, p) for a, p in zip(argv, prefix, strict=False)):
                        return rule
        return None

    def path_rule(self, mode: Mode, rel: str) -> Rule | None:
        for rule in self.policy.rules:
            if rule.paths and not rule.commands and self._rule_applies(rule):
                wanted = "read" if mode == "list" else "write" if mode == "stage" else mode
                if rule.access in ("any", wanted) and _pattern_set(rule.paths).match(rel) is not None:
                    return rule
        return None

    def check(self, mode: Mode, word: Word, cwds: Sequence[str] | None = None, *, literal: bool = False) -> Verdict:
        return self.paths.check(mode, word, cwds, literal=literal)

    # --- file tools -------------------------------------------------------------------------------------------------

    def file_tool(self) -> list[Step]:
        tool, data = self.call.tool, self.call.input
        key = _WRITE_TOOLS.get(tool) or ("file_path" if tool == "Read" else "path")
        value = data.get(key)
        required = tool not in ("Glob", "Grep")
        if value is None and not required:
            value = self.policy.workspace
        if not isinstance(value, str) or not value or "\x00" in value:
            return [Step(tool, (), Effect.DENY, "input.invalid", f"{tool} needs {key} as a non-empty string")]
        mode: Mode = "write" if tool in _WRITE_TOOLS else ("read" if tool in ("Read", "Grep") else "list")
        verdicts = [self.check(mode, _lit(value), literal=True)]
        base = value.rstrip("/") or "/"
        if tool == "Grep" and isinstance(data.get("glob"), str):
            verdicts.append(self.check("read", _glob_word(_join(base, data["glob"].removeprefix("**/")))))
        if tool == "Glob":
            pattern = data.get("pattern")
            if not isinstance(pattern, str) or not pattern:
                verdicts.append((Effect.DENY, "input.invalid", "Glob needs a pattern"))
            else:
                # the pattern itself may reach out of the path (`/proc/*/environ`, `../*`)
                verdicts.append(self.check("list", _glob_word(_join(base, pattern))))
        verdict = max(verdicts, key=lambda v: v[0].rank)
        return [Step(f"{tool} {value}", (tool, value), *verdict)]

    # --- bash ---------------------------------------------------------------------------------------------------

    def bash(self) -> list[Step]:
        command = self.call.input.get("command")
        if not isinstance(command, str):
            return [Step("Bash", (), Effect.DENY, "input.invalid", "Bash needs command as a string")]
        return self.bash_text(command, [self.policy.workspace])

    def bash_text(self, command: str, cwds: list[str]) -> list[Step]:
        parsed = parse(command, max_length=self.policy.bash.max_command_length)
        steps = [Step(p.text or command, (), Effect.DENY, p.rule_id, p.reason) for p in parsed.problems]
        interpreters = self.policy.bash.interpreters
        steps += [Step(h.text, (), interpreters, h.rule_id, h.reason) for h in parsed.hidden]
        if len(parsed.commands) > self.policy.bash.max_commands:
            reason = f"more than {self.policy.bash.max_commands} commands in one call"
            return [*steps, Step(command, (), Effect.DENY, "bash.too-many-commands", reason)]
        for sc in parsed.commands:
            steps.extend(self.simple(sc, cwds))
        return steps

    def simple(self, sc: SimpleCommand, cwds: list[str]) -> list[Step]:
        verdicts: list[Verdict] = []
        names = [w.text.partition("=")[0] for w in sc.assignments]
        for r in sc.redirects:
            if r.target is None or r.op in ("<<", "<<-", "<<<"):
                continue
            if r.op in (">&", "<&") and (r.target.text.isdigit() or r.target.text == "-"):
                continue
            verdicts.append(self.check("read" if r.op == "<" else "write", r.target, cwds))
        un = unwrap(sc.argv)
        names += un.env_names
        verdicts += [(Effect.DENY, rid, why) for rid, why in un.problems]
        verdicts += [self.check(a.mode, a.word, cwds) for a in un.accesses]
        argv = un.argv
        if argv and argv[0].value in DECLARATIONS:
            names += _declared(argv[1:], verdicts)
        for name in names:
            hit = next((p for p in self.policy.bash.protected_variables if fnmatchcase(name, p)), None)
            if hit is not None:
                verdicts.append((Effect.DENY, "bash.protected-variable", f"setting {name} can change what runs"))
        if not argv:
            if un.wrappers and not un.lookup_only and un.wrappers[-1] != "exec":
                w = un.wrappers[-1]
                if w not in self.policy.bash.allow:
                    verdicts.append((Effect.DENY, "bash.not-allowed", f"{w} without a command is not allowed"))
            verdicts.append((Effect.ALLOW, "bash.allow", "no command runs"))
            return [self._step(sc, [w.text for w in sc.argv], verdicts)]
        if un.extra_unknown:
            fed = fed_words(sc.feeder)
            argv = _replaced(argv, un.replace, fed) if un.replace else argv + fed
        inner: list[Step] = []
        verdicts += self.command(argv, cwds, inner)
        return [self._step(sc, [w.text for w in argv], verdicts), *inner]

    def _step(self, sc: SimpleCommand, argv: list[str], verdicts: list[Verdict]) -> Step:
        worst = verdicts[0]
        for v in verdicts:
            if v[0].rank > worst[0].rank:
                worst = v
        return Step(sc.text, tuple(argv), *worst)

    def command(self, argv: list[Word], cwds: list[str], inner: list[Step]) -> list[Verdict]:
        """Verdicts on one command line (after wrappers); commands it runs in turn add their steps to `inner`."""
        bash = self.policy.bash
        head = argv[0]
        name = head.text
        if head.value is None or head.glob:
            return [(Effect.DENY, "bash.dynamic-name", f"the command name {head.raw} is known only at run time")]
        if not name:
            return [(Effect.DENY, "bash.dynamic-name", "an empty command name")]
        if not name.isascii() or not name.isprintable():
            return [
                (Effect.DENY, "bash.suspicious-name", f"the command name {name!r} has non-ASCII or control characters")
            ]
        verdicts: list[Verdict] = []
        program = name
        workspace_program = False
        if "/" in name:
            directory, _, program = name.rpartition("/")
            if directory not in SYSTEM_BIN:
                # a program or script the call names by path (./manage.py, .venv/bin/ruff): its code is not shown
                workspace_program = True
                verdicts.append(self.check("read", head, cwds))
        if program in PRIVILEGED:
            return [(Effect.DENY, "bash.privilege", f"{program} is never allowed")]
        if program in NETWORK:
            return [(Effect.DENY, "bash.network", f"{program} is not allowed: {NO_NETWORK}")]
        a = Analysis(argv)
        args = list(argv[1:])
        if package_install(program, args):
            first = next((w.text for w in args if not w.text.startswith("-")), "")
            a.asks.append(("bash.package-install", f"{program} {first}: {INSTALL_ADVICE}"))
        elif is_python(program):
            _python(a, args, bash.python_modules)
        elif program == "git":
            git.analyse(a, args, bash.git_subcommands, self.policy.workspace)
        elif program in KNOWN:
            KNOWN[program](a, args)
        elif program in INTERPRETERS:
            a.interpreter = True
            if program in TASK_RUNNERS:
                _plain()(a, args)  # targets and file arguments are still checked as paths
        else:
            _plain()(a, args)
        verdicts += [(Effect.DENY, rid, why) for rid, why in a.problems]
        verdicts += [(Effect.ASK, rid, why) for rid, why in a.asks]
        rule = self.command_rule([w.text for w in argv])
        if rule is not None:
            verdicts.append((rule.effect, f"rules.{rule.id}", rule.reason))
        elif a.interpreter or workspace_program:
            rid = "bash.workspace-program" if workspace_program and not a.interpreter else "bash.interpreter"
            verdicts.append((bash.interpreters, rid, f"{name} runs code the call does not show ({_STANCE})"))
        elif a.asks or a.inner:
            pass  # decided by what it asks, or by the code it runs
        elif program in bash.allow or (_PYTHON3.match(program) and "python3" in bash.allow):
            verdicts.append((Effect.ALLOW, "bash.allow", f"{program} is allowed"))
        elif program in bash.ask:
            verdicts.append((Effect.ASK, "bash.ask", f"{program} needs the owner's approval"))
        else:
            verdicts.append(
                (
                    Effect.DENY,
                    "bash.not-allowed",
                    f"{program} is not on the policy's list of commands (bash.allow); the owner can add it",
                )
            )
        if a.writes_repo and self.profile.read_only:
            verdicts.append(
                (Effect.DENY, "profile.read-only", f"{self.call.kind} tasks change nothing: {git.COMMIT_ADVICE}")
            )
        verdicts += [self.check(acc.mode, acc.word, cwds) for acc in a.accesses]
        for code in a.inner:
            if self.depth >= _MAX_DEPTH:
                verdicts.append((Effect.DENY, "bash.nesting", "shell code nested too deep"))
                continue
            sub = _Ctx(self.policy, self.profile, self.call, self.depth + 1)
            inner.extend(sub.bash_text(code, list(cwds)))
        for sub_argv in a.inner_argv:
            if sub_argv:
                verdicts += self.command(list(sub_argv), cwds, inner)
        if not verdicts:
            verdicts.append((Effect.ALLOW, "bash.allow", f"{program} is allowed"))
        if program == "cd" and not a.problems:
            self._cd(a.accesses, cwds)
        return verdicts

    def _cd(self, accesses: list[Access], cwds: list[str]) -> None:
        # the directory may or may not change (cd can fail, subshells): keep every candidate
        for acc in accesses:
            for cwd in list(cwds):
                loc = normalize(acc.word.text, self.policy.workspace, cwd)
                if loc.abs is not None and loc.abs not in cwds:
                    cwds.append(loc.abs)


def fed_words(feeder: Sequence[Word]) -> list[Word]:
    """The arguments `xargs` appends: what an `echo`/`printf` of literal words prints, else one unknown word
    (paths from `find`, `git ls-files`, a file... are decided like ``cat "$f"``)."""
    if feeder and feeder[0].value in ("echo", "printf") and all(w.value is not None for w in feeder):
        out: list[Word] = []
        for w in feeder[1:]:
            if feeder[0].value == "echo" and w.text in ("-n", "-e", "-E"):
                continue
            out.extend(_lit(t) for t in w.text.replace("\\n", "\n").split())
        return out
    return [UNKNOWN_PATH]


def _replaced(argv: list[Word], replace: str, fed: list[Word]) -> list[Word]:
    """`xargs -I R CMD ...R...`: each R becomes an input line (known when an `echo` feeds one literal word)."""
    value = fed[0].text if len(fed) == 1 and fed[0].value is not None else None
    code = argv[0].text in SHELLS or argv[0].text == "eval"
    out: list[Word] = []
    for w in argv:
        if w.value is None or replace not in w.text:
            out.append(w)
        elif code:
            # shell code: the input goes in as a quoted word, or as a variable when it is not known
            out.append(_lit(w.text.replace(replace, shlex.quote(value) if value is not None else '"$xargs_input"')))
        else:
            out.append(_lit(w.text.replace(replace, value)) if value is not None else UNKNOWN_PATH)
    return out


def _declared(args: Sequence[Word], verdicts: list[Verdict]) -> list[str]:
    names = []
    for w in args:
        if w.value is None and (m := _NAME_EQ.match(w.raw)) is not None:
            names.append(m.group(1))  # `export PATH=/x:$PATH`: the name is literal, the value is not
        elif w.value is None:
            verdicts.append((Effect.DENY, "bash.dynamic-argument", f"a variable name known only at run time ({w.raw})"))
        elif w.text in ("-n", "-f", "-F"):
            verdicts.append((Effect.DENY, "bash.declare", f"declare {w.text} is not allowed"))
        elif not w.text.startswith(("-", "+")):
            names.append(w.text.partition("=")[0])
    return names


_MAX_DEPTH = 4
_PYTHON3 = re.compile(r"python3\.\d+$")
_NAME_EQ = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\+?=")
_STANCE = "allowed by bash.interpreters: the sandbox is sealed, and the change is checked when it is extracted"


def _join(base: str, pattern: str) -> str:
    return pattern if pattern.startswith(("/", "~")) else f"{base.rstrip('/')}/{pattern}"


def _glob_word(pattern: str) -> Word:
    parts: list[GlobPart] = []
    lit: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c in "*?[{":
            if lit:
                parts.append(GlobPart("lit", "".join(lit)))
                lit = []
            if c == "*" and pattern.startswith("**", i):
                parts.append(GlobPart("unknown"))
                i += 2
                continue
            if c == "[" and (end := pattern.find("]", i + 2)) != -1:
                parts.append(GlobPart("class", pattern[i : end + 1]))
                i = end + 1
                continue
            parts.append(GlobPart("unknown") if c == "{" else GlobPart("star" if c == "*" else "any"))
            if c == "{":
                end = pattern.find("}", i)
                i = end + 1 if end != -1 else len(pattern)
                continue
        else:
            lit.append(c)
        i += 1
    if lit:
        parts.append(GlobPart("lit", "".join(lit)))
    return Word(pattern, None, tuple(parts), True, False)
