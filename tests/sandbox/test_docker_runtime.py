"""Which OCI runtime DockerSandbox picks, and what it says about it (no engine needed)."""

from __future__ import annotations

import pytest

from runner.config import Settings
from runner.errors import ConfigError, SandboxStartError
from runner.sandbox.docker import DockerSandbox


def _chosen(available: set[str], wanted: str | None = None) -> DockerSandbox:
    sandbox = DockerSandbox(client=object(), runtime=wanted)
    sandbox._choose_runtimes(available)
    return sandbox


def test_gvisor_is_the_default_when_the_engine_has_it() -> None:
    sandbox = _chosen({"runc", "runsc", "runsc-net"})
    assert (sandbox.runtime, sandbox.setup_runtime, sandbox.notices) == ("runsc", "runsc-net", [])


def test_without_gvisor_sandboxes_run_under_runc_with_one_warning() -> None:
    sandbox = _chosen({"runc"})
    assert (sandbox.runtime, sandbox.setup_runtime) == ("runc", "runc")
    [notice] = sandbox.notices
    assert notice.startswith("warning: gVisor (runsc) is not registered") and "\n" not in notice


def test_runc_chosen_on_purpose_says_nothing() -> None:
    assert _chosen({"runc", "runsc"}, "runc").notices == []


def test_the_set_up_falls_back_to_runc_without_a_networked_gvisor() -> None:
    sandbox = _chosen({"runc", "runsc"})
    assert sandbox.setup_runtime == "runc" and "runsc-net" in sandbox.notices[0]


def test_a_runtime_the_engine_lacks_is_refused() -> None:
    with pytest.raises(SandboxStartError, match="AGENT_RUNNER_RUNTIME=kata is not a runtime"):
        _chosen({"runc"}, "kata")


def test_agent_runner_runtime_is_read_and_checked() -> None:
    assert Settings.from_env({"AGENT_RUNNER_RUNTIME": "runsc"}).sandbox_runtime == "runsc"
    assert Settings.from_env({}).sandbox_runtime is None
    with pytest.raises(ConfigError, match="AGENT_RUNNER_RUNTIME"):
        Settings.from_env({"AGENT_RUNNER_RUNTIME": "runsc --debug"})
