"""Follow-ups over HTTP: the owner's `POST /tasks/{id}/follow-ups`, and GitHub's webhook for the owner's `/agent` PR
comments (signed with X-Hub-Signature-256), with polling of PR comments when no webhook secret is configured.

    POST /tasks/{task_id}/follow-ups   {"text": "..."}  bearer AGENT_API_TOKEN   202 {follow_up, state, ...}
    POST /github/webhook               GitHub's issue_comment event             202 accepted · 200 ignored · 401

Both call runner.service.operations.follow_up (or follow_up_of_pr), which audits and refuses; a webhook delivery
whose signature does not verify is refused with 401 and audited `refused` before its body is parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from runner.errors import ForgeError, RateLimited, TaskError, TaskNotFound
from runner.forge.base import Comment
from runner.models import FollowUp, TaskState
from runner.service import operations
from runner.service.operations import Caller
from runner.service.state import Service

__all__ = ["CommentPoller", "command_of", "followup_routes", "owner_login", "signature_of"]

log = logging.getLogger("agent_runner.followups")

COMMAND = "/agent"
MAX_BODY_BYTES = 1 * 2**20  # GitHub caps webhook payloads at 25 MB; a comment event is a few KB
DEFAULT_POLL_SECONDS = 30.0


def followup_routes() -> list[BaseRoute]:
    return [Route("/tasks/{task_id}/follow-ups", create_follow_up, methods=["POST"]),
            Route("/github/webhook", github_webhook, methods=["POST"])]


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _where(request: Request) -> dict[str, str]:
    return {"path": request.url.path, "client": request.client.host if request.client else ""}


def rendered(follow: FollowUp) -> dict[str, Any]:
    return {"follow_up": follow.id, "task_id": follow.task_id, "pr": follow.number, "state": follow.state,
            "base_sha": follow.base_sha, "head_sha": follow.head_sha, "session": follow.session,
            "reason": follow.reason}


async def _refused(service: Service, caller: Caller, exc: Exception) -> JSONResponse:
    if isinstance(exc, RateLimited):
        return JSONResponse({"error": str(exc), "retry_after": exc.retry_after}, status_code=429,
                            headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, TaskNotFound):
        return _error(404, str(exc))
    return _error(409, str(exc))


# ----------------------------------------------------------------------------------------------- the API


async def create_follow_up(request: Request) -> Response:
    """The owner's follow-up on a task's pull request: 202 with its row (queued), or why not."""
    service = _service(request)
    caller = Caller("owner", "api", _where(request))
    token = service.settings.api_token
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if token is None or scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(),
                                                                               token.reveal().encode()):
        await operations.refuse(service.store, Caller("api", "api", _where(request)),
                                "no bearer token" if not presented else "bad token")
        return _error(401, "unauthorized")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return _error(413, "body too large")
    try:
        data = json.loads(raw)
    except ValueError:
        return _error(400, "body: not JSON")
    text = data.get("text") if isinstance(data, dict) else None
    if not isinstance(text, str) or not text.strip():
        return _error(400, "text: a non-empty string is required (what should change)")
    try:
        follow = await operations.follow_up(service, caller, request.path_params["task_id"], text)
    except (TaskError, RateLimited) as exc:
        return await _refused(service, caller, exc)
    return JSONResponse({**rendered(follow), "links": {"task": f"/tasks/{follow.task_id}"}}, status_code=202)


# ----------------------------------------------------------------------------------------------- GitHub


def signature_of(secret: str, body: bytes) -> str:
    """GitHub's X-Hub-Signature-256 value for `body`: "sha256=" and the hex HMAC-SHA256 keyed with `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def owner_login(service: Service) -> str | None:
    """Whose `/agent` comments are follow-ups: GITHUB_OWNER_LOGIN, else the owner part of GITHUB_REPOSITORY."""
    settings = service.settings
    if settings.github_owner_login:
        return settings.github_owner_login
    return settings.github_repository.split("/", 1)[0] if settings.github_repository else None


def command_of(body: str) -> str | None:
    """The follow-up's words of a comment that starts with `/agent` (None for any other comment)."""
    text = body.lstrip()
    if not text.startswith(COMMAND) or (len(text) > len(COMMAND) and not text[len(COMMAND)].isspace()):
        return None
    return text[len(COMMAND):].strip() or None


async def github_webhook(request: Request) -> Response:
    """GitHub's delivery of an `issue_comment` event: a PR comment by the owner starting with `/agent` becomes a
    follow-up; any other comment is ignored and audited; a delivery that is not signed with our secret is 401."""
    service = _service(request)
    where = {**_where(request), "delivery": request.headers.get("x-github-delivery", "")[:64]}
    secret = service.settings.github_webhook_secret
    raw = await request.body()
    presented = request.headers.get("x-hub-signature-256", "")
    if secret is None or len(raw) > MAX_BODY_BYTES or not hmac.compare_digest(
            presented.encode(), signature_of(secret.reveal(), raw).encode()):
        reason = ("no webhook secret configured" if secret is None else "no signature" if not presented
                  else "body too large" if len(raw) > MAX_BODY_BYTES else "bad signature")
        await operations.refuse(service.store, Caller("github", "github", where), reason)
        return _error(401, "signature does not verify")
    event = request.headers.get("x-github-event", "")
    if event == "ping":
        return JSONResponse({"ok": True})
    try:
        data = json.loads(raw)
    except ValueError:
        return _error(400, "body: not JSON")
    if event != "issue_comment" or not isinstance(data, dict) or data.get("action") != "created":
        return JSONResponse({"ignored": f"event {event!r} {data.get('action') if isinstance(data, dict) else ''}"})
    comment = _comment_of(data)
    if comment is None:
        return _error(400, "body: not an issue_comment event on a pull request")
    accepted = await consider(service, comment, where)
    if isinstance(accepted, FollowUp):
        return JSONResponse(rendered(accepted), status_code=202)
    return JSONResponse({"ignored": accepted})


def _comment_of(data: Mapping[str, Any]) -> Comment | None:
    issue, comment = data.get("issue"), data.get("comment")
    if not isinstance(issue, Mapping) or not isinstance(comment, Mapping) or "pull_request" not in issue:
        return None
    user = comment.get("user")
    number, cid, body = issue.get("number"), comment.get("id"), comment.get("body")
    login = user.get("login") if isinstance(user, Mapping) else None
    if not (isinstance(number, int) and isinstance(cid, int) and isinstance(body, str) and isinstance(login, str)):
        return None
    return Comment(id=cid, number=number, body=body, author=login, created_at=str(comment.get("created_at", "")),
                   url=str(comment.get("html_url", "")))


async def consider(service: Service, comment: Comment, where: Mapping[str, str]) -> FollowUp | str:
    """A PR comment, from the webhook or the poller: the follow-up it started, or why it was ignored (audited
    `pr_comment_ignored`, with the comment's id, so the poller never considers it twice)."""
    owner = owner_login(service)
    words = command_of(comment.body)
    detail = {"comment_id": comment.id, "pr": comment.number, "author": comment.author[:100]}
    why: str | None = None
    if words is None:
        why = "not an /agent command"
    elif owner is None or comment.author.lower() != owner.lower():
        why = "not the owner's comment"
    if why is None:
        task = await service.store.task_of_pr(comment.number)
        caller = Caller(f"github:{comment.author}", "github", {**where, "comment_id": str(comment.id)})
        try:
            if task is None:
                raise TaskNotFound(f"no proposed task of agent-runner has PR #{comment.number}")
            assert words is not None
            return await operations.follow_up(service, caller, task.id, words)
        except (TaskError, RateLimited) as exc:
            why = f"refused: {exc}"
            with contextlib.suppress(ForgeError):  # the owner asked there: the answer goes there
                if service.forge is not None:
                    await service.forge.comment(comment.number, f"agent-runner: follow-up not started: {exc}")
    await service.store.audit(None, "github", "pr_comment_ignored", {**detail, "reason": why})
    return why


class CommentPoller:
    """With no webhook secret: every `interval` seconds, the comments of each PR a proposed task of ours has, each
    considered once (comments a follow-up started or that were ignored are remembered through the state file)."""

    def __init__(self, service: Service, *, interval: float = DEFAULT_POLL_SECONDS) -> None:
        self._service = service
        self._interval = interval
        self._seen: set[int] | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the forge down: next time
                log.warning("polling PR comments failed", exc_info=True)
            await asyncio.sleep(self._interval)

    async def once(self) -> list[FollowUp | str]:
        service, forge = self._service, self._service.forge
        if forge is None:
            return []
        if self._seen is None:
            self._seen = await self._remembered()
        outcomes: list[FollowUp | str] = []
        for task in await service.store.list_tasks(states=[TaskState.PROPOSED], limit=200):
            pr = task.result.pr if task.result is not None else None
            if pr is None:
                continue
            for comment in await forge.list_comments(pr.number):
                if comment.id in self._seen:
                    continue
                self._seen.add(comment.id)
                outcomes.append(await consider(service, comment, {"via": "polling"}))
        return outcomes

    async def _remembered(self) -> set[int]:
        seen: set[int] = set()
        store = self._service.store
        for entry in await store.audit_log(event="pr_comment_ignored"):
            if isinstance(entry.detail.get("comment_id"), int):
                seen.add(entry.detail["comment_id"])
        for entry in await store.audit_log(event="follow_up"):
            if isinstance(entry.detail.get("comment_id"), str) and entry.detail["comment_id"].isdigit():
                seen.add(int(entry.detail["comment_id"]))
        return seen
