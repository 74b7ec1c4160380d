"""The server's start-up checks and health endpoint, over a real HTTP port."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from breeze_mcp.app import create_app, verify_database
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.db.setup import DatabaseSetupError
from tests.support import (
    LiveServer,
    ProvisionedDatabase,
    run_cli,
)


def test_healthz_over_http(settings: Settings, test_db: ProvisionedDatabase) -> None:
    with LiveServer(create_app(settings, test_db.runtime_url)) as server:
        response = httpx.get(f"{server.url}/healthz")
        assert response.status_code == 200
        assert response.json()["status"] == "ok"


@pytest.mark.req("RLS-SERVE-REFUSES")
@pytest.mark.anyio
async def test_refuses_table_owner(test_db: ProvisionedDatabase) -> None:
    with pytest.raises(DatabaseSetupError, match=r"the owner of .* table"):
        await verify_database(test_db.owner_url)


@pytest.mark.req("RLS-SERVE-REFUSES")
@pytest.mark.anyio
async def test_refuses_superuser(test_db: ProvisionedDatabase) -> None:
    url = make_url(sqlalchemy_url(test_db.admin_url)).set(database=test_db.name)
    db = Database(url.render_as_string(hide_password=False), pool_size=1)
    try:
        is_super = await db.scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    finally:
        await db.dispose()
    if not is_super:
        pytest.skip("BREEZE_TEST_DATABASE_URL is not a superuser connection")
    with pytest.raises(DatabaseSetupError, match="a superuser"):
        await verify_database(url.render_as_string(hide_password=False))


@pytest.mark.req("RLS-SERVE-REFUSES")
@pytest.mark.anyio
async def test_refuses_broken_isolation_and_old_schema(scratch: ProvisionedDatabase) -> None:
    owner = sa.create_engine(sqlalchemy_url(scratch.owner_url))
    with owner.begin() as conn:
        conn.execute(sa.text("CREATE TABLE rogue (id int, tenant_id uuid)"))
    try:
        with pytest.raises(DatabaseSetupError, match="rogue: row-level security is not enabled"):
            await verify_database(scratch.runtime_url)
        with owner.begin() as conn:
            conn.execute(sa.text("DROP TABLE rogue"))
            conn.execute(sa.text("UPDATE alembic_version SET version_num = 'old'"))
        with pytest.raises(DatabaseSetupError, match="run `breeze-mcp migrate`"):
            await verify_database(scratch.runtime_url)
    finally:
        owner.dispose()


@pytest.mark.req("RLS-SERVE-REFUSES", "CLI-BAD-INPUT")
def test_serve_exits_with_one_line_when_run_as_owner(
    test_db: ProvisionedDatabase, tmp_path: Path
) -> None:
    env = test_db.env(tmp_path / "state")
    env["BREEZE_DATABASE_URL"] = test_db.owner_url
    proc = run_cli("serve", "--port", "0", env=env, timeout=60)
    assert proc.returncode == 1
    assert "refusing to serve as database role" in proc.stderr
    assert "Traceback" not in proc.stderr
