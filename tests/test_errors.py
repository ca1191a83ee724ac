"""The error tree: every exception runner raises on purpose is a RunnerError, and errors.py draws each one."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import runner
from runner import errors
from runner.errors import RunnerError

ROOT = Path(runner.__file__).parent


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).parts[0] == "data":
            continue
        parts = ["runner", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        tree = ast.parse(path.read_text())
        classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
        module = importlib.import_module(name)
        for cls_name in sorted(classes):
            cls = getattr(module, cls_name, None)
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == name:
                found.append(cls)
    return found


def test_every_public_exception_is_a_runner_error() -> None:
    stray = [f"{c.__module__}.{c.__name__}" for c in _exception_classes()
             if not issubclass(c, RunnerError) and not c.__name__.startswith("_")]
    assert stray == []


def test_errors_docstring_draws_every_runner_error() -> None:
    doc = errors.__doc__ or ""
    drawn = set(re.findall(r"[├└]── (\w+)", doc)) | {"RunnerError"}
    defined = {c.__name__ for c in _exception_classes() if issubclass(c, RunnerError)}
    assert defined - drawn == set(), "draw these in runner/errors.py's docstring"
