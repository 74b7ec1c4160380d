"""Trusted client IP: a table of cases, then the resolved address in a real audit entry."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import sqlalchemy as sa

from breeze_mcp.accounts import create_tenant, create_user
from breeze_mcp.app import create_app
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.auth.client_ip import parse_networks, rate_limit_key, resolve_client_ip
from breeze_mcp.config import load_settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.demo import seed_demo_data
from tests.support import LiveServer, ProvisionedDatabase, free_port

PROXIES = parse_networks(["10.0.0.0/8", "2001:db8::/32"])


@pytest.mark.req("CLIENT-IP")
@pytest.mark.parametrize(
    ("peer", "xff", "forwarded", "trusted", "expected"),
    [
        # No trusted proxies: the peer is the client whatever the headers say.
        ("203.0.113.5", ["1.2.3.4"], [], (), "203.0.113.5"),
        # Peer not trusted: headers ignored even when proxies are configured.
        ("198.51.100.7", ["1.2.3.4"], [], PROXIES, "198.51.100.7"),
        # Trusted peer: the rightmost untrusted hop, not the client-written leftmost.
        ("10.0.0.2", ["6.6.6.6, 203.0.113.9"], [], PROXIES, "203.0.113.9"),
        ("10.0.0.2", ["6.6.6.6, 203.0.113.9, 10.1.1.1"], [], PROXIES, "203.0.113.9"),
        # Several XFF headers are one list, in order.
        ("10.0.0.2", ["6.6.6.6", "203.0.113.9, 10.1.1.1"], [], PROXIES, "203.0.113.9"),
        # Malformed hop: the walk stops at the last good hop.
        ("10.0.0.2", ["203.0.113.9, garbage, 10.1.1.1"], [], PROXIES, "10.1.1.1"),
        ("10.0.0.2", ["garbage"], [], PROXIES, "10.0.0.2"),
        # Every hop trusted: the leftmost trusted one.
        ("10.0.0.2", ["10.9.9.9, 10.1.1.1"], [], PROXIES, "10.9.9.9"),
        # Trusted peer, no header: the peer.
        ("10.0.0.2", [], [], PROXIES, "10.0.0.2"),
        # Ports and brackets.
        ("10.0.0.2", ["203.0.113.9:5555"], [], PROXIES, "203.0.113.9"),
        ("10.0.0.2", ["[2001:db9::1]:443"], [], PROXIES, "2001:db9::1"),
        # RFC 7239 Forwarded, when there is no X-Forwarded-For.
        ("10.0.0.2", [], ['for=6.6.6.6, for="[2001:db9::7]";proto=https'], PROXIES,
         "2001:db9::7"),
        ("10.0.0.2", [], ["for=203.0.113.1;by=10.0.0.2, for=10.4.4.4"], PROXIES,
         "203.0.113.1"),
        # IPv4-mapped peers are IPv4.
        ("::ffff:10.0.0.2", ["203.0.113.9"], [], PROXIES, "203.0.113.9"),
        ("2001:db8::5", ["203.0.113.9"], [], PROXIES, "203.0.113.9"),
    ],
)
def test_resolve_client_ip(peer, xff, forwarded, trusted, expected) -> None:
    assert resolve_client_ip(peer, x_forwarded_for=xff, forwarded=forwarded,
                             trusted=trusted) == expected


@pytest.mark.req("CLIENT-IP")
def test_rate_limit_key_folds_ipv6_to_64() -> None:
    assert rate_limit_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert rate_limit_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert rate_limit_key("203.0.113.9") == "203.0.113.9"


def _audit_ips(owner_url: str, tenant_id: uuid.UUID, marker: str) -> list[str]:
    engine = sa.create_engine(sqlalchemy_url(owner_url))
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT set_config('breeze.tenant_id', :t, true)"),
                     {"t": str(tenant_id)})
        rows = conn.execute(sa.text(
            "SELECT host(client_ip) FROM audit_log WHERE parameters->>'search' = :m "
            "ORDER BY id"), {"m": marker}).all()
    engine.dispose()
    return [r[0] for r in rows]


@pytest.mark.req("CLIENT-IP")
@pytest.mark.parametrize("trusted", [[], ["127.0.0.1/32"]])
def test_forged_forwarded_for_does_not_reach_the_audit_log(
    test_db: ProvisionedDatabase, tmp_path, trusted: list[str]
) -> None:
    async def setup() -> tuple[uuid.UUID, str]:
        db = Database(test_db.runtime_url, pool_size=1)
        try:
            tenant = await create_tenant(db, "IP", slug=f"ip-{uuid.uuid4().hex[:6]}")
            await seed_demo_data(db, tenant.id)
            await create_user(db, tenant, email=f"o-{tenant.slug}@example.com",
                              password="a-Strong-passphrase-42", role="owner")
            _, key = await create_api_key(db, tenant, name="ip", scopes="ai:read")
            return tenant.id, key
        finally:
            await db.dispose()

    tenant_id, key = asyncio.run(setup())
    port = free_port()
    settings = load_settings(state_dir=tmp_path, database_url=test_db.runtime_url,
                             public_url=f"http://127.0.0.1:{port}",
                             trusted_proxies=",".join(trusted))
    marker = uuid.uuid4().hex
    with LiveServer(create_app(settings, test_db.runtime_url), port=port) as server:
        r = httpx.post(f"{server.url}/api/v1/tools/list_devices", json={"search": marker},
                       headers={"Authorization": f"Bearer {key}",
                                "X-Forwarded-For": "6.6.6.6, 203.0.113.50"})
        assert r.status_code == 200
    # Untrusted peer: the header is ignored. Trusted loopback proxy: the rightmost hop.
    assert _audit_ips(test_db.owner_url, tenant_id, marker) == (
        ["203.0.113.50"] if trusted else ["127.0.0.1"])


@pytest.mark.req("SEED-TRUSTED-IP", "OAUTH-DCR-LIMITS")
@pytest.mark.parametrize("trusted", [[], ["127.0.0.1/32"]])
def test_forged_forwarded_for_does_not_fool_the_rate_limiter(
    test_db: ProvisionedDatabase, tmp_path, trusted: list[str]
) -> None:
    from tests.oauth_support import oauth_world

    body = {"client_name": "ip", "redirect_uris": ["http://127.0.0.1:7777/cb"],
            "token_endpoint_auth_method": "none"}
    with oauth_world(test_db, tmp_path, dcr_rate_limit="2/minute",
                     trusted_proxies=",".join(trusted)) as world:
        def register(xff: str) -> int:
            return httpx.post(f"{world.url}/register", json=body, timeout=30,
                              headers={"X-Forwarded-For": xff}).status_code

        # The client rewrites the leftmost entries at will: still one client, one bucket.
        statuses = [register(f"{i}.{i}.{i}.{i}, 203.0.113.1") for i in (1, 2, 3)]
        assert statuses == [201, 201, 429]
        other = register("9.9.9.9, 203.0.113.2")
        # Behind a trusted proxy the rightmost untrusted hop is a different client; with no
        # trusted proxy every request is the same peer (127.0.0.1), whatever it claims.
        assert other == (201 if trusted else 429)
