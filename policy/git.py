"""What a git command line does: read the repository, change it locally, or what the gate never allows (talk to a
remote, change configuration, rewrite history, run a program git is told to run).

Built-in knowledge, like `policy.commands`: the policy's ``bash.git_subcommands`` says which subcommands may run at
all; this module says which paths they read or write, and refuses the options and subcommands no policy may allow.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from policy.commands import Access, Analysis, Mode, split_options, value_word
from policy.paths import GlobPart, normalize
from policy.syntax import Word

NO_NETWORK = "the sandbox has no network: the supervisor pushes your change and opens the pull request"
NO_REWRITE = (
    "rewriting history is not allowed: make a new commit, or leave your changes in the workspace for the "
    "supervisor to commit"
)
NO_CONFIG = "git's configuration is not the agent's to change; pass what you need as options of the command"
COMMIT_ADVICE = "the supervisor commits your changes; leave them in the workspace"

_GLOBAL_OK = frozenset(("--no-pager", "-P", "--no-optional-locks", "--literal-pathspecs", "--no-replace-objects"))
_OPTION_DENY = (
    "--ext-diff",
    "--output",
    "--textconv",
    "--exec",
    "--upload-pack",
    "--receive-pack",
    "--no-index",
    "--open-files-in-pager",
    "--template",
    "--exec-path",
    "--config-env",
)
_NETWORK = frozenset("push fetch pull clone ls-remote submodule request-pull send-email daemon instaweb".split())
_REWRITE = frozenset("rebase filter-branch filter-repo replace update-ref prune gc".split())
_NEVER = {
    **{s: NO_NETWORK for s in _NETWORK},
    **{s: NO_REWRITE for s in _REWRITE},
    "apply": "git apply writes files the policy cannot see: make the change with Edit or Write",
    "am": "git am writes files the policy cannot see: make the change with Edit or Write",
    "init": "a new repository inside the workspace is not allowed (.git is protected)",
    "worktree": "other worktrees are not allowed: work in /workspace",
    "archive": "git archive writes an archive; nothing leaves the sandbox but your change",
    "bundle": "git bundle writes an archive; nothing leaves the sandbox but your change",
    "credential": "there are no credentials in the sandbox",
    "hook": "git hooks are not run in the sandbox",
}
# Subcommands that change the working tree, the index or local refs (denied in read-only profiles).
WRITES = frozenset(
    "add commit rm mv restore checkout reset stash switch merge cherry-pick revert tag branch notes clean".split()
)
_READ_CONFIG = frozenset(("--get", "--get-all", "--get-regexp", "--list", "-l", "--show-origin", "--show-scope"))
_REMOTE_READ = frozenset(("-v", "--verbose", "get-url"))
_REV_LIKE = re.compile(r"[~^@]|^[0-9a-f]{7,40}$")
# options (of the read subcommands) that take a value in the next word
_VALUE_OPTS = frozenset(
    "-n -S -G -L -U -C -M -O -e -f --author --committer --grep --since --until --after --before --format "
    "--pretty --max-count --skip --date --diff-filter --contents --source -m --message --ignore-rev "
    "--ignore-revs-file -b -B --orphan --abbrev".split()
)
_COMMIT_VALUES = frozenset(("-m", "--message", "-F", "--file", "-C", "-c", "--author", "--date", "--fixup", "--squash"))


def analyse(a: Analysis, args: list[Word], allowed: frozenset[str], workspace: str = "/workspace") -> None:
    """Fill `a` with what ``git ARGS`` reads and writes, or the reason it may not run."""
    i = 0
    prefix = ""
    while i < len(args) and args[i].text.startswith("-"):
        opt = args[i].text
        if opt == "-C" and i + 1 < len(args) and args[i + 1].value is not None and not args[i + 1].glob:
            where = normalize(args[i + 1].text, workspace)
            if where.rel is None:
                a.deny("bash.git", f"git -C {args[i + 1].text}: git runs only on the repository in {workspace}")
                return
            prefix = f"{where.rel}/" if where.rel else ""
            a.accesses.append(Access("list", args[i + 1]))
            i += 2
            continue
        if opt not in _GLOBAL_OK:
            why = NO_CONFIG if opt.startswith("-c") or opt.startswith("--config") else "it can change what git runs"
            a.deny("bash.git", f"git {opt} before the subcommand is not allowed: {why}")
            return
        i += 1
    if i >= len(args):
        a.deny("bash.git", "git without a subcommand")
        return
    head = args[i]
    if head.value is None:
        a.deny("bash.dynamic-argument", f"the git subcommand {head.raw} is known only at run time")
        return
    sub = head.text
    rest = args[i + 1 :]
    if sub in _NEVER:
        a.deny("bash.git", f"git {sub} is not allowed: {_NEVER[sub]}")
        return
    if sub not in allowed:
        a.deny("bash.git", f"git {sub} is not an allowed git subcommand (allowed: {', '.join(sorted(allowed))})")
        return
    _options(a, sub, rest)
    if a.problems:
        return
    _paths(a, sub, rest, prefix)
    if sub in WRITES:
        a.writes_repo = True


def _options(a: Analysis, sub: str, rest: Sequence[Word]) -> None:
    previous = ""
    for w in rest:
        message = previous in _COMMIT_VALUES or (previous[:1] == "-" and previous[1:2] != "-" and previous[-1:] == "m")
        if w.dynamic and not (sub == "commit" and message and not w.splits):
            # a quoted "$(cat <<'EOF' ... EOF)" is one word, the message; anything else could become an option
            a.deny("bash.dynamic-argument", f"git {sub} with an argument known only at run time ({w.raw}) "
                   "could get an option")
            return
        name = w.text.partition("=")[0] if w.value is not None else ""
        previous = name
        if name.startswith("--") and any(len(name) >= 4 and d.startswith(name) for d in _OPTION_DENY):
            a.deny("bash.git", f"git {sub} {name} runs a program, writes a file or reads outside the repository")
        elif sub == "grep" and name.startswith("-O") and not name.startswith("--"):
            a.deny("bash.git", "git grep -O opens a pager")
        elif sub == "commit" and (name in ("-F", "--file") or (name.startswith("-F") and name[:2] != "--")):
            a.deny("bash.git", "git commit -F reads the message from a file; use -m")
        elif sub == "commit" and name == "--amend":
            a.deny("bash.git", f"git commit --amend is not allowed: {NO_REWRITE}")
        elif sub == "reset" and name in ("--hard", "--soft", "--keep", "--merge"):
            a.deny("bash.git", f"git reset {name} is not allowed: {NO_REWRITE}; git restore FILE undoes a change")
        elif sub == "config" and not (set(t.text for t in rest) & _READ_CONFIG):
            a.deny("bash.git", f"git config is not allowed: {NO_CONFIG}")
            return
        elif sub == "remote" and rest and not (set(t.text for t in rest[:1]) & _REMOTE_READ):
            a.deny("bash.git", f"git remote {rest[0].text} is not allowed: {NO_NETWORK}")
            return
        elif sub == "reflog" and w is rest[0] and w.text in ("expire", "delete"):
            a.deny("bash.git", f"git reflog {w.text} is not allowed: {NO_REWRITE}")
        elif sub == "clean" and not any(t.text in ("-n", "--dry-run") for t in rest):
            a.deny("bash.git", "git clean deletes files the policy cannot see: remove them by name with rm")
            return
    if sub == "reset":
        _, pos = split_options(list(rest), "", frozenset())
        before_dashdash = _before_dashdash(rest)
        for w in pos:
            if w in before_dashdash and _REV_LIKE.search(w.text) and w.text not in ("HEAD", "@"):
                a.deny("bash.git", f"git reset {w.text} moves the branch: {NO_REWRITE}")


def _before_dashdash(rest: Sequence[Word]) -> list[Word]:
    out = []
    for w in rest:
        if w.text == "--":
            break
        out.append(w)
    return out


def _paths(a: Analysis, sub: str, rest: Sequence[Word], prefix: str) -> None:
    # value-taking options differ per subcommand; for the ones that write, none of ours takes a value
    short = "".join(o[1] for o in _VALUE_OPTS if len(o) == 2) if sub not in WRITES else ""
    long = frozenset(o for o in _VALUE_OPTS if o.startswith("--")) if sub not in WRITES else frozenset()
    opts, pos = split_options(list(rest), short, long)
    for o in opts:
        if o.name in ("--contents", "--ignore-revs-file") and (vw := value_word(o)) is not None:
            a.accesses.append(Access("read", _prefixed(vw, prefix)))
    mode: Mode
    if sub == "add":
        mode = "stage"
    elif sub in ("rm", "mv", "restore"):
        mode = "write"
    elif sub == "checkout":
        # only what follows `--` (or every word of `checkout REV -- PATHS`) is a path it overwrites
        after = _after_dashdash(rest)
        a.accesses.extend(Access("write", _prefixed(w, prefix)) for w in after)
        return
    elif sub in ("commit", "stash", "switch", "branch", "tag", "merge", "cherry-pick", "revert", "reset", "notes",
                 "remote", "config", "clean", "reflog"):
        if sub in ("commit", "reset", "stash"):
            after = _after_dashdash(rest)
            a.accesses.extend(Access("read", _prefixed(w, prefix)) for w in after)
        return
    else:
        mode = "read"
    for w in pos:
        if sub == "commit":
            continue
        text = w.text
        if mode == "read" and ":" in text and w.value is not None and not text.startswith("/"):
            # REV:PATH (git show HEAD:bot/x.py) reads PATH as it is in REV
            path = text.split(":", 1)[1]
            if path:
                a.accesses.append(Access("read", Word(path, path, (_lit(path),), False, False)))
            continue
        a.accesses.append(Access(mode, _prefixed(w, prefix)))


def _after_dashdash(rest: Sequence[Word]) -> list[Word]:
    for i, w in enumerate(rest):
        if w.text == "--" and w.value is not None:
            return list(rest[i + 1 :])
    return []


def _prefixed(w: Word, prefix: str) -> Word:
    if not prefix or w.value is None or w.text.startswith(("/", "~")):
        return w
    text = prefix + w.text
    return Word(text, text, (_lit(text),) if not w.glob else ((_lit(prefix),) + w.parts), w.glob, w.dynamic)


def _lit(text: str) -> GlobPart:
    return GlobPart("lit", text)
