"""The OCI runtimes the sandbox tests run under: runc, and gVisor's runsc (which CI must have: never skipped)."""

from __future__ import annotations

import os

import docker
import pytest

from runner.docker_engine import runtimes

RUNTIMES = ("runc", "runsc")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_runtime(name: str) -> str:
    """`name`, after checking the engine has it; outside CI a missing runsc skips, under CI it fails."""
    client = docker.from_env()
    try:
        available = runtimes(client)
    finally:
        client.close()
    if name not in available:
        reason = f"the Docker engine has no {name} runtime (scripts/docker-engine.sh registers runsc)"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return name
