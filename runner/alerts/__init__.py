"""Alerts in: Alertmanager and Grafana webhooks, Loki queries, traceback parsing, and the auto-fix admission
that turns them into at most one fix task per error."""
