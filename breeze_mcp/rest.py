"""REST: ``/api/v1/tools`` over the same call pipeline as MCP.

``GET /api/v1/tools`` lists what the caller can call; ``POST /api/v1/tools/{name}`` calls a
tool with a JSON object of arguments. Errors are JSON with a stable ``error`` code and a
``message``. ``/api/v1/openapi.json`` describes it all (generated from the tool registry).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from breeze_mcp import __version__, admin_api
from breeze_mcp.auth.principal import ALL_SCOPES, Principal, scope_for_tier
from breeze_mcp.db.engine import Transaction
from breeze_mcp.edge import (
    AuthFailure,
    bearer_challenge,
    bearer_transaction,
    meter,
    read_body,
    request_context,
)
from breeze_mcp.json_wire import AsciiJSONResponse, loads
from breeze_mcp.pipeline import CallResult, call_tool
from breeze_mcp.services import Services
from breeze_mcp.tools.registry import ToolSpec

__all__ = ["ERROR_STATUS", "call_endpoint", "list_endpoint", "openapi_endpoint"]

#: HTTP status of each stable error code.
ERROR_STATUS: dict[str, int] = {
    "invalid_json": 400,
    "invalid_arguments": 400,
    "bad_request": 400,
    "unauthorized": 401,
    "invalid_token": 401,
    "invalid_request": 401,
    "insufficient_scope": 403,
    "tenant_inactive": 403,
    "blocked": 403,
    "unknown_tool": 404,
    "not_found": 404,
    "forbidden": 403,
    "method_not_allowed": 405,
    "invalid_state": 409,
    "conflict": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "internal_error": 500,
}


def _error(code: str, message: str, *, headers: dict[str, str] | None = None,
           **extra: Any) -> JSONResponse:
    return AsciiJSONResponse({"error": code, "message": message, **extra},
                             status_code=ERROR_STATUS.get(code, 400), headers=headers)


def _describe(spec: ToolSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "title": spec.title,
        "description": spec.description,
        "tier": spec.min_tier,
        "max_tier": spec.max_tier,
        "required_scope": scope_for_tier(spec.min_tier),
        "action_tiers": dict(spec.action_tiers) or None,
        "input_schema": spec.input_schema(),
    }


def _unauthorized(failure: AuthFailure, services: Services) -> Response:
    if failure.rate is not None:  # the source failed too often
        return _error("rate_limited", failure.description, headers=failure.rate.headers())
    if failure.missing is not None:  # a valid credential, an inactive tenant
        return _error("tenant_inactive", failure.description, missing=list(failure.missing))
    return _error(
        failure.error or "unauthorized", failure.description,
        headers={"WWW-Authenticate": bearer_challenge(
            services, error=failure.error,
            description=failure.description if failure.error else None)},
    )


async def list_endpoint(request: Request) -> Response:
    services: Services = request.app.state.services
    async with bearer_transaction(request, services) as authenticated:
        if isinstance(authenticated, AuthFailure):
            return _unauthorized(authenticated, services)
        principal, tx = authenticated
        rate = await meter(request, services, principal, "rest.list_tools", tx)
        if rate is None or rate.allowed:
            await tx.finish(None)  # not an action: no entry; the credential's use is kept
    headers = rate.headers() if rate is not None else None
    if rate is not None and not rate.allowed:
        return _error("rate_limited", rate.message, headers=headers)
    tools = [_describe(t) for t in services.registry.listable(principal.tier_ceiling)]
    return JSONResponse({"tools": tools, "scopes": sorted(principal.scopes)}, headers=headers)


async def call_endpoint(request: Request) -> Response:
    services: Services = request.app.state.services
    # Read the (size-capped) body before taking a database connection: a slow client must
    # not hold a pooled connection while it trickles its request in.
    raw = await read_body(request, services.settings.max_request_bytes)
    async with bearer_transaction(request, services) as authenticated:
        if isinstance(authenticated, AuthFailure):
            return _unauthorized(authenticated, services)
        return await _call(request, services, raw, *authenticated)


async def _call(
    request: Request, services: Services, raw: bytes | None, principal: Principal,
    tx: Transaction,
) -> Response:
    name = request.path_params["name"]
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    refused: tuple[str, str] | None = None
    arguments: Any = {}
    if raw is None:
        refused = ("payload_too_large",
                   f"request body exceeds {services.settings.max_request_bytes} bytes")
    elif raw.strip() and content_type != "application/json":
        refused = ("unsupported_media_type", "send Content-Type: application/json")
    else:
        try:
            arguments = loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError, RecursionError):
            refused = ("invalid_json", "the body is not valid JSON")
        else:
            if not isinstance(arguments, dict):
                refused = ("invalid_json", "the body must be a JSON object of tool arguments")
                arguments = {"arguments": arguments}
    context = request_context(request, services)
    if refused is not None:  # not a call the pipeline can run, but audited like one
        code, message = refused
        outcome = await call_tool(services, principal, name, arguments, context, tx,
                                  refused=message)
        if outcome.status == "rate_limited":
            return _call_response(services, outcome)
        return _error(code, message)
    outcome = await call_tool(services, principal, name, arguments, context, tx)
    return _call_response(services, outcome)


def _call_response(services: Services, outcome: CallResult) -> Response:
    headers = outcome.rate.headers() if outcome.rate else None
    if outcome.status == "ok":
        return JSONResponse({"tool": outcome.tool, "tier": outcome.tier,
                             "result": outcome.result}, headers=headers)
    if outcome.status == "tool_error":
        return _error(outcome.error_code or "conflict", outcome.message, headers=headers,
                      tier=outcome.tier)
    if outcome.status == "invalid_arguments":
        return _error("invalid_arguments", outcome.message, headers=headers,
                      details=outcome.details, tier=outcome.tier)
    if outcome.status == "insufficient_scope":
        challenge = bearer_challenge(services, error="insufficient_scope",
                                     description=outcome.message, scope=outcome.required_scope)
        return _error("insufficient_scope", outcome.message, tier=outcome.tier,
                      required_scope=outcome.required_scope,
                      headers={**(headers or {}), "WWW-Authenticate": challenge})
    if outcome.status == "blocked":
        return _error("blocked", outcome.message, tier=outcome.tier, headers=headers)
    if outcome.status == "unknown_tool":  # no tier: there is no such tool to have one
        return _error("unknown_tool", outcome.message, headers=headers)
    if outcome.status == "rate_limited":
        return _error("rate_limited", outcome.message, headers=headers)
    return _error("internal_error", "internal error")


def openapi_document(services: Services) -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, Any] = {
        "/api/v1/tools": {
            "get": {
                "summary": "List the tools the caller's scopes can call",
                "operationId": "list_tools",
                "responses": {
                    "200": {"description": "Callable tools",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    "401": {"description": "Missing or invalid credential",
                            "content": {"application/json": {"schema": error}}},
                },
            }
        }
    }
    paths.update(admin_api.openapi_paths(error))
    for spec in services.registry:
        if spec.base_tier >= 4:
            continue
        paths[f"/api/v1/tools/{spec.name}"] = {
            "post": {
                "summary": spec.title or spec.name,
                "description": f"Tier {spec.min_tier}"
                + (f"-{spec.max_tier}" if spec.max_tier != spec.min_tier else "")
                + f". Requires {scope_for_tier(spec.min_tier)}. {spec.description}",
                "operationId": spec.name,
                "x-risk-tier": spec.min_tier,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": spec.input_schema()}}},
                "responses": {
                    "200": {"description": "Result", "content": {"application/json": {
                        "schema": {"type": "object", "properties": {
                            "tool": {"type": "string"}, "tier": {"type": "integer"},
                            "result": {"type": "object"}}}}}},
                    **{str(code): {"description": desc, "content": {
                        "application/json": {"schema": error}}}
                       for code, desc in (
                           (400, "Invalid JSON or arguments"),
                           (401, "Missing or invalid credential"),
                           (403, "Insufficient scope, or Tier 4 (blocked)"),
                           (404, "Unknown tool or entity"),
                           (409, "Invalid state"),
                           (429, "Rate limited (see Retry-After)"))},
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Breeze MCP REST API", "version": __version__,
                 "description": "Risk-tiered RMM tools. Scopes: ai:read reaches Tier 1, "
                 "ai:write Tiers 1-2, ai:execute Tiers 1-3; Tier 4 is never executed."},
        "servers": [{"url": services.settings.public_url}],
        "security": [{"bearer": list(ALL_SCOPES)}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "API key (bzk_...) or OAuth "
                                           "access token"}},
            "schemas": {"Error": {"type": "object", "required": ["error", "message"],
                                  "properties": {"error": {"type": "string",
                                                           "enum": sorted(ERROR_STATUS)},
                                                 "message": {"type": "string"}}}},
        },
        "paths": paths,
    }


async def openapi_endpoint(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.state.services))
