"""The one way we connect to a Docker engine, shared by the sandbox and the deployer backends."""

from __future__ import annotations

import gc
import warnings
from typing import Any

import docker
import docker.errors

from runner.errors import RunnerError


class EngineUnavailable(RunnerError):
    """No Docker engine answers; each backend maps this to its own error."""


def connect(timeout: int = 60) -> Any:
    """A docker client whose engine answered a ping (blocking: call it in a thread)."""
    failure = ""
    client = None
    # docker-py's constructor leaks the socket of a failed version probe. It is freed with the exception,
    # and unless that happens here, quietly, a ResourceWarning surfaces at a random later place.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=timeout)
            client.ping()
        except docker.errors.DockerException as exc:
            failure = short(exc)
            if client is not None:
                client.close()
        if failure:
            gc.collect()  # the traceback's reference cycle holds the socket
    if failure:
        raise EngineUnavailable(f"no Docker engine answers ({failure}); start one with scripts/docker-engine.sh")
    return client


def short(exc: BaseException) -> str:
    """The first line of a docker error, capped: their messages can embed whole build logs."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def runtimes(client: Any) -> set[str]:
    """The OCI runtimes the engine has registered (`runc`, and `runsc` where gVisor is; blocking)."""
    return set((client.info().get("Runtimes") or {}).keys())
