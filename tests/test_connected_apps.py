"""Connected apps in the console and the admin API (issue 12, items 3 and 4, Connected apps).

Over a real server and PostgreSQL: owners and admins see every OAuth grant of the
organization, everyone else their own; *Disconnect*, *Disconnect this app everywhere* and
*Block this app* end the app's access on its very next request; a block also keeps the app
from being connected (consent and code exchange) until it ends or is lifted. Roles are
enforced by the service (a technician's refused action is a 403, audited), forms without a
CSRF token change nothing, the admin API does the same through the same service with an
owner's key, and one tenant's people see and touch nothing of another's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest

from breeze_mcp.app import create_app
from breeze_mcp.auth import oauth
from breeze_mcp.auth.accounts import Tenant, create_tenant, create_user
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.auth.oauth.blocks import MAX_BLOCK_DAYS, block_end
from breeze_mcp.auth.principal import RequestContext
from breeze_mcp.auth.tokens import digest
from breeze_mcp.db import Database
from tests.oauth_support import (
    PASSWORD,
    REDIRECT,
    HumanAgent,
    OAuthWorld,
    authorize_url,
    code_from,
    exchange,
    mcp_call,
    module_world,
    pkce_pair,
    refresh,
    register,
)
from tests.support import LiveServer, ProvisionedDatabase, superuser_sql, wait_for
from tests.test_console import entries, fields_of, last_id

ALL = "ai:read ai:write ai:execute"
T = TypeVar("T")


def run_db(world: OAuthWorld, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


@dataclass
class Env:
    """The world, its people (one browser each, signed in once: sign-in is rate-limited per
    account) and a second organization with its own owner and key."""

    world: OAuthWorld
    owner_email: str
    admin_email: str
    other: Tenant
    other_owner_email: str
    other_key: str
    agents: dict[str, HumanAgent] = field(default_factory=dict)

    def email(self, who: str) -> str:
        return {"owner": self.owner_email, "admin": self.admin_email,
                "tech": self.world.tech_email, "reader": self.world.reader_email,
                "other": self.other_owner_email}[who]

    def agent(self, who: str) -> HumanAgent:
        if who not in self.agents:
            self.agents[who] = signed_in(HumanAgent(self.world, self.email(who)))
        return self.agents[who]


def signed_in(agent: HumanAgent) -> HumanAgent:
    page = agent.http.get("/login")
    r = agent.http.post("/login", data={**fields_of(page.text), "email": agent.email,
                                        "password": PASSWORD})
    assert r.status_code == 303, r.text
    return agent


def _make_env(world: OAuthWorld) -> Env:
    """An admin beside the world's people, and another organization with an owner and key."""
    tag = uuid.uuid4().hex[:6]

    async def people(db: Database) -> tuple[str, Tenant, str, str]:
        admin = await create_user(db, world.tenant, email=f"admin-{tag}@example.com",
                                  password=PASSWORD, role="admin")
        other = await create_tenant(db, f"Other {tag}", slug=f"other-{tag}")
        other_owner = await create_user(db, other, email=f"other-{tag}@example.com",
                                        password=PASSWORD, role="owner")
        _, key = await create_api_key(db, other, name="other", scopes="ai:read,ai:write",
                                      creator_email=other_owner.email)
        return admin.email, other, other_owner.email, key

    admin_email, other, other_owner, other_key = run_db(world, people)
    owner_email = superuser_sql(
        world.test_db, "SELECT u.email FROM memberships m JOIN users u ON u.id = m.user_id"
        " WHERE m.tenant_id = :t AND m.role = 'owner'", t=world.tenant.id)[0][0]
    return Env(world, owner_email, admin_email, other, other_owner, other_key)


@pytest.fixture(scope="module")
def env(test_db: ProvisionedDatabase,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    for world in module_world(test_db, tmp_path_factory):
        made = _make_env(world)
        try:
            yield made
        finally:
            for agent in made.agents.values():
                agent.close()


@dataclass(frozen=True)
class Conn:
    client_id: str
    access: str
    refresh: str
    grant_id: str


def approve(env: Env, who: str, client_id: str) -> tuple[str, str]:
    """``who`` approves everything offered: (code, verifier)."""
    verifier, challenge = pkce_pair()
    r = env.agent(who).authorize(authorize_url(env.world, client_id, challenge, scope=ALL))
    return code_from(r), verifier


def connect(env: Env, who: str, *, client_id: str | None = None,
            name: str = "Test client") -> Conn:
    client_id = client_id or register(env.world, client_name=name)["client_id"]
    code, verifier = approve(env, who, client_id)
    r = exchange(env.world, client_id, code, verifier)
    assert r.status_code == 200, r.text
    body = r.json()
    grant = superuser_sql(env.world.test_db, "SELECT grant_id FROM oauth_access_tokens"
                          " WHERE digest = :d", d=digest(body["access_token"]))[0][0]
    return Conn(client_id, body["access_token"], body["refresh_token"], str(grant))


def works(env: Env, conn: Conn) -> bool:
    r = mcp_call(env.world, conn.access, "tools/call",
                 {"name": "list_devices", "arguments": {}})
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


def assert_dead(env: Env, conn: Conn) -> None:
    """The client's next MCP call is 401 and its refresh token is invalid_grant."""
    assert not works(env, conn)
    r = refresh(env.world, conn.client_id, conn.refresh)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text


def token(agent: HumanAgent) -> str:
    page = agent.http.get("/console/apps")
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


def post(env: Env, who: str, path: str, **data: str) -> httpx.Response:
    agent = env.agent(who)
    return agent.http.post(path, data={"csrf_token": token(agent), **data})


def blocks_of(env: Env, client_id: str) -> list[Any]:
    return superuser_sql(env.world.test_db, "SELECT * FROM oauth_client_blocks"
                         " WHERE client_id = :c ORDER BY created_at", c=client_id)


def api(env: Env, method: str, path: str, key: str | None = None,
        **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{env.world.url}{path}", timeout=30, headers={
        "Authorization": f"Bearer {key or env.world.admin_key}"}, **kwargs)


def admins_key(env: Env, email: str) -> str:
    async def make(db: Database) -> str:
        _, key = await create_api_key(db, env.world.tenant, name="a key",
                                      scopes="ai:read,ai:write", creator_email=email)
        return key

    return run_db(env.world, make)


def technicians_key(env: Env) -> str:
    """A key whose creator is now a technician (only owners and admins create keys; a key
    follows its creator's role at each request)."""
    email = f"demoted-{uuid.uuid4().hex[:6]}@example.com"
    run_db(env.world, lambda db: create_user(db, env.world.tenant, email=email,
                                             password=PASSWORD, role="admin"))
    key = admins_key(env, email)
    superuser_sql(env.world.test_db, "UPDATE memberships SET role = 'technician' WHERE user_id"
                  " = (SELECT id FROM users WHERE email = :e)", e=email)
    return key


# The page --------------------------------------------------------------------------------------


@pytest.mark.req("CONSOLE-APPS")
def test_owners_see_every_grant_and_members_their_own(env: Env) -> None:
    mine = connect(env, "tech", name="Tech assistant")
    reader = connect(env, "reader", name="Reader assistant")
    admin = connect(env, "admin", name="Admin assistant")
    since = last_id(env.world)
    page = env.agent("owner").http.get("/console/apps")
    assert page.status_code == 200
    for who in ("tech", "reader", "admin"):
        row = re.search(rf"<tr>\s*<td>{who.title()} assistant</td>"
                        r"<td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", page.text)
        assert row, who
        assert row.groups()[:2] == ("127.0.0.1", env.email(who))  # host: the redirect URI's
    assert f"/console/apps/grants/{reader.grant_id}/disconnect" in page.text
    assert "Block this app" in page.text and "Blocked apps" in page.text
    [viewed] = entries(env.world, since, action="console.apps")
    assert viewed["auth_path"] == "session" and viewed["parameters"] == {"everyone": True}

    page = env.agent("tech").http.get("/console/apps")
    assert page.status_code == 200
    assert "Tech assistant" in page.text and f"{mine.grant_id}/disconnect" in page.text
    assert "Reader assistant" not in page.text and admin.grant_id not in page.text
    assert "Block this app" not in page.text and "everywhere" not in page.text
    assert 'scope="col"' in page.text and 'aria-current="page"' in page.text


@pytest.mark.req("CONSOLE-APPS", "SEED-REVOKE-IMMEDIATE")
def test_disconnect_ends_the_apps_access_on_its_next_request(env: Env) -> None:
    mine = connect(env, "tech", name="Disconnected by its person")
    readers = connect(env, "reader", name="Disconnected by the owner")
    assert works(env, mine) and works(env, readers)
    since = last_id(env.world)

    # A technician cannot reach someone else's grant: it is no grant of theirs.
    r = post(env, "tech", f"/console/apps/grants/{readers.grant_id}/disconnect")
    assert r.status_code == 404 and works(env, readers)
    [refused] = entries(env.world, since, action="oauth.grant_revoked")
    assert (refused["decision"], refused["outcome"], refused["deny_reason"],
            refused["auth_path"]) == ("denied", "blocked", "not_found", "session")
    assert refused["parameters"] == {"grant_id": readers.grant_id}

    r = post(env, "tech", f"/console/apps/grants/{mine.grant_id}/disconnect")
    assert r.status_code == 303 and r.headers["location"] == "/console/apps?done=disconnected"
    assert_dead(env, mine)
    r = post(env, "owner", f"/console/apps/grants/{readers.grant_id}/disconnect")
    assert r.status_code == 303
    assert_dead(env, readers)
    page = env.agent("tech").http.get(r.headers["location"])
    assert 'role="status"' in page.text and "Disconnected" in page.text
    revoked = {e["credential_id"]: e for e in entries(env.world, since,
                                                      action="oauth.grant_revoked",
                                                      decision="allowed", outcome="success")}
    assert revoked[mine.grant_id]["parameters"]["reason"] == "disconnected_by_user"
    assert revoked[readers.grant_id]["parameters"]["reason"] == "revoked_by_admin"
    tech_id = superuser_sql(env.world.test_db, "SELECT id FROM users WHERE email = :e",
                            e=env.world.tech_email)[0][0]
    assert (revoked[mine.grant_id]["auth_path"], revoked[mine.grant_id]["actor_id"]) == (
        "session", str(tech_id))
    # Gone from the page; a second disconnect finds nothing.
    assert mine.grant_id not in env.agent("tech").http.get("/console/apps").text
    r = post(env, "tech", f"/console/apps/grants/{mine.grant_id}/disconnect")
    assert r.status_code == 404
    r = post(env, "tech", "/console/apps/grants/not-a-uuid/disconnect")
    assert r.status_code == 404


@pytest.mark.req("CONSOLE-APPS")
def test_disconnect_everywhere_ends_every_grant_of_the_app_in_one_transaction(env: Env) -> None:
    first = connect(env, "tech", name="Everywhere")
    second = connect(env, "admin", client_id=first.client_id)
    unused_code, verifier = approve(env, "reader", first.client_id)  # a grant with only a code
    other = connect(env, "tech", name="Another app")
    page = env.agent("owner").http.get("/console/apps").text
    assert f"/console/apps/clients/{first.client_id}/disconnect" in page

    r = post(env, "owner", f"/console/apps/clients/{first.client_id}/disconnect")
    assert r.status_code == 303 and r.headers["location"] == "/console/apps?done=everywhere"
    assert_dead(env, first)
    assert_dead(env, second)
    r = exchange(env.world, first.client_id, unused_code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert works(env, other)
    rows = superuser_sql(env.world.test_db, "SELECT revoked_at, revoked_reason FROM oauth_grants"
                         " WHERE client_id = :c", c=first.client_id)
    assert len(rows) == 3 and all(r.revoked_reason == "client_revoked_by_admin" for r in rows)
    assert len({r.revoked_at for r in rows}) == 1  # now(): one transaction


@pytest.mark.req("CONSOLE-APPS")
def test_a_technician_is_refused_the_admin_actions_and_it_is_audited(env: Env) -> None:
    mine = connect(env, "tech", name="Technician's own")
    since = last_id(env.world)
    for path, action in (("disconnect", "oauth.grant_revoked"),
                         ("block", "oauth.client_blocked"),
                         ("unblock", "oauth.client_unblocked")):
        r = post(env, "tech", f"/console/apps/clients/{mine.client_id}/{path}", days="7")
        assert r.status_code == 403, (path, r.text)
        assert 'role="alert"' in r.text and "Only owners and admins" in r.text
        [entry] = entries(env.world, since, action=action)
        assert (entry["decision"], entry["outcome"], entry["deny_reason"]) == (
            "denied", "blocked", "role")
        assert entry["auth_path"] == "session" and entry["client_id"] == mine.client_id
        since = entry["id"]
    assert works(env, mine) and blocks_of(env, mine.client_id) == []


@pytest.mark.req("CONSOLE-APPS")
def test_forms_without_the_csrf_token_change_nothing(env: Env) -> None:
    conn = connect(env, "tech", name="Kept")
    owner = env.agent("owner")
    for path in (f"/console/apps/grants/{conn.grant_id}/disconnect",
                 f"/console/apps/clients/{conn.client_id}/disconnect",
                 f"/console/apps/clients/{conn.client_id}/block"):
        for data in ({"days": "7"}, {"days": "7", "csrf_token": "0" * 64}):
            r = owner.http.post(path, data=data)
            assert r.status_code == 403, path
        # Nor from another site, with a valid token.
        r = owner.http.post(path, data={"days": "7", "csrf_token": token(owner)},
                            headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
    assert works(env, conn) and blocks_of(env, conn.client_id) == []


# Blocks ----------------------------------------------------------------------------------------


def consent(env: Env, who: str, client_id: str) -> httpx.Response:
    """What ``who`` meets at /authorize for the client (the consent page, or a refusal)."""
    _, challenge = pkce_pair()
    return env.agent(who).http.get(authorize_url(env.world, client_id, challenge, scope=ALL))


@pytest.mark.req("OAUTH-CLIENT-BLOCK", "CONSOLE-APPS", "SEED-REVOKE-IMMEDIATE")
def test_a_block_revokes_the_app_and_refuses_consent_and_exchange_until_lifted(
        env: Env) -> None:
    world = env.world
    conn = connect(env, "tech", name="Blocked app")
    pending_code, pending_verifier = approve(env, "tech", conn.client_id)  # issued just before
    host = httpx.URL(world.url).netloc.decode()
    with LiveServer(create_app(world.settings, world.test_db.runtime_url)) as second:
        def call_second() -> int:
            return httpx.post(f"{second.url}/mcp", timeout=30, headers={
                "Authorization": f"Bearer {conn.access}", "Host": host,
                "Accept": "application/json", "MCP-Protocol-Version": "2025-06-18"},
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"}).status_code

        assert call_second() == 200
        since = last_id(world)
        r = post(env, "owner", f"/console/apps/clients/{conn.client_id}/block", days="7")
        assert r.status_code == 303 and r.headers["location"] == "/console/apps?done=blocked"
        assert call_second() == 401  # another instance refuses at once
    assert_dead(env, conn)
    r = exchange(world, conn.client_id, pending_code, pending_verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert "blocked" in r.json()["error_description"]

    [blocked] = entries(world, since, action="oauth.client_blocked")
    assert (blocked["decision"], blocked["auth_path"], blocked["client_id"]) == (
        "allowed", "session", conn.client_id)
    assert blocked["parameters"]["days"] == 7 and blocked["parameters"]["grants_revoked"] == 2
    revoked = entries(world, since, action="oauth.grant_revoked")
    assert len(revoked) == 2 and {e["parameters"]["reason"] for e in revoked} == {
        "client_blocked"}

    # Nobody may connect it: the organization is not offered, a forced form is refused.
    page = consent(env, "reader", conn.client_id)
    assert page.status_code == 403 and "Application blocked" in page.text
    assert world.tenant.name in page.text and 'role="alert"' in page.text
    form = env.agent("reader").authorize(authorize_url(world, conn.client_id, pkce_pair()[1]))
    assert form.status_code == 403
    assert superuser_sql(world.test_db, "SELECT count(*) FROM oauth_grants WHERE client_id = :c"
                         " AND revoked_at IS NULL", c=conn.client_id)[0][0] == 0

    # The owner's page shows the block; its Unblock lifts it, and the app may connect again.
    listing = env.agent("owner").http.get("/console/apps").text
    assert "Blocked until" in listing
    assert f"/console/apps/clients/{conn.client_id}/unblock" in listing
    r = post(env, "owner", f"/console/apps/clients/{conn.client_id}/unblock")
    assert r.status_code == 303 and r.headers["location"] == "/console/apps?done=unblocked"
    [lifted] = blocks_of(env, conn.client_id)
    assert lifted.lifted_at is not None and lifted.lifted_by is not None
    again = connect(env, "tech", client_id=conn.client_id)
    assert works(env, again)
    r = post(env, "owner", f"/console/apps/clients/{conn.client_id}/unblock")
    assert r.status_code == 404  # nothing open to lift


@pytest.mark.req("OAUTH-CLIENT-BLOCK")
def test_a_blocked_organization_is_not_offered_beside_the_others(env: Env) -> None:
    """A person in two organizations: the one that blocked the app is left out of the
    consent page's choice, and a form naming it anyway is refused."""
    world = env.world
    email = f"both-{uuid.uuid4().hex[:6]}@example.com"
    run_db(world, lambda db: create_user(db, world.tenant, email=email, password=PASSWORD,
                                         role="technician"))
    superuser_sql(world.test_db, "INSERT INTO memberships (tenant_id, user_id, role)"
                  " SELECT :t, id, 'technician' FROM users WHERE email = :e",
                  t=env.other.id, e=email)
    agent = signed_in(HumanAgent(world, email))
    try:
        client_id = register(world, client_name="Half blocked")["client_id"]
        r = api(env, "POST", f"/api/v1/oauth/clients/{client_id}/block", key=env.other_key,
                json={"days": 1})
        assert r.status_code == 200, r.text
        shown = agent.http.get(authorize_url(world, client_id, pkce_pair()[1]))
        assert shown.status_code == 200 and "scope_choice" in shown.text
        assert f'value="{env.other.id}"' not in shown.text
        assert f'name="tenant_id" value="{world.tenant.id}"' in shown.text
        assert "Not offered: " + env.other.name in shown.text
        forced = {**fields_of(shown.text), "tenant_id": str(env.other.id),
                  "decision": "approve", "scope_choice": "ai:read"}
        r = agent.http.post("/authorize", data=forced)
        assert r.status_code == 403 and "Application blocked" in r.text
        fine = {**forced, "tenant_id": str(world.tenant.id)}
        assert "code=" in agent.http.post("/authorize", data=fine).headers["location"]
    finally:
        agent.close()


@pytest.mark.req("OAUTH-CLIENT-BLOCK")
def test_the_database_refuses_a_grant_or_a_code_of_a_blocked_client(env: Env) -> None:
    """The checks that hold when a block lands between the page and the form, or between a
    consent and its code exchange: create_authorization refuses (audited), and a code whose
    grant a block did not revoke is still not exchanged."""
    world = env.world
    conn = connect(env, "tech", name="Raced")
    code, verifier = approve(env, "tech", conn.client_id)
    # A block written without its revocations (as a consent racing it would leave things).
    superuser_sql(world.test_db, "INSERT INTO oauth_client_blocks (tenant_id, client_id, until)"
                  " VALUES (:t, :c, now() + interval '1 hour')",
                  t=world.tenant.id, c=conn.client_id)
    r = exchange(world, conn.client_id, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    assert "blocked" in r.json()["error_description"]
    since = last_id(world)
    tech = superuser_sql(world.test_db, "SELECT id FROM users WHERE email = :e",
                         e=world.tech_email)[0][0]

    async def consent_anyway(db: Database) -> None:
        client = await oauth.get_client(db, conn.client_id)
        assert client is not None
        await oauth.create_authorization(
            db, world.settings, tenant_id=world.tenant.id, client=client, user_id=tech,
            scopes=["ai:read"], resource=world.mcp_url, redirect_uri=REDIRECT,
            code_challenge=pkce_pair()[1], request=RequestContext(request_id="test"),
            requested_scopes=["ai:read"])

    authorized = superuser_sql(world.test_db, "SELECT last_authorized_at FROM oauth_clients"
                               " WHERE client_id = :c", c=conn.client_id)
    with pytest.raises(oauth.ClientBlocked):
        run_db(world, consent_anyway)
    [refused] = entries(world, since, action="oauth.grant_created")
    assert (refused["decision"], refused["deny_reason"], refused["client_id"]) == (
        "denied", "client_blocked", conn.client_id)
    assert superuser_sql(world.test_db, "SELECT last_authorized_at FROM oauth_clients"
                         " WHERE client_id = :c", c=conn.client_id) == authorized
    # Once it has run out, the app may connect again: nothing to lift.
    superuser_sql(world.test_db, "UPDATE oauth_client_blocks SET created_at = now() -"
                  " interval '2 hours', until = now() - interval '1 second'"
                  " WHERE client_id = :c", c=conn.client_id)
    assert works(env, connect(env, "tech", client_id=conn.client_id))


@pytest.mark.req("OAUTH-CLIENT-BLOCK")
def test_a_consent_waits_for_a_block_being_written_then_sees_it(env: Env) -> None:
    """A consent that starts while a block of its client is being written (not yet
    committed) waits on the client's row, then is refused: it cannot slip a grant past the
    block's revocations."""
    world = env.world
    client_id = register(world, client_name="Raced by a block")["client_id"]
    tech = superuser_sql(world.test_db, "SELECT id FROM users WHERE email = :e",
                         e=world.tech_email)[0][0]

    def consent_waits() -> bool:  # on the lock of the client's row
        return bool(superuser_sql(
            world.test_db, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type ="
            " 'Lock' AND query LIKE '%FROM oauth_clients%FOR NO KEY UPDATE%'")[0][0])

    async def race(db: Database) -> None:
        client = await oauth.get_client(db, client_id)
        assert client is not None
        async with db.tenant(world.tenant.id) as block:
            assert await oauth.blocks.lock_client(block, client_id) is not None
            await oauth.blocks.put_block(block, world.tenant.id, client_id,
                                         dt.datetime.now(dt.UTC) + dt.timedelta(days=1), None)
            consent = asyncio.create_task(oauth.create_authorization(
                db, world.settings, tenant_id=world.tenant.id, client=client, user_id=tech,
                scopes=["ai:read"], resource=world.mcp_url, redirect_uri=REDIRECT,
                code_challenge=pkce_pair()[1], request=RequestContext(request_id="race"),
                requested_scopes=["ai:read"]))
            await asyncio.to_thread(wait_for, consent_waits)
            assert not consent.done()
            await block.finish(None)
        with pytest.raises(oauth.ClientBlocked):
            await consent

    async def go() -> None:
        db = Database(world.test_db.runtime_url, pool_size=2)  # the block's and the consent's
        try:
            await race(db)
        finally:
            await db.dispose()

    asyncio.run(go())
    assert superuser_sql(world.test_db, "SELECT count(*) FROM oauth_grants WHERE client_id = :c",
                         c=client_id)[0][0] == 0


NOW = dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)


@pytest.mark.req("OAUTH-CLIENT-BLOCK")
@pytest.mark.parametrize(("days", "until", "expected"), [
    (1, None, NOW + dt.timedelta(days=1)),
    (MAX_BLOCK_DAYS, None, NOW + dt.timedelta(days=MAX_BLOCK_DAYS)),
    (None, "2030-01-02T12:00:00Z", NOW + dt.timedelta(days=1)),
    (None, "2030-01-01T14:00:00+01:00", NOW + dt.timedelta(hours=1)),
    (None, None, "one of the two"),
    (1, "2030-01-02T12:00:00Z", "one of the two"),
    (0, None, "whole number"),
    (MAX_BLOCK_DAYS + 1, None, "whole number"),
    (True, None, "whole number"),
    ("7", None, "whole number"),
    (1.5, None, "whole number"),
    (None, "2030-01-02T12:00:00", "UTC offset"),
    (None, "tomorrow", "ISO 8601"),
    (None, 1893456000, "ISO 8601"),
    (None, "2029-12-31T12:00:00Z", "in the future"),
    (None, "2030-01-01T12:00:30Z", "in the future"),
    (None, "2031-01-02T12:00:00Z", f"at most {MAX_BLOCK_DAYS} days"),
])
def test_a_block_lasts_a_bounded_time(days: object, until: object,
                                      expected: dt.datetime | str) -> None:
    if isinstance(expected, dt.datetime):
        assert block_end(NOW, days=days, until=until) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            block_end(NOW, days=days, until=until)


# The admin API -------------------------------------------------------------------------------


APP_ENDPOINTS = [("GET", "/api/v1/oauth/clients", "ai:read"),
                 ("GET", "/api/v1/oauth/blocks", "ai:read"),
                 ("POST", "/api/v1/oauth/clients/{client_id}/block", "ai:write"),
                 ("DELETE", "/api/v1/oauth/clients/{client_id}/block", "ai:write")]


@pytest.mark.req("ADMIN-API-APPS", "OAUTH-CLIENT-BLOCK")
def test_an_owners_key_lists_clients_and_blocks_and_unblocks(env: Env) -> None:
    world = env.world
    conn = connect(env, "tech", name="Listed app")
    connect(env, "admin", client_id=conn.client_id)
    r = api(env, "GET", "/api/v1/oauth/clients")
    assert r.status_code == 200
    listed = {c["client_id"]: c for c in r.json()["clients"]}[conn.client_id]
    assert listed == {"client_id": conn.client_id, "client_name": "Listed app",
                      "hosts": ["127.0.0.1"], "live_grants": 2, "people": 2,
                      "last_used_at": listed["last_used_at"], "blocked": False,
                      "blocked_until": None}

    path = f"/api/v1/oauth/clients/{conn.client_id}/block"
    since = last_id(world)
    for body, words in (({}, "one of the two"), ({"days": 0}, "whole number"),
                        ({"days": 3, "until": "2030-01-01T00:00:00Z"}, "one of the two"),
                        ({"until": "2000-01-01T00:00:00Z"}, "in the future")):
        r = api(env, "POST", path, json=body)
        assert r.status_code == 400 and r.json()["error"] == "bad_request", body
        assert words in r.json()["message"]
    r = api(env, "POST", path, content=b"not json")
    assert r.status_code == 400
    refusals = entries(world, since, action="oauth.client_blocked")
    assert len(refusals) == 5 and {e["deny_reason"] for e in refusals} == {"invalid_request"}
    assert works(env, conn)
    r = api(env, "POST", "/api/v1/oauth/clients/bzi_no-such-client/block", json={"days": 1})
    assert r.status_code == 404

    since = last_id(world)
    r = api(env, "POST", path, json={"days": 3})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["revoked"]) == sorted(
        str(g[0]) for g in superuser_sql(world.test_db, "SELECT id FROM oauth_grants"
                                         " WHERE client_id = :c", c=conn.client_id))
    first_end = dt.datetime.fromisoformat(r.json()["blocked_until"])
    assert_dead(env, conn)
    later = (first_end + dt.timedelta(days=10)).isoformat()
    r = api(env, "POST", path, json={"until": later})  # a new end for the open block
    assert r.status_code == 200 and r.json()["revoked"] == []
    assert dt.datetime.fromisoformat(r.json()["blocked_until"]) == \
        dt.datetime.fromisoformat(later)
    [block] = [b for b in api(env, "GET", "/api/v1/oauth/blocks").json()["blocks"]
               if b["client_id"] == conn.client_id]
    assert block["active"] is True
    assert dt.datetime.fromisoformat(block["until"]) == dt.datetime.fromisoformat(later)
    assert block["created_by_email"] == env.owner_email
    listed = {c["client_id"]: c for c in api(env, "GET", "/api/v1/oauth/clients")
              .json()["clients"]}[conn.client_id]
    assert listed["blocked"] is True and listed["live_grants"] == 0
    made = entries(world, since, action="oauth.client_blocked")
    assert [e["parameters"]["replaced_until"] is not None for e in made] == [False, True]
    assert all(e["auth_path"] == "api_key" and e["actor_type"] == "api_key" for e in made)

    r = api(env, "DELETE", path)
    assert r.status_code == 200 and r.json() == {"client_id": conn.client_id, "unblocked": True}
    assert api(env, "DELETE", path).status_code == 404
    assert conn.client_id not in {b["client_id"] for b in api(
        env, "GET", "/api/v1/oauth/blocks").json()["blocks"]}
    ended = api(env, "GET", "/api/v1/oauth/blocks", params={"include_ended": "true"})
    assert [b["active"] for b in ended.json()["blocks"]
            if b["client_id"] == conn.client_id] == [False]
    assert works(env, connect(env, "tech", client_id=conn.client_id))


@pytest.mark.req("ADMIN-API-APPS", "SEED-AUDIT-PARITY")
def test_a_block_has_one_shape_from_the_console_and_the_api(env: Env) -> None:
    by_page = connect(env, "tech", name="Blocked from the page")
    by_api = connect(env, "tech", name="Blocked by a script")
    since = last_id(env.world)
    assert post(env, "owner", f"/console/apps/clients/{by_page.client_id}/block",
                days="30").status_code == 303
    assert api(env, "POST", f"/api/v1/oauth/clients/{by_api.client_id}/block",
               json={"days": 30}).status_code == 200
    page_entries = entries(env.world, since, client_id=by_page.client_id)
    api_entries = entries(env.world, since, client_id=by_api.client_id)

    def shape(entry: dict[str, Any], client_id: str) -> dict[str, Any]:
        kept = {k: entry[k] for k in ("action", "decision", "outcome", "tenant_id",
                                      "acting_user_id", "deny_reason", "error", "risk_tier")}
        parameters = {k: v for k, v in entry["parameters"].items()
                      if k not in ("blocked_until", "grant_id", "client_id")}
        return {**kept, "parameters": parameters, "ours": entry["client_id"] == client_id}

    assert [shape(e, by_page.client_id) for e in page_entries] == \
        [shape(e, by_api.client_id) for e in api_entries]
    assert [e["action"] for e in page_entries] == ["oauth.grant_revoked",
                                                   "oauth.client_blocked"]
    assert {e["auth_path"] for e in page_entries} == {"session"}
    assert {e["auth_path"] for e in api_entries} == {"api_key"}


@pytest.mark.req("ADMIN-API-APPS")
def test_only_an_owners_or_admins_key_may_use_them(env: Env) -> None:
    conn = connect(env, "tech", name="Guarded app")
    technician_key = technicians_key(env)
    admin_key = admins_key(env, env.admin_email)
    since = last_id(env.world)
    for method, template, _ in APP_ENDPOINTS:
        path = template.format(client_id=conn.client_id)
        body = {"json": {"days": 1}} if method == "POST" else {}
        r = api(env, method, path, key=technician_key, **body)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (method, path)
        r = api(env, method, path, key=conn.access, **body)  # an OAuth token: never
        assert r.status_code == 403 and "API key" in r.json()["message"], (method, path)
        assert httpx.request(method, f"{env.world.url}{path}", timeout=30).status_code == 401
    # The technician's key for its creator's role, the OAuth token for what it is.
    denied = [e for e in entries(env.world, since, decision="denied")
              if e["action"] != "auth.bearer_failed"]  # the requests without a credential
    assert sorted(e["deny_reason"] for e in denied) == sorted(
        ["role", "forbidden"] * len(APP_ENDPOINTS))
    assert works(env, conn) and blocks_of(env, conn.client_id) == []
    # An admin's key may.
    r = api(env, "POST", f"/api/v1/oauth/clients/{conn.client_id}/block", key=admin_key,
            json={"days": 1})
    assert r.status_code == 200 and not works(env, conn)
    assert api(env, "DELETE", f"/api/v1/oauth/clients/{conn.client_id}/block",
               key=admin_key).status_code == 200


@pytest.mark.req("ADMIN-API-APPS")
def test_openapi_lists_the_app_endpoints_with_their_scope(env: Env) -> None:
    doc = httpx.get(f"{env.world.url}/api/v1/openapi.json", timeout=30).json()
    for method, path, scope in APP_ENDPOINTS:
        operation = doc["paths"][path][method.lower()]
        assert operation["security"] == [{"bearer": [scope]}], path
        assert operation["x-required-scope"] == scope
        assert operation["x-required-role"] == ["owner", "admin"]
    block = doc["paths"]["/api/v1/oauth/clients/{client_id}/block"]["post"]
    properties = block["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert properties["days"]["maximum"] == MAX_BLOCK_DAYS and "until" in properties


# Tenants -------------------------------------------------------------------------------------


@pytest.mark.req("CONSOLE-APPS", "ADMIN-API-APPS", "SEED-RLS")
def test_another_organizations_owner_sees_and_touches_nothing(env: Env) -> None:
    world = env.world
    conn = connect(env, "tech", name="Tenant A app")
    outsider = env.agent("other")
    page = outsider.http.get("/console/apps")
    assert page.status_code == 200 and env.other.name in page.text
    assert "Tenant A app" not in page.text and conn.grant_id not in page.text
    r = post(env, "other", f"/console/apps/grants/{conn.grant_id}/disconnect")
    assert r.status_code == 404
    r = post(env, "other", f"/console/apps/clients/{conn.client_id}/disconnect")
    assert r.status_code == 303  # in its own organization: nothing there to end
    r = post(env, "other", f"/console/apps/clients/{conn.client_id}/block", days="1")
    assert r.status_code == 303
    assert works(env, conn)
    assert "scope_choice" in consent(env, "tech", conn.client_id).text  # A is still offered
    clients = api(env, "GET", "/api/v1/oauth/clients", key=env.other_key).json()["clients"]
    assert [(c["live_grants"], c["blocked"]) for c in clients
            if c["client_id"] == conn.client_id] == [(0, True)]  # its block, no A's grants
    grants = api(env, "GET", "/api/v1/oauth/grants", key=env.other_key).json()["grants"]
    assert conn.grant_id not in {g["id"] for g in grants}
    own = api(env, "GET", "/api/v1/oauth/blocks").json()["blocks"]
    assert conn.client_id not in {b["client_id"] for b in own}
    assert api(env, "DELETE", f"/api/v1/oauth/clients/{conn.client_id}/block",
               key=env.other_key).status_code == 200
    assert world.tenant.id != env.other.id
