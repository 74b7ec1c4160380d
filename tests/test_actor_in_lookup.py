"""The credential lookup names the caller as the transaction's actor in the same statement.

The edge skips a separate ``set_config`` for the actor, so the lookup's own must equal what
``Principal.actor`` / ``acting_user_id`` say; a rejected credential's setting is rolled back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from breeze_mcp.accounts import Tenant
from breeze_mcp.auth import api_keys, oauth
from breeze_mcp.auth.principal import Principal
from breeze_mcp.db import Database
from tests.oauth_support import OAuthWorld, connect, oauth_world
from tests.support import ProvisionedDatabase, owner_api_key

_SETTINGS = sa.text(
    "SELECT current_setting('breeze.tenant_id'), current_setting('breeze.actor'),"
    " current_setting('breeze.user_id')"
)


async def _context(conn: AsyncConnection) -> tuple[str, str, str]:
    tenant, actor, user = (await conn.execute(_SETTINGS)).one()
    return tenant, actor, user


def _expected(principal: Principal) -> tuple[str, str, str]:
    return str(principal.tenant_id), principal.actor, str(principal.acting_user_id)


async def _outside_any_transaction(db: Database) -> str | None:
    """``breeze.actor`` as the next user of a one-connection pool sees it."""
    async with db.connection() as conn:
        value = (await conn.execute(sa.text(
            "SELECT current_setting('breeze.actor', true)"))).scalar_one()
    return None if value in (None, "") else str(value)


@pytest.mark.anyio
async def test_api_key_lookup_sets_the_principals_actor(test_db: ProvisionedDatabase,
                                                        db: Database, tenant_a: Tenant) -> None:
    info, key = await owner_api_key(db, tenant_a)
    statement = api_keys.lookup(key, tenant_a.id)
    single = Database(test_db.runtime_url, pool_size=1)
    try:
        # exactly the edge's path: the lookup travels with BEGIN (Database.tenant_lookup)
        async with single.tenant_lookup(tenant_a.id, actor="system:auth",
                                        first=statement) as (conn, row):
            principal = await api_keys.principal_from(conn, tenant_a.id, row,
                                                      default_rate_limit="10/minute")
            assert principal.actor == f"api_key:{info.id}"
            assert await _context(conn) == _expected(principal)
        assert await _outside_any_transaction(single) is None

        await api_keys.revoke_api_key(db, info.id, tenant=tenant_a)
        with pytest.raises(api_keys.KeyRejected):
            async with single.tenant_lookup(tenant_a.id, actor="system:auth",
                                            first=statement) as (conn, row):
                assert row is not None  # the lookup named the actor before it was judged
                assert (await _context(conn))[1] == f"api_key:{info.id}"
                await api_keys.principal_from(conn, tenant_a.id, row,
                                              default_rate_limit="10/minute")
        assert await _outside_any_transaction(single) is None  # rolled back with it
    finally:
        await single.dispose()


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[OAuthWorld]:
    with oauth_world(test_db, Path(tmp_path_factory.mktemp("state"))) as w:
        yield w


@pytest.mark.anyio
async def test_access_token_lookup_sets_the_principals_actor(world: OAuthWorld) -> None:
    client_id, body = connect(world)
    token = body["access_token"]

    async def check() -> None:
        db = Database(world.test_db.runtime_url, pool_size=1)
        statement = oauth.access_lookup(token, world.tenant.id)
        try:
            async with db.tenant_lookup(world.tenant.id, actor="system:auth",
                                        first=statement) as (conn, row):
                principal = await oauth.access_principal_from(
                    conn, world.settings, world.tenant.id, row)
                assert principal.client_id == client_id
                assert principal.actor == (
                    f"user:{principal.acting_user_id} via oauth_client:{client_id}")
                assert await _context(conn) == _expected(principal)
            elsewhere = world.settings.model_copy(update={"public_url": "http://x"})
            with pytest.raises(oauth.TokenRejected):
                async with db.tenant_lookup(world.tenant.id, actor="system:auth",
                                            first=statement) as (conn, row):
                    await oauth.access_principal_from(conn, elsewhere, world.tenant.id, row)
            assert await _outside_any_transaction(db) is None
        finally:
            await db.dispose()

    await check()
