"""PURE: Alertmanager webhooks (version 4) and directly posted tracebacks -> frozen values.

The body, as documented and as the real program sends it: `version`, `groupKey`, `truncatedAlerts`,
`status`, `receiver`, `groupLabels`, `commonLabels`, `commonAnnotations`, `externalURL`, `alerts[]` with
`status`, `labels`, `annotations`, `startsAt`, `endsAt` (`0001-01-01T00:00:00Z` when unset),
`generatorURL`, `fingerprint`. Every refusal is a WebhookError (runner.alerts.payload) naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from runner.alerts import payload
from runner.alerts.payload import MAX_BODY_BYTES, WebhookError

__all__ = [
    "MAX_ALERTS",
    "MAX_BODY_BYTES",
    "Alert",
    "AlertNotification",
    "AlertStatus",
    "DirectReport",
    "WebhookError",
    "parse_alertmanager",
    "parse_auto_fix",
    "parse_direct_report",
]

MAX_ALERTS = 1000

AlertStatus = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class Alert:
    status: AlertStatus
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str
    fingerprint: str
    group_key: str


@dataclass(frozen=True, slots=True)
class AlertNotification:
    """One Alertmanager webhook call: a group of alerts sharing the route's grouping labels."""

    receiver: str
    status: AlertStatus
    group_key: str
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    external_url: str
    truncated_alerts: int
    alerts: tuple[Alert, ...]
    sender: str = "alertmanager"
    """Who posted it: `alertmanager`, or `grafana` for Grafana's contact point (same body, its own route)."""

    @property
    def firing(self) -> tuple[Alert, ...]:
        return tuple(a for a in self.alerts if a.status == "firing")


@dataclass(frozen=True, slots=True)
class DirectReport:
    """A traceback posted directly, for setups without Loki."""

    traceback: str
    service: str
    labels: Mapping[str, str]


def _status(obj: Mapping[str, object], where: str) -> AlertStatus:
    status = payload.string(obj, "status", where)
    if status == "firing":
        return "firing"
    if status == "resolved":
        return "resolved"
    raise WebhookError(f"{where}.status: expected 'firing' or 'resolved', got {payload.short(status)}")


def _start(obj: Mapping[str, object], key: str, where: str) -> datetime:
    value = _time(obj, key, where, required=True)
    if value is None:
        raise WebhookError(f"{where}.{key}: is the zero time")
    return value


def _time(obj: Mapping[str, object], key: str, where: str, *, required: bool) -> datetime | None:
    raw = obj.get(key)
    if raw is None and not required:
        return None
    if not isinstance(raw, str):
        raise WebhookError(f"{where}.{key}: expected an RFC 3339 timestamp, got {payload.short(raw)}")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise WebhookError(f"{where}.{key}: not an RFC 3339 timestamp: {payload.short(raw)}") from exc
    if value.tzinfo is None:
        raise WebhookError(f"{where}.{key}: timestamp has no time zone: {payload.short(raw)}")
    if value.year <= 1:  # Go's zero time: Alertmanager's "not set"
        return None
    return value.astimezone(UTC)


# ---------------------------------------------------------------------------------------------- parsers


def parse_alertmanager(body: object) -> AlertNotification:
    """An Alertmanager webhook (version 4) body: bytes, str or decoded JSON. Raises WebhookError."""
    data = payload.obj(payload.decode(body, "webhook"), "webhook")
    if "version" not in data:
        raise WebhookError("webhook.version: missing (not an Alertmanager webhook?)")
    if data["version"] != "4":
        raise WebhookError(f"webhook.version: expected '4', got {payload.short(data['version'])}")
    group_key = payload.string(data, "groupKey", "webhook")
    truncated = data.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise WebhookError(f"webhook.truncatedAlerts: expected a count, got {payload.short(truncated)}")
    raw_alerts = data.get("alerts")
    if not isinstance(raw_alerts, list):
        raise WebhookError(f"webhook.alerts: expected a list, got {type(raw_alerts).__name__}")
    if len(raw_alerts) > MAX_ALERTS:
        raise WebhookError(f"webhook.alerts: more than {MAX_ALERTS} alerts")
    alerts = []
    for i, raw in enumerate(raw_alerts):
        where = f"webhook.alerts[{i}]"
        item = payload.obj(raw, where)
        alerts.append(
            Alert(
                status=_status(item, where),
                labels=payload.labels(item, "labels", where, required=True),
                annotations=payload.labels(item, "annotations", where),
                starts_at=_start(item, "startsAt", where),
                ends_at=_time(item, "endsAt", where, required=False),
                generator_url=payload.string(item, "generatorURL", where, default=""),
                fingerprint=payload.string(item, "fingerprint", where, default=""),
                group_key=group_key,
            )
        )
    return AlertNotification(
        receiver=payload.string(data, "receiver", "webhook", default=""),
        status=_status(data, "webhook"),
        group_key=group_key,
        group_labels=payload.labels(data, "groupLabels", "webhook"),
        common_labels=payload.labels(data, "commonLabels", "webhook"),
        external_url=payload.string(data, "externalURL", "webhook", default=""),
        truncated_alerts=truncated,
        alerts=tuple(alerts),
    )


_DIRECT_KEYS = frozenset({"traceback", "service", "labels"})


def parse_direct_report(body: object) -> DirectReport:
    """`{"traceback": "...", "service": "...", "labels": {...}}`; unknown keys are refused."""
    data = payload.obj(payload.decode(body, "report"), "report")
    unknown = sorted(set(data) - _DIRECT_KEYS)
    if unknown:
        raise WebhookError(f"report: unknown keys {unknown}")
    traceback = payload.string(data, "traceback", "report")
    if not traceback.strip():
        raise WebhookError("report.traceback: empty")
    return DirectReport(
        traceback=traceback,
        service=payload.string(data, "service", "report", default=""),
        labels=payload.labels(data, "labels", "report"),
    )


def parse_auto_fix(body: object) -> AlertNotification | DirectReport:
    """Either body `POST /agent/auto-fix` accepts, told apart by `version` versus `traceback`."""
    data = payload.decode(body, "webhook")
    if isinstance(data, dict) and "traceback" in data and "version" not in data:
        return parse_direct_report(data)
    return parse_alertmanager(data)

