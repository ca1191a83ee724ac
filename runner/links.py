"""PURE: signed, expiring links to a task's page, and Telegram Mini App `initData` checks.

A link carries no bearer token: `exp` (Unix seconds) and `sig`, an HMAC-SHA256 over the task id and the
expiry with the server's secret. A link is good for one task until it expires; a link for another task, a
changed expiry or a forged signature is refused. Every comparison is constant-time.

A Mini App proves who opened it with `initData`, the query string Telegram's client hands the page, signed
with the bot's token as Telegram documents (core.telegram.org/bots/webapps, "Validating data received via the
Mini App"):

    secret_key       = HMAC_SHA256(key="WebAppData", msg=bot_token)
    data_check_string = "\\n".join(f"{key}={value}" for every field but `hash`, sorted by key)
    hash             = hex(HMAC_SHA256(key=secret_key, msg=data_check_string))

and `auth_date` (Unix seconds) says when; an old one is refused, so a leaked `initData` does not open pages
for ever.

    LinkError (a RunnerError and a ValueError)   a link or an initData is refused; `reason` says why
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import parse_qsl, urlencode

from runner.errors import RunnerError

__all__ = [
    "DEFAULT_INIT_DATA_MAX_AGE",
    "DEFAULT_LINK_TTL",
    "LinkError",
    "MiniAppUser",
    "check_init_data",
    "check_task_link",
    "sign_init_data",
    "sign_task_link",
    "task_link",
]

DEFAULT_LINK_TTL = 7 * 24 * 3600  # a week: the owner reads the Telegram message later, not never
DEFAULT_INIT_DATA_MAX_AGE = 24 * 3600
MAX_TTL = 90 * 24 * 3600
# A clock a little ahead of ours is not an attack; a link minted far in the future is.
CLOCK_SKEW = 60
MAX_INIT_DATA_CHARS = 8192
_LINK_DOMAIN = b"agent-runner task page v1"


class LinkError(RunnerError, ValueError):
    """A link or a Mini App's initData is refused; `reason` is one short phrase for the audit log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------------------------ links


def sign_task_link(secret: bytes, task_id: str, expires_at: int) -> str:
    """The hex signature of a link to `task_id`'s page that is good until `expires_at` (Unix seconds)."""
    if not secret:
        raise ValueError("the link secret is empty")
    # Length-prefixed fields: no (task id, expiry) pair can be re-cut into another with the same bytes.
    tid = task_id.encode()
    exp = str(int(expires_at)).encode()
    message = b"%s\x00%d:%s\x00%d:%s" % (_LINK_DOMAIN, len(tid), tid, len(exp), exp)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def task_link(secret: bytes, task_id: str, *, now: float, ttl: int = DEFAULT_LINK_TTL, base_url: str = "") -> str:
    """`{base_url}/tasks/{id}/page?exp=..&sig=..`, good for `ttl` seconds from `now`."""
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl: between 1 and {MAX_TTL} seconds")
    expires_at = int(now) + ttl
    query = urlencode({"exp": expires_at, "sig": sign_task_link(secret, task_id, expires_at)})
    return f"{base_url.rstrip('/')}/tasks/{task_id}/page?{query}"


def check_task_link(secret: bytes, task_id: str, exp: str | None, sig: str | None, *, now: float) -> int:
    """The link's expiry when `exp`/`sig` open `task_id`'s page at `now`; else LinkError with the reason."""
    if not exp or not sig:
        raise LinkError("the link has no signature")
    if not (exp.isascii() and exp.isdigit() and len(exp) <= 12):
        raise LinkError("the link's expiry is not a time")
    expires_at = int(exp)
    expected = sign_task_link(secret, task_id, expires_at)
    # Checked before the time, so a forged link is called forged whether or not it is also old.
    if not hmac.compare_digest(expected.encode(), sig.strip().lower().encode("ascii", "replace")):
        raise LinkError("the link's signature does not match this task")
    if expires_at <= now:
        raise LinkError("the link has expired")
    if expires_at > now + MAX_TTL + CLOCK_SKEW:
        raise LinkError("the link expires further ahead than any link this server makes")
    return expires_at


# ------------------------------------------------------------------------------------------------ Mini App


@dataclass(frozen=True, slots=True)
class MiniAppUser:
    """Who opened the Mini App, as Telegram signed it."""

    user_id: int
    auth_date: int
    start_param: str
    fields: Mapping[str, str]


def _secret_key(bot_token: str) -> bytes:
    return hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()


def _data_check_string(fields: Mapping[str, str]) -> bytes:
    return "\n".join(f"{key}={fields[key]}" for key in sorted(fields) if key != "hash").encode()


def sign_init_data(fields: Mapping[str, str], bot_token: str) -> str:
    """`fields` with their `hash`, as the query string Telegram's client gives a Mini App (for tests and fakes)."""
    digest = hmac.new(_secret_key(bot_token), _data_check_string(fields), hashlib.sha256).hexdigest()
    return urlencode({**{k: v for k, v in fields.items() if k != "hash"}, "hash": digest})


def check_init_data(init_data: str, bot_token: str, *, now: float,
                    max_age: float = DEFAULT_INIT_DATA_MAX_AGE) -> MiniAppUser:
    """The signed user in `init_data` when its hash is Telegram's and `auth_date` is fresh; else LinkError."""
    if not bot_token:
        raise LinkError("no bot token is configured to check a Mini App")
    if not init_data or len(init_data) > MAX_INIT_DATA_CHARS:
        raise LinkError("no initData")
    try:
        pairs = parse_qsl(init_data, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise LinkError("initData is not a query string") from exc
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise LinkError("initData repeats a field")  # which copy was signed? refuse rather than guess
    given = fields.get("hash", "")
    expected = hmac.new(_secret_key(bot_token), _data_check_string(fields), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.lower().encode("ascii", "replace")):
        raise LinkError("initData is not signed with this bot's token")
    raw_date = fields.get("auth_date", "")
    if not (raw_date.isascii() and raw_date.isdigit() and len(raw_date) <= 12):
        raise LinkError("initData has no auth_date")
    auth_date = int(raw_date)
    if auth_date > now + CLOCK_SKEW:
        raise LinkError("initData is dated in the future")
    if now - auth_date > max_age:
        raise LinkError("initData is too old")
    try:
        user = json.loads(fields.get("user", ""))
    except ValueError as exc:
        raise LinkError("initData has no user") from exc
    user_id = user.get("id") if isinstance(user, dict) else None
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise LinkError("initData has no user id")
    return MiniAppUser(user_id, auth_date, fields.get("start_param", ""), MappingProxyType(fields))
