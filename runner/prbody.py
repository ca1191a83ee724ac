"""PURE: the pull request's body and branch name, rendered from frozen values; untrusted text is fenced.

Every string that the agent, or code it wrote, could have shaped (paths, test names and output, summaries,
denial reasons, the verification text) reaches the Markdown only inside a fenced block or an inline code span
it cannot close, with hidden characters made visible. GitHub interprets nothing inside code: no heading, list,
task item, table, HTML, link, image, autolink or @mention can come from those strings, so the only structure
on the page is this module's own.
"""

from __future__ import annotations

import re
import shlex
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from policy.changeset import is_hidden
from runner.models import TASK_KINDS, Denial, TaskKind, TestRun, Usage

# GitHub refuses bodies over 65,536 characters. The per-section bounds below add up to less than MAX_BODY
# (request 2k, summary 6k, files ~22k, output 3k, denials ~20k), so nothing is ever cut mid-fence.
MAX_BODY = 60_000
MAX_SUMMARY = 6_000
MAX_REQUEST = 2_000
MAX_OUTPUT_TAIL = 3_000
MAX_INLINE = 200
MAX_VERIFICATION = 1_000
MAX_FILES = 100
MAX_DENIALS = 30
MAX_SLUG = 40
MAX_FINGERPRINT = 16
BRANCH_PREFIX = "agent/"

HIDDEN_MARK = "\ufffd"  # what a hidden character is shown as: the owner sees that something was there
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_FINGERPRINT = re.compile(r"[A-Za-z0-9]+")
_SHA = re.compile(r"[0-9a-fA-F]{7,64}")


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str
    added: int
    removed: int
    binary: bool = False


class _Task(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def prompt(self) -> str: ...
    @property
    def requested_by(self) -> str: ...
    @property
    def fingerprint(self) -> str | None: ...


class _Changed(Protocol):
    """What the change extractor reports per file (e.g. policy.FileChange)."""

    @property
    def path(self) -> str: ...
    @property
    def added_lines(self) -> int: ...
    @property
    def removed_lines(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PrRequest:
    """Everything the body shows. `summary`, paths and test output come from the sandbox: untrusted."""

    kind: TaskKind
    requested_by: str
    request: str
    summary: str
    files: tuple[FileChange, ...] = ()
    tests: TestRun | None = None
    denials: tuple[Denial, ...] = ()
    usage: Usage = field(default_factory=Usage)
    fingerprint: str | None = None
    task_id: str | None = None
    number: int | None = None
    head_sha: str | None = None
    verification: str | None = None
    """For fixes, the supervisor's own check of the regression test (runner.verify)."""
    rounds: int = 1
    """How many rounds the agent worked (the supervisor's failing tests sent back rounds - 1 times)."""
    follow_ups: tuple[str, ...] = ()
    """The owner's follow-ups that added commits to the pull request, oldest first (the owner's words)."""
    repo: str | None = None
    """The local forge's bare repository, for the CLI's `--repo` (None with GitHub: the CLI reads
    GITHUB_REPOSITORY). The supervisor's own path, not the agent's text."""

    @classmethod
    def from_task(
        cls,
        task: _Task,
        *,
        summary: str,
        files: Iterable[_Changed | FileChange] = (),
        tests: TestRun | None = None,
        denials: Iterable[Denial] = (),
        usage: Usage | None = None,
        number: int | None = None,
        head_sha: str | None = None,
        verification: str | None = None,
        rounds: int = 1,
    ) -> PrRequest:
        """Build the request from a task record and what the run produced."""
        if task.kind not in TASK_KINDS:
            raise ValueError(f"unknown task kind {task.kind!r}")
        changes = tuple(
            f if isinstance(f, FileChange) else FileChange(f.path, f.added_lines, f.removed_lines) for f in files
        )
        fix = task.kind == "fix" and task.fingerprint is not None
        return cls(
            kind=task.kind,
            requested_by=task.requested_by,
            request=task.prompt,
            summary=summary,
            files=changes,
            tests=tests,
            denials=tuple(denials),
            usage=usage or Usage(),
            fingerprint=task.fingerprint if fix else None,
            task_id=str(task.id),
            number=number,
            head_sha=head_sha,
            verification=verification,
            rounds=rounds,
        )


def render_pr_body(request: PrRequest) -> str:
    """The pull request's Markdown body: request, agent summary, files, tests, denials, usage, approval.

    Text that the agent (or the code it wrote) controls is shown only inside code fences or code spans,
    cleaned of control and bidi characters and cut to a bound, so it can neither format the page, mention
    anyone, nor impersonate the supervisor's own sections.
    """
    approve = _approve_section(request.number, request.head_sha, request.repo)
    parts = [
        _request_section(request),
        _summary_section(request.summary),
        _files_section(request.files),
        *([_follow_ups_section(request.follow_ups)] if request.follow_ups else []),
        _tests_section(request.tests, request.verification, request.rounds),
        _denials_section(request.denials),
        _usage_section(request.usage),
    ]
    body = "\n\n".join(parts)
    room = MAX_BODY - len(approve) - 40
    if len(body) > room:  # unreachable with the bounds above; kept so the limit holds if they change
        body = body[:room] + "\n\n_(body truncated)_"
    return f"{body}\n\n{approve}\n"


MAX_FOLLOW_UPS = 5
MAX_FOLLOW_UP = 500


def _follow_ups_section(follow_ups: tuple[str, ...]) -> str:
    # The owner's words, but they may quote anything: fenced, cleaned and cut like the request.
    shown = follow_ups[-MAX_FOLLOW_UPS:]
    lines = ["## Follow-ups", "", f"The owner asked for {len(follow_ups)} more change(s); each added a commit."]
    for i, text in enumerate(shown, len(follow_ups) - len(shown) + 1):
        lines += ["", f"{i}.", _fence(text, MAX_FOLLOW_UP)]
    return "\n".join(lines)


def branch_name(kind: str, prompt_or_fingerprint: str, taken: Collection[str]) -> str:
    """`agent/feature-<slug>`, `agent/review-<slug>` or `agent/fix-<fingerprint>`, never one in `taken`.

    A fix started by an owner's words rather than an alert's fingerprint gets a slug of the words.

        >>> branch_name("feature", "Add a /balance command!", {"agent/feature-add-a-balance-command"})
        'agent/feature-add-a-balance-command-2'
        >>> branch_name("fix", "9F3A0C2B1D4E5F60aa", set())
        'agent/fix-9f3a0c2b1d4e5f60'
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"unknown task kind {kind!r}")
    text = prompt_or_fingerprint.strip()
    if kind == "fix" and _FINGERPRINT.fullmatch(text):
        stem = _NOT_SLUG.sub("", text.lower())[:MAX_FINGERPRINT] or "unknown"
    else:
        stem = _slug(_without_kind(kind, text)) or _slug(text)
    base = f"{BRANCH_PREFIX}{kind}-{stem}"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def pr_title(kind: str, prompt: str) -> str:
    """The PR's title: the kind once, then the owner's words (their first 72 characters, on one line).

        >>> pr_title("fix", "Fix the crash in /balance"), pr_title("feature", "add a /balance command")
        ('fix: the crash in /balance', 'agent: add a /balance command')
    """
    words = " ".join(prompt.split())
    first = (_without_kind(kind, words) if kind == "fix" else words)[:72] or words[:72]
    return f"fix: {first}" if kind == "fix" else f"agent: {first}"


def _without_kind(kind: str, text: str) -> str:
    """`text` without a leading word that repeats the kind ("fix the crash" for a fix: "the crash")."""
    head, _, rest = text.partition(" ")
    return rest.lstrip() if head.rstrip(":,.").lower() in {kind, f"{kind}es", f"{kind}ed"} else text


# -- sections ----------------------------------------------------------------------------------------


def _request_section(r: PrRequest) -> str:
    lines = ["## What was asked", ""]
    meta = [f"**Kind:** {r.kind}", f"**Requested by:** {_code(r.requested_by)}"]
    if r.task_id:
        meta.append(f"**Task:** {_code(r.task_id)}")
    lines.append(" · ".join(meta))
    if r.fingerprint:
        lines += ["", f"Alert fingerprint: {_code(r.fingerprint)}"]
    if r.request:
        lines += ["", _fence(r.request, MAX_REQUEST)]
    return "\n".join(lines)


def _summary_section(summary: str) -> str:
    text = summary.strip() or "(the agent gave no summary)"
    return "\n".join(
        [
            "## The agent's summary",
            "",
            "_Written by the agent inside the sandbox; not verified._",
            "",
            _fence(text, MAX_SUMMARY),
        ]
    )


def _files_section(files: tuple[FileChange, ...]) -> str:
    added = sum(f.added for f in files)
    removed = sum(f.removed for f in files)
    lines = [f"## Files changed ({len(files)}, +{added} −{removed})", ""]
    if not files:
        lines.append("No files changed.")
    for f in files[:MAX_FILES]:
        counts = "binary" if f.binary else f"+{f.added} −{f.removed}"
        lines.append(f"- {_code(f.path)} ({counts})")
    if len(files) > MAX_FILES:
        lines.append(f"- … and {len(files) - MAX_FILES} more")
    return "\n".join(lines)


def _tests_section(tests: TestRun | None, verification: str | None = None, rounds: int = 1) -> str:
    lines = ["## Tests (run by the supervisor)", ""]
    n = max(1, int(rounds))
    if n == 1:
        lines += ["**Rounds:** 1 (the agent's first change was the one tested here)", ""]
    else:
        back = n - 1
        lines += [f"**Rounds:** {n} (the supervisor's failing checks went back to the agent {back} "
                  f"time{'s' if back > 1 else ''} before this change)", ""]
    if verification is not None:  # our words around the agent's test paths: shown as code, like any path
        lines += [f"**Fix verification**: {_code(verification, MAX_VERIFICATION)}", ""]
    if tests is None:
        lines.append("No test command was run.")
        return "\n".join(lines)
    verdict = "✅ passed" if tests.passed else "❌ failed"
    lines.append(f"**{verdict}**: {_code(tests.command)} exited with {int(tests.exit_code)}")
    if tests.output_tail.strip():
        tail = _clean(tests.output_tail)[-MAX_OUTPUT_TAIL:]
        lines += [
            "",
            "<details><summary>Output (last lines)</summary>",
            "",
            _fence(tail, MAX_OUTPUT_TAIL),
            "",
            "</details>",
        ]
    return "\n".join(lines)


def _denials_section(denials: tuple[Denial, ...]) -> str:
    lines = [f"## Policy denials ({len(denials)})", ""]
    if not denials:
        lines.append("None: every tool call the agent made was allowed.")
    for d in denials[:MAX_DENIALS]:
        lines.append(f"- {_code(d.tool)} denied by rule {_code(d.rule)}: {_code(d.reason)}")
    if len(denials) > MAX_DENIALS:
        lines.append(f"- … and {len(denials) - MAX_DENIALS} more")
    return "\n".join(lines)


def _usage_section(usage: Usage) -> str:
    total = usage.input_tokens + usage.output_tokens
    return "\n".join(
        [
            "## Usage",
            "",
            f"{total:,} tokens ({usage.input_tokens:,} in, {usage.output_tokens:,} out) · cost ${usage.cost_usd:.4f}",
        ]
    )


def _approve_section(number: int | None, head_sha: str | None, repo: str | None = None) -> str:
    n = str(int(number)) if number is not None else "N"
    if head_sha is not None and not _SHA.fullmatch(head_sha):
        head_sha = None  # the forge's answer, but the body is no place to trust a SHA that is not one
    sha = f" --sha {head_sha}" if head_sha else ""
    # Quoted for a shell; a path that no code span could hold on one line is left out rather than shown broken.
    at = f" --repo {shlex.quote(repo)}" if repo and "`" not in repo and repo.isprintable() else ""
    lines = ["## How to approve", ""]
    if number is None:
        lines.append("N is this pull request's number.")
    if head_sha:
        lines.append(f"Approval merges exactly the reviewed head {_code(head_sha[:12])}; if it moves, approve again.")
    lines += [
        "",
        f"- Telegram: `/approve_pr {n}`",
        f"- CLI: `agent-runner approve {n}{at}{sha}`",
        f"- To reject: `agent-runner reject {n}{at}`",
    ]
    return "\n".join(lines)


# -- escaping ----------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """One newline convention, and every hidden character (bidi overrides, zero-width joiners, controls but tab
    and newline, separators that are not newlines to Markdown) replaced by a visible mark."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(HIDDEN_MARK if c not in "\n\t" and is_hidden(c) else c for c in text)


def _fence(text: str, limit: int) -> str:
    """A fenced code block that `text` cannot close: the fence is longer than any backtick run inside."""
    text = _clean(text)
    if len(text) > limit:
        text = text[:limit] + "\n… (truncated)"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _code(text: str, limit: int = MAX_INLINE) -> str:
    """An inline code span on one line that `text` cannot close."""
    text = " ".join(_clean(text).split())
    if len(text) > limit:
        text = text[:limit] + "…"
    if not text:
        return "` `"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    slug = _NOT_SLUG.sub("-", ascii_text).strip("-")
    if len(slug) > MAX_SLUG:
        cut = slug[:MAX_SLUG]
        slug = cut.rsplit("-", 1)[0] if "-" in cut else cut
    return slug or "change"
