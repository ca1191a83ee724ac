"""Deployers: what happens after the owner approves and the forge merges (nothing, a command, or Docker)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from runner.deploy.base import (
    DeployAction,
    Deployer,
    DeployError,
    DeployEvent,
    DeployResult,
    DeploySource,
    EventSink,
    Fence,
    Outcome,
    Step,
    deploy_with_rollback,
    failed_result,
)
from runner.errors import ConfigError

if TYPE_CHECKING:
    from runner.config import Settings

__all__ = [
    "DEPLOYER_KINDS",
    "DeployAction",
    "DeployError",
    "DeployEvent",
    "DeployResult",
    "DeploySource",
    "Deployer",
    "DeployerKind",
    "EventSink",
    "Fence",
    "Outcome",
    "Step",
    "check_deployer",
    "create_deployer",
    "deployer_from_settings",
    "deploy_with_rollback",
    "failed_result",
]

DeployerKind = Literal["none", "command", "docker"]
DEPLOYER_KINDS: tuple[DeployerKind, ...] = ("none", "command", "docker")


def create_deployer(kind: str, **options: Any) -> Deployer:
    """The deployer of `kind`, built from `options` (the implementation's keyword arguments).

    Backends are imported lazily, so `none` and `command` never import the docker SDK.

        create_deployer("command", deploy_command="systemctl restart bot", health_url="http://127.0.0.1:8000/health")
        create_deployer("docker", service="bot", build_base_image="python:3.12-slim", port=8000)
    """
    try:
        if kind == "none":
            if options:
                raise ConfigError(f"the none deployer takes no options, got {sorted(options)}")
            from runner.deploy.none import NoneDeployer

            return NoneDeployer()
        if kind == "command":
            from runner.deploy.command import CommandDeployer

            return CommandDeployer(**options)
        if kind == "docker":
            from runner.deploy.docker import DockerDeployer

            return DockerDeployer(**options)
    except TypeError as exc:  # a missing or unknown option
        raise ConfigError(f"bad options for the {kind} deployer: {exc}") from exc
    raise ConfigError(f"unknown deployer {kind!r}; one of {', '.join(DEPLOYER_KINDS)}")


def deployer_from_settings(settings: Settings) -> Deployer:
    """The deployer AGENT_RUNNER_DEPLOYER names (`none` by default)."""
    if settings.deployer == "command":
        return create_deployer("command", deploy_command=settings.deploy_command or "",
                               health_url=settings.health_url, runs=settings.home / "deploys")
    if settings.deployer == "docker":
        if settings.deploy_base_image is None:
            raise ConfigError("AGENT_RUNNER_DEPLOYER=docker needs AGENT_RUNNER_DEPLOY_BASE_IMAGE (serve picks one "
                              "at start)")
        return create_deployer("docker", service=settings.deploy_service or "",
                               build_base_image=settings.deploy_base_image, port=settings.deploy_port)
    return create_deployer("none")


def check_deployer(settings: Settings, *, path: str | None = None) -> Settings:
    """What the configured deployer needs, checked at `serve` start (ConfigError, one line naming the fix): the
    command's program on `path` (default: PATH), or a Docker engine that answers and has the build's base image.
    Returns `settings` with the docker deployer's default base image filled in."""
    if settings.deployer == "command":
        from runner.deploy.command import check_deploy_command

        check_deploy_command(settings.deploy_command or "", path=path)
    elif settings.deployer == "docker":
        from runner.deploy.docker import check_deployer_engine

        base = check_deployer_engine(settings.deploy_service or "", settings.deploy_base_image)
        return dataclasses.replace(settings, deploy_base_image=base)
    return settings
