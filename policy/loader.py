"""policy.yaml text to a validated, frozen Policy; every schema error carries the line it is on.

Size: about 470 lines, one concept (the schema of policy.yaml): one reader per section over the same
line-tracking document, so every error names its line; the model it builds is policy.model's.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
from collections.abc import Mapping
from typing import Any, TypeVar, cast

import yaml

from policy.errors import PolicyLoadError
from policy.model import (
    DEFAULT_MIGRATION_PATHS,
    KNOWN_SOURCES,
    BashRules,
    Effect,
    Example,
    Limits,
    Migrations,
    Policy,
    Profile,
    RateLimits,
    Rule,
    ToolCall,
)
from policy.paths import PathRules, PatternSet

SCHEMA_VERSION = 1
DEFAULT_POLICY_RESOURCE = "default.yaml"
REQUIRED_KINDS = ("feature", "fix", "review", "dry-run")

T = TypeVar("T")


class _Doc:
    """The YAML document as plain values, with the line of every key, and the errors found so far."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[str, int] = {}
        self.errors: list[tuple[int | None, str, str]] = []
        self._constructor = yaml.SafeLoader("")

    def to_python(self, node: yaml.Node, key: str) -> Any:
        self.lines.setdefault(key, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                name = str(self._constructor.construct_object(knode, deep=True))
                sub = f"{key}.{name}" if key else name
                if name in out:
                    self.errors.append((knode.start_mark.line + 1, sub, f"duplicate key {sub!r}"))
                self.lines[sub] = knode.start_mark.line + 1
                out[name] = self.to_python(vnode, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.to_python(item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._constructor.construct_object(node, deep=True)

    def line(self, key: str) -> int | None:
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key.rpartition(".")[0] if "." in key else ""
        return None

    def error(self, key: str, message: str) -> None:
        self.errors.append((self.line(key), key, message))

    # typed getters: on a wrong type they record an error and return the default

    def get(self, data: Mapping[str, Any], key: str, name: str, kind: type[T], default: T) -> T:
        full = f"{key}.{name}" if key else name
        if name not in data:
            return default
        value = data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return cast(T, float(value))
        if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
            return cast(T, str(value))
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(full, f"{full} must be {_type_name(kind)}, not {type(value).__name__}")
            return default
        return value

    def strings(self, data: Mapping[str, Any], key: str, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        full = f"{key}.{name}" if key else name
        value = data.get(name)
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.error(full, f"{full} must be a list of non-empty strings")
            return default
        return tuple(value)

    def mapping(self, data: Mapping[str, Any], key: str, name: str) -> dict[str, Any]:
        full = f"{key}.{name}" if key else name
        value = data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(full, f"{full} must be a mapping")
            return {}
        return value

    def known(self, data: Mapping[str, Any], key: str, allowed: set[str]) -> None:
        for name in data:
            if name not in allowed:
                full = f"{key}.{name}" if key else name
                self.error(full, f"unknown key {full!r} (expected one of: {', '.join(sorted(allowed))})")


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}.get(
        kind, kind.__name__
    )


_TOP = {
    "schema",
    "version",
    "workspace",
    "test_command",
    "setup_command",
    "dependency_files",
    "autofix_mode",
    "ask_timeout_seconds",
    "rate_limits",
    "limits",
    "profiles",
    "paths",
    "bash",
    "rules",
    "tests",
    "migrations",
}
_NUMERIC_LIMITS = {
    "max_turns",
    "max_tokens",
    "max_cost_usd",
    "wall_time_seconds",
    "max_changed_files",
    "max_diff_bytes",
    "workspace_bytes",
}
_LIMITS = _NUMERIC_LIMITS | {"models", "test_rounds"}
_MAX_TEST_ROUNDS = 10
_DEFAULT_LIMITS = Limits(40, 2_000_000, 5.0, 1800, 30, 200_000)
_MODEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/*?\[\]-]*$")
_MIN_WORKSPACE_BYTES = 1 << 20  # below a megabyte not even a small clone fits


def _limits(doc: _Doc, data: Mapping[str, Any], key: str, base: Limits) -> Limits:
    doc.known(data, key, _LIMITS)
    values: dict[str, Any] = {}
    for name in sorted(_NUMERIC_LIMITS):
        kind: type = float if name == "max_cost_usd" else int
        value = doc.get(data, key, name, kind, getattr(base, name))
        if value <= 0:
            doc.error(f"{key}.{name}", f"{key}.{name} must be positive")
        elif name == "workspace_bytes" and value < _MIN_WORKSPACE_BYTES:
            doc.error(f"{key}.{name}", f"{key}.{name} must be at least {_MIN_WORKSPACE_BYTES} (1 MiB)")
        values[name] = value
    rounds = doc.get(data, key, "test_rounds", int, base.test_rounds)
    if not 0 <= rounds <= _MAX_TEST_ROUNDS:
        doc.error(f"{key}.test_rounds", f"{key}.test_rounds must be between 0 and {_MAX_TEST_ROUNDS}")
        rounds = base.test_rounds
    values["test_rounds"] = rounds
    if "models" in data and data["models"] is not None and not isinstance(data["models"], list):
        doc.error(f"{key}.models", f"{key}.models must be a list of model-name patterns")
        values["models"] = base.models
    elif "models" not in data:
        values["models"] = base.models  # a profile inherits the top-level list
    else:
        models = doc.strings(data, key, "models")
        for pattern in models:
            if not _MODEL_PATTERN.match(pattern):
                doc.error(f"{key}.models", f"{key}.models: {pattern!r} is not a model-name pattern "
                          "(letters, digits, . _ - : @ / and the wildcards * ? [])")
        values["models"] = models
    return Limits(**values)


def _rate_limits(doc: _Doc, data: Mapping[str, Any]) -> RateLimits:
    key = "rate_limits"
    r = doc.mapping(data, "", key)
    doc.known(r, key, {"commands_per_hour", "autofixes_per_hour", "cooldown_after_failure_seconds", "per_source"})
    values: dict[str, int] = {}
    for name, default in (("commands_per_hour", 10), ("autofixes_per_hour", 5),
                          ("cooldown_after_failure_seconds", 900)):
        values[name] = doc.get(r, key, name, int, default)
        if values[name] < 0:  # 0 is allowed: it turns that kind of task off
            doc.error(f"{key}.{name}", f"{key}.{name} must be 0 or more")
    per_source: dict[str, int] = {}
    for source, cap in doc.mapping(r, key, "per_source").items():
        full = f"{key}.per_source.{source}"
        if source not in KNOWN_SOURCES:
            doc.error(full, f"{full}: unknown source {source!r} (expected one of: {', '.join(KNOWN_SOURCES)})")
        elif not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
            doc.error(full, f"{full} must be an integer, 0 or more (tasks per hour), not {cap!r}")
        else:
            per_source[source] = cap
    return RateLimits(**values, per_source=per_source)


def _effect(doc: _Doc, value: Any, key: str, default: Effect = Effect.DENY) -> Effect:
    try:
        return Effect(value)
    except ValueError:
        doc.error(key, f"{key} must be one of allow, deny, ask (got {value!r})")
        return default


def _patterns(doc: _Doc, data: Mapping[str, Any], key: str, name: str, default: tuple[str, ...] = ()) -> PatternSet:
    pats = doc.strings(data, key, name, default)
    for p in pats:
        if p.startswith("!"):
            doc.error(f"{key}.{name}", f"{key}.{name}: negated patterns ({p!r}) are not supported; list what to match")
    return PatternSet([p for p in pats if not p.startswith("!")])


def _migrations(doc: _Doc, data: Mapping[str, Any]) -> Migrations:
    m = doc.mapping(data, "", "migrations")
    doc.known(m, "migrations", {"paths", "ask_before_deploy"})
    ask = doc.get(m, "migrations", "ask_before_deploy", bool, False)
    if "paths" in m and m["paths"] == []:
        return Migrations((), ask)  # said on purpose: no change counts as a migration
    paths = doc.strings(m, "migrations", "paths", DEFAULT_MIGRATION_PATHS)
    for p in paths:
        if p.startswith("!"):
            doc.error("migrations.paths", f"migrations.paths: negated patterns ({p!r}) are not supported; "
                      "list what to match")
    return Migrations(tuple(p for p in paths if not p.startswith("!")), ask)


def _profiles(doc: _Doc, data: Mapping[str, Any], base: Limits) -> dict[str, Profile]:
    raw = doc.mapping(data, "", "profiles")
    out: dict[str, Profile] = {}
    for kind, body in raw.items():
        key = f"profiles.{kind}"
        if not isinstance(body, dict):
            doc.error(key, f"{key} must be a mapping")
            continue
        doc.known(body, key, {"tools", "read_only", "limits", "description"})
        tools = doc.strings(body, key, "tools")
        read_only = doc.get(body, key, "read_only", bool, False)
        if read_only:
            for t in tools:
                if t in ("Write", "Edit", "MultiEdit", "NotebookEdit"):
                    doc.error(f"{key}.tools", f"{key} is read_only but allows the writing tool {t}")
        limits = _limits(doc, doc.mapping(body, key, "limits"), f"{key}.limits", base)
        out[kind] = Profile(kind, tools, read_only, limits)
    for kind in REQUIRED_KINDS:
        if kind not in out:
            doc.error("profiles", f"profiles.{kind} is missing (every policy needs {', '.join(REQUIRED_KINDS)})")
    return out


def _rules(doc: _Doc, data: Mapping[str, Any]) -> tuple[Rule, ...]:
    raw = data.get("rules") or []
    if not isinstance(raw, list):
        doc.error("rules", "rules must be a list")
        return ()
    out: list[Rule] = []
    seen: set[str] = set()
    for i, body in enumerate(raw):
        key = f"rules[{i}]"
        if not isinstance(body, dict):
            doc.error(key, f"{key} must be a mapping")
            continue
        doc.known(body, key, {"id", "effect", "reason", "tools", "kinds", "commands", "paths", "access"})
        rid = doc.get(body, key, "id", str, "")
        if not rid:
            doc.error(key, f"{key} needs an id")
        elif rid in seen:
            doc.error(f"{key}.id", f"duplicate rule id {rid!r}")
        seen.add(rid)
        effect = _effect(doc, body.get("effect"), f"{key}.effect")
        reason = doc.get(body, key, "reason", str, "")
        if not reason:
            doc.error(key, f"{key} needs a reason the owner can read")
        access = doc.get(body, key, "access", str, "any")
        if access not in ("read", "write", "any"):
            doc.error(f"{key}.access", f"{key}.access must be read, write or any")
            access = "any"
        commands = tuple(tuple(c.split()) for c in doc.strings(body, key, "commands"))
        tools, kinds, paths = (doc.strings(body, key, n) for n in ("tools", "kinds", "paths"))
        if not (tools or kinds or commands or paths):
            doc.error(key, f"{key} has no condition (tools, kinds, commands or paths): it would match everything")
        out.append(Rule(rid, effect, reason, tools, kinds, commands, paths, cast(Any, access)))
    return tuple(out)


def _examples(doc: _Doc, data: Mapping[str, Any], kinds: set[str]) -> tuple[Example, ...]:
    raw = data.get("tests") or []
    if not isinstance(raw, list):
        doc.error("tests", "tests must be a list")
        return ()
    out: list[Example] = []
    for i, body in enumerate(raw):
        key = f"tests[{i}]"
        if not isinstance(body, dict):
            doc.error(key, f"{key} must be a mapping")
            continue
        doc.known(body, key, {"name", "kind", "tool", "input", "expect", "rule"})
        tool = doc.get(body, key, "tool", str, "")
        call_input = body.get("input")
        if not tool or not isinstance(call_input, dict):
            doc.error(key, f"{key} needs a tool and an input mapping")
            continue
        kind = doc.get(body, key, "kind", str, "feature")
        if kind not in kinds:
            doc.error(f"{key}.kind", f"{key}.kind {kind!r} is not a profile of this policy")
        expect = _effect(doc, body.get("expect"), f"{key}.expect")
        name = doc.get(body, key, "name", str, f"{tool} {call_input}")
        rule = body.get("rule")
        out.append(Example(name, ToolCall(tool, call_input, kind), expect, str(rule) if rule else None, doc.line(key)))
    return tuple(out)


def _yaml_line(exc: yaml.YAMLError) -> int | None:
    mark = getattr(exc, "problem_mark", None)
    return mark.line + 1 if mark is not None else None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The whole of a YAML error in one line: what was being read, where it began, what went wrong and where
    (PyYAML's own text spans lines, and its first line alone, "while parsing a flow node", says nothing)."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"not valid YAML: {' '.join(str(exc).split())}"
    parts = []
    if exc.context:
        began = exc.context_mark
        parts.append(exc.context + (f" (begun at line {began.line + 1}, column {began.column + 1})"
                                    if began is not None and exc.problem_mark is not None
                                    and began.line != exc.problem_mark.line else ""))
    if exc.problem:
        at = exc.problem_mark
        parts.append(exc.problem + (f" at line {at.line + 1}, column {at.column + 1}" if at is not None else ""))
    return "not valid YAML: " + ", ".join(parts or [type(exc).__name__])


def load(text: str, *, source: str = "<string>") -> Policy:
    """Parse and validate policy YAML text.

    Raises PolicyLoadError naming the first bad key and its 1-based line (all problems are in `.problems`).
    The policy's examples (``tests:``) are loaded but not run; ``policy.run_examples`` runs them.

    >>> p = load(open("policy.yaml").read(), source="policy.yaml")
    >>> p.profile("review").read_only
    True
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise PolicyLoadError(_yaml_problem(exc), line=_yaml_line(exc), source=source) from exc
    if not isinstance(root, yaml.MappingNode):
        raise PolicyLoadError("the policy must be a YAML mapping", line=1, source=source)
    doc = _Doc(source)
    data: dict[str, Any] = doc.to_python(root, "")
    doc.known(data, "", _TOP)

    schema = doc.get(data, "", "schema", int, 0)
    if schema != SCHEMA_VERSION:
        doc.error("schema", f"schema must be {SCHEMA_VERSION} (got {data.get('schema')!r})")
    version = doc.get(data, "", "version", str, "")
    if not version:
        doc.error("version", "version is required: name this policy so the audit log can say which one decided")
    workspace = doc.get(data, "", "workspace", str, "/workspace").rstrip("/") or "/"
    if not workspace.startswith("/") or workspace == "/":
        doc.error("workspace", "workspace must be an absolute directory other than /")

    base = _limits(doc, doc.mapping(data, "", "limits"), "limits", _DEFAULT_LIMITS)
    profiles = _profiles(doc, data, base)

    p = doc.mapping(data, "", "paths")
    doc.known(p, "paths", {f.name for f in PathRules.__dataclass_fields__.values()})
    path_rules = PathRules(
        *(_patterns(doc, p, "paths", name) for name in PathRules.__dataclass_fields__),
    )

    b = doc.mapping(data, "", "bash")
    bash_keys = {
        "allow",
        "ask",
        "git_subcommands",
        "python_modules",
        "interpreters",
        "protected_variables",
        "max_command_length",
        "max_commands",
    }
    doc.known(b, "bash", bash_keys)
    bash = BashRules(
        allow=frozenset(doc.strings(b, "bash", "allow")),
        ask=frozenset(doc.strings(b, "bash", "ask")),
        git_subcommands=frozenset(doc.strings(b, "bash", "git_subcommands", ("status", "diff", "log", "show"))),
        python_modules=frozenset(doc.strings(b, "bash", "python_modules", ("pytest",))),
        interpreters=_effect(doc, b.get("interpreters", "deny"), "bash.interpreters"),
        protected_variables=doc.strings(b, "bash", "protected_variables"),
        max_command_length=doc.get(b, "bash", "max_command_length", int, 32768),
        max_commands=doc.get(b, "bash", "max_commands", int, 200),
    )
    for name in ("max_command_length", "max_commands"):
        if getattr(bash, name) <= 0:
            doc.error(f"bash.{name}", f"bash.{name} must be positive")

    rate = _rate_limits(doc, data)
    autofix_mode = doc.get(data, "", "autofix_mode", str, "pr")
    if autofix_mode not in ("pr", "dry-run"):
        doc.error("autofix_mode", "autofix_mode must be pr or dry-run")
    test_command = doc.get(data, "", "test_command", str, "")
    if not test_command.strip():
        doc.error("test_command", "test_command is required (e.g. python -m pytest -q)")

    setup_command = doc.get(data, "", "setup_command", str, "")
    dependency_files = doc.strings(data, "", "dependency_files")
    ask_timeout = doc.get(data, "", "ask_timeout_seconds", int, 600)
    if ask_timeout <= 0:
        doc.error("ask_timeout_seconds", "ask_timeout_seconds must be positive")
    rules = _rules(doc, data)
    migrations = _migrations(doc, data)
    examples = _examples(doc, data, set(profiles))
    if doc.errors:
        line, key, message = doc.errors[0]
        raise PolicyLoadError(message, line=line, key=key, source=source, problems=tuple(doc.errors))
    return Policy(
        schema=schema,
        version=version,
        sha256=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(),
        source=source,
        workspace=workspace,
        profiles=profiles,
        paths=path_rules,
        bash=bash,
        rules=rules,
        rate_limits=rate,
        test_command=test_command,
        setup_command=setup_command,
        dependency_files=dependency_files,
        autofix_mode=cast(Any, autofix_mode),
        ask_timeout_seconds=ask_timeout,
        examples=examples,
        migrations=migrations,
    )


def load_file(path: str | os.PathLike[str]) -> Policy:
    """Read and load a policy file (the only I/O in this package). OSError is mapped to PolicyLoadError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(f"cannot read the policy file: {exc}", source=os.fspath(path)) from exc
    return load(text, source=os.fspath(path))


def default_text() -> str:
    """The shipped default policy (``policy/default.yaml``, a byte-identical copy of the repository's policy.yaml)."""
    return importlib.resources.files("policy").joinpath(DEFAULT_POLICY_RESOURCE).read_text(encoding="utf-8")


def load_default() -> Policy:
    """Load the shipped default policy."""
    return load(default_text(), source="<default policy>")
