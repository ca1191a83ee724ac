"""Wrappers that run another command (`env`, `timeout`, `nice`, `xargs`, `command`, `exec`...): peeled off so the
command they finally run is the one decided, with the options they take checked on the way."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from policy.commands import Access, long_match, split_options, value_word
from policy.syntax import Word

_WRAPPER_VALUES: dict[str, tuple[str, frozenset[str]]] = {
    "env": ("u", frozenset(("--unset",))),
    "nice": ("n", frozenset(("--adjustment",))),
    "timeout": ("sk", frozenset(("--signal", "--kill-after"))),
    "stdbuf": ("ioe", frozenset(("--input", "--output", "--error"))),
    "xargs": (
        "IiLlnPdEesa",
        frozenset(
            "--replace --max-lines --max-args --max-procs --delimiter --eof --max-chars "
            "--arg-file --process-slot-var".split()
        ),
    ),
    "nohup": ("", frozenset()),
    "command": ("", frozenset()),
    "builtin": ("", frozenset()),
    "exec": ("a", frozenset()),
    "time": ("fo", frozenset(("--format", "--output"))),
}
WRAPPERS = frozenset(_WRAPPER_VALUES)
_ASSIGN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(slots=True)
class Unwrapped:
    """The command a chain of wrappers finally runs, the environment names they set, and their problems."""

    argv: list[Word]
    env_names: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    accesses: list[Access] = field(default_factory=list)
    wrappers: list[str] = field(default_factory=list)
    extra_unknown: bool = False
    lookup_only: bool = False
    replace: str | None = None  # `xargs -I R`: R in the arguments is replaced by each input line


def unwrap(argv: Sequence[Word]) -> Unwrapped:
    """Peel `env`, `command`, `builtin`, `exec`, `nohup`, `timeout`, `nice`, `stdbuf`, `time` and `xargs` off a
    command line. Options that would run a string (`env -S`) or change directory (`env -C`) are problems."""
    out = Unwrapped(list(argv))
    for _ in range(16):
        if not out.argv or out.argv[0].value is None or out.argv[0].text not in WRAPPERS:
            return out
        name = out.argv[0].text
        out.wrappers.append(name)
        short, long = _WRAPPER_VALUES[name]
        rest = out.argv[1:]
        opts, pos = split_options(rest, short, long, stop_at_first=True)
        for o in opts:
            if name == "env" and (
                o.name in ("-S", "-C") or long_match(o.name, "--split-string") or long_match(o.name, "--chdir")
            ):
                out.problems.append(("bash.wrapper", f"env {o.name} runs a string or changes directory"))
            elif name == "exec" and o.name == "-a":
                out.problems.append(("bash.wrapper", "exec -a renames the command"))
            elif name == "command" and o.name in ("-v", "-V"):
                out.lookup_only = True
            elif name == "time" and o.name in ("-o", "--output") and (vw := value_word(o)) is not None:
                out.accesses.append(Access("write", vw))
            elif name == "xargs" and o.name in ("-I", "--replace", "-i"):
                out.replace = o.value_text if o.name == "-I" else (o.value_text or "{}")
            elif name == "xargs" and o.name in ("-a", "--arg-file") and (vw := value_word(o)) is not None:
                out.accesses.append(Access("read", vw))
        if any(w.dynamic for w in rest):
            out.problems.append(("bash.dynamic-argument", f"{name} with an argument known only at run time"))
        if name == "env":
            while pos and pos[0].value is not None and _ASSIGN.match(pos[0].text):
                out.env_names.append(pos[0].text.partition("=")[0])
                pos = pos[1:]
        elif name == "timeout" and pos:
            pos = pos[1:]  # the duration
        elif name == "nice" and pos and re.match(r"-\d+$", pos[0].text):
            pos = pos[1:]
        elif name == "xargs":
            out.extra_unknown = True
            if not pos:
                pos = [Word("echo", "echo", (), False, False)]
        if out.lookup_only:
            out.argv = []
            return out
        out.argv = list(pos)
    out.problems.append(("bash.wrapper", "too many nested wrappers"))
    return out
