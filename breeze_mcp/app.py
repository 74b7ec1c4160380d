"""The ASGI application, built by a factory from a Settings value and a runtime database URL.

HTTP edges (MCP endpoint, REST, OAuth, web console) are mounted here; each builds a Principal
and hands it to the call pipeline. Nothing below this module knows which door was used.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from breeze_mcp import __version__, admin_api, oauth_endpoints, rest, web
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.catalog import isolation_problems
from breeze_mcp.db.setup import DatabaseSetupError, check_runtime_role, schema_is_current
from breeze_mcp.mcp_endpoint import handle_mcp
from breeze_mcp.services import build_services

__all__ = ["create_app", "verify_database"]

log = logging.getLogger(__name__)


async def verify_database(db: Database) -> None:
    """Refuse a role that skips RLS, an old schema, and a broken tenant-isolation invariant."""
    async with db.engine.connect() as conn:
        await conn.run_sync(check_runtime_role)
        current, head = await conn.run_sync(schema_is_current)
        if current != head:
            raise DatabaseSetupError(
                f"database schema is at revision {current or 'none'} but this build needs "
                f"{head}: run `breeze-mcp migrate`"
            )
        role = (await conn.execute(sa.text("SELECT current_user"))).scalar_one()
        problems = await conn.run_sync(lambda sync: isolation_problems(sync, role))
    if problems:
        raise DatabaseSetupError(
            "refusing to serve, tenant isolation is broken: " + "; ".join(problems)
        )


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no route) and 405 (a route, another method): JSON with ``error``
    and ``message`` under ``/api/`` like every other REST error, plain text elsewhere."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith("/api/"):
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


#: How long a client is asked to wait when the database is busy or unreachable.
RETRY_AFTER_SECONDS = 5


async def database_unavailable(request: Request, exc: Exception) -> Response:
    """No pooled connection within ``BREEZE_DB_POOL_TIMEOUT``, PostgreSQL unreachable, or a
    transient database failure (statement or lock timeout, deadlock, serialization failure)
    that escaped an endpoint: ``503`` with ``Retry-After``, in the endpoint's own error shape
    (JSON-RPC on ``/mcp``). The request's transaction was rolled back, so nothing of it was
    committed. Failures inside a tool call are the call's own errors (audited by the
    pipeline) and never get here."""
    busy = isinstance(exc, sa_exc.TimeoutError)
    # The server answered with an error (not a lost connection: class 08, or 57P01-57P03
    # when it shut the session down).
    state = getattr(getattr(exc, "orig", exc), "sqlstate", None) or ""
    reported = state if state and not state.startswith(("08", "57P")) else None
    log.warning("database %s: %s %s",
                "busy" if busy else f"error {reported}" if reported else "unreachable",
                request.method, request.url.path, exc_info=not busy)
    if busy:
        message = "the service is busy: no database connection was free in time; retry shortly"
    elif reported:
        message = "the database could not complete the request; retry shortly"
    else:
        message = "the database is unreachable; retry shortly"
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if request.url.path == "/mcp":
        return JSONResponse({"jsonrpc": "2.0", "id": None,
                             "error": {"code": -32603, "message": message}},
                            status_code=503, headers=headers)
    return JSONResponse({"error": "temporarily_unavailable", "message": message},
                        status_code=503, headers=headers)


def create_app(settings: Settings, database_url: str) -> Starlette:
    """Build the application. The database is opened (and checked) in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database(database_url, pool_size=settings.db_pool_size,
                      pool_timeout=settings.db_pool_timeout)
        try:
            await verify_database(db)
            app.state.db = db
            app.state.settings = settings
            app.state.services = build_services(settings, db)
            yield
        finally:
            await db.dispose()

    async def healthz(request: Request) -> Response:
        db: Database = request.app.state.db
        try:
            await db.ping()
        except Exception:  # pragma: no cover - reported, not raised
            log.exception("health check failed")
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    async def index(request: Request) -> Response:
        return PlainTextResponse(
            f"Breeze MCP {__version__}\n"
            f"MCP endpoint: {settings.mcp_url}\n"
            f"Health: {settings.public_url}/healthz\n"
        )

    return Starlette(
        routes=[
            Route("/", index),
            Route("/healthz", healthz),
            Route("/mcp", handle_mcp, methods=["GET", "POST", "DELETE"]),
            Route("/api/v1/tools", rest.list_endpoint, methods=["GET"]),
            Route("/api/v1/tools/{name}", rest.call_endpoint, methods=["POST"]),
            Route("/api/v1/openapi.json", rest.openapi_endpoint, methods=["GET"]),
            Route("/api/v1/oauth/grants", admin_api.list_grants, methods=["GET"]),
            Route("/api/v1/oauth/grants/{grant_id}", admin_api.revoke_one_grant,
                  methods=["DELETE"]),
            Route("/api/v1/oauth/clients/{client_id}/grants", admin_api.revoke_client_grants,
                  methods=["DELETE"]),
            # OAuth 2.1 authorization server and discovery.
            Route("/.well-known/oauth-protected-resource",
                  oauth_endpoints.protected_resource_metadata, methods=["GET"]),
            Route("/.well-known/oauth-protected-resource/mcp",
                  oauth_endpoints.protected_resource_metadata, methods=["GET"]),
            Route("/.well-known/oauth-authorization-server",
                  oauth_endpoints.authorization_server_metadata, methods=["GET"]),
            Route("/.well-known/oauth-authorization-server/mcp",
                  oauth_endpoints.authorization_server_metadata, methods=["GET"]),
            Route("/.well-known/openid-configuration",
                  oauth_endpoints.authorization_server_metadata, methods=["GET"]),
            Route("/.well-known/openid-configuration/mcp",
                  oauth_endpoints.authorization_server_metadata, methods=["GET"]),
            Route("/mcp/.well-known/openid-configuration",
                  oauth_endpoints.authorization_server_metadata, methods=["GET"]),
            Route("/register", oauth_endpoints.register, methods=["POST"]),
            Route("/authorize", oauth_endpoints.authorize, methods=["GET", "POST"]),
            Route("/token", oauth_endpoints.token, methods=["POST"]),
            Route("/revoke", oauth_endpoints.revoke, methods=["POST"]),
            # Pages for humans.
            Route("/login", web.login_page, methods=["GET"]),
            Route("/login", web.login_submit, methods=["POST"]),
            Route("/logout", web.logout, methods=["POST"]),
            Route("/account/connections", web.connections_page, methods=["GET"]),
            Route("/account/connections/{grant_id}/disconnect", web.disconnect,
                  methods=["POST"]),
        ],
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            sa_exc.TimeoutError: database_unavailable,
            sa_exc.OperationalError: database_unavailable,
            sa_exc.DisconnectionError: database_unavailable,
            psycopg.OperationalError: database_unavailable,
        },
    )
