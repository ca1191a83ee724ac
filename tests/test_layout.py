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


def test_the_readmes_layout_names_every_module_of_runner() -> None:
    """The README's layout section matches the tree: each module is named there (a package's modules may be
    named by the package, as `sandbox/` or `tracebacks/` are)."""
    readme = (Path(runner.__file__).parents[1] / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    root = Path(runner.__file__).parent
    missing = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] == "data" or path.name == "__init__.py":
            continue
        named_by_package = any(f"{part}/" in block for part in relative.parts[:-1])
        if path.stem not in block and not named_by_package:
            missing.append(str(relative))
    assert missing == [], "name these in the README's Layout section"
