"""Settings from the environment: defaults, parsing, and one error that lists every bad key."""

from __future__ import annotations

import pytest

from runner.config import DEFAULT_WATCH_SELECTOR, Settings
from runner.errors import ConfigError
from runner.service.watch import WatchConfig


def test_watch_settings_default_and_parse() -> None:
    default = Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h"})
    assert (default.watch_seconds, default.watch_interval, default.watch_baseline_seconds) == (600, 30, 3600)
    assert default.watch_selector == DEFAULT_WATCH_SELECTOR
    custom = Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h", "AGENT_RUNNER_WATCH_SECONDS": "0",
                                "AGENT_RUNNER_WATCH_INTERVAL": "5", "AGENT_RUNNER_WATCH_SELECTOR": '{app="bot"}'})
    watch = WatchConfig.from_settings(custom)
    assert not watch.enabled and watch.interval == 5 and watch.selector == '{app="bot"}'


def test_bad_watch_settings_are_all_named_in_one_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h", "AGENT_RUNNER_WATCH_SECONDS": "ten",
                           "AGENT_RUNNER_WATCH_INTERVAL": "0",
                           "AGENT_RUNNER_WATCH_SELECTOR": 'sum(rate({a="b"}[5m]))'})
    message = str(caught.value)
    assert "AGENT_RUNNER_WATCH_SECONDS must be an integer" in message
    assert "AGENT_RUNNER_WATCH_INTERVAL must be at least 1" in message
    assert "AGENT_RUNNER_WATCH_SELECTOR: logql: not a stream selector with line filters" in message


def test_every_setting_is_in_the_env_example_and_compose() -> None:
    """An owner configures through .env.example and compose.yaml: a setting missing there cannot be set."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    source = (root / "runner" / "config.py").read_text()
    names = set(re.findall(r'"((?:AGENT|ANTHROPIC|GITHUB|TELEGRAM|LOKI|ALERT|OWNER|GRAFANA)_[A-Z0-9_]+)"', source))
    assert {"GITHUB_FORK", "AGENT_RUNNER_RUNTIME", "TELEGRAM_WEBHOOK_SECRET", "GRAFANA_WEBHOOK_HMAC_SECRET"} <= names
    example, compose = (root / ".env.example").read_text(), (root / "compose.yaml").read_text()
    # Fixed inside the container by compose.yaml: the listening address and Loki's service name.
    fixed = {"AGENT_RUNNER_HOST", "AGENT_RUNNER_PORT", "LOKI_URL"}
    assert sorted(n for n in names - fixed if f"{n}=" not in example) == []
    assert sorted(n for n in names if f"{n}:" not in compose) == []


def test_task_link_key_is_the_link_secret_else_derived_from_the_api_token() -> None:
    own = Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h", "AGENT_API_TOKEN": "t" * 20,
                             "AGENT_RUNNER_LINK_SECRET": "s" * 32})
    derived = Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h", "AGENT_API_TOKEN": "t" * 20})
    other = Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h", "AGENT_API_TOKEN": "u" * 20})
    assert own.task_link_key() == b"s" * 32
    key = derived.task_link_key()
    assert key is not None and len(key) == 32 and b"t" * 20 not in key and key != other.task_link_key()
    assert Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h"}).task_link_key() is None
    assert "s" * 32 not in repr(own)


def test_grafana_and_page_settings_parse_and_bad_ones_are_named() -> None:
    settings = Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h", "GRAFANA_WEBHOOK_TOKEN": "tok",
                                  "GRAFANA_WEBHOOK_HMAC_SECRET": "mac", "AGENT_RUNNER_PUBLIC_URL": "https://a.example/"})
    assert settings.grafana_webhook_token is not None and settings.grafana_webhook_token.reveal() == "tok"
    assert settings.grafana_webhook_hmac_secret is not None and settings.public_url == "https://a.example"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h", "AGENT_RUNNER_PUBLIC_URL": "a.example",
                           "AGENT_RUNNER_LINK_SECRET": "short"})
    assert "AGENT_RUNNER_PUBLIC_URL must be an http(s) URL" in str(caught.value)
    assert "AGENT_RUNNER_LINK_SECRET must be at least 16 characters" in str(caught.value)


@pytest.mark.parametrize("bad", ["http://", "http://:8000/health", "ftp://127.0.0.1/health", "127.0.0.1:8000/health",
                                 "http://127.0.0.1:80x0/health"])
def test_from_env_refuses_a_health_url_without_a_scheme_a_host_or_a_port_number(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h", "AGENT_RUNNER_HEALTH_URL": bad})
    assert str(caught.value) == (f"bad configuration: AGENT_RUNNER_HEALTH_URL must be an http(s) URL with a host, "
                                 f"like http://127.0.0.1:8000/health, got {bad!r}")


def test_from_env_takes_a_well_formed_health_url() -> None:
    for good in ("http://127.0.0.1:8000/health", "https://bot.example/health", "http://[::1]:8000/health"):
        assert Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h", "AGENT_RUNNER_HEALTH_URL": good}).health_url == good


def test_deploy_port_parses_and_reaches_the_docker_deployer() -> None:
    from runner.deploy import deployer_from_settings
    from runner.deploy.docker import DockerDeployer

    env = {"AGENT_RUNNER_HOME": "/tmp/h", "AGENT_RUNNER_DEPLOYER": "docker", "AGENT_RUNNER_DEPLOY_SERVICE": "bot",
           "AGENT_RUNNER_DEPLOY_BASE_IMAGE": "python:3.12-slim", "AGENT_RUNNER_DEPLOY_PORT": "8000"}
    deployer = deployer_from_settings(Settings.from_env(env))
    assert isinstance(deployer, DockerDeployer) and deployer.port == 8000  # published and probed over HTTP
    assert Settings.from_env({"AGENT_RUNNER_HOME": "/tmp/h"}).deploy_port is None
    with pytest.raises(ConfigError, match="AGENT_RUNNER_DEPLOY_PORT must be at most 65535, got 80000"):
        Settings.from_env({**env, "AGENT_RUNNER_DEPLOY_PORT": "80000"})
