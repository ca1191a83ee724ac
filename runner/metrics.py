"""Moved to runner.service.metrics; kept until tests/test_dashboard.py, bench/bench_metrics.py import it there."""

from __future__ import annotations

from runner.service.metrics import render as render
