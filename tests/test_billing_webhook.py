"""The billing webhook activates a tenant automatically, once, and nothing else does.

Over a real server on a port: signed events, the pair "verified owner email and attached
payment method" completing in either order, replays, forged, stale, malformed and unknown-tenant
webhooks (each changes nothing and is audited).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from breeze_mcp.auth import billing
from breeze_mcp.auth.accounts import Tenant, create_tenant, create_user
from breeze_mcp.db import Database
from tests.oauth_support import PASSWORD, OAuthWorld, module_world
from tests.support import ProvisionedDatabase, superuser_sql


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


def _db_run(world: OAuthWorld, work: Any) -> Any:
    async def run() -> Any:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def _pending_tenant(world: OAuthWorld, *, verified: bool) -> Tenant:
    tag = uuid.uuid4().hex[:8]

    async def build(db: Database) -> Tenant:
        tenant = await create_tenant(db, f"Pending {tag}", slug=f"pending-{tag}",
                                     status="pending_verification")
        await create_user(db, tenant, email=f"owner-{tag}@example.com", password=PASSWORD,
                          role="owner", verified=verified)
        return tenant

    result: Tenant = _db_run(world, build)
    return result


def _superuser(world: OAuthWorld, sql: str, **params: Any) -> list[Any]:
    return superuser_sql(world.test_db, sql, **params)


def _status(world: OAuthWorld, tenant: Tenant) -> str:
    return str(_superuser(world, "SELECT status FROM tenants WHERE id = :t", t=tenant.id)[0][0])


def _send(world: OAuthWorld, event: dict[str, Any] | bytes, *, secret: str | None = None,
          at: int | None = None, header: str | None = None) -> httpx.Response:
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    secret = secret or world.settings.secret("billing_webhook_secret")
    signature = header if header is not None else billing.sign(
        secret, body, int(time.time()) if at is None else at)
    return httpx.post(f"{world.url}/api/v1/billing/webhook", content=body, timeout=10,
                      headers={"Content-Type": "application/json",
                               billing.SIGNATURE_HEADER: signature})


def _event(tenant: Tenant, kind: str = "payment_method.attached") -> dict[str, Any]:
    return {"id": f"evt_{uuid.uuid4().hex}", "type": kind, "tenant_id": str(tenant.id),
            "livemode": False}


def _refusals(world: OAuthWorld, reason: str) -> int:
    return int(_superuser(world, "SELECT count(*) FROM audit_log WHERE action ="
                          " 'billing.webhook_refused' AND deny_reason = :r", r=reason)[0][0])


@pytest.mark.req("HUMAN-ACTIVATION", "HUMAN-TENANT-INACTIVE")
def test_verified_owner_then_payment_activates(world: OAuthWorld) -> None:
    tenant = _pending_tenant(world, verified=True)

    async def key(db: Database) -> str:
        from breeze_mcp.auth.api_keys import create_api_key
        return (await create_api_key(db, tenant, name="early", scopes="ai:read"))[1]

    early = _db_run(world, key)

    def list_tools() -> httpx.Response:
        return httpx.get(f"{world.url}/api/v1/tools", timeout=10,
                         headers={"Authorization": f"Bearer {early}"})

    waiting = list_tools()
    assert waiting.status_code == 403, waiting.text
    assert waiting.json()["error"] == "tenant_inactive"
    assert waiting.json()["missing"] == ["a payment method"]
    r = _send(world, _event(tenant))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "processed", "tenant_status": "active", "activated": True}
    assert _status(world, tenant) == "active"
    assert list_tools().status_code == 200  # the key works from the next request
    actions = [row[0] for row in _superuser(
        world, "SELECT action FROM audit_log WHERE tenant_id = :t ORDER BY id", t=tenant.id)]
    assert actions[-2:] == ["tenant.activated", "billing.webhook"]


@pytest.mark.req("HUMAN-ACTIVATION")
def test_payment_then_verification_activates(world: OAuthWorld) -> None:
    tenant = _pending_tenant(world, verified=False)
    r = _send(world, _event(tenant))
    assert r.json() == {"status": "processed", "tenant_status": "pending_verification",
                        "activated": False}
    assert _status(world, tenant) == "pending_verification"
    # The owner verifies their email: the verification's transaction completes the pair.
    _superuser(world, "UPDATE users SET email_verified_at = now() WHERE id IN"
               " (SELECT user_id FROM memberships WHERE tenant_id = :t)", t=tenant.id)

    async def verified(db: Database) -> bool:
        async with db.tenant(tenant.id) as tx:
            done = await billing.activate_if_ready(tx, tenant.id, None, by="system:test")
            await tx.finish(None)
        return done

    assert _db_run(world, verified) is True
    assert _status(world, tenant) == "active"


@pytest.mark.req("HUMAN-ACTIVATION")
def test_a_replayed_event_changes_nothing(world: OAuthWorld) -> None:
    tenant = _pending_tenant(world, verified=False)
    attached = _event(tenant)
    assert _send(world, attached).json()["status"] == "processed"
    detached = _event(tenant, "payment_method.detached")
    assert _send(world, detached).json()["status"] == "processed"
    # The attach again, same id: a replay, not a new attachment.
    r = _send(world, attached)
    assert r.status_code == 200 and r.json()["status"] == "duplicate", r.text
    assert _superuser(world, "SELECT payment_method_at FROM tenants WHERE id = :t",
                      t=tenant.id)[0][0] is None
    assert _superuser(world, "SELECT count(*) FROM audit_log WHERE tenant_id = :t"
                      " AND deny_reason = 'replayed'", t=tenant.id)[0][0] == 1


@pytest.mark.req("HUMAN-ACTIVATION")
@pytest.mark.parametrize("case", ["forged", "stale", "future", "missing", "garbled",
                                  "malformed", "unknown_tenant", "bad_type"])
def test_refused_webhooks_change_nothing_and_are_audited(world: OAuthWorld, case: str) -> None:
    tenant = _pending_tenant(world, verified=True)
    event = _event(tenant)
    expected = {"forged": (401, "invalid_signature"), "stale": (401, "stale_signature"),
                "future": (401, "stale_signature"), "missing": (401, "missing_signature"),
                "garbled": (401, "invalid_signature"), "malformed": (400, "invalid_payload"),
                "unknown_tenant": (404, "unknown_tenant"), "bad_type": (400, "invalid_payload")}
    before = _refusals(world, expected[case][1])
    if case == "forged":
        r = _send(world, event, secret="not-the-secret")
    elif case == "stale":
        r = _send(world, event, at=int(time.time()) - billing.TOLERANCE_SECONDS - 5)
    elif case == "future":
        r = _send(world, event, at=int(time.time()) + billing.TOLERANCE_SECONDS + 5)
    elif case == "missing":
        r = _send(world, event, header="")
    elif case == "garbled":
        r = _send(world, event, header="t=abc,v1=")
    elif case == "malformed":
        r = _send(world, b'{"id": "evt_1", "type": ')
    elif case == "unknown_tenant":
        r = _send(world, {**event, "tenant_id": str(uuid.uuid4())})
    else:
        r = _send(world, {**event, "type": "customer.deleted"})
    assert (r.status_code, r.json()["error"]) == expected[case], r.text
    assert _status(world, tenant) == "pending_verification"
    assert _refusals(world, expected[case][1]) == before + 1


def test_signature_rules() -> None:
    """The signature check on its own: the exact HMAC, several v1 values, the tolerance."""
    body = b'{"id":"evt_x"}'
    header = billing.sign("s3cret", body, 1_700_000_000)
    billing.verify_signature("s3cret", header, body, now=1_700_000_000)
    billing.verify_signature("s3cret", header + ",v1=" + "0" * 64, body, now=1_700_000_000)
    with pytest.raises(billing.WebhookRefused, match="does not match"):
        billing.verify_signature("s3cret", header, body + b" ", now=1_700_000_000)
    with pytest.raises(billing.WebhookRefused) as refused:
        billing.verify_signature("s3cret", header, body, now=1_700_000_000 + 301)
    assert refused.value.reason == "stale_signature"
