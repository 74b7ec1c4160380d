"""Revocation is effective on the very next request, on every instance (issue 12, item 4).

Two server instances share one database, as behind a load balancer. What one instance
revokes — an OAuth grant through the admin API, a web session by signing out everywhere —
the other refuses on the next request: no instance keeps a credential in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from breeze_mcp.app import create_app
from tests.oauth_support import ACCEPT, OAuthWorld, connect, module_world
from tests.support import LiveServer, ProvisionedDatabase
from tests.test_console import csrf, signed_in


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


@pytest.fixture(scope="module")
def second(world: OAuthWorld) -> Iterator[str]:
    """Another instance of the same service (same settings, same database)."""
    with LiveServer(create_app(world.settings, world.test_db.runtime_url)) as server:
        yield server.url


def _public_host(world: OAuthWorld) -> str:
    """The Host a load balancer passes to every instance: the public URL's."""
    return world.url.split("://", 1)[1]


def _tools(world: OAuthWorld, url: str, token: str) -> int:
    return httpx.post(f"{url}/mcp", timeout=30, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={
        "Authorization": f"Bearer {token}", "Accept": ACCEPT, "Host": _public_host(world),
        "MCP-Protocol-Version": "2025-06-18"}).status_code


@pytest.mark.req("ADMIN-REVOKE-EVERY-INSTANCE")
def test_a_grant_revoked_on_one_instance_is_refused_by_the_other(world: OAuthWorld,
                                                                 second: str) -> None:
    client_id, body = connect(world, world.tech_email, scopes=["ai:read"])
    token = body["access_token"]
    assert _tools(world, second, token) == 200  # both instances know it
    assert _tools(world, world.url, token) == 200
    grants = httpx.get(f"{world.url}/api/v1/oauth/grants", timeout=30,
                       headers={"Authorization": f"Bearer {world.admin_key}"}).json()["grants"]
    [grant] = [g for g in grants if g["client_id"] == client_id]
    r = httpx.delete(f"{world.url}/api/v1/oauth/grants/{grant['id']}", timeout=30,
                     headers={"Authorization": f"Bearer {world.admin_key}"})
    assert r.status_code == 200, r.text
    assert _tools(world, second, token) == 401


@pytest.mark.req("ADMIN-REVOKE-EVERY-INSTANCE", "HUMAN-SESSIONS")
def test_signing_out_everywhere_on_one_instance_ends_the_session_on_the_other(
    world: OAuthWorld, second: str,
) -> None:
    agent = signed_in(world, world.tech_email)
    try:
        cookies = dict(agent.http.cookies)
        elsewhere = httpx.Client(base_url=second, cookies=cookies, timeout=30,
                                 headers={"Host": _public_host(world)})
        try:
            assert elsewhere.get("/console/devices").status_code == 200
            r = agent.http.post("/account/sessions/end-all",
                                data={"csrf_token": csrf(agent, "/account")})
            assert r.status_code in (200, 303), r.text
            assert elsewhere.get("/console/devices").status_code == 303  # to sign-in
        finally:
            elsewhere.close()
    finally:
        agent.close()
