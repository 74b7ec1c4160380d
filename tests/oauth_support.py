"""Helpers for OAuth tests: a live server with users, and the browser steps done over HTTP.

``OAuthWorld`` is a real uvicorn server on a port with one tenant (demo data), a technician
and a read-only user. ``HumanAgent`` plays the human in a browser: it follows /authorize,
signs in through the login form, and submits the consent form, returning the redirect the
client would receive. Nothing here mocks the server.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from breeze_mcp.app import create_app
from breeze_mcp.auth.accounts import Tenant, create_tenant, create_user
from breeze_mcp.config import Settings, load_settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.tools.demo import seed_demo_data
from tests.support import LiveServer, ProvisionedDatabase, free_port

PASSWORD = "a-Strong-passphrase-42"
ACCEPT = "application/json, text/event-stream"
REDIRECT = "http://127.0.0.1:7777/cb"  # the redirect URI ``register`` registers by default
AI_SCOPES = ["ai:read", "ai:write", "ai:execute"]


@dataclass
class OAuthWorld:
    url: str
    settings: Settings
    test_db: ProvisionedDatabase
    tenant: Tenant
    tech_email: str  # technician: may grant ai:read, ai:write, ai:execute
    reader_email: str  # readonly: may grant ai:read only
    admin_key: str  # an API key created by the tenant's owner (admin endpoints)

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def owner_sql(self, sql: str, **params: Any) -> list[Any]:
        """Run SQL as the schema owner inside this tenant (RLS still applies)."""
        engine = sa.create_engine(sqlalchemy_url(self.test_db.owner_url))
        try:
            with engine.begin() as conn:
                conn.execute(sa.text("SELECT set_config('breeze.tenant_id', :t, true)"),
                             {"t": str(self.tenant.id)})
                result = conn.execute(sa.text(sql), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()


@contextmanager
def oauth_world(test_db: ProvisionedDatabase, state_dir: Path, *, scheme: str = "http",
                **overrides: Any) -> Iterator[OAuthWorld]:
    """A fresh tenant and users, and a live server; ``overrides`` go to Settings.

    ``scheme="https"`` sets an https public URL (as behind a TLS-terminating proxy) while the
    server itself still answers plain HTTP on the port."""
    from breeze_mcp.auth.api_keys import create_api_key

    tag = uuid.uuid4().hex[:6]

    async def build() -> tuple[Tenant, str, str, str]:
        db = Database(test_db.runtime_url, pool_size=1)
        try:
            tenant = await create_tenant(db, f"OAuth {tag}", slug=f"oauth-{tag}")
            await seed_demo_data(db, tenant.id)
            owner = await create_user(db, tenant, email=f"owner-{tag}@example.com",
                                      password=PASSWORD, role="owner")
            tech = await create_user(db, tenant, email=f"tech-{tag}@example.com",
                                     password=PASSWORD, role="technician")
            reader = await create_user(db, tenant, email=f"reader-{tag}@example.com",
                                       password=PASSWORD, role="readonly")
            _, key = await create_api_key(db, tenant, name="admin", scopes="ai:read,ai:write",
                                          creator_email=owner.email)
            return tenant, tech.email, reader.email, key
        finally:
            await db.dispose()

    tenant, tech, reader, key = asyncio.run(build())
    port = free_port()
    settings = load_settings(state_dir=state_dir, database_url=test_db.runtime_url,
                             public_url=f"{scheme}://127.0.0.1:{port}", **overrides)
    with LiveServer(create_app(settings, test_db.runtime_url), port=port) as server:
        yield OAuthWorld(server.url, settings, test_db, tenant, tech, reader, key)


def module_world(test_db: ProvisionedDatabase, factory: pytest.TempPathFactory,
                 **overrides: Any) -> Iterator[OAuthWorld]:
    """``oauth_world`` in a fresh state directory, for a module-scoped fixture to yield from."""
    with oauth_world(test_db, Path(factory.mktemp("state")), **overrides) as world:
        yield world


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def register(world: OAuthWorld, **body: Any) -> dict[str, Any]:
    payload = {"client_name": "Test client", "redirect_uris": [REDIRECT],
               "token_endpoint_auth_method": "none",
               "grant_types": ["authorization_code", "refresh_token"], **body}
    r = httpx.post(f"{world.url}/register", json=payload, timeout=30)
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


def _hidden_fields(page: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page):
        fields[html.unescape(name)] = html.unescape(value)
    return fields


class HumanAgent:
    """A person with a browser (cookie jar), driven over plain HTTP."""

    def __init__(self, world: OAuthWorld, email: str, password: str = PASSWORD) -> None:
        self.world = world
        self.email = email
        self.password = password
        self.http = httpx.Client(base_url=world.url, timeout=30, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def open_authorize(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def authorize(self, url: str, *, scopes: list[str] | None = None,
                  decision: str = "approve") -> httpx.Response:
        """Follow an authorization URL through sign-in and consent; return the final
        response (normally the 303 to the client's redirect URI)."""
        r = self.http.get(url)
        if r.status_code == 200 and 'name="password"' in r.text:
            fields = _hidden_fields(r.text)
            r = self.http.post("/login", data={**fields, "email": self.email,
                                               "password": self.password})
            assert r.status_code == 303, r.text
            r = self.http.get(r.headers["location"])
        if r.status_code != 200 or "scope_choice" not in r.text:
            return r
        fields = _hidden_fields(r.text)
        offered = re.findall(r'name="scope_choice" value="([^"]+)"\s+checked', r.text)
        fields["scope_choice"] = scopes if scopes is not None else offered
        fields["decision"] = decision
        return self.http.post("/authorize", data=fields)


def authorize_url(world: OAuthWorld, client_id: str | None, challenge: str | None,
                  **params: str | None) -> str:
    """An /authorize URL for ``client_id`` with every parameter a good request carries;
    ``params`` override them, and a parameter given as None is left out."""
    query: dict[str, str | None] = {
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
        "code_challenge": challenge, "code_challenge_method": "S256", "state": "st-1",
        "scope": " ".join(AI_SCOPES), "resource": world.mcp_url, **params,
    }
    kept = {k: v for k, v in query.items() if v is not None}
    return str(httpx.URL(f"{world.url}/authorize", params=kept))


def code_from(response: httpx.Response) -> str:
    assert response.status_code in (302, 303), response.text
    location = httpx.URL(response.headers["location"])
    assert "code" in location.params, str(location)
    return location.params["code"]


def no_store(r: httpx.Response) -> httpx.Response:
    """Every /token (and /register) answer, success or error, must not be cached."""
    assert "no-store" in r.headers.get("cache-control", ""), (r.status_code, r.headers)
    return r


def oauth_error(r: httpx.Response, status: int, error: str) -> dict[str, Any]:
    """An OAuth error answer (RFC 6749 5.2): the status, the code and a description."""
    assert r.status_code == status, (r.status_code, r.text)
    body: dict[str, Any] = r.json()
    assert body["error"] == error, body
    assert isinstance(body.get("error_description"), str), body
    return body


def exchange(world: OAuthWorld, client_id: str, code: str, verifier: str, *,
             redirect_uri: str = REDIRECT, **extra: str) -> httpx.Response:
    """POST /token with ``grant_type=authorization_code``; the answer is checked uncacheable."""
    return no_store(httpx.post(f"{world.url}/token", data={
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
        "redirect_uri": redirect_uri, "client_id": client_id, **extra}, timeout=30))


def refresh(world: OAuthWorld, client_id: str, refresh_token: str,
            **extra: str) -> httpx.Response:
    """POST /token with ``grant_type=refresh_token``; the answer is checked uncacheable."""
    return no_store(httpx.post(f"{world.url}/token", data={
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "client_id": client_id, **extra}, timeout=30))


def connect(world: OAuthWorld, email: str | None = None,
            scopes: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """Register a public client and run the whole flow; returns (client_id, token body)."""
    client = register(world)
    verifier, challenge = pkce_pair()
    human = HumanAgent(world, email or world.tech_email)
    try:
        code = code_from(human.authorize(authorize_url(world, client["client_id"], challenge),
                                         scopes=scopes))
    finally:
        human.close()
    r = exchange(world, client["client_id"], code, verifier)
    assert r.status_code == 200, r.text
    return client["client_id"], r.json()


def mcp_call(world: OAuthWorld, token: str, method: str,
             params: dict[str, Any] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    return httpx.post(world.mcp_url, json=body, timeout=30, headers={
        "Authorization": f"Bearer {token}", "Accept": ACCEPT,
        "MCP-Protocol-Version": "2025-06-18"})
