"""The token endpoint's grants: code exchange and refresh rotation (OAuth 2.1 §4.1.3, §4.3).

* Exchanging a code checks client, redirect URI, PKCE (:mod:`.codes`) and resource, and that
  the client is not blocked in the code's tenant (:mod:`.blocks`); a code presented twice
  revokes what it produced (RFC 6749 §10.5).
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

import psycopg
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from breeze_mcp.auth.credentials import CredentialRejected, usable_scopes
from breeze_mcp.auth.oauth.blocks import open_block_sql
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
from breeze_mcp.auth.oauth.registration import redirect_uri_matches
from breeze_mcp.auth.oauth.resource import normalize_resource
from breeze_mcp.auth.oauth.revocation import revoke_grant
from breeze_mcp.auth.principal import RequestContext
from breeze_mcp.auth.tokens import digest, mint_tenant_bound, tenant_of
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.models import (
    oauth_refresh_tokens,
)
from breeze_mcp.db.statements import Prepared, prepared

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



# The token endpoint's statements, prepared on every connection: a code exchange is three
# round trips (client, code lookup, then every write with the audit entry and COMMIT), a
# refresh too.
_CODE_LOOKUP = prepared(  # (the block's sub-select names columns, never values)
    "SELECT c.digest, c.grant_id, c.redirect_uri, c.code_challenge, c.resource, c.scopes,"  # noqa: S608
    " c.used_at, c.expires_at <= now() AS expired, g.client_id, g.user_id,"
    " g.revoked_at AS grant_revoked, "
    + open_block_sql("g.tenant_id", "g.client_id") + " AS blocked_until"
    " FROM oauth_codes c JOIN oauth_grants g ON g.id = c.grant_id AND g.tenant_id = c.tenant_id"
    " WHERE c.digest = %s FOR UPDATE OF c"
)
_USE_CODE = prepared("UPDATE oauth_codes SET used_at = now() WHERE digest = %s")
_INSERT_ACCESS = prepared(
    "INSERT INTO oauth_access_tokens (tenant_id, grant_id, digest, scopes, expires_at)"
    " VALUES (%s, %s, %s, %s, now() + %s * interval '1 second')"
)
_INSERT_REFRESH = prepared(
    "INSERT INTO oauth_refresh_tokens (tenant_id, grant_id, digest, parent_id, scopes,"
    " expires_at) VALUES (%s, %s, %s, %s, %s, now() + %s * interval '1 second')"
)
# The refresh token locked (FOR UPDATE: of concurrent refreshes with it, one rotates and the
# others wait, then see it used), with its grant and holder in the columns the credential
# rule judges (credentials.usable_scopes).
_REFRESH_LOOKUP = prepared(
    "SELECT r.id, r.grant_id, r.parent_id, r.scopes, r.used_at,"
    " r.revoked_at IS NOT NULL OR g.revoked_at IS NOT NULL AS revoked,"
    " r.expires_at <= now() AS expired, g.client_id, g.user_id, g.resource,"
    " t.status AS tenant_status, m.role, u.disabled_at"
    " FROM oauth_refresh_tokens r"
    " JOIN oauth_grants g ON g.id = r.grant_id AND g.tenant_id = r.tenant_id"
    " JOIN tenants t ON t.id = g.tenant_id"
    " JOIN users u ON u.id = g.user_id"
    " LEFT OUTER JOIN memberships m ON m.tenant_id = g.tenant_id AND m.user_id = g.user_id"
    " WHERE r.digest = %s FOR UPDATE OF r"
)
_ROTATE = prepared(
    "UPDATE oauth_refresh_tokens SET used_at = now(), successor_sealed = %s WHERE id = %s"
)
_DROP_GRACE_COPY = prepared(
    "UPDATE oauth_refresh_tokens SET successor_sealed = NULL WHERE id = %s"
)


def _access_insert(settings: Settings, tenant_id: uuid.UUID, grant_id: uuid.UUID,
                   scopes: Sequence[str]) -> tuple[str, tuple[Prepared, tuple[Any, ...]]]:
    """A new access token and the statement that stores it."""
    token = mint_tenant_bound(ACCESS_PREFIX, tenant_id)
    return token, (_INSERT_ACCESS, (str(tenant_id), grant_id, digest(token), list(scopes),
                                    settings.access_token_ttl))


def _refresh_insert(settings: Settings, tenant_id: uuid.UUID, grant_id: uuid.UUID,
                    scopes: Sequence[str], parent_id: uuid.UUID | None,
                    ) -> tuple[str, tuple[Prepared, tuple[Any, ...]]]:
    """A new refresh token and the statement that stores it."""
    token = mint_tenant_bound(REFRESH_PREFIX, tenant_id)
    return token, (_INSERT_REFRESH, (str(tenant_id), grant_id, digest(token), parent_id,
                                     list(scopes), settings.refresh_token_ttl))


#: The refresh endpoint's words for each refusal of the credential rule.
_REFRESH_REFUSED = {
    "unknown": "invalid refresh token",
    "revoked": "the grant has been revoked",
    "expired": "the refresh token has expired",
    "no_access": "the user no longer has access",
    "tenant_inactive": "the tenant is not active",
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
        async with db.tenant_lookup(tenant_id, (_CODE_LOOKUP, (digest(code),))) as (tx, row):
            if row is None:
                raise InvalidGrant("invalid authorization code")
            if row.client_id != client.client_id:
                raise InvalidGrant("the code was issued to another client")
            if row.blocked_until is not None:
                raise InvalidGrant("an administrator of the organization has blocked this "
                                   "application")
            if row.used_at is not None:
                replayed = row.grant_id  # RFC 6749 §10.5: revoke what the code produced
                raise InvalidGrant("authorization code already used")
            if row.grant_revoked is not None or row.expired:
                raise InvalidGrant("authorization code expired or revoked")
            if redirect_uri is None or redirect_uri != row.redirect_uri:
                raise InvalidGrant("redirect_uri does not match the request")
            if not redirect_uri_matches(client.redirect_uris, redirect_uri):
                # A metadata document that dropped the URI since the code was issued.
                raise InvalidGrant("redirect_uri is no longer registered for this client")
            if not code_verifier:
                raise InvalidRequest("code_verifier is required (PKCE)")
            if not verify_pkce(code_verifier, row.code_challenge):
                raise InvalidGrant("PKCE verification failed")
            _check_resource(resource, row.resource)
            scopes = list(row.scopes)
            access, store_access = _access_insert(settings, tenant_id, row.grant_id, scopes)
            writes = [(_USE_CODE, (row.digest,)), store_access]
            refresh_token = None
            if "refresh_token" in client.grant_types:
                refresh_token, store_refresh = _refresh_insert(
                    settings, tenant_id, row.grant_id, scopes, None)
                writes.append(store_refresh)
            await tx.finish(grant_audit(
                "oauth.token_issued", tenant_id, row.grant_id, client.client_id, row.user_id,
                scopes, request, {"grant_type": "authorization_code"},
                actor_type="oauth_client", actor_id=client.client_id,
            ), then=writes)
    except OAuthError:
        if replayed is not None:
            async with db.tenant(tenant_id) as tx:
                await revoke_grant(tx, tenant_id, replayed, reason="authorization_code_replay",
                                   actor_type="system", actor_id="system:oauth",
                                   request=request, action="oauth.code_replay_detected")
                await tx.finish(None)  # the revocation carries its own entry
        raise
    except psycopg.Error as exc:
        raise _storage_unavailable("code exchange", exc) from None
    return TokenResponse(access, settings.access_token_ttl, " ".join(scopes), refresh_token)


def _storage_unavailable(what: str, exc: psycopg.Error) -> TemporarilyUnavailable:
    """A storage error at the token endpoint: ``503 temporarily_unavailable``, never a
    revocation. Logged by class and SQLSTATE only: the server's message can quote row values
    (a unique violation names the key, here a token's digest)."""
    log.warning("%s storage error: %s (SQLSTATE %s)", what, type(exc).__name__, exc.sqlstate)
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
        async with db.tenant_lookup(tenant_id, (_REFRESH_LOOKUP, (digest(refresh_token),))) \
                as (conn, row):
            if row is not None and row.client_id != client.client_id:
                raise InvalidGrant("the refresh token belongs to another client")
            try:
                usable = usable_scopes(row)  # the rule every credential obeys
            except CredentialRejected as exc:
                raise InvalidGrant(_REFRESH_REFUSED[exc.reason]) from None
            _check_resource(resource, row.resource)
            # The new access token has what the holder's role allows today (a demotion shows
            # at once); the refresh token keeps the grant's scopes for when it is lifted.
            access_scopes = _requested_scopes(scope, [s for s in row.scopes if s in usable])
            aad = row.id.bytes

            # 1. Unused: rotate. The row is locked, so this refresh is the only one.
            if row.used_at is None:
                successor, store_successor = _refresh_insert(
                    settings, tenant_id, row.grant_id, row.scopes, row.id)
                access, store_access = _access_insert(settings, tenant_id, row.grant_id,
                                                      access_scopes)
                writes = [(_ROTATE, (sealer.seal(successor, aad), row.id)), store_successor,
                          store_access]
                if row.parent_id is not None:  # the parent's grace copy is now useless
                    writes.append((_DROP_GRACE_COPY, (row.parent_id,)))
                await conn.finish(grant_audit(
                    "oauth.token_refreshed", tenant_id, row.grant_id, client.client_id,
                    row.user_id, access_scopes, request, {"grant_type": "refresh_token"},
                    actor_type="oauth_client", actor_id=client.client_id,
                ), then=writes)
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
                access, store_access = _access_insert(settings, tenant_id, row.grant_id,
                                                      access_scopes)
                await conn.finish(grant_audit(
                    "oauth.token_refreshed", tenant_id, row.grant_id, client.client_id,
                    row.user_id, access_scopes, request,
                    {"grant_type": "refresh_token", "retry_within_grace": True},
                    actor_type="oauth_client", actor_id=client.client_id,
                ), then=[store_access])
                return TokenResponse(access, settings.access_token_ttl,
                                     " ".join(access_scopes), same)
            theft = row.grant_id
            raise InvalidGrant("refresh token reuse detected; grant revoked")
    except OAuthError:
        if theft is not None:
            # 3. Theft: revoke the whole grant in its own committed transaction.
            async with db.tenant(tenant_id) as tx:
                await revoke_grant(tx, tenant_id, theft, reason="refresh_token_reuse",
                                   actor_type="system", actor_id="system:oauth",
                                   request=request, action="oauth.refresh_reuse_detected")
                await tx.finish(None)  # the revocation carries its own entry
        raise
    except psycopg.Error as exc:
        # 4. A storage error is never a revocation.
        raise _storage_unavailable("refresh", exc) from None

