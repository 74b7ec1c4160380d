"""Failed bearer authentication, audited in aggregate and throttled per source address, and
every authenticated request metered; through a real server on a port.

Each test speaks from addresses of its own (``X-Forwarded-For`` from a trusted loopback proxy,
random documentation-range addresses), so that throttles and aggregates never meet another
test's, in this run or in another one sharing the Redis server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from breeze_mcp.app import create_app
from breeze_mcp.auth import auth_failures
from breeze_mcp.auth.accounts import Tenant, create_tenant
from breeze_mcp.auth.api_keys import create_api_key, revoke_api_key
from breeze_mcp.auth.principal import RequestContext
from breeze_mcp.config import load_settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.services import Services, build_services
from tests.support import LiveServer, ProvisionedDatabase, free_port, owner_api_key
from tests.test_rate_limit import redis_url  # noqa: F401 - the fixture

pytestmark = pytest.mark.anyio

ACCEPT = "application/json, text/event-stream"


def new_source() -> str:
    """A fresh IPv6 address in a /64 of its own (2001:db8::/32, documentation)."""
    return f"2001:db8:{random.getrandbits(16):x}:{random.getrandbits(16):x}::1"


@dataclass
class Site:
    url: str
    services: Services


@contextmanager
def serve(test_db: ProvisionedDatabase, state: Path, **overrides: Any) -> Iterator[Site]:
    port = free_port()
    settings = load_settings(state_dir=state, database_url=test_db.runtime_url,
                             public_url=f"http://127.0.0.1:{port}",
                             trusted_proxies=["127.0.0.1"], **overrides)
    app = create_app(settings, test_db.runtime_url)
    with LiveServer(app, port=port) as server:
        yield Site(server.url, app.state.services)


def failures(test_db: ProvisionedDatabase, source: str) -> list[Any]:
    """The ``auth.bearer_failed`` entries of ``source`` (pre-tenant entries: read as the
    superuser, which row-level security does not filter)."""
    url = make_url(sqlalchemy_url(test_db.admin_url)).set(database=test_db.name)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(
                "SELECT deny_reason, auth_path, outcome, host(client_ip) AS ip, user_agent,"
                " parameters, tenant_id, audit_log::text AS everything FROM audit_log"
                " WHERE action = 'auth.bearer_failed' AND host(client_ip) = :ip ORDER BY id"),
                {"ip": source}))
    finally:
        engine.dispose()


def tenant_entries(test_db: ProvisionedDatabase, credential_id: str) -> list[Any]:
    url = make_url(sqlalchemy_url(test_db.admin_url)).set(database=test_db.name)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(
                "SELECT action, decision, outcome, deny_reason, parameters FROM audit_log"
                " WHERE credential_id = :c AND outcome = 'rate_limited' ORDER BY id"),
                {"c": credential_id}))
    finally:
        engine.dispose()


def _headers(token: str | None, source: str,
             extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": source, "User-Agent": "probe/1.0", "Accept": ACCEPT,
               "Content-Type": "application/json", "MCP-Protocol-Version": "2025-06-18",
               **(extra or {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def mcp(client: httpx.AsyncClient, site: Site, token: str | None, source: str,
              method: str = "tools/list", params: dict[str, Any] | None = None,
              extra: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": method}
    if params is not None:
        body["params"] = params
    return await client.post(f"{site.url}/mcp", content=json.dumps(body),
                             headers=_headers(token, source, extra))


async def rest_list(client: httpx.AsyncClient, site: Site, token: str | None,
                    source: str) -> httpx.Response:
    return await client.get(f"{site.url}/api/v1/tools", headers=_headers(token, source))


async def admin_list(client: httpx.AsyncClient, site: Site, token: str | None,
                     source: str) -> httpx.Response:
    return await client.get(f"{site.url}/api/v1/oauth/grants", headers=_headers(token, source))


def unknown_key(tenant_id: uuid.UUID | None = None) -> str:
    """Well-formed, so it is looked up, and matching nothing."""
    return f"bzk_{(tenant_id or uuid.uuid4()).hex}_{'A' * 43}"


@pytest.fixture
async def tenant(db: Database) -> Tenant:
    return await create_tenant(db, "Auth failures", slug=f"af-{uuid.uuid4().hex[:8]}")


# Audit -----------------------------------------------------------------------------------


@pytest.mark.req("HARD-AUTHFAIL-AUDIT")
async def test_each_failure_is_audited_with_its_reason_and_prefix_only(
    test_db: ProvisionedDatabase, tmp_path: Path, db: Database, tenant: Tenant,
    owner_engine: sa.Engine,
) -> None:
    revoked_info, revoked = await owner_api_key(db, tenant)
    expired_info, expired = await owner_api_key(db, tenant)
    await revoke_api_key(db, revoked_info.id, tenant=tenant)
    with owner_engine.begin() as conn:  # expired an hour ago
        conn.execute(sa.text("SELECT set_config('breeze.tenant_id', :t, true)"),
                     {"t": str(tenant.id)})
        conn.execute(sa.text("UPDATE api_keys SET expires_at = :at WHERE id = :id"),
                     {"at": dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
                      "id": expired_info.id})
    cases: list[tuple[str, str | None, dict[str, str], str]] = [
        ("missing", None, {}, "oauth"),
        ("malformed", None, {"Authorization": "Basic dXNlcjpwYXNz"}, "oauth"),
        ("malformed", "ghp_" + "x" * 36, {}, "oauth"),
        ("unknown", unknown_key(tenant.id), {}, "api_key"),
        ("expired", expired, {}, "api_key"),
        ("revoked", revoked, {}, "api_key"),
        ("unknown", f"bza_{tenant.id.hex}_{'B' * 43}", {}, "oauth"),
    ]
    with serve(test_db, tmp_path / "state") as site:
        async with httpx.AsyncClient(timeout=30) as client:
            for reason, token, extra, door in cases:
                source = new_source()
                r = await mcp(client, site, token, source, extra=extra)
                assert r.status_code == 401, (reason, r.text)
                rows = failures(test_db, source)
                assert len(rows) == 1, (reason, rows)
                row = rows[0]
                assert (row.deny_reason, row.auth_path, row.outcome) == (reason, door, "blocked")
                assert row.user_agent == "probe/1.0" and row.tenant_id is None
                assert row.parameters["count"] == 1
                assert row.parameters["endpoint"] == "/mcp"
                if token is not None and token.startswith("bz"):
                    # the type and the start of the tenant id (not secret), nothing more
                    assert row.parameters["prefix"] == f"{token[:3]}_{tenant.id.hex[:6]}…"
                    # bz?_<tenant>_<secret>: the secret may itself hold "_" (base64url)
                    secret = token.split("_", 2)[2]
                    assert len(secret) >= 16 and secret not in row.everything
                elif token is not None:
                    assert row.parameters["prefix"] == "ghp_"
                    assert "x" * 8 not in row.everything
                else:
                    assert "prefix" not in row.parameters

            # REST and the admin endpoints are audited the same way, with their door.
            for call, endpoint in ((rest_list, "/api/v1/tools"),
                                   (admin_list, "/api/v1/oauth/grants")):
                source = new_source()
                assert (await call(client, site, None, source)).status_code == 401
                assert (await call(client, site, expired, source)).status_code == 401
                rows = failures(test_db, source)
                assert [(r.deny_reason, r.auth_path, r.parameters["endpoint"]) for r in rows] == [
                    ("missing", "api_key", endpoint), ("expired", "api_key", endpoint)]


@pytest.mark.req("HARD-AUTHFAIL-AUDIT")
async def test_a_flood_writes_one_entry_per_source_and_reason(
    test_db: ProvisionedDatabase, tmp_path: Path, tenant: Tenant,
) -> None:
    with serve(test_db, tmp_path / "state", auth_failure_rate_limit="1000/minute") as site:
        async with httpx.AsyncClient(timeout=30) as client:
            source, other = new_source(), new_source()
            for _ in range(12):
                assert (await mcp(client, site, unknown_key(tenant.id), source)).status_code == 401
                assert (await mcp(client, site, "junk", source)).status_code == 401
            assert (await mcp(client, site, unknown_key(), other)).status_code == 401
    rows = failures(test_db, source)
    assert sorted((r.deny_reason, r.parameters["count"]) for r in rows) == [
        ("malformed", 1), ("unknown", 1)]
    assert [r.deny_reason for r in failures(test_db, other)] == ["unknown"]


async def _record_all(services: Services, source: str, n: int) -> None:
    context = RequestContext(request_id="t", client_ip=source, user_agent="probe/1.0")

    async def one() -> None:
        await auth_failures.record(
            services, context, source=auth_failures.source_of(context), reason="unknown",
            auth_path="api_key", prefix="bzk_000000…", endpoint="/mcp", period="1/second")

    await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.req("HARD-AUTHFAIL-AUDIT")
@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_counts_stand_for_every_failure_exactly_once(
    test_db: ProvisionedDatabase, tmp_path: Path, db: Database, storage: str,
    request: pytest.FixtureRequest,
) -> None:
    redis = request.getfixturevalue("redis_url") if storage == "redis" else None
    settings = load_settings(state_dir=tmp_path / "state", database_url=test_db.runtime_url,
                             redis_url=redis)
    # Two services over one storage: two instances of the service, when it is Redis.
    first, second = build_services(settings, db), build_services(settings, db)
    source = new_source()
    await asyncio.gather(_record_all(first, source, 25),
                         _record_all(second if redis else first, source, 25))
    assert len(failures(test_db, source)) == 1  # one entry for the period, however many
    await asyncio.sleep(1.1)  # the next period: its first failure carries the others
    await _record_all(second if redis else first, source, 1)
    counts = [r.parameters["count"] for r in failures(test_db, source)]
    assert len(counts) == 2 and counts[0] >= 1 and sum(counts) == 51


# Throttle --------------------------------------------------------------------------------


@pytest.mark.req("HARD-AUTHFAIL-THROTTLE")
async def test_a_source_that_fails_too_often_is_refused_before_lookup(
    test_db: ProvisionedDatabase, tmp_path: Path, db: Database, tenant: Tenant,
) -> None:
    _, good = await owner_api_key(db, tenant)
    info, revoked = await owner_api_key(db, tenant)
    await revoke_api_key(db, info.id, tenant=tenant)
    with serve(test_db, tmp_path / "state", auth_failure_rate_limit="3/minute") as site:
        async with httpx.AsyncClient(timeout=30) as client:
            source = new_source()
            neighbour = source.replace("::1", "::beef")  # the same /64
            elsewhere = new_source()
            # No credential at all (MCP discovery) does not count.
            for _ in range(5):
                assert (await mcp(client, site, None, source)).status_code == 401
            for _ in range(3):
                assert (await mcp(client, site, unknown_key(tenant.id), source)).status_code == 401
            r = await mcp(client, site, unknown_key(tenant.id), neighbour)
            assert r.status_code == 429
            assert 1 <= int(r.headers["retry-after"]) <= 60
            assert r.json()["error"]["code"] == -32029
            assert r.json()["error"]["data"] == {"error": "rate_limited"}
            assert r.json()["id"] is None
            # Refused before any lookup: a valid key from there too, and a revoked key is
            # recorded as throttled, not as revoked (it was never looked up).
            assert (await mcp(client, site, good, source)).status_code == 429
            assert (await mcp(client, site, revoked, neighbour)).status_code == 429
            rest = await rest_list(client, site, good, source)
            assert rest.status_code == 429 and rest.json()["error"] == "rate_limited"
            assert "retry-after" in rest.headers
            admin = await admin_list(client, site, good, source)
            assert admin.status_code == 429 and admin.json()["error"] == "rate_limited"
            # Another /64 is not affected.
            assert (await mcp(client, site, good, elsewhere)).status_code == 200
    reasons = [r.deny_reason for r in failures(test_db, source)]
    assert reasons == ["missing", "unknown", "throttled"]
    assert [r.deny_reason for r in failures(test_db, neighbour)] == []  # folded into source's
    throttled = failures(test_db, source)[2]
    assert throttled.outcome == "rate_limited"


@pytest.mark.req("HARD-AUTHFAIL-THROTTLE", "HARD-AUTHFAIL-AUDIT")
async def test_throttle_and_aggregate_are_shared_by_instances_over_redis(
    test_db: ProvisionedDatabase, tmp_path: Path, tenant: Tenant, redis_url: str,  # noqa: F811
) -> None:
    with (serve(test_db, tmp_path / "a", auth_failure_rate_limit="4/minute",
                redis_url=redis_url) as one,
          serve(test_db, tmp_path / "b", auth_failure_rate_limit="4/minute",
                redis_url=redis_url) as two):
        async with httpx.AsyncClient(timeout=30) as client:
            source = new_source()
            statuses = [(await mcp(client, site, unknown_key(tenant.id), source)).status_code
                        for site in (one, two, one, two, one, two)]
    assert statuses == [401, 401, 401, 401, 429, 429]
    assert [(r.deny_reason, r.parameters["count"]) for r in failures(test_db, source)] == [
        ("unknown", 1)]


# Metering --------------------------------------------------------------------------------


@pytest.mark.req("HARD-METER-ALL")
async def test_every_mcp_request_counts_against_the_credentials_limit(
    test_db: ProvisionedDatabase, tmp_path: Path, db: Database, tenant: Tenant,
) -> None:
    await owner_api_key(db, tenant)  # the keys' creator
    info, key = await create_api_key(db, tenant, name="metered", scopes="ai:read",
                                     rate_limit="4/minute")
    with serve(test_db, tmp_path / "state") as site:
        async with httpx.AsyncClient(timeout=30) as client:
            source = new_source()
            remaining = []
            for method, params in (("initialize", {"protocolVersion": "2025-06-18",
                                                   "capabilities": {},
                                                   "clientInfo": {"name": "t", "version": "1"}}),
                                   ("ping", None), ("tools/list", None), ("no/such", None)):
                r = await mcp(client, site, key, source, method, params)
                assert r.status_code == 200, r.text
                remaining.append(int(r.headers["ratelimit-remaining"]))
                assert r.headers["ratelimit-limit"] == "4"
            assert remaining == [3, 2, 1, 0]
            refused = await mcp(client, site, key, source, "tools/list")
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == -32029
            assert refused.json()["id"] == 7
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert refused.headers["ratelimit-remaining"] == "0"
            # The same bucket a tools call draws from.
            call = await mcp(client, site, key, source, "tools/call",
                             {"name": "list_devices", "arguments": {}})
            assert call.status_code == 429
    assert [(r.action, r.decision, r.deny_reason) for r in tenant_entries(test_db, str(info.id))
            ] == [("mcp.tools/list", "denied", f"rate_limit:api_key:{info.id}"),
                  ("list_devices", "denied", f"rate_limit:api_key:{info.id}")]


@pytest.mark.req("HARD-METER-ALL")
async def test_rest_listing_and_admin_endpoints_are_metered(
    test_db: ProvisionedDatabase, tmp_path: Path, db: Database, tenant: Tenant,
) -> None:
    await owner_api_key(db, tenant)  # the keys' creator
    info, key = await create_api_key(db, tenant, name="admin", scopes="ai:read,ai:write",
                                     rate_limit="3/minute")
    with serve(test_db, tmp_path / "state") as site:
        async with httpx.AsyncClient(timeout=30) as client:
            source = new_source()
            listed = await rest_list(client, site, key, source)
            assert listed.status_code == 200 and listed.headers["ratelimit-remaining"] == "2"
            assert (await admin_list(client, site, key, source)).status_code == 200
            assert (await admin_list(client, site, key, source)).status_code == 200
            refused = await admin_list(client, site, key, source)
            assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
            assert "retry-after" in refused.headers and "ratelimit-limit" in refused.headers
            refused = await rest_list(client, site, key, source)
            assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
            revoke = await client.delete(f"{site.url}/api/v1/oauth/grants/{uuid.uuid4()}",
                                         headers=_headers(key, source))
            assert revoke.status_code == 429
    assert [r.action for r in tenant_entries(test_db, str(info.id))] == [
        "admin.list_oauth_grants", "rest.list_tools", "admin.revoke_oauth_grant"]


# Admin ids -------------------------------------------------------------------------------


@pytest.mark.req("OAUTH-REVOCATION")
async def test_admin_ids_that_cannot_exist_are_not_found(
    test_db: ProvisionedDatabase, tmp_path: Path, db: Database, tenant: Tenant,
) -> None:
    _, key = await owner_api_key(db, tenant, scopes="ai:read,ai:write")
    with serve(test_db, tmp_path / "state") as site:
        async with httpx.AsyncClient(timeout=30) as client:
            source = new_source()
            for bad in ("%00", "x" * 5000, "not-a-uuid", f"{uuid.uuid4()}%00", "%C3%A9",
                        "%E2%80%AE", "%7F"):
                for path in (f"/api/v1/oauth/grants/{bad}",
                             f"/api/v1/oauth/clients/{bad}/grants"):
                    r = await client.delete(f"{site.url}{path}", headers=_headers(key, source))
                    assert r.status_code in (200, 404), (path, r.status_code, r.text)
                    assert r.json()["error" if r.status_code == 404 else "revoked"] in (
                        "not_found", [])
