"""Shared HTTP-edge helpers: request context, bearer authentication, challenges.

The edges (MCP endpoint, REST) parse the request, resolve the client IP once, authenticate
the bearer credential into a Principal, and hand over to the call pipeline.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from breeze_mcp.auth import api_keys, auth_failures, oauth
from breeze_mcp.auth.accounts import activation_missing
from breeze_mcp.auth.client_ip import resolve_client_ip
from breeze_mcp.auth.credentials import CredentialRejected, Reason
from breeze_mcp.auth.principal import ALL_SCOPES, AuthPath, Principal, RequestContext
from breeze_mcp.auth.rate_limit import RateDecision
from breeze_mcp.auth.tokens import tenant_of
from breeze_mcp.db.engine import Transaction
from breeze_mcp.http_request import RepeatedCredential, authorization
from breeze_mcp.services import Services

__all__ = [
    "AuthFailure",
    "authenticate_bearer",
    "bearer_challenge",
    "bearer_transaction",
    "meter",
    "read_body",
    "request_context",
    "request_id_of",
]


_ids = random.Random()  # noqa: S311 - request ids correlate log lines, they grant nothing


def request_id_of(request: Request) -> str:
    """The caller's ``X-Request-Id`` when it is a sane correlation id (1-64 printable
    characters), else a fresh one."""
    supplied = request.headers.get("x-request-id", "")
    if 0 < len(supplied) <= 64 and supplied.isprintable():
        return supplied
    # A correlation id, not a secret: a fast generator (seeded from os.urandom) will do.
    return f"{_ids.getrandbits(64):016x}"


def request_context(request: Request, services: Services) -> RequestContext:
    peer = request.client.host if request.client else None
    header = services.settings.forwarded_header
    ip = resolve_client_ip(
        peer,
        header=header,
        values=request.headers.getlist(header),
        trusted=services.trusted_proxies,
    )
    return RequestContext(
        request_id=request_id_of(request),
        client_ip=ip,
        user_agent=request.headers.get("user-agent"),
    )


@dataclass(frozen=True)
class AuthFailure:
    """No usable credential: a 401 with an RFC 6750 challenge; or, with ``rate``, a 429: the
    source address failed too often (:mod:`breeze_mcp.auth.auth_failures`)."""

    error: str | None  # None when no credential was sent at all
    description: str
    rate: RateDecision | None = None
    #: For a valid credential of a tenant that is not active: what it lacks (answered 403
    #: ``tenant_inactive``, not 401: the credential is fine).
    missing: tuple[str, ...] | None = None


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


def _bearer_token(value: str | None) -> str | None:
    """The bearer token in an ``Authorization`` value; None when no credential was sent; ""
    when what was sent is not one bearer token (``invalid_request``)."""
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


def _door(request: Request, prefix: str | None) -> AuthPath:
    """The credential's kind by its prefix, else the door's usual one (OAuth for ``/mcp``)."""
    if prefix == api_keys.PREFIX:
        return "api_key"
    if prefix == oauth.ACCESS_PREFIX or request.scope["path"].startswith("/mcp"):
        return "oauth"
    return "api_key"


async def _failed(
    request: Request, services: Services, failure: AuthFailure, reason: Reason,
    token: str | None, *, context: RequestContext | None = None, detail: str | None = None,
) -> AuthFailure:
    """Count and audit a failed authentication; the answer (a 429 once the source has failed
    too often)."""
    context = context or request_context(request, services)
    source = auth_failures.source_of(context)
    if reason not in ("missing", "throttled", "tenant_inactive"):
        refusal = await auth_failures.count_failure(services, source)
        if refusal is not None:
            failure = _throttled(refusal)
    prefix = token.split("_", 1)[0] if token and "_" in token else None
    await auth_failures.record(
        services, context, source=source, reason=reason, auth_path=_door(request, prefix),
        prefix=auth_failures.credential_prefix(token) if token else None,
        endpoint=request.scope["path"], detail=detail)
    return failure


def _throttled(refusal: RateDecision) -> AuthFailure:
    return AuthFailure("rate_limited", "too many failed authentications from this address; "
                       f"retry in {max(refusal.reset_after, 1)}s", rate=refusal)


@asynccontextmanager
async def bearer_transaction(
    request: Request, services: Services
) -> AsyncIterator[tuple[Principal, Transaction] | AuthFailure]:
    """The one place a bearer credential is read and checked.

    Only ``Authorization: Bearer`` counts (never the query string). The credential's prefix
    names its kind and its tenant, and its lookup is the first statement of that tenant's
    transaction, which the call pipeline then finishes. A refused credential rolls back and
    yields an :class:`AuthFailure`, counted and audited per source address
    (:mod:`breeze_mcp.auth.auth_failures`); a throttled source is refused before any lookup.
    """
    malformed = "use Authorization: Bearer <token>"
    try:
        token = _bearer_token(authorization(request.headers))
    except RepeatedCredential as exc:
        token, malformed = "", str(exc)
    if services.limiter.holds_refusals:  # else no source is throttled: nothing to resolve
        context = request_context(request, services)
        refusal = auth_failures.throttled(services, auth_failures.source_of(context))
        if refusal is not None:
            yield await _failed(request, services, _throttled(refusal), "throttled", token,
                                context=context)
            return
    if token is None:
        yield await _failed(request, services, AuthFailure(None, "authentication required"),
                            "missing", None)
        return
    if token == "":
        yield await _failed(request, services, AuthFailure("invalid_request", malformed),
                            "malformed", None)
        return
    prefix = token.split("_", 1)[0]
    tenant_id = tenant_of(token, prefix) if prefix in _REFUSED else None
    if tenant_id is None:  # not a credential any database row could match
        yield await _failed(request, services, AuthFailure(
            "invalid_token", _REFUSED.get(prefix, "the access token is invalid or expired")),
            "malformed", token)
        return
    statement = (api_keys.lookup(token, tenant_id) if prefix == api_keys.PREFIX
                 else oauth.access_lookup(token, tenant_id))
    rejected: CredentialRejected | None = None
    missing: tuple[str, ...] = ()
    async with services.db.tenant_lookup(tenant_id, statement) as (tx, row):
        try:
            if prefix == api_keys.PREFIX:
                principal = await api_keys.principal_from(
                    tx, tenant_id, row, default_rate_limit=services.settings.api_key_rate_limit)
            else:
                principal = await oauth.access_principal_from(tx, services.settings, tenant_id,
                                                              row)
        except CredentialRejected as exc:
            rejected = exc  # rolled back; audited once the connection is back in the pool
            if exc.reason == "tenant_inactive":
                missing = tuple(await activation_missing(tx, tenant_id))
        else:
            yield principal, tx
            return
    assert rejected is not None
    if rejected.reason == "tenant_inactive":
        yield await _failed(request, services, AuthFailure(
            "tenant_inactive", "this credential's tenant is not active yet; it needs "
            + " and ".join(missing) if missing else "this credential's tenant is not active",
            missing=missing), "tenant_inactive", token, detail=rejected.detail)
        return
    yield await _failed(request, services, AuthFailure("invalid_token", _REFUSED[prefix]),
                        rejected.reason, token,
                        detail=rejected.detail if rejected.reason == "no_access" else None)


async def authenticate_bearer(request: Request, services: Services) -> Principal | AuthFailure:
    """The Principal for the request's bearer credential (for endpoints that need no
    transaction afterwards); the same check as :func:`bearer_transaction`."""
    async with bearer_transaction(request, services) as result:
        return result if isinstance(result, AuthFailure) else result[0]


async def meter(
    request: Request, services: Services, principal: Principal, action: str,
    tx: Transaction | None = None, parameters: Mapping[str, Any] | None = None,
) -> RateDecision | None:
    """Count an authenticated request that is not a tools call against the caller's own
    buckets (``Principal.rate_limits``, the ones ``call_tool`` draws from; one request, one
    unit). A refusal is audited like a refused tools call, finishing ``tx`` (the request's
    transaction) or a tenant transaction of its own, and returned for the 429; otherwise the
    tightest allowance (for the RateLimit headers), and ``tx`` stays open for the request.
    """
    decision = await services.limiter.hit_all(principal.rate_limits)
    if decision is None or decision.allowed:
        return decision
    entry = principal.audit_entry(
        request_context(request, services), action=action, parameters=parameters or {},
        decision="denied", outcome="rate_limited", deny_reason=f"rate_limit:{decision.bucket}")
    if tx is not None:
        await tx.finish(entry)
    else:
        async with services.db.tenant(principal.tenant_id,
                                      user_id=principal.acting_user_id) as own:
            await own.finish(entry)
    return decision


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
