"""The one way we connect to a Docker engine, shared by the sandbox and the deployer backends."""

from __future__ import annotations

import gc
import socket
import warnings
from typing import Any

import docker
import docker.errors
import requests

from runner.errors import RunnerError

START_HINT = "start one with scripts/docker-engine.sh"


class EngineUnavailable(RunnerError):
    """No Docker engine answers; each backend maps this to its own error."""


class EngineGone(EngineUnavailable, docker.errors.DockerException):  # type: ignore[misc]
    """The engine stopped answering a client that had reached it (its socket refuses, or is gone).

    docker-py lets `requests`' ConnectionError through for this, which no backend's `except DockerException`
    catches; raised as both, every backend maps it as it maps the engine's other errors, and its message says
    what happened.
    """


class _Api(docker.APIClient):  # type: ignore[misc]
    def send(self, request: Any, **kwargs: Any) -> Any:
        try:
            return super().send(request, **kwargs)
        except requests.exceptions.ConnectionError as exc:
            _close_refused_sockets(exc)
            raise EngineGone(f"no Docker engine answers ({_cause(exc)}); {START_HINT}") from exc


def _close_refused_sockets(exc: BaseException) -> None:
    """Close the socket docker-py's unix connection leaks when the engine refuses it: it is a local of the frame
    that raised, so it lives as long as the exception, and warns (ResourceWarning) wherever the collector later
    frees it. Only sockets that never connected are closed (a connected one has a peer)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return
        tb = seen.__traceback__
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                if isinstance(value, socket.socket) and value.fileno() != -1:
                    try:
                        value.getpeername()
                    except OSError:
                        value.close()
            tb = tb.tb_next
        seen = seen.__cause__ or seen.__context__


class _Client(docker.DockerClient):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.api = _Api(*args, **kwargs)


def _gone_in(exc: BaseException) -> EngineGone | None:
    """The EngineGone behind `exc` (docker-py wraps the one its version probe met)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None or isinstance(seen, EngineGone):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _cause(exc: BaseException) -> str:
    """The innermost OS error's words ("Connection refused"), else the first line of `exc`."""
    seen: BaseException | None = exc
    found = ""
    for _ in range(10):
        if seen is None:
            break
        for arg in (seen, *getattr(seen, "args", ())):
            if isinstance(arg, OSError) and arg.strerror:
                found = arg.strerror
        seen = seen.__cause__ or seen.__context__
    return found or short(exc)


def connect(timeout: int = 60) -> Any:
    """A docker client whose engine answered a ping (blocking: call it in a thread)."""
    failure = ""
    client = None
    # docker-py's constructor leaks the socket of a failed version probe. It is freed with the exception,
    # and unless that happens here, quietly, a ResourceWarning surfaces at a random later place.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = _Client.from_env(timeout=timeout)
            client.ping()
        except docker.errors.DockerException as exc:
            gone = _gone_in(exc)
            failure = str(gone) if gone is not None else short(exc)
            if client is not None:
                client.close()
        if failure:
            gc.collect()  # the traceback's reference cycle holds the socket
    if failure:
        raise EngineUnavailable(failure if failure.endswith(START_HINT) else
                                f"no Docker engine answers ({failure}); {START_HINT}")
    return client


def short(exc: BaseException) -> str:
    """The first line of a docker error, capped: their messages can embed whole build logs."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def runtimes(client: Any) -> set[str]:
    """The OCI runtimes the engine has registered (`runc`, and `runsc` where gVisor is; blocking)."""
    return set((client.info().get("Runtimes") or {}).keys())
