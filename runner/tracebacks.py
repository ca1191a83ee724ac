"""Moved to runner.alerts.tracebacks; kept until runner/prompts.py import it there."""

from __future__ import annotations

from runner.alerts.tracebacks import ParsedTraceback as ParsedTraceback
