"""Grafana-managed alerts: the webhook contact point's body → the same AlertNotification Alertmanager's gives.

Grafana's unified alerting sends, per notification (Grafana docs, "Configure webhook notifications"), the
Alertmanager webhook fields (`receiver`, `status`, `alerts[]`, `groupLabels`, `commonLabels`,
`commonAnnotations`, `externalURL`, `groupKey`, `truncatedAlerts`) with `version: "1"` and its own: `orgId`,
`title`, `state` (`alerting` / `ok`), `message`; each alert adds `silenceURL`, `dashboardURL`, `panelURL`,
`values` (refID → number, or null) and `valueString`. The alerts become runner.alerts.alertmanager.Alert values, so
fingerprint, de-duplication, cooldown and the Loki query (from labels and annotations, `logql_for`) are the
Alertmanager path's own. Grafana's own labels (`grafana_folder`, `datasource_uid`, `ref_id`, `__*`) name the
rule, not the log stream: they are kept beside the alert, not in its labels, so they neither end up in the
LogQL selector nor make a Grafana alert's fallback fingerprint differ from the same alert through Alertmanager.

A contact point authenticates with HTTP basic credentials or an Authorization header (`<scheme> <credentials>`,
Bearer by default), and, where configured (Grafana 11.6+), an HMAC-SHA256 signature: lowercase hex, bare, in
`X-Grafana-Alerting-Signature` (the header name is configurable), over the raw body, or over
`<unix seconds>:<body>` when a timestamp header is configured. A timestamp older than `max_age` (or ahead of
our clock) is a replay and refused; a replay inside the window is the same alerts again, which dedupe absorbs.

    GrafanaAuthError (a RunnerError)   the request is not from the contact point; `reason` says why
    WebhookError                       the body is not a Grafana webhook (runner.alerts.payload)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from runner.alerts.alertmanager import MAX_BODY_BYTES, AlertNotification, WebhookError, parse_alertmanager
from runner.errors import RunnerError

__all__ = ["DEFAULT_SIGNATURE_HEADER", "GRAFANA_OWN_LABELS", "ROUTE_PATH", "GrafanaAlert", "GrafanaAuth",
           "GrafanaAuthError", "GrafanaNotification", "grafana_endpoint", "parse_grafana", "signature", "verify"]

ROUTE_PATH = "/agent/grafana"
DEFAULT_SIGNATURE_HEADER = "X-Grafana-Alerting-Signature"
DEFAULT_MAX_AGE = 300.0
CLOCK_SKEW = 30.0
GRAFANA_OWN_LABELS = frozenset({"grafana_folder", "datasource_uid", "ref_id"})
ACTOR = "grafana"


class GrafanaAuthError(RunnerError):
    """The request does not carry the contact point's credentials or signature."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class GrafanaAlert:
    """What Grafana says of one alert beyond the Alertmanager fields, in the notification's order."""

    fingerprint: str
    values: Mapping[str, float]
    value_string: str
    dashboard_url: str
    panel_url: str
    silence_url: str
    grafana_labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class GrafanaNotification:
    notification: AlertNotification
    """The alerts as Alertmanager's path has them: hand this to auto-fix admission."""
    org_id: int
    state: str
    title: str
    message: str
    alerts: tuple[GrafanaAlert, ...]


# ---------------------------------------------------------------------------------------------- parsing


def _own(labels: object) -> tuple[object, dict[str, str]]:
    """`labels` without Grafana's own, and those apart (non-objects are left for the parser to refuse)."""
    if not isinstance(labels, dict):
        return labels, {}
    own = {k: v for k, v in labels.items() if (k in GRAFANA_OWN_LABELS or k.startswith("__")) and isinstance(v, str)}
    return {k: v for k, v in labels.items() if k not in own}, own


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WebhookError(f"{where}.{key}: expected a string")
    return value


def _values(raw: object, where: str) -> Mapping[str, float]:
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, dict) or len(raw) > 64:
        raise WebhookError(f"{where}.values: expected an object of numbers")
    for key, value in raw.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise WebhookError(f"{where}.values.{key}: expected a number")
    return MappingProxyType({k: float(v) for k, v in sorted(raw.items())})


def parse_grafana(body: object) -> GrafanaNotification:
    """A Grafana webhook contact point's body (bytes, str or decoded JSON). Raises WebhookError."""
    if isinstance(body, bytes | bytearray | str):
        if len(body) > MAX_BODY_BYTES:
            raise WebhookError(f"grafana: body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(body)
        except ValueError as exc:
            raise WebhookError(f"grafana: body is not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise WebhookError("grafana: expected an object")
    if body.get("version") != "1" or "orgId" not in body:
        raise WebhookError("grafana: not a Grafana webhook (version '1' with orgId); a custom payload template?")
    org_id = body["orgId"]
    if not isinstance(org_id, int) or isinstance(org_id, bool):
        raise WebhookError("grafana.orgId: expected a number")
    raw_alerts = body.get("alerts")
    if not isinstance(raw_alerts, list):
        raise WebhookError("grafana.alerts: expected a list")
    shaped: list[object] = []
    extras: list[GrafanaAlert] = []
    for i, raw in enumerate(raw_alerts):
        where = f"grafana.alerts[{i}]"
        if not isinstance(raw, dict):
            raise WebhookError(f"{where}: expected an object")
        labels, own = _own(raw.get("labels"))
        shaped.append({**{k: raw[k] for k in ("status", "annotations", "startsAt", "endsAt", "generatorURL",
                                              "fingerprint") if k in raw}, "labels": labels})
        extras.append(GrafanaAlert(
            fingerprint=_text(raw, "fingerprint", where), values=_values(raw.get("values"), where),
            value_string=_text(raw, "valueString", where), dashboard_url=_text(raw, "dashboardURL", where),
            panel_url=_text(raw, "panelURL", where), silence_url=_text(raw, "silenceURL", where),
            grafana_labels=MappingProxyType(dict(sorted(own.items())))))
    # Alertmanager's parser checks the rest, field by field, exactly as for Alertmanager's own webhook.
    as_alertmanager = {**{k: body[k] for k in ("receiver", "status", "groupKey", "truncatedAlerts", "externalURL")
                          if k in body},
                       "version": "4", "alerts": shaped, "groupLabels": _own(body.get("groupLabels"))[0],
                       "commonLabels": _own(body.get("commonLabels"))[0]}
    try:
        notification = dataclasses.replace(parse_alertmanager(as_alertmanager), sender=ACTOR)
    except WebhookError as exc:
        raise WebhookError(str(exc).replace("webhook", "grafana", 1)) from exc
    return GrafanaNotification(notification, org_id, _text(body, "state", "grafana"), _text(body, "title", "grafana"),
                               _text(body, "message", "grafana"), tuple(extras))


# ---------------------------------------------------------------------------------------------- auth


@dataclass(frozen=True, slots=True)
class GrafanaAuth:
    """What the contact point was configured with. At least one of the three must be set."""

    authorization: str | None = None
    """The Authorization header's credentials (`authorization_credentials`)."""
    scheme: str = "Bearer"
    basic: tuple[str, str] | None = None
    """(username, password) of HTTP basic authentication; Grafana refuses both this and `authorization`."""
    hmac_secret: str | None = None
    signature_header: str = DEFAULT_SIGNATURE_HEADER
    timestamp_header: str | None = None
    max_age: float = DEFAULT_MAX_AGE

    def __post_init__(self) -> None:
        if self.authorization is None and self.basic is None and not self.hmac_secret:
            raise ValueError("a Grafana contact point needs credentials or an HMAC secret")
        if self.authorization is not None and self.basic is not None:
            raise ValueError("Grafana sends either basic credentials or an Authorization header, not both")

    def __repr__(self) -> str:  # never print a secret
        return (f"GrafanaAuth(scheme={self.scheme!r}, authorization={'***' if self.authorization else None}, "
                f"basic={'***' if self.basic else None}, hmac={'***' if self.hmac_secret else None}, "
                f"timestamp_header={self.timestamp_header!r})")


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def signature(secret: str, body: bytes, timestamp: str | None) -> str:
    """The hex HMAC-SHA256 Grafana writes: over `timestamp:body` with a timestamp, else over the body."""
    signed = body if timestamp is None else timestamp.encode() + b":" + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify(auth: GrafanaAuth, headers: Mapping[str, str], body: bytes, *, now: float) -> None:
    """Every check the contact point is configured for passes, or GrafanaAuthError says which did not.

    `headers` is looked up case-insensitively by its own type (Starlette's Headers); pass lower-case keys
    in a plain dict.
    """
    header = headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if auth.authorization is not None:
        if not header:
            raise GrafanaAuthError("no Authorization header")
        if scheme.lower() != auth.scheme.lower() or not _same(presented.strip(), auth.authorization):
            raise GrafanaAuthError("bad credentials")
    if auth.basic is not None:
        if scheme.lower() != "basic":
            raise GrafanaAuthError("no basic credentials")
        try:
            user, sep, password = base64.b64decode(presented.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise GrafanaAuthError("bad credentials") from None
        # Both compared, always: which half was wrong does not show in the time taken.
        ok_user, ok_password = _same(user, auth.basic[0]), _same(password, auth.basic[1])
        if not (sep and ok_user and ok_password):
            raise GrafanaAuthError("bad credentials")
    if auth.hmac_secret:
        given = headers.get(auth.signature_header.lower(), "").strip()
        if not given:
            raise GrafanaAuthError("no signature")
        stamp = None
        if auth.timestamp_header is not None:
            stamp = headers.get(auth.timestamp_header.lower(), "").strip()
            if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
                raise GrafanaAuthError("no signature timestamp")
        if not _same(given.lower(), signature(auth.hmac_secret, body, stamp)):
            raise GrafanaAuthError("bad signature")
        if stamp is not None:
            age = now - int(stamp)
            if age > auth.max_age:
                raise GrafanaAuthError("signature timestamp too old (a replay?)")
            if age < -CLOCK_SKEW:
                raise GrafanaAuthError("signature timestamp in the future")


# ---------------------------------------------------------------------------------------------- endpoint

Admit = Callable[[GrafanaNotification], Awaitable[Response]]
Refuse = Callable[[Request, str], Awaitable[None]]


def grafana_endpoint(auth: GrafanaAuth | None, admit: Admit, *, refuse: Refuse | None = None,
                     clock: Callable[[], float]) -> Callable[[Request], Awaitable[Response]]:
    """`POST ROUTE_PATH`: authenticate, parse, hand the notification to `admit` (which answers, as the
    Alertmanager route does with `autofix.admit`). A refused request is passed to `refuse` (to audit) with
    its reason and answered 401; no `auth` configured refuses everything."""

    async def endpoint(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            if auth is None:
                raise GrafanaAuthError("no credential configured")
            verify(auth, request.headers, body, now=clock())
        except GrafanaAuthError as exc:
            if refuse is not None:
                await refuse(request, exc.reason)
            return JSONResponse({"error": "unauthorized", "reason": exc.reason}, status_code=401)
        try:
            parsed = parse_grafana(body)
        except WebhookError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return await admit(parsed)

    return endpoint
