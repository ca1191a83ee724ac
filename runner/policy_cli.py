"""`agent-runner policy` subcommands: check, test, validate, explain.

Exit codes: check and explain exit 0 on allow, 1 on deny or ask, 2 on a usage error (bad JSON, unreadable or
invalid policy); test and validate exit 0 when the policy is valid and all its examples pass, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # the engine (bashlex, tree-sitter) is imported by the commands that decide, not by `--help`
    from policy import Decision, Policy, ToolCall
    from runner.service.policy_store import PolicyVersion

POLICY_ENV = "AGENT_RUNNER_POLICY"
HOME_ENV = "AGENT_RUNNER_HOME"
DEFAULT_POLICY_FILE = "policy.yaml"
EXIT_ALLOW, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `policy` command and its subcommands; each sets ``func`` returning the exit code."""
    env = (f"environment: {POLICY_ENV} (the policy file when none is given), {HOME_ENV} (the service's state, "
           "for --active)")
    parser = subparsers.add_parser("policy", help="check, test, validate and explain the tool-call policy",
                                   epilog=env)
    sub = parser.add_subparsers(dest="policy_command", required=True,
                                metavar="{check,test,validate,explain,history}")

    def common(p: argparse.ArgumentParser) -> None:
        which = p.add_mutually_exclusive_group()
        which.add_argument(
            "--policy", metavar="FILE", help=f"policy file (default: ${POLICY_ENV}, ./policy.yaml, built-in)"
        )
        which.add_argument("--active", action="store_true",
                           help=f"the policy the service has active (PUT /policy, /policy set), from the state "
                                f"file under ${HOME_ENV}; said on stderr")

    check = sub.add_parser("check", epilog=env,
                           help="decide one tool call (or a JSON-lines batch) and print the decision")
    common(check)
    check.add_argument("--kind", default="feature", help="task kind (feature, fix, review, dry-run)")
    check.add_argument("--tool", help="tool name, e.g. Bash, Read, Write")
    check.add_argument("--input", dest="tool_input", metavar="JSON", help="the tool's input as a JSON object")
    check.add_argument("--batch", metavar="FILE", help='JSON lines {"tool", "input", "kind"?}; "-" for stdin')
    check.set_defaults(func=cmd_check)

    test = sub.add_parser("test", epilog=env, help="run the policy's own examples (its tests: section)")
    common(test)
    test.set_defaults(func=cmd_test)

    validate = sub.add_parser("validate", epilog=env,
                              help="check a policy file's schema and examples, with line numbers")
    validate.add_argument("file", nargs="?", help="policy file (default: as for --policy)")
    validate.add_argument("--policy", dest="policy", help=argparse.SUPPRESS)
    validate.set_defaults(func=cmd_validate)

    explain = sub.add_parser("explain", epilog=env,
                             help="show the parsed commands of a call and the rule that decided each")
    common(explain)
    explain.add_argument("--kind", default="feature")
    explain.add_argument("--tool", required=True)
    explain.add_argument("--input", dest="tool_input", metavar="JSON", required=True)
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    explain.set_defaults(func=cmd_explain)

    history = sub.add_parser("history", help="the service's policy versions, newest first, and which is active",
                             epilog=f"environment: {HOME_ENV} (the service's state; default ~/.agent-runner)",
                             description="Every policy the service recorded (PUT /policy, the chat's /policy set, "
                                         "rollbacks) from the state file under AGENT_RUNNER_HOME; nothing is "
                                         "created when there is none.")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--json", action="store_true", help="print one JSON array")
    history.set_defaults(func=cmd_history)


# --- policy resolution ---------------------------------------------------------------------------------------------


def resolve_policy_path(explicit: str | None, environ: Mapping[str, str], cwd: Path) -> str | None:
    """The policy file to use: --policy, else $AGENT_RUNNER_POLICY, else ./policy.yaml, else None (built-in)."""
    if explicit:
        return explicit
    if environ.get(POLICY_ENV):
        return environ[POLICY_ENV]
    local = cwd / DEFAULT_POLICY_FILE
    return str(local) if local.is_file() else None


def _load(explicit: str | None, err: IO[str], active: bool = False) -> Policy | None:
    import policy

    path = resolve_policy_path(explicit, os.environ, Path.cwd())
    try:
        if active:
            return _active_policy(os.environ, err)
        return policy.load_file(path) if path is not None else policy.load_default()
    except policy.PolicyLoadError as exc:
        for line, _key, message in exc.problems:
            where = f"{exc.source}:{line}" if line is not None else exc.source
            print(f"{where}: {message}", file=err)
        return None


def _decision_json(d: Decision) -> str:
    return json.dumps(d.to_json(), ensure_ascii=False)


def _deny_line(p: Policy, reason: str) -> str:
    from policy import Decision, Effect
    d = Decision(Effect.DENY, "input.malformed", reason, None, p.version, p.sha256)
    return _decision_json(d)


def _call_from_args(args: argparse.Namespace, err: IO[str]) -> ToolCall | None:
    from policy import ToolCall
    if not args.tool or args.tool_input is None:
        print("policy check: --tool and --input are required (or --batch FILE)", file=err)
        return None
    try:
        data = json.loads(args.tool_input)
    except json.JSONDecodeError as exc:
        print(f"policy check: --input is not valid JSON: {exc}", file=err)
        return None
    if not isinstance(data, dict):
        print("policy check: --input must be a JSON object", file=err)
        return None
    return ToolCall(args.tool, data, args.kind)


def _call_from_line(line: str, kind: str) -> ToolCall | str:
    from policy import ToolCall
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"the line is not valid JSON: {exc}"
    if not isinstance(obj, dict):
        return "the line is not a JSON object"
    tool, data, line_kind = obj.get("tool"), obj.get("input"), obj.get("kind", kind)
    if not isinstance(tool, str) or not isinstance(data, dict) or not isinstance(line_kind, str):
        return 'the line needs "tool" (string), "input" (object) and optionally "kind" (string)'
    return ToolCall(tool, data, line_kind)


# --- commands ---------------------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Print one decision as JSON (or one per batch line); exit 0 if everything is allowed, 1 if not."""
    import policy
    from policy import Effect
    out, err = out or sys.stdout, err or sys.stderr
    if args.batch is not None and (args.tool or args.tool_input is not None):
        print("policy check: use either --batch or --tool/--input", file=err)
        return EXIT_USAGE
    p = _load(args.policy, err, getattr(args, "active", False))
    if p is None:
        return EXIT_USAGE
    if args.batch is None:
        call = _call_from_args(args, err)
        if call is None:
            return EXIT_USAGE
        d = policy.evaluate(p, call)
        print(_decision_json(d), file=out)
        return EXIT_ALLOW if d.effect is Effect.ALLOW else EXIT_REFUSED
    try:
        if args.batch == "-":
            text = sys.stdin.read()
        else:
            text = Path(args.batch).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        print(f"policy check: cannot read {args.batch}: {exc}", file=err)
        return EXIT_USAGE
    all_allowed = True
    for line in text.splitlines():
        parsed = _call_from_line(line, args.kind)
        if isinstance(parsed, str):
            print(_deny_line(p, parsed), file=out)
            all_allowed = False
            continue
        d = policy.evaluate(p, parsed)
        all_allowed = all_allowed and d.effect is Effect.ALLOW
        print(_decision_json(d), file=out)
    return EXIT_ALLOW if all_allowed else EXIT_REFUSED


def cmd_test(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run the policy's examples; print each failure and a summary."""
    import policy
    out, err = out or sys.stdout, err or sys.stderr
    p = _load(args.policy, err, getattr(args, "active", False))
    if p is None:
        return EXIT_REFUSED
    results = policy.run_examples(p)
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"FAIL {p.source}: {r.describe()}", file=out)
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed ({p.source}, version {p.version})", file=out)
    return EXIT_ALLOW if not failed else EXIT_REFUSED


def cmd_validate(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Load the file (schema errors with line numbers) and run its examples; 0 when it may become active."""
    import policy
    out, err = out or sys.stdout, err or sys.stderr
    p = _load(args.file or args.policy, err)
    if p is None:
        return EXIT_REFUSED
    failed = [r for r in policy.run_examples(p) if not r.ok]
    for r in failed:
        print(f"{p.source}:{r.example.line}: example fails: {r.describe()}", file=err)
    if failed:
        return EXIT_REFUSED
    print(f"{p.source}: valid (version {p.version}, sha256 {p.sha256[:12]}, {len(p.examples)} examples pass)", file=out)
    return EXIT_ALLOW


def cmd_explain(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Print each simple command (or the call) with its effect and rule, then the decision."""
    import policy
    from policy import Effect
    out, err = out or sys.stdout, err or sys.stderr
    p = _load(args.policy, err, getattr(args, "active", False))
    if p is None:
        return EXIT_USAGE
    call = _call_from_args(args, err)
    if call is None:
        return EXIT_USAGE
    ex = policy.explain(p, call)
    if args.json:
        payload: dict[str, Any] = ex.decision.to_json()
        payload["steps"] = [
            {
                "command": s.command,
                "argv": list(s.argv),
                "decision": s.effect.value,
                "rule": s.rule_id,
                "reason": s.reason,
            }
            for s in ex.steps
        ]
        print(json.dumps(payload, ensure_ascii=False), file=out)
    else:
        for s in ex.steps:
            print(f"{s.effect.value:5}  {s.rule_id:28}  {s.command!r}", file=out)
            if s.argv:
                print(f"       argv: {list(s.argv)!r}", file=out)
            print(f"       {s.reason}", file=out)
        d = ex.decision
        print(
            f"=> {d.effect.value} ({d.rule_id}): {d.reason}  [policy {d.policy_version} {d.policy_sha256[:12]}]",
            file=out,
        )
    return EXIT_ALLOW if ex.decision.effect is Effect.ALLOW else EXIT_REFUSED


def cmd_history(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None,
                environ: Mapping[str, str] | None = None) -> int:
    """Print the service's recorded policy versions (newest first), marking the active one; 1 when none."""
    import asyncio

    out, err = out or sys.stdout, err or sys.stderr
    state = _state_file(os.environ if environ is None else environ)
    if not state.is_file():  # opening the store would create it: a typo in the home is said, not papered over
        print(f"policy history: no service state at {state} ({HOME_ENV}); no policy was recorded there", file=err)
        return EXIT_REFUSED
    versions, active = asyncio.run(_history(state, args.limit))
    if args.json:
        print(json.dumps([{"version": v.version, "at": v.at, "actor": v.actor, "name": v.name, "sha256": v.sha256,
                           "note": v.note, "active": v.version == active} for v in versions]), file=out)
    elif not versions:
        print(f"no policy version recorded in {state}: the service uses the policy it was started with", file=out)
    for v in versions if not args.json else ():
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v.at))
        mark = "  active" if v.version == active else ""
        note = f"  ({v.note})" if v.note else ""
        print(f"v{v.version}  {when}Z  {v.actor}  {v.name}  sha256 {v.sha256[:12]}{mark}{note}", file=out)
    return EXIT_ALLOW if versions else EXIT_REFUSED


def _state_file(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(HOME_ENV) or Path(environ.get("HOME", "/root")) / ".agent-runner") / "state.db"


def _active_policy(environ: Mapping[str, str], err: IO[str]) -> Policy | None:
    """The service's active version, loaded, and one stderr line saying which it is; None (said) when the state
    file holds none: the service then runs the policy file it was started with, which only it knows."""
    import asyncio

    import policy

    state = _state_file(environ)
    versions, active = asyncio.run(_history(state, 1)) if state.is_file() else ([], None)
    if active is None:
        print(f"policy: no policy was activated in the service ({state}); it runs the file it was started with: "
              "pass that with --policy", file=err)
        return None
    version = asyncio.run(_version(state, active))
    print(f"policy: the service's active policy, version v{version.version} of {state} ({version.name}, sha256 "
          f"{version.sha256[:12]}, by {version.actor})", file=err)
    return policy.load(version.text, source=f"policy version {version.version}")


async def _version(state: Path, number: int) -> PolicyVersion:
    from runner.service.policy_store import PolicyStore

    store = PolicyStore(state)
    try:
        return await store.get(number)
    finally:
        await store.aclose()


async def _history(state: Path, limit: int) -> tuple[list[PolicyVersion], int | None]:
    from runner.service.policy_store import PolicyStore

    store = PolicyStore(state)
    try:
        active = await store.active()
        return await store.history(limit), active.version if active else None
    finally:
        await store.aclose()
