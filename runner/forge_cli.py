"""The forge's commands: `prs`, `approve N [--sha SHA] [--json]`, `reject N`.

Exit codes: 0 done, 1 the forge refused or failed (head moved, conflict, not found, auth) or the approved
change is not running (rolled back, deploy failed), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from typing import Any, TextIO, TypeVar

from runner.config import Settings, check_local_repo, environment_help, is_git_url
from runner.deploy import DeployError, deployer_from_settings
from runner.errors import ConfigError, ForgeConflict, ForgeError, ForgeRateLimited
from runner.forge import MERGE_METHODS, Forge, create_forge

T = TypeVar("T")

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_CONFIG = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `prs`, `approve` and `reject` to the `agent-runner` command line."""
    repo_help = ("bare repository of the local forge (default: AGENT_RUNNER_REPO; used when GITHUB_TOKEN and "
                 "GITHUB_REPOSITORY are not set)")

    # Each reads the whole Settings (forge, deployer, home), so each --help lists every variable it reads.
    def command(name: str, what: str, run: Callable[..., int], *, numbered: bool = True,
                prints: str = "one JSON object") -> argparse.ArgumentParser:
        parser = subparsers.add_parser(name, help=what, epilog=environment_help(),
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        if numbered:
            parser.add_argument("number", type=int)
        parser.add_argument("--repo", metavar="PATH", help=repo_help)
        parser.add_argument("--json", action="store_true", help=f"print {prints}")
        parser.set_defaults(func=run)
        return parser

    command("prs", "list open pull requests", cmd_prs, numbered=False, prints="one JSON array")
    approve = command("approve", "merge a pull request at its reviewed head", cmd_approve)
    approve.add_argument("--sha", help="the head SHA the pull request was shown at (default: its recorded head)")
    approve.add_argument("--method", choices=MERGE_METHODS, default="squash")
    command("reject", "close a pull request without merging", cmd_reject)


def cmd_prs(args: argparse.Namespace, environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    async def work(forge: Forge, _settings: Settings) -> int:
        prs = await forge.list_open()
        if args.json:
            _print(out, json.dumps([asdict(pr) for pr in prs]))
        elif not prs:
            _print(out, "no open pull requests")
        for pr in prs if not args.json else ():
            _print(out, f"#{pr.number}  {pr.head_sha[:12]}  {pr.head_branch} -> {pr.base_branch}  {pr.title}")
        return EXIT_OK

    return _run(args, environ, out, work)


def cmd_approve(args: argparse.Namespace, environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """Merge at the reviewed head and deploy with the configured deployer, rolling back if unhealthy: the
    service's release machinery (runner/service/releases.py) run once, without the post-deploy watch."""

    async def work(forge: Forge, settings: Settings) -> int:
        from runner.service.releases import NOTHING_DEPLOYED, Releases, ReleaseStore
        from runner.service.watch import WatchConfig
        from runner.store import Store

        head = args.sha or (await forge.get_pr(args.number)).head_sha
        repo = str(args.repo) if args.repo else settings.repo or ""
        async with Store(settings.home / "state.db") as store, deployer_from_settings(settings) as deployer:
            rows = ReleaseStore(store.path)
            releases = Releases(rows, store=store, forge=forge, deployer=deployer, repo=repo, home=settings.home,
                                watch=WatchConfig(seconds=0),
                                progress=lambda _task, line: print(line, file=sys.stderr) if not args.json else None)
            try:
                task = await store.task_of_pr(args.number)
                release = await releases.approve(args.number, head, actor="cli", task=task, method=args.method)
                await releases.wait_idle()
                release = await rows.get(release.id)
            finally:
                await releases.aclose()
                await rows.aclose()
        if release.state == "not_merged":
            raise ForgeConflict(release.detail)
        if args.json:
            _print(out, json.dumps({"number": release.number, "merged": True, "sha": release.merge_sha,
                                    "method": release.method, "head_sha": release.head_sha,
                                    "deploy": release.state, "release": release.as_json()}))
        else:
            # With no deployer the release's own words ("merged; nothing deployed...") follow the merge line.
            outcome = (release.detail.removeprefix("merged; ") if release.detail == NOTHING_DEPLOYED
                       else f"deploy {release.state}: {release.detail}")
            _print(out, f"merged #{release.number} at {release.head_sha[:12]} as {(release.merge_sha or '')[:12]} "
                        f"({release.method}); {outcome}")
        return EXIT_OK if release.state == "deployed" else EXIT_REFUSED

    return _run(args, environ, out, work)


def cmd_reject(args: argparse.Namespace, environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    """The service's own reject (runner.service.operations): the PR closed, its task `rejected`, audited once."""

    async def work(forge: Forge, settings: Settings) -> int:
        from runner.service import operations
        from runner.store import Store

        async with Store(settings.home / "state.db") as store:
            pr = (await operations.reject_pr(forge, store, operations.Caller("cli", "cli"), args.number)).pr
        if args.json:
            _print(out, json.dumps(asdict(pr)))
        else:
            _print(out, f"closed #{pr.number} ({pr.head_branch}), nothing merged")
        return EXIT_OK

    return _run(args, environ, out, work)


def _run(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None,
    out: TextIO | None,
    work: Callable[[Forge, Settings], Awaitable[int]],
) -> int:
    # The one place these commands read the environment.
    env = os.environ if environ is None else environ
    try:
        settings = Settings.from_env(env)
        forge = create_forge(settings, repo=_local_repo(args, settings))
    except (ConfigError, ForgeError) as exc:
        return _fail(args, out, exc, EXIT_CONFIG)

    async def main() -> int:
        async with forge:
            return await work(forge, settings)

    try:
        return asyncio.run(main())
    except (ForgeError, DeployError) as exc:
        return _fail(args, out, exc, EXIT_REFUSED)
    except ConfigError as exc:  # e.g. the configured deployer is missing its settings
        return _fail(args, out, exc, EXIT_CONFIG)


def _local_repo(args: argparse.Namespace, settings: Settings) -> str | None:
    """--repo, else AGENT_RUNNER_REPO, checked before the local forge opens: a wrong path is an error that creates
    no forge state, not an empty list. None with GitHub configured (its forge needs no path), or nothing given."""
    if settings.github_token is not None and settings.github_repository:
        return None
    if args.repo:
        return str(check_local_repo(args.repo, name="--repo"))
    if settings.repo is not None and not is_git_url(settings.repo):
        return str(check_local_repo(settings.repo, name="AGENT_RUNNER_REPO"))
    return None


def _fail(args: argparse.Namespace, out: TextIO | None, exc: Exception, code: int) -> int:
    if getattr(args, "json", False):
        error: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, ForgeRateLimited):
            error["retry_after"] = exc.retry_after
        _print(out, json.dumps(error))
    else:
        print(f"agent-runner: {exc}", file=sys.stderr)
    return code


def _print(out: TextIO | None, text: str) -> None:
    print(text, file=out or sys.stdout)
