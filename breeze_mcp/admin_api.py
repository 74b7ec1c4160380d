"""Admin REST endpoints for OAuth grants: list them, revoke one, revoke every grant of a client.

Callers authenticate with an API key whose creator is an owner or admin of the tenant at the
time of the request; revoking needs a key with ``ai:write``. OAuth access tokens are
refused here: an AI client is never handed the power to manage other clients' grants. Each
revocation kills every access token, refresh token and pending code of the grant in the same
request, and is audited. Every request counts against the key's rate limit.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from breeze_mcp.auth import oauth
from breeze_mcp.auth.principal import Principal
from breeze_mcp.db.models import memberships, oauth_clients, oauth_grants, users
from breeze_mcp.edge import (
    AuthFailure,
    authenticate_bearer,
    bearer_challenge,
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


async def _admin(request: Request, action: str, *, mutate: bool = False) -> Principal | Response:
    services: Services = request.app.state.services
    principal = await authenticate_bearer(request, services)
    if isinstance(principal, AuthFailure):
        if principal.rate is not None:  # the source failed too often
            return _refused("rate_limited", principal.description, 429,
                            principal.rate.headers())
        return _refused(
            principal.error or "unauthorized", principal.description, 401,
            {"WWW-Authenticate": bearer_challenge(services, error=principal.error)})
    rate = await meter(request, services, principal, action)
    if rate is not None and not rate.allowed:
        return _refused("rate_limited", rate.message, 429, rate.headers())
    if principal.auth_path != "api_key":
        return _refused("forbidden", "grant management needs an API key created by an owner "
                        "or admin", 403)
    if mutate and "ai:write" not in principal.scopes:
        return _refused("insufficient_scope", "revoking grants needs a key with ai:write", 403,
                        required_scope="ai:write")
    async with services.db.tenant_transaction(principal.tenant_id, actor=principal.actor) as conn:
        role = (await conn.execute(
            sa.select(memberships.c.role).where(
                memberships.c.tenant_id == principal.tenant_id,
                memberships.c.user_id == principal.acting_user_id)
        )).scalar_one_or_none()
    if role not in ADMIN_ROLES:
        return _refused("forbidden", "only owners and admins manage OAuth grants", 403)
    return principal


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
    principal = await _admin(request, "admin.list_grants")
    if isinstance(principal, Response):
        return principal
    services: Services = request.app.state.services
    include_revoked = request.query_params.get("include_revoked") == "true"
    query = (
        sa.select(oauth_grants, oauth_clients.c.client_name, users.c.email)
        .join(oauth_clients, oauth_clients.c.client_id == oauth_grants.c.client_id)
        .join(users, users.c.id == oauth_grants.c.user_id)
        .where(oauth_grants.c.tenant_id == principal.tenant_id)
        .order_by(oauth_grants.c.created_at.desc())
    )
    if not include_revoked:
        query = query.where(oauth_grants.c.revoked_at.is_(None))
    async with services.db.tenant_transaction(principal.tenant_id, actor=principal.actor) as conn:
        rows = (await conn.execute(query)).all()
    return JSONResponse({"grants": [_grant_json(r) for r in rows]})


async def revoke_one_grant(request: Request) -> Response:
    principal = await _admin(request, "admin.revoke_grant", mutate=True)
    if isinstance(principal, Response):
        return principal
    services: Services = request.app.state.services
    try:
        grant_id = uuid.UUID(request.path_params["grant_id"])
    except ValueError:  # not a UUID (NUL, too long, junk): no grant has that id
        return _refused("not_found", "no such grant", 404)
    revoked = await oauth.revoke_grant(
        services.db, principal.tenant_id, grant_id, reason="revoked_by_admin",
        actor_type=principal.actor_type, actor_id=principal.actor_id,
        request=request_context(request, services), auth_path=principal.auth_path,
        acting_user_id=principal.acting_user_id,
    )
    if not revoked:
        return JSONResponse({"error": "not_found", "message": "no live grant with that id"},
                            status_code=404)
    return JSONResponse({"revoked": [str(grant_id)]})


async def revoke_client_grants(request: Request) -> Response:
    principal = await _admin(request, "admin.revoke_client_grants", mutate=True)
    if isinstance(principal, Response):
        return principal
    services: Services = request.app.state.services
    client_id = request.path_params["client_id"]
    if not oauth.plausible_client_id(client_id):  # no client could have it
        return _refused("not_found", "no such client", 404)
    ids = await oauth.revoke_client_grants(
        services.db, principal.tenant_id, client_id, reason="client_revoked_by_admin",
        actor_type=principal.actor_type, actor_id=principal.actor_id,
        request=request_context(request, services), auth_path=principal.auth_path,
        acting_user_id=principal.acting_user_id,
    )
    return JSONResponse({"revoked": [str(g) for g in ids]})
