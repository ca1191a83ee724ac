"""Moved to runner.service.releases; kept until tests/test_dashboard.py, tests/test_taskpage.py import it there."""

from __future__ import annotations

from runner.service.releases import RELEASE_STATES as RELEASE_STATES
from runner.service.releases import ReleaseRecord as ReleaseRecord
from runner.service.releases import ReleaseState as ReleaseState
from runner.service.releases import ReleaseStore as ReleaseStore
