"""Migration paths: the policy setting, its validation, and which changed files it names."""

from __future__ import annotations

from pathlib import Path

import pytest

import policy
from policy.model import DEFAULT_MIGRATION_PATHS, Migrations

ROOT = Path(__file__).resolve().parents[2]


def _text() -> str:
    return (ROOT / "policy.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize(("path", "migration"), [
    ("alembic/versions/3f2a_add_balance.py", True),
    ("services/api/alembic/versions/3f2a_add_balance.py", True),
    ("migrations/versions/3f2a_add_balance.py", True),
    ("bot/migrations/0002_wallet_rate.py", True),
    ("migrations/0001_initial.py", True),
    ("db/migrations/20240101_init.sql", True),
    ("db/migrations/2024/01/002_index.sql", True),
    ("migrations/001.up.sql", True),
    ("./bot//migrations/0003_x.py", True),
    ("alembic/env.py", False),
    ("alembic.ini", False),
    ("bot/migrations/README.md", False),
    ("bot/models.py", False),
    ("sql/schema.sql", False),
    ("docs/migrations.md", False),
    ("bot/migrations/sub/0001.py", False),  # Django keeps migrations flat; a subpackage is not one
    ("../other/migrations/0001.py", False),
    ("/etc/migrations/0001.py", False),
])
def test_default_migrations_name_alembic_django_and_sql_files(path: str, migration: bool) -> None:
    assert bool(policy.load_default().migrations.touched([path])) is migration


def test_touched_keeps_order_and_names_each_file_once() -> None:
    changed = ["bot/models.py", "bot/migrations/0002_x.py", "db/migrations/1.sql", "./bot/migrations/0002_x.py"]
    assert Migrations().touched(changed) == ("bot/migrations/0002_x.py", "db/migrations/1.sql")


def test_policy_without_a_migrations_section_uses_the_defaults() -> None:
    start = _text().index("migrations:\n  paths:")
    end = _text().index("# A task is admitted only")
    loaded = policy.load(_text()[:start] + _text()[end:])
    assert loaded.migrations.paths == DEFAULT_MIGRATION_PATHS


def test_policy_migration_paths_are_the_owners() -> None:
    custom = _text().replace('    - "**/migrations/**/*.sql"', '    - "schema/changes/*.sql"')
    loaded = policy.load(custom)
    assert loaded.migrations.touched(["schema/changes/7.sql", "db/migrations/1.sql"]) == ("schema/changes/7.sql",)


def test_policy_migration_paths_may_be_none() -> None:
    start = _text().index("  paths:\n    - \"**/alembic")
    end = _text().index("# A task is admitted only")
    loaded = policy.load(_text()[:start] + "  paths: []\n\n" + _text()[end:])
    assert loaded.migrations.touched(["bot/migrations/0002_x.py"]) == ()


@pytest.mark.parametrize(("old", "new", "key"), [
    ("migrations:\n  paths:", "migrations:\n  path:", "migrations.path"),
    ('    - "**/migrations/*.py"', '    - "!**/migrations/__init__.py"', "migrations.paths"),
    ('    - "**/migrations/*.py"', "    - 3", "migrations.paths"),
    ("migrations:\n  paths:\n", "migrations: yes\nunused:\n  paths:\n", "migrations"),
    ("  ask_before_deploy: false", "  ask_before_deploy: sometimes", "migrations.ask_before_deploy"),
])
def test_policy_refuses_bad_migration_settings_with_their_line(old: str, new: str, key: str) -> None:
    text = _text().replace(old, new, 1)
    assert text != _text()
    with pytest.raises(policy.PolicyLoadError) as caught:
        policy.load(text)
    assert any(k == key for _, k, _ in caught.value.problems), caught.value.problems
    line = next(n for n, k, _ in caught.value.problems if k == key)
    block = text.splitlines().index(next(ln for ln in text.splitlines() if ln.startswith("migrations:"))) + 1
    assert line is not None and block <= line <= block + 9  # the line named is in the migrations block


def test_a_migration_release_is_deployed_as_usual_unless_the_owner_asks_to_be_asked_first() -> None:
    assert policy.load_default().migrations.ask_before_deploy is False
    asked = policy.load(_text().replace("  ask_before_deploy: false", "  ask_before_deploy: true", 1))
    assert asked.migrations.ask_before_deploy is True and asked.migrations.paths == DEFAULT_MIGRATION_PATHS
