"""The last line: what a request gets when something unexpected escapes its endpoint.

Each path belongs to one *surface*, and each surface has one error shape: JSON-RPC on ``/mcp``,
REST JSON under ``/api/``, OAuth error JSON on the authorization server's machine endpoints,
and Breeze's HTML error page everywhere else. :func:`surface_of` is the one place that decides
which; the two catch-alls (an unexpected exception, and a database that is busy or unreachable)
answer through :func:`error_response` in that shape, with a request id the operator can find in
the log, and nothing of the exception itself.
"""

from __future__ import annotations

import html
import logging
from typing import Literal

from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from breeze_mcp.edge import request_id_of

__all__ = [
    "RETRY_AFTER_SECONDS",
    "Surface",
    "database_unavailable",
    "error_response",
    "http_error",
    "surface_of",
    "unexpected_error",
]

log = logging.getLogger(__name__)

Surface = Literal["jsonrpc", "rest", "oauth", "page"]

#: How long a client is asked to wait when the database is busy or unreachable.
RETRY_AFTER_SECONDS = 5

_OAUTH_PATHS = ("/token", "/revoke", "/register")


def surface_of(path: str) -> Surface:
    """The error shape a path speaks."""
    if path == "/mcp" or path.startswith("/mcp/"):
        return "jsonrpc"
    if path.startswith("/api/"):
        return "rest"
    if path in _OAUTH_PATHS or path.startswith("/.well-known/"):
        return "oauth"
    return "page"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · Breeze MCP</title></head>
<body><main><h1>{title}</h1><p role="alert">{message}</p>
<p>Request id: <code>{request_id}</code></p></main></body></html>
"""


def error_response(request: Request, *, status: int, code: str, message: str,
                   request_id: str, headers: dict[str, str] | None = None) -> Response:
    """``message`` in the shape of the request's surface. ``code`` is the REST / OAuth error
    code; JSON-RPC answers -32603 (internal error) whatever it is."""
    headers = {"X-Request-Id": request_id, "Cache-Control": "no-store", **(headers or {})}
    surface = surface_of(request.url.path)
    if surface == "jsonrpc":
        return JSONResponse({"jsonrpc": "2.0", "id": None, "error": {
            "code": -32603, "message": message, "data": {"request_id": request_id}}},
            status_code=status, headers=headers)
    if surface == "rest":
        return JSONResponse({"error": code, "message": message, "request_id": request_id},
                            status_code=status, headers=headers)
    if surface == "oauth":
        oauth_code = "temporarily_unavailable" if status == 503 else "server_error"
        return JSONResponse({"error": oauth_code, "error_description": message,
                             "request_id": request_id}, status_code=status, headers=headers)
    title = "Try again shortly" if status == 503 else "Something went wrong"
    # A static page: the template machinery may be what failed.
    body = _PAGE.format(title=html.escape(title), message=html.escape(message),
                        request_id=html.escape(request_id))
    return HTMLResponse(body, status_code=status, headers={
        **headers,
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
    })


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """Any exception an endpoint did not handle: a 500 in the surface's shape. The exception
    is logged with the request id; the response says nothing about it."""
    request_id = request_id_of(request)
    log.error("unexpected error %s %s (request id %s)", request.method, request.url.path,
              request_id, exc_info=exc)
    return error_response(request, status=500, code="internal_error",
                          message="internal error; the operator can find it in the log by "
                          "its request id", request_id=request_id)


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """No pooled connection within ``BREEZE_DB_POOL_TIMEOUT``, PostgreSQL unreachable, or a
    transient database failure (statement or lock timeout, deadlock, serialization failure)
    that escaped an endpoint: ``503`` with ``Retry-After``, in the surface's shape. The
    request's transaction was rolled back, so nothing of it was committed. Failures inside a
    tool call are the call's own errors (audited by the pipeline) and never get here."""
    busy = isinstance(exc, PoolTimeout)
    # The server answered with an error (not a lost connection: class 08, or 57P01-57P03
    # when it shut the session down).
    state = getattr(getattr(exc, "orig", exc), "sqlstate", None) or ""
    reported = state if state and not state.startswith(("08", "57P")) else None
    request_id = request_id_of(request)
    log.warning("database %s: %s %s (request id %s)",
                "busy" if busy else f"error {reported}" if reported else "unreachable",
                request.method, request.url.path, request_id, exc_info=not busy)
    if busy:
        message = "the service is busy: no database connection was free in time; retry shortly"
    elif reported:
        message = "the database could not complete the request; retry shortly"
    else:
        message = "the database is unreachable; retry shortly"
    return error_response(request, status=503, code="temporarily_unavailable", message=message,
                          request_id=request_id,
                          headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (a route, another method): JSON with ``error``
    and ``message`` on the REST surface like every other REST error, plain text elsewhere."""
    assert isinstance(exc, HTTPException)
    if surface_of(request.url.path) != "rest":
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    if exc.status_code == 404:
        body = {"error": "not_found",
                "message": "no such endpoint; see /api/v1/openapi.json for the REST API"}
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        body = {"error": "method_not_allowed",
                "message": f"{request.method} is not allowed here; allowed: {allowed}"}
    else:
        body = {"error": "bad_request" if exc.status_code < 500 else "internal_error",
                "message": exc.detail}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)
