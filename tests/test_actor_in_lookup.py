"""The credential lookup names the caller as the transaction's actor in the same statement.

The edge skips a separate ``set_config`` for the actor, so the lookup's own must equal what
``Principal.actor`` / ``acting_user_id`` say; a rejected credential's setting is rolled back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from breeze_mcp.accounts import Tenant, create_user
from breeze_mcp.auth import api_keys, oauth
from breeze_mcp.auth.principal import Principal
from breeze_mcp.db import Database
from tests.oauth_support import OAuthWorld, connect, oauth_world
from tests.support import ProvisionedDatabase

_SETTINGS = sa.text(
    "SELECT current_setting('breeze.tenant_id'), current_setting('breeze.actor'),"
    " current_setting('breeze.user_id')"
)


async def _context(conn: AsyncConnection) -> tuple[str, str, str]:
    tenant, actor, user = (await conn.execute(_SETTINGS)).one()
    return tenant, actor, user


def _expected(principal: Principal) -> tuple[str, str, str]:
    return str(principal.tenant_id), principal.actor, str(principal.acting_user_id)


@pytest.mark.anyio
async def test_api_key_lookup_sets_the_principals_actor(db: Database, tenant_a: Tenant) -> None:
    owner = await create_user(db, tenant_a, email=f"o-{uuid.uuid4().hex[:8]}@example.com",
                              password="correct horse battery staple", role="owner")
    info, key = await api_keys.create_api_key(db, tenant_a, name="k", scopes="ai:read",
                                              creator_email=owner.email)
    async with db.tenant_transaction(tenant_a.id, actor="system:auth") as conn:
        principal = await api_keys.authenticate(conn, key, default_rate_limit="10/minute")
        assert principal.actor == f"api_key:{info.id}"
        assert await _context(conn) == _expected(principal)

    await api_keys.revoke_api_key(db, info.id, tenant=tenant_a)
    async with db.tenant_transaction(tenant_a.id, actor="system:auth") as conn:
        savepoint = await conn.begin_nested()
        with pytest.raises(api_keys.KeyRejected):
            await api_keys.authenticate(conn, key, default_rate_limit="10/minute")
        await savepoint.rollback()
        assert await _context(conn) == (str(tenant_a.id), "system:auth", "")


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[OAuthWorld]:
    with oauth_world(test_db, Path(tmp_path_factory.mktemp("state"))) as w:
        yield w


def test_access_token_lookup_sets_the_principals_actor(world: OAuthWorld) -> None:
    client_id, body = connect(world)
    token = body["access_token"]

    async def check() -> None:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            async with db.tenant_transaction(world.tenant.id, actor="system:auth") as conn:
                principal = await oauth.authenticate_access_token(conn, world.settings, token)
                assert principal.client_id == client_id
                assert principal.actor == (
                    f"user:{principal.acting_user_id} via oauth_client:{client_id}")
                assert await _context(conn) == _expected(principal)
            async with db.tenant_transaction(world.tenant.id, actor="system:auth") as conn:
                savepoint = await conn.begin_nested()
                with pytest.raises(oauth.TokenRejected):
                    await oauth.authenticate_access_token(
                        conn, world.settings.model_copy(update={"public_url": "http://x"}),
                        token)
                await savepoint.rollback()
                assert await _context(conn) == (str(world.tenant.id), "system:auth", "")
        finally:
            await db.dispose()

    asyncio.run(check())
