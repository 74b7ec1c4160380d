"""Shared HTTP-edge helpers: request context, bearer authentication, challenges.

The edges (MCP endpoint, REST) parse the request, resolve the client IP once, authenticate
the bearer credential into a Principal, and hand over to the call pipeline.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from breeze_mcp.auth import api_keys, oauth
from breeze_mcp.auth.client_ip import resolve_client_ip
from breeze_mcp.auth.principal import ALL_SCOPES, Principal, RequestContext
from breeze_mcp.services import Services

__all__ = [
    "AuthFailure",
    "authenticate_bearer",
    "bearer_challenge",
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
