"""Settings from the environment: defaults, parsing, and one error that lists every bad key."""

from __future__ import annotations

import pytest

from runner.config import DEFAULT_WATCH_SELECTOR, Settings
from runner.errors import ConfigError
from runner.watch import WatchConfig


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
