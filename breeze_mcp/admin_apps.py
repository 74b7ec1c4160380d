"""The admin API's Connected apps endpoints: the tenant's OAuth clients and their blocks.

Declared with :func:`breeze_mcp.admin_api.admin_endpoint` (route and OpenAPI entry at once),
for an owner's or admin's API key. Each calls the service the console's Connected apps page
calls (:mod:`breeze_mcp.auth.oauth.apps`), so a block or an unblock leaves the same audit
entries from either door. The grant endpoints (list, revoke one, revoke a client's) are
:mod:`breeze_mcp.admin_api`'s own.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from breeze_mcp.admin_api import (
    CLIENT_ID_DESCRIPTION,
    admin_endpoint,
    admin_entry,
    in_path,
    refused,
)
from breeze_mcp.auth.accounts import REFUSAL_STATUS
from breeze_mcp.auth.oauth import apps, blocks, plausible_client_id
from breeze_mcp.auth.principal import Principal
from breeze_mcp.db.engine import Transaction
from breeze_mcp.edge import read_body, request_context
from breeze_mcp.json_wire import loads

__all__ = ["block_client", "list_blocks", "list_clients", "unblock_client"]

#: A block request's body is a few bytes of JSON.
MAX_BLOCK_BODY = 4096

_CLIENT = in_path("client_id", CLIENT_ID_DESCRIPTION)
_REFUSAL_CODE: dict[apps.Refusal, str] = {"role": "forbidden", "not_found": "not_found",
                                          "invalid": "bad_request"}


async def _no_client(request: Request, principal: Principal, tx: Transaction, action: str,
                     client_id: str, message: str) -> Response:
    """404 for a client id no client could have, audited as the service audits an unknown
    one (the id is kept in the parameters, where the audit log caps and escapes it)."""
    outcome = await apps.refuse(tx, principal,
                                request_context(request, request.app.state.services), action,
                                "not_found", message, None, {"client_id": client_id})
    await tx.finish(None)
    return _refusal(outcome)


def _refusal(outcome: apps.Outcome) -> Response:
    assert outcome.refused is not None
    return refused(_REFUSAL_CODE[outcome.refused], outcome.message,
                   REFUSAL_STATUS[outcome.refused])


@admin_endpoint("GET", "/api/v1/oauth/clients", operation_id="list_oauth_clients",
                summary="List the OAuth clients that have had grants in the tenant (or are "
                "blocked in it), with their live grants, people and block", scope="ai:read")
async def list_clients(request: Request, principal: Principal, tx: Transaction) -> Response:
    clients = await apps.tenant_clients(tx, principal.tenant_id)
    await tx.finish(admin_entry(request, principal, "admin.list_oauth_clients"))
    return JSONResponse({"clients": [c.json() for c in clients]})


@admin_endpoint("GET", "/api/v1/oauth/blocks", operation_id="list_oauth_client_blocks",
                summary="List the tenant's open client blocks", scope="ai:read",
                parameters=({"name": "include_ended", "in": "query", "required": False,
                             "description": "Also the lifted and run-out blocks",
                             "schema": {"type": "boolean"}},))
async def list_blocks(request: Request, principal: Principal, tx: Transaction) -> Response:
    include_ended = request.query_params.get("include_ended") == "true"
    found = await blocks.list_blocks(tx, principal.tenant_id, include_ended=include_ended)
    await tx.finish(admin_entry(request, principal, "admin.list_oauth_client_blocks",
                                include_ended=include_ended))
    return JSONResponse({"blocks": [b.json() for b in found]})


@admin_endpoint("POST", "/api/v1/oauth/clients/{client_id:path}/block",
                operation_id="block_oauth_client",
                summary="Block an OAuth client in the tenant for a while: no new grant, no code "
                "exchanged; its grants are revoked at once", scope="ai:write",
                parameters=(_CLIENT,),
                body={"type": "object", "description": "Exactly one of days and until.",
                      "properties": {
                          "days": {"type": "integer", "minimum": 1,
                                   "maximum": blocks.MAX_BLOCK_DAYS},
                          "until": {"type": "string", "format": "date-time",
                                    "description": "With its UTC offset; at most "
                                    f"{blocks.MAX_BLOCK_DAYS} days ahead"}}},
                errors={400: "Neither or both of days and until, or out of bounds",
                        404: "No such client"})
async def block_client(request: Request, principal: Principal, tx: Transaction) -> Response:
    client_id = request.path_params["client_id"]
    if not plausible_client_id(client_id):  # no client could have it
        return await _no_client(request, principal, tx, "oauth.client_blocked", client_id,
                                "no such client")
    raw = await read_body(request, MAX_BLOCK_BODY)
    try:
        body = loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        body = {}  # refused (and audited) by the service: neither days nor until
    outcome = await apps.block_client(tx, principal, client_id,
                                      request_context(request, request.app.state.services),
                                      days=body.get("days"), until=body.get("until"))
    await tx.finish(None)  # the service wrote the entries, a refusal's too
    if outcome.refused is not None:
        return _refusal(outcome)
    assert outcome.until is not None
    return JSONResponse({"client_id": client_id, "blocked_until": outcome.until.isoformat(),
                         "revoked": [str(g) for g in outcome.revoked]})


@admin_endpoint("DELETE", "/api/v1/oauth/clients/{client_id:path}/block",
                operation_id="unblock_oauth_client",
                summary="Lift an OAuth client's block in the tenant", scope="ai:write",
                parameters=(_CLIENT,), errors={404: "The client is not blocked"})
async def unblock_client(request: Request, principal: Principal, tx: Transaction) -> Response:
    client_id = request.path_params["client_id"]
    if not plausible_client_id(client_id):  # no client could have it
        return await _no_client(request, principal, tx, "oauth.client_unblocked", client_id,
                                "this app is not blocked")
    outcome = await apps.unblock_client(tx, principal, client_id,
                                        request_context(request, request.app.state.services))
    await tx.finish(None)  # the service wrote the entry
    if outcome.refused is not None:
        return _refusal(outcome)
    return JSONResponse({"client_id": client_id, "unblocked": True})
