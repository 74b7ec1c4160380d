"""The admin API for keys, members, invitations and sessions (issue 12, item 4), over a real
server and a real SMTP server.

Everything the console's key and member pages do for owners and admins is an endpoint under
``/api/v1/``, for an owner's or admin's API key only (a technician's key and any OAuth token are
refused), with ``ai:write`` to change; the same services decide, so the entries have the shape
the console's have. A key mints keys on behalf of its creator and never with a scope it does
not hold itself. Another tenant's key sees and touches nothing here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from breeze_mcp.auth.accounts import create_tenant, create_user
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.db import Database
from tests.oauth_support import PASSWORD, OAuthWorld, connect, module_world
from tests.support import ProvisionedDatabase, superuser_sql
from tests.test_console import csrf, entries, last_id, signed_in
from tests.test_members import address, link, owner_of, person, role_of, run_db, tool, user_id
from tests.test_signup import Inbox, inbox  # noqa: F401 - the SMTP server fixture


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory,
          inbox: tuple[Inbox, int]) -> Iterator[OAuthWorld]:  # noqa: F811 - the fixture
    yield from module_world(test_db, tmp_path_factory, smtp_host="127.0.0.1",
                            smtp_port=inbox[1], smtp_starttls=False)


def api(world: OAuthWorld, key: str, method: str, path: str,
        body: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{world.url}/api/v1{path}", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {key}"}, **kwargs)


def key_for(world: OAuthWorld, email: str, scopes: str, rate_limit: str | None = None) -> str:
    async def make(db: Database) -> str:
        _, key = await create_api_key(db, world.tenant, name=f"for {email}", scopes=scopes,
                                      creator_email=email, rate_limit=rate_limit)
        return key

    return str(run_db(world, make))


#: Every endpoint of this module, with a body where it takes one (ids need not exist: the
#: credential is judged first).
ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/keys", None), ("POST", "/keys", {"name": "x", "scopes": ["ai:read"]}),
    ("DELETE", f"/keys/{uuid.uuid4()}", None), ("GET", "/members", None),
    ("GET", "/members/invitations", None),
    ("POST", "/members/invitations", {"email": "x@example.com", "role": "readonly"}),
    ("DELETE", f"/members/invitations/{uuid.uuid4()}", None),
    ("PATCH", f"/members/{uuid.uuid4()}", {"role": "readonly"}),
    ("POST", f"/members/{uuid.uuid4()}/suspend", None),
    ("POST", f"/members/{uuid.uuid4()}/resume", None),
    ("DELETE", f"/members/{uuid.uuid4()}", None),
    ("GET", f"/members/{uuid.uuid4()}/sessions", None),
    ("DELETE", f"/members/{uuid.uuid4()}/sessions", None),
]


@pytest.mark.req("ADMIN-API-PEOPLE", "CONSOLE-KEYS")
def test_keys_over_the_api(world: OAuthWorld) -> None:
    owner_id = user_id(world, owner_of(world))
    listed = api(world, world.admin_key, "GET", "/keys")
    assert listed.status_code == 200
    [admin] = [k for k in listed.json()["api_keys"] if k["name"] == "admin"]
    assert (admin["created_by_email"], admin["status"]) == (owner_of(world), "active")
    name = f"script-{uuid.uuid4().hex[:6]}"
    made = api(world, world.admin_key, "POST", "/keys",
               {"name": name, "scopes": ["ai:read"], "expires_in_days": 7})
    assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
    key, info = made.json()["key"], made.json()["api_key"]
    assert info["created_by"] == owner_id and info["scopes"] == ["ai:read"]
    assert info["expires_at"] is not None and key.startswith("bzk_")
    assert tool(world, key).status_code == 200
    # The calling key holds ai:read and ai:write: it cannot mint ai:execute, though its
    # creator (an owner) could.
    r = api(world, world.admin_key, "POST", "/keys", {"name": "up", "scopes": ["ai:execute"]})
    assert r.status_code == 403 and "a scope it does not hold" in r.json()["message"]
    bodies: list[tuple[Any, str]] = [
        ("not json", "invalid_json"), ([], "invalid_json"),
        ({"name": 7, "scopes": ["ai:read"]}, "invalid_request"),
        ({"name": "x", "scopes": ["ai:read"], "expires_in_days": True}, "invalid_request"),
        ({"name": "x", "scopes": ["*"]}, "invalid_request"),
        ({"name": "x"}, "invalid_request"),
        ({"name": "x", "scopes": ["ai:read"], "rate_limit": "lots"}, "invalid_request"),
    ]
    for body, code in bodies:
        r = httpx.post(f"{world.url}/api/v1/keys", timeout=30,
                       headers={"Authorization": f"Bearer {world.admin_key}",
                                "Content-Type": "application/json"},
                       content=body if isinstance(body, str) else json.dumps(body))
        assert (r.status_code, r.json()["error"]) == (400, code), (body, r.text)
    gone = api(world, world.admin_key, "DELETE", f"/keys/{info['id']}")
    assert gone.json() == {"revoked": info["id"], "already_revoked": False}
    assert tool(world, key).status_code == 401
    again = api(world, world.admin_key, "DELETE", f"/keys/{info['id']}")
    assert again.json()["already_revoked"] is True
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        assert api(world, world.admin_key, "DELETE", f"/keys/{missing}").status_code == 404


@pytest.mark.req("ADMIN-API-PEOPLE", "CONSOLE-KEYS")
def test_key_creation_is_one_entry_shape_through_the_console_and_the_api(
    world: OAuthWorld,
) -> None:
    everything = key_for(world, owner_of(world), "ai:read,ai:write,ai:execute")
    browser = signed_in(world, owner_of(world))
    try:
        since = last_id(world)
        r = browser.http.post("/console/keys", data={
            "csrf_token": csrf(browser, "/console/keys"), "name": "same", "scope": "ai:read",
            "expires_in_days": "3"})
        assert r.status_code == 201
        r = api(world, everything, "POST", "/keys",
                {"name": "same", "scopes": ["ai:read"], "expires_in_days": 3})
        assert r.status_code == 200
    finally:
        browser.close()
    console, rest = entries(world, since, action="api_key.created")
    assert (console["auth_path"], rest["auth_path"]) == ("session", "api_key")
    per_request = {"id", "occurred_at", "request_id", "duration_ms", "user_agent"}
    names_the_door = {"auth_path", "actor_type", "actor_id", "credential_id", "client_id"}
    for entry in (console, rest):
        entry["parameters"].pop("key_id")
        for field in per_request | names_the_door:
            entry.pop(field)
    assert console == rest


@pytest.mark.req("ADMIN-API-PEOPLE", "MEMBER-INVITE")
def test_members_and_invitations_over_the_api(
    world: OAuthWorld, inbox: tuple[Inbox, int],  # noqa: F811
) -> None:
    people = api(world, world.admin_key, "GET", "/members").json()["members"]
    reader = next(m for m in people if m["email"] == world.reader_email)
    assert (reader["role"], reader["status"], reader["mfa"]) == ("readonly", "active", False)
    email = address("api")
    since = last_id(world)
    r = api(world, world.admin_key, "POST", "/members/invitations",
            {"email": email, "role": "technician"})
    assert r.status_code == 200 and r.json()["mail"] == "queued", r.text
    invitation = r.json()["invitation"]
    assert (invitation["email"], invitation["role"]) == (email, "technician")
    token = link(inbox[0], email)
    pending = api(world, world.admin_key, "GET", "/members/invitations").json()
    assert invitation["id"] in {i["id"] for i in pending["invitations"]}
    r = api(world, world.admin_key, "POST", "/members/invitations",
            {"email": world.reader_email, "role": "admin"})
    assert (r.status_code, r.json()["error"]) == (409, "conflict")
    assert api(world, world.admin_key, "DELETE",
               f"/members/invitations/{invitation['id']}").status_code == 200
    assert httpx.get(f"{world.url}/invite?token={token}", timeout=30).status_code == 410
    assert api(world, world.admin_key, "DELETE",
               f"/members/invitations/{invitation['id']}").status_code == 404
    [invited] = entries(world, since, action="member.invited", decision="allowed")
    assert (invited["auth_path"], invited["actor_type"]) == ("api_key", "api_key")
    assert invited["acting_user_id"] == uuid.UUID(user_id(world, owner_of(world)))


@pytest.mark.req("ADMIN-API-PEOPLE", "HUMAN-CUT-ACCESS")
def test_role_suspension_sessions_and_removal_over_the_api(world: OAuthWorld) -> None:
    tech = person(world, "technician", scopes="ai:read,ai:write")
    try:
        target = user_id(world, tech.email)
        alert = {"alert_id": str(world.owner_sql("SELECT id FROM alerts LIMIT 1")[0][0]),
                 "action": "acknowledge"}
        r = api(world, world.admin_key, "PATCH", f"/members/{target}", {"role": "readonly"})
        assert r.json() == {"user_id": target, "from": "technician", "role": "readonly"}
        assert tool(world, tech.key, "manage_alert", alert).status_code == 403
        sessions = api(world, world.admin_key, "GET", f"/members/{target}/sessions").json()
        assert len(sessions["sessions"]) == 1
        assert sessions["sessions"][0]["client_ip"] == "127.0.0.1"
        r = api(world, world.admin_key, "DELETE", f"/members/{target}/sessions")
        assert r.json()["sessions_ended"] == 1 and not tech.signed_in()
        assert tool(world, tech.key).status_code == 200  # signing out leaves keys alone
        r = api(world, world.admin_key, "POST", f"/members/{target}/suspend")
        assert r.json()["suspended"] is True and r.json()["grants_revoked"] == 1
        assert tool(world, tech.key).status_code == 401
        listed = api(world, world.admin_key, "GET", "/members").json()["members"]
        mine = next(m for m in listed if m["email"] == tech.email)
        assert mine["status"] == "suspended" and mine["suspended_by_this_organization"]
        assert api(world, world.admin_key, "POST",
                   f"/members/{target}/resume").json()["suspended"] is False
        assert tool(world, tech.key).status_code == 200
        r = api(world, world.admin_key, "DELETE", f"/members/{target}")
        assert r.json()["removed"] is True and role_of(world, tech.email) is None
        assert tool(world, tech.key).status_code == 401
        since = last_id(world)
        for method, path in (("DELETE", f"/members/{target}"),
                             ("GET", f"/members/{target}/sessions"),
                             ("PATCH", "/members/not-a-uuid"),
                             ("DELETE", "/members/invitations/not-a-uuid"),
                             ("DELETE", "/keys/not-a-uuid")):
            r = api(world, world.admin_key, method, path, {"role": "admin"})
            assert r.status_code == 404, (method, path)
        assert [(e["action"], e["deny_reason"]) for e in entries(world, since)] == [
            ("member.removed", "not_found"), ("admin.list_member_sessions", "not_found"),
            ("member.role_changed", "not_found"), ("member.invitation_revoked", "not_found"),
            ("api_key.revoked", "not_found")]
        me = user_id(world, owner_of(world))
        r = api(world, world.admin_key, "PATCH", f"/members/{me}", {"role": "admin"})
        assert (r.status_code, r.json()["error"]) == (409, "last_owner")
    finally:
        tech.close()


@pytest.mark.req("ADMIN-API-PEOPLE")
def test_only_owners_and_admins_keys_never_an_oauth_token(world: OAuthWorld) -> None:
    technician = key_for(world, world.tech_email, "ai:read,ai:write")
    _, body = connect(world, owner_of(world), scopes=["ai:read", "ai:write"])
    reads_only = key_for(world, owner_of(world), "ai:read")
    reader = user_id(world, world.reader_email)
    since = last_id(world)
    for method, path, payload in ENDPOINTS:
        r = api(world, technician, method, path, payload)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path)
        r = api(world, body["access_token"], method, path, payload)
        assert r.status_code == 403 and "API key" in r.json()["message"], (method, path)
        r = httpx.request(method, f"{world.url}/api/v1{path}", json=payload, timeout=30)
        assert r.status_code == 401 and "resource_metadata=" in r.headers["www-authenticate"]
        r = api(world, reads_only, method, path, payload)
        if method == "GET":
            assert r.status_code in (200, 404), (method, path)
        else:
            assert (r.status_code, r.json()["required_scope"]) == (403, "ai:write"), path
    refused: dict[str, int] = {}
    for e in entries(world, since, decision="denied"):
        if e["action"] != "auth.bearer_failed":
            refused[e["deny_reason"]] = refused.get(e["deny_reason"], 0) + 1
    writes = sum(m != "GET" for m, _, _ in ENDPOINTS)
    # Every refusal is audited; the one GET past the gate asked for an unknown member.
    # The technician's key for its creator's role, the OAuth token for what it is.
    assert refused == {"role": len(ENDPOINTS), "forbidden": len(ENDPOINTS),
                       "insufficient_scope": writes, "not_found": 1}
    assert role_of(world, world.reader_email) == "readonly"
    assert superuser_sql(world.test_db, "SELECT disabled_at FROM users WHERE id = :u",
                         u=reader)[0][0] is None


@pytest.mark.req("ADMIN-API-PEOPLE")
def test_an_admins_key_does_not_touch_owners(world: OAuthWorld) -> None:
    admin = person(world, "admin", scopes="ai:read,ai:write")
    try:
        owner = user_id(world, owner_of(world))
        for method, path, body in (("PATCH", f"/members/{owner}", {"role": "admin"}),
                                   ("POST", f"/members/{owner}/suspend", None),
                                   ("DELETE", f"/members/{owner}", None),
                                   ("DELETE", f"/members/{owner}/sessions", None),
                                   ("POST", "/members/invitations",
                                    {"email": address(), "role": "owner"})):
            r = api(world, admin.key, method, path, body)
            assert (r.status_code, r.json()["error"]) == (403, "forbidden"), (method, path)
        assert role_of(world, owner_of(world)) == "owner"
        # An admin's key sees every key of the tenant, the owner's included.
        names = {k["name"] for k in api(world, admin.key, "GET", "/keys").json()["api_keys"]}
        assert "admin" in names
    finally:
        admin.close()


@pytest.mark.req("ADMIN-API-PEOPLE", "SEED-KEY-TENANT")
def test_another_tenants_owner_sees_and_touches_nothing_here(world: OAuthWorld) -> None:
    tag = uuid.uuid4().hex[:6]

    async def other(db: Database) -> str:
        tenant = await create_tenant(db, f"Rival {tag}", slug=f"rival-{tag}")
        await create_user(db, tenant, email=f"rival-{tag}@example.com", password=PASSWORD,
                          role="owner")
        _, key = await create_api_key(db, tenant, name="rival", scopes="ai:read,ai:write")
        return key

    rival = run_db(world, other)
    ours = api(world, world.admin_key, "POST", "/keys",
               {"name": f"ours-{tag}", "scopes": ["ai:read"]}).json()
    invitation = api(world, world.admin_key, "POST", "/members/invitations",
                     {"email": address("ours"), "role": "readonly"}).json()["invitation"]
    reader = user_id(world, world.reader_email)
    members = api(world, rival, "GET", "/members").json()["members"]
    assert [m["email"] for m in members] == [f"rival-{tag}@example.com"]
    assert {k["name"] for k in api(world, rival, "GET", "/keys").json()["api_keys"]} == {
        "rival"}
    assert api(world, rival, "GET", "/members/invitations").json() == {"invitations": []}
    for method, path, body in (("DELETE", f"/keys/{ours['api_key']['id']}", None),
                               ("DELETE", f"/members/invitations/{invitation['id']}", None),
                               ("PATCH", f"/members/{reader}", {"role": "admin"}),
                               ("POST", f"/members/{reader}/suspend", None),
                               ("DELETE", f"/members/{reader}", None),
                               ("GET", f"/members/{reader}/sessions", None),
                               ("DELETE", f"/members/{reader}/sessions", None)):
        r = api(world, rival, method, path, body)
        assert r.status_code == 404, (method, path, r.text)
    assert tool(world, ours["key"]).status_code == 200
    assert role_of(world, world.reader_email) == "readonly"
    pending = api(world, world.admin_key, "GET", "/members/invitations").json()
    assert invitation["id"] in {i["id"] for i in pending["invitations"]}


@pytest.mark.req("ADMIN-API-PEOPLE")
def test_openapi_lists_the_endpoints_with_their_scopes(world: OAuthWorld) -> None:
    doc = httpx.get(f"{world.url}/api/v1/openapi.json", timeout=30).json()
    for method, path, body in ENDPOINTS:
        template = "/api/v1" + "/".join(
            "{" + {"keys": "key_id", "invitations": "invitation_id"}.get(prev, "user_id") + "}"
            if _is_uuid(part) else part
            for prev, part in zip(["", *path.split("/")], path.split("/"), strict=False))
        operation = doc["paths"][template][method.lower()]
        scope = "ai:read" if method == "GET" else "ai:write"
        assert operation["x-required-scope"] == scope, template
        assert operation["security"] == [{"bearer": [scope]}]
        assert operation["x-required-role"] == ["owner", "admin"]
        assert ("requestBody" in operation) == (body is not None), template
    assert doc["paths"]["/api/v1/keys"]["post"]["operationId"] == "create_api_key"


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


HOSTILE_BODIES: list[bytes] = [
    b"\xff\xfe\x00", b"[" * 100_000, b'{"name": "\\u0000", "scopes": ["ai:read"]}',
    b'{"name": "\\ud800", "scopes": ["ai:read"]}', b'{"scopes": [[[]]], "name": {}}',
    b'{"email": "a\\u0000b@example.com", "role": "admin"}',
    b'{"email": "\\udfff@example.com", "role": "admin"}',
    b'{"email": "' + b"x" * 70_000 + b'@example.com", "role": "admin"}',
    b'{"role": "\\u0000"}', b'{"role": null}', b'{"expires_in_days": 1e400, "name": "x"}',
    b'{"name": "x", "scopes": ["ai:read"], "expires_in_days": 100000000000000000000000}',
    b'{"name": "x", "scopes": ["ai:read"], "rate_limit": "1/minute\\u0000"}',
    b'{"name": "x", "scopes": "ai:read,\\ud800"}', b"null", b'"text"', b"",
]


@pytest.mark.req("ADMIN-API-PEOPLE", "HARD-NO-5XX")
def test_hostile_bodies_and_ids_never_5xx(world: OAuthWorld) -> None:
    key = key_for(world, owner_of(world), "ai:read,ai:write", rate_limit="1000/minute")
    headers = {"Authorization": f"Bearer {key}",
               "Content-Type": "application/json"}
    for method, path, _ in ENDPOINTS:
        for body in HOSTILE_BODIES if method in ("POST", "PATCH") else [b""]:
            r = httpx.request(method, f"{world.url}/api/v1{path}", content=body,
                              headers=headers, timeout=30)
            assert r.status_code < 500, (method, path, body[:40], r.text)
            assert r.status_code < 300 or r.json()["error"], (method, path, body[:40], r.text)
    for junk in ("%00", "%ED%A0%80", "x" * 5000, "..%2F..%2Fkeys", "%FF"):
        for method, path in (("DELETE", f"/keys/{junk}"), ("PATCH", f"/members/{junk}"),
                             ("DELETE", f"/members/invitations/{junk}"),
                             ("GET", f"/members/{junk}/sessions")):
            r = httpx.request(method, f"{world.url}/api/v1{path}", headers=headers,
                              json={"role": "admin"}, timeout=30)
            assert r.status_code in (404, 405), (method, path, r.text)
        r = httpx.get(f"{world.url}/invite?token={junk}", timeout=30)
        assert r.status_code == 400, junk


@pytest.mark.req("AUDIT-ONE-REFUSAL", "AUDIT-REDACT", "ADMIN-API-PEOPLE", "ADMIN-API-APPS")
def test_a_refusal_is_written_one_way_whichever_endpoint_refused_it(world: OAuthWorld) -> None:
    """A malformed request is denied/error/invalid_request with what was wrong, at the people
    endpoints as at the apps endpoints and a tool call; a refusal for the caller's role is
    denied/blocked/role with no error, at the admin API's gate as at a service's check."""
    client_id, _ = connect(world, owner_of(world), scopes=["ai:read"])
    reader = user_id(world, world.reader_email)
    since = last_id(world)
    answered: list[str] = []
    for method, path, body in (
            ("PATCH", f"/members/{reader}", {"role": "superuser"}),
            ("POST", "/keys", {"name": "bad", "scopes": ["ai:admin"]}),
            ("POST", "/members/invitations", {"email": "not-an-address", "role": "readonly"}),
            ("POST", f"/oauth/clients/{client_id}/block", {"days": 0})):
        r = api(world, world.admin_key, method, path, body)
        assert r.status_code == 400, (path, r.text)
        answered.append(r.json()["message"])
    r = httpx.post(f"{world.url}/mcp", timeout=30, content=json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [1, 2]}), headers={
            "Authorization": f"Bearer {world.admin_key}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-06-18"})
    answered.append(r.json()["error"]["message"])
    r = httpx.post(f"{world.url}/api/v1/keys", content=b"not json", timeout=30, headers={
        "Authorization": f"Bearer {world.admin_key}", "Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_json")  # the wire's own word
    answered.append(r.json()["message"])
    malformed = entries(world, since)
    assert [e["action"] for e in malformed] == [
        "member.role_changed", "api_key.created", "member.invited", "oauth.client_blocked",
        "tools/call", "api_key.created"]
    assert [(e["decision"], e["outcome"], e["deny_reason"]) for e in malformed] == [
        ("denied", "error", "invalid_request")] * 6
    assert [e["error"] for e in malformed] == answered

    # A message quoting what the caller sent is masked like the parameters are.
    secret = "bzk_" + "0123456789abcdef" * 2
    since = last_id(world)
    r = api(world, world.admin_key, "PATCH", f"/members/{reader}", {"role": secret})
    assert r.status_code == 400 and secret in r.json()["message"]  # the caller's own answer
    [quoted] = entries(world, since)
    assert secret not in quoted["error"] and "[redacted]" in quoted["error"]
    assert secret not in json.dumps(quoted["parameters"])

    # Not there (or no such id could be): denied, blocked, not_found, saying what.
    since = last_id(world)
    answered = []
    for method, path in (("DELETE", "/keys/not-a-uuid"), ("PATCH", f"/members/{uuid.uuid4()}"),
                         ("DELETE", "/oauth/grants/not-a-uuid"),
                         ("POST", "/oauth/clients/%01/block"),
                         ("DELETE", "/oauth/clients/%01/block")):
        r = api(world, world.admin_key, method, path, {"role": "admin", "days": 1})
        assert (r.status_code, r.json()["error"]) == (404, "not_found"), (path, r.text)
        answered.append(r.json()["message"])
    missing = entries(world, since)
    assert [e["action"] for e in missing] == [
        "api_key.revoked", "member.role_changed", "oauth.grant_revoked", "oauth.client_blocked",
        "oauth.client_unblocked"]
    assert [(e["decision"], e["outcome"], e["deny_reason"]) for e in missing] == [
        ("denied", "blocked", "not_found")] * 5
    assert [e["error"] for e in missing] == answered

    technician = key_for(world, world.tech_email, "ai:read,ai:write")
    admin = person(world, "admin", scopes="ai:read,ai:write")
    reader_browser = signed_in(world, world.reader_email)
    try:
        since = last_id(world)
        r = api(world, technician, "GET", "/members")  # the admin API's gate
        assert (r.status_code, r.json()["error"]) == (403, "forbidden")
        r = api(world, admin.key, "PATCH", f"/members/{user_id(world, owner_of(world))}",
                {"role": "admin"})  # the people service's check
        assert (r.status_code, r.json()["error"]) == (403, "forbidden")
        r = reader_browser.http.post("/console/keys", data={  # the keys service's, in the console
            "csrf_token": csrf(reader_browser, "/console/keys"), "name": "more",
            "scope": ["ai:read", "ai:write"]})
        assert r.status_code == 403
    finally:
        reader_browser.close()
        admin.close()
    refused = entries(world, since)
    assert [(e["action"], e["decision"], e["outcome"], e["deny_reason"], e["error"])
            for e in refused] == [
        ("admin.list_members", "denied", "blocked", "role", None),
        ("member.role_changed", "denied", "blocked", "role", None),
        ("api_key.created", "denied", "blocked", "role", None)]
