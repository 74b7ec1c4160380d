"""Trusted client IP: a table of cases, then the resolved address in a real audit entry."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import sqlalchemy as sa

from breeze_mcp.app import create_app
from breeze_mcp.auth.accounts import create_tenant, create_user
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.auth.client_ip import parse_networks, rate_limit_key, resolve_client_ip
from breeze_mcp.config import load_settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.tools.demo import seed_demo_data
from tests.support import LiveServer, ProvisionedDatabase, free_port

PROXIES = parse_networks(["10.0.0.0/8", "2001:db8::/32"])


XFF, FWD = "x-forwarded-for", "forwarded"


@pytest.mark.req("CLIENT-IP")
@pytest.mark.parametrize(
    ("peer", "header", "values", "trusted", "expected"),
    [
        # No trusted proxies: the peer is the client whatever the headers say.
        ("203.0.113.5", XFF, ["1.2.3.4"], (), "203.0.113.5"),
        # Peer not trusted: headers ignored even when proxies are configured.
        ("198.51.100.7", XFF, ["1.2.3.4"], PROXIES, "198.51.100.7"),
        # Trusted peer: the rightmost untrusted hop, not the client-written leftmost.
        ("10.0.0.2", XFF, ["6.6.6.6, 203.0.113.9"], PROXIES, "203.0.113.9"),
        ("10.0.0.2", XFF, ["6.6.6.6, 203.0.113.9, 10.1.1.1"], PROXIES, "203.0.113.9"),
        # Several XFF headers are one list, in order.
        ("10.0.0.2", XFF, ["6.6.6.6", "203.0.113.9, 10.1.1.1"], PROXIES, "203.0.113.9"),
        # Malformed hop: the walk stops at the last good hop.
        ("10.0.0.2", XFF, ["203.0.113.9, garbage, 10.1.1.1"], PROXIES, "10.1.1.1"),
        ("10.0.0.2", XFF, ["garbage"], PROXIES, "10.0.0.2"),
        # Every hop trusted: the leftmost trusted one.
        ("10.0.0.2", XFF, ["10.9.9.9, 10.1.1.1"], PROXIES, "10.9.9.9"),
        # Trusted peer, no header: the peer.
        ("10.0.0.2", XFF, [], PROXIES, "10.0.0.2"),
        # Ports and brackets.
        ("10.0.0.2", XFF, ["203.0.113.9:5555"], PROXIES, "203.0.113.9"),
        ("10.0.0.2", XFF, ["[2001:db9::1]:443"], PROXIES, "2001:db9::1"),
        # RFC 7239 Forwarded, when the proxies are configured to write it.
        ("10.0.0.2", FWD, ['for=6.6.6.6, for="[2001:db9::7]";proto=https'], PROXIES,
         "2001:db9::7"),
        ("10.0.0.2", FWD, ["for=203.0.113.1;by=10.0.0.2, for=10.4.4.4"], PROXIES,
         "203.0.113.1"),
        ("10.0.0.2", FWD, ["for=unknown"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", FWD, ["proto=https"], PROXIES, "10.0.0.2"),
        # IPv4-mapped peers are IPv4.
        ("::ffff:10.0.0.2", XFF, ["203.0.113.9"], PROXIES, "203.0.113.9"),
        ("2001:db8::5", XFF, ["203.0.113.9"], PROXIES, "203.0.113.9"),
        # An IPv6 zone names the proxy's interface; the address is stored without it.
        ("10.0.0.2", XFF, ["fe80::1%eth0"], PROXIES, "fe80::1"),
        ("10.0.0.2", XFF, ["[fe80::1%eth0]:443"], PROXIES, "fe80::1"),
        ("10.0.0.2", FWD, ['for="[fe80::1%25eth0]:443"'], PROXIES, "fe80::1"),
        ("fe80::2%lo", XFF, ["203.0.113.9"], PROXIES, "fe80::2"),
        # Junk is a malformed hop, never an exception and never stored as it came.
        ("10.0.0.2", XFF, ["203.0.113.9\x00"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", XFF, ["fe80::1%\x00"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", XFF, ["203.0.113.9, fe80::1%eth0%eth1"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", XFF, ["\ud800, \x7f, 203.0.113.9"], PROXIES, "203.0.113.9"),
        ("10.0.0.2", XFF, ["1" * 100_000], PROXIES, "10.0.0.2"),
        ("10.0.0.2", XFF, ["2001:db9::" + "1" * 80], PROXIES, "10.0.0.2"),
        ("10.0.0.2", XFF, [",,,,"], PROXIES, "10.0.0.2"),
        ("10.0.0.2", FWD, ['for="', "for=;for=,", "\x00"], PROXIES, "10.0.0.2"),
        # A thousand hops: the rightmost untrusted one, as ever.
        ("10.0.0.2", XFF, [", ".join(f"198.51.100.{i % 250}" for i in range(1000))],
         PROXIES, "198.51.100.249"),
        # An absurdly long all-trusted chain: the walk stops after MAX_HOPS, on a trusted hop,
        # so the client-written far left ("6.6.6.6") is never reached.
        ("10.0.0.2", XFF, ["6.6.6.6, " + ", ".join(["10.7.7.7"] * 999) + ", 10.1.1.1"],
         PROXIES, "10.7.7.7"),
        # A peer that is not an IP address at all (a test client, a socket path): none.
        ("testclient", XFF, ["203.0.113.9"], PROXIES, None),
        (None, XFF, ["203.0.113.9"], PROXIES, None),
    ],
)
def test_resolve_client_ip(peer, header, values, trusted, expected) -> None:
    assert resolve_client_ip(peer, header=header, values=values, trusted=trusted) == expected


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


def _audited_ip(test_db: ProvisionedDatabase, tmp_path, headers: dict[str, str],
                **overrides: str) -> list[str]:
    """One audited REST call through a server built with ``overrides``: the stored IPs."""
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
                             public_url=f"http://127.0.0.1:{port}", **overrides)
    marker = uuid.uuid4().hex
    with LiveServer(create_app(settings, test_db.runtime_url), port=port) as server:
        r = httpx.post(f"{server.url}/api/v1/tools/list_devices", json={"search": marker},
                       headers={"Authorization": f"Bearer {key}", **headers})
        assert r.status_code == 200, r.text
    return _audit_ips(test_db.owner_url, tenant_id, marker)


@pytest.mark.req("CLIENT-IP")
@pytest.mark.parametrize("trusted", ["", "127.0.0.1/32"])
def test_forged_forwarded_for_does_not_reach_the_audit_log(
    test_db: ProvisionedDatabase, tmp_path, trusted: str
) -> None:
    ips = _audited_ip(test_db, tmp_path, {"X-Forwarded-For": "6.6.6.6, 203.0.113.50"},
                      trusted_proxies=trusted)
    # Untrusted peer: the header is ignored. Trusted loopback proxy: the rightmost hop.
    assert ips == (["203.0.113.50"] if trusted else ["127.0.0.1"])


@pytest.mark.req("HARD-FORWARDED-ONE")
@pytest.mark.parametrize(
    ("setting", "headers", "expected"),
    [
        # The proxy writes Forwarded; the client's own X-Forwarded-For is not consulted.
        ("forwarded", {"Forwarded": "for=203.0.113.60", "X-Forwarded-For": "6.6.6.6"},
         "203.0.113.60"),
        ("forwarded", {"X-Forwarded-For": "6.6.6.6"}, "127.0.0.1"),
        # The proxy writes X-Forwarded-For; a Forwarded header is not a fallback.
        ("x-forwarded-for", {"Forwarded": "for=6.6.6.6"}, "127.0.0.1"),
        ("x-forwarded-for", {"X-Forwarded-For": "203.0.113.61", "Forwarded": "for=6.6.6.6"},
         "203.0.113.61"),
    ],
)
def test_one_configured_forwarding_header(
    test_db: ProvisionedDatabase, tmp_path, setting: str, headers: dict[str, str],
    expected: str,
) -> None:
    ips = _audited_ip(test_db, tmp_path, headers, trusted_proxies="127.0.0.1/32",
                      forwarded_header=setting)
    assert ips == [expected]


@pytest.mark.req("CLIENT-IP")
def test_zone_scoped_address_from_a_trusted_proxy_is_audited(
    test_db: ProvisionedDatabase, tmp_path
) -> None:
    # The audit column is inet, which refuses a zone: the call succeeds and the address is
    # stored without it.
    ips = _audited_ip(test_db, tmp_path, {"X-Forwarded-For": "fe80::1%eth0"},
                      trusted_proxies="127.0.0.1/32")
    assert ips == ["fe80::1"]


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
