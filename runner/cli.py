"""`agent-runner`: the command line. Parses arguments, builds backends from Settings, prints results."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from runner.config import Settings, check_local_repo, environment_help, is_git_url, settings_from_os
from runner.errors import ConfigError, RunnerError, StateCorrupt, StateFull
from runner.models import TASK_KINDS, RunResult

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNIMPLEMENTED = 0, 1, 2, 3

SCENARIOS = resources.files("runner") / "data" / "scenarios"
SCENARIO_HELP = ("play this scripted model instead of a real one: a YAML file, or the name of a bundled one ("
                 + ", ".join(sorted(p.name.removesuffix(".yaml") for p in SCENARIOS.iterdir()
                                    if p.name.endswith(".yaml"))) + ")")


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        sys.exit(args.func(args))
    except ConfigError as exc:
        print(f"agent-runner: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except (StateCorrupt, StateFull) as exc:  # nothing can run until the owner restores the file or frees space
        print(f"agent-runner: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except RunnerError as exc:  # the engine is down, git failed...: one clear line, not a traceback
        print(f"agent-runner: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if not _is_policy_error(exc):
            raise
        print(f"agent-runner: the policy is not valid: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _is_policy_error(exc: Exception) -> bool:
    # Not an `except PolicyError` clause: naming it imports the policy engine (bashlex, ~0.5 s here) into every
    # command, `--help` included. A PolicyError can only have been raised once the engine was imported.
    errors = sys.modules.get("policy.errors")
    return errors is not None and isinstance(exc, errors.PolicyError)


def build_parser() -> argparse.ArgumentParser:
    from runner import forge_cli, policy_cli

    parser = argparse.ArgumentParser(prog="agent-runner", description="A policy-gated coding agent for your bot.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run one task to its end without the server", epilog=environment_help(),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--repo", required=True, help="git URL or path of the bot's repository")
    run.add_argument("--prompt", required=True, help="what the agent should do")
    run.add_argument("--kind", choices=TASK_KINDS, default="feature")
    run.add_argument("--dry-run", action="store_true", help="stop at the diff; push nothing")
    run.add_argument("--json", action="store_true", help="print only the JSON result on stdout")
    run.add_argument("--policy", type=Path, help="policy file (default: AGENT_RUNNER_POLICY, ./policy.yaml, built-in)")
    run.add_argument("--scenario", type=scenario_path, metavar="FILE", help=SCENARIO_HELP)
    run.set_defaults(func=cmd_run)

    policy_cli.register(sub)
    forge_cli.register(sub)

    demo = sub.add_parser("demo", help="run the whole cycle offline on the embedded defaults",
                          epilog=environment_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.set_defaults(func=cmd_demo)

    sample = sub.add_parser("sample-repo", help="create the sample bot's bare repository and print its path",
                            epilog="environment: none is read",
                            description="The sample bot (runner/data/sample-bot: /health, /balance and a real bug) "
                                        "as one commit on main in a new bare repository, for AGENT_RUNNER_REPO.")
    sample.add_argument("path", nargs="?", type=Path, default=Path("sample-bot.git"),
                        help="where to create it (default: ./sample-bot.git); kept as it is if it exists")
    sample.set_defaults(func=cmd_sample_repo)

    serve = sub.add_parser("serve", help="start the supervisor service", epilog=environment_help(),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="The supervisor: the HTTP API on AGENT_RUNNER_HOST:AGENT_RUNNER_PORT, the "
                                       "Telegram chat when configured, releases and the post-deploy watch.")
    serve.add_argument("--scenario", type=scenario_path, metavar="FILE",
                       help=SCENARIO_HELP + "; without ANTHROPIC_API_KEY the default is fix-balance")
    serve.set_defaults(func=cmd_serve)
    return parser


def scenario_path(text: str) -> Path:
    """--scenario: a file, else a bundled scenario by name (`fix-balance`), so the README's commands work from any
    directory; anything else is given back as a path, for the one-line "cannot read" of the scenario loader."""
    given = Path(text)
    if given.exists():
        return given
    bundled = SCENARIOS / (text if text.endswith(".yaml") else f"{text}.yaml")
    if "/" not in text and bundled.is_file():
        return Path(str(bundled))
    return given


def cmd_sample_repo(args: argparse.Namespace) -> int:
    from runner.sample import create_bare_sample

    target: Path = args.path.expanduser().absolute()
    existed = target.exists()
    if existed and not ((target / "HEAD").is_file() and (target / "objects").is_dir()):
        # An unrelated folder is refused, never reported as the sample.
        raise ConfigError(f"sample-repo: {target} exists and is not a bare repository; give a path that does not "
                          "exist yet (default: ./sample-bot.git)")
    bare = asyncio.run(create_bare_sample(target))
    if existed:
        say(f"{bare} already exists; kept as it is")
    print(bare, flush=True)  # alone on stdout, for `export AGENT_RUNNER_REPO=$(agent-runner sample-repo)`
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from runner.app import cmd_serve as serve

    return serve(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from runner.demo import run_demo

    return asyncio.run(run_demo(settings_from_os()))


def _unimplemented(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"agent-runner {name}: not implemented yet", file=sys.stderr)
        return EXIT_UNIMPLEMENTED

    return run


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from_os()
    if settings.anthropic_api_key is None and args.scenario is None:
        print("agent-runner run: no ANTHROPIC_API_KEY is set; set one, or pass --scenario FILE to play a "
              "scripted model", file=sys.stderr)
        return EXIT_USAGE
    result = asyncio.run(_run(settings, args, _repo_arg(args.repo)))
    print(json.dumps(result.to_json()), flush=True)
    return EXIT_OK if result.status.value in ("proposed", "diff_ready") else EXIT_FAILED


def say(line: str) -> None:
    print(f"[agent-runner] {line}", file=sys.stderr, flush=True)


async def _run(settings: Settings, args: argparse.Namespace, repo: str) -> RunResult:
    from runner.service.runtime import open_runtime

    async with open_runtime(settings, policy_path=args.policy, scenario=args.scenario, repo=repo,
                            say=say) as rt:
        task = await rt.store.create_task(kind=args.kind, prompt=args.prompt, repo=repo, source="cli",
                                          requested_by="cli", dry_run=args.dry_run)
        return await rt.run(task)


def _repo_arg(repo: str) -> str:
    """A git URL as given; a path checked here, so a typo says the path does not exist (not that no forge is
    configured, which is what the runtime concludes of a string it cannot find)."""
    if is_git_url(repo):
        return repo
    return str(check_local_repo(repo, name="--repo"))


if __name__ == "__main__":
    main()
