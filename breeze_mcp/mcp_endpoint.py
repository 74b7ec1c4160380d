"""``/mcp``: the MCP Streamable HTTP transport, stateless, JSON responses.

Stateless means no server-side session: every POST carries its own bearer credential and is
served completely by whichever instance receives it. Two eras of the protocol share the
endpoint (:mod:`breeze_mcp.mcp_eras`): the 2025 revisions reached through ``initialize``
(``initialize``, ``ping``, ``tools/list``, ``tools/call``) and 2026-07-28, where each request
carries its own envelope (``server/discover``, ``tools/list``, ``tools/call``). The request's
``MCP-Protocol-Version`` header picks the era; everything else here — the Host and Origin
checks, authentication, rate limits, the call pipeline and its audit entry — is the same for
both. Answers are ``application/json``; notifications and responses get 202. GET (a
server-initiated stream) and DELETE (session end) answer 405: there is neither. Messages are the
MCP SDK's own types (``mcp_types``), written for the request's era.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import mcp_types as types
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from breeze_mcp.auth.principal import Principal
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
from breeze_mcp.mcp_eras import Era, Refusal, era_of, success_body
from breeze_mcp.pipeline import CallResult, call_tool, shown
from breeze_mcp.services import Services
from breeze_mcp.tools.registry import ToolSpec

__all__ = ["handle_mcp", "success_body", "tool_definition"]

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
FORBIDDEN = -32003
RATE_LIMITED = -32029


def _rpc_error(id_: Any, code: int, message: str, data: Any = None,
               status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return AsciiJSONResponse({"jsonrpc": "2.0", "id": id_, "error": error},
                             status_code=status, headers=headers)


def _rpc_result(id_: Any, result: dict[str, Any],
                headers: dict[str, str] | None = None) -> JSONResponse:
    return AsciiJSONResponse({"jsonrpc": "2.0", "id": id_, "result": result}, headers=headers)


def _era_error(era: Era, id_: Any, code: int, message: str, data: Any = None,
               status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON-RPC error with the HTTP status the request's era gives its code."""
    return _rpc_error(id_, code, message, data, era.status(code, status), headers)


def tool_definition(spec: ToolSpec) -> types.Tool:
    """The MCP view of a tool: schema from its model, annotations from its tier, every hint
    said outright (a client that finds one missing assumes the worst: a write, destructive,
    open-world)."""
    tier = spec.max_tier
    annotations = types.ToolAnnotations(
        title=spec.title,
        read_only_hint=tier == 1,
        destructive_hint=tier >= 3,
        idempotent_hint=tier == 1,
        open_world_hint=False,
    )
    return types.Tool(
        name=spec.name,
        title=spec.title,
        description=f"[Tier {spec.min_tier if spec.min_tier == tier else f'{spec.min_tier}-{tier}'}"
        f"] {spec.description}",
        input_schema=spec.input_schema(),
        annotations=annotations,
    )


def _origin_allowed(request: Request, services: Services) -> bool:
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser request
    return origin.rstrip("/").lower() in services.allowed_origins


def _host_allowed(request: Request, services: Services) -> bool:
    return (request.headers.get("host") or "").lower() in services.allowed_hosts


async def handle_mcp(request: Request) -> Response:
    services: Services = request.app.state.services
    if request.method != "POST":
        return JSONResponse(
            {"error": "method_not_allowed",
             "message": "this MCP endpoint is stateless: POST JSON-RPC messages only"},
            status_code=405, headers={"Allow": "POST"},
        )
    # DNS-rebinding protection: the Host and any browser Origin must be ours.
    if not _host_allowed(request, services):
        expected = urlsplit(services.settings.public_url).netloc
        return _rpc_error(
            None, INVALID_REQUEST,
            f"Invalid Host header '{shown(request.headers.get('host') or '')}': this server "
            f"answers to {expected} (the host of BREEZE_PUBLIC_URL="
            f"{services.settings.public_url}); set BREEZE_PUBLIC_URL to the URL clients use",
            status=421)
    if not _origin_allowed(request, services):
        return _rpc_error(None, INVALID_REQUEST, "Origin not allowed", status=403)

    # The body is read (size-capped) before a database connection is taken, so a slow client
    # cannot hold a pooled connection while it trickles its request in.
    raw = await read_body(request, services.settings.max_request_bytes)
    async with bearer_transaction(request, services) as authenticated:
        if isinstance(authenticated, AuthFailure):
            if authenticated.rate is not None:  # the source failed too often
                return _rpc_error(None, RATE_LIMITED, authenticated.description,
                                  data={"error": "rate_limited"}, status=429,
                                  headers=authenticated.rate.headers())
            if authenticated.missing is not None:  # a valid credential, an inactive tenant
                return _rpc_error(None, FORBIDDEN, authenticated.description,
                                  data={"error": "tenant_inactive",
                                        "missing": list(authenticated.missing)}, status=403)
            body = {"error": authenticated.error or "unauthorized",
                    "error_description": authenticated.description}
            return JSONResponse(body, status_code=401, headers={
                "WWW-Authenticate": bearer_challenge(
                    services, error=authenticated.error,
                    description=authenticated.description if authenticated.error else None)})
        return await _authenticated(request, services, era_of(request.headers), raw,
                                    *authenticated)


async def _authenticated(
    request: Request, services: Services, era: Era, raw: bytes | None, principal: Principal,
    tx: Transaction,
) -> Response:
    accept = request.headers.get("accept", "*/*").lower()
    if not any(a in accept for a in ("application/json", "*/*", "application/*")):
        return _rpc_error(None, INVALID_REQUEST,
                          "Not Acceptable: the client must accept application/json",
                          status=406)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return _rpc_error(None, INVALID_REQUEST,
                          "Unsupported Media Type: send Content-Type: application/json",
                          status=415)
    if raw is None:
        return _rpc_error(None, INVALID_REQUEST,
                          f"request body exceeds {services.settings.max_request_bytes} bytes",
                          status=413)
    try:
        message = loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _rpc_error(None, PARSE_ERROR, "Parse error: the body is not valid JSON",
                          status=400)
    if isinstance(message, list):
        return _rpc_error(None, INVALID_REQUEST,
                          "JSON-RPC batches are not supported; send one message per request",
                          status=400)
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return _rpc_error(None, INVALID_REQUEST,
                          "Invalid Request: expected a JSON-RPC 2.0 object", status=400)

    method = message.get("method")
    id_ = message.get("id")
    if not _valid_id(id_):
        id_ = None  # never echo an id that is not one (JSON-RPC answers null then)
    if method is None:
        if "result" in message or "error" in message:
            return Response(status_code=202)  # a response to us: nothing to do
        return _rpc_error(id_, INVALID_REQUEST, "Invalid Request: no method", status=400)
    if not isinstance(method, str):
        return _rpc_error(id_, INVALID_REQUEST, "Invalid Request: method must be a string",
                          status=400)
    params = message.get("params", {})
    if params is None:
        params = {}

    # A request that needs a result needs an id; only notifications go without one.
    refusal: Refusal | None = None
    if "id" not in message:
        if method.startswith("notifications/"):  # e.g. notifications/initialized
            refusal = era.notification_refusal(request.headers)
            if refusal is None:
                return Response(status_code=202)
            return _era_error(era, None, refusal.code, refusal.message, refusal.data,
                              refusal.status)
        refusal = Refusal(INVALID_REQUEST, f"Invalid Request: {shown(method)} needs an id "
                          "(only notifications/* are sent without one)")
    elif id_ is None:
        refusal = Refusal(INVALID_REQUEST, "Invalid Request: id must be a string or number")
    elif not isinstance(params, dict):
        refusal = Refusal(INVALID_PARAMS, "params must be an object", 200)
    else:
        refusal = era.refusal(request.headers, message, method)

    try:
        if refusal is not None:
            if method == "tools/call":  # refused before it was a call, audited all the same
                return await _refused_call(request, services, era, principal, tx, id_, params,
                                           refusal)
            return _era_error(era, id_, refusal.code, refusal.message, refusal.data,
                              refusal.status)
        return await _dispatch(request, services, era, principal, tx, id_, method, params)
    except Exception:
        log.exception("MCP %s failed", shown(method))
        return _rpc_error(id_, INTERNAL_ERROR, "Internal error")


def _valid_id(id_: Any) -> bool:
    return isinstance(id_, (str, int)) and not isinstance(id_, bool)


def _call_target(params: Any) -> tuple[str, dict[str, Any]]:
    """The tool name and arguments an audit entry can name for a ``tools/call`` that is not
    well formed: the name if there is one, the rest kept as parameters."""
    if not isinstance(params, dict):
        return "tools/call", {"params": params}
    name = params.get("name")
    arguments = params.get("arguments")
    if not isinstance(name, str) or not name:
        return "tools/call", dict(params)
    if arguments is None:
        return name, {}
    return name, arguments if isinstance(arguments, dict) else {"arguments": arguments}


async def _refused_call(
    request: Request, services: Services, era: Era, principal: Principal, tx: Transaction,
    id_: Any, params: Any, refusal: Refusal,
) -> Response:
    name, arguments = _call_target(params)
    outcome = await call_tool(services, principal, name, arguments,
                              request_context(request, services), tx, refused=refusal.message)
    if outcome.status == "rate_limited":
        return _call_response(services, era, id_, outcome)
    return _era_error(era, id_, refusal.code, refusal.message, refusal.data, refusal.status)


async def _dispatch(
    request: Request, services: Services, era: Era, principal: Principal, tx: Transaction,
    id_: Any, method: str, params: dict[str, Any],
) -> Response:
    rate = None
    if method != "tools/call":  # a tools call is metered by the pipeline, with its tool's limit
        known = method in era.methods
        rate = await meter(request, services, principal, f"mcp.{method}" if known else
                           "mcp.unknown_method", tx, None if known else {"method": method})
        if rate is not None and not rate.allowed:
            return _rpc_error(id_, RATE_LIMITED, rate.message, data={"error": "rate_limited"},
                              status=429, headers=rate.headers())
        await tx.finish(None)  # not an action: no entry; the credential's last use is kept
        if not known:
            return _era_error(era, id_, METHOD_NOT_FOUND, f"Method not found: {shown(method)}",
                              headers=rate.headers() if rate is not None else None)
    headers = rate.headers() if rate is not None else None
    if method == "tools/list":
        tools = [tool_definition(t) for t in services.registry.listable(principal.tier_ceiling)]
        return _rpc_result(id_, era.result(method, types.ListToolsResult(tools=tools)),
                           headers=headers)
    if method != "tools/call":  # initialize, ping, server/discover: the era's own
        return _rpc_result(id_, era.answer(method, params), headers=headers)
    name = params.get("name")
    arguments = params.get("arguments", {})
    if not isinstance(name, str) or not name:
        return await _refused_call(request, services, era, principal, tx, id_, params,
                                   Refusal(INVALID_PARAMS, "tools/call needs a tool name", 200))
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return await _refused_call(request, services, era, principal, tx, id_, params,
                                   Refusal(INVALID_PARAMS, "arguments must be an object", 200))
    outcome = await call_tool(services, principal, name, arguments,
                              request_context(request, services), tx)
    return _call_response(services, era, id_, outcome)


def _call_response(services: Services, era: Era, id_: Any, outcome: CallResult) -> Response:
    headers = outcome.rate.headers() if outcome.rate else None
    if outcome.status == "ok":
        assert outcome.result is not None
        return Response(success_body(id_, outcome.result, era.call_result_tail),
                        media_type="application/json", headers=headers)
    if outcome.status in ("tool_error", "invalid_arguments", "blocked"):
        data: dict[str, Any] = {"error": outcome.error_code or outcome.status,
                                "tier": outcome.tier}  # tools that exist only get here
        if outcome.details:
            data["details"] = outcome.details
        result = types.CallToolResult(
            content=[types.TextContent(text=outcome.message)],
            structured_content=data,
            is_error=True,
        )
        return _rpc_result(id_, era.result("tools/call", result), headers=headers)
    if outcome.status == "unknown_tool":
        return _era_error(era, id_, INVALID_PARAMS, outcome.message)
    if outcome.status == "insufficient_scope":
        challenge = bearer_challenge(services, error="insufficient_scope",
                                     description=outcome.message, scope=outcome.required_scope)
        return _rpc_error(id_, FORBIDDEN, outcome.message,
                          data={"error": "insufficient_scope", "tier": outcome.tier,
                                "required_scope": outcome.required_scope},
                          status=403, headers={**(headers or {}), "WWW-Authenticate": challenge})
    if outcome.status == "rate_limited":
        return _rpc_error(id_, RATE_LIMITED, outcome.message,
                          data={"error": "rate_limited"}, status=429, headers=headers)
    return _rpc_error(id_, INTERNAL_ERROR, "Internal error")
