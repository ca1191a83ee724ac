"""Signed task links and Telegram Mini App initData."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from runner.links import (
    MAX_TTL,
    LinkError,
    check_init_data,
    check_task_link,
    sign_init_data,
    sign_task_link,
    task_link,
)

SECRET = b"s3cret-of-the-server-0123456789abcdef"
NOW = 1_800_000_000.0
BOT_TOKEN = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11"


def _parts(link: str) -> tuple[str, str, str]:
    url = urlsplit(link)
    query = parse_qs(url.query)
    return url.path, query["exp"][0], query["sig"][0]


def test_task_link_opens_its_task_until_it_expires() -> None:
    path, exp, sig = _parts(task_link(SECRET, "20260101-000000-abcdef", now=NOW, ttl=600))
    assert path == "/tasks/20260101-000000-abcdef/page"
    assert check_task_link(SECRET, "20260101-000000-abcdef", exp, sig, now=NOW + 599) == int(NOW) + 600
    with pytest.raises(LinkError, match="expired"):
        check_task_link(SECRET, "20260101-000000-abcdef", exp, sig, now=NOW + 600)


def test_task_link_is_refused_for_another_task() -> None:
    _, exp, sig = _parts(task_link(SECRET, "task-a", now=NOW))
    with pytest.raises(LinkError, match="does not match"):
        check_task_link(SECRET, "task-b", exp, sig, now=NOW)


def test_task_link_is_refused_with_a_moved_expiry_or_another_secret() -> None:
    _, exp, sig = _parts(task_link(SECRET, "task-a", now=NOW, ttl=60))
    with pytest.raises(LinkError, match="does not match"):
        check_task_link(SECRET, "task-a", str(int(exp) + 3600), sig, now=NOW)
    with pytest.raises(LinkError, match="does not match"):
        check_task_link(b"another secret", "task-a", exp, sig, now=NOW)


def test_task_link_fields_cannot_be_recut() -> None:
    # ("ab", 1234) and ("a", "b1234")-like splits must not share a signature.
    assert sign_task_link(SECRET, "task-1", 23) != sign_task_link(SECRET, "task-12", 3)


@pytest.mark.parametrize(("exp", "sig", "why"), [
    (None, None, "no signature"), ("", "ab", "no signature"), ("12x", "ab", "not a time"),
    ("-5", "ab", "not a time"), ("9" * 40, "ab", "not a time"), ("1800000600", "0" * 64, "does not match"),
    ("1800000600", "é", "does not match"),
])
def test_task_link_refuses_malformed_parts(exp: str | None, sig: str | None, why: str) -> None:
    with pytest.raises(LinkError, match=why):
        check_task_link(SECRET, "task-a", exp, sig, now=NOW)


def test_task_link_refuses_an_expiry_no_link_of_ours_has() -> None:
    far = int(NOW) + MAX_TTL + 3600
    with pytest.raises(LinkError, match="further ahead"):
        check_task_link(SECRET, "task-a", str(far), sign_task_link(SECRET, "task-a", far), now=NOW)


def test_task_link_needs_a_secret_and_a_sane_ttl() -> None:
    with pytest.raises(ValueError):
        sign_task_link(b"", "t", 1)
    with pytest.raises(ValueError):
        task_link(SECRET, "t", now=NOW, ttl=0)


# ----------------------------------------------------------------------------------------------- initData


def _telegram_init_data(user_id: int = 42, auth_date: float = NOW, token: str = BOT_TOKEN) -> str:
    """Built independently of runner.links, as Telegram's documentation writes the algorithm out."""
    fields = {"query_id": "AAHdF6IQAAAAAN0XohDhrOrc", "user": json.dumps({"id": user_id, "first_name": "Ann"}),
              "auth_date": str(int(auth_date)), "start_param": "task-a", "signature": "ed25519-not-checked-here"}
    check = "\n".join(f"{k}={fields[k]}" for k in sorted(fields))
    secret_key = hmac.new(b"WebAppData", token.encode(), hashlib.sha256).digest()
    digest = hmac.new(secret_key, check.encode(), hashlib.sha256).hexdigest()
    return "&".join(f"{k}={quote(v, safe='')}" for k, v in {**fields, "hash": digest}.items())


def test_init_data_signed_by_the_bot_names_its_user() -> None:
    user = check_init_data(_telegram_init_data(), BOT_TOKEN, now=NOW + 10)
    assert (user.user_id, user.auth_date, user.start_param) == (42, int(NOW), "task-a")


def test_init_data_from_sign_init_data_matches_telegrams_algorithm() -> None:
    fields = {"user": json.dumps({"id": 7}), "auth_date": str(int(NOW))}
    ours = parse_qs(sign_init_data(fields, BOT_TOKEN))["hash"][0]
    theirs = parse_qs(_telegram_init_data(7))["hash"][0]
    assert check_init_data(sign_init_data(fields, BOT_TOKEN), BOT_TOKEN, now=NOW).user_id == 7
    assert len(ours) == len(theirs) == 64


def test_init_data_signed_with_another_token_is_refused() -> None:
    with pytest.raises(LinkError, match="not signed"):
        check_init_data(_telegram_init_data(token="999:other"), BOT_TOKEN, now=NOW)


def test_init_data_with_a_changed_field_is_refused() -> None:
    tampered = _telegram_init_data().replace("%22id%22%3A%2042", "%22id%22%3A%201")
    assert tampered != _telegram_init_data()
    with pytest.raises(LinkError, match="not signed"):
        check_init_data(tampered, BOT_TOKEN, now=NOW)


def test_init_data_too_old_or_from_the_future_is_refused() -> None:
    with pytest.raises(LinkError, match="too old"):
        check_init_data(_telegram_init_data(auth_date=NOW - 3601), BOT_TOKEN, now=NOW, max_age=3600)
    with pytest.raises(LinkError, match="future"):
        check_init_data(_telegram_init_data(auth_date=NOW + 3600), BOT_TOKEN, now=NOW)


@pytest.mark.parametrize("raw", ["", "hash", "a=1&a=2&hash=00", "x" * 9000])
def test_init_data_malformed_is_refused(raw: str) -> None:
    with pytest.raises(LinkError):
        check_init_data(raw, BOT_TOKEN, now=NOW)


def test_init_data_without_a_user_id_is_refused() -> None:
    signed = sign_init_data({"auth_date": str(int(NOW)), "user": json.dumps({"id": "42"})}, BOT_TOKEN)
    with pytest.raises(LinkError, match="user id"):
        check_init_data(signed, BOT_TOKEN, now=NOW)
