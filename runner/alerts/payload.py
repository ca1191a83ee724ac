"""PURE: a JSON body read field by field into checked values, every refusal naming the field it is about.

Shared by the parsers of what arrives from outside (Alertmanager and Grafana webhooks, Loki's answers), so
they cap, decode and report alike.

    WebhookError (a RunnerError and a ValueError)   a payload is malformed; the message says where
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType

from runner.errors import RunnerError

__all__ = ["MAX_BODY_BYTES", "MAX_LABELS", "WebhookError", "decode", "labels", "obj", "short", "string"]

MAX_BODY_BYTES = 1 << 20
MAX_LABELS = 64


class WebhookError(RunnerError, ValueError):
    """A webhook body or an upstream response is malformed; the message names the bad field."""



def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def decode(body: object, what: str) -> object:
    if isinstance(body, (bytes, bytearray, memoryview)):
        if len(body) > MAX_BODY_BYTES:
            raise WebhookError(f"{what}: body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WebhookError(f"{what}: body is not UTF-8") from exc
    if isinstance(body, str):
        if len(body) > MAX_BODY_BYTES:
            raise WebhookError(f"{what}: body is larger than {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise WebhookError(f"{what}: body is not JSON ({exc})") from exc
    return body


def obj(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise WebhookError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def string(obj: Mapping[str, object], key: str, where: str, *, default: str | None = None) -> str:
    value = obj.get(key, default)
    if value is None:
        raise WebhookError(f"{where}.{key}: missing")
    if not isinstance(value, str):
        raise WebhookError(f"{where}.{key}: expected a string, got {short(value)}")
    return value


def labels(obj: Mapping[str, object], key: str, where: str, *, required: bool = False) -> Mapping[str, str]:
    value = obj.get(key)
    if value is None:
        if required:
            raise WebhookError(f"{where}.{key}: missing")
        return MappingProxyType({})
    if not isinstance(value, dict):
        raise WebhookError(f"{where}.{key}: expected an object of strings, got {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise WebhookError(f"{where}.{key}: more than {MAX_LABELS} entries")
    for k, v in value.items():
        if not isinstance(v, str):
            raise WebhookError(f"{where}.{key}.{k}: expected a string, got {short(v)}")
    return MappingProxyType(dict(sorted(value.items())))

