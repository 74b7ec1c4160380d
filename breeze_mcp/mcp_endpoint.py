"""``/mcp``: the MCP Streamable HTTP transport, stateless, JSON responses.

Stateless means no server-side session: every POST carries its own bearer credential and is
served completely by whichever instance receives it. ``initialize``, ``ping``, ``tools/list``
and ``tools/call`` are answered with ``application/json``; notifications and responses get
202. GET (a server-initiated stream) and DELETE (session end) answer 405: there is neither.
Messages are the MCP SDK's own types (``mcp_types``), serialised for the negotiated revision.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import mcp_types as types
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from breeze_mcp import __version__
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
from breeze_mcp.pipeline import CallResult, call_tool, shown
from breeze_mcp.services import Services
from breeze_mcp.tools.registry import ToolSpec

__all__ = ["SUPPORTED_VERSIONS", "handle_mcp", "success_body", "tool_definition"]

log = logging.getLogger(__name__)

#: Revisions reachable by the initialize handshake that this endpoint speaks, oldest first.
SUPPORTED_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25")
DEFAULT_VERSION = "2025-03-26"  # assumed when a request carries no MCP-Protocol-Version

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
FORBIDDEN = -32003
RATE_LIMITED = -32029

_NEWER_FIELDS = {"result_type", "ttl_ms", "cache_scope"}  # 2026-07-28-only result fields

INSTRUCTIONS = (
    "Breeze RMM tools for one MSP tenant. Every tool carries a risk tier: Tier 1 reads, "
    "Tier 2 changes alerts and notes, Tier 3 queues actions on devices (scripts, patches, "
    "isolation), Tier 4 is never executed. What you can call depends on the scopes granted."
)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json",
                            exclude=_NEWER_FIELDS & set(type(model).model_fields))


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


def tool_definition(spec: ToolSpec) -> types.Tool:
    """The MCP view of a tool: schema from its model, annotations from its tier."""
    tier = spec.max_tier
    annotations = types.ToolAnnotations(
        title=spec.title,
        read_only_hint=tier == 1,
        destructive_hint=(tier >= 3) if tier > 1 else None,
        idempotent_hint=True if tier == 1 else None,
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
        return await _authenticated(request, services, raw, *authenticated)


async def _authenticated(
    request: Request, services: Services, raw: bytes | None, principal: Principal,
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
    refusal: tuple[int, str, int] | None = None
    if "id" not in message:
        if method.startswith("notifications/"):
            return Response(status_code=202)  # notification (e.g. notifications/initialized)
        refusal = (INVALID_REQUEST, f"Invalid Request: {shown(method)} needs an id (only "
                   "notifications/* are sent without one)", 400)
    elif id_ is None:
        refusal = (INVALID_REQUEST, "Invalid Request: id must be a string or number", 400)
    elif not isinstance(params, dict):
        refusal = (INVALID_PARAMS, "params must be an object", 200)
    elif method != "initialize":
        version = request.headers.get("mcp-protocol-version", DEFAULT_VERSION)
        if version not in SUPPORTED_VERSIONS:
            refusal = (INVALID_REQUEST, f"Unsupported MCP-Protocol-Version '{shown(version)}'; "
                       "supported: " + ", ".join(SUPPORTED_VERSIONS), 400)

    try:
        if refusal is not None:
            code, text, status = refusal
            if method == "tools/call":  # refused before it was a call, audited all the same
                return await _refused_call(request, services, principal, tx, id_, params,
                                           code, text, status)
            return _rpc_error(id_, code, text, status=status)
        return await _dispatch(request, services, principal, tx, id_, method, params)
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
    request: Request, services: Services, principal: Principal, tx: Transaction,
    id_: Any, params: Any, code: int, message: str, status: int = 200,
) -> Response:
    name, arguments = _call_target(params)
    outcome = await call_tool(services, principal, name, arguments,
                              request_context(request, services), tx, refused=message)
    if outcome.status == "rate_limited":
        return _call_response(services, id_, outcome)
    return _rpc_error(id_, code, message, status=status)


async def _dispatch(
    request: Request, services: Services, principal: Principal, tx: Transaction, id_: Any,
    method: str, params: dict[str, Any],
) -> Response:
    rate = None
    if method != "tools/call":  # a tools call is metered by the pipeline, with its tool's limit
        known = method in ("initialize", "ping", "tools/list")
        rate = await meter(request, services, principal, f"mcp.{method}" if known else
                           "mcp.unknown_method", tx, None if known else {"method": method})
        if rate is not None and not rate.allowed:
            return _rpc_error(id_, RATE_LIMITED, rate.message, data={"error": "rate_limited"},
                              status=429, headers=rate.headers())
        await tx.finish(None)  # not an action: no entry; the credential's last use is kept
    headers = rate.headers() if rate is not None else None
    if method == "initialize":
        asked = params.get("protocolVersion")
        version = asked if asked in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]
        result = types.InitializeResult(
            protocol_version=version,
            capabilities=types.ServerCapabilities(tools=types.ToolsCapability(list_changed=False)),
            server_info=types.Implementation(name="breeze-mcp", title="Breeze MCP",
                                             version=__version__),
            instructions=INSTRUCTIONS,
        )
        return _rpc_result(id_, _dump(result), headers=headers)
    if method == "ping":
        return _rpc_result(id_, {}, headers=headers)
    if method == "tools/list":
        tools = [tool_definition(t) for t in services.registry.listable(principal.tier_ceiling)]
        return _rpc_result(id_, _dump(types.ListToolsResult(tools=tools)), headers=headers)
    if method == "tools/call":
        name = params.get("name")
        arguments = params.get("arguments", {})
        if not isinstance(name, str) or not name:
            return await _refused_call(request, services, principal, tx, id_, params,
                                       INVALID_PARAMS, "tools/call needs a tool name")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return await _refused_call(request, services, principal, tx, id_, params,
                                       INVALID_PARAMS, "arguments must be an object")
        outcome = await call_tool(services, principal, name, arguments,
                                  request_context(request, services), tx)
        return _call_response(services, id_, outcome)
    return _rpc_error(id_, METHOD_NOT_FOUND, f"Method not found: {shown(method)}",
                      headers=headers)


def success_body(id_: Any, result: Mapping[str, Any]) -> bytes:
    """The ``CallToolResult`` of a successful ``tools/call``, built by hand because it is the
    hot path's: the result is serialised once, and that text is both the text content and,
    verbatim, the structured content (a test checks it against ``types.CallToolResult``)."""
    text = json.dumps(result, default=str)
    return (
        '{"jsonrpc":"2.0","id":' + json.dumps(id_)
        + ',"result":{"content":[{"type":"text","text":' + json.dumps(text)
        + '}],"structuredContent":' + text + ',"isError":false}}'
    ).encode()


def _call_response(services: Services, id_: Any, outcome: CallResult) -> Response:
    headers = outcome.rate.headers() if outcome.rate else None
    if outcome.status == "ok":
        assert outcome.result is not None
        return Response(success_body(id_, outcome.result), media_type="application/json",
                        headers=headers)
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
        return _rpc_result(id_, _dump(result), headers=headers)
    if outcome.status == "unknown_tool":
        return _rpc_error(id_, INVALID_PARAMS, outcome.message)
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
