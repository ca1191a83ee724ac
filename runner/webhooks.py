"""Moved to runner.alerts.webhooks; kept until runner/grafana.py, tests/test_grafana.py import it there."""

from __future__ import annotations

from runner.alerts.webhooks import ALERT_ONLY_LABELS as ALERT_ONLY_LABELS
from runner.alerts.webhooks import MAX_BODY_BYTES as MAX_BODY_BYTES
from runner.alerts.webhooks import AlertNotification as AlertNotification
from runner.alerts.webhooks import WebhookError as WebhookError
from runner.alerts.webhooks import logql_for as logql_for
from runner.alerts.webhooks import parse_alertmanager as parse_alertmanager
