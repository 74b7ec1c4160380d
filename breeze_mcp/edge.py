"""Shared HTTP-edge helpers: request context, bearer authentication, challenges.

The edges (MCP endpoint, REST) parse the request, resolve the client IP once, authenticate
the bearer credential into a Principal, and hand over to the call pipeline.
"""

from __future__ import annotations

import random
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


_ids = random.Random()  # noqa: S311 - request ids correlate log lines, they grant nothing


def request_context(request: Request, services: Services) -> RequestContext:
    peer = request.client.host if request.client else None
    header = services.settings.forwarded_header
    ip = resolve_client_ip(
        peer,
        header=header,
        values=request.headers.getlist(header),
        trusted=services.trusted_proxies,
    )
    supplied = request.headers.get("x-request-id", "")
    # A correlation id, not a secret: a fast generator (seeded from os.urandom) will do.
    request_id = supplied if 0 < len(supplied) <= 64 and supplied.isprintable() else (
        f"{_ids.getrandbits(64):016x}")
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


_REFUSED = {
    api_keys.PREFIX: "the API key is invalid, expired or revoked",
    oauth.ACCESS_PREFIX: "the access token is invalid, expired or revoked",
}


class _Rejected(Exception):
    def __init__(self, failure: AuthFailure) -> None:
        self.failure = failure


@asynccontextmanager
async def bearer_transaction(
    request: Request, services: Services
) -> AsyncIterator[tuple[Principal, AsyncConnection] | AuthFailure]:
    """The one place a bearer credential is read and checked.

    Only ``Authorization: Bearer`` counts (never the query string). The credential's prefix
    says what it is (``bzk_`` API key, ``bza_`` OAuth access token) and which tenant it names;
    its lookup runs as the first statement of that tenant's transaction, in the same round trip
    as its ``BEGIN`` (:meth:`Database.tenant_lookup`), starting as the actor ``system:auth``,
    and itself names the caller as the actor (``Principal.actor`` and
    ``acting_user_id``, in the same statement). The transaction is kept for the rest of the
    request: the call pipeline runs the tool and writes its audit entry in it (one checkout,
    one commit per call). A refused credential rolls back and yields an :class:`AuthFailure`.
    """
    token = _bearer_token(request.headers)
    if token is None:
        yield AuthFailure(None, "authentication required")
        return
    if token == "":
        yield AuthFailure("invalid_request", "use Authorization: Bearer <token>")
        return
    prefix = token.split("_", 1)[0]
    tenant_id = tenant_of(token, prefix) if prefix in _REFUSED else None
    if tenant_id is None:  # not a credential any database row could match
        yield AuthFailure("invalid_token",
                          _REFUSED.get(prefix, "the access token is invalid or expired"))
        return
    statement = (api_keys.lookup(token, tenant_id) if prefix == api_keys.PREFIX
                 else oauth.access_lookup(token, tenant_id))
    try:
        async with services.db.tenant_lookup(tenant_id, actor="system:auth",
                                             first=statement) as (conn, row):
            try:
                if prefix == api_keys.PREFIX:
                    principal = await api_keys.principal_from(
                        conn, tenant_id, row,
                        default_rate_limit=services.settings.api_key_rate_limit)
                else:
                    principal = await oauth.access_principal_from(
                        conn, services.settings, tenant_id, row)
            except (api_keys.KeyRejected, oauth.TokenRejected):
                # rolls back, the lookup's actor with it
                raise _Rejected(AuthFailure("invalid_token", _REFUSED[prefix])) from None
            yield principal, conn
            return
    except _Rejected as rejected:
        failure = rejected.failure
    yield failure


async def authenticate_bearer(request: Request, services: Services) -> Principal | AuthFailure:
    """The Principal for the request's bearer credential (for endpoints that need no
    transaction afterwards); the same check as :func:`bearer_transaction`."""
    async with bearer_transaction(request, services) as result:
        return result if isinstance(result, AuthFailure) else result[0]


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
