"""OAuth against a live server with real clients, and what a grant means once issued.

* The MCP SDK's own ``OAuthClientProvider`` (headless: its redirect handler drives the sign-in
  and consent forms over HTTP) and an independent client (Authlib) complete the whole flow.
* Revocation by each path (RFC 7009, the human's disconnect, the admin endpoints) kills every
  token and pending code of the grant on the very next request, and is audited.
* A tool call's audit entry is the same via OAuth and via an API key but for the path fields.
* Step-up (403 ``insufficient_scope``), the consent screen's promises, per-grant rate limits.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa

from breeze_mcp.auth.accounts import create_tenant, create_user
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.auth.tokens import digest, mint_tenant_bound
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.oauth_endpoints import SCOPE_WORDS
from tests.oauth_support import (
    PASSWORD,
    REDIRECT,
    HumanAgent,
    OAuthWorld,
    authorize_url,
    code_from,
    exchange,
    mcp_call,
    oauth_world,
    pkce_pair,
    refresh,
    register,
)
from tests.support import ProvisionedDatabase

ALL = "ai:read ai:write ai:execute"
PRM_PATH = "/.well-known/oauth-protected-resource/mcp"


# Fixtures and helpers -----------------------------------------------------------------------


@dataclass
class Env:
    """A live world, an owner-role SQL engine, an admin user, and one browser per person
    (reused: sign-in is rate-limited per account, so each person signs in once)."""

    world: OAuthWorld
    engine: sa.Engine
    admin_email: str
    device_id: str
    agents: dict[str, HumanAgent] = field(default_factory=dict)

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT set_config('breeze.tenant_id', :t, true)"),
                         {"t": str(self.world.tenant.id)})
            result = conn.execute(sa.text(query), params)
            return list(result) if result.returns_rows else []

    def agent(self, who: str) -> HumanAgent:
        if who not in self.agents:
            email = {"tech": self.world.tech_email, "reader": self.world.reader_email,
                     "admin": self.admin_email}[who]
            self.agents[who] = HumanAgent(self.world, email)
        return self.agents[who]

    def close(self) -> None:
        for agent in self.agents.values():
            agent.close()
        self.engine.dispose()


def _run_db(world: OAuthWorld, work: Any) -> Any:
    async def go() -> Any:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


def _make_env(world: OAuthWorld) -> Env:
    admin_email = f"admin-{uuid.uuid4().hex[:6]}@example.com"

    async def make_admin(db: Database) -> None:
        await create_user(db, world.tenant, email=admin_email, password=PASSWORD, role="admin")

    _run_db(world, make_admin)
    env = Env(world, sa.create_engine(sqlalchemy_url(world.test_db.owner_url)), admin_email,
              device_id="")
    env.device_id = str(env.sql("SELECT id FROM devices ORDER BY hostname LIMIT 1")[0][0])
    return env


@pytest.fixture(scope="module")
def env(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    with oauth_world(test_db, Path(tmp_path_factory.mktemp("clients"))) as world:
        made = _make_env(world)
        try:
            yield made
        finally:
            made.close()


@pytest.fixture(scope="module")
def limited(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Env]:
    """A second server whose per-grant limit is 3 calls a minute."""
    with oauth_world(test_db, Path(tmp_path_factory.mktemp("limited")),
                     grant_rate_limit="3/minute") as world:
        made = _make_env(world)
        try:
            yield made
        finally:
            made.close()


@dataclass
class Conn:
    """One completed authorization: the client, its tokens and the grant they belong to."""

    client_id: str
    access: str
    refresh: str
    scope: str
    grant_id: str


def grant_of(env: Env, access_token: str) -> str:
    rows = env.sql("SELECT grant_id FROM oauth_access_tokens WHERE digest = :d",
                   d=digest(access_token))
    return str(rows[0][0])


def approve(env: Env, who: str, client_id: str, *, scope: str = ALL,
            grant: list[str] | None = None, state: str = "st-1") -> tuple[str, str]:
    """The human approves (ticking ``grant``, default everything offered): (code, verifier)."""
    verifier, challenge = pkce_pair()
    response = env.agent(who).authorize(
        authorize_url(env.world, client_id, challenge, scope=scope, state=state), scopes=grant)
    return code_from(response), verifier


def connect_client(env: Env, who: str = "tech", *, scope: str = ALL,
                   grant: list[str] | None = None, client_id: str | None = None,
                   name: str = "Test client") -> Conn:
    if client_id is None:
        client_id = register(env.world, client_name=name)["client_id"]
    code, verifier = approve(env, who, client_id, scope=scope, grant=grant)
    r = exchange(env.world, client_id, code, verifier)
    assert r.status_code == 200, r.text
    body = r.json()
    return Conn(client_id, body["access_token"], body["refresh_token"], body["scope"],
                grant_of(env, body["access_token"]))


def call(env: Env, token: str, tool: str = "list_devices",
         arguments: dict[str, Any] | None = None) -> httpx.Response:
    return mcp_call(env.world, token, "tools/call",
                    {"name": tool, "arguments": arguments if arguments is not None else {}})


def challenge_params(header: str) -> dict[str, str]:
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def assert_access_dead(env: Env, token: str) -> None:
    r = call(env, token)
    assert r.status_code == 401, r.text
    assert challenge_params(r.headers["www-authenticate"])["error"] == "invalid_token"


def assert_refresh_dead(env: Env, client_id: str, token: str) -> None:
    r = refresh(env.world, client_id, token)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text


def assert_code_dead(env: Env, client_id: str, code: str, verifier: str) -> None:
    r = exchange(env.world, client_id, code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text


def inject_pending_code(env: Env, grant_id: str) -> tuple[str, str]:
    """A pending (unused) authorization code of an existing grant, written straight into the
    table: the flow itself creates a new grant per approval, so a grant that has tokens and
    an unused code at once only arises this way. Returns (code, verifier)."""
    verifier, challenge = pkce_pair()
    code = mint_tenant_bound("bzc", env.world.tenant.id)
    env.sql(
        "INSERT INTO oauth_codes (digest, tenant_id, grant_id, redirect_uri, code_challenge, "
        "resource, scopes, expires_at) SELECT :d, tenant_id, id, :r, :c, resource, scopes, "
        "now() + interval '5 minutes' FROM oauth_grants WHERE id = :g",
        d=digest(code), r=REDIRECT, c=challenge, g=uuid.UUID(grant_id))
    return code, verifier


def audit(env: Env, where: str, **params: Any) -> list[Any]:
    return env.sql(f"SELECT * FROM audit_log WHERE {where} ORDER BY id", **params)


def admin_headers(env: Env) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.world.admin_key}"}


def admin_key_actor(env: Env) -> tuple[str, uuid.UUID]:
    """The world's admin API key as audit entries name it: (its id, the user who created it)."""
    rows = env.sql("SELECT id, created_by FROM api_keys WHERE digest = :d",
                   d=digest(env.world.admin_key))
    assert len(rows) == 1
    return str(rows[0][0]), rows[0][1]


# 1. The MCP SDK's own OAuth client -----------------------------------------------------------


class MemoryTokenStorage:
    """The SDK's TokenStorage protocol, in memory."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client_info: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client_info

    async def set_client_info(self, client_info: Any) -> None:
        self.client_info = client_info


class ReauthorizationRefused(Exception):
    """The headless browser was asked to authorize again after the grant was revoked."""


class HeadlessBrowser:
    """``redirect_handler`` + ``callback_handler`` for OAuthClientProvider: the human signs
    in and approves over HTTP; the callback hands back what the 303 Location carries."""

    def __init__(self, agent: HumanAgent, grants: list[list[str] | None]) -> None:
        self.agent = agent
        self.grants = list(grants)  # what the human ticks, one entry per authorization
        self.urls: list[str] = []
        self.location: httpx.URL | None = None
        self.refuse = False

    async def redirect(self, url: str) -> None:
        self.urls.append(url)
        if self.refuse:
            raise ReauthorizationRefused(url)
        scopes = self.grants.pop(0) if self.grants else None
        response = await asyncio.to_thread(self.agent.authorize, url, scopes=scopes)
        assert response.status_code == 303, response.text
        self.location = httpx.URL(response.headers["location"])

    async def callback(self) -> Any:
        from mcp.shared.auth import AuthorizationCodeResult

        assert self.location is not None
        params = self.location.params
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"),
                                       iss=params.get("iss"))


@asynccontextmanager
async def sdk_session(url: str, provider: Any, hooks: dict[str, list[Any]] | None = None
                      ) -> AsyncIterator[Any]:
    """An MCP ClientSession over Streamable HTTP whose httpx2 client authenticates with the
    SDK's OAuthClientProvider."""
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(auth=provider, timeout=30, event_hooks=hooks or {}) as http, \
            streamable_http_client(url, http_client=http) as streams, \
            ClientSession(streams[0], streams[1], read_timeout_seconds=30) as session:
        yield session


def sdk_provider(env: Env, browser: HeadlessBrowser, storage: MemoryTokenStorage,
                 name: str) -> Any:
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import OAuthClientMetadata

    metadata = OAuthClientMetadata.model_validate({
        "client_name": name, "redirect_uris": ["http://localhost:53682/callback"],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
    return OAuthClientProvider(env.world.mcp_url, metadata, storage,
                               redirect_handler=browser.redirect,
                               callback_handler=browser.callback)


@pytest.mark.anyio
@pytest.mark.req("OAUTH-SDK-CLIENT", "SEED-OAUTH-DCR", "SEED-OAUTH-CONSENT", "SEED-OAUTH-ROTATE",
                 "SEED-REVOKE-IMMEDIATE")
async def test_mcp_sdk_oauth_client_provider_full_flow(env: Env) -> None:
    import httpx2

    world = env.world
    storage = MemoryTokenStorage()
    browser = HeadlessBrowser(env.agent("tech"), grants=[None])
    provider = sdk_provider(env, browser, storage, "MCP SDK (headless test)")
    sent: list[tuple[str, str, bytes]] = []

    answered: list[tuple[str, int]] = []

    async def log(request: httpx2.Request) -> None:
        sent.append((request.method, str(request.url), request.content))

    async def log_response(response: httpx2.Response) -> None:
        answered.append((str(response.request.url), response.status_code))

    seen: dict[str, Any] = {}

    async def session_run() -> None:
        async with sdk_session(world.mcp_url, provider,
                               {"request": [log], "response": [log_response]}) as session:
            seen["init"] = await session.initialize()
            seen["tools"] = await session.list_tools()
            seen["first"] = await session.call_tool("list_devices", {})
            seen["tokens1"] = storage.tokens
            # The client's clock says the access token expired: the provider refreshes
            # before the next request (the server would accept the old one for 30 min).
            provider.context.token_expiry_time = time.time() - 1
            seen["second"] = await session.call_tool("list_devices", {"limit": 2})
            seen["tokens2"] = storage.tokens
            seen["grant_id"] = await asyncio.to_thread(
                grant_of, env, storage.tokens.access_token)
            seen["revoked"] = await asyncio.to_thread(
                httpx.delete, f"{world.url}/api/v1/oauth/grants/{seen['grant_id']}",
                headers=admin_headers(env), timeout=30)
            browser.refuse = True
            seen["answered_before"] = len(answered)
            seen["after_revoke"] = await session.call_tool("list_devices", {})

    async def run() -> None:
        # The 401 after the revocation sends the provider into a new authorization, which
        # the headless browser refuses; the SDK's transport then fails as a whole.
        try:
            await session_run()
        except* ReauthorizationRefused as group:
            seen["refused"] = group.exceptions

    with anyio.fail_after(60):
        await run()

    # initialize, tools/list and tools/call worked with the SDK's token.
    assert seen["init"].server_info.name == "breeze-mcp"
    names = {t.name for t in seen["tools"].tools}
    assert {"list_devices", "add_note", "run_script"} <= names
    assert not seen["first"].is_error and seen["first"].structured_content["devices"]
    assert not seen["second"].is_error
    assert len(seen["second"].structured_content["devices"]) == 2

    # The SDK registered itself (DCR): a row in oauth_clients, completed (no expiry).
    client_id = storage.client_info.client_id
    row = env.sql("SELECT * FROM oauth_clients WHERE client_id = :c", c=client_id)[0]
    assert row.client_name == "MCP SDK (headless test)"
    assert row.token_endpoint_auth_method == "none"
    assert row.expires_at is None and row.last_authorized_at is not None
    assert any(m == "POST" and u == f"{world.url}/register" for m, u, _ in sent)

    # PKCE S256 and RFC 8707 resource on the authorization request...
    assert len(browser.urls) == 2  # the first authorization, then the refused retry
    params = httpx.URL(browser.urls[0]).params
    assert params["code_challenge_method"] == "S256"
    assert params["resource"] == world.mcp_url
    assert params["client_id"] == client_id
    # ...and on the token requests (code exchange and refresh).
    token_bodies = [httpx.QueryParams(body.decode()) for m, u, body in sent
                    if m == "POST" and u == f"{world.url}/token"]
    assert [b["grant_type"] for b in token_bodies] == ["authorization_code", "refresh_token"]
    assert all(b["resource"] == world.mcp_url for b in token_bodies)
    assert len(token_bodies[0]["code_verifier"]) >= 43

    # The grant is bound to the MCP URL, and its code carried the S256 challenge.
    grant_id = seen["grant_id"]
    grant = env.sql("SELECT * FROM oauth_grants WHERE id = :g", g=uuid.UUID(grant_id))[0]
    assert grant.resource == world.mcp_url and grant.client_id == client_id
    assert sorted(grant.scopes) == sorted(ALL.split())
    code = env.sql("SELECT * FROM oauth_codes WHERE grant_id = :g", g=uuid.UUID(grant_id))[0]
    assert code.code_challenge == params["code_challenge"] and code.used_at is not None
    created = audit(env, "action = 'oauth.grant_created' AND credential_id = :g", g=grant_id)
    assert created[0].parameters["resource"] == world.mcp_url
    # The SDK asked for offline_access too (SEP-2207); unknown to the scope set, it is dropped.
    assert "offline_access" in params["scope"].split()

    # The refresh rotated both tokens; the access token of the same grant changed.
    t1, t2 = seen["tokens1"], seen["tokens2"]
    assert t2.access_token != t1.access_token and t2.refresh_token != t1.refresh_token
    assert grant_of(env, t1.access_token) == grant_id

    # Revocation ended the session: the next call was 401, the SDK tried to authorize
    # again (refused here), and raised instead of calling the tool.
    assert seen["revoked"].status_code == 200, seen["revoked"].text
    assert "after_revoke" not in seen and len(seen["refused"]) == 1
    after = answered[seen["answered_before"]:]
    assert after[0] == (world.mcp_url, 401)  # the old token, refused on the next request
    assert (f"{world.url}{PRM_PATH}", 200) in after  # the SDK then rediscovered, to re-auth
    assert_access_dead(env, t2.access_token)
    assert_refresh_dead(env, client_id, t2.refresh_token)


@pytest.mark.anyio
@pytest.mark.req("OAUTH-SDK-CLIENT", "OAUTH-STEP-UP")
async def test_mcp_sdk_steps_up_on_insufficient_scope(env: Env) -> None:
    """The human first grants only ai:read; a Tier 3 call answers 403 insufficient_scope,
    the SDK asks for more (SEP-2350 union), the human approves, the call goes through."""
    storage = MemoryTokenStorage()
    browser = HeadlessBrowser(env.agent("tech"), grants=[["ai:read"], None])
    provider = sdk_provider(env, browser, storage, "MCP SDK (step-up test)")
    seen: dict[str, Any] = {}

    async def run() -> None:
        async with sdk_session(env.world.mcp_url, provider) as session:
            await session.initialize()
            seen["tools"] = {t.name for t in (await session.list_tools()).tools}
            seen["scope1"] = storage.tokens.scope
            seen["result"] = await session.call_tool("run_script", {
                "device_id": env.device_id, "interpreter": "bash",
                "script": "uptime", "timeout_seconds": 30})
            seen["scope2"] = storage.tokens.scope

    with anyio.fail_after(60):
        await run()
    assert seen["scope1"] == "ai:read"
    assert "run_script" not in seen["tools"] and "list_devices" in seen["tools"]
    assert len(browser.urls) == 2
    asked_again = httpx.URL(browser.urls[1]).params["scope"].split()
    assert {"ai:read", "ai:execute"} <= set(asked_again)
    assert not seen["result"].is_error, seen["result"]
    assert seen["result"].structured_content["status"] == "queued"
    assert "ai:execute" in seen["scope2"].split()
    denied = audit(env, "action = 'run_script' AND deny_reason = 'insufficient_scope' "
                   "AND client_id = :c", c=storage.client_info.client_id)
    assert len(denied) == 1 and denied[0].scopes == ["ai:read"]


# 2. An independent client: Authlib ----------------------------------------------------------


@pytest.mark.req("OAUTH-AUTHLIB-CLIENT", "OAUTH-REVOCATION", "SEED-REVOKE-IMMEDIATE",
                 "SEED-OAUTH-DCR", "SEED-OAUTH-ROTATE")
@pytest.mark.parametrize("auth_method", ["none", "client_secret_basic", "client_secret_post"])
def test_authlib_client_full_flow(env: Env, auth_method: str) -> None:
    from authlib.common.security import generate_token
    from authlib.integrations.httpx_client import OAuth2Client

    world = env.world
    reg = httpx.post(f"{world.url}/register", json={
        "client_name": f"Authlib ({auth_method})", "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": auth_method}, timeout=30)
    assert reg.status_code == 201, reg.text
    info = reg.json()
    assert ("client_secret" in info) == (auth_method != "none")
    rotated: list[dict[str, Any]] = []
    client = OAuth2Client(
        client_id=info["client_id"], client_secret=info.get("client_secret"),
        token_endpoint_auth_method=auth_method, revocation_endpoint_auth_method=auth_method,
        redirect_uri=REDIRECT, scope="ai:read ai:write", code_challenge_method="S256",
        token_endpoint=f"{world.url}/token",
        update_token=lambda token, **_: rotated.append(dict(token)), timeout=30)
    try:
        verifier = generate_token(64)
        url, state = client.create_authorization_url(f"{world.url}/authorize",
                                                     code_verifier=verifier,
                                                     resource=world.mcp_url)
        assert "code_challenge_method=S256" in url
        back = env.agent("tech").authorize(url)
        location = httpx.URL(back.headers["location"])
        assert location.params["state"] == state and location.params["iss"] == world.url
        token = client.fetch_token(f"{world.url}/token", authorization_response=str(location),
                                   code_verifier=verifier, resource=world.mcp_url)
        assert token["token_type"] == "Bearer" and token["scope"] == "ai:read ai:write"
        assert 60 <= token["expires_in"] <= 1800

        def tool_call() -> Any:  # Authlib's client is an httpx2.Client: it adds the token
            return client.post(world.mcp_url, json={
                "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "list_devices", "arguments": {"limit": 1}}},
                headers={"Accept": "application/json, text/event-stream",
                         "MCP-Protocol-Version": "2025-06-18"})

        first = tool_call()
        assert first.status_code == 200, first.text
        assert len(first.json()["result"]["structuredContent"]["devices"]) == 1

        # Explicit refresh: both tokens rotate, the resource binding is kept.
        old = dict(client.token)
        new = client.refresh_token(f"{world.url}/token", resource=world.mcp_url)
        assert new["access_token"] != old["access_token"]
        assert new["refresh_token"] != old["refresh_token"]
        assert tool_call().status_code == 200

        # Authlib refreshes by itself when its copy says the token expired.
        client.token["expires_at"] = int(time.time()) - 10
        assert tool_call().status_code == 200
        assert len(rotated) == 2 and rotated[0]["access_token"] == new["access_token"]
        assert rotated[1]["access_token"] != new["access_token"]
        current = dict(client.token)
        grant_id = grant_of(env, current["access_token"])
        assert grant_of(env, old["access_token"]) == grant_id

        # RFC 7009: revoking the refresh token kills the grant - every token at once.
        revoked = client.revoke_token(f"{world.url}/revoke", token=current["refresh_token"],
                                      token_type_hint="refresh_token")
        assert revoked.status_code == 200 and revoked.headers["cache-control"] == "no-store"
    finally:
        client.close()
    for access in (old["access_token"], new["access_token"], current["access_token"]):
        assert_access_dead(env, access)
    for refresh_token in (old["refresh_token"], new["refresh_token"],
                          current["refresh_token"]):
        r = httpx.post(f"{world.url}/token", data={
            "grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": info["client_id"], **({"client_secret": info["client_secret"]}
                                                if auth_method != "none" else {})},
            timeout=30)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    entry = audit(env, "action = 'oauth.grant_revoked' AND credential_id = :g", g=grant_id)
    assert len(entry) == 1 and entry[0].actor_type == "oauth_client"
    assert entry[0].parameters["reason"] == "revoked_by_client"
    assert entry[0].parameters["grant_id"] == grant_id


# 3. Revocation, effective on the next request ------------------------------------------------


def hidden_fields(page: str) -> dict[str, Any]:
    return {html.unescape(name): html.unescape(value) for name, value in re.findall(
        r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)}


def sign_in(agent: HumanAgent) -> None:
    """Make sure the browser has a session (signing in at most once per person)."""
    r = agent.http.get("/account/connections")
    if r.status_code == 200:
        return
    assert r.status_code == 303, r.text
    page = agent.http.get(r.headers["location"])
    r = agent.http.post("/login", data={**hidden_fields(page.text), "email": agent.email,
                                        "password": agent.password})
    assert r.status_code == 303, r.text


def disconnect_form(agent: HumanAgent, grant_id: str) -> dict[str, Any]:
    """The hidden fields of the "Disconnect" form of one grant on the connections page."""
    sign_in(agent)
    page = agent.http.get("/account/connections")
    assert page.status_code == 200
    match = re.search(
        rf'<form method="post" action="/account/connections/{grant_id}/disconnect">(.*?)</form>',
        page.text, re.S)
    assert match, f"grant {grant_id} is not listed"
    return hidden_fields(match.group(1))


def code_grant(env: Env, code: str) -> str:
    return str(env.sql("SELECT grant_id FROM oauth_codes WHERE digest = :d", d=digest(code))[0][0])


def user_id(env: Env, email: str) -> uuid.UUID:
    rows = env.sql("SELECT id FROM users WHERE lower(email) = lower(:e)", e=email)
    return uuid.UUID(str(rows[0][0]))


REVOCATION_PATHS = ["rfc7009_refresh_token", "user_disconnect", "admin_revoke_grant",
                    "admin_revoke_client"]


@pytest.mark.req("OAUTH-REVOCATION", "SEED-REVOKE-IMMEDIATE")
@pytest.mark.parametrize("path", REVOCATION_PATHS)
def test_revocation_kills_every_token_and_code_of_the_grant_at_once(env: Env, path: str) -> None:
    world = env.world
    victim = connect_client(env, "tech", name=f"Victim via {path}")
    rotated = refresh(world, victim.client_id, victim.refresh)
    assert rotated.status_code == 200, rotated.text
    accesses = [victim.access, rotated.json()["access_token"]]  # both still valid
    refreshes = [victim.refresh, rotated.json()["refresh_token"]]  # used, and live
    pending = [inject_pending_code(env, victim.grant_id)]
    grants = {victim.grant_id}
    if path in ("user_disconnect", "admin_revoke_client"):
        # A second approval for the same client, never exchanged: a grant with only a code.
        code, verifier = approve(env, "tech", victim.client_id)
        pending.append((code, verifier))
        grants.add(code_grant(env, code))
    sibling = connect_client(env, "tech", name="Sibling client")  # same user, other client
    for token in [*accesses, sibling.access]:
        assert call(env, token).status_code == 200

    tech_id = user_id(env, world.tech_email)
    if path == "rfc7009_refresh_token":
        r = httpx.post(f"{world.url}/revoke", timeout=30, data={
            "token": refreshes[1], "token_type_hint": "refresh_token",
            "client_id": victim.client_id})
        assert r.status_code == 200
        expected: tuple[str, str | None, str, str, uuid.UUID | None] = (
            "oauth_client", victim.client_id, "oauth", "revoked_by_client", tech_id)
    elif path == "user_disconnect":
        agent = env.agent("tech")
        # Neither without the CSRF token nor by another user: both leave the grant alive.
        form = disconnect_form(agent, victim.grant_id)
        assert "tenant_id" not in form  # the tenant comes from the person, never the form
        r = agent.http.post(f"/account/connections/{victim.grant_id}/disconnect",
                            data={"tenant_id": str(world.tenant.id)})
        assert r.status_code == 403
        reader = env.agent("reader")
        sign_in(reader)
        reader_page = reader.http.get("/account/connections")
        r = reader.http.post(f"/account/connections/{victim.grant_id}/disconnect", data={
            "csrf_token": hidden_fields(reader_page.text)["csrf_token"],
            "tenant_id": str(world.tenant.id)})
        assert r.status_code == 404
        assert call(env, accesses[1]).status_code == 200
        for grant_id in sorted(grants):
            form = disconnect_form(agent, grant_id)
            # A tenant id slipped into the form changes nothing.
            form["tenant_id"] = str(uuid.uuid4())
            r = agent.http.post(f"/account/connections/{grant_id}/disconnect", data=form)
            assert r.status_code == 303
            assert r.headers["location"].startswith("/account/connections")
        page = agent.http.get("/account/connections").text
        assert f"Victim via {path}" not in page and "Sibling client" in page
        expected = ("user", str(tech_id), "session", "disconnected_by_user", tech_id)
    elif path == "admin_revoke_grant":
        r = httpx.delete(f"{world.url}/api/v1/oauth/grants/{victim.grant_id}",
                         headers=admin_headers(env), timeout=30)
        assert r.status_code == 200 and r.json() == {"revoked": [victim.grant_id]}
        again = httpx.delete(f"{world.url}/api/v1/oauth/grants/{victim.grant_id}",
                             headers=admin_headers(env), timeout=30)
        assert again.status_code == 404
        key_id, creator = admin_key_actor(env)
        expected = ("api_key", key_id, "api_key", "revoked_by_admin", creator)
    else:
        r = httpx.delete(f"{world.url}/api/v1/oauth/clients/{victim.client_id}/grants",
                         headers=admin_headers(env), timeout=30)
        assert r.status_code == 200 and sorted(r.json()["revoked"]) == sorted(grants)
        key_id, creator = admin_key_actor(env)
        expected = ("api_key", key_id, "api_key", "client_revoked_by_admin", creator)

    # The very next request with any token or code of the grant is refused.
    for token in accesses:
        assert_access_dead(env, token)
    for token in refreshes:
        assert_refresh_dead(env, victim.client_id, token)
    for code, verifier in pending:
        assert_code_dead(env, victim.client_id, code, verifier)

    # Audited, one entry per grant, naming the grant.
    actor_type, actor_id, auth_path, reason, acting = expected
    for grant_id in grants:
        entries = audit(env, "action = 'oauth.grant_revoked' AND credential_id = :g", g=grant_id)
        assert len(entries) == 1, entries
        entry = entries[0]
        assert (entry.actor_type, entry.auth_path) == (actor_type, auth_path)
        assert entry.actor_id == actor_id
        assert entry.client_id == victim.client_id and entry.tenant_id == world.tenant.id
        assert entry.parameters["reason"] == reason and entry.outcome == "success"
        assert entry.acting_user_id == acting
        row = env.sql("SELECT revoked_at, revoked_reason FROM oauth_grants WHERE id = :g",
                      g=uuid.UUID(grant_id))[0]
        assert row.revoked_at is not None and row.revoked_reason == reason
    if path == "admin_revoke_client":
        # All the client's grants in one transaction, all or none: now() is the transaction's
        # start, so every grant carries the same revocation time.
        times = {r.revoked_at for r in env.sql(
            "SELECT revoked_at FROM oauth_grants WHERE id = ANY(:g)",
            g=[uuid.UUID(g) for g in grants])}
        assert len(grants) > 1 and len(times) == 1, times

    # The same user's grant to another client is untouched.
    assert call(env, sibling.access).status_code == 200
    assert refresh(world, sibling.client_id, sibling.refresh).status_code == 200


@pytest.mark.req("OAUTH-REVOCATION")
def test_rfc7009_revoke_answers_200_for_unknown_and_foreign_tokens(env: Env) -> None:
    world = env.world
    mine = connect_client(env, "tech", scope="ai:read")
    other = register(world)["client_id"]
    for token in ("bzr_not-a-token", mine.refresh, mine.access):
        # Another client presenting my tokens revokes nothing (and learns nothing).
        r = httpx.post(f"{world.url}/revoke", data={"token": token, "client_id": other},
                       timeout=30)
        assert r.status_code == 200
    assert call(env, mine.access).status_code == 200
    # Revoking just the access token kills that token; the grant and its refresh live on.
    r = httpx.post(f"{world.url}/revoke", timeout=30, data={
        "token": mine.access, "token_type_hint": "access_token", "client_id": mine.client_id})
    assert r.status_code == 200
    assert_access_dead(env, mine.access)
    assert refresh(world, mine.client_id, mine.refresh).status_code == 200
    # An unknown client is invalid_client, as at /token.
    r = httpx.post(f"{world.url}/revoke", data={"token": mine.refresh, "client_id": "bzi_nope"},
                   timeout=30)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


@pytest.mark.req("SEED-REVOKE-IMMEDIATE")
def test_revocation_is_seen_at_once_by_another_instance(env: Env) -> None:
    """Two servers on one database: revoke through one, the other refuses the next call."""
    from breeze_mcp.app import create_app
    from tests.support import LiveServer

    world = env.world
    conn = connect_client(env, "tech", scope="ai:read")
    host = httpx.URL(world.url).netloc.decode()  # instance 2 serves the same public URL

    with LiveServer(create_app(world.settings, world.test_db.runtime_url)) as second:
        def call_second() -> httpx.Response:
            return httpx.post(f"{second.url}/mcp", timeout=30, headers={
                "Authorization": f"Bearer {conn.access}", "Host": host,
                "Accept": "application/json", "MCP-Protocol-Version": "2025-06-18"},
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "list_devices", "arguments": {}}})

        assert call_second().status_code == 200
        r = httpx.delete(f"{world.url}/api/v1/oauth/grants/{conn.grant_id}",
                         headers=admin_headers(env), timeout=30)
        assert r.status_code == 200
        assert call_second().status_code == 401


@pytest.mark.req("OAUTH-REVOCATION")
def test_admin_grant_endpoints_require_an_owner_or_admin(env: Env) -> None:
    world = env.world
    victim = connect_client(env, "tech", scope="ai:read", name="Listed client")
    reader = connect_client(env, "reader", scope="ai:read")
    admin = connect_client(env, "admin", scope="ai:read")
    endpoints = [("GET", "/api/v1/oauth/grants"),
                 ("DELETE", f"/api/v1/oauth/grants/{victim.grant_id}"),
                 ("DELETE", f"/api/v1/oauth/clients/{victim.client_id}/grants")]
    for method, path in endpoints:
        r = httpx.request(method, f"{world.url}{path}", timeout=30)
        assert r.status_code == 401, (method, path)
        assert "resource_metadata=" in r.headers["www-authenticate"]
        r = httpx.request(method, f"{world.url}{path}", timeout=30,
                          headers={"Authorization": "Bearer bza_forged"})
        assert r.status_code == 401
        for token in (reader.access, victim.access):  # readonly, technician
            r = httpx.request(method, f"{world.url}{path}", timeout=30,
                              headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 403, (method, path, r.text)
    assert call(env, victim.access).status_code == 200  # nothing was revoked
    # Not even an admin's AI client may manage grants: API keys only.
    r = httpx.get(f"{world.url}/api/v1/oauth/grants", timeout=30,
                  headers={"Authorization": f"Bearer {admin.access}"})
    assert r.status_code == 403 and "API key" in r.json()["message"]

    # Owners (the world's key) and admins (a key an admin created) list the tenant's grants.
    async def admins_key(db: Database) -> str:
        _, key = await create_api_key(db, world.tenant, name="admin's key",
                                      scopes=["ai:read"], creator_email=env.admin_email)
        return key

    by_admin = {"Authorization": f"Bearer {_run_db(world, admins_key)}"}
    for headers in (admin_headers(env), by_admin):
        r = httpx.get(f"{world.url}/api/v1/oauth/grants", headers=headers, timeout=30)
        assert r.status_code == 200
        listed = {g["id"]: g for g in r.json()["grants"]}
        assert {victim.grant_id, reader.grant_id, admin.grant_id} <= set(listed)
        mine = listed[victim.grant_id]
        assert mine["client_id"] == victim.client_id and mine["client_name"] == "Listed client"
        assert mine["user_email"] == world.tech_email and mine["scopes"] == ["ai:read"]
        assert mine["resource"] == world.mcp_url and mine["revoked_at"] is None
    for bad in ("not-a-uuid", str(uuid.uuid4())):
        r = httpx.delete(f"{world.url}/api/v1/oauth/grants/{bad}", headers=admin_headers(env),
                         timeout=30)
        assert r.status_code == 404
        # Refused, and audited like the console's refusal of the same request.
        (entry,) = audit(env, "action = 'oauth.grant_revoked' AND parameters->>'grant_id' = :g",
                         g=bad)
        assert (entry.decision, entry.outcome, entry.deny_reason, entry.auth_path) == (
            "denied", "blocked", "not_found", "api_key")
        assert entry.error == "no live grant with that id"
    r = httpx.delete(f"{world.url}/api/v1/oauth/clients/bad%00client/grants",
                     headers=admin_headers(env), timeout=30)
    assert r.status_code == 404
    (entry,) = audit(env, "action = 'oauth.grant_revoked' AND error = 'no such client'"
                     " AND parameters->>'client_id' LIKE 'bad%%client'")
    assert (entry.decision, entry.outcome, entry.deny_reason) == ("denied", "blocked",
                                                                  "not_found")

    # Another tenant's owner can neither see nor revoke this tenant's grants.
    async def other_tenant(db: Database) -> str:
        tag = uuid.uuid4().hex[:6]
        tenant = await create_tenant(db, f"Other {tag}", slug=f"other-{tag}")
        await create_user(db, tenant, email=f"other-owner-{tag}@example.com",
                          password=PASSWORD, role="owner")
        _, key = await create_api_key(db, tenant, name="other", scopes="ai:read,ai:write")
        return key

    outsider = {"Authorization": f"Bearer {_run_db(world, other_tenant)}"}
    r = httpx.get(f"{world.url}/api/v1/oauth/grants", headers=outsider, timeout=30)
    assert r.status_code == 200 and r.json()["grants"] == []
    r = httpx.delete(f"{world.url}/api/v1/oauth/grants/{victim.grant_id}", headers=outsider,
                     timeout=30)
    assert r.status_code == 404
    r = httpx.delete(f"{world.url}/api/v1/oauth/clients/{victim.client_id}/grants",
                     headers=outsider, timeout=30)
    assert r.status_code == 200 and r.json()["revoked"] == []
    assert call(env, victim.access).status_code == 200

    # Listing needs an owner's or admin's key; revoking also needs ai:write on it.
    r = httpx.delete(f"{world.url}/api/v1/oauth/grants/{victim.grant_id}", headers=by_admin,
                     timeout=30)
    assert r.status_code == 403 and r.json()["required_scope"] == "ai:write"
    assert call(env, victim.access).status_code == 200

    async def admins_write_key(db: Database) -> str:
        _, key = await create_api_key(db, world.tenant, name="admin's write key",
                                      scopes=["ai:read", "ai:write"],
                                      creator_email=env.admin_email)
        return key

    by_admin = {"Authorization": f"Bearer {_run_db(world, admins_write_key)}"}
    # Revoked grants drop out of the default listing and show with include_revoked=true.
    r = httpx.delete(f"{world.url}/api/v1/oauth/grants/{victim.grant_id}", headers=by_admin,
                     timeout=30)
    assert r.status_code == 200
    r = httpx.get(f"{world.url}/api/v1/oauth/grants", headers=admin_headers(env), timeout=30)
    assert victim.grant_id not in {g["id"] for g in r.json()["grants"]}
    r = httpx.get(f"{world.url}/api/v1/oauth/grants", params={"include_revoked": "true"},
                  headers=admin_headers(env), timeout=30)
    gone = {g["id"]: g for g in r.json()["grants"]}[victim.grant_id]
    assert gone["revoked_at"] is not None and gone["revoked_reason"] == "revoked_by_admin"
    entry = audit(env, "action = 'oauth.grant_revoked' AND credential_id = :g",
                  g=victim.grant_id)[0]
    assert entry.actor_type == "api_key" and entry.auth_path == "api_key"
    assert entry.acting_user_id == user_id(env, env.admin_email)


def test_revocation_audit_entry_counts_the_tokens_it_killed(env: Env) -> None:
    conn = connect_client(env, "tech", scope="ai:read")
    assert refresh(env.world, conn.client_id, conn.refresh).status_code == 200
    r = httpx.delete(f"{env.world.url}/api/v1/oauth/grants/{conn.grant_id}",
                     headers=admin_headers(env), timeout=30)
    assert r.status_code == 200
    entry = audit(env, "action = 'oauth.grant_revoked' AND credential_id = :g",
                  g=conn.grant_id)[0]
    assert entry.parameters["codes_revoked"] == 0
    assert entry.parameters["access_revoked"] == 2
    assert entry.parameters["refresh_revoked"] == 2


# 4. Audit parity ------------------------------------------------------------------------------

#: Fields that say which door and which credential a call came through, and per-event ones.
PATH_FIELDS = {"actor_type", "actor_id", "auth_path", "credential_id", "client_id",
               "request_id", "occurred_at", "id", "duration_ms"}


@pytest.mark.req("SEED-AUDIT-PARITY")
def test_audit_entry_via_oauth_equals_the_api_key_one_but_for_the_path_fields(env: Env) -> None:
    """The same human (an admin: technicians cannot create keys) calls the same tools with
    the same arguments and the same scopes, once with an OAuth token, once with an API key."""
    world = env.world

    async def make_key(db: Database) -> tuple[str, str]:
        info, key = await create_api_key(db, world.tenant, name="parity",
                                         scopes=["ai:read", "ai:write"],
                                         creator_email=env.admin_email)
        return str(info.id), key

    key_id, key = _run_db(world, make_key)
    conn = connect_client(env, "admin", scope="ai:read ai:write", name="Parity client")
    assert conn.scope == "ai:read ai:write"
    body = f"parity check {secrets.token_hex(4)}"
    calls = [
        ("add_note", {"device_id": env.device_id, "body": body}, 200),  # allowed, Tier 2
        ("run_script", {"device_id": env.device_id, "interpreter": "bash",  # denied, Tier 3
                        "script": body}, 403),
        ("add_note", {"device_id": env.device_id, "body": ""}, 200),  # invalid arguments
    ]
    admin_id = user_id(env, env.admin_email)
    for tool, arguments, status in calls:
        via_oauth = call(env, conn.access, tool, arguments)
        via_key = call(env, key, tool, arguments)
        assert via_oauth.status_code == via_key.status_code == status, via_oauth.text
        rows = audit(env, "action = :a AND parameters = CAST(:p AS jsonb) "
                     "AND credential_id IN (:g, :k)", a=tool, p=_json(arguments),
                     g=conn.grant_id, k=key_id)
        assert len(rows) == 2, rows
        by_path = {r.auth_path: r._asdict() for r in rows}
        oauth_row, key_row = by_path["oauth"], by_path["api_key"]
        same_oauth = {k: v for k, v in oauth_row.items() if k not in PATH_FIELDS}
        same_key = {k: v for k, v in key_row.items() if k not in PATH_FIELDS}
        assert same_oauth == same_key
        assert same_oauth["acting_user_id"] == admin_id
        assert same_oauth["scopes"] == ["ai:read", "ai:write"]
        assert (oauth_row["actor_type"], oauth_row["actor_id"], oauth_row["credential_id"],
                oauth_row["client_id"]) == ("oauth_client", conn.client_id, conn.grant_id,
                                            conn.client_id)
        assert (key_row["actor_type"], key_row["actor_id"], key_row["credential_id"],
                key_row["client_id"]) == ("api_key", key_id, key_id, None)
    outcomes = [r.outcome for r in audit(env, "credential_id = :g", g=conn.grant_id)
                if r.action in ("add_note", "run_script")]
    assert outcomes == ["success", "blocked", "error"]


def _json(value: Any) -> str:
    return json.dumps(value)


# 5. Step-up --------------------------------------------------------------------------------


@pytest.mark.req("OAUTH-STEP-UP")
def test_insufficient_scope_is_403_with_the_needed_scope_then_step_up_works(env: Env) -> None:
    world = env.world
    conn = connect_client(env, "tech", scope="ai:read", name="Step-up client")
    assert conn.scope == "ai:read"
    script = {"device_id": env.device_id, "interpreter": "bash", "script": "df -h"}
    cases = [
        ("run_script", script, "ai:execute", 3),
        ("manage_device", {"device_id": env.device_id, "action": "reboot"}, "ai:execute", 3),
        ("add_note", {"device_id": env.device_id, "body": "step-up"}, "ai:write", 2),
    ]
    for tool, arguments, needed, tier in cases:
        r = call(env, conn.access, tool, arguments)
        assert r.status_code == 403, r.text
        challenge = challenge_params(r.headers["www-authenticate"])
        assert challenge["error"] == "insufficient_scope"
        assert challenge["scope"] == needed
        assert challenge["resource_metadata"] == f"{world.url}{PRM_PATH}"
        error = r.json()["error"]
        assert error["data"] == {"error": "insufficient_scope", "tier": tier,
                                 "required_scope": needed}
    # Refresh can only narrow: asking for ai:execute on the ai:read grant is refused.
    r = refresh(world, conn.client_id, conn.refresh, scope="ai:read ai:execute")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    # Step up: the same client asks again for what the challenge named; the human approves.
    more = connect_client(env, "tech", scope="ai:read ai:execute", client_id=conn.client_id)
    assert more.scope == "ai:read ai:execute" and more.grant_id != conn.grant_id
    r = call(env, more.access, "run_script", script)
    assert r.status_code == 200 and not r.json()["result"].get("isError"), r.text
    assert r.json()["result"]["structuredContent"]["status"] == "queued"
    assert call(env, conn.access, "run_script", script).status_code == 403  # old grant as was


# 6. Consent -------------------------------------------------------------------------------


def assert_page_headers(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"


def consent_page(env: Env, who: str, client_id: str, *, scope: str = ALL,
                 redirect_uri: str = REDIRECT, state: str = "st-1"
                 ) -> tuple[httpx.Response, str]:
    """The consent page of a signed-in person; returns (page, verifier)."""
    agent = env.agent(who)
    sign_in(agent)
    verifier, challenge = pkce_pair()
    page = agent.http.get(authorize_url(env.world, client_id, challenge, scope=scope,
                                        redirect_uri=redirect_uri, state=state))
    assert page.status_code == 200 and "scope_choice" in page.text, page.text
    return page, verifier


def grants_of(env: Env, client_id: str) -> list[Any]:
    return env.sql("SELECT * FROM oauth_grants WHERE client_id = :c", c=client_id)


@pytest.mark.req("OAUTH-CONSENT-SCOPES", "SEED-OAUTH-CONSENT")
def test_consent_page_names_client_redirect_host_and_scopes_in_words(env: Env) -> None:
    world = env.world
    name = 'Acme <b>Copilot</b> & "Co"'
    redirect_uri = "https://agent.example.com/oauth/callback"
    client = register(world, client_name=name, redirect_uris=[redirect_uri])
    page, _ = consent_page(env, "tech", client["client_id"], redirect_uri=redirect_uri)
    text = page.text
    shown = re.search(r'<span id="client-name">(.*?)</span>', text)
    assert shown and html.unescape(shown.group(1)) == name
    assert "<b>Copilot</b>" not in text  # escaped, never markup
    host = re.search(r'<strong id="redirect-host">(.*?)</strong>', text)
    assert host and host.group(1) == "agent.example.com"
    plain = html.unescape(text)
    for scope_name, words in SCOPE_WORDS.items():
        assert scope_name in plain and words in plain
    assert_page_headers(page)
    assert "form-action 'self' https://agent.example.com" in (
        page.headers["content-security-policy"])

    # Every other page carries the same framing and caching headers.
    fresh = httpx.Client(base_url=world.url, timeout=30)
    try:
        _, challenge = pkce_pair()
        pages = [fresh.get(authorize_url(world, client["client_id"], challenge,
                                         redirect_uri=redirect_uri)),  # the sign-in form
                 fresh.get("/login"),
                 fresh.get("/authorize", params={"client_id": "bzi_unknown"})]  # error page
    finally:
        fresh.close()
    assert 'name="password"' in pages[0].text and name not in pages[0].text
    named = re.search(r"<strong>(.*?)</strong> wants to connect", pages[0].text)
    assert named and html.unescape(named.group(1)) == name
    assert pages[2].status_code == 400 and "location" not in pages[2].headers
    for response in [*pages, env.agent("tech").http.get("/account/connections")]:
        assert_page_headers(response)


@pytest.mark.req("OAUTH-CONSENT-SCOPES", "SEED-OAUTH-CONSENT")
def test_readonly_user_can_grant_only_read_even_with_a_forged_form(env: Env) -> None:
    world = env.world
    client_id = register(world, client_name="Reader's assistant")["client_id"]
    page, verifier = consent_page(env, "reader", client_id)
    boxes = dict(re.findall(
        r'name="scope_choice" value="([^"]+)"\s+(checked|disabled)>', page.text))
    assert boxes == {"ai:read": "checked", "ai:write": "disabled", "ai:execute": "disabled"}
    assert page.text.count("Your role does not allow this.") == 2
    form = {**hidden_fields(page.text), "decision": "approve",
            "scope_choice": ["ai:read", "ai:write", "ai:execute"]}  # forged: all three
    r = env.agent("reader").http.post("/authorize", data=form)
    r = exchange(world, client_id, code_from(r), verifier)
    assert r.status_code == 200 and r.json()["scope"] == "ai:read"
    [grant] = grants_of(env, client_id)
    assert grant.scopes == ["ai:read"]
    created = audit(env, "action = 'oauth.grant_created' AND credential_id = :g",
                    g=str(grant.id))[0]
    assert created.parameters["granted"] == ["ai:read"]
    assert created.parameters["withheld"] == ["ai:write", "ai:execute"]
    r = call(env, r.json()["access_token"], "add_note",
             {"device_id": env.device_id, "body": "not allowed"})
    assert r.status_code == 403


@pytest.mark.req("OAUTH-CONSENT-SCOPES", "SEED-OAUTH-CONSENT")
def test_granting_fewer_scopes_than_asked_yields_only_those(env: Env) -> None:
    conn = connect_client(env, "tech", scope=ALL, grant=["ai:read", "ai:write"])
    assert conn.scope == "ai:read ai:write"
    listed = mcp_call(env.world, conn.access, "tools/list").json()["result"]["tools"]
    names = {t["name"] for t in listed}
    assert "add_note" in names and "run_script" not in names
    [grant] = grants_of(env, conn.client_id)
    assert grant.scopes == ["ai:read", "ai:write"]
    created = audit(env, "action = 'oauth.grant_created' AND credential_id = :g",
                    g=conn.grant_id)[0]
    assert created.parameters["withheld"] == ["ai:execute"]
    # A refresh may narrow further, never widen.
    r = refresh(env.world, conn.client_id, conn.refresh, scope="ai:read")
    assert r.status_code == 200 and r.json()["scope"] == "ai:read"
    assert call(env, r.json()["access_token"], "add_note",
                {"device_id": env.device_id, "body": "narrowed"}).status_code == 403
    r = refresh(env.world, conn.client_id, r.json()["refresh_token"], scope=ALL)
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"


@pytest.mark.req("OAUTH-CONSENT-SCOPES")
def test_consent_post_without_a_valid_csrf_token_is_refused_and_issues_no_code(
        env: Env) -> None:
    world = env.world
    client_id = register(world, client_name="CSRF target")["client_id"]
    page, verifier = consent_page(env, "tech", client_id)
    form = {**hidden_fields(page.text), "decision": "approve", "scope_choice": ["ai:read"]}
    other_page, _ = consent_page(env, "reader", client_id)
    foreign_token = hidden_fields(other_page.text)["csrf_token"]  # valid for another browser
    agent = env.agent("tech")
    attempts = [
        ({k: v for k, v in form.items() if k != "csrf_token"}, {}),
        ({**form, "csrf_token": "0" * 64}, {}),
        ({**form, "csrf_token": foreign_token}, {}),
        (form, {"Origin": "https://evil.example"}),
    ]
    for data, headers in attempts:
        r = agent.http.post("/authorize", data=data, headers=headers)
        assert r.status_code == 403, r.text
        assert "location" not in r.headers and "code=" not in r.text
        assert_page_headers(r)
    assert grants_of(env, client_id) == []
    # The genuine form still works.
    r = agent.http.post("/authorize", data=form, headers={"Origin": world.url})
    assert exchange(world, client_id, code_from(r), verifier).status_code == 200


@pytest.mark.req("OAUTH-CONSENT-SCOPES", "SEED-OAUTH-CONSENT")
def test_deny_redirects_with_access_denied_state_and_iss(env: Env) -> None:
    world = env.world
    client_id = register(world, client_name="Denied client")["client_id"]
    state = "opaque/state+with spaces&=ü"
    for decision, scopes in (("deny", None), ("approve", [])):  # Deny, or Allow nothing
        page, _ = consent_page(env, "tech", client_id, state=state)
        form = {**hidden_fields(page.text), "decision": decision}
        form["scope_choice"] = scopes if scopes is not None else ["ai:read"]
        r = env.agent("tech").http.post("/authorize", data=form)
        assert r.status_code == 303
        location = httpx.URL(r.headers["location"])
        assert str(location).startswith(REDIRECT + "?")
        assert location.params["error"] == "access_denied"
        assert location.params["state"] == state
        assert location.params["iss"] == world.url
        assert "code" not in location.params
    assert grants_of(env, client_id) == []


# 7. Per-grant rate limits ------------------------------------------------------------------


@pytest.mark.req("SEED-GRANT-RATELIMIT")
def test_per_grant_rate_limit_is_429_audited_and_survives_rotation(limited: Env) -> None:
    env = limited
    conn = connect_client(env, "tech", scope="ai:read", name="Busy client")
    for remaining in (2, 1, 0):
        r = call(env, conn.access)
        assert r.status_code == 200, r.text
        assert r.headers["ratelimit-limit"] == "3"
        assert r.headers["ratelimit-remaining"] == str(remaining)
    r = call(env, conn.access)
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["ratelimit-policy"] == "3;w=60"
    assert r.headers["ratelimit-remaining"] == "0"
    assert r.json()["error"]["data"] == {"error": "rate_limited"}

    # Rotation does not reset the bucket: it is keyed by the grant, not the token.
    rotated = refresh(env.world, conn.client_id, conn.refresh)
    assert rotated.status_code == 200
    r = call(env, rotated.json()["access_token"])
    assert r.status_code == 429 and "retry-after" in r.headers

    entries = audit(env, "outcome = 'rate_limited' AND credential_id = :g", g=conn.grant_id)
    assert len(entries) == 2
    for entry in entries:
        assert entry.deny_reason == f"rate_limit:grant:{conn.grant_id}"
        assert entry.decision == "denied" and entry.action == "list_devices"
        assert entry.client_id == conn.client_id
    # Another grant of the same person has its own bucket.
    other = connect_client(env, "tech", scope="ai:read", name="Quiet client")
    assert call(env, other.access).status_code == 200

