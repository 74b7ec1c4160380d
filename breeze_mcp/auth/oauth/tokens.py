"""The token endpoint's grants: code exchange and refresh rotation (OAuth 2.1 §4.1.3, §4.3).

* Exchanging a code checks client, redirect URI, PKCE (:mod:`.codes`) and resource; a code
  presented twice revokes what it produced (RFC 6749 §10.5).
* Refresh rotation is a compare-and-swap on the presented token's row. The immediate
  predecessor of the live token, presented again within the grace window while its successor
  is unused, gets the same successor back (a lost response, not a fork); any other reuse
  revokes the whole grant (theft). See "Refresh rotation" in ``docs/security.md``.
* A storage error is ``503 temporarily_unavailable``, never a revocation.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from breeze_mcp import audit
from breeze_mcp.auth.oauth.clients import Client
from breeze_mcp.auth.oauth.codes import verify_pkce
from breeze_mcp.auth.oauth.errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    TemporarilyUnavailable,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from breeze_mcp.auth.oauth.grants import (
    ACCESS_PREFIX,
    CODE_PREFIX,
    REFRESH_PREFIX,
    canonical_scopes,
    grant_audit,
    parse_scope,
)
from breeze_mcp.auth.oauth.resource import normalize_resource
from breeze_mcp.auth.oauth.revocation import revoke_grant
from breeze_mcp.auth.principal import RequestContext
from breeze_mcp.auth.tokens import digest, mint_tenant_bound, tenant_of
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.models import (
    memberships,
    oauth_access_tokens,
    oauth_codes,
    oauth_grants,
    oauth_refresh_tokens,
    tenants,
    users,
)

__all__ = [
    "AuthorizationCodeRequest",
    "RefreshTokenRequest",
    "TokenRequest",
    "TokenResponse",
    "exchange_code",
    "parse_token_request",
    "refresh",
]

log = logging.getLogger(__name__)


# Typed token requests --------------------------------------------------------------------


class _Form(BaseModel):
    # Unknown fields (client_id, client_secret, extensions) are ignored, as RFC 6749 §3.2 asks.
    model_config = ConfigDict(frozen=True, extra="ignore")


class AuthorizationCodeRequest(_Form):
    """OAuth 2.1 §4.1.3: the code, with the PKCE verifier and the redirect URI it was
    issued for (those two are judged against the code, so a missing one is checked there)."""

    grant_type: Literal["authorization_code"]
    code: str = Field(min_length=1)
    code_verifier: str | None = None
    redirect_uri: str | None = None
    resource: str | None = None


class RefreshTokenRequest(_Form):
    """OAuth 2.1 §4.3.1: a refresh token, optionally narrowing the scope."""

    grant_type: Literal["refresh_token"]
    refresh_token: str = Field(min_length=1)
    scope: str | None = None
    resource: str | None = None


TokenRequest = Annotated[AuthorizationCodeRequest | RefreshTokenRequest,
                         Field(discriminator="grant_type")]
_TOKEN_REQUEST: TypeAdapter[TokenRequest] = TypeAdapter(TokenRequest)


def parse_token_request(form: Mapping[str, str]) -> TokenRequest:
    """The ``/token`` form as a typed request: ``unsupported_grant_type`` for a grant we do
    not serve, ``invalid_request`` naming the first missing field."""
    try:
        return _TOKEN_REQUEST.validate_python(dict(form))
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    if first["type"] == "union_tag_invalid" and form.get("grant_type"):
        raise UnsupportedGrantType("use authorization_code or refresh_token")
    name = str(first["loc"][-1]) if first["type"] not in (
        "union_tag_invalid", "union_tag_not_found") else "grant_type"
    raise InvalidRequest(f"{name} is required")


# Rotation and exchange -------------------------------------------------------------------


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
        raise InvalidScope(f"scope {beyond[0]!r} was not granted")
    return canonical_scopes(asked) or list(allowed)


def _check_resource(resource: str | None, bound: str) -> None:
    if resource is not None and normalize_resource(resource) != bound:
        raise InvalidTarget("resource does not match this grant's resource")


async def exchange_code(
    db: Database, settings: Settings, client: Client, token_request: AuthorizationCodeRequest,
    *, request: RequestContext,
) -> TokenResponse:
    code, code_verifier = token_request.code, token_request.code_verifier
    redirect_uri, resource = token_request.redirect_uri, token_request.resource
    tenant_id = tenant_of(code, CODE_PREFIX)
    if tenant_id is None:
        raise InvalidGrant("invalid authorization code")
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
                raise InvalidGrant("invalid authorization code")
            if row.client_id != client.client_id:
                raise InvalidGrant("the code was issued to another client")
            if row.used_at is not None:
                replayed = row.grant_id  # RFC 6749 §10.5: revoke what the code produced
                raise InvalidGrant("authorization code already used")
            if row.grant_revoked is not None or row.expired:
                raise InvalidGrant("authorization code expired or revoked")
            if redirect_uri is None or redirect_uri != row.redirect_uri:
                raise InvalidGrant("redirect_uri does not match the request")
            if not code_verifier:
                raise InvalidRequest("code_verifier is required (PKCE)")
            if not verify_pkce(code_verifier, row.code_challenge):
                raise InvalidGrant("PKCE verification failed")
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
            await audit.write(conn, grant_audit(
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


def _storage_unavailable(what: str, exc: DBAPIError) -> TemporarilyUnavailable:
    """A storage error at the token endpoint: ``503 temporarily_unavailable``, never a
    revocation. Logged by class and SQLSTATE only: the server's message can quote row values
    (a unique violation names the key, here a token's digest)."""
    log.warning("%s storage error: %s (SQLSTATE %s)", what, type(exc.orig).__name__,
                getattr(exc.orig, "sqlstate", None))
    return TemporarilyUnavailable("try again", headers={"Retry-After": "1"})


async def refresh(
    db: Database, settings: Settings, client: Client, token_request: RefreshTokenRequest,
    *, request: RequestContext,
) -> TokenResponse:
    if "refresh_token" not in client.grant_types:
        raise UnauthorizedClient("this client did not register the refresh_token grant")
    refresh_token, scope, resource = (token_request.refresh_token, token_request.scope,
                                      token_request.resource)
    tenant_id = tenant_of(refresh_token, REFRESH_PREFIX)
    if tenant_id is None:
        raise InvalidGrant("invalid refresh token")
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
                raise InvalidGrant("invalid refresh token")
            if row.client_id != client.client_id:
                raise InvalidGrant("the refresh token belongs to another client")
            if row.grant_revoked is not None or row.revoked_at is not None:
                raise InvalidGrant("the grant has been revoked")
            if row.expired:
                raise InvalidGrant("the refresh token has expired")
            if row.tenant_status != "active" or row.role is None or row.disabled_at is not None:
                raise InvalidGrant("the user no longer has access")
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
                await audit.write(conn, grant_audit(
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
                    raise InvalidGrant("this refresh token was already used") from None
                access = await _issue_access(conn, settings, tenant_id, row.grant_id,
                                             access_scopes)
                await audit.write(conn, grant_audit(
                    "oauth.token_refreshed", tenant_id, row.grant_id, client.client_id,
                    row.user_id, access_scopes, request,
                    {"grant_type": "refresh_token", "retry_within_grace": True},
                    actor_type="oauth_client", actor_id=client.client_id,
                ))
                return TokenResponse(access, settings.access_token_ttl,
                                     " ".join(access_scopes), same)
            theft = row.grant_id
            raise InvalidGrant("refresh token reuse detected; grant revoked")
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

