"""Moved to runner.service.watch; kept until tests/test_config.py import it there."""

from __future__ import annotations

from runner.service.watch import WatchConfig as WatchConfig
