"""The admin REST API: what the console does for owners and admins, for scripts.

Every endpoint is declared once with :func:`admin_endpoint`: its method, path, the scope it
needs (``ai:read`` to read, ``ai:write`` to change), a summary and its parameters. The
declaration is its route (:func:`routes`) and its entry in the OpenAPI document
(:func:`openapi_paths`), so the two cannot drift apart.

Callers authenticate with an API key whose creator is an owner or admin of the tenant at the
time of the request (OAuth access tokens are refused: an AI client is never handed the power
to govern other credentials). The request runs in the credential lookup's tenant transaction,
so row-level security walls it into the key's tenant; it counts against the key's rate limit;
and each endpoint finishes the transaction with its audit entry (:func:`admin_entry` for a
read; a change's service writes its own), so the admin API is itself audited.

This module declares the OAuth grant endpoints; other modules declare theirs the same way
and are imported by :mod:`breeze_mcp.app` before :func:`routes` is read.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from breeze_mcp import audit
from breeze_mcp.auth import oauth
from breeze_mcp.auth.oauth import apps
from breeze_mcp.auth.principal import ADMIN_ROLES, SCOPE_CEILING, Principal, RefusalCode
from breeze_mcp.db.engine import Transaction
from breeze_mcp.edge import (
    AuthFailure,
    bearer_challenge,
    bearer_transaction,
    meter,
    request_context,
)
from breeze_mcp.http_request import Route
from breeze_mcp.services import Services

__all__ = [
    "ADMIN_ENDPOINTS",
    "ADMIN_ROLES",
    "CLIENT_ID_DESCRIPTION",
    "AdminEndpoint",
    "AdminHandler",
    "admin_endpoint",
    "admin_entry",
    "in_path",
    "list_grants",
    "openapi_paths",
    "refused",
    "revoke_client_grants",
    "revoke_one_grant",
    "routes",
]

#: An endpoint's work: the request, the caller, and the request's tenant transaction, which
#: the work finishes (with its audit entry).
AdminHandler = Callable[[Request, Principal, Transaction], Awaitable[Response]]


@dataclass(frozen=True)
class AdminEndpoint:
    method: Literal["GET", "POST", "PATCH", "PUT", "DELETE"]
    path: str
    operation_id: str
    summary: str
    scope: Literal["ai:read", "ai:write"]
    handler: AdminHandler
    #: OpenAPI parameter objects (path and query).
    parameters: tuple[dict[str, Any], ...] = ()
    #: JSON schema of the request body, if it takes one.
    body: dict[str, Any] | None = None
    #: Responses other than 200/401/403/429, by status: their descriptions.
    errors: dict[int, str] = field(default_factory=dict)
    #: The 200 response's media types (default JSON).
    produces: tuple[str, ...] = ("application/json",)


ADMIN_ENDPOINTS: list[AdminEndpoint] = []


def admin_endpoint(method: Literal["GET", "POST", "PATCH", "PUT", "DELETE"], path: str, *,
                   operation_id: str, summary: str, scope: Literal["ai:read", "ai:write"],
                   parameters: tuple[dict[str, Any], ...] = (),
                   body: dict[str, Any] | None = None, errors: dict[int, str] | None = None,
                   produces: tuple[str, ...] = ("application/json",),
                   ) -> Callable[[AdminHandler], AdminHandler]:
    """Declare an admin endpoint (route and OpenAPI entry) for ``handler``."""

    def register(handler: AdminHandler) -> AdminHandler:
        ADMIN_ENDPOINTS.append(AdminEndpoint(method, path, operation_id, summary, scope,
                                             handler, parameters, body, errors or {},
                                             produces))
        return handler

    return register


def refused(code: str, message: str, status: int,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """An admin API error, in the REST error shape."""
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status,
                        headers=headers)


def admin_entry(request: Request, principal: Principal, action: str,
                **parameters: Any) -> audit.AuditEntry:
    """The audit entry of an admin request that changes nothing (a read, an export)."""
    return principal.audit_entry(request_context(request, request.app.state.services),
                                 action=action, parameters=parameters, decision="allowed",
                                 outcome="success")


async def _serve(request: Request, endpoint: AdminEndpoint) -> Response:
    """Authenticate, meter and authorize an admin request, then run the endpoint in the
    request's one tenant transaction (the credential lookup's), which it finishes."""
    services: Services = request.app.state.services
    async with bearer_transaction(request, services) as authenticated:
        if isinstance(authenticated, AuthFailure):
            if authenticated.rate is not None:  # the source failed too often
                return refused("rate_limited", authenticated.description, 429,
                               authenticated.rate.headers())
            if authenticated.missing is not None:  # a valid credential, an inactive tenant
                return refused("tenant_inactive", authenticated.description, 403,
                               missing=list(authenticated.missing))
            return refused(
                authenticated.error or "unauthorized", authenticated.description, 401,
                {"WWW-Authenticate": bearer_challenge(services, error=authenticated.error)})
        principal, tx = authenticated
        action = f"admin.{endpoint.operation_id}"
        rate = await meter(request, services, principal, action, tx)
        if rate is not None and not rate.allowed:
            return refused("rate_limited", rate.message, 429, rate.headers())
        context = request_context(request, services)
        refusal: tuple[RefusalCode, str] | None = None
        if principal.auth_path != "api_key":
            refusal = ("forbidden", "the admin API needs an API key created by an owner or admin")
        elif SCOPE_CEILING[endpoint.scope] > principal.tier_ceiling:
            await tx.finish(principal.audit_entry(
                context, action=action, decision="denied", outcome="blocked",
                deny_reason="insufficient_scope"))
            return refused("insufficient_scope", f"this endpoint needs a key with "
                           f"{endpoint.scope}", 403, required_scope=endpoint.scope)
        elif principal.role not in ADMIN_ROLES:
            refusal = ("role", "only owners and admins use the admin API")
        if refusal is not None:
            code, message = refusal
            await tx.finish(principal.refusal_entry(context, action, code, message, {}))
            return refused("forbidden", message, 403)
        return await endpoint.handler(request, principal, tx)


def routes() -> list[Route]:
    """One route per declared endpoint (methods on one path share it)."""
    by_path: dict[str, dict[str, AdminEndpoint]] = {}
    for endpoint in ADMIN_ENDPOINTS:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint

    def serve(methods: dict[str, AdminEndpoint]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            method = "GET" if request.method == "HEAD" else request.method
            return await _serve(request, methods[method])

        return endpoint

    return [Route(path, serve(methods), methods=sorted(methods))
            for path, methods in by_path.items()]


def openapi_paths(error: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI path items of every declared admin endpoint, with the scope each needs."""
    paths: dict[str, Any] = {}
    for e in ADMIN_ENDPOINTS:
        operation: dict[str, Any] = {
            "summary": e.summary,
            "description": f"Needs an API key with {e.scope}, created by an owner or admin of "
            "the tenant (the role is checked on every request). OAuth access tokens are "
            "refused. Audited.",
            "operationId": e.operation_id,
            "security": [{"bearer": [e.scope]}],
            "x-required-scope": e.scope,
            "x-required-role": list(ADMIN_ROLES),
            "parameters": list(e.parameters),
            "responses": {
                "200": {"description": "Done",
                        "content": {media: {"schema": {"type": "object"}}
                                    if media == "application/json" else {"schema":
                                                                         {"type": "string"}}
                                    for media in e.produces}},
                **{str(code): {"description": desc,
                               "content": {"application/json": {"schema": error}}}
                   for code, desc in {401: "Missing or invalid credential",
                                      403: "Not an owner's or admin's API key, or a key "
                                      "without the scope",
                                      429: "Rate limited (see Retry-After)",
                                      **e.errors}.items()},
            },
        }
        if e.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": e.body}}}
        paths.setdefault(_CONVERTOR.sub(r"{\1}", e.path), {})[e.method.lower()] = operation
    return paths


#: A route's path parameter with a Starlette convertor (``{client_id:path}``): OpenAPI
#: writes the plain template.
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")
#: A client id may be a metadata document's URL: slashes and all, percent-encoded or not.
CLIENT_ID_DESCRIPTION = ("The OAuth client's id: a registered client's bzi_ id, or the URL of "
                         "a client's metadata document (percent-encode it)")


def in_path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string"}}


# -- OAuth grants ----------------------------------------------------------------------------


def _grant_json(row: Any) -> dict[str, Any]:
    return {
        "id": str(row.id), "client_id": row.client_id, "client_name": row.client_name,
        "user_id": str(row.user_id), "user_email": row.email, "scopes": list(row.scopes),
        "resource": row.resource, "created_at": row.created_at.isoformat(),
        "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
        "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
        "revoked_reason": row.revoked_reason,
    }


@admin_endpoint("GET", "/api/v1/oauth/grants", operation_id="list_oauth_grants",
                summary="List the tenant's OAuth grants", scope="ai:read",
                parameters=({"name": "include_revoked", "in": "query", "required": False,
                             "schema": {"type": "boolean"}},))
async def list_grants(request: Request, principal: Principal, tx: Transaction) -> Response:
    include_revoked = request.query_params.get("include_revoked") == "true"
    rows = await oauth.list_tenant_grants(tx, principal.tenant_id,
                                          include_revoked=include_revoked)
    await tx.finish(admin_entry(request, principal, "admin.list_oauth_grants",
                                include_revoked=include_revoked))
    return JSONResponse({"grants": [_grant_json(r) for r in rows]})


@admin_endpoint("DELETE", "/api/v1/oauth/grants/{grant_id}", operation_id="revoke_oauth_grant",
                summary="Revoke one OAuth grant and every token of it", scope="ai:write",
                parameters=(in_path("grant_id", "The grant's id"),),
                errors={404: "No such live grant"})
async def revoke_one_grant(request: Request, principal: Principal,
                           tx: Transaction) -> Response:
    services: Services = request.app.state.services
    context = request_context(request, services)
    raw_id = request.path_params["grant_id"]
    try:
        grant_id = uuid.UUID(raw_id)
    except ValueError:  # not a UUID (NUL, too long, junk): no grant has that id
        grant_id = None
    revoked = grant_id is not None and await oauth.revoke_grant(
        tx, principal.tenant_id, grant_id, reason="revoked_by_admin",
        actor_type=principal.actor_type, actor_id=principal.actor_id,
        request=context, auth_path=principal.auth_path,
        acting_user_id=principal.acting_user_id,
    )
    if not revoked:  # audited like any refusal: someone asked for a grant that is not there
        await apps.refuse(tx, principal, context, "oauth.grant_revoked", "not_found",
                          "no live grant with that id", None, {"grant_id": raw_id})
        await tx.finish(None)
        return refused("not_found", "no live grant with that id", 404)
    await tx.finish(None)  # the revocation carries its own entry
    return JSONResponse({"revoked": [str(grant_id)]})


@admin_endpoint("DELETE", "/api/v1/oauth/clients/{client_id:path}/grants",
                operation_id="revoke_oauth_client_grants",
                summary="Revoke every grant of one OAuth client", scope="ai:write",
                parameters=(in_path("client_id", CLIENT_ID_DESCRIPTION),),
                errors={404: "No such client"})
async def revoke_client_grants(request: Request, principal: Principal,
                               tx: Transaction) -> Response:
    services: Services = request.app.state.services
    client_id = request.path_params["client_id"]
    context = request_context(request, services)
    if not oauth.plausible_client_id(client_id):  # no client could have it
        await apps.refuse(tx, principal, context, "oauth.grant_revoked", "not_found",
                          "no such client", None, {"client_id": client_id})
        await tx.finish(None)
        return refused("not_found", "no such client", 404)
    ids = await oauth.revoke_client_grants(
        tx, principal.tenant_id, client_id, reason="client_revoked_by_admin",
        actor_type=principal.actor_type, actor_id=principal.actor_id,
        request=context, auth_path=principal.auth_path,
        acting_user_id=principal.acting_user_id,
    )
    await tx.finish(None)  # each revocation carries its own entry
    return JSONResponse({"revoked": [str(g) for g in ids]})
