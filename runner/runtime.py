"""Moved to runner.service.runtime; kept until tests/test_faults.py import it there."""

from __future__ import annotations

from runner.service.runtime import reap_orphans as reap_orphans
