"""Decide a ToolCall against a Policy: default deny, a deny anywhere decides, an ask anywhere makes it ask.

A call is cut into parts (the tool itself; each simple command of a Bash string; each path read or written)
and every part gets an effect. Owner rules are tried first for a part (first match wins); built-in checks
(bash structure, protected paths, paths outside the workspace, read-only profiles) deny regardless of them.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache

from policy.bash import SimpleCommand, Word, parse
from policy.commands import (
    INTERPRETERS,
    KNOWN,
    PRIVILEGED,
    Access,
    Analysis,
    Mode,
    _git,
    _plain,
    _python,
    is_python,
    unwrap,
)
from policy.model import Decision, Effect, Explanation, Policy, Profile, Rule, Step, ToolCall
from policy.paths import GlobPart, Location, PatternSet, glob_nfa, normalize

# A part's verdict: (effect, rule id, reason)
Verdict = tuple[Effect, str, str]

_CACHE_SIZE = 8192
_cache: OrderedDict[tuple[str, str, str, str], Explanation] = OrderedDict()

_WRITE_TOOLS = {"Write": "file_path", "Edit": "file_path", "MultiEdit": "file_path", "NotebookEdit": "notebook_path"}
_TOOL_REASONS = {
    "Task": "subagents are not allowed: they are known to skip the policy's hooks",
    "Agent": "subagents are not allowed: they are known to skip the policy's hooks",
    "WebFetch": "the agent has no network access",
    "WebSearch": "the agent has no network access",
}
# commands that take option-like or path arguments nobody can check when xargs appends them
_XARGS_UNSAFE = frozenset(
    "find git sed rg sort cp mv rm rmdir mkdir touch tee chmod pytest py.test cd uniq tree".split()
)


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
                wanted = "read" if mode == "list" else mode
                if rule.access in ("any", wanted) and _pattern_set(rule.paths).match(rel) is not None:
                    return rule
        return None

    # --- paths -----------------------------------------------------------------------------------------------------

    def check(self, mode: Mode, word: Word, cwds: Sequence[str] | None = None, *, literal: bool = False) -> Verdict:
        """The verdict on one path access; `literal` for tool inputs, which are never globbed."""
        ws = self.policy.workspace
        verdicts: list[Verdict] = []
        for cwd in reversed(cwds or (ws,)):  # the latest cd first: its verdict is the likeliest to be the real one
            if literal or (word.value is not None and not word.glob):
                verdicts.append(self._check_location(mode, word.text, normalize(word.text, ws, cwd)))
            else:
                verdicts.append(self._check_glob(mode, word, cwd))
        return max(verdicts, key=lambda v: v[0].rank)

    def _check_location(self, mode: Mode, text: str, loc: Location) -> Verdict:
        paths = self.policy.paths
        if loc.abs is None:
            return Effect.DENY, "paths.home", f"{text!r} is in the home directory, outside the workspace"
        if loc.rel is None:
            allowed = paths.outside_write if mode == "write" else paths.outside_read
            if allowed.match(loc.abs.lstrip("/")) is not None:
                return Effect.ALLOW, "paths.outside-allowed", f"{loc.abs} is an allowed place outside the workspace"
            verb = "writing" if mode == "write" else "reading"
            return (
                Effect.DENY,
                "paths.outside-workspace",
                f"{verb} {loc.abs} is not allowed: it is outside the workspace",
            )
        rel = loc.rel
        if mode == "write":
            hit = paths.read_protected.match_subtree(rel) or paths.write_protected.match_subtree(rel)
            if hit is not None:
                return (
                    Effect.DENY,
                    "paths.write_protected",
                    f"writing {rel or '.'!r} is forbidden: protected by {hit!r}",
                )
            if self.profile.read_only:
                return Effect.DENY, "profile.read-only", f"{self.call.kind} tasks are read-only"
        else:
            hit = paths.read_protected.match(rel)
            if hit is not None:
                return Effect.DENY, "paths.read_protected", f"reading {rel!r} is forbidden: protected by {hit!r}"
        rule = self.path_rule(mode, rel)
        if rule is not None:
            return rule.effect, f"rules.{rule.id}", rule.reason
        if mode == "write" and (hit := paths.ask_write.match(rel)) is not None:
            return Effect.ASK, "paths.ask_write", f"changing {rel!r} needs the owner's approval ({hit!r})"
        return Effect.ALLOW, f"paths.{mode}", f"{mode} {rel or '.'}"

    def _check_glob(self, mode: Mode, word: Word, cwd: str) -> Verdict:
        paths = self.policy.paths
        parts = list(word.parts)
        if mode != "write" and [p.kind for p in parts] == ["unknown"]:
            # `cat "$f"`: nothing can be known; read-protected files are not in the sandbox at all
            return Effect.ALLOW, "paths.read-unknown", f"{word.raw} is known only at run time"
        if not (parts and parts[0].kind == "lit" and parts[0].text.startswith("/")):
            parts.insert(0, GlobPart("lit", cwd + "/"))
        prefix = parts[0].text if parts[0].kind == "lit" else ""
        directory, _, tail = prefix.rpartition("/")
        rest = [GlobPart("lit", tail)] if tail else []
        rest += parts[1:]
        if any(p.kind == "lit" and (".." in p.text.split("/")) for p in rest):
            return Effect.DENY, "paths.glob", f"{word.raw}: '..' after a wildcard cannot be checked"
        loc = normalize(directory or "/", self.policy.workspace)
        if loc.rel is None or loc.abs is None:
            allowed = paths.outside_write if mode == "write" else paths.outside_read
            if loc.abs is not None and allowed.match(loc.abs.lstrip("/")) is not None:
                return Effect.ALLOW, "paths.outside-allowed", f"{word.raw} is under an allowed place"
            return Effect.DENY, "paths.outside-workspace", f"{word.raw} may name files outside the workspace"
        nfa = glob_nfa(([GlobPart("lit", loc.rel + "/")] if loc.rel else []) + rest)
        hit = paths.read_protected.match_glob(nfa)
        if hit is not None:
            return Effect.DENY, "paths.read_protected", f"{word.raw} could match a protected path ({hit!r})"
        if mode == "write":
            hit = paths.write_protected.match_glob(nfa)
            if hit is not None:
                return Effect.DENY, "paths.write_protected", f"{word.raw} could match a protected path ({hit!r})"
            if self.profile.read_only:
                return Effect.DENY, "profile.read-only", f"{self.call.kind} tasks are read-only"
            if paths.ask_write.match_glob(nfa) is not None:
                return Effect.ASK, "paths.ask_write", f"{word.raw} could change a file that needs the owner's approval"
        return Effect.ALLOW, f"paths.{mode}", f"{mode} {word.raw}"

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
        if tool == "Grep" and isinstance(data.get("glob"), str):
            pattern = data["glob"].removeprefix("**/")
            base = value.rstrip("/") or "/"
            verdicts.append(self.check("read", _glob_word(f"{base}/{pattern}")))
        if tool == "Glob" and not isinstance(data.get("pattern"), str):
            verdicts.append((Effect.DENY, "input.invalid", "Glob needs a pattern"))
        verdict = max(verdicts, key=lambda v: v[0].rank)
        return [Step(f"{tool} {value}", (tool, value), *verdict)]

    # --- bash ---------------------------------------------------------------------------------------------------

    def bash(self) -> list[Step]:
        command = self.call.input.get("command")
        if not isinstance(command, str):
            return [Step("Bash", (), Effect.DENY, "input.invalid", "Bash needs command as a string")]
        parsed = parse(command, max_length=self.policy.bash.max_command_length)
        steps = [Step(p.text or command, (), Effect.DENY, p.rule_id, p.reason) for p in parsed.problems]
        if len(parsed.commands) > self.policy.bash.max_commands:
            reason = f"more than {self.policy.bash.max_commands} commands in one call"
            return [*steps, Step(command, (), Effect.DENY, "bash.too-many-commands", reason)]
        cwds = [self.policy.workspace]
        for sc in parsed.commands:
            steps.append(self.simple(sc, cwds))
        return steps

    def simple(self, sc: SimpleCommand, cwds: list[str]) -> Step:
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
        for name in names:
            hit = next((p for p in self.policy.bash.protected_variables if fnmatchcase(name, p)), None)
            if hit is not None:
                verdicts.append((Effect.DENY, "bash.protected-variable", f"setting {name} can change what runs"))
        argv = un.argv
        if not argv:
            if un.wrappers and not un.lookup_only and un.wrappers[-1] != "exec":
                w = un.wrappers[-1]
                if w not in self.policy.bash.allow:
                    verdicts.append((Effect.DENY, "bash.not-allowed", f"{w} without a command is not allowed"))
            verdicts.append((Effect.ALLOW, "bash.allow", "no command runs"))
            return self._step(sc, [w.text for w in sc.argv], verdicts)
        verdicts += self.command(argv, un.extra_unknown, cwds)
        return self._step(sc, [w.text for w in argv], verdicts)

    def _step(self, sc: SimpleCommand, argv: list[str], verdicts: list[Verdict]) -> Step:
        worst = verdicts[0]
        for v in verdicts:
            if v[0].rank > worst[0].rank:
                worst = v
        return Step(sc.text, tuple(argv), *worst)

    def command(self, argv: list[Word], extra_unknown: bool, cwds: list[str]) -> list[Verdict]:
        bash = self.policy.bash
        head = argv[0]
        name = head.text
        if head.value is None or head.glob:
            return [(Effect.DENY, "bash.dynamic-name", f"the command name {head.raw} is known only at run time")]
        if not name:
            return [(Effect.DENY, "bash.dynamic-name", "an empty command name")]
        if "/" in name:
            return [(Effect.DENY, "bash.path-qualified-name", f"{name} is a path, not the command it looks like")]
        if not name.isascii() or not name.isprintable():
            return [
                (Effect.DENY, "bash.suspicious-name", f"the command name {name!r} has non-ASCII or control characters")
            ]
        if name in PRIVILEGED:
            return [(Effect.DENY, "bash.privilege", f"{name} is never allowed")]
        a = Analysis(argv)
        args = list(argv[1:])
        if is_python(name):
            _python(a, args, bash.python_modules)
        elif name in INTERPRETERS:
            a.interpreter = True
        elif name == "git":
            _git(a, args, bash.git_subcommands)
        elif name in KNOWN:
            KNOWN[name](a, args)
        else:
            _plain()(a, args)
        verdicts: list[Verdict] = [(Effect.DENY, rid, why) for rid, why in a.problems]
        if a.interpreter:
            effect = bash.interpreters
            verdicts.append((effect, "bash.interpreter", f"{name} runs code given as an argument or file"))
        rule = self.command_rule([w.text for w in argv])
        if rule is not None:
            verdicts.append((rule.effect, f"rules.{rule.id}", rule.reason))
        elif not a.interpreter:
            if name in bash.allow:
                verdicts.append((Effect.ALLOW, "bash.allow", f"{name} is allowed"))
            elif name in bash.ask:
                verdicts.append((Effect.ASK, "bash.ask", f"{name} needs the owner's approval"))
            else:
                verdicts.append((Effect.DENY, "bash.not-allowed", f"{name} is not on the policy's list of commands"))
        if extra_unknown and name in _XARGS_UNSAFE:
            verdicts.append((Effect.DENY, "bash.xargs", f"xargs would give {name} arguments nobody can check"))
        if a.writes_repo and self.profile.read_only:
            verdicts.append((Effect.DENY, "profile.read-only", f"{self.call.kind} tasks are read-only"))
        verdicts += [self.check(acc.mode, acc.word, cwds) for acc in a.accesses]
        if name == "cd" and not a.problems:
            self._cd(a.accesses, cwds)
        return verdicts

    def _cd(self, accesses: list[Access], cwds: list[str]) -> None:
        # the directory may or may not change (cd can fail, subshells): keep every candidate
        for acc in accesses:
            for cwd in list(cwds):
                loc = normalize(acc.word.text, self.policy.workspace, cwd)
                if loc.abs is not None and loc.abs not in cwds:
                    cwds.append(loc.abs)


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
