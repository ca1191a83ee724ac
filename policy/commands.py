"""What known commands do with their arguments: which words are paths read or written, which options run
other programs or write files, and how wrappers (`env`, `timeout`, `xargs`...) hand over to the inner command.

This is built-in knowledge, not policy: the policy says *which* commands may run; this module says what
running them touches, so the path rules can be applied to it.

Size: about 700 lines, one table of built-in knowledge: a small analyser per known command (what
its arguments read, write or run), each a few lines; splitting the table would only scatter it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from policy.paths import GlobPart
from policy.syntax import Word

# "stage" is `git add PATH`: the path is not written, but it is put into the change (a protected one must not be)
Mode = Literal["read", "write", "list", "stage"]


@dataclass(frozen=True, slots=True)
class Access:
    """A path a command reads, writes or lists."""

    mode: Mode
    word: Word


@dataclass(slots=True)
class Analysis:
    """What a simple command does: the command finally run (after wrappers), its accesses and its problems."""

    argv: list[Word]
    accesses: list[Access] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (rule_id, reason)
    interpreter: bool = False
    extra_unknown: bool = False  # xargs appends arguments nobody can see
    writes_repo: bool = False  # writes outside path arguments (git add/commit)
    lookup_only: bool = False  # `command -v x`: nothing runs
    inner: list[str] = field(default_factory=list)  # literal shell code it runs (`sh -c 'ls'`), checked as such
    inner_argv: list[list[Word]] = field(default_factory=list)  # commands it runs (`find -exec CMD {} +`)
    asks: list[tuple[str, str]] = field(default_factory=list)  # (rule_id, reason) that need the owner's yes

    def deny(self, rule_id: str, reason: str) -> None:
        self.problems.append((rule_id, reason))


# Programs that run code the call does not show (a script, a Makefile, code in an argument): decided by the
# policy's `bash.interpreters` (default allow: the sandbox is sealed, and running code is what tests do anyway).
INTERPRETERS = frozenset(
    "sh bash dash zsh ksh mksh fish csh tcsh busybox perl ruby node nodejs deno bun php lua tclsh "
    "awk gawk mawk nawk eval source . expect watch script parallel ipython pypy pypy3 python2 "
    "make gmake npm npx yarn pnpm tox nox invoke just sqlite3 uv uvx poetry pdm hatch pipenv rye".split()
)
SHELLS = frozenset("sh bash dash zsh ksh mksh".split())
# Run the project's own scripts or environments (`make test`, `uv run pytest`, `poetry run ...`); their
# installs are package installs (asked) before they are this.
TASK_RUNNERS = frozenset("make gmake npm npx yarn pnpm tox nox invoke just uv uvx poetry pdm hatch pipenv rye".split())
# Programs whose only use is the network, which the sandbox does not have.
NETWORK = frozenset(
    "curl wget nc ncat netcat ssh scp sftp rsync telnet ftp socat nmap ping dig nslookup aria2c http https "
    "httpie lynx w3m".split()
)
NO_NETWORK = "the sandbox has no network: work with the workspace and the packages already installed"
INSTALL_ADVICE = (
    "the sandbox has no network and installs need the owner's yes: add the package to requirements.txt "
    "(the owner is asked for that change) and the set-up step installs it"
)
_INSTALLS = {
    "pip": frozenset("install uninstall download wheel".split()),
    "uv": frozenset("add remove sync lock pip tool".split()),
    "poetry": frozenset("add remove install update lock".split()),
    "pipenv": frozenset("install uninstall update lock sync".split()),
    "pipx": frozenset("install uninstall upgrade inject".split()),
    "npm": frozenset("install i add ci uninstall remove update".split()),
    "pnpm": frozenset("install i add remove update".split()),
    "yarn": frozenset("install add remove upgrade".split()),
    "apt": frozenset("install remove upgrade".split()),
    "apt-get": frozenset("install remove upgrade".split()),
    "gem": frozenset(("install",)),
    "cargo": frozenset(("install", "add")),
    "conda": frozenset(("install", "remove", "update", "create")),
    "mamba": frozenset(("install", "remove", "update", "create")),
}
PRIVILEGED = frozenset("sudo su doas chroot unshare nsenter setpriv runuser capsh pkexec".split())
_PYTHON = re.compile(r"python(3(\.\d+)?)?$")


def is_python(name: str) -> bool:
    return bool(_PYTHON.match(name))


def package_install(name: str, args: Sequence[Word]) -> bool:
    """True when ``NAME ARGS`` installs or removes packages (``pip install``, ``uv add``, ``npm i``...)."""
    base = "pip" if name in ("pip", "pip3") or re.match(r"pip3\.\d+$", name) else name
    subs = _INSTALLS.get(base)
    if subs is None:
        return False
    first = next((w.text for w in args if not w.text.startswith("-")), "")
    if base == "uv" and first == "pip":
        second = [w.text for w in args if not w.text.startswith("-")][1:2]
        return bool(second) and second[0] in _INSTALLS["pip"] | {"sync", "compile"}
    return first in subs


# --- option parsing --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opt:
    """An option as given: `name` (``-n`` or ``--name``), its value word if it takes one."""

    name: str
    value: Word | None
    value_text: str | None


def split_options(
    args: Sequence[Word],
    short_values: str = "",
    long_values: frozenset[str] = frozenset(),
    *,
    stop_at_first: bool = False,
) -> tuple[list[Opt], list[Word]]:
    """Split GNU-style arguments into options and positionals (options may follow positionals unless
    `stop_at_first`). `short_values` lists short options taking a value; `long_values` long ones."""
    opts: list[Opt] = []
    pos: list[Word] = []
    i = 0
    only_pos = False
    while i < len(args):
        w = args[i]
        t = w.text
        if only_pos or w.value is None or not t.startswith("-") or t == "-":
            pos.append(w)
            if stop_at_first:
                only_pos = True
            i += 1
            continue
        if t == "--":
            only_pos = True
            i += 1
            continue
        if t.startswith("--"):
            name, eq, val = t.partition("=")
            if eq:
                opts.append(Opt(name, w, val))
            elif name in long_values and i + 1 < len(args):
                opts.append(Opt(name, args[i + 1], args[i + 1].text))
                i += 1
            else:
                opts.append(Opt(name, None, None))
            i += 1
            continue
        j = 1
        while j < len(t):
            c = t[j]
            if c in short_values:
                rest = t[j + 1 :]
                if rest:
                    opts.append(Opt("-" + c, w, rest))
                elif i + 1 < len(args):
                    opts.append(Opt("-" + c, args[i + 1], args[i + 1].text))
                    i += 1
                else:
                    opts.append(Opt("-" + c, None, None))
                break
            opts.append(Opt("-" + c, None, None))
            j += 1
        i += 1
    return opts, pos


def value_word(opt: Opt) -> Word | None:
    """The value of an option as a word of its own (for ``--out=FILE`` only the FILE part)."""
    if opt.value is None or opt.value_text is None:
        return None
    if opt.value.text == opt.value_text:
        return opt.value
    v = opt.value
    return Word(
        opt.value_text,
        opt.value_text if v.value is not None else None,
        _tail_parts(v, opt.value_text),
        v.glob,
        v.dynamic,
    )


def _tail_parts(w: Word, tail: str) -> tuple[GlobPart, ...]:
    if w.value is not None and not w.glob:
        return (GlobPart("lit", tail),)
    return (GlobPart("unknown"),)


def long_match(name: str, target: str) -> bool:
    """``--basete`` is ``--basetemp`` to argparse-style parsers that accept unambiguous prefixes."""
    return len(name) >= 4 and target.startswith(name)


# --- per-command analysers ----------------------------------------------------------------------------------------

Analyser = Callable[[Analysis, list[Word]], None]


def _reads(a: Analysis, words: Sequence[Word], mode: Mode = "read") -> None:
    a.accesses.extend(Access(mode, w) for w in words)


def _no_dynamic(a: Analysis, args: Sequence[Word], name: str) -> None:
    for w in args:
        if w.dynamic:
            a.deny(
                "bash.dynamic-argument", f"{name} with an argument known only at run time ({w.raw}) could get an option"
            )
            return


def _plain(short_values: str = "", long_values: str = "", mode: Mode = "read") -> Analyser:
    lv = frozenset(long_values.split())

    def analyse(a: Analysis, args: list[Word]) -> None:
        _, pos = split_options(args, short_values, lv)
        _reads(a, pos, mode)

    return analyse


def _nopaths(a: Analysis, args: list[Word]) -> None:
    return None


def _printf(a: Analysis, args: list[Word]) -> None:
    if any(w.text == "-v" or w.text.startswith("-v") for w in args[:1]):
        a.deny("bash.printf", "printf -v assigns a shell variable")


def _grep(a: Analysis, args: list[Word]) -> None:
    opts, pos = split_options(
        args, "efmABCdD", frozenset("--regexp --file --max-count --after-context --before-context --context".split())
    )
    pattern_given = False
    for o in opts:
        if o.name in ("-e", "--regexp"):
            pattern_given = True
        elif o.name in ("-f", "--file", "--exclude-from"):
            pattern_given = pattern_given or o.name != "--exclude-from"
            vw = value_word(o)
            if vw is not None:
                a.accesses.append(Access("read", vw))
    _reads(a, pos if pattern_given else pos[1:])


_RG_DENY = ("--pre", "--pre-glob", "--search-zip", "--hostname-bin")
_RG_VALUES = frozenset(
    "--regexp --file --glob --iglob --type --type-not --type-add --type-clear --max-count --after-context "
    "--before-context --context --threads --max-columns --max-depth --max-filesize --ignore-file --colors --color "
    "--encoding --sort --sortr --path-separator --context-separator --field-match-separator "
    "--field-context-separator --replace --engine --dfa-size-limit --regex-size-limit --pre --pre-glob "
    "--hostname-bin --hyperlink-format --generate".split()
)


def _rg(a: Analysis, args: list[Word]) -> None:
    _no_dynamic(a, args, "rg")
    opts, pos = split_options(args, "efgtTmABCjMdErE", _RG_VALUES)
    pattern_given = False
    for o in opts:
        if any(long_match(o.name, d) for d in _RG_DENY) or o.name == "-z":
            a.deny("bash.rg", f"rg {o.name} runs other programs")
        elif o.name in ("-e", "--regexp", "--files", "--type-list", "-f", "--file"):
            pattern_given = True
            if o.name in ("-f", "--file") and (vw := value_word(o)) is not None:
                a.accesses.append(Access("read", vw))
        elif o.name == "--ignore-file" and (vw := value_word(o)) is not None:
            a.accesses.append(Access("read", vw))
    _reads(a, pos if pattern_given else pos[1:])


_FIND_DENY = frozenset("-fprint -fprint0 -fprintf -fls".split())
_FIND_EXEC = frozenset("-exec -execdir -ok -okdir".split())
UNKNOWN_PATH = Word("{}", None, (GlobPart("unknown"),), False, True, True)


def _find(a: Analysis, args: list[Word]) -> None:
    _no_dynamic(a, args, "find")
    paths: list[Word] = []
    i = 0
    while i < len(args) and args[i].text in ("-H", "-L", "-P"):
        i += 1
    while i < len(args) and not args[i].text.startswith(("-", "(", "!", ")")):
        paths.append(args[i])
        i += 1
    while i < len(args):
        w = args[i]
        if w.text in _FIND_DENY:
            a.deny("bash.find", f"find {w.text} writes a file; print to stdout and redirect it instead")
        elif w.text == "-delete":
            a.deny("bash.find", "find -delete could delete protected files: list them with find, then rm them by name")
        elif w.text in _FIND_EXEC:
            # the command runs once per file found (or with many): `{}` is a path under the start points
            j = i + 1
            inner: list[Word] = []
            while j < len(args) and args[j].text not in (";", "+"):
                inner.append(UNKNOWN_PATH if "{}" in args[j].text else args[j])
                j += 1
            if not inner:
                a.deny("bash.find", f"find {w.text} without a command")
            a.inner_argv.append(inner)
            i = j
        i += 1
    _reads(a, paths or [], "list")


# sed: only scripts made of commands that neither run nor read nor write anything beyond the given files
_SED_SIMPLE = set("pdDnNPhHgGxlq=Q{}zF")


def sed_script_problem(script: str) -> str | None:
    """Why a sed script is not allowed (it uses w/W/r/R/e, an s///e or s///w flag, or cannot be read), else None.

    >>> sed_script_problem("1,20p"), sed_script_problem("s/a/b/w out")
    (None, 'the s command flag w writes a file')
    """
    i, n = 0, len(script)

    def skip_regex(i: int, delim: str) -> int:
        while i < n and script[i] != delim:
            if script[i] == "\\":
                i += 1
            elif script[i] == "\n":
                return -1
            i += 1
        return i + 1 if i < n else -1

    while i < n:
        c = script[i]
        if c in " \t\n;!":
            i += 1
            continue
        # addresses
        while i < n and (script[i].isdigit() or script[i] in "$,~+"):
            i += 1
        if i < n and (script[i] == "/" or script[i] == "\\"):
            if script[i] == "\\":
                if i + 1 >= n:
                    return "an unreadable address"
                delim = script[i + 1]
                i += 2
            else:
                delim = "/"
                i += 1
            i = skip_regex(i, delim)
            if i == -1:
                return "an unterminated address"
            while i < n and script[i] in "IM":
                i += 1
            continue
        if i >= n:
            break
        c = script[i]
        if c in " \t\n;!":
            continue
        if c == "s" or c == "y":
            if i + 1 >= n:
                return f"an incomplete {c} command"
            delim = script[i + 1]
            if delim in "\\\n":
                return f"the {c} command with delimiter {delim!r}"
            i = skip_regex(i + 2, delim)
            if i == -1:
                return f"an unterminated {c} command"
            i = skip_regex(i, delim)
            if i == -1:
                return f"an unterminated {c} command"
            if c == "s":
                while i < n and script[i] not in ";\n}":
                    flag = script[i]
                    if flag in "we":
                        return f"the s command flag {flag} " + ("writes a file" if flag == "w" else "runs a command")
                    if flag not in "gpiImM0123456789 \t":
                        return f"the s command flag {flag!r}"
                    i += 1
            continue
        if c in "aic":
            # text commands: the rest of the line is text
            end = script.find("\n", i)
            i = n if end == -1 else end + 1
            continue
        if c in "wWrReb:tTv":
            if c in "wW":
                return f"the {c} command writes a file"
            if c in "rR":
                return f"the {c} command reads a file"
            if c == "e":
                return "the e command runs a command"
            return f"the {c} command (labels and branches are not allowed)"
        if c == "#":
            end = script.find("\n", i)
            i = n if end == -1 else end + 1
            continue
        if c not in _SED_SIMPLE:
            return f"the sed command {c!r}"
        i += 1
        if c in "qQlL":
            while i < n and script[i].isdigit():
                i += 1
    return None


def _sed(a: Analysis, args: list[Word]) -> None:
    _no_dynamic(a, args, "sed")
    opts, pos = split_options(args, "efl", frozenset("--expression --file --line-length".split()))
    scripts: list[str] = []
    in_place = False
    for o in opts:
        if o.name in ("-e", "--expression") and o.value_text is not None:
            scripts.append(o.value_text)
        elif o.name in ("-f", "--file"):
            a.deny("bash.sed", "sed -f reads its script from a file the policy cannot check")
        elif o.name in ("-i", "--in-place") or o.name.startswith("--in-place"):
            in_place = True
        elif o.name == "-s" or o.name.startswith("--s"):
            pass
    # -i with a suffix is parsed as single-letter flags by split_options: any -i... word sets in-place
    if any(w.text.startswith("-i") or w.text.startswith("--in-place") for w in args if w.value is not None):
        in_place = True
    if not scripts:
        if not pos:
            a.deny("bash.sed", "sed without a script")
            return
        scripts.append(pos[0].text)
        pos = pos[1:]
    for script in scripts:
        why = sed_script_problem(script)
        if why is not None:
            a.deny("bash.sed", f"sed script not allowed: {why}")
    _reads(a, pos, "write" if in_place else "read")


def _sort(a: Analysis, args: list[Word]) -> None:
    opts, pos = split_options(
        args, "kotTS", frozenset("--key --output --field-separator --temporary-directory --buffer-size".split())
    )
    for o in opts:
        if long_match(o.name, "--compress-program"):
            a.deny("bash.sort", "sort --compress-program runs another program")
        elif o.name in ("-o", "--output") and (vw := value_word(o)) is not None:
            a.accesses.append(Access("write", vw))
        elif o.name in ("-T", "--temporary-directory") and (vw := value_word(o)) is not None:
            a.accesses.append(Access("write", vw))
    _reads(a, pos)


def _uniq(a: Analysis, args: list[Word]) -> None:
    _, pos = split_options(args, "fsw", frozenset("--skip-fields --skip-chars --check-chars".split()))
    _reads(a, pos[:1])
    _reads(a, pos[1:2], "write")


def _cp(a: Analysis, args: list[Word]) -> None:
    _no_dynamic(a, args, "cp")
    opts, pos = split_options(args, "tS", frozenset("--target-directory --suffix".split()))
    target = [vw for o in opts if o.name in ("-t", "--target-directory") and (vw := value_word(o)) is not None]
    if target:
        _reads(a, pos)
        _reads(a, target, "write")
    else:
        _reads(a, pos[:-1])
        _reads(a, pos[-1:], "write")


def _writes(short_values: str = "", long_values: str = "", skip_first: bool = False) -> Analyser:
    lv = frozenset(long_values.split())

    def analyse(a: Analysis, args: list[Word]) -> None:
        _no_dynamic(a, args, a.argv[0].text)
        opts, pos = split_options(args, short_values, lv)
        for o in opts:
            if o.name in ("-t", "--target-directory") and (vw := value_word(o)) is not None:
                a.accesses.append(Access("write", vw))
            if o.name in ("-r", "--reference") and "r" in short_values and (vw := value_word(o)) is not None:
                a.accesses.append(Access("read", vw))
        if skip_first and not any(o.name == "--reference" for o in opts):
            pos = pos[1:]
        _reads(a, pos, "write")

    return analyse


_MODE = re.compile(r"([ugoa]*[-+=][rwxXstugo]*,?)+$|[0-7]{3,4}$")


def _chmod(a: Analysis, args: list[Word]) -> None:
    _no_dynamic(a, args, "chmod")
    mode_seen = False
    for w in args:
        t = w.text
        if not mode_seen and _MODE.match(t):
            mode_seen = True
        elif t.startswith("--reference="):
            mode_seen = True
            a.accesses.append(Access("read", Word(t[12:], t[12:], (_lit_part(t[12:]),), False, False)))
        elif t in ("-R", "-v", "-c", "-f", "--recursive", "--verbose", "--changes", "--silent", "--quiet"):
            continue
        elif t.startswith("-"):
            a.deny("bash.chmod", f"chmod option {t} is not understood")
        else:
            a.accesses.append(Access("write", w))


def _tree(a: Analysis, args: list[Word]) -> None:
    opts, pos = split_options(args, "LIPo", frozenset())
    for o in opts:
        if o.name == "-o" and (vw := value_word(o)) is not None:
            a.accesses.append(Access("write", vw))
    _reads(a, pos, "list")


def _cd(a: Analysis, args: list[Word]) -> None:
    _, pos = split_options(args)
    if len(pos) != 1 or pos[0].value is None or pos[0].glob or pos[0].text in ("-",) or pos[0].text.startswith("~"):
        a.deny("bash.cd", "cd to a directory known only at run time (or home, or -) is not allowed")
        return
    _reads(a, pos, "list")


_PYTEST_DENY = ("--basetemp", "--override-ini", "--config-file", "--rootdir", "--pyargs")
_PYTEST_WRITES = ("--junitxml", "--junit-xml", "--resultlog", "--result-log", "--report-log", "--html", "--log-file")
_PYTEST_VALUES = frozenset(
    "--basetemp --override-ini --config-file --rootdir --junitxml --junit-xml --resultlog --result-log --report-log "
    "--html --log-file --tb --maxfail --durations --deselect --ignore --ignore-glob --log-level --capture "
    "--import-mode --confcutdir --color --timeout --dist --cov --cov-report --log-cli-level -n".split()
)


def _pytest(a: Analysis, args: list[Word]) -> None:
    _no_dynamic(a, args, "pytest")
    opts, pos = split_options(args, "kmpcoWrn", _PYTEST_VALUES)
    for o in opts:
        if o.name in ("-c", "-o") or any(long_match(o.name, d) for d in _PYTEST_DENY):
            a.deny("bash.pytest", f"pytest {o.name} is not allowed (it can delete directories or change configuration)")
        elif any(long_match(o.name, d) for d in _PYTEST_WRITES) or o.name == "--debug" and o.value_text:
            vw = value_word(o)
            if vw is not None:
                a.accesses.append(Access("write", vw))
        elif o.name == "--cov-report" and o.value_text and ":" in o.value_text:
            a.deny("bash.pytest", "pytest --cov-report with an output path writes files")
    tests = []
    for w in pos:
        head = w.text.split("::", 1)[0]
        tests.append(w if head == w.text else Word(head, head, (_lit_part(head),), False, False))
    _reads(a, tests)


def _lit_part(text: str) -> GlobPart:
    return GlobPart("lit", text)


_PY_FLAGS = frozenset("-B -u -q -O -OO -E -s -S -I -P -b -bb -d -v -R".split())


def _python(a: Analysis, args: list[Word], modules: frozenset[str]) -> None:
    i = 0
    while i < len(args) and (args[i].text in _PY_FLAGS or args[i].text in ("-W", "-X")):
        i += 2 if args[i].text in ("-W", "-X") else 1
    rest = args[i:]
    if not rest:
        a.interpreter = True  # a program on stdin
        return
    first = rest[0].text
    if first in ("--version", "-V", "-VV", "--help", "-h"):
        return
    if first == "-m" and len(rest) > 1 and rest[1].value is not None:
        module = rest[1].text
        if package_install("pip" if module == "pip" else module, rest[2:]):
            a.asks.append(("bash.package-install", f"python -m {module} {rest[2].text}: {INSTALL_ADVICE}"))
        elif module == "pytest":
            _pytest(a, rest[2:])
        elif module in modules:
            _no_dynamic(a, rest[2:], module)
            _reads(a, [w for w in rest[2:] if not w.text.startswith("-")])
        else:
            a.interpreter = True  # any other module runs code the call does not show
            _reads(a, [w for w in rest[2:] if not w.text.startswith("-") and not w.dynamic])
        return
    a.interpreter = True
    if first == "-c":
        return  # inline code: not parsed here; `bash.interpreters` decides
    if not first.startswith("-"):
        _reads(a, rest[:1])  # the script
        _reads(a, [w for w in rest[1:] if not w.text.startswith("-") and not w.dynamic])


def _shell(a: Analysis, args: list[Word]) -> None:
    """``sh -c 'CODE'`` with literal code is unwrapped: the engine checks CODE like any command line."""
    i = 0
    code_next = False
    while i < len(args):
        t = args[i].text
        if t == "-c" or (t.startswith("-") and not t.startswith("--") and "c" in t[1:]):
            code_next = True
            i += 1
            continue
        if t in ("-o", "+o", "-O", "+O") and i + 1 < len(args):
            i += 2
            continue
        if t.startswith(("-", "+")) and t not in ("-", "--"):
            i += 1
            continue
        break
    rest = args[i:]
    if code_next:
        if rest and rest[0].value is not None:
            a.inner.append(rest[0].text)
        else:
            a.interpreter = True  # code known only at run time
        return
    a.interpreter = True
    if rest:
        _reads(a, rest[:1])  # a script in the workspace


def _eval(a: Analysis, args: list[Word]) -> None:
    if args and all(w.value is not None for w in args):
        a.inner.append(" ".join(w.text for w in args))
    else:
        a.interpreter = True


def _source(a: Analysis, args: list[Word]) -> None:
    a.interpreter = True
    _reads(a, args[:1])


def _date(a: Analysis, args: list[Word]) -> None:
    opts, _ = split_options(args, "fdrI", frozenset("--file --date --reference --iso-8601".split()))
    for o in opts:
        if o.name in ("-f", "--file", "-r", "--reference") and (vw := value_word(o)) is not None:
            a.accesses.append(Access("read", vw))


def _files0(inner: Analyser) -> Analyser:
    """`wc`, `du` and `sort` read the names of the files to read from a file with ``--files0-from``."""

    def analyse(a: Analysis, args: list[Word]) -> None:
        if any(w.text.startswith("--files0") for w in args):
            a.deny("bash.files0-from", "--files0-from reads file names the policy cannot see: name the files")
            return
        inner(a, args)

    return analyse


KNOWN: dict[str, Analyser] = {
    **{
        n: _nopaths
        for n in (
            "echo true false pwd sleep seq basename dirname test [ which type uname whoami tr : export unset "
            "declare local readonly typeset set shopt id hostname nproc ps jq column paste fold rev expand"
        ).split()
    },
    "date": _date,
    "printf": _printf,
    **{n: _plain("nc", "--lines --bytes") for n in ("head", "tail")},
    **{n: _plain() for n in "cat nl tac comm cmp md5sum sha1sum sha256sum file realpath readlink xxd od".split()},
    "wc": _files0(_plain()),
    "cut": _plain("dfcb", "--delimiter --fields --characters --bytes"),
    "stat": _plain("c", "--format --printf"),
    "diff": _plain("UCxXI", "--unified --context --label --exclude --exclude-from --ignore-matching-lines"),
    "du": _files0(_plain("dB", "--max-depth --block-size", "list")),
    "ls": _plain("IwT", "--ignore --hide --width --tabsize --format --sort --time-style --block-size", "list"),
    "tree": _tree,
    "grep": _grep,
    "egrep": _grep,
    "fgrep": _grep,
    "rg": _rg,
    "find": _find,
    "sed": _sed,
    "sort": _files0(_sort),
    "uniq": _uniq,
    "cp": _cp,
    "mv": _writes("tS", "--target-directory --suffix"),
    "rm": _writes(),
    "rmdir": _writes(),
    "mkdir": _writes("m", "--mode"),
    "touch": _writes("dtr", "--date --reference"),
    "tee": _writes(),
    "chmod": _chmod,
    "cd": _cd,
    "pytest": _pytest,
    "py.test": _pytest,
    **{n: _shell for n in SHELLS},
    "eval": _eval,
    "source": _source,
    ".": _source,
}
