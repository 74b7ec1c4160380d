"""Shared HTTP-edge helpers: request context, bearer authentication, challenges.

The edges (MCP endpoint, REST) parse the request, resolve the client IP once, authenticate
the bearer credential into a Principal, and hand over to the call pipeline.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from breeze_mcp.auth import api_keys, oauth
from breeze_mcp.auth.client_ip import resolve_client_ip
from breeze_mcp.auth.principal import ALL_SCOPES, Principal, RequestContext
from breeze_mcp.auth.tokens import tenant_of
from breeze_mcp.services import Services

__all__ = [
    "AuthFailure",
    "authenticate_bearer",
    "bearer_challenge",
    "bearer_transaction",
    "read_body",
    "request_context",
]


def request_context(request: Request, services: Services) -> RequestContext:
    peer = request.client.host if request.client else None
    ip = resolve_client_ip(
        peer,
        x_forwarded_for=request.headers.getlist("x-forwarded-for"),
        forwarded=request.headers.getlist("forwarded"),
        trusted=services.trusted_proxies,
    )
    supplied = request.headers.get("x-request-id", "")
    request_id = supplied if 0 < len(supplied) <= 64 and supplied.isprintable() else (
        secrets.token_hex(8))
    return RequestContext(
        request_id=request_id,
        client_ip=ip,
        user_agent=request.headers.get("user-agent"),
    )


@dataclass(frozen=True)
class AuthFailure:
    """No usable credential: a 401 with an RFC 6750 challenge."""

    error: str | None  # None when no credential was sent at all
    description: str


def prm_url(services: Services) -> str:
    return f"{services.settings.public_url}/.well-known/oauth-protected-resource/mcp"


def bearer_challenge(
    services: Services,
    *,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
) -> str:
    parts = []
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append('error_description="' + description.replace('"', "'") + '"')
    parts.append(f'resource_metadata="{prm_url(services)}"')
    parts.append(f'scope="{scope or " ".join(ALL_SCOPES)}"')
    return "Bearer " + ", ".join(parts)


def _bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


async def authenticate_bearer(request: Request, services: Services) -> Principal | AuthFailure:
    """The Principal for ``Authorization: Bearer``; tokens are never read from the query."""
    token = _bearer_token(request.headers)
    if token is None:
        return AuthFailure(None, "authentication required")
    if token == "":
        return AuthFailure("invalid_request", "use Authorization: Bearer <token>")
    if token.startswith(api_keys.PREFIX + "_"):
        try:
            return await api_keys.authenticate(
                services.db, token, default_rate_limit=services.settings.api_key_rate_limit
            )
        except api_keys.KeyRejected:
            return AuthFailure("invalid_token", "the API key is invalid, expired or revoked")
    if token.startswith(oauth.ACCESS_PREFIX + "_"):
        try:
            return await oauth.authenticate_access_token(services.db, services.settings, token)
        except oauth.TokenRejected:
            return AuthFailure("invalid_token", "the access token is invalid, expired or revoked")
    return AuthFailure("invalid_token", "the access token is invalid or expired")


class _Rejected(Exception):
    def __init__(self, failure: AuthFailure) -> None:
        self.failure = failure


@asynccontextmanager
async def bearer_transaction(
    request: Request, services: Services
) -> AsyncIterator[tuple[Principal, AsyncConnection] | AuthFailure]:
    """Authenticate ``Authorization: Bearer`` as the first statements of the credential's
    tenant transaction, and keep that transaction for the rest of the request.

    The tenant comes from the credential's prefix; the transaction starts as the actor
    ``system:auth``, and the credential lookup itself names the caller as its actor
    (``Principal.actor`` and ``acting_user_id``, in the same statement). The
    call pipeline runs the tool and writes its audit entry in the same transaction (one
    checkout, one commit per call). A refused credential rolls back and yields an
    :class:`AuthFailure`, exactly as :func:`authenticate_bearer` would.
    """
    token = _bearer_token(request.headers)
    tenant_id = None
    if token and token.startswith(api_keys.PREFIX + "_"):
        tenant_id = tenant_of(token, api_keys.PREFIX)
    elif token and token.startswith(oauth.ACCESS_PREFIX + "_"):
        tenant_id = tenant_of(token, oauth.ACCESS_PREFIX)
    if token is None or tenant_id is None:  # no credential, or none a database could accept
        refused = await authenticate_bearer(request, services)
        assert isinstance(refused, AuthFailure)
        yield refused
        return
    try:
        async with services.db.tenant_transaction(tenant_id, actor="system:auth") as conn:
            principal = await _authenticate_in(conn, token, services)
            if isinstance(principal, AuthFailure):
                raise _Rejected(principal)  # rolls back, the lookup's actor with it
            yield principal, conn
            return
    except _Rejected as rejected:
        failure = rejected.failure
    yield failure


async def _authenticate_in(
    conn: AsyncConnection, token: str, services: Services
) -> Principal | AuthFailure:
    if token.startswith(api_keys.PREFIX + "_"):
        try:
            return await api_keys.authenticate(
                conn, token, default_rate_limit=services.settings.api_key_rate_limit
            )
        except api_keys.KeyRejected:
            return AuthFailure("invalid_token", "the API key is invalid, expired or revoked")
    try:
        return await oauth.authenticate_access_token(conn, services.settings, token)
    except oauth.TokenRejected:
        return AuthFailure("invalid_token", "the access token is invalid, expired or revoked")


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
