"""The Grafana dashboard asks only for series a real /metrics exposition has, with labels and values it has."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.service import metrics
from runner.service.releases import RELEASE_STATES
from runner.store import Store

MONITORING = Path(__file__).parent.parent / "monitoring" / "grafana"
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def _dashboard() -> dict[str, Any]:
    data = json.loads((MONITORING / "dashboard.json").read_text())
    assert isinstance(data, dict)
    return data


def _exprs() -> Iterator[str]:
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]


def _metric_names(expr: str) -> set[str]:
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    names = set()
    for m in re.finditer(r"(?<![a-zA-Z0-9_:.$])[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?", text):
        word = m.group(0).rstrip("( ")
        if m.group(1) is None and word not in KEYWORDS:  # a name followed by "(" is a function
            names.add(word)
    return names


@pytest.fixture
async def exposition(tmp_path: Path) -> dict[str, dict[str, set[str]]]:
    """Series name → label name → the values the service can give it, from a real render()."""
    async with Store(tmp_path / "state.db") as store:
        text = await metrics.render(store, sandboxes_running=0, releases={})
    series: dict[str, dict[str, set[str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            series.setdefault(name, {})
            if kind == "summary":
                series.setdefault(name + "_sum", {})
                series.setdefault(name + "_count", {})
        elif line and not line.startswith("#"):
            head = line.rsplit(" ", 1)[0]
            name, _, labels = head.partition("{")
            for label, _, value in MATCHER.findall(labels):
                series.setdefault(name, {}).setdefault(label, set()).add(value)
    # Labels an empty store has no row for yet: the values the code writes (runner.metrics, runner.agent).
    series["agent_runner_policy_decisions_total"] = {"effect": {"allow", "deny", "ask"},
                                                      "decision": {"allow", "deny"}}
    series["agent_runner_refusals_total"] = {"reason": set()}
    return series


def test_dashboard_uses_only_exported_metric_names(exposition: dict[str, dict[str, set[str]]]) -> None:
    used = set().union(*(_metric_names(e) for e in _exprs()))
    assert used, "no metric found in the dashboard"
    assert used <= set(exposition), used - set(exposition)


def test_dashboard_covers_tasks_decisions_cost_releases_and_autofix() -> None:
    used = set().union(*(_metric_names(e) for e in _exprs()))
    assert {"agent_runner_tasks", "agent_runner_policy_decisions_total", "agent_runner_model_cost_usd_total",
            "agent_runner_releases", "agent_runner_autofix_tasks"} <= used


def test_dashboard_matchers_and_groupings_name_real_labels_and_values(
        exposition: dict[str, dict[str, set[str]]]) -> None:
    for expr in _exprs():
        names = _metric_names(expr)
        labels = set().union(*(exposition[n].keys() for n in names))
        for metric, body in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(body):
                assert label in exposition[metric], (expr, label)
                known = exposition[metric][label]
                if op == "=" and known:
                    assert value in known, (expr, value)
                if op == "=~" and known:
                    assert all(v in known for v in value.split("|")), (expr, value)
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label in labels, (expr, label)


def test_release_states_on_the_dashboard_are_release_states() -> None:
    for expr in _exprs():
        if "agent_runner_releases" in expr:
            for _, value in re.findall(r'state(=~|=)"([^"]*)"', expr):
                assert set(value.split("|")) <= set(RELEASE_STATES)


def test_dashboard_panels_are_well_formed_and_use_the_provisioned_datasource() -> None:
    dashboard = _dashboard()
    datasources = {d["uid"]: d["type"] for d in
                   yaml.safe_load((MONITORING / "provisioning" / "datasources" / "datasources.yaml").read_text())[
                       "datasources"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "agent-runner"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert datasources[panel["datasource"]["uid"]] == panel["datasource"]["type"] == "prometheus"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
    provider = yaml.safe_load((MONITORING / "provisioning" / "dashboards" / "agent-runner.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_metric_names_reads_promql() -> None:
    assert _metric_names('sum by (state) (rate(a_total{x="b(c)"}[5m])) / b_sum offset 5m') == {"a_total", "b_sum"}
