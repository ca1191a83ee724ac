"""Shared fixtures: the Docker engine and sandbox image for `@pytest.mark.docker` tests.

Under CI=true a Docker test never skips: a missing engine or image fails it, because a skipped
isolation test would let a broken sandbox land green.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from runner.config import DEFAULT_SANDBOX_IMAGE

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"Docker test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(f"Docker test skipped outside CI: {reason} (run `make test` to set it up)")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # any failure here means "no engine", whatever the library raised
        _unavailable(f"no Docker engine answers ({exc})")
        raise AssertionError("unreachable") from exc
    yield client
    client.close()


@pytest.fixture(scope="session")
def sandbox_image(docker_client: Any) -> str:
    image = os.environ.get("AGENT_RUNNER_SANDBOX_IMAGE", DEFAULT_SANDBOX_IMAGE)
    try:
        docker_client.images.get(image)
    except Exception:
        _unavailable(f"the sandbox image {image} is missing (sandbox-image/build.sh builds it)")
    return image


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Every docker-marked test gets the image fixture, so none can forget the CI rule above.
    for item in items:
        if item.get_closest_marker("docker") and isinstance(item, pytest.Function):
            if "sandbox_image" not in item.fixturenames:
                item.fixturenames.append("sandbox_image")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if IN_CI and report.skipped and item.get_closest_marker("docker"):
        report.outcome = "failed"
        report.longrepr = f"Docker test skipped under CI=true: {report.longrepr}"
    return report
