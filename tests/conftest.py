"""Fixtures: one fresh database per test run (embedded PostgreSQL unless
BREEZE_TEST_DATABASE_URL names a server to create it in), tenants, and settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from breeze_mcp.auth.accounts import Tenant, create_tenant
from breeze_mcp.config import Settings, load_settings
from breeze_mcp.db import Database
from breeze_mcp.db.embedded import EmbeddedPostgres
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.tools.demo import seed_demo_data
from tests.support import ProvisionedDatabase, create_test_database, drop_test_database


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "req(*ids): requirement ids this test proves")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser connection to a server where each run creates its own databases."""
    external = os.environ.get("BREEZE_TEST_DATABASE_URL")
    if external:
        yield external
        return
    cluster = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "postgres")
    cluster.acquire()
    try:
        yield cluster.url()
    finally:
        cluster.release()


@pytest.fixture(scope="session")
def test_db(admin_url: str) -> Iterator[ProvisionedDatabase]:
    db = create_test_database(admin_url)
    try:
        yield db
    finally:
        drop_test_database(db)


@pytest.fixture
def scratch(admin_url: str) -> Iterator[ProvisionedDatabase]:
    """A database of its own for one test that migrates, breaks or drops what it holds."""
    db = create_test_database(admin_url)
    try:
        yield db
    finally:
        drop_test_database(db)


@pytest.fixture
def settings(tmp_path: Path, test_db: ProvisionedDatabase) -> Settings:
    return load_settings(
        state_dir=tmp_path / "state",
        database_url=test_db.runtime_url,
        migrate_database_url=test_db.owner_url,
    )


@pytest.fixture
async def db(test_db: ProvisionedDatabase) -> AsyncIterator[Database]:
    database = Database(test_db.runtime_url, pool_size=2)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
def owner_engine(test_db: ProvisionedDatabase) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sqlalchemy_url(test_db.owner_url))
    try:
        yield engine
    finally:
        engine.dispose()


async def _populated_tenant(db: Database, label: str) -> Tenant:
    tenant = await create_tenant(db, f"Tenant {label}", slug=f"{label}-{uuid.uuid4().hex[:8]}")
    await seed_demo_data(db, tenant.id)
    return tenant


@pytest.fixture
async def tenant_a(db: Database) -> Tenant:
    return await _populated_tenant(db, "a")


@pytest.fixture
async def tenant_b(db: Database) -> Tenant:
    return await _populated_tenant(db, "b")
