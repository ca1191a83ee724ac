"""One path access (read, write, list, stage) decided against the policy's path rules.

The engine is pure: it never looks at the filesystem, so it decides on what a path says. Two things a path can
hide are refused rather than guessed: a ``..`` after a component the agent could have made a symlink (inside the
workspace, or in a writable place such as /tmp), and a path known only at run time that is written to.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from policy.commands import Mode
from policy.model import Effect, Policy, Profile, Rule
from policy.paths import GlobPart, Location, glob_nfa, normalize
from policy.syntax import Word

# A part's verdict: (effect, rule id, reason)
Verdict = tuple[Effect, str, str]

# The Claude Code CLI's own configuration in the sandbox's home (and the home itself): code the agent runs shares
# the CLI's uid, so a settings file there must not be written through the agent's tools.
CLI_CONFIG_ADVICE = (
    "the Claude Code CLI's own configuration (~/.claude/, ~/.claude.json, $CLAUDE_CONFIG_DIR) is not the agent's "
    "to change"
)


def is_cli_config(absolute: str) -> bool:
    """True for the CLI's configuration files and directories under any home directory."""
    parts = absolute.strip("/").split("/")
    homes = 2 if parts[:1] == ["home"] else 1 if parts[:1] == ["root"] else 0
    if not homes or len(parts) <= homes:
        return False
    return parts[homes] == ".claude" or parts[homes].startswith(".claude.json")


def protected_advice(policy: Policy) -> str:
    """What the agent is told about protected files: which they are, and that the owner decides."""
    shown = [p for p in policy.paths.write_protected.patterns][:12]
    more = " ..." if len(policy.paths.write_protected.patterns) > 12 else ""
    return (
        f"protected files ({', '.join(shown)}{more}) are the owner's to change: leave them as they are and say "
        "in your summary what should change"
    )


@dataclass(slots=True)
class PathChecker:
    """Decides path accesses for one call: `rule_for` finds the owner rule of a path, if any."""

    policy: Policy
    profile: Profile
    kind: str
    rule_for: Callable[[Mode, str], Rule | None]

    def check(self, mode: Mode, word: Word, cwds: Sequence[str] | None = None, *, literal: bool = False) -> Verdict:
        """The verdict on one path access, the strictest over every directory the command may run in;
        `literal` for tool inputs, which are never globbed."""
        ws = self.policy.workspace
        verdicts: list[Verdict] = []
        for cwd in reversed(cwds or (ws,)):  # the latest cd first: its verdict is the likeliest to be the real one
            if literal or (word.value is not None and not word.glob):
                verdicts.append(self.literal(mode, word.text, cwd))
            else:
                verdicts.append(self.glob(mode, word, cwd))
        return max(verdicts, key=lambda v: v[0].rank)

    def literal(self, mode: Mode, text: str, cwd: str) -> Verdict:
        made = self._symlink_dotdot(text, cwd)
        if made is not None:
            return (
                Effect.DENY,
                "paths.dotdot",
                f"{text!r}: '..' after {made} cannot be decided ({made} could be a symlink the agent made); "
                f"write the path from {self.policy.workspace} without '..'",
            )
        return self.location(mode, text, normalize(text, self.policy.workspace, cwd))

    def _symlink_dotdot(self, text: str, cwd: str) -> str | None:
        """The directory a `..` in `text` steps out of, when the agent could have made it a symlink."""
        if ".." not in text.split("/"):
            return None
        joined = text if text.startswith("/") else f"{cwd}/{text}"
        stack: list[str] = []
        for comp in joined.split("/"):
            if comp in ("", "."):
                continue
            if comp != "..":
                stack.append(comp)
                continue
            if stack:
                here = "/" + "/".join(stack)
                if self._agent_writable(posixpath.dirname(here)):
                    return here
                stack.pop()
        return None

    def _agent_writable(self, directory: str) -> bool:
        ws = self.policy.workspace
        if directory == ws or directory.startswith(ws + "/"):
            return True
        return self.policy.paths.outside_write.match(directory.lstrip("/")) is not None

    def location(self, mode: Mode, text: str, loc: Location) -> Verdict:
        paths = self.policy.paths
        if loc.abs is None:
            what = f"; {CLI_CONFIG_ADVICE}" if text.startswith("~/.claude") and mode != "read" else ""
            return Effect.DENY, "paths.home", f"{text!r} is in the home directory, outside the workspace{what}"
        if loc.rel is None:
            if is_cli_config(loc.abs) and mode != "read":
                return Effect.DENY, "paths.cli-config", f"writing {loc.abs} is not allowed: {CLI_CONFIG_ADVICE}"
            allowed = paths.outside_write if mode in ("write", "stage") else paths.outside_read
            if allowed.match(loc.abs.lstrip("/")) is not None:
                return Effect.ALLOW, "paths.outside-allowed", f"{loc.abs} is an allowed place outside the workspace"
            verb = "writing" if mode in ("write", "stage") else "reading"
            return (
                Effect.DENY,
                "paths.outside-workspace",
                f"{verb} {loc.abs} is not allowed: it is outside the workspace ({self.policy.workspace}); "
                "work there, or in /tmp",
            )
        rel = loc.rel
        if mode in ("write", "stage"):
            match = paths.write_protected.match if mode == "stage" else paths.write_protected.match_subtree
            read_match = paths.read_protected.match if mode == "stage" else paths.read_protected.match_subtree
            hit = read_match(rel) or match(rel)
            if hit is not None:
                verb = "adding" if mode == "stage" else "writing"
                return (
                    Effect.DENY,
                    "paths.write_protected",
                    f"{verb} {rel or '.'!r} is not allowed: it is protected by {hit!r}; "
                    + protected_advice(self.policy),
                )
            if self.profile.read_only:
                return Effect.DENY, "profile.read-only", f"{self.kind} tasks are read-only: report what should change"
        else:
            hit = paths.read_protected.match(rel)
            if hit is not None:
                return (
                    Effect.DENY,
                    "paths.read_protected",
                    f"reading {rel!r} is not allowed: protected by {hit!r} (the owner keeps such files out of the "
                    "sandbox; it is not there to read)",
                )
        rule = self.rule_for(mode, rel)
        if rule is not None:
            return rule.effect, f"rules.{rule.id}", rule.reason
        if mode == "write" and (hit := paths.ask_write.match(rel)) is not None:
            return Effect.ASK, "paths.ask_write", f"changing {rel!r} needs the owner's approval ({hit!r})"
        return Effect.ALLOW, f"paths.{mode}", f"{mode} {rel or '.'}"

    def glob(self, mode: Mode, word: Word, cwd: str) -> Verdict:
        paths = self.policy.paths
        parts = list(word.parts)
        writing = mode in ("write", "stage")
        if parts and parts[0].kind == "unknown":
            if not writing and len(parts) == 1:
                # `cat "$f"`: nothing can be known; read-protected files are not in the sandbox at all
                return Effect.ALLOW, "paths.read-unknown", f"{word.raw} is known only at run time"
            if writing:
                return (
                    Effect.DENY,
                    "paths.dynamic-write",
                    f"writing {word.raw} is not allowed: the path is known only at run time and could name a "
                    "protected file or a place outside the workspace; write the path out",
                )
        if not (parts and parts[0].kind == "lit" and parts[0].text.startswith("/")):
            parts.insert(0, GlobPart("lit", cwd + "/"))
        prefix = parts[0].text if parts[0].kind == "lit" else ""
        directory, _, tail = prefix.rpartition("/")
        rest = [GlobPart("lit", tail)] if tail else []
        rest += parts[1:]
        if any(p.kind == "lit" and (".." in p.text.split("/")) for p in rest):
            return Effect.DENY, "paths.glob", f"{word.raw}: '..' after a wildcard cannot be checked"
        made = self._symlink_dotdot(directory or "/", cwd)
        if made is not None:
            return Effect.DENY, "paths.dotdot", f"{word.raw}: '..' after {made} cannot be decided (a possible symlink)"
        loc = normalize(directory or "/", self.policy.workspace)
        if loc.rel is None or loc.abs is None:
            allowed = paths.outside_write if writing else paths.outside_read
            if loc.abs is not None and allowed.match(loc.abs.lstrip("/")) is not None:
                return Effect.ALLOW, "paths.outside-allowed", f"{word.raw} is under an allowed place"
            return Effect.DENY, "paths.outside-workspace", f"{word.raw} may name files outside the workspace"
        if not writing:
            # bash expands a glob to files that exist, and read-protected files are not in the sandbox at all
            return Effect.ALLOW, f"paths.{mode}", f"{mode} {word.raw}"
        nfa = glob_nfa(([GlobPart("lit", loc.rel + "/")] if loc.rel else []) + rest)
        hit = paths.read_protected.match_glob(nfa) or paths.write_protected.match_glob(nfa)
        if hit is not None:
            return (
                Effect.DENY,
                "paths.write_protected",
                f"{word.raw} could match a protected path ({hit!r}); {protected_advice(self.policy)}",
            )
        if self.profile.read_only:
            return Effect.DENY, "profile.read-only", f"{self.kind} tasks are read-only: report what should change"
        if mode == "write" and paths.ask_write.match_glob(nfa) is not None:
            return Effect.ASK, "paths.ask_write", f"{word.raw} could change a file that needs the owner's approval"
        return Effect.ALLOW, f"paths.{mode}", f"{mode} {word.raw}"
