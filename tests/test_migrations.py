"""Migrations are reversible and produce exactly the tables the code describes."""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.db.models import metadata
from breeze_mcp.db.setup import downgrade, ensure_current, head_revision, migrate
from tests.support import ProvisionedDatabase


def public_tables(url: str) -> set[str]:
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.req("DB-MIGRATIONS")
def test_models_match_migrated_schema(scratch: ProvisionedDatabase) -> None:
    engine = sa.create_engine(sqlalchemy_url(scratch.owner_url))
    try:
        with engine.connect() as conn, warnings.catch_warnings():
            # Alembic cannot reflect expression indexes (lower(email)) and says so.
            warnings.filterwarnings("ignore", message=".*expression-based index.*")
            warnings.filterwarnings("ignore", message=".*Skipped unsupported reflection.*")
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []


@pytest.mark.req("DB-MIGRATIONS")
def test_downgrade_to_base_and_upgrade_again(scratch: ProvisionedDatabase) -> None:
    assert set(metadata.tables) <= public_tables(scratch.owner_url)
    downgrade(scratch.owner_url, "base")
    assert public_tables(scratch.owner_url) <= {"alembic_version"}
    head = head_revision()
    lines = migrate(scratch.owner_url, scratch.runtime_url)
    assert lines[0] == f"schema at revision {head} (was empty)"
    assert set(metadata.tables) <= public_tables(scratch.owner_url)
    # Running it again is a no-op.
    assert migrate(scratch.owner_url, scratch.runtime_url)[0] == \
        f"schema at revision {head} (was {head})"


@pytest.mark.req("DB-MIGRATIONS")
def test_each_migration_steps_down_and_up(scratch: ProvisionedDatabase) -> None:
    """Every revision is reversible on its own, not only all of them at once."""
    from alembic.script import ScriptDirectory

    from breeze_mcp.db.setup import _alembic_config

    scripts = ScriptDirectory.from_config(_alembic_config())
    for script in scripts.walk_revisions():  # newest first
        down = script.down_revision
        assert down is None or isinstance(down, str)
        downgrade(scratch.owner_url, down or "base")
    assert public_tables(scratch.owner_url) <= {"alembic_version"}
    migrate(scratch.owner_url, scratch.runtime_url)
    assert set(metadata.tables) <= public_tables(scratch.owner_url)


@pytest.mark.req("FH-CLI-CONCURRENT")
def test_migrations_at_once_take_turns(scratch: ProvisionedDatabase) -> None:
    """Several processes migrating and granting at once (CLI commands, instances starting)
    would otherwise collide on the same catalog rows ("tuple concurrently updated")."""
    start = threading.Barrier(8)

    def run(_: int) -> list[str]:
        start.wait()
        return migrate(scratch.owner_url, scratch.runtime_url)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    assert all(lines[-1].startswith("granted runtime privileges") for lines in results)


@pytest.mark.req("FH-CLI-CONCURRENT")
def test_ensure_current_writes_nothing_when_in_place(scratch: ProvisionedDatabase) -> None:
    assert ensure_current(scratch.owner_url, scratch.runtime_url) == []
    engine = sa.create_engine(sqlalchemy_url(scratch.owner_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"REVOKE INSERT ON audit_log FROM {scratch.runtime_role}"))
    finally:
        engine.dispose()
    # A missing grant is noticed and put back; then there is nothing to do again.
    assert ensure_current(scratch.owner_url, scratch.runtime_url)[-1].startswith(
        "granted runtime privileges")
    assert ensure_current(scratch.owner_url, scratch.runtime_url) == []
    downgrade(scratch.owner_url, "base")
    assert ensure_current(scratch.owner_url, scratch.runtime_url)[0].startswith(
        "schema at revision")
