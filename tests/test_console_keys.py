"""API keys in the web console (issue 12, item 3), over a real server.

Every member creates keys of their own, with scopes their role allows (the server re-checks
what the checkboxes offer); the secret is on the creating ``POST``'s page only, in a read-only
field with a copy button run by the page's nonce; the key works at once and is refused from
the request after its revocation. Owners and admins see and revoke every key of the tenant,
everyone else only their own. A form without its CSRF token changes nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.oauth_support import HumanAgent, OAuthWorld, module_world
from tests.support import ProvisionedDatabase, superuser_sql
from tests.test_console import csrf, entries, last_id, signed_in


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


def owner_of(world: OAuthWorld) -> str:
    return world.tech_email.replace("tech-", "owner-")


def create(agent: HumanAgent, name: str, *scopes: str, **fields: str) -> httpx.Response:
    return agent.http.post("/console/keys", data={
        "csrf_token": csrf(agent, "/console/keys"), "name": name, "scope": list(scopes),
        **fields})


def secret_of(page: httpx.Response) -> str:
    assert page.status_code == 201, page.text
    match = re.search(r'id="new-key" type="text" readonly value="(bzk_[^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def key_id(world: OAuthWorld, name: str) -> str:
    return str(superuser_sql(world.test_db, "SELECT id FROM api_keys WHERE name = :n",
                             n=name)[0][0])


def call(world: OAuthWorld, key: str, tool: str = "list_devices",
         arguments: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{world.url}/api/v1/tools/{tool}", json=arguments or {}, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})


def revoke(agent: HumanAgent, key: str) -> httpx.Response:
    return agent.http.post(f"/console/keys/{key}/revoke",
                           data={"csrf_token": csrf(agent, "/console/keys")})


@pytest.mark.req("CONSOLE-KEYS")
def test_a_key_made_in_the_console_works_at_once_and_dies_on_revocation(
    world: OAuthWorld,
) -> None:
    agent = signed_in(world, world.tech_email)
    name = f"ci-{uuid.uuid4().hex[:6]}"
    try:
        since = last_id(world)
        page = create(agent, name, "ai:read", "ai:write", expires_in_days="30",
                      rate_limit="100/minute")
        key = secret_of(page)
        assert call(world, key).status_code == 200
        # Tier 2 with ai:write: the key holds what the technician gave it.
        alert = str(world.owner_sql("SELECT id FROM alerts WHERE status = 'open'"
                                    " ORDER BY created_at LIMIT 1")[0][0])
        assert call(world, key, "manage_alert",
                    {"alert_id": alert, "action": "acknowledge"}).status_code == 200
        listed = agent.http.get("/console/keys").text
        kid = key_id(world, name)
        assert name in listed and "ai:read, ai:write" in listed and "active" in listed
        [made] = entries(world, since, action="api_key.created")
        assert (made["auth_path"], made["actor_type"], made["decision"]) == (
            "session", "user", "allowed")
        assert made["tenant_id"] == world.tenant.id
        assert made["parameters"] == {"key_id": kid, "name": name,
                                      "scopes": ["ai:read", "ai:write"],
                                      "expires_in_days": 30, "rate_limit": "100/minute"}
        assert key not in str(made)
        done = revoke(agent, kid)
        assert done.status_code == 303 and done.headers["location"] == "/console/keys?done=revoked"
        assert call(world, key).status_code == 401  # the very next request
        assert "revoked" in agent.http.get("/console/keys?done=revoked").text
        [gone] = entries(world, since, action="api_key.revoked")
        assert gone["parameters"] == {"key_id": kid, "name": name, "already_revoked": False}
        assert gone["auth_path"] == "session"
    finally:
        agent.close()


@pytest.mark.req("CONSOLE-KEYS")
def test_the_key_is_shown_once_on_the_post_page_with_a_copy_button(world: OAuthWorld) -> None:
    agent = signed_in(world, world.tech_email)
    try:
        page = create(agent, f"once-{uuid.uuid4().hex[:6]}", "ai:read")
        key = secret_of(page)
        assert page.headers["cache-control"] == "no-store"
        assert "location" not in page.headers and key not in str(page.url)
        # A copy button run by the page's own nonce; without scripts the field still has it.
        nonce = re.search(r"script-src 'nonce-([^']+)'",
                          page.headers["content-security-policy"])
        assert nonce and f'<script nonce="{nonce.group(1)}">' in page.text
        assert 'id="copy-key" class="secondary" hidden' in page.text
        assert 'readonly value="' + key in page.text
        again = agent.http.get("/console/keys")
        assert again.status_code == 200 and key not in again.text
        assert key[-6:] in again.text  # the display prefix, never the secret
    finally:
        agent.close()


@pytest.mark.req("CONSOLE-KEYS", "KEYS-CREATOR-CEILING")
def test_scopes_beyond_the_role_are_refused_by_the_server(world: OAuthWorld) -> None:
    reader = signed_in(world, world.reader_email)
    try:
        form = reader.http.get("/console/keys").text
        assert re.search(r'value="ai:write" disabled', form)
        assert re.search(r'value="ai:read" checked', form)
        since = last_id(world)
        name = f"too-much-{uuid.uuid4().hex[:6]}"
        r = create(reader, name, "ai:read", "ai:write")
        assert r.status_code == 403 and "cannot give a key ai:write" in r.text
        assert 'role="alert"' in r.text and "bzk_" not in r.text.replace("bzk_…", "")
        assert superuser_sql(world.test_db, "SELECT count(*) FROM api_keys WHERE name = :n",
                             n=name)[0][0] == 0
        [denied] = entries(world, since, action="api_key.created")
        assert (denied["decision"], denied["deny_reason"]) == ("denied", "role")
        for bad, message in ((["ai:admin"], "unknown scope"), ([], "at least one scope")):
            r = reader.http.post("/console/keys", data={
                "csrf_token": csrf(reader, "/console/keys"), "name": name, "scope": bad})
            assert r.status_code == 400 and message in r.text
        r = create(reader, name, "ai:read", expires_in_days="soon")
        assert r.status_code == 400 and "whole number of days" in r.text
        assert call(world, secret_of(create(reader, name, "ai:read"))).status_code == 200
    finally:
        reader.close()


@pytest.mark.req("CONSOLE-KEYS")
def test_members_see_their_own_keys_and_owners_see_all(world: OAuthWorld) -> None:
    owner, tech = signed_in(world, owner_of(world)), signed_in(world, world.tech_email)
    tag = uuid.uuid4().hex[:6]
    try:
        owners_key = secret_of(create(owner, f"owner-{tag}", "ai:read"))
        techs_key = secret_of(create(tech, f"tech-{tag}", "ai:read"))
        mine = tech.http.get("/console/keys").text
        assert f"tech-{tag}" in mine and f"owner-{tag}" not in mine
        assert "Created by" not in mine
        everything = owner.http.get("/console/keys").text
        assert f"tech-{tag}" in everything and f"owner-{tag}" in everything
        assert world.tech_email in everything  # the creator of each key
        # Another's key is not the technician's to revoke: as if it did not exist.
        r = revoke(tech, key_id(world, f"owner-{tag}"))
        assert r.status_code == 404 and "no such API key" in r.text
        assert call(world, owners_key).status_code == 200
        # The owner revokes the technician's key.
        assert revoke(owner, key_id(world, f"tech-{tag}")).status_code == 303
        assert call(world, techs_key).status_code == 401
        r = revoke(owner, key_id(world, f"tech-{tag}"))  # again: nothing changes
        assert r.headers["location"] == "/console/keys?done=already_revoked"
    finally:
        owner.close()
        tech.close()


@pytest.mark.req("CONSOLE-KEYS", "HARD-CSRF-BOUND")
def test_forms_without_their_csrf_token_change_nothing(world: OAuthWorld) -> None:
    agent = signed_in(world, world.tech_email)
    name = f"kept-{uuid.uuid4().hex[:6]}"
    try:
        key = secret_of(create(agent, name, "ai:read"))
        kid = key_id(world, name)
        for data in ({"other": "1"}, {"csrf_token": "0" * 64}):
            r = agent.http.post("/console/keys", data={**data, "name": "forged",
                                                       "scope": "ai:read"})
            assert r.status_code == 403
            r = agent.http.post(f"/console/keys/{kid}/revoke", data=data)
            assert r.status_code == 403
        cross = agent.http.post(f"/console/keys/{kid}/revoke", headers={
            "Origin": "https://attacker.example"},
            data={"csrf_token": csrf(agent, "/console/keys")})
        assert cross.status_code == 403
        assert call(world, key).status_code == 200
        assert superuser_sql(world.test_db, "SELECT count(*) FROM api_keys WHERE name ="
                             " 'forged'")[0][0] == 0
        signed_out = httpx.get(f"{world.url}/console/keys", follow_redirects=False)
        assert signed_out.status_code == 303
        assert signed_out.headers["location"] == "/login?next=/console/keys"
    finally:
        agent.close()
