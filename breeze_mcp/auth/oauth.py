"""The OAuth 2.1 authorization server's state: clients, grants, codes and tokens.

* A **grant** is the unit of consent, revocation, rate limiting and audit: one client acting
  for one user in one tenant with some scopes, bound to one resource (RFC 8707).
* Codes (``bzc_``), refresh tokens (``bzr_``) and access tokens (``bza_``) are opaque,
  tenant-bound, 256-bit secrets stored as SHA-256 digests; each lookup runs inside its
  tenant's row-level-security transaction.
* Validating an access token is one indexed lookup joined with its grant, user, membership
  and tenant, so revoking a grant takes effect on the very next request, on every
  instance: there is no cache to outlive it.
* Refresh rotation is a compare-and-swap on the presented token's row. The immediate
  predecessor of the live token, presented again within the grace window while its successor
  is unused, gets the same successor back (a lost response, not a fork); any other reuse
  revokes the whole grant (theft). See ``reference/oauth-and-mcp.md``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
import os
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from breeze_mcp import audit
from breeze_mcp.auth.oauth_clients import ClientRegistration
from breeze_mcp.auth.principal import ALL_SCOPES, ROLE_SCOPES, Principal, RequestContext
from breeze_mcp.auth.tokens import digest, mint, mint_tenant_bound, tenant_of
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Statement, driver
from breeze_mcp.db.models import (
    memberships,
    oauth_access_tokens,
    oauth_clients,
    oauth_codes,
    oauth_grants,
    oauth_refresh_tokens,
    tenants,
    users,
)

__all__ = [
    "ACCESS_PREFIX",
    "CODE_PREFIX",
    "REFRESH_PREFIX",
    "Client",
    "OAuthError",
    "TokenResponse",
    "access_lookup",
    "access_principal_from",
    "authenticate_client",
    "create_authorization",
    "exchange_code",
    "get_client",
    "normalize_resource",
    "refresh",
    "register_client",
    "revoke_grant",
    "revoke_token",
    "user_has_live_grant",
    "verify_pkce",
]

log = logging.getLogger(__name__)

ACCESS_PREFIX = "bza"
REFRESH_PREFIX = "bzr"
CODE_PREFIX = "bzc"
CLIENT_ID_PREFIX = "bzi"
CLIENT_SECRET_PREFIX = "bzx"  # noqa: S105 - a prefix, not a secret
#: RFC 7636 §4.1: 43-128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~".
CODE_VERIFIER_PATTERN = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
CODE_CHALLENGE_PATTERN = re.compile(r"^[A-Za-z0-9\-_]{43}$")
#: Registrations that never complete an authorization are forgotten after this long.
UNUSED_CLIENT_TTL = dt.timedelta(hours=24)

ErrorCode = Literal[
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "invalid_scope", "invalid_target", "temporarily_unavailable",
    "access_denied", "server_error",
]


class OAuthError(Exception):
    """An error in the protocol's own shape (RFC 6749 §5.2)."""

    def __init__(self, error: ErrorCode, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


# Small pure helpers -------------------------------------------------------------------------


def normalize_resource(value: str) -> str:
    """RFC 8707 resource, compared case-insensitively in scheme and host, default port and
    trailing slash dropped: ``HTTPS://MCP.Example.com:443/mcp/`` == ``https://mcp.example.com/mcp``.
    """
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # raises for a port out of range or not a number
    except ValueError:  # also a broken IPv6 literal ("https://[::1/mcp")
        return "invalid:"
    if "#" in value or parts.username is not None or parts.password is not None:
        return "invalid:"  # RFC 8707 §2: no fragment; userinfo is never our resource
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if (scheme, port) in (("https", 443), ("http", 80)):
        port = None
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


def verify_pkce(verifier: str, challenge: str) -> bool:
    """S256 only: BASE64URL(SHA256(verifier)) == challenge, compared in constant time."""
    if not CODE_VERIFIER_PATTERN.match(verifier):
        return False
    computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return hmac.compare_digest(computed.rstrip(b"=").decode(), challenge)


def parse_scope(value: str | None) -> list[str]:
    return [s for s in (value or "").split() if s]


def canonical_scopes(scopes: Sequence[str]) -> list[str]:
    return [s for s in ALL_SCOPES if s in scopes]


class _Sealer:
    """AES-GCM for the grace-window copy of a refresh token's successor.

    The key is derived (HKDF-SHA256) from the session key under its own label, so it is used
    for nothing else; the sealed copy is dropped as soon as the successor is used.
    """

    def __init__(self, settings: Settings) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None,
            info=b"breeze-mcp refresh-grace seal v1",
        ).derive(settings.secret("session_key").encode())
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext.encode(), aad)

    def open(self, sealed: bytes, aad: bytes) -> str:
        return self._aead.decrypt(sealed[:12], sealed[12:], aad).decode()


# Clients ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    client_id: str
    token_endpoint_auth_method: str
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    client_name: str | None
    client_uri: str | None
    scope: str | None
    secret_digest: bytes | None

    @property
    def display_name(self) -> str:
        return self.client_name or self.client_id


def _client(row: Any) -> Client:
    return Client(
        client_id=row.client_id,
        token_endpoint_auth_method=row.token_endpoint_auth_method,
        redirect_uris=tuple(row.redirect_uris),
        grant_types=tuple(row.grant_types),
        client_name=row.client_name,
        client_uri=row.client_uri,
        scope=row.scope,
        secret_digest=bytes(row.secret_digest) if row.secret_digest is not None else None,
    )


async def register_client(
    db: Database, reg: ClientRegistration, *, client_ip: str | None, request_id: str | None,
    max_pending: int,
) -> tuple[dict[str, Any], Client]:
    """Store a validated registration; returns the RFC 7591 response body and the client."""
    client_id = mint(CLIENT_ID_PREFIX)
    secret = mint(CLIENT_SECRET_PREFIX) if reg.token_endpoint_auth_method != "none" else None  # noqa: S105
    async with db.system_transaction(actor="system:dcr") as conn:
        # Forget registrations that never completed an authorization, then apply the cap
        # (serialised, so concurrent registrations cannot overshoot it).
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x6272_6565_7a65)))
        await conn.execute(
            oauth_clients.delete().where(oauth_clients.c.expires_at < sa.func.now())
        )
        pending = (await conn.execute(
            sa.select(sa.func.count()).select_from(oauth_clients)
            .where(oauth_clients.c.expires_at.is_not(None))
        )).scalar_one()
        if pending >= max_pending:
            raise OAuthError("temporarily_unavailable",
                             "too many pending client registrations; try again later", 503)
        row = (await conn.execute(
            oauth_clients.insert().values(
                client_id=client_id,
                secret_digest=digest(secret) if secret else None,
                token_endpoint_auth_method=reg.token_endpoint_auth_method,
                redirect_uris=list(reg.redirect_uris),
                grant_types=list(reg.grant_types),
                response_types=list(reg.response_types),
                client_name=reg.client_name,
                client_uri=reg.client_uri,
                logo_uri=reg.logo_uri,
                scope=reg.scope,
                contacts=list(reg.contacts),
                software_id=reg.software_id,
                software_version=reg.software_version,
                registered_ip=client_ip,
                expires_at=sa.func.now() + UNUSED_CLIENT_TTL,
            ).returning(oauth_clients)
        )).one()
        await audit.write(conn, audit.AuditEntry(
            actor_type="oauth_client", actor_id=client_id, auth_path="oauth",
            client_id=client_id, action="oauth.client_registered", decision="allowed",
            outcome="success", request_id=request_id, client_ip=client_ip,
            parameters={"client_name": reg.client_name, "redirect_uris": list(reg.redirect_uris),
                        "token_endpoint_auth_method": reg.token_endpoint_auth_method},
        ))
    body: dict[str, Any] = {
        "client_id": client_id,
        "client_id_issued_at": int(row.created_at.timestamp()),
        "redirect_uris": list(reg.redirect_uris),
        "token_endpoint_auth_method": reg.token_endpoint_auth_method,
        "grant_types": list(reg.grant_types),
        "response_types": list(reg.response_types),
    }
    if secret:
        body["client_secret"] = secret
        body["client_secret_expires_at"] = 0
    for name in ("client_name", "client_uri", "logo_uri", "scope", "software_id",
                 "software_version"):
        if (value := getattr(reg, name)) is not None:
            body[name] = value
    if reg.contacts:
        body["contacts"] = list(reg.contacts)
    return body, _client(row)


async def get_client(db: Database, client_id: str) -> Client | None:
    """A registered client; an unused registration past its expiry is unknown."""
    # Ids we mint are printable ASCII; anything else (a NUL from a Basic header) is unknown
    # here rather than an error in the database driver.
    if not client_id or len(client_id) > 200 or not client_id.isascii() \
            or not client_id.isprintable():
        return None
    async with db.system_transaction(actor="system:oauth") as conn:
        row = (await conn.execute(
            sa.select(oauth_clients).where(
                oauth_clients.c.client_id == client_id,
                sa.or_(oauth_clients.c.expires_at.is_(None),
                       oauth_clients.c.expires_at > sa.func.now()),
            )
        )).first()
    return _client(row) if row else None


async def user_has_live_grant(db: Database, user_id: uuid.UUID, client_id: str) -> bool:
    """Whether ``user_id`` holds an unrevoked grant for the client in one of their tenants."""
    async with db.system_transaction(actor=f"user:{user_id}", user_id=user_id) as conn:
        tenant_ids = (await conn.execute(
            sa.select(memberships.c.tenant_id).where(memberships.c.user_id == user_id)
        )).scalars().all()
    for tenant_id in tenant_ids:
        async with db.tenant_transaction(tenant_id, actor=f"user:{user_id}",
                                         user_id=user_id) as conn:
            found = (await conn.execute(
                sa.select(oauth_grants.c.id).where(
                    oauth_grants.c.client_id == client_id, oauth_grants.c.user_id == user_id,
                    oauth_grants.c.revoked_at.is_(None)).limit(1)
            )).first()
        if found is not None:
            return True
    return False


def authenticate_client(
    client: Client | None, *, form_secret: str | None, basic: tuple[str, str] | None,
    form_client_id: str | None,
) -> Client:
    """RFC 6749 §2.3 client authentication; ``invalid_client`` (401) on any failure."""
    if client is None:
        raise OAuthError("invalid_client", "unknown client_id; register again", 401)
    if basic is not None and basic[0] != client.client_id:
        raise OAuthError("invalid_client", "client_id mismatch", 401)
    if form_client_id is not None and form_client_id != client.client_id:
        raise OAuthError("invalid_client", "client_id mismatch", 401)
    if client.token_endpoint_auth_method == "none":  # noqa: S105
        return client
    presented = basic[1] if basic is not None else form_secret
    if not presented or client.secret_digest is None or not hmac.compare_digest(
        digest(presented), client.secret_digest
    ):
        raise OAuthError("invalid_client", "client authentication failed", 401)
    return client


# Authorization ------------------------------------------------------------------------------


async def create_authorization(
    db: Database,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    client: Client,
    user_id: uuid.UUID,
    scopes: Sequence[str],
    resource: str,
    redirect_uri: str,
    code_challenge: str,
    request: RequestContext,
    requested_scopes: Sequence[str],
) -> str:
    """The human approved: create the grant and a single-use code; returns the code."""
    code = mint_tenant_bound(CODE_PREFIX, tenant_id)
    async with db.tenant_transaction(tenant_id, actor=f"user:{user_id}", user_id=user_id) as conn:
        role = (await conn.execute(
            sa.select(memberships.c.role).where(
                memberships.c.tenant_id == tenant_id, memberships.c.user_id == user_id)
        )).scalar_one_or_none()
        if role is None:
            raise OAuthError("access_denied", "you are not a member of that tenant")
        granted = canonical_scopes([s for s in scopes if s in ROLE_SCOPES[role]])
        if not granted:
            raise OAuthError("invalid_scope", "no scope left to grant")
        grant_id = (await conn.execute(
            oauth_grants.insert().values(
                tenant_id=tenant_id, client_id=client.client_id, user_id=user_id,
                scopes=granted, resource=resource,
            ).returning(oauth_grants.c.id)
        )).scalar_one()
        await conn.execute(oauth_codes.insert().values(
            digest=digest(code), tenant_id=tenant_id, grant_id=grant_id,
            redirect_uri=redirect_uri, code_challenge=code_challenge, resource=resource,
            scopes=granted,
            expires_at=sa.func.now() + dt.timedelta(seconds=settings.auth_code_ttl),
        ))
        await conn.execute(
            oauth_clients.update().where(oauth_clients.c.client_id == client.client_id)
            .values(expires_at=None, last_authorized_at=sa.func.now())
        )
        narrowed = [s for s in canonical_scopes(requested_scopes) if s not in granted]
        await audit.write(conn, _grant_audit(
            "oauth.grant_created", tenant_id, grant_id, client.client_id, user_id, granted,
            request, {"requested": list(requested_scopes), "granted": granted,
                      "withheld": narrowed, "resource": resource},
        ))
    return code


def _grant_audit(
    action: str, tenant_id: uuid.UUID, grant_id: uuid.UUID, client_id: str,
    user_id: uuid.UUID | None, scopes: Sequence[str], request: RequestContext | None,
    parameters: dict[str, Any], *, decision: audit.Decision = "allowed",
    outcome: audit.Outcome = "success", actor_type: audit.ActorType = "user",
    actor_id: str | None = None, auth_path: audit.AuthPath = "oauth",
    deny_reason: str | None = None,
) -> audit.AuditEntry:
    return audit.AuditEntry(
        actor_type=actor_type, actor_id=actor_id or (str(user_id) if user_id else None),
        acting_user_id=user_id, auth_path=auth_path, credential_id=str(grant_id),
        client_id=client_id, tenant_id=tenant_id, action=action, decision=decision,
        outcome=outcome, scopes=list(scopes), parameters=parameters, deny_reason=deny_reason,
        request_id=request.request_id if request else None,
        client_ip=request.client_ip if request else None,
        user_agent=request.user_agent if request else None,
    )


# Tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    expires_in: int
    scope: str
    refresh_token: str | None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }
        if self.refresh_token:
            body["refresh_token"] = self.refresh_token
        return body


async def _issue_access(
    conn: AsyncConnection, settings: Settings, tenant_id: uuid.UUID, grant_id: uuid.UUID,
    scopes: Sequence[str],
) -> str:
    token = mint_tenant_bound(ACCESS_PREFIX, tenant_id)
    await conn.execute(oauth_access_tokens.insert().values(
        tenant_id=tenant_id, grant_id=grant_id, digest=digest(token), scopes=list(scopes),
        expires_at=sa.func.now() + dt.timedelta(seconds=settings.access_token_ttl),
    ))
    return token


def _refresh_row_values(
    settings: Settings, tenant_id: uuid.UUID, grant_id: uuid.UUID, token: str,
    scopes: Sequence[str], parent_id: uuid.UUID | None,
) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id, "grant_id": grant_id, "digest": digest(token),
        "parent_id": parent_id, "scopes": list(scopes),
        "expires_at": sa.func.now() + dt.timedelta(seconds=settings.refresh_token_ttl),
    }


def _requested_scopes(scope: str | None, allowed: Sequence[str]) -> list[str]:
    """Refresh and exchange may narrow the scopes, never widen them."""
    if scope is None or not scope.strip():
        return list(allowed)
    asked = [s for s in parse_scope(scope) if s != "offline_access"]
    if not asked:
        return list(allowed)
    beyond = [s for s in asked if s not in allowed]
    if beyond:
        raise OAuthError("invalid_scope", f"scope {beyond[0]!r} was not granted")
    return canonical_scopes(asked) or list(allowed)


def _check_resource(resource: str | None, bound: str) -> None:
    if resource is not None and normalize_resource(resource) != bound:
        raise OAuthError("invalid_target", "resource does not match this grant's resource")


async def exchange_code(
    db: Database, settings: Settings, client: Client, *, code: str, code_verifier: str | None,
    redirect_uri: str | None, resource: str | None, request: RequestContext,
) -> TokenResponse:
    tenant_id = tenant_of(code, CODE_PREFIX)
    if tenant_id is None:
        raise OAuthError("invalid_grant", "invalid authorization code")
    replayed: uuid.UUID | None = None
    try:
        async with db.tenant_transaction(tenant_id, actor=f"oauth_client:{client.client_id}") \
                as conn:
            row = (await conn.execute(
                sa.select(
                    oauth_codes, oauth_grants.c.client_id, oauth_grants.c.user_id,
                    oauth_grants.c.revoked_at.label("grant_revoked"),
                    (oauth_codes.c.expires_at <= sa.func.now()).label("expired"),
                )
                .join(oauth_grants, (oauth_grants.c.id == oauth_codes.c.grant_id)
                      & (oauth_grants.c.tenant_id == oauth_codes.c.tenant_id))
                .where(oauth_codes.c.digest == digest(code))
                .with_for_update(of=oauth_codes)
            )).first()
            if row is None:
                raise OAuthError("invalid_grant", "invalid authorization code")
            if row.client_id != client.client_id:
                raise OAuthError("invalid_grant", "the code was issued to another client")
            if row.used_at is not None:
                replayed = row.grant_id  # RFC 6749 §10.5: revoke what the code produced
                raise OAuthError("invalid_grant", "authorization code already used")
            if row.grant_revoked is not None or row.expired:
                raise OAuthError("invalid_grant", "authorization code expired or revoked")
            if redirect_uri is None or redirect_uri != row.redirect_uri:
                raise OAuthError("invalid_grant", "redirect_uri does not match the request")
            if not code_verifier:
                raise OAuthError("invalid_request", "code_verifier is required (PKCE)")
            if not verify_pkce(code_verifier, row.code_challenge):
                raise OAuthError("invalid_grant", "PKCE verification failed")
            _check_resource(resource, row.resource)
            await conn.execute(oauth_codes.update().where(oauth_codes.c.digest == row.digest)
                               .values(used_at=sa.func.now()))
            scopes = list(row.scopes)
            access = await _issue_access(conn, settings, tenant_id, row.grant_id, scopes)
            refresh_token = None
            if "refresh_token" in client.grant_types:
                refresh_token = mint_tenant_bound(REFRESH_PREFIX, tenant_id)
                await conn.execute(oauth_refresh_tokens.insert().values(
                    **_refresh_row_values(settings, tenant_id, row.grant_id, refresh_token,
                                          scopes, None)))
            await audit.write(conn, _grant_audit(
                "oauth.token_issued", tenant_id, row.grant_id, client.client_id, row.user_id,
                scopes, request, {"grant_type": "authorization_code"},
                actor_type="oauth_client", actor_id=client.client_id,
            ))
    except OAuthError:
        if replayed is not None:
            await revoke_grant(db, tenant_id, replayed, reason="authorization_code_replay",
                               actor_type="system", actor_id="system:oauth", request=request,
                               action="oauth.code_replay_detected")
        raise
    except DBAPIError as exc:
        raise _storage_unavailable("code exchange", exc) from None
    return TokenResponse(access, settings.access_token_ttl, " ".join(scopes), refresh_token)


def _storage_unavailable(what: str, exc: DBAPIError) -> OAuthError:
    """A storage error at the token endpoint: ``503 temporarily_unavailable``, never a
    revocation. Logged by class and SQLSTATE only: the server's message can quote row values
    (a unique violation names the key, here a token's digest)."""
    log.warning("%s storage error: %s (SQLSTATE %s)", what, type(exc.orig).__name__,
                getattr(exc.orig, "sqlstate", None))
    return OAuthError("temporarily_unavailable", "try again", 503)


async def refresh(
    db: Database, settings: Settings, client: Client, *, refresh_token: str,
    scope: str | None, resource: str | None, request: RequestContext,
) -> TokenResponse:
    tenant_id = tenant_of(refresh_token, REFRESH_PREFIX)
    if tenant_id is None:
        raise OAuthError("invalid_grant", "invalid refresh token")
    sealer = _Sealer(settings)
    theft: uuid.UUID | None = None
    try:
        async with db.tenant_transaction(tenant_id, actor=f"oauth_client:{client.client_id}") \
                as conn:
            row = (await conn.execute(
                sa.select(
                    oauth_refresh_tokens, oauth_grants.c.client_id, oauth_grants.c.user_id,
                    oauth_grants.c.resource,
                    oauth_grants.c.revoked_at.label("grant_revoked"),
                    (oauth_refresh_tokens.c.expires_at <= sa.func.now()).label("expired"),
                    tenants.c.status.label("tenant_status"), memberships.c.role,
                    users.c.disabled_at,
                )
                .join(oauth_grants, (oauth_grants.c.id == oauth_refresh_tokens.c.grant_id)
                      & (oauth_grants.c.tenant_id == oauth_refresh_tokens.c.tenant_id))
                .join(tenants, tenants.c.id == oauth_grants.c.tenant_id)
                .join(users, users.c.id == oauth_grants.c.user_id)
                .outerjoin(memberships, (memberships.c.tenant_id == oauth_grants.c.tenant_id)
                           & (memberships.c.user_id == oauth_grants.c.user_id))
                .where(oauth_refresh_tokens.c.digest == digest(refresh_token))
            )).first()
            if row is None:
                raise OAuthError("invalid_grant", "invalid refresh token")
            if row.client_id != client.client_id:
                raise OAuthError("invalid_grant", "the refresh token belongs to another client")
            if row.grant_revoked is not None or row.revoked_at is not None:
                raise OAuthError("invalid_grant", "the grant has been revoked")
            if row.expired:
                raise OAuthError("invalid_grant", "the refresh token has expired")
            if row.tenant_status != "active" or row.role is None or row.disabled_at is not None:
                raise OAuthError("invalid_grant", "the user no longer has access")
            _check_resource(resource, row.resource)
            access_scopes = _requested_scopes(scope, row.scopes)
            aad = row.id.bytes

            # 1. Compare-and-swap: of N concurrent refreshes with this token, one rotates.
            successor = mint_tenant_bound(REFRESH_PREFIX, tenant_id)
            swapped = (await conn.execute(
                oauth_refresh_tokens.update()
                .where(oauth_refresh_tokens.c.id == row.id,
                       oauth_refresh_tokens.c.used_at.is_(None),
                       oauth_refresh_tokens.c.revoked_at.is_(None))
                .values(used_at=sa.func.now(),
                        successor_sealed=sealer.seal(successor, aad))
                .returning(oauth_refresh_tokens.c.id)
            )).first()
            if swapped is not None:
                await conn.execute(oauth_refresh_tokens.insert().values(
                    **_refresh_row_values(settings, tenant_id, row.grant_id, successor,
                                          row.scopes, row.id)))
                if row.parent_id is not None:  # the parent's grace copy is now useless
                    await conn.execute(
                        oauth_refresh_tokens.update()
                        .where(oauth_refresh_tokens.c.id == row.parent_id)
                        .values(successor_sealed=None))
                access = await _issue_access(conn, settings, tenant_id, row.grant_id,
                                             access_scopes)
                await audit.write(conn, _grant_audit(
                    "oauth.token_refreshed", tenant_id, row.grant_id, client.client_id,
                    row.user_id, access_scopes, request, {"grant_type": "refresh_token"},
                    actor_type="oauth_client", actor_id=client.client_id,
                ))
                return TokenResponse(access, settings.access_token_ttl,
                                     " ".join(access_scopes), successor)

            # 2. Already used: a lost response within the grace, or theft.
            current = (await conn.execute(
                sa.select(
                    oauth_refresh_tokens.c.successor_sealed,
                    (oauth_refresh_tokens.c.used_at
                     >= sa.func.now() - dt.timedelta(seconds=settings.refresh_grace))
                    .label("in_grace"),
                ).where(oauth_refresh_tokens.c.id == row.id)
            )).one()
            child = (await conn.execute(
                sa.select(oauth_refresh_tokens.c.used_at, oauth_refresh_tokens.c.revoked_at)
                .where(oauth_refresh_tokens.c.parent_id == row.id)
            )).first()
            if (current.in_grace and current.successor_sealed is not None
                    and child is not None and child.used_at is None
                    and child.revoked_at is None):
                try:
                    same = sealer.open(bytes(current.successor_sealed), aad)
                except InvalidTag:  # sealed under an older session key: no retry, no theft
                    raise OAuthError("invalid_grant",
                                     "this refresh token was already used") from None
                access = await _issue_access(conn, settings, tenant_id, row.grant_id,
                                             access_scopes)
                await audit.write(conn, _grant_audit(
                    "oauth.token_refreshed", tenant_id, row.grant_id, client.client_id,
                    row.user_id, access_scopes, request,
                    {"grant_type": "refresh_token", "retry_within_grace": True},
                    actor_type="oauth_client", actor_id=client.client_id,
                ))
                return TokenResponse(access, settings.access_token_ttl,
                                     " ".join(access_scopes), same)
            theft = row.grant_id
            raise OAuthError("invalid_grant", "refresh token reuse detected; grant revoked")
    except OAuthError:
        if theft is not None:
            # 3. Theft: revoke the whole grant in its own committed transaction.
            await revoke_grant(db, tenant_id, theft, reason="refresh_token_reuse",
                               actor_type="system", actor_id="system:oauth", request=request,
                               action="oauth.refresh_reuse_detected")
        raise
    except DBAPIError as exc:
        # 4. A storage error is never a revocation.
        raise _storage_unavailable("refresh", exc) from None


# Revocation ---------------------------------------------------------------------------------


async def revoke_grant(
    db: Database, tenant_id: uuid.UUID, grant_id: uuid.UUID, *, reason: str,
    actor_type: audit.ActorType, actor_id: str, request: RequestContext | None,
    action: str = "oauth.grant_revoked", auth_path: audit.AuthPath = "oauth",
    acting_user_id: uuid.UUID | None = None,
) -> bool:
    """Revoke a grant and every access token, refresh token and pending code of it, in one
    transaction; the very next request with any of them fails. Returns False if there was no
    live grant with that id in the tenant."""
    async with db.tenant_transaction(tenant_id, actor=actor_id) as conn:
        row = (await conn.execute(
            oauth_grants.update()
            .where(oauth_grants.c.id == grant_id, oauth_grants.c.tenant_id == tenant_id,
                   oauth_grants.c.revoked_at.is_(None))
            .values(revoked_at=sa.func.now(), revoked_reason=reason)
            .returning(oauth_grants.c.client_id, oauth_grants.c.user_id, oauth_grants.c.scopes)
        )).first()
        if row is None:
            return False
        tokens = (await conn.execute(
            oauth_access_tokens.update()
            .where(oauth_access_tokens.c.grant_id == grant_id,
                   oauth_access_tokens.c.revoked_at.is_(None))
            .values(revoked_at=sa.func.now())
        )).rowcount
        refreshes = (await conn.execute(
            oauth_refresh_tokens.update()
            .where(oauth_refresh_tokens.c.grant_id == grant_id,
                   oauth_refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=sa.func.now(), successor_sealed=None)
        )).rowcount
        codes = (await conn.execute(
            oauth_codes.update()
            .where(oauth_codes.c.grant_id == grant_id, oauth_codes.c.used_at.is_(None))
            .values(used_at=sa.func.now())
        )).rowcount
        await audit.write(conn, _grant_audit(
            action, tenant_id, grant_id, row.client_id, acting_user_id or row.user_id,
            row.scopes, request,
            # (key names avoid "token": the audit redactor hides such keys' values)
            {"reason": reason, "access_revoked": tokens, "refresh_revoked": refreshes,
             "codes_revoked": codes, "grant_id": str(grant_id)},
            actor_type=actor_type, actor_id=actor_id, auth_path=auth_path,
            decision="denied" if action.endswith("_detected") else "allowed",
            outcome="blocked" if action.endswith("_detected") else "success",
            deny_reason=reason if action.endswith("_detected") else None,
        ))
    return True


async def revoke_token(
    db: Database, client: Client, token: str, hint: str | None, request: RequestContext
) -> None:
    """RFC 7009: revoking a refresh token revokes its grant; an access token, itself.
    Unknown or foreign tokens are ignored (the endpoint answers 200 either way)."""
    for prefix in (REFRESH_PREFIX, ACCESS_PREFIX):
        tenant_id = tenant_of(token, prefix)
        if tenant_id is None:
            continue
        table = oauth_refresh_tokens if prefix == REFRESH_PREFIX else oauth_access_tokens
        async with db.tenant_transaction(tenant_id, actor=f"oauth_client:{client.client_id}") \
                as conn:
            row = (await conn.execute(
                sa.select(table.c.id, table.c.grant_id, oauth_grants.c.client_id)
                .join(oauth_grants, (oauth_grants.c.id == table.c.grant_id)
                      & (oauth_grants.c.tenant_id == table.c.tenant_id))
                .where(table.c.digest == digest(token))
            )).first()
            if row is None or row.client_id != client.client_id:
                return
            if prefix == ACCESS_PREFIX:
                await conn.execute(table.update().where(table.c.id == row.id)
                                   .values(revoked_at=sa.func.coalesce(table.c.revoked_at,
                                                                       sa.func.now())))
                await audit.write(conn, _grant_audit(
                    "oauth.token_revoked", tenant_id, row.grant_id, client.client_id, None,
                    [], request, {"token_type": "access_token"},
                    actor_type="oauth_client", actor_id=client.client_id))
                return
        await revoke_grant(db, tenant_id, row.grant_id, reason="revoked_by_client",
                           actor_type="oauth_client", actor_id=client.client_id,
                           request=request)
        return


# Resource server ----------------------------------------------------------------------------


class TokenRejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_ACCESS_LOOKUP = (
    "SELECT a.scopes, a.revoked_at, a.expires_at <= now() AS expired,"
    " g.id AS grant_id, g.client_id, g.user_id, g.resource, g.revoked_at AS grant_revoked,"
    " g.last_used_at IS NULL OR g.last_used_at < now() - interval '60 seconds' AS touch,"
    " t.status AS tenant_status, m.role, u.disabled_at,"
    # The caller becomes the transaction's actor in the same round trip (Principal.actor and
    # acting_user_id); a rejected token's transaction is rolled back, taking this with it.
    " set_config('breeze.actor',"
    " 'user:' || g.user_id::text || ' via oauth_client:' || g.client_id, true),"
    " set_config('breeze.user_id', g.user_id::text, true)"
    " FROM oauth_access_tokens a"
    " JOIN oauth_grants g ON g.id = a.grant_id AND g.tenant_id = a.tenant_id"
    " JOIN tenants t ON t.id = g.tenant_id"
    " JOIN users u ON u.id = g.user_id"
    " LEFT OUTER JOIN memberships m ON m.tenant_id = g.tenant_id AND m.user_id = g.user_id"
    " WHERE a.digest = %s AND a.tenant_id = %s"
)
_GRANT_TOUCH = "UPDATE oauth_grants SET last_used_at = now() WHERE id = %s"


def access_lookup(token: str, tenant_id: uuid.UUID) -> Statement:
    """The lookup statement for a presented access token, ``tenant_id`` being the tenant it
    names (``tokens.tenant_of``); run by :meth:`Database.tenant_lookup` with its ``BEGIN``,
    judged by :func:`access_principal_from`."""
    return _ACCESS_LOOKUP, (digest(token), str(tenant_id))  # str: a cheaper literal


async def access_principal_from(
    conn: AsyncConnection, settings: Settings, tenant_id: uuid.UUID,
    row: tuple[Any, ...] | None,
) -> Principal:
    """The Principal for a presented access token, from the row :func:`access_lookup`'s
    statement returned for it, or :class:`TokenRejected`. The lookup also made the caller
    (``user:<id> via oauth_client:<id>``) the transaction's actor; callers roll back on
    :class:`TokenRejected` (``edge.bearer_transaction`` does)."""
    if row is None:
        raise TokenRejected("unknown token")
    (token_scopes, revoked_at, expired, grant_id, client_id, user_id, resource, grant_revoked,
     touch, tenant_status, role, disabled_at, _actor, _user_id) = row
    if revoked_at is not None or grant_revoked is not None:
        raise TokenRejected("revoked")
    if expired:
        raise TokenRejected("expired")
    if resource != settings.mcp_url:
        raise TokenRejected("token minted for another resource")
    if tenant_status != "active" or role is None or disabled_at is not None:
        raise TokenRejected("the user no longer has access to the tenant")
    scopes = frozenset(token_scopes) & ROLE_SCOPES[role]
    if not scopes:
        raise TokenRejected("the user's role no longer allows any granted scope")
    if touch:
        await driver(conn).execute(_GRANT_TOUCH, (grant_id,))
    return Principal(
        tenant_id=tenant_id,
        actor_type="oauth_client",
        actor_id=client_id,
        auth_path="oauth",
        credential_id=str(grant_id),
        scopes=scopes,
        acting_user_id=user_id,
        client_id=client_id,
        rate_limits=((f"grant:{grant_id}", settings.grant_rate_limit),),
    )


def new_state_token() -> str:
    return secrets.token_urlsafe(16)
