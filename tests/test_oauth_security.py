"""OAuth 2.1 security properties, over HTTP against a real uvicorn server.

Discovery and challenges, Dynamic Client Registration (the real clients' bodies, the refused
shapes, the rate limit, the global cap and expiry), PKCE, exact redirect URI matching, the
authorization response (``state`` and ``iss``), single-use codes, RFC 8707 ``resource``
binding (with the Breeze alias regression), ``invalid_client``, refresh rotation (concurrent
refreshes, the bounded grace, reuse detection, narrowing) and expiry. The rules are the
checklist in ``shared/reference/oauth-and-mcp.md``; nothing here mocks the server.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from breeze_mcp.auth.oauth import normalize_resource
from breeze_mcp.auth.tokens import digest
from breeze_mcp.config import load_settings
from breeze_mcp.tools import default_registry
from tests.oauth_support import (
    AI_SCOPES,
    REDIRECT,
    HumanAgent,
    OAuthWorld,
    authorize_url,
    exchange,
    mcp_call,
    module_world,
    no_store,
    oauth_error,
    pkce_pair,
    refresh,
    register,
)
from tests.support import ProvisionedDatabase

CLAUDE_AI = "https://claude.ai/api/mcp/auth_callback"
CLAUDE_COM = "https://claude.com/api/mcp/auth_callback"
CURSOR_URIS = [
    "cursor://anysphere.cursor-mcp/oauth/callback",
    "http://localhost:8787/callback",
    "https://www.cursor.com/agents/mcp/oauth/callback",
]
BOTH_GRANTS = ["authorization_code", "refresh_token"]


# Worlds -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[OAuthWorld]:
    # Many registrations from one address in this module: lift the per-source limit here (the
    # limit itself is tested in its own world).
    yield from module_world(test_db, tmp_path_factory, dcr_rate_limit="1000/minute")


@pytest.fixture(scope="module")
def human(world: OAuthWorld) -> Iterator[HumanAgent]:
    """The technician, signed in once for the whole module (sign-ins are rate-limited)."""
    agent = HumanAgent(world, world.tech_email)
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture(scope="module")
def limited_world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory, dcr_rate_limit="3/minute")


@pytest.fixture(scope="module")
def capped_world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory, dcr_max_pending=10)


@pytest.fixture(scope="module")
def short_grace_world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory, refresh_grace=1)


# Helpers ------------------------------------------------------------------------------------


def token_post(world: OAuthWorld, data: dict[str, str], **kw: Any) -> httpx.Response:
    return no_store(httpx.post(f"{world.url}/token", data=data, timeout=30, **kw))


def redirect_params(r: httpx.Response, redirect_uri: str = REDIRECT) -> dict[str, str]:
    """The parameters of an authorization response sent to ``redirect_uri``."""
    assert r.status_code in (302, 303), (r.status_code, r.text[:500])
    base, _, query = r.headers["location"].partition("?")
    assert base == redirect_uri, r.headers["location"]
    parsed = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    assert all(len(v) == 1 for v in parsed.values()), parsed
    return {k: v[0] for k, v in parsed.items()}


def assert_error_page(r: httpx.Response) -> None:
    """A bad client or redirect URI: an HTML page, never a redirect."""
    assert r.status_code == 400, (r.status_code, r.headers.get("location"))
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")


def approve(world: OAuthWorld, human: HumanAgent, client_id: str, *,
            redirect_uri: str = REDIRECT, scopes: list[str] | None = None,
            **params: str | None) -> tuple[str, str, dict[str, str]]:
    """The human approves; returns (code, verifier, all response parameters)."""
    verifier, challenge = pkce_pair()
    r = human.authorize(authorize_url(world, client_id, challenge, redirect_uri=redirect_uri,
                                  **params), scopes=scopes)
    got = redirect_params(r, redirect_uri)
    assert "code" in got, got
    return got["code"], verifier, got


def connected(world: OAuthWorld, human: HumanAgent, *, scopes: list[str] | None = None,
              **body: Any) -> tuple[str, dict[str, Any]]:
    """Register a public client and complete the flow: (client_id, token response)."""
    client_id = register(world, **body)["client_id"]
    code, verifier, _ = approve(world, human, client_id, scopes=scopes)
    r = exchange(world, client_id, code, verifier)
    assert r.status_code == 200, r.text
    return client_id, r.json()


def approved_client(world: OAuthWorld, human: HumanAgent) -> str:
    """A client ``human`` has approved (a live grant), so that errors before approval still
    go back to its redirect URI when ``human`` is signed in (HARD-NO-OPEN-REDIRECT)."""
    client_id, _ = connected(world, human)
    return client_id


def challenge_params(r: httpx.Response) -> dict[str, str]:
    header = r.headers["www-authenticate"]
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def client_count(world: OAuthWorld) -> int:
    return int(world.owner_sql("SELECT count(*) FROM oauth_clients")[0][0])


def grant_of(world: OAuthWorld, access_token: str) -> uuid.UUID:
    rows = world.owner_sql("SELECT grant_id FROM oauth_access_tokens WHERE digest = :d",
                           d=digest(access_token))
    assert len(rows) == 1
    grant_id: uuid.UUID = rows[0][0]
    return grant_id


def grant_revoked(world: OAuthWorld, grant_id: uuid.UUID) -> bool:
    rows = world.owner_sql("SELECT revoked_at FROM oauth_grants WHERE id = :g", g=grant_id)
    assert len(rows) == 1
    return rows[0][0] is not None


def refresh_rows(world: OAuthWorld, grant_id: uuid.UUID) -> int:
    return int(world.owner_sql("SELECT count(*) FROM oauth_refresh_tokens WHERE grant_id = :g",
                               g=grant_id)[0][0])


def live_refresh_digests(world: OAuthWorld, grant_id: uuid.UUID) -> list[bytes]:
    return [bytes(r[0]) for r in world.owner_sql(
        "SELECT digest FROM oauth_refresh_tokens WHERE grant_id = :g AND used_at IS NULL "
        "AND revoked_at IS NULL", g=grant_id)]


def audit_actions(world: OAuthWorld, grant_id: uuid.UUID) -> list[str]:
    return [r[0] for r in world.owner_sql(
        "SELECT action FROM audit_log WHERE credential_id = :g ORDER BY id", g=str(grant_id))]


def mcp_status(world: OAuthWorld, access_token: str) -> int:
    return mcp_call(world, access_token, "ping").status_code


def assert_grant_dead(world: OAuthWorld, client_id: str, grant_id: uuid.UUID,
                      access_tokens: list[str], refresh_tokens: list[str]) -> None:
    assert grant_revoked(world, grant_id)
    for access in access_tokens:
        r = mcp_call(world, access, "ping")
        assert r.status_code == 401, r.text
        assert challenge_params(r)["error"] == "invalid_token"
    for token in refresh_tokens:
        oauth_error(refresh(world, client_id, token), 400, "invalid_grant")


# 1. Discovery -------------------------------------------------------------------------------


@pytest.mark.req("OAUTH-METADATA")
def test_protected_resource_metadata_at_both_locations(world: OAuthWorld) -> None:
    for path in ("/.well-known/oauth-protected-resource/mcp",
                 "/.well-known/oauth-protected-resource"):
        r = httpx.get(world.url + path, timeout=30)
        assert r.status_code == 200, path
        doc = r.json()
        assert doc["resource"] == f"{world.url}/mcp"
        assert doc["authorization_servers"] == [world.url]
        assert doc["scopes_supported"] == AI_SCOPES  # no offline_access on the resource
        assert doc["bearer_methods_supported"] == ["header"]


@pytest.mark.req("OAUTH-METADATA", "OAUTH-AUTHZ-RESPONSE")
def test_authorization_server_metadata_and_one_issuer_everywhere(
        world: OAuthWorld, human: HumanAgent) -> None:
    docs = []
    for path in ("/.well-known/oauth-authorization-server",
                 "/.well-known/openid-configuration"):
        r = httpx.get(world.url + path, timeout=30)
        assert r.status_code == 200, path
        doc = r.json()
        issuer = doc["issuer"]
        assert f'"issuer":"{issuer}"' in r.text.replace(" ", "")  # verbatim in the bytes
        assert doc["authorization_endpoint"] == f"{issuer}/authorize"
        assert doc["token_endpoint"] == f"{issuer}/token"
        assert doc["registration_endpoint"] == f"{issuer}/register"
        assert doc["revocation_endpoint"] == f"{issuer}/revoke"
        assert doc["response_types_supported"] == ["code"]
        assert doc["grant_types_supported"] == BOTH_GRANTS
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert "none" in doc["token_endpoint_auth_methods_supported"]
        assert "client_secret_post" in doc["token_endpoint_auth_methods_supported"]
        assert set(doc["scopes_supported"]) == {*AI_SCOPES, "offline_access"}
        assert doc["authorization_response_iss_parameter_supported"] is True
        docs.append(doc)
    assert docs[0] == docs[1]

    issuer = docs[0]["issuer"]
    prm = httpx.get(f"{world.url}/.well-known/oauth-protected-resource/mcp", timeout=30).json()
    client_id = register(world)["client_id"]
    _, _, response = approve(world, human, client_id)
    # Byte-identical: PRM, AS metadata, the openid alias and the authorization response.
    assert prm["authorization_servers"] == [issuer]
    assert response["iss"] == issuer
    assert issuer == world.settings.issuer == world.url


@pytest.mark.req("OAUTH-METADATA")
def test_mcp_challenges_carry_resource_metadata_and_scope(world: OAuthWorld) -> None:
    prm_url = f"{world.url}/.well-known/oauth-protected-resource/mcp"
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream"}

    r = httpx.post(world.mcp_url, json=body, headers=headers, timeout=30)
    assert r.status_code == 401
    params = challenge_params(r)
    assert params["resource_metadata"] == prm_url
    assert params["scope"].split() == AI_SCOPES
    assert "error" not in params  # no credential was sent (RFC 6750 §3.1)
    assert httpx.get(params["resource_metadata"], timeout=30).status_code == 200

    for bad in ("bza_not-a-token", "garbage", f"bza_{uuid.uuid4().hex}_{'A' * 43}"):
        r = httpx.post(world.mcp_url, json=body, timeout=30,
                       headers={**headers, "Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad
        params = challenge_params(r)
        assert params["error"] == "invalid_token"
        assert params["resource_metadata"] == prm_url
        assert params["scope"]


@pytest.mark.req("OAUTH-METADATA", "OAUTH-RESOURCE")
def test_only_an_access_token_in_the_header_is_accepted(world: OAuthWorld,
                                                        human: HumanAgent) -> None:
    _, tokens = connected(world, human)
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    r = httpx.post(f"{world.mcp_url}?access_token={tokens['access_token']}", json=body,
                   headers={"Accept": "application/json"}, timeout=30)
    assert r.status_code == 401  # never from the query string
    r = mcp_call(world, tokens["refresh_token"], "ping")
    assert r.status_code == 401  # a refresh token is not an access token
    assert challenge_params(r)["error"] == "invalid_token"
    assert mcp_status(world, tokens["access_token"]) == 200


# 2. Dynamic Client Registration over HTTP ---------------------------------------------------

ACCEPTED_BODIES = [
    pytest.param({"client_name": "Claude", "redirect_uris": [CLAUDE_AI],
                  "grant_types": BOTH_GRANTS, "response_types": ["code"],
                  "token_endpoint_auth_method": "none", "scope": "claudeai"},
                 id="claude-ai-old-public"),
    pytest.param({"client_name": "Claude", "redirect_uris": [CLAUDE_AI],
                  "grant_types": BOTH_GRANTS, "response_types": ["code"],
                  "token_endpoint_auth_method": "client_secret_post"},
                 id="claude-ai-new-secret-post"),
    pytest.param({"client_name": "Claude", "redirect_uris": [CLAUDE_COM],
                  "grant_types": BOTH_GRANTS, "response_types": ["code"],
                  "token_endpoint_auth_method": "client_secret_post"},
                 id="claude-com-secret-post"),
    pytest.param({"client_name": "ChatGPT",
                  "redirect_uris": ["https://chatgpt.com/connector/oauth/Zq3vYx81_kLm"],
                  "grant_types": BOTH_GRANTS, "response_types": ["code"],
                  "token_endpoint_auth_method": "none", "scope": "ai:read ai:write openid"},
                 id="chatgpt"),
    pytest.param({"client_name": "Cursor", "redirect_uris": CURSOR_URIS,
                  "grant_types": BOTH_GRANTS, "response_types": ["code"],
                  "token_endpoint_auth_method": "none"},
                 id="cursor-three-uris"),
    pytest.param({"client_name": "Claude Code (breeze)",
                  "redirect_uris": ["http://localhost:53682/callback"],
                  "grant_types": BOTH_GRANTS, "response_types": ["code"],
                  "token_endpoint_auth_method": "none",
                  "scope": "ai:read ai:write ai:execute offline_access",
                  "application_type": "native"},
                 id="loopback-localhost"),
    pytest.param({"client_name": "MCP SDK client",
                  "redirect_uris": ["http://127.0.0.1:49152/callback", "http://[::1]/callback"],
                  "grant_types": BOTH_GRANTS, "response_types": ["code"],
                  "token_endpoint_auth_method": "client_secret_post"},
                 id="loopback-ip-secret-post"),
]


@pytest.mark.req("OAUTH-DCR-ACCEPT")
@pytest.mark.parametrize("body", ACCEPTED_BODIES)
def test_registration_accepts_real_client_bodies(world: OAuthWorld,
                                                 body: dict[str, Any]) -> None:
    before = client_count(world)
    r = no_store(httpx.post(f"{world.url}/register", json=body, timeout=30))
    assert r.status_code == 201, r.text
    got = r.json()
    assert isinstance(got["client_id"], str) and got["client_id"]
    assert abs(got["client_id_issued_at"] - time.time()) < 300
    assert got["redirect_uris"] == body["redirect_uris"]
    assert got["token_endpoint_auth_method"] == body["token_endpoint_auth_method"]
    assert got["grant_types"] == BOTH_GRANTS
    assert got["response_types"] == ["code"]
    assert got["client_name"] == body["client_name"]
    if body["token_endpoint_auth_method"] == "client_secret_post":
        assert isinstance(got["client_secret"], str) and len(got["client_secret"]) >= 32
        assert got["client_secret_expires_at"] == 0
    else:
        assert "client_secret" not in got
    for dropped in ("claudeai", "openid"):  # unknown scopes are dropped, not fatal
        assert dropped not in got.get("scope", "")
    assert client_count(world) == before + 1
    stored = world.owner_sql("SELECT redirect_uris, token_endpoint_auth_method "
                             "FROM oauth_clients WHERE client_id = :c", c=got["client_id"])
    assert [list(stored[0][0]), stored[0][1]] == [body["redirect_uris"],
                                                  body["token_endpoint_auth_method"]]


@pytest.mark.req("OAUTH-DCR-ACCEPT", "OAUTH-INVALID-CLIENT")
def test_client_secret_post_client_authenticates_with_its_secret(
        world: OAuthWorld, human: HumanAgent) -> None:
    client = register(world, client_name="Claude", redirect_uris=[CLAUDE_COM],
                      token_endpoint_auth_method="client_secret_post")
    client_id, secret = client["client_id"], client["client_secret"]
    code, verifier, _ = approve(world, human, client_id, redirect_uri=CLAUDE_COM)

    oauth_error(exchange(world, client_id, code, verifier, redirect_uri=CLAUDE_COM),
                401, "invalid_client")  # no secret
    oauth_error(exchange(world, client_id, code, verifier, redirect_uri=CLAUDE_COM,
                            client_secret=secret + "x"), 401, "invalid_client")
    r = exchange(world, client_id, code, verifier, redirect_uri=CLAUDE_COM,
                    client_secret=secret)
    assert r.status_code == 200, r.text
    tokens = r.json()

    oauth_error(refresh(world, client_id, tokens["refresh_token"],
                           client_secret="bzx_wrong"), 401, "invalid_client")
    r = refresh(world, client_id, tokens["refresh_token"], client_secret=secret)
    assert r.status_code == 200, r.text
    assert mcp_status(world, r.json()["access_token"]) == 200


REFUSED_BODIES = [
    pytest.param({"redirect_uris": ["javascript:alert(document.cookie)"]},
                 "invalid_redirect_uri", id="javascript-scheme"),
    pytest.param({"redirect_uris": ["data:text/html;base64,PHNjcmlwdD4="]},
                 "invalid_redirect_uri", id="data-scheme"),
    pytest.param({"redirect_uris": ["file:///etc/passwd"]},
                 "invalid_redirect_uri", id="file-scheme"),
    pytest.param({"redirect_uris": ["https://app.example.com/cb#frag"]},
                 "invalid_redirect_uri", id="fragment"),
    pytest.param({"redirect_uris": ["https://claude.ai@evil.example/cb"]},
                 "invalid_redirect_uri", id="userinfo"),
    pytest.param({"redirect_uris": ["http://app.example.com/cb"]},
                 "invalid_redirect_uri", id="http-not-loopback"),
    pytest.param({"redirect_uris": [f"https://app.example.com/cb{i}" for i in range(11)]},
                 "invalid_redirect_uri", id="eleven-uris"),
    pytest.param({"redirect_uris": ["https://app.example.com/"
                                    + "a" * (2049 - len("https://app.example.com/"))]},
                 "invalid_redirect_uri", id="uri-2049-chars"),
    pytest.param({"redirect_uris": ["myapp://oauth/callback"]},
                 "invalid_redirect_uri", id="unlisted-private-scheme"),
    pytest.param({"redirect_uris": [*CURSOR_URIS, "javascript:alert(1)"]},
                 "invalid_redirect_uri", id="one-bad-uri-fails-all"),
    pytest.param({"redirect_uris": [REDIRECT], "grant_types": ["implicit"],
                  "response_types": ["token"]},
                 "invalid_client_metadata", id="implicit-grant"),
    pytest.param({"redirect_uris": [REDIRECT], "response_types": ["token"]},
                 "invalid_client_metadata", id="token-response-type"),
]


@pytest.mark.req("OAUTH-DCR-REFUSE")
@pytest.mark.parametrize(("body", "error"), REFUSED_BODIES)
def test_registration_refuses_dangerous_shapes(world: OAuthWorld, body: dict[str, Any],
                                               error: str) -> None:
    before = client_count(world)
    payload = {"client_name": "Evil", "token_endpoint_auth_method": "none", **body}
    r = no_store(httpx.post(f"{world.url}/register", json=payload, timeout=30))
    got = oauth_error(r, 400, error)
    assert got["error_description"]
    assert client_count(world) == before


@pytest.mark.req("OAUTH-DCR-REFUSE")
@pytest.mark.parametrize("raw", [
    pytest.param(json.dumps({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
                             "client_name": "x", "padding": "a" * (64 * 1024)}).encode(),
                 id="body-over-64KiB"),
    pytest.param(b"{not json", id="not-json"),
    pytest.param(b'["https://app.example.com/cb"]', id="not-an-object"),
])
def test_registration_refuses_bad_bodies(world: OAuthWorld, raw: bytes) -> None:
    before = client_count(world)
    r = httpx.post(f"{world.url}/register", content=raw, timeout=30,
                   headers={"Content-Type": "application/json"})
    oauth_error(r, 400, "invalid_client_metadata")
    assert client_count(world) == before


@pytest.mark.req("OAUTH-DCR-LIMITS")
def test_registration_is_rate_limited_per_source(limited_world: OAuthWorld) -> None:
    w = limited_world
    for _ in range(3):
        register(w)
    before = client_count(w)
    r = httpx.post(f"{w.url}/register", timeout=30, json={
        "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"})
    oauth_error(r, 429, "temporarily_unavailable")
    assert r.headers["content-type"].startswith("application/json")
    assert int(r.headers["retry-after"]) >= 1
    assert client_count(w) == before


@pytest.mark.req("OAUTH-DCR-LIMITS")
def test_pending_registrations_are_capped_globally(capped_world: OAuthWorld) -> None:
    w = capped_world
    # oauth_clients is global: park every other pending registration (restored afterwards)
    # so that exactly this test's ten count against the cap of ten.
    saved = w.owner_sql("SELECT client_id, expires_at FROM oauth_clients "
                        "WHERE expires_at IS NOT NULL")
    parked = [row[0] for row in saved]
    mine: list[str] = []
    w.owner_sql("UPDATE oauth_clients SET expires_at = NULL "
                "WHERE client_id = ANY(CAST(:ids AS text[]))", ids=parked)
    try:
        for _ in range(10):
            mine.append(register(w)["client_id"])
        before = client_count(w)
        r = httpx.post(f"{w.url}/register", timeout=30, json={
            "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"})
        oauth_error(r, 503, "temporarily_unavailable")
        assert client_count(w) == before
    finally:
        w.owner_sql("DELETE FROM oauth_clients WHERE client_id = ANY(CAST(:ids AS text[]))",
                    ids=mine)
        w.owner_sql(
            "UPDATE oauth_clients AS c SET expires_at = v.e FROM unnest("
            "CAST(:ids AS text[]), CAST(:exps AS timestamptz[])) AS v(id, e) "
            "WHERE c.client_id = v.id",
            ids=parked, exps=[row[1] for row in saved])


@pytest.mark.req("OAUTH-DCR-LIMITS", "OAUTH-INVALID-CLIENT", "OAUTH-AUTHZ-RESPONSE")
def test_unused_registration_expires(world: OAuthWorld) -> None:
    client_id = register(world)["client_id"]
    pending = world.owner_sql("SELECT expires_at FROM oauth_clients WHERE client_id = :c",
                              c=client_id)[0][0]
    assert pending is not None and pending > dt.datetime.now(dt.UTC)  # pending, not forever
    world.owner_sql("UPDATE oauth_clients SET expires_at = now() - interval '1 second' "
                    "WHERE client_id = :c", c=client_id)

    _, challenge = pkce_pair()
    assert_error_page(httpx.get(authorize_url(world, client_id, challenge), timeout=30))
    oauth_error(token_post(world, {"grant_type": "authorization_code", "client_id": client_id,
                                   "code": "bzc_x", "code_verifier": "v" * 43,
                                   "redirect_uri": REDIRECT}), 401, "invalid_client")

    register(world)  # the next registration forgets expired ones
    assert world.owner_sql("SELECT count(*) FROM oauth_clients WHERE client_id = :c",
                           c=client_id)[0][0] == 0


@pytest.mark.req("OAUTH-DCR-LIMITS")
def test_authorized_client_no_longer_expires(world: OAuthWorld, human: HumanAgent) -> None:
    client_id, _ = connected(world, human)
    assert world.owner_sql("SELECT expires_at FROM oauth_clients WHERE client_id = :c",
                           c=client_id)[0][0] is None


# 3. PKCE ------------------------------------------------------------------------------------


@pytest.mark.req("OAUTH-PKCE", "OAUTH-AUTHZ-RESPONSE")
@pytest.mark.parametrize("params", [
    pytest.param({"code_challenge": None}, id="missing-challenge"),
    pytest.param({"code_challenge_method": "plain"}, id="plain"),
    pytest.param({"code_challenge_method": None}, id="missing-method"),
    pytest.param({"code_challenge_method": "s256"}, id="lower-case-method"),
    pytest.param({"code_challenge": "too-short"}, id="malformed-challenge"),
])
def test_authorize_requires_pkce_s256(world: OAuthWorld, human: HumanAgent,
                                      params: dict[str, str | None]) -> None:
    client_id = approved_client(world, human)
    verifier, challenge = pkce_pair()
    if params.get("code_challenge_method") == "plain":
        challenge = verifier
    state = "pkce state/1"
    r = human.http.get(authorize_url(world, client_id, challenge, state=state, **params))
    got = redirect_params(r)
    assert got["error"] == "invalid_request", got
    assert got["state"] == state
    assert got["iss"] == world.settings.issuer
    assert "code" not in got


@pytest.mark.req("OAUTH-PKCE")
def test_token_requires_the_right_verifier(world: OAuthWorld, human: HumanAgent) -> None:
    client_id = register(world)["client_id"]
    code, _, _ = approve(world, human, client_id)
    wrong, _ = pkce_pair()
    oauth_error(exchange(world, client_id, code, wrong), 400, "invalid_grant")

    code, verifier, _ = approve(world, human, client_id)
    r = no_store(httpx.post(f"{world.url}/token", timeout=30, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "client_id": client_id}))
    oauth_error(r, 400, "invalid_request")

    code, verifier, _ = approve(world, human, client_id)
    r = exchange(world, client_id, code, verifier)
    assert r.status_code == 200, r.text


# 4. Redirect URI ----------------------------------------------------------------------------


@pytest.mark.req("OAUTH-REDIRECT-MATCH", "OAUTH-AUTHZ-RESPONSE")
@pytest.mark.parametrize("presented", [
    pytest.param("https://evil.example/cb", id="unregistered"),
    pytest.param("http://127.0.0.1:7777/other", id="different-path"),
    pytest.param("http://localhost:7777/cb", id="other-loopback-spelling"),
    pytest.param("http://127.0.0.1:7777/cb/", id="trailing-slash"),
    pytest.param("http://127.0.0.1:7777/cb?x=1", id="extra-query"),
    pytest.param("https://app.example.com:8443/cb", id="https-other-port"),
    pytest.param("https://app.example.com/cb/../cb", id="dot-segments"),
    pytest.param("HTTPS://APP.EXAMPLE.COM/cb", id="case-folded"),
    pytest.param(None, id="missing"),
])
def test_bad_redirect_uri_is_an_error_page_never_a_redirect(
        world: OAuthWorld, human: HumanAgent, presented: str | None) -> None:
    client_id = register(world, redirect_uris=[REDIRECT, "https://app.example.com/cb"]
                          )["client_id"]
    _, challenge = pkce_pair()
    url = authorize_url(world, client_id, challenge, redirect_uri=presented)
    assert_error_page(httpx.get(url, timeout=30))  # not signed in
    assert_error_page(human.open_authorize(url))  # signed in
    # Even when everything else is wrong too (an error that would otherwise be redirected).
    assert_error_page(httpx.get(authorize_url(world, client_id, None, redirect_uri=presented,
                                          resource="https://evil.example/mcp"), timeout=30))


@pytest.mark.req("OAUTH-REDIRECT-MATCH", "OAUTH-AUTHZ-RESPONSE")
@pytest.mark.parametrize("client_id", ["bzi_unknown", "", None])
def test_unknown_client_is_an_error_page(world: OAuthWorld, human: HumanAgent,
                                         client_id: str | None) -> None:
    _, challenge = pkce_pair()
    url = authorize_url(world, client_id, challenge)
    assert_error_page(httpx.get(url, timeout=30))
    assert_error_page(human.open_authorize(url))


@pytest.mark.req("OAUTH-REDIRECT-MATCH")
def test_loopback_redirect_matches_any_port(world: OAuthWorld, human: HumanAgent) -> None:
    client_id = register(world, redirect_uris=[REDIRECT])["client_id"]
    ephemeral = "http://127.0.0.1:61234/cb"
    code, verifier, _ = approve(world, human, client_id, redirect_uri=ephemeral)
    r = exchange(world, client_id, code, verifier, redirect_uri=ephemeral)
    assert r.status_code == 200, r.text

    # At /token the redirect_uri must be the one of the authorization request, exactly.
    code, verifier, _ = approve(world, human, client_id, redirect_uri=ephemeral)
    oauth_error(exchange(world, client_id, code, verifier, redirect_uri=REDIRECT),
                400, "invalid_grant")
    oauth_error(exchange(world, client_id, code, verifier,
                            redirect_uri="http://127.0.0.1:61235/cb"), 400, "invalid_grant")
    r = exchange(world, client_id, code, verifier, redirect_uri=ephemeral)
    assert r.status_code == 200, r.text


@pytest.mark.req("OAUTH-REDIRECT-MATCH")
def test_token_redirect_uri_must_match_the_request(world: OAuthWorld,
                                                   human: HumanAgent) -> None:
    client_id = register(world, redirect_uris=[REDIRECT, "https://app.example.com/cb"]
                         )["client_id"]
    code, verifier, _ = approve(world, human, client_id)
    oauth_error(exchange(world, client_id, code, verifier,
                            redirect_uri="https://app.example.com/cb"), 400, "invalid_grant")
    r = no_store(httpx.post(f"{world.url}/token", timeout=30, data={
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
        "client_id": client_id}))
    oauth_error(r, 400, "invalid_grant")  # missing


# 5. Authorization response ------------------------------------------------------------------

ODD_STATE = "a b ü ✓ &=x+y%20/?#;'"


@pytest.mark.req("OAUTH-AUTHZ-RESPONSE")
def test_state_is_echoed_byte_for_byte_and_iss_is_the_issuer(world: OAuthWorld,
                                                            human: HumanAgent) -> None:
    client_id = register(world)["client_id"]
    _, _, got = approve(world, human, client_id, state=ODD_STATE)
    assert got["state"] == ODD_STATE
    assert got["iss"] == world.settings.issuer
    assert set(got) == {"code", "state", "iss"}

    # No state sent: none returned.
    _, _, got = approve(world, human, client_id, state=None)
    assert "state" not in got and got["iss"] == world.settings.issuer


@pytest.mark.req("OAUTH-AUTHZ-RESPONSE")
def test_state_survives_the_sign_in(world: OAuthWorld) -> None:
    reader = HumanAgent(world, world.reader_email)  # not signed in yet
    try:
        client_id = register(world)["client_id"]
        verifier, challenge = pkce_pair()
        r = reader.authorize(authorize_url(world, client_id, challenge, state=ODD_STATE))
        got = redirect_params(r)
        assert got["state"] == ODD_STATE and got["iss"] == world.settings.issuer
        r = exchange(world, client_id, got["code"], verifier)
        assert r.status_code == 200, r.text
        assert r.json()["scope"] == "ai:read"  # never more than the role allows
    finally:
        reader.close()


@pytest.mark.req("OAUTH-AUTHZ-RESPONSE")
def test_long_state_within_the_limit_survives_the_sign_in(world: OAuthWorld) -> None:
    reader = HumanAgent(world, world.reader_email)  # not signed in yet
    try:
        client_id = register(world)["client_id"]
        _, challenge = pkce_pair()
        state = "ü" * 700  # 700 characters: accepted by /authorize
        got = redirect_params(reader.authorize(authorize_url(world, client_id, challenge,
                                                         state=state)))
        assert got["state"] == state
    finally:
        reader.close()


@pytest.mark.req("OAUTH-AUTHZ-RESPONSE")
def test_error_responses_carry_state_and_iss(world: OAuthWorld, human: HumanAgent) -> None:
    client_id = register(world)["client_id"]
    _, challenge = pkce_pair()
    r = human.authorize(authorize_url(world, client_id, challenge, state=ODD_STATE),
                        decision="deny")
    got = redirect_params(r)
    assert got["error"] == "access_denied"
    assert got["state"] == ODD_STATE and got["iss"] == world.settings.issuer

    r = human.http.get(authorize_url(world, approved_client(world, human), challenge,
                                 state=ODD_STATE, response_type="token"))
    got = redirect_params(r)
    assert got["error"] == "unsupported_response_type"
    assert got["state"] == ODD_STATE and got["iss"] == world.settings.issuer


# 6. Code replay -----------------------------------------------------------------------------


@pytest.mark.req("OAUTH-CODE-REPLAY")
def test_code_replay_revokes_the_grant(world: OAuthWorld, human: HumanAgent) -> None:
    client_id = register(world)["client_id"]
    code, verifier, _ = approve(world, human, client_id)
    first = exchange(world, client_id, code, verifier)
    assert first.status_code == 200, first.text
    tokens = first.json()
    grant_id = grant_of(world, tokens["access_token"])
    assert mcp_status(world, tokens["access_token"]) == 200

    oauth_error(exchange(world, client_id, code, verifier), 400, "invalid_grant")
    assert_grant_dead(world, client_id, grant_id, [tokens["access_token"]],
                      [tokens["refresh_token"]])
    assert "oauth.code_replay_detected" in audit_actions(world, grant_id)
    # A third try is still refused (and harmless).
    oauth_error(exchange(world, client_id, code, verifier), 400, "invalid_grant")


@pytest.mark.req("OAUTH-CODE-REPLAY")
def test_code_of_another_client_is_refused(world: OAuthWorld, human: HumanAgent) -> None:
    client_id = register(world)["client_id"]
    other = register(world)["client_id"]
    code, verifier, _ = approve(world, human, client_id)
    oauth_error(exchange(world, other, code, verifier), 400, "invalid_grant")
    assert exchange(world, client_id, code, verifier).status_code == 200


@pytest.mark.req("OAUTH-CODE-REPLAY")
def test_concurrent_exchanges_of_one_code_yield_one_token_and_a_revoked_grant(
        world: OAuthWorld, human: HumanAgent) -> None:
    client_id = register(world)["client_id"]
    code, verifier, _ = approve(world, human, client_id)
    n = 10
    barrier = threading.Barrier(n)

    def one(_: int) -> httpx.Response:
        barrier.wait(timeout=30)
        return exchange(world, client_id, code, verifier)

    with ThreadPoolExecutor(max_workers=n) as pool:
        responses = list(pool.map(one, range(n)))
    winners = [r for r in responses if r.status_code == 200]
    assert len(winners) == 1, [r.status_code for r in responses]
    for r in responses:
        if r.status_code != 200:
            oauth_error(r, 400, "invalid_grant")
    tokens = winners[0].json()
    grant_id = grant_of(world, tokens["access_token"])
    assert_grant_dead(world, client_id, grant_id, [tokens["access_token"]],
                      [tokens["refresh_token"]])
    assert "oauth.code_replay_detected" in audit_actions(world, grant_id)


# 7. Resource (RFC 8707) ---------------------------------------------------------------------


@pytest.mark.req("OAUTH-RESOURCE", "OAUTH-AUTHZ-RESPONSE")
@pytest.mark.parametrize("resource", [
    "https://evil.example/mcp",
    "http://127.0.0.1:1/mcp",  # our host, another port
    "{origin}/MCP",  # the path is case-sensitive
    "{origin}/mcp/tools",
    "{origin}",
    "",
])
def test_foreign_resource_at_authorize_is_invalid_target(world: OAuthWorld, human: HumanAgent,
                                                         resource: str) -> None:
    client_id = approved_client(world, human)
    _, challenge = pkce_pair()
    r = human.http.get(authorize_url(world, client_id, challenge, state="s",
                                 resource=resource.format(origin=world.url)))
    got = redirect_params(r)
    assert got["error"] == "invalid_target", got
    assert got["state"] == "s" and got["iss"] == world.settings.issuer


def _alias(world: OAuthWorld, *, slash: bool = True) -> str:
    """``HTTP://127.0.0.1:PORT/mcp/``: the Breeze regression's spelling of our resource."""
    return world.mcp_url.replace("http://", "HTTP://", 1) + ("/" if slash else "")


@pytest.mark.req("OAUTH-RESOURCE", "OAUTH-REFRESH-ROTATION")
def test_resource_aliases_are_normalised_everywhere(world: OAuthWorld,
                                                    human: HumanAgent) -> None:
    client_id = register(world)["client_id"]
    code, verifier, _ = approve(world, human, client_id, resource=_alias(world))
    r = exchange(world, client_id, code, verifier, resource=_alias(world, slash=False))
    assert r.status_code == 200, r.text
    tokens = r.json()
    grant_id = grant_of(world, tokens["access_token"])
    assert world.owner_sql("SELECT resource FROM oauth_grants WHERE id = :g",
                           g=grant_id)[0][0] == world.mcp_url
    assert mcp_status(world, tokens["access_token"]) == 200

    # The regression: refreshes sending an alias succeed, rotation after rotation, and are
    # never read as reuse.
    current = tokens["refresh_token"]
    for alias in (_alias(world), world.mcp_url + "/", _alias(world, slash=False)):
        r = refresh(world, client_id, current, resource=alias)
        assert r.status_code == 200, r.text
        current = r.json()["refresh_token"]
        assert mcp_status(world, r.json()["access_token"]) == 200
    assert not grant_revoked(world, grant_id)
    assert "oauth.refresh_reuse_detected" not in audit_actions(world, grant_id)


@pytest.mark.req("OAUTH-RESOURCE")
def test_wrong_resource_at_token_is_invalid_target_without_revocation(
        world: OAuthWorld, human: HumanAgent) -> None:
    evil = "https://evil.example/mcp"
    client_id = register(world)["client_id"]
    code, verifier, _ = approve(world, human, client_id)
    oauth_error(exchange(world, client_id, code, verifier, resource=evil),
                400, "invalid_target")
    r = exchange(world, client_id, code, verifier, resource=world.mcp_url)
    assert r.status_code == 200, r.text
    tokens = r.json()
    grant_id = grant_of(world, tokens["access_token"])

    oauth_error(refresh(world, client_id, tokens["refresh_token"], resource=evil),
                400, "invalid_target")
    assert not grant_revoked(world, grant_id)
    assert mcp_status(world, tokens["access_token"]) == 200
    # The refused refresh did not consume the token: the retry is not "reuse".
    r = refresh(world, client_id, tokens["refresh_token"], resource=world.mcp_url)
    assert r.status_code == 200, r.text
    assert not grant_revoked(world, grant_id)


@pytest.mark.req("OAUTH-RESOURCE")
def test_token_for_another_resource_is_refused_at_mcp(world: OAuthWorld,
                                                      human: HumanAgent) -> None:
    _, tokens = connected(world, human)
    grant_id = grant_of(world, tokens["access_token"])
    assert mcp_status(world, tokens["access_token"]) == 200
    world.owner_sql("UPDATE oauth_grants SET resource = 'https://other.example/mcp' "
                    "WHERE id = :g", g=grant_id)
    r = mcp_call(world, tokens["access_token"], "tools/list")
    assert r.status_code == 401
    assert challenge_params(r)["error"] == "invalid_token"


@pytest.mark.req("OAUTH-RESOURCE")
def test_resource_with_fragment_is_invalid_target(world: OAuthWorld, human: HumanAgent) -> None:
    client_id = approved_client(world, human)
    _, challenge = pkce_pair()
    r = human.http.get(authorize_url(world, client_id, challenge,
                                 resource=world.mcp_url + "#frag"))
    got = redirect_params(r)  # today: the sign-in page (200), i.e. accepted
    assert got["error"] == "invalid_target"


@pytest.mark.req("OAUTH-RESOURCE", "OAUTH-METADATA")
def test_public_url_with_default_port_is_canonical(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path, public_url="https://MCP.example.com:443")
    assert normalize_resource(settings.mcp_url) == settings.mcp_url
    assert settings.issuer == "https://mcp.example.com"


# 8. Unknown client, no-store ----------------------------------------------------------------


@pytest.mark.req("OAUTH-INVALID-CLIENT")
@pytest.mark.parametrize("data", [
    pytest.param({"grant_type": "authorization_code", "client_id": "bzi_unknown",
                  "code": "bzc_x", "code_verifier": "v" * 43, "redirect_uri": REDIRECT},
                 id="code-unknown-client"),
    pytest.param({"grant_type": "refresh_token", "client_id": "bzi_unknown",
                  "refresh_token": "bzr_x"}, id="refresh-unknown-client"),
    pytest.param({"grant_type": "refresh_token", "refresh_token": "bzr_x"},
                 id="no-client-id"),
])
def test_unknown_client_at_token_is_invalid_client(world: OAuthWorld,
                                                   data: dict[str, str]) -> None:
    oauth_error(token_post(world, data), 401, "invalid_client")


@pytest.mark.req("OAUTH-INVALID-CLIENT")
def test_every_token_response_is_no_store(world: OAuthWorld, human: HumanAgent) -> None:
    client_id, tokens = connected(world, human)  # success (checked in do_exchange)
    assert no_store(refresh(world, client_id, tokens["refresh_token"])).status_code == 200
    for data in ({"grant_type": "password", "client_id": client_id},
                 {"client_id": client_id},
                 {"grant_type": "refresh_token", "client_id": client_id,
                  "refresh_token": "bzr_nope"}):
        assert token_post(world, data).status_code == 400
    r = no_store(httpx.post(f"{world.url}/token", json={"grant_type": "refresh_token"},
                            timeout=30))
    oauth_error(r, 415, "invalid_request")


# 9. Refresh rotation ------------------------------------------------------------------------


@pytest.mark.req("OAUTH-REFRESH-ROTATION", "SEED-OAUTH-ROTATE")
def test_fifty_concurrent_refreshes_leave_one_lineage(world: OAuthWorld,
                                                      human: HumanAgent) -> None:
    client_id, tokens = connected(world, human)
    grant_id = grant_of(world, tokens["access_token"])
    n = 50
    barrier = threading.Barrier(n)

    def one(_: int) -> httpx.Response:
        barrier.wait(timeout=30)
        return refresh(world, client_id, tokens["refresh_token"])

    with ThreadPoolExecutor(max_workers=n) as pool:
        responses = list(pool.map(one, range(n)))

    statuses = sorted(r.status_code for r in responses)
    assert all(s < 500 for s in statuses), statuses
    assert statuses == [200] * n, [r.text for r in responses if r.status_code != 200][:3]
    successors = {r.json()["refresh_token"] for r in responses}
    assert len(successors) == 1, len(successors)
    successor = successors.pop()
    assert successor != tokens["refresh_token"]
    assert live_refresh_digests(world, grant_id) == [digest(successor)]
    assert refresh_rows(world, grant_id) == 2
    assert not grant_revoked(world, grant_id)
    for r in (responses[0], responses[-1]):
        assert mcp_status(world, r.json()["access_token"]) == 200

    r = refresh(world, client_id, successor)
    assert r.status_code == 200, r.text
    assert not grant_revoked(world, grant_id)
    assert live_refresh_digests(world, grant_id) == [digest(r.json()["refresh_token"])]


@pytest.mark.req("OAUTH-REFRESH-ROTATION", "SEED-OAUTH-ROTATE")
def test_predecessor_within_grace_gets_the_same_successor(world: OAuthWorld,
                                                          human: HumanAgent) -> None:
    client_id, tokens = connected(world, human)
    grant_id = grant_of(world, tokens["access_token"])
    t0 = tokens["refresh_token"]
    r1 = refresh(world, client_id, t0)
    assert r1.status_code == 200, r1.text
    t1 = r1.json()["refresh_token"]
    rows = refresh_rows(world, grant_id)

    again = refresh(world, client_id, t0)  # the first response was "lost"
    assert again.status_code == 200, again.text
    assert again.json()["refresh_token"] == t1
    assert again.json()["access_token"] != r1.json()["access_token"]
    assert refresh_rows(world, grant_id) == rows  # no fork
    assert live_refresh_digests(world, grant_id) == [digest(t1)]
    assert mcp_status(world, again.json()["access_token"]) == 200
    assert not grant_revoked(world, grant_id)

    r2 = refresh(world, client_id, t1)
    assert r2.status_code == 200, r2.text
    assert live_refresh_digests(world, grant_id) == [digest(r2.json()["refresh_token"])]


@pytest.mark.req("OAUTH-REFRESH-ROTATION", "SEED-OAUTH-ROTATE")
def test_grandparent_replay_revokes_the_grant(world: OAuthWorld, human: HumanAgent) -> None:
    client_id, tokens = connected(world, human)
    grant_id = grant_of(world, tokens["access_token"])
    t0 = tokens["refresh_token"]
    r1 = refresh(world, client_id, t0)
    t1 = r1.json()["refresh_token"]
    r2 = refresh(world, client_id, t1)
    assert r2.status_code == 200, r2.text
    t2 = r2.json()["refresh_token"]

    oauth_error(refresh(world, client_id, t0), 400, "invalid_grant")
    assert_grant_dead(world, client_id, grant_id,
                      [tokens["access_token"], r1.json()["access_token"],
                       r2.json()["access_token"]], [t2, t1])
    assert "oauth.refresh_reuse_detected" in audit_actions(world, grant_id)
    assert live_refresh_digests(world, grant_id) == []


@pytest.mark.req("OAUTH-REFRESH-ROTATION", "SEED-OAUTH-ROTATE")
def test_grace_retry_ends_once_the_successor_is_used(world: OAuthWorld,
                                                     human: HumanAgent) -> None:
    client_id, tokens = connected(world, human)
    grant_id = grant_of(world, tokens["access_token"])
    t0 = tokens["refresh_token"]
    t1 = refresh(world, client_id, t0).json()["refresh_token"]
    assert refresh(world, client_id, t0).json()["refresh_token"] == t1  # lost response
    r2 = refresh(world, client_id, t1)  # the successor is used: t0 is now an ancestor
    assert r2.status_code == 200, r2.text
    oauth_error(refresh(world, client_id, t0), 400, "invalid_grant")
    assert_grant_dead(world, client_id, grant_id, [r2.json()["access_token"]],
                      [r2.json()["refresh_token"]])


@pytest.mark.req("OAUTH-REFRESH-ROTATION", "SEED-OAUTH-ROTATE")
def test_replay_after_the_grace_revokes_the_grant(short_grace_world: OAuthWorld) -> None:
    w = short_grace_world
    agent = HumanAgent(w, w.tech_email)
    try:
        client_id, tokens = connected(w, agent)
    finally:
        agent.close()
    grant_id = grant_of(w, tokens["access_token"])
    r1 = refresh(w, client_id, tokens["refresh_token"])
    assert r1.status_code == 200, r1.text
    t1 = r1.json()["refresh_token"]
    time.sleep(1.5)  # refresh_grace=1
    oauth_error(refresh(w, client_id, tokens["refresh_token"]), 400, "invalid_grant")
    assert_grant_dead(w, client_id, grant_id,
                      [tokens["access_token"], r1.json()["access_token"]], [t1])
    assert "oauth.refresh_reuse_detected" in audit_actions(w, grant_id)


@pytest.mark.req("OAUTH-REFRESH-ROTATION", "SEED-OAUTH-ROTATE")
def test_refresh_may_narrow_scope_but_never_widen(world: OAuthWorld, human: HumanAgent) -> None:
    client_id, tokens = connected(world, human, scopes=["ai:read", "ai:write"])
    grant_id = grant_of(world, tokens["access_token"])
    assert tokens["scope"] == "ai:read ai:write"
    wide = {t["name"] for t in
            mcp_call(world, tokens["access_token"], "tools/list").json()["result"]["tools"]}

    r = refresh(world, client_id, tokens["refresh_token"], scope="ai:read")
    assert r.status_code == 200, r.text
    narrowed = r.json()
    assert narrowed["scope"] == "ai:read"
    listed = mcp_call(world, narrowed["access_token"], "tools/list").json()["result"]["tools"]
    names = {t["name"] for t in listed}
    assert names == {t.name for t in default_registry().listable(1)}
    assert all(t["description"].startswith("[Tier 1") for t in listed)
    assert names < wide

    current = narrowed["refresh_token"]
    for beyond in ("ai:read ai:execute", "ai:execute"):
        oauth_error(refresh(world, client_id, current, scope=beyond), 400, "invalid_scope")
    assert not grant_revoked(world, grant_id)
    # The refused request consumed nothing; without scope the grant's scopes come back.
    r = refresh(world, client_id, current)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "ai:read ai:write"


@pytest.mark.req("OAUTH-REFRESH-ROTATION")
def test_storage_error_is_503_never_a_revocation(world: OAuthWorld, human: HumanAgent,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="breeze_mcp.auth.oauth")
    client_id, tokens = connected(world, human)
    grant_id = grant_of(world, tokens["access_token"])
    role = world.test_db.runtime_role
    # Fail the rotation half-way: the compare-and-swap succeeds, the successor's INSERT fails.
    world.owner_sql(f"REVOKE INSERT ON oauth_refresh_tokens FROM {role}")
    try:
        r = refresh(world, client_id, tokens["refresh_token"])
    finally:
        world.owner_sql(f"GRANT INSERT ON oauth_refresh_tokens TO {role}")
    oauth_error(r, 503, "temporarily_unavailable")
    assert r.headers.get("retry-after")
    # logged by class and SQLSTATE, never with the server's message (it can quote row values)
    assert [m.getMessage() for m in caplog.records if "storage error" in m.getMessage()] == [
        "refresh storage error: InsufficientPrivilege (SQLSTATE 42501)"]
    assert not grant_revoked(world, grant_id)
    assert mcp_status(world, tokens["access_token"]) == 200
    # Nothing was half-done: the same token rotates normally, and that is not "reuse".
    r = refresh(world, client_id, tokens["refresh_token"])
    assert r.status_code == 200, r.text
    assert not grant_revoked(world, grant_id)
    assert live_refresh_digests(world, grant_id) == [digest(r.json()["refresh_token"])]


@pytest.mark.req("OAUTH-REFRESH-ROTATION")
def test_refresh_token_of_another_client_is_invalid_grant(world: OAuthWorld,
                                                          human: HumanAgent) -> None:
    client_id, tokens = connected(world, human)
    grant_id = grant_of(world, tokens["access_token"])
    thief = register(world)["client_id"]
    oauth_error(refresh(world, thief, tokens["refresh_token"]), 400, "invalid_grant")
    assert not grant_revoked(world, grant_id)
    r = refresh(world, client_id, tokens["refresh_token"])
    assert r.status_code == 200, r.text


# 10. Expiry ---------------------------------------------------------------------------------


@pytest.mark.req("SEED-OAUTH-ROTATE")
def test_expired_access_token_is_refused(world: OAuthWorld, human: HumanAgent) -> None:
    client_id, tokens = connected(world, human)
    assert tokens["expires_in"] == world.settings.access_token_ttl == 1800
    access = tokens["access_token"]
    assert mcp_status(world, access) == 200
    world.owner_sql("UPDATE oauth_access_tokens SET expires_at = now() - interval '1 second' "
                    "WHERE digest = :d", d=digest(access))
    r = mcp_call(world, access, "ping")
    assert r.status_code == 401
    assert challenge_params(r)["error"] == "invalid_token"
    # The grant lives on: the refresh token still works.
    r = refresh(world, client_id, tokens["refresh_token"])
    assert r.status_code == 200, r.text
    assert mcp_status(world, r.json()["access_token"]) == 200


@pytest.mark.req("SEED-OAUTH-ROTATE", "OAUTH-CODE-REPLAY")
def test_expired_code_and_refresh_token_are_invalid_grant(world: OAuthWorld,
                                                          human: HumanAgent) -> None:
    client_id = register(world)["client_id"]
    code, verifier, _ = approve(world, human, client_id)
    world.owner_sql("UPDATE oauth_codes SET expires_at = now() - interval '1 second' "
                    "WHERE digest = :d", d=digest(code))
    oauth_error(exchange(world, client_id, code, verifier), 400, "invalid_grant")

    client_id, tokens = connected(world, human)
    grant_id = grant_of(world, tokens["access_token"])
    world.owner_sql("UPDATE oauth_refresh_tokens SET expires_at = now() - interval '1 second' "
                    "WHERE digest = :d", d=digest(tokens["refresh_token"]))
    oauth_error(refresh(world, client_id, tokens["refresh_token"]), 400, "invalid_grant")
    assert not grant_revoked(world, grant_id)  # expiry is not theft


