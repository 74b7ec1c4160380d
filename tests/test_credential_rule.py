"""One validity rule for every credential (``auth/credentials.usable_scopes``).

An API key, an OAuth access token and an OAuth refresh token held by the same person are put in
the same state (revoked, expired, tenant not active, holder removed, disabled or demoted below
every scope the credential has); all three are refused, each in its own protocol's shape, and
the failed bearer authentications are audited with the reason.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from breeze_mcp.auth.accounts import create_user
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.db import Database
from tests.oauth_support import PASSWORD, OAuthWorld, connect, mcp_call, module_world, refresh
from tests.support import ProvisionedDatabase


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


@dataclass
class Held:
    """Three live credentials of one admin: an API key and an OAuth grant's two tokens."""

    user_id: uuid.UUID
    key: str
    key_id: uuid.UUID
    client_id: str
    access: str
    refresh: str


def _held(world: OAuthWorld, *, scopes: str = "ai:read,ai:write") -> Held:
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"

    async def build() -> tuple[uuid.UUID, str, uuid.UUID]:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            user = await create_user(db, world.tenant, email=email, password=PASSWORD,
                                     role="admin")
            info, key = await create_api_key(db, world.tenant, name="rule", scopes=scopes,
                                             creator_email=email)
            return user.id, key, info.id
        finally:
            await db.dispose()

    user_id, key, key_id = asyncio.run(build())
    client_id, body = connect(world, email, scopes=scopes.split(","))
    return Held(user_id, key, key_id, client_id, body["access_token"], body["refresh_token"])


def _all_work(world: OAuthWorld, held: Held) -> None:
    assert mcp_call(world, held.key, "tools/list").status_code == 200
    assert mcp_call(world, held.access, "tools/list").status_code == 200


def _all_refused(world: OAuthWorld, held: Held) -> None:
    for token in (held.key, held.access):
        r = mcp_call(world, token, "tools/list")
        assert r.status_code == 401, (token[:4], r.text)
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    r = refresh(world, held.client_id, held.refresh)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"


def _audited(world: OAuthWorld, reason: str) -> None:
    """An ``auth.bearer_failed`` entry with ``reason`` exists (entries are aggregated per
    source and reason per minute; pre-tenant entries are read as the superuser)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from breeze_mcp.db.engine import sqlalchemy_url

    url = make_url(sqlalchemy_url(world.test_db.admin_url)).set(database=world.test_db.name)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            count = conn.execute(sa.text(
                "SELECT count(*) FROM audit_log WHERE action = 'auth.bearer_failed'"
                " AND deny_reason = :reason"), {"reason": reason}).scalar_one()
    finally:
        engine.dispose()
    assert count >= 1, reason


def _system_sql(world: OAuthWorld, sql: str, **params: object) -> None:
    """Tables without a tenant (users) as the schema owner."""
    import sqlalchemy as sa

    from breeze_mcp.db.engine import sqlalchemy_url

    engine = sa.create_engine(sqlalchemy_url(world.test_db.owner_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        engine.dispose()


@pytest.mark.req("AUTH-ONE-RULE", "KEYS-LIFECYCLE", "SEED-REVOKE-IMMEDIATE")
def test_revoked_is_refused_on_every_path(world: OAuthWorld) -> None:
    held = _held(world)
    _all_work(world, held)
    world.owner_sql("UPDATE api_keys SET revoked_at = now() WHERE id = :k", k=held.key_id)
    world.owner_sql("UPDATE oauth_grants SET revoked_at = now() WHERE client_id = :c",
                    c=held.client_id)
    _all_refused(world, held)
    _audited(world, "revoked")


@pytest.mark.req("AUTH-ONE-RULE", "KEYS-LIFECYCLE")
def test_expired_is_refused_on_every_path(world: OAuthWorld) -> None:
    held = _held(world)
    _all_work(world, held)
    world.owner_sql("UPDATE api_keys SET expires_at = now() - interval '1 second'"
                    " WHERE id = :k", k=held.key_id)
    for table in ("oauth_access_tokens", "oauth_refresh_tokens"):
        world.owner_sql(f"UPDATE {table} SET expires_at = now() - interval '1 second'"
                        " WHERE grant_id IN (SELECT id FROM oauth_grants WHERE client_id = :c)",
                        c=held.client_id)
    _all_refused(world, held)
    _audited(world, "expired")


@pytest.mark.req("AUTH-ONE-RULE")
@pytest.mark.parametrize("change", ["removed", "disabled", "demoted"])
def test_holder_without_access_is_refused_on_every_path(world: OAuthWorld, change: str) -> None:
    # ai:write only: a readonly holder keeps none of it.
    held = _held(world, scopes="ai:write")
    _all_work(world, held)
    if change == "removed":
        world.owner_sql("DELETE FROM memberships WHERE user_id = :u", u=held.user_id)
    elif change == "disabled":
        _system_sql(world, "UPDATE users SET disabled_at = now() WHERE id = :u", u=held.user_id)
    else:
        world.owner_sql("UPDATE memberships SET role = 'readonly' WHERE user_id = :u",
                        u=held.user_id)
    _all_refused(world, held)
    _audited(world, "no_access")


@pytest.mark.req("AUTH-ONE-RULE", "HUMAN-TENANT-INACTIVE")
def test_tenant_not_active_is_refused_on_every_path(world: OAuthWorld) -> None:
    """A valid credential of a tenant that is not active is a 403 ``tenant_inactive`` saying
    what the tenant lacks (not a 401: the credential is fine); the refresh is invalid_grant."""
    held = _held(world)
    _all_work(world, held)
    _system_sql(world, "UPDATE tenants SET status = 'pending_verification',"
                " payment_method_at = NULL WHERE id = :t", t=world.tenant.id)
    try:
        r = mcp_call(world, held.access, "tools/list")
        assert r.status_code == 403, r.text
        data = r.json()["error"]["data"]
        assert data["error"] == "tenant_inactive"
        assert data["missing"] == ["a payment method"]  # the owner's email is verified
        r = httpx.get(f"{world.url}/api/v1/tools", timeout=10,
                      headers={"Authorization": f"Bearer {held.key}"})
        assert r.status_code == 403 and r.json()["error"] == "tenant_inactive", r.text
        assert "a payment method" in r.json()["message"]
        r = refresh(world, held.client_id, held.refresh)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
        _system_sql(world, "UPDATE tenants SET status = 'suspended' WHERE id = :t",
                    t=world.tenant.id)
        r = mcp_call(world, held.key, "tools/list")
        assert r.status_code == 403 and "suspended" in r.json()["error"]["message"], r.text
    finally:
        _system_sql(world, "UPDATE tenants SET status = 'active' WHERE id = :t",
                    t=world.tenant.id)
    _all_work(world, held)
    _audited(world, "tenant_inactive")


@pytest.mark.req("AUTH-ONE-RULE")
def test_demotion_narrows_every_path_at_once(world: OAuthWorld) -> None:
    """A holder demoted to readonly keeps ai:read on every credential, and loses the rest."""
    held = _held(world)
    world.owner_sql("UPDATE memberships SET role = 'readonly' WHERE user_id = :u", u=held.user_id)
    for token in (held.key, held.access):
        r = mcp_call(world, token, "tools/call",
                     {"name": "add_note", "arguments": {"device_id": str(uuid.uuid4()),
                                                  "body": "demoted"}})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["data"]["required_scope"] == "ai:write"
        assert mcp_call(world, token, "tools/list").status_code == 200
    r = refresh(world, held.client_id, held.refresh)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "ai:read"
