"""A stand-in for Grafana's webhook contact point: builds notifications and sends them as Grafana does.

Grafana cannot run here, so this follows what it sends (grafana/alerting's webhook notifier, Grafana 11.6+):
- the body is Go's `json.Marshal` of the message: compact, keys in the struct's field order (maps sorted),
  `<`, `>`, `&`, U+2028 and U+2029 escaped as `\\u003c`-style sequences, non-ASCII left as UTF-8;
- times are Go's RFC 3339 with nanoseconds trimmed; an unset `endsAt` is `0001-01-01T00:00:00Z`;
- an alert's `fingerprint` is its label set's Prometheus fingerprint (FNV-1a 64 over sorted
  `name \\xff value \\xff`), as 16 hex digits;
- `version` is "1", `state` "alerting" while anything fires, else "ok";
- `Authorization: Basic base64(user:password)` or `<scheme> <credentials>`; with an HMAC secret, the lowercase
  hex HMAC-SHA256 in the signature header, over `<unix seconds>:<body>` when a timestamp header is named (the
  seconds also sent in it), else over the body; `User-Agent: Grafana`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

ZERO_TIME = "0001-01-01T00:00:00Z"
FNV_OFFSET, FNV_PRIME = 14695981039346656037, 1099511628211


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """Prometheus' `model.LabelSet.Fingerprint()`, as Grafana prints it (`%016x`)."""
    h = FNV_OFFSET
    for name in sorted(labels):
        for chunk in (name.encode(), b"\xff", labels[name].encode(), b"\xff"):
            for byte in chunk:
                h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def go_time(moment: datetime | None) -> str:
    if moment is None:
        return ZERO_TIME
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def go_json(value: Any) -> bytes:
    """Go's `json.Marshal`: compact, HTML-safe escapes, UTF-8."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                        ("\u2029", "\\u2029")):
        text = text.replace(ch, escaped)
    return text.encode()


@dataclass
class GrafanaAlertSpec:
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    starts_at: datetime = field(default_factory=lambda: datetime(2026, 5, 1, 12, 0, 3, 157076, tzinfo=UTC))
    ends_at: datetime | None = None
    values: dict[str, float] | None = None
    rule_uid: str = "python-traceback"


@dataclass
class FakeGrafana:
    """One contact point (its `name` is the payload's `receiver`) with the settings Grafana would hold."""

    name: str = "agent-runner"
    url: str = "http://grafana.test:3000/"
    folder: str = "agent-runner"
    org_id: int = 1
    basic: tuple[str, str] | None = None
    scheme: str = "Bearer"
    credentials: str | None = None
    hmac_secret: str | None = None
    signature_header: str = "X-Grafana-Alerting-Signature"
    timestamp_header: str | None = None
    max_alerts: int = 0

    def alert(self, spec: GrafanaAlertSpec) -> dict[str, Any]:
        labels = {**spec.labels, "grafana_folder": self.folder}
        resolved = spec.ends_at is not None
        matchers = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return {
            "status": "resolved" if resolved else "firing",
            "labels": dict(sorted(labels.items())),
            "annotations": dict(sorted(spec.annotations.items())),
            "startsAt": go_time(spec.starts_at),
            "endsAt": go_time(spec.ends_at),
            "generatorURL": f"{self.url}alerting/grafana/{spec.rule_uid}/view?orgId={self.org_id}",
            "fingerprint": label_fingerprint(labels),
            "silenceURL": f"{self.url}alerting/silence/new?alertmanager=grafana&matcher={quote(matchers)}"
                          f"&orgId={self.org_id}",
            "dashboardURL": "",
            "panelURL": "",
            "values": None if spec.values is None else dict(sorted(spec.values.items())),
            "valueString": "" if spec.values is None else
            ", ".join(f"[ var='{k}' labels={{}} value={v:g} ]" for k, v in sorted(spec.values.items())),
        }

    def payload(self, specs: Sequence[GrafanaAlertSpec], *, group_by: Sequence[str] = ("alertname",)) -> bytes:
        alerts = [self.alert(s) for s in specs]
        truncated = 0
        if self.max_alerts and len(alerts) > self.max_alerts:
            truncated, alerts = len(alerts) - self.max_alerts, alerts[: self.max_alerts]
        firing = any(a["status"] == "firing" for a in alerts)
        common = dict(alerts[0]["labels"]) if alerts else {}
        for a in alerts[1:]:
            common = {k: v for k, v in common.items() if a["labels"].get(k) == v}
        group = {k: common[k] for k in group_by if k in common}
        common_annotations = dict(alerts[0]["annotations"]) if alerts else {}
        for a in alerts[1:]:
            common_annotations = {k: v for k, v in common_annotations.items() if a["annotations"].get(k) == v}
        title = f"[{'FIRING' if firing else 'RESOLVED'}:{len(alerts)}] " + " ".join(group.values())
        message = "\n".join(f"**{a['status'].title()}**\n\nValue: {a['valueString']}\nLabels:\n" +
                            "".join(f" - {k} = {v}\n" for k, v in a["labels"].items()) for a in alerts)
        matchers = ", ".join(f'{k}="{v}"' for k, v in sorted(group.items()))
        group_key = '{}/{alertname="' + common.get("alertname", "") + '"}:{' + matchers + "}"
        return go_json({
            "receiver": self.name, "status": "firing" if firing else "resolved", "orgId": self.org_id,
            "alerts": alerts, "groupLabels": dict(sorted(group.items())), "commonLabels": dict(sorted(common.items())),
            "commonAnnotations": dict(sorted(common_annotations.items())), "externalURL": self.url, "version": "1",
            "groupKey": group_key, "truncatedAlerts": truncated, "title": title,
            "state": "alerting" if firing else "ok", "message": message,
        })

    def headers(self, body: bytes, *, now: float) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "Grafana"}
        if self.basic is not None:
            token = base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        elif self.credentials is not None:
            headers["Authorization"] = f"{self.scheme} {self.credentials}"
        if self.hmac_secret:
            signed = body
            if self.timestamp_header:
                stamp = str(int(now))
                headers[self.timestamp_header] = stamp
                signed = stamp.encode() + b":" + body
            headers[self.signature_header] = hmac.new(self.hmac_secret.encode(), signed, hashlib.sha256).hexdigest()
        return headers

    async def send(self, client: httpx.AsyncClient, path: str, specs: Sequence[GrafanaAlertSpec], *, now: float,
                   body: bytes | None = None) -> httpx.Response:
        """POST one notification (or `body`, signed as if Grafana made it) to `path` on `client`."""
        body = self.payload(specs) if body is None else body
        return await client.post(path, content=body, headers=self.headers(body, now=now))
