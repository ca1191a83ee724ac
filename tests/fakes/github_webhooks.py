"""GitHub's side of PR comments for the fake: a comment by any user on a fake pull request (as the REST API then
lists it), and its `issue_comment` webhook delivery, signed as GitHub signs it.

GitHub sends `POST` with `X-GitHub-Event: issue_comment`, `X-GitHub-Delivery: <uuid>`, `User-Agent:
GitHub-Hookshot/...` and `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body, keyed with the webhook's
secret>`; the payload holds `action`, `issue` (a pull request's issue carries a `pull_request` object),
`comment` (`id`, `body`, `user.login`, ...), `repository` and `sender`
(docs.github.com/webhooks/webhook-events-and-payloads#issue_comment).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import httpx

from tests.fakes.github import FakeGitHub


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def add_comment(fake: FakeGitHub, number: int, body: str, login: str) -> dict[str, Any]:
    """`login` comments `body` on pull request `number` (the fake's REST API lists it from then on)."""
    return fake.add_comment(number, body, {"login": login, "id": 1000 + len(login), "type": "User"},
                            "OWNER" if login.lower() == fake.owner.lower() else "NONE")


def comment_event(fake: FakeGitHub, number: int, comment: dict[str, Any]) -> dict[str, Any]:
    """The `issue_comment` `created` payload GitHub delivers for `comment` on pull request `number`."""
    pr = fake.pulls[number]
    return {
        "action": "created",
        "issue": {"number": number, "title": pr["title"], "state": pr["state"], "user": pr["user"],
                  "url": fake._url(f"/issues/{number}"),
                  "pull_request": {"url": fake._url(f"/pulls/{number}"), "html_url": fake._html(f"/pull/{number}")}},
        "comment": comment,
        "repository": {"full_name": fake.repository, "name": fake.repository.split("/")[1],
                       "owner": {"login": fake.owner}},
        "sender": comment["user"],
    }


async def deliver(url: str, event: dict[str, Any], secret: str | None, *, signature: str | None = None,
                  kind: str = "issue_comment") -> httpx.Response:
    """POST `event` to `url` as GitHub's webhook does: signed with `secret` (or with `signature` as given, or
    unsigned when both are None)."""
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "GitHub-Hookshot/fake",
               "X-GitHub-Event": kind, "X-GitHub-Delivery": str(uuid.uuid4()),
               "X-GitHub-Hook-ID": "1"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    elif secret is not None:
        headers["X-Hub-Signature-256"] = sign(secret, body)
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(url, content=body, headers=headers)
