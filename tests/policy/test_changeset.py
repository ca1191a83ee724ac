"""policy.check_changeset: symlinks resolved through the new tree as the kernel resolves them, invisible
characters in paths, and the dependency files the owner must see."""

from __future__ import annotations

import errno
import os
import posixpath
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import policy
from policy import FileChange
from policy.changeset import MAX_SYMLINK_HOPS, MODE_SYMLINK, invisible_characters

POLICY = policy.load_default()


def link(path: str, target: str, status: str = "added") -> FileChange:
    return FileChange(path, status, mode=MODE_SYMLINK, symlink_target=target)  # type: ignore[arg-type]


def materialize(root: Path, links: dict[str, str], dirs: tuple[str, ...] = ()) -> None:
    """Make the tree on disk, so the kernel can say where each link really leads."""
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for path, target in links.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / path)


def lexically_inside(path: str, target: str) -> bool:
    """What the check looked at before: the target joined to the link's directory, `..` taken lexically."""
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return not joined.startswith("..") and not joined.startswith("/") and joined != "."


def thirty_link_chain() -> tuple[dict[str, str], str]:
    """29 `up -> ..` links down a directory tree, and one link that climbs through them: each target stays
    inside the workspace when read lexically, but the kernel follows `up` to the parent before applying `..`,
    so the chain ends at /etc/passwd."""
    depth = 30
    dirs = [f"d{i}" for i in range(1, depth + 1)]
    links = {"/".join(dirs[:i]) + "/up": ".." for i in range(2, depth + 1)}
    climb = "/".join(["up"] * (depth - 1) + [".."] * 40 + ["etc", "passwd"])
    escape = "/".join(dirs) + "/esc"
    links[escape] = climb
    return links, escape


def test_check_changeset_rejects_a_chain_of_30_links_that_ends_at_etc_passwd(tmp_path: Path) -> None:
    links, escape = thirty_link_chain()
    assert len(links) == 30 and all(lexically_inside(p, t) for p, t in links.items())
    workspace = tmp_path / "workspace"
    materialize(workspace, links)
    assert (workspace / escape).read_text() == Path("/etc/passwd").read_text()  # the kernel agrees: it escapes

    verdict = policy.check_changeset(POLICY, "feature", [link(p, t) for p, t in links.items()], 100)

    assert not verdict.ok
    assert any(r.startswith(f"the symlink {escape!r}") and "leaves the workspace" in r and "30 symlinks" in r
               for r in verdict.reasons), verdict.reasons


def test_check_changeset_resolves_a_changed_link_through_the_trees_unchanged_links() -> None:
    links, escape = thirty_link_chain()
    # Only the last link is new; the 29 others were already in the repository (the supervisor's ls-tree).
    verdict = policy.check_changeset(POLICY, "feature", [link(escape, links[escape])], 100, symlinks=links)

    assert not verdict.ok and len(verdict.reasons) == 1 and "leaves the workspace" in verdict.reasons[0]


def test_check_changeset_rechecks_an_unchanged_link_that_a_changed_link_redirects(tmp_path: Path) -> None:
    # a/b/x -> u/../../etc/passwd was harmless while a/b/u was a directory (it meant a/etc/passwd); the change
    # turns a/b/u into a link to a/, and x now climbs out.
    unchanged = {"a/b/x": "u/../../etc/passwd"}
    change = link("a/b/u", "..")
    workspace = tmp_path / "workspace"
    materialize(workspace, {**unchanged, "a/b/u": ".."})
    assert os.path.realpath(workspace / "a/b/x") == "/etc/passwd" or not str(
        os.path.realpath(workspace / "a/b/x")).startswith(str(workspace))

    verdict = policy.check_changeset(POLICY, "feature", [change], 100, symlinks={**unchanged, "a/b/u": ".."})

    assert not verdict.ok
    assert any(r.startswith("the symlink 'a/b/x'") and "leaves the workspace" in r for r in verdict.reasons)
    # the old way of calling it (only the changed links) cannot see x at all
    assert policy.check_changeset(POLICY, "feature", [change], 100).ok


def test_check_changeset_rejects_a_symlink_loop() -> None:
    verdict = policy.check_changeset(POLICY, "feature", [link("bot/a", "b"), link("bot/b", "a")], 100)
    assert not verdict.ok and len(verdict.reasons) == 2
    assert all(f"more than {MAX_SYMLINK_HOPS} symlinks" in r for r in verdict.reasons)


@pytest.mark.parametrize("length", [MAX_SYMLINK_HOPS, MAX_SYMLINK_HOPS + 1])
def test_check_changeset_hop_limit_is_the_kernels(tmp_path: Path, length: int) -> None:
    links = {f"bot/l{i}": f"l{i + 1}" for i in range(length - 1)} | {f"bot/l{length - 1}": "app.py"}
    workspace = tmp_path / "workspace"
    materialize(workspace, links)
    (workspace / "bot" / "app.py").write_text("x = 1\n")
    try:
        (workspace / "bot" / "l0").read_text()
        kernel_follows = True
    except OSError as exc:
        assert exc.errno == errno.ELOOP
        kernel_follows = False

    verdict = policy.check_changeset(POLICY, "feature", [link("bot/l0", "l1")], 100, symlinks=links)

    assert verdict.ok is kernel_follows is (length <= MAX_SYMLINK_HOPS), verdict.reasons


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("../secrets", "protected by 'secrets/'"),  # a link to a protected directory reaches all of it
        ("../.GIT/config", ".git"),
        ("..", "the workspace itself"),
        ("../bot/../..", "leaves the workspace"),
    ],
)
def test_check_changeset_rejects_links_onto_protected_places(target: str, needle: str) -> None:
    verdict = policy.check_changeset(POLICY, "feature", [link("bot/l", target)], 100)
    assert not verdict.ok and needle in verdict.reasons[0], verdict.reasons


def test_check_changeset_accepts_links_inside_the_workspace() -> None:
    tree = {"docs/readme": "../README.md", "bot/lib": "../lib", "lib/current": "v2"}
    changes = [link("docs/readme", "../README.md"), link("bot/cur", "lib/current/mod.py")]
    verdict = policy.check_changeset(POLICY, "feature", changes, 100, symlinks=tree | {"bot/cur": "lib/current/mod.py"})
    assert verdict.ok, verdict.reasons


@pytest.mark.parametrize(
    "char",
    ["\n", "\r", "\x1b", "\x7f", "\x85", "\u202e", "\u2066", "\u200b", "\u200d", "\ufeff", "\u00ad", "\u2028",
     "\u2029", "\ufe0f", "\U000e0041", "\U000e0100", "\u3164", "\u115f", "\u034f", "\u00a0", "\u3000", "\ue000",
     "\udc80", "\U000effff"],
)
def test_check_changeset_rejects_invisible_characters_in_paths_and_targets(char: str) -> None:
    for change in (FileChange(f"tests/test_a{char}b.py", "added"),
                   FileChange("bot/new.py", "renamed", old_path=f"bot/old{char}.py"),
                   link("bot/l", f"app{char}.py")):
        verdict = policy.check_changeset(POLICY, "feature", [change], 100)
        assert not verdict.ok, (change, verdict)
        assert f"U+{ord(char):04X}" in verdict.reasons[0] and "invisible or control characters" in verdict.reasons[0]


@pytest.mark.parametrize("name", ["my notes.txt", "café.py", "日本語.md", "🎉.md", "a-b_c.d~"])
def test_check_changeset_accepts_visible_names(name: str) -> None:
    assert invisible_characters(name) == ()
    assert policy.check_changeset(POLICY, "feature", [FileChange(f"docs/{name}", "added")], 100).ok


def test_check_changeset_names_the_dependency_files_the_owner_must_see() -> None:
    changes = [
        FileChange("bot/app.py", "modified"),
        FileChange("requirements.txt", "modified"),
        FileChange("sub/pyproject.toml", "added"),
        FileChange("setup.py", "deleted"),
        FileChange("bot/deps.txt", "renamed", old_path="requirements-dev.txt"),
    ]

    verdict = policy.check_changeset(POLICY, "feature", changes, 100)

    assert verdict.ok, verdict.reasons  # not a rejection: the supervisor asks the owner at the end
    assert verdict.needs_owner == ("requirements.txt", "sub/pyproject.toml", "setup.py", "requirements-dev.txt")
    assert policy.check_changeset(POLICY, "feature", changes[:1], 100).needs_owner == ()


def test_check_changeset_reports_dependency_files_alongside_rejections() -> None:
    verdict = policy.check_changeset(POLICY, "feature", [FileChange("requirements.txt", "modified"),
                                                         FileChange(".env", "added")], 100)
    assert not verdict.ok and verdict.needs_owner == ("requirements.txt",)


# -- the resolver against the kernel's own path walk ---------------------------------------------------------

NAMES = ("d", "l1", "l2", "l3")
PARTS = st.sampled_from(("..", ".", *NAMES))
PLACES = ("", "d", "d/d")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.tuples(st.sampled_from(PLACES), st.sampled_from(NAMES[1:])),
                       st.lists(PARTS, min_size=1, max_size=5).map("/".join), min_size=1, max_size=6))
def test_check_changeset_agrees_with_the_kernel_on_random_link_trees(raw: dict[tuple[str, str], str]) -> None:
    links = {posixpath.join(place, name): target for (place, name), target in raw.items()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "deep" / "er" / "workspace"  # room above the workspace for an escape to land in
        materialize(root, links, dirs=("d/d/d/d/d",))
        verdict = policy.check_changeset(POLICY, "feature", [link(p, t) for p, t in links.items()], 100)
        for path in links:
            refused = [r for r in verdict.reasons if r.startswith(f"the symlink {path!r} ")]
            try:
                os.stat(root / path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    assert refused, (path, links)
                    continue
                # a missing directory stops the kernel before a loop would; the check reads names lexically
                assume(exc.errno == errno.ENOENT)
            real = Path(os.path.realpath(root / path))
            inside = real != root and real.is_relative_to(root)
            if inside and refused:
                assume(not any("symlinks (a loop" in r for r in refused))
            assert (not refused) is inside, (path, links, real, refused)
