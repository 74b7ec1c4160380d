"""Admin REST endpoints for OAuth grants: list them, revoke one, revoke every grant of a client.

Callers authenticate with an API key whose creator is an owner or admin of the tenant at the
time of the request; revoking needs a key with ``ai:write``. OAuth access tokens are
refused here: an AI client is never handed the power to manage other clients' grants. Each
revocation kills every access token, refresh token and pending code of the grant in the same
request, and is audited. Every request counts against the key's rate limit.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from breeze_mcp.auth import oauth
from breeze_mcp.auth.principal import Principal
from breeze_mcp.db.engine import Transaction
from breeze_mcp.edge import (
    AuthFailure,
    bearer_challenge,
    bearer_transaction,
    meter,
    request_context,
)
from breeze_mcp.services import Services

__all__ = ["list_grants", "revoke_client_grants", "revoke_one_grant"]

ADMIN_ROLES = ("owner", "admin")


def _refused(code: str, message: str, status: int,
             headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status,
                        headers=headers)


Work = Callable[[Principal, Transaction], Awaitable[Response]]


async def _admin(request: Request, action: str, work: Work, *, mutate: bool = False) -> Response:
    """Authenticate, meter and authorize an admin request, then run ``work`` in the
    request's one tenant transaction (the credential lookup's), which ``work`` finishes."""
    services: Services = request.app.state.services
    async with bearer_transaction(request, services) as authenticated:
        if isinstance(authenticated, AuthFailure):
            if authenticated.rate is not None:  # the source failed too often
                return _refused("rate_limited", authenticated.description, 429,
                                authenticated.rate.headers())
            if authenticated.missing is not None:  # a valid credential, an inactive tenant
                return _refused("tenant_inactive", authenticated.description, 403,
                                missing=list(authenticated.missing))
            return _refused(
                authenticated.error or "unauthorized", authenticated.description, 401,
                {"WWW-Authenticate": bearer_challenge(services, error=authenticated.error)})
        principal, tx = authenticated
        rate = await meter(request, services, principal, action, tx)
        if rate is not None and not rate.allowed:
            return _refused("rate_limited", rate.message, 429, rate.headers())
        if principal.auth_path != "api_key":
            return _refused("forbidden", "grant management needs an API key created by an "
                            "owner or admin", 403)
        if mutate and "ai:write" not in principal.scopes:
            return _refused("insufficient_scope", "revoking grants needs a key with ai:write",
                            403, required_scope="ai:write")
        if principal.role not in ADMIN_ROLES:
            return _refused("forbidden", "only owners and admins manage OAuth grants", 403)
        return await work(principal, tx)


def _grant_json(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id), "client_id": row.client_id, "client_name": row.client_name,
        "user_id": str(row.user_id), "user_email": row.email, "scopes": list(row.scopes),
        "resource": row.resource, "created_at": row.created_at.isoformat(),
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "revoked_reason": row.revoked_reason,
    }


async def list_grants(request: Request) -> Response:
    include_revoked = request.query_params.get("include_revoked") == "true"

    async def work(principal: Principal, tx: Transaction) -> Response:
        rows = await oauth.list_tenant_grants(tx, principal.tenant_id,
                                              include_revoked=include_revoked)
        await tx.finish(None)  # a read: metered, not an action
        return JSONResponse({"grants": [_grant_json(r) for r in rows]})

    return await _admin(request, "admin.list_grants", work)


async def revoke_one_grant(request: Request) -> Response:
    services: Services = request.app.state.services

    async def work(principal: Principal, tx: Transaction) -> Response:
        try:
            grant_id = uuid.UUID(request.path_params["grant_id"])
        except ValueError:  # not a UUID (NUL, too long, junk): no grant has that id
            return _refused("not_found", "no such grant", 404)
        revoked = await oauth.revoke_grant(
            tx, principal.tenant_id, grant_id, reason="revoked_by_admin",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            request=request_context(request, services), auth_path=principal.auth_path,
            acting_user_id=principal.acting_user_id,
        )
        if not revoked:
            return _refused("not_found", "no live grant with that id", 404)
        await tx.finish(None)  # the revocation carries its own entry
        return JSONResponse({"revoked": [str(grant_id)]})

    return await _admin(request, "admin.revoke_grant", work, mutate=True)


async def revoke_client_grants(request: Request) -> Response:
    services: Services = request.app.state.services

    async def work(principal: Principal, tx: Transaction) -> Response:
        client_id = request.path_params["client_id"]
        if not oauth.plausible_client_id(client_id):  # no client could have it
            return _refused("not_found", "no such client", 404)
        ids = await oauth.revoke_client_grants(
            tx, principal.tenant_id, client_id, reason="client_revoked_by_admin",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            request=request_context(request, services), auth_path=principal.auth_path,
            acting_user_id=principal.acting_user_id,
        )
        await tx.finish(None)  # each revocation carries its own entry
        return JSONResponse({"revoked": [str(g) for g in ids]})

    return await _admin(request, "admin.revoke_client_grants", work, mutate=True)
