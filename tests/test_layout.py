"""The layout shows the design (issue 15): a module past about 400 lines says in its docstring why it is one
module (a `Size:` paragraph), so a long file is a decision someone wrote down, not an accident that grew."""

from __future__ import annotations

import ast
from pathlib import Path

import policy
import runner

LONG = 400


def _modules() -> list[Path]:
    found: list[Path] = []
    for package in (runner, policy):
        root = Path(package.__file__).parent
        found += [p for p in sorted(root.rglob("*.py")) if "data" not in p.relative_to(root).parts[:1]]
    return found


def test_a_module_over_400_lines_says_why_it_is_one_module() -> None:
    unexplained = []
    for path in _modules():
        text = path.read_text()
        if text.count("\n") <= LONG:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(paragraph.startswith("Size: ") for paragraph in doc.split("\n\n")):
            unexplained.append(f"{path.name} ({text.count(chr(10))} lines)")
    assert unexplained == [], "split these, or say in a `Size:` paragraph of the docstring why each is one module"


def test_the_size_a_module_states_is_roughly_its_size() -> None:
    """`Size: about N lines` must not go stale: within a quarter of the file's real length."""
    for path in _modules():
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        for paragraph in doc.split("\n\n"):
            words = paragraph.split()
            if paragraph.startswith("Size: about ") and words[3].rstrip(",:") == "lines":
                stated, real = int(words[2]), text.count("\n")
                assert abs(stated - real) <= real / 4, f"{path.name} says {stated} lines, has {real}"
