"""OAuth material for the token-endpoint scenarios, written straight into the database.

The code-exchange scenario needs one fresh authorization code per request, far more than the
sign-in and consent pages could produce in a benchmark's set-up, so grants and codes are
inserted in bulk (as the superuser the benchmark already holds) exactly as
``oauth.create_authorization`` would store them: tenant-bound ``bzc_`` codes, stored as
SHA-256 digests, with an S256 challenge. The refresh scenario gets one refresh-token lineage
per connection, and the OAuth tool-call scenario one access token. What is measured is the
token endpoint and the resource server, not this set-up.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from collections import deque
from dataclasses import dataclass, field

import sqlalchemy as sa

__all__ = ["CLIENT_ID", "DOCUMENT_CLIENT_ID", "REDIRECT_URI", "OAuthFixtures", "mint"]

CLIENT_ID = "bzi_bench-client"
#: A client identified by its metadata document (CIMD), whose copy is stored fresh for a day:
#: its token requests must cost no fetch (the host does not exist; a fetch would fail them).
DOCUMENT_CLIENT_ID = "https://client.bench.invalid/oauth/metadata.json"
REDIRECT_URI = "http://127.0.0.1:9/callback"
SCOPES = ["ai:read"]


def _tenant_bound(prefix: str, tenant_id: uuid.UUID) -> str:
    return f"{prefix}_{tenant_id.hex}_{secrets.token_urlsafe(32)}"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass
class OAuthFixtures:
    verifier: str
    codes: deque[str] = field(default_factory=deque)
    refresh_tokens: list[str] = field(default_factory=list)
    document_refresh_tokens: list[str] = field(default_factory=list)  # DOCUMENT_CLIENT_ID's
    access_token: str = ""


def mint(admin_url: str, *, tenant_id: uuid.UUID, user_id: uuid.UUID, resource: str,
         codes: int, lineages: int, document_lineages: int = 0) -> OAuthFixtures:
    from breeze_mcp.db.engine import sqlalchemy_url

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    fixtures = OAuthFixtures(verifier=verifier)
    total = codes + lineages + 1
    grant_ids = [uuid.uuid4() for _ in range(total)]
    engine = sa.create_engine(sqlalchemy_url(admin_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO oauth_clients (client_id, token_endpoint_auth_method, "
                "redirect_uris, grant_types, response_types, client_name) VALUES "
                "(:c, 'none', ARRAY[:r], ARRAY['authorization_code', 'refresh_token'], "
                "ARRAY['code'], 'bench') ON CONFLICT (client_id) DO NOTHING"),
                {"c": CLIENT_ID, "r": REDIRECT_URI})
            conn.execute(sa.text(
                "INSERT INTO oauth_grants (id, tenant_id, client_id, user_id, scopes, resource) "
                "SELECT g, :t, :c, :u, :s, :res FROM unnest(CAST(:ids AS uuid[])) AS g"),
                {"t": tenant_id, "c": CLIENT_ID, "u": user_id, "s": SCOPES, "res": resource,
                 "ids": [str(g) for g in grant_ids]})
            plain = [_tenant_bound("bzc", tenant_id) for _ in range(codes)]
            conn.execute(sa.text(
                "INSERT INTO oauth_codes (digest, tenant_id, grant_id, redirect_uri, "
                "code_challenge, resource, scopes, expires_at) "
                "SELECT d, :t, g, :r, :ch, :res, :s, now() + interval '2 hours' "
                "FROM unnest(CAST(:digests AS bytea[]), CAST(:ids AS uuid[])) AS x(d, g)"),
                {"t": tenant_id, "r": REDIRECT_URI, "ch": challenge, "res": resource,
                 "s": SCOPES, "digests": [_digest(c) for c in plain],
                 "ids": [str(g) for g in grant_ids[:codes]]})
            fixtures.codes.extend(plain)
            refresh = [_tenant_bound("bzr", tenant_id) for _ in range(lineages)]
            conn.execute(sa.text(
                "INSERT INTO oauth_refresh_tokens (tenant_id, grant_id, digest, scopes, "
                "expires_at) SELECT :t, g, d, :s, now() + interval '2 hours' "
                "FROM unnest(CAST(:digests AS bytea[]), CAST(:ids AS uuid[])) AS x(d, g)"),
                {"t": tenant_id, "s": SCOPES, "digests": [_digest(r) for r in refresh],
                 "ids": [str(g) for g in grant_ids[codes:codes + lineages]]})
            fixtures.refresh_tokens = refresh
            fixtures.access_token = _tenant_bound("bza", tenant_id)
            conn.execute(sa.text(
                "INSERT INTO oauth_access_tokens (tenant_id, grant_id, digest, scopes, "
                "expires_at) VALUES (:t, :g, :d, :s, now() + interval '2 hours')"),
                {"t": tenant_id, "g": grant_ids[-1], "d": _digest(fixtures.access_token),
                 "s": SCOPES})
            if document_lineages:
                fixtures.document_refresh_tokens = _document_lineages(
                    conn, tenant_id, user_id, resource, document_lineages)
    finally:
        engine.dispose()
    return fixtures


def _document_lineages(conn: sa.Connection, tenant_id: uuid.UUID, user_id: uuid.UUID,
                       resource: str, lineages: int) -> list[str]:
    """DOCUMENT_CLIENT_ID as the product caches it (its document fresh for a day), with one
    grant and refresh token per lineage."""
    conn.execute(sa.text(
        "INSERT INTO oauth_clients (client_id, token_endpoint_auth_method, redirect_uris, "
        "grant_types, response_types, client_name, document_fetched_at, "
        "document_fresh_until, document_stale_until) VALUES (:c, 'none', ARRAY[:r], "
        "ARRAY['authorization_code', 'refresh_token'], ARRAY['code'], 'bench document', "
        "now(), now() + interval '1 day', now() + interval '2 days') "
        "ON CONFLICT (client_id) DO NOTHING"), {"c": DOCUMENT_CLIENT_ID, "r": REDIRECT_URI})
    grant_ids = [uuid.uuid4() for _ in range(lineages)]
    conn.execute(sa.text(
        "INSERT INTO oauth_grants (id, tenant_id, client_id, user_id, scopes, resource) "
        "SELECT g, :t, :c, :u, :s, :res FROM unnest(CAST(:ids AS uuid[])) AS g"),
        {"t": tenant_id, "c": DOCUMENT_CLIENT_ID, "u": user_id, "s": SCOPES, "res": resource,
         "ids": [str(g) for g in grant_ids]})
    tokens = [_tenant_bound("bzr", tenant_id) for _ in range(lineages)]
    conn.execute(sa.text(
        "INSERT INTO oauth_refresh_tokens (tenant_id, grant_id, digest, scopes, expires_at) "
        "SELECT :t, g, d, :s, now() + interval '2 hours' "
        "FROM unnest(CAST(:digests AS bytea[]), CAST(:ids AS uuid[])) AS x(d, g)"),
        {"t": tenant_id, "s": SCOPES, "digests": [_digest(r) for r in tokens],
         "ids": [str(g) for g in grant_ids]})
    return tokens
