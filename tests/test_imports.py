"""runner's import graph runs one way (front ends → operations → service state → pipeline and backends → policy):
no cycle, counting imports inside functions and under TYPE_CHECKING, which hide a cycle from Python but not from
a reader."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import runner

ROOT = Path(runner.__file__).parent
FRONT_ENDS = ("runner.api.routes", "runner.telegram.bot", "runner.telegram.wiring", "runner.app", "runner.cli")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        if "data" in path.relative_to(ROOT).parts[:1]:
            continue  # files copied into the sandbox image, not runner's modules
        parts = ["runner", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Each runner module → the runner modules it names in any import statement, wherever it stands."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, *([base] if base else [])])
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    edges.add(target if target in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_runner_module_imports() -> None:
    for name in _modules():
        importlib.import_module(name)


def test_runner_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph()) == []


def test_cycles_finds_a_cycle_through_three_modules() -> None:
    # The check itself can fail: a planted cycle is found, and only its members are named.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_service_and_operations_import_no_front_end() -> None:
    graph = import_graph()
    for name in ("runner.service.state", "runner.service.operations"):
        reached: set[str] = set()
        todo = [name]
        while todo:
            for w in graph[todo.pop()] - reached:
                reached.add(w)
                todo.append(w)
        assert not reached & set(FRONT_ENDS), (name, reached & set(FRONT_ENDS))
