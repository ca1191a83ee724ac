"""The task page: one task's states, tool calls, diff, tests, cost, pull request and release, as read-only HTML.

Everything on the page that a task produced (the prompt, the diff and its file names, test output, reasons,
commit messages) came from an untrusted agent or an alert, so it is text, never markup: each value goes through
`html.escape` or through pygments (which escapes what it highlights), and the page carries no script at all.
The Content-Security-Policy says so to the browser too (no script, no object, styles only by hash), so even a
hole in the escaping could not run anything.

`load_view` reads the store; `render` is pure. The routes that serve it (signed links, the Mini App) are in
the second half of this module: `task_page_routes(...)`.

Size: about 520 lines: the page's renderer (pure, most of it) and its two routes, kept together so
that the escaping rules and the Content-Security-Policy that relies on them are read in one file.
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from runner.errors import TaskError
from runner.links import DEFAULT_INIT_DATA_MAX_AGE, LinkError, check_init_data, check_task_link, task_link
from runner.models import RunResult

if TYPE_CHECKING:
    from runner.store import AuditEntry, Store, TaskRecord

__all__ = ["MAX_DIFF_CHARS", "ReleaseStep", "TaskView", "content_security_policy", "load_view", "render",
           "task_page_routes"]

MAX_DIFF_CHARS = 400_000  # a page, not a download: a diff larger than this is cut, and the page says so
MAX_TEXT_CHARS = 60_000
MINI_APP_LINK_TTL = 300

# ------------------------------------------------------------------------------------------------ the view


@dataclass(frozen=True, slots=True)
class ReleaseStep:
    at: float
    state: str
    detail: str


@dataclass(frozen=True, slots=True)
class ReleaseView:
    id: int
    number: int
    state: str
    head_sha: str
    merge_sha: str | None
    previous_sha: str | None
    revert_sha: str | None
    deployed_at: float | None
    watch_until: float | None
    detail: str
    steps: tuple[ReleaseStep, ...]


@dataclass(frozen=True, slots=True)
class ToolCallView:
    at: float
    tool: str
    decision: str
    effect: str
    rule: str
    reason: str
    command: str


@dataclass(frozen=True, slots=True)
class TaskView:
    """What the page shows of one task; built by `load_view`, or directly in tests."""

    task: TaskRecord
    states: tuple[ReleaseStep, ...]
    calls: tuple[ToolCallView, ...]
    releases: tuple[ReleaseView, ...] = ()
    notes: tuple[ReleaseStep, ...] = field(default=())
    """Other audit rows worth a line: the alert that started it, watch verdicts, refusals of the model channel."""


NOTE_EVENTS = frozenset({"auto_fix", "repeat", "investigation_failed", "watch_verdict", "watch_alert",
                         "gateway_refused", "repeat_noted"})

ReleaseRows = Callable[[str], Awaitable[Sequence[Any]]]
"""`task_id -> the task's release rows` (runner.releases.ReleaseRecord), newest first."""


async def load_view(store: Store, task_id: str, releases: ReleaseRows | None = None) -> TaskView:
    """The task and its audit rows (one indexed query) and its releases. Raises TaskError for no such task."""
    task = await store.get_task(task_id)
    entries = await store.audit_log(task_id)
    states = [ReleaseStep(task.created_at, "queued", "")]
    calls, notes = [], []
    steps: dict[int, list[ReleaseStep]] = {}
    for entry in entries:
        detail = entry.detail
        if entry.event == "state":
            states.append(ReleaseStep(entry.at, str(detail.get("state", "")), str(detail.get("reason", ""))))
        elif entry.event == "tool_decision":
            calls.append(ToolCallView(entry.at, str(detail.get("tool", "")), str(detail.get("decision", "")),
                                      str(detail.get("policy_effect", "")), str(detail.get("rule", "")),
                                      str(detail.get("reason", "")), str(detail.get("command") or "")))
        elif entry.event == "release" and isinstance(detail.get("release"), int):
            steps.setdefault(detail["release"], []).append(
                ReleaseStep(entry.at, str(detail.get("state", "")), str(detail.get("detail", ""))))
        elif entry.event in NOTE_EVENTS:
            notes.append(_note(entry))
    rows = list(await releases(task_id)) if releases is not None else []
    return TaskView(task, tuple(states), tuple(calls), tuple(
        ReleaseView(r.id, r.number, r.state, r.head_sha, r.merge_sha, r.previous_sha, r.revert_sha, r.deployed_at,
                    r.watch_until, r.detail, tuple(steps.get(r.id, ()))) for r in rows), tuple(notes))


def _note(entry: AuditEntry) -> ReleaseStep:
    shown = {k: v for k, v in entry.detail.items() if k in ("reason", "note", "fingerprint", "source", "alerts",
                                                               "occurrences", "number")}
    return ReleaseStep(entry.at, entry.event, ", ".join(f"{k}: {v}" for k, v in sorted(shown.items())))


# ------------------------------------------------------------------------------------------------ rendering

_FORMATTER = HtmlFormatter(nowrap=True, classprefix="hl-")
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1100px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:20px;margin:8px 0}h2{font-size:16px;margin:24px 0 8px;border-bottom:1px solid #d0d7de}
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;margin:12px 0}
table{border-collapse:collapse;width:100%}td,th{text-align:left;vertical-align:top;padding:3px 8px}
th{font-weight:600;color:#57606a}td.t{white-space:nowrap;color:#57606a}tr.deny td{background:#ffebe9}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;background:#ddf4ff;font-weight:600}
.badge.bad{background:#ffebe9;color:#a40e26}.badge.good{background:#dafbe1;color:#116329}
pre{white-space:pre-wrap;word-break:break-word;margin:4px 0;font:12px/1.4 ui-monospace,monospace}
table.diff{font:12px/1.4 ui-monospace,monospace;table-layout:fixed}
table.diff td{padding:0 6px;white-space:pre-wrap;word-break:break-all}
table.diff td.n{width:44px;color:#8c959f;text-align:right;user-select:none}
tr.add td{background:#e6ffec}tr.del td{background:#ffebe9}tr.hunk td{background:#ddf4ff;color:#57606a}
h3.file{font:600 13px ui-monospace,monospace;margin:14px 0 4px}.muted{color:#57606a}
""" + str(_FORMATTER.get_style_defs(".diff"))  # type: ignore[no-untyped-call]
_STYLE = f"<style>{_CSS}</style>"
_STYLE_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()
BAD_STATES = frozenset({"failed", "rolled_back", "rejected", "timed_out", "cancelled", "not_merged"})
GOOD_STATES = frozenset({"deployed", "proposed", "diff_ready"})


def content_security_policy(*, script_hash: str | None = None) -> str:
    """No script (or only the one whose hash is given), no plugin, no frame of ours, styles only by hash."""
    script = f"'sha256-{script_hash}'" if script_hash else "'none'"
    # Telegram's web client shows a Mini App in an iframe; every other embedding is refused.
    return (f"default-src 'none'; script-src {script}; style-src 'sha256-{_STYLE_HASH}'; img-src 'none'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors https://web.telegram.org")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters not shown)"


def _when(at: float | None) -> str:
    if at is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _badge(state: str) -> str:
    kind = " bad" if state in BAD_STATES else " good" if state in GOOD_STATES else ""
    return f'<span class="badge{kind}">{_e(state.replace("_", " "))}</span>'


def render(view: TaskView) -> str:
    """The whole page. Pure: the same view renders the same bytes."""
    task = view.task
    # A stored result is a RunResult value, or its JSON in files written before results were typed.
    stored: object = task.result
    result: Mapping[str, Any] = stored.to_json() if isinstance(stored, RunResult) else \
        stored if isinstance(stored, Mapping) else {}
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        '<meta name=referrer content="no-referrer">',
        f"<title>Task {_e(task.id)}</title>{_STYLE}</head><body><main>",
        f"<h1>Task <code>{_e(task.id)}</code> {_badge(task.state.value)}</h1>",
        f'<p class=muted>{_e(task.kind)} · from {_e(task.source)} ({_e(task.requested_by)})'
        f'{" · dry run" if task.dry_run else ""} · {_e(task.repo)}</p>',
    ]
    if task.reason:
        parts.append(f'<p id=reason>{_e(_clip(task.reason, 4000))}</p>')
    parts.append(f"<section id=prompt><h2>Prompt</h2><pre>{_e(_clip(task.prompt))}</pre></section>")
    parts.append(_states(view.states))
    parts.append(_calls(view.calls))
    parts.append(_diff_section(str(result.get("diff") or ""), result.get("files_changed")))
    parts.append(_tests(result.get("tests"), result.get("verification")))
    parts.append(_usage(result.get("usage")))
    parts.append(_pr(result.get("pr")))
    parts.append(_releases(view.releases))
    if view.notes:
        parts.append("<section id=notes><h2>Other events</h2><table>" + "".join(
            f"<tr><td class=t>{_e(_when(n.at))}</td><td>{_e(n.state)}</td><td>{_e(_clip(n.detail, 2000))}</td></tr>"
            for n in view.notes) + "</table></section>")
    parts.append("</main></body></html>")
    return "".join(parts)


def _step_row(step: ReleaseStep) -> str:
    return (f"<tr><td class=t>{_e(_when(step.at))}</td><td>{_badge(step.state)}</td>"
            f"<td>{_e(_clip(step.detail, 2000))}</td></tr>")


def _states(states: Sequence[ReleaseStep]) -> str:
    rows = "".join(_step_row(s) for s in states)
    return f"<section id=states><h2>States</h2><table><tr><th>at</th><th>state</th><th>why</th></tr>{rows}" \
           "</table></section>"


def _calls(calls: Sequence[ToolCallView]) -> str:
    if not calls:
        return "<section id=calls><h2>Tool calls</h2><p class=muted>No tool calls were recorded.</p></section>"
    denied = sum(1 for c in calls if c.decision != "allow")
    rows = ""
    for c in calls:
        verb = "allowed" if c.decision == "allow" else "denied"
        command = f"<pre>{_e(_clip(c.command, 2000))}</pre>" if c.command else ""
        rows += (f'<tr class="{"allow" if verb == "allowed" else "deny"}"><td class=t>{_e(_when(c.at))}</td>'
                 f"<td>{_e(c.tool)}{command}</td><td>{verb}</td><td>{_e(c.effect)}</td><td><code>{_e(c.rule)}</code>"
                 f"</td><td>{_e(_clip(c.reason, 2000))}</td></tr>")
    return (f"<section id=calls><h2>Tool calls</h2><p>{len(calls)} calls, {denied} denied.</p><table>"
            "<tr><th>at</th><th>tool</th><th>decision</th><th>policy</th><th>rule</th><th>reason</th></tr>"
            f"{rows}</table></section>")


def _lexer(path: str) -> Lexer:
    try:
        lexer: Lexer = get_lexer_for_filename(path, stripnl=False, ensurenl=False)
        return lexer
    except ClassNotFound:
        fallback: Lexer = TextLexer(stripnl=False, ensurenl=False)
        return fallback


def _highlighted(lines: Sequence[str], path: str) -> list[str]:
    """Each line's content as highlighted, escaped HTML; one output line per input line."""
    if not lines:
        return []
    out = str(highlight("\n".join(lines) + "\n", _lexer(path), _FORMATTER)).split("\n")
    if len(out) < len(lines):  # a lexer that folded lines: fall back to plain escaped text
        return [_e(line) for line in lines]
    return out[: len(lines)]


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    header: tuple[str, ...]
    lines: tuple[str, ...]


def split_diff(diff: str) -> list[_File]:
    """A unified diff (git's) → one entry per file, its header lines and its hunks' lines."""
    files: list[_File] = []
    path, header, lines = "", list[str](), list[str]()
    in_hunks = False

    def flush() -> None:
        if header or lines:
            files.append(_File(path or "(unnamed)", tuple(header), tuple(lines)))

    for line in diff.split("\n"):
        if line.startswith("diff --git "):
            flush()
            path, header, lines, in_hunks = _git_path(line), [line], [], False
        elif not in_hunks and line.startswith("+++ "):
            name = line[4:].split("\t")[0]
            if name != "/dev/null":
                path = name[2:] if name.startswith("b/") else name
            header.append(line)
        elif not in_hunks and line.startswith("--- "):
            name = line[4:].split("\t")[0]
            if not path and name != "/dev/null":
                path = name[2:] if name.startswith("a/") else name
            header.append(line)
        elif line.startswith("@@"):
            in_hunks = True
            lines.append(line)
        elif in_hunks and line:  # git writes a blank context line as " ": an empty one is the diff's end
            lines.append(line)
        elif line:
            header.append(line)
    flush()
    return files


def _git_path(line: str) -> str:
    rest = line[len("diff --git "):]
    half = rest.find(" b/")
    return rest[half + 3:] if half >= 0 else rest


def _diff_section(diff: str, files_changed: object) -> str:
    if not diff.strip():
        return "<section id=diff><h2>Diff</h2><p class=muted>No change.</p></section>"
    cut = len(diff) > MAX_DIFF_CHARS
    files = split_diff(diff[:MAX_DIFF_CHARS])
    parts = [f"<section id=diff><h2>Diff</h2><p>{len(files)} file(s) changed.</p>"]
    if cut:
        parts.append(f"<p class=muted>The diff is {len(diff)} characters; only the first {MAX_DIFF_CHARS} are "
                     "shown.</p>")
    for f in files:
        parts.append(f'<h3 class=file>{_e(f.path)}</h3>')
        meta = [h for h in f.header if not h.startswith(("diff --git", "--- ", "+++ ", "index "))]
        if meta:
            parts.append(f"<pre class=muted>{_e(chr(10).join(meta))}</pre>")
        parts.append(_file_table(f))
    parts.append("</section>")
    return "".join(parts)


def _file_table(f: _File) -> str:
    body = [ln for ln in f.lines if not ln.startswith("@@") and not ln.startswith("\\")]
    shown = iter(_highlighted([ln[1:] for ln in body], f.path))
    rows, old, new = [], 0, 0
    for line in f.lines:
        if line.startswith("@@"):
            old, new = _hunk_start(line)
            rows.append(f'<tr class=hunk><td class=n></td><td class=n></td><td>{_e(line)}</td></tr>')
            continue
        if line.startswith("\\"):  # "\ No newline at end of file"
            rows.append(f'<tr class=hunk><td class=n></td><td class=n></td><td>{_e(line)}</td></tr>')
            continue
        content = next(shown, "")
        sign = line[:1]
        if sign == "+":
            rows.append(f'<tr class=add><td class=n></td><td class=n>{new}</td><td>+{content}</td></tr>')
            new += 1
        elif sign == "-":
            rows.append(f'<tr class=del><td class=n>{old}</td><td class=n></td><td>-{content}</td></tr>')
            old += 1
        else:
            rows.append(f'<tr class=ctx><td class=n>{old}</td><td class=n>{new}</td><td> {content}</td></tr>')
            old, new = old + 1, new + 1
    return f'<table class=diff data-file="{_e(f.path)}">{"".join(rows)}</table>'


def _hunk_start(line: str) -> tuple[int, int]:
    try:
        old, new = line.split("@@")[1].split()[:2]
        return int(old[1:].split(",")[0]), int(new[1:].split(",")[0])
    except (IndexError, ValueError):
        return 0, 0


def _tests(tests: object, verification: object) -> str:
    parts = ["<section id=tests><h2>Tests</h2>"]
    if isinstance(tests, Mapping):
        passed = bool(tests.get("passed"))
        parts.append(f"<p>{_badge('passed' if passed else 'failed')} <code>{_e(tests.get('command', ''))}</code> "
                     f"exited {_e(tests.get('exit_code', ''))}</p>")
        parts.append(f"<pre>{_e(_clip(str(tests.get('output_tail') or '')))}</pre>")
    else:
        parts.append("<p class=muted>The supervisor ran no tests for this task.</p>")
    if verification:
        parts.append(f"<h2>Fix verification</h2><pre id=verification>{_e(_clip(str(verification), 8000))}</pre>")
    parts.append("</section>")
    return "".join(parts)


def _usage(usage: object) -> str:
    if not isinstance(usage, Mapping):
        return ""
    cost = usage.get("cost_usd", 0)
    cost_text = f"${cost:.4f}" if isinstance(cost, int | float) else _e(cost)
    return (f"<section id=usage><h2>Cost</h2><p>{_e(usage.get('input_tokens', 0))} input tokens, "
            f"{_e(usage.get('output_tokens', 0))} output tokens, {_e(usage.get('requests', 0))} model requests, "
            f"{_e(cost_text)}</p></section>")


def _pr(pr: object) -> str:
    if not isinstance(pr, Mapping):
        return "<section id=pr><h2>Pull request</h2><p class=muted>None (a dry run, or not proposed).</p></section>"
    url = str(pr.get("url") or "")
    link = (f'<a href="{_e(url)}" rel="noreferrer noopener">{_e(url)}</a>'
            if url.startswith(("https://", "http://")) else _e(url))
    return (f"<section id=pr><h2>Pull request</h2><p>#{_e(pr.get('number', ''))} on branch "
            f"<code>{_e(pr.get('branch', ''))}</code> at <code>{_e(str(pr.get('head_sha', ''))[:12])}</code>: "
            f"{link}</p></section>")


def _releases(releases: Sequence[ReleaseView]) -> str:
    if not releases:
        return "<section id=release><h2>Release</h2><p class=muted>Not released.</p></section>"
    parts = ["<section id=release><h2>Release</h2>"]
    for r in releases:
        parts.append(f"<p>Release {r.id} of PR #{r.number}: {_badge(r.state)}</p><table>"
                     f"<tr><th>merged</th><td><code>{_e((r.merge_sha or '—')[:12])}</code></td></tr>"
                     f"<tr><th>deployed</th><td>{_e(_when(r.deployed_at))}</td></tr>"
                     f"<tr><th>watched until</th><td>{_e(_when(r.watch_until))}</td></tr>"
                     f"<tr><th>previous version</th><td><code>{_e((r.previous_sha or '—')[:12])}</code></td></tr>"
                     f"<tr><th>revert</th><td><code>{_e((r.revert_sha or '—')[:12])}</code></td></tr>"
                     f"<tr><th>outcome</th><td class=outcome>{_e(_clip(r.detail, 4000))}</td></tr></table>")
        if r.steps:
            parts.append("<table class=steps>" + "".join(_step_row(s) for s in r.steps) + "</table>")
    parts.append("</section>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------------ routes

Audit = Callable[[str | None, str, str, Mapping[str, Any]], Awaitable[None]]
"""`Store.audit`'s shape: (task_id, actor, event, detail)."""

ACTOR = "task_page"
# The Mini App's shell: reads the initData Telegram put in the fragment (the server never sees a fragment),
# trades it for a short signed link, and goes there. The page it lands on has no script.
_SHELL_SCRIPT = """(function () {
  var out = document.getElementById("status");
  var data = new URLSearchParams(location.hash.slice(1)).get("tgWebAppData") ||
    (window.Telegram && window.Telegram.WebApp && window.Telegram.WebApp.initData) || "";
  if (!data) { out.textContent = "Open this page from the bot in Telegram."; return; }
  fetch(location.pathname, {method: "POST", body: data, credentials: "omit",
                            headers: {"Content-Type": "text/plain"}})
    .then(function (r) { return r.json().then(function (j) { return [r.status, j]; }); })
    .then(function (x) {
      if (x[0] === 200 && typeof x[1].url === "string" && x[1].url.charAt(0) === "/") { location.replace(x[1].url); }
      else { out.textContent = "Refused: " + (x[1].error || x[0]); }
    })
    .catch(function () { out.textContent = "Could not reach the supervisor."; });
})();"""
_SHELL_HASH = base64.b64encode(hashlib.sha256(_SHELL_SCRIPT.encode()).digest()).decode()
_SHELL = ("<!doctype html><html lang=en><head><meta charset=utf-8><meta name=referrer content=\"no-referrer\">"
          f"<title>Task</title>{_STYLE}</head><body><main><p id=status>Checking with Telegram…</p></main>"
          f"<script>{_SHELL_SCRIPT}</script></body></html>")


def _headers(script_hash: str | None = None) -> dict[str, str]:
    return {"Content-Security-Policy": content_security_policy(script_hash=script_hash),
            "X-Content-Type-Options": "nosniff",
            # The URL holds the link's signature: it must not leak to another site, nor sit in a cache.
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def _refused_page(reason: str, status: int = 403) -> HTMLResponse:
    body = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Refused</title>{_STYLE}</head><body>"
            f"<main><h1>This link does not open this task</h1><p id=refused>{_e(reason)}</p>"
            "<p class=muted>Ask the bot for a new link.</p></main></body></html>")
    return HTMLResponse(body, status_code=status, headers=_headers())


def task_page_routes(store: Store, secret: bytes, *, releases: ReleaseRows | None = None,
                     audit: Audit | None = None, bot_token: str | None = None, owner_id: int | None = None,
                     clock: Callable[[], float] = time.time,
                     init_data_max_age: float = DEFAULT_INIT_DATA_MAX_AGE) -> list[Route]:
    """The task page's routes, for the app to mount beside its own:

        GET  /tasks/{task_id}/page?exp=..&sig=..   the page, for a link `runner.links.task_link` made
        GET  /tasks/{task_id}/app                  the Telegram Mini App's shell (no task data in it)
        POST /tasks/{task_id}/app                  body: the Mini App's initData; answers {"url": a link}
                                                   good for MINI_APP_LINK_TTL seconds, if Telegram signed it
                                                   for `owner_id` with `bot_token`

    A refused link or initData answers 403 and, given `audit` (`Store.audit`), leaves a `refused` row.
    """
    if not secret:
        raise ValueError("the task page needs a non-empty link secret")

    async def refuse(request: Request, task_id: str, why: str, status: int = 403) -> None:
        if audit is not None:
            client = request.client.host if request.client else ""
            await audit(None, ACTOR, "refused", {"path": request.url.path, "client": client, "reason": "task_link",
                                                 "why": why, "task": task_id[:100], "status": status})

    async def page(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        try:
            check_task_link(secret, task_id, request.query_params.get("exp"), request.query_params.get("sig"),
                            now=clock())
        except LinkError as exc:
            await refuse(request, task_id, exc.reason)
            return _refused_page(exc.reason)
        try:
            view = await load_view(store, task_id, releases)
        except TaskError:
            return _refused_page("there is no such task", 404)
        return HTMLResponse(render(view), headers=_headers())

    async def shell(request: Request) -> Response:
        return HTMLResponse(_SHELL, headers=_headers(_SHELL_HASH))

    async def mini_app(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        raw = await request.body()
        try:
            if bot_token is None or owner_id is None:
                raise LinkError("no Telegram bot is configured for the Mini App")
            user = check_init_data(raw.decode("utf-8", "replace"), bot_token, now=clock(), max_age=init_data_max_age)
            if user.user_id != owner_id:
                raise LinkError("the Mini App was opened by someone who is not the owner")
        except LinkError as exc:
            await refuse(request, task_id, exc.reason)
            return JSONResponse({"error": exc.reason}, status_code=403, headers=_headers())
        try:
            await store.get_task(task_id)
        except TaskError:
            return JSONResponse({"error": "there is no such task"}, status_code=404, headers=_headers())
        return JSONResponse({"url": task_link(secret, task_id, now=clock(), ttl=MINI_APP_LINK_TTL)},
                            headers=_headers())

    return [Route("/tasks/{task_id}/page", page, methods=["GET"]),
            Route("/tasks/{task_id}/app", shell, methods=["GET"]),
            Route("/tasks/{task_id}/app", mini_app, methods=["POST"])]
