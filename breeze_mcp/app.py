"""The ASGI application, built by a factory from a Settings value and a runtime database URL.

HTTP edges (MCP endpoint, REST, OAuth, web console) are mounted here; each builds a Principal
and hands it to the call pipeline. Nothing below this module knows which door was used.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp

from breeze_mcp import (
    __version__,
    admin_api,
    admin_apps,  # noqa: F401 - declares its admin endpoints (before admin_api.routes())
    admin_people,  # declares its admin endpoints: imported before admin_api.routes() is read
    audit_chain,
    audit_endpoints,
    console,
    console_apps,
    oauth_endpoints,
    rest,
    signup_api,
    web,
    webhooks,
)
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.setup import check_database
from breeze_mcp.errors import (
    RETRY_AFTER_SECONDS,
    database_unavailable,
    http_error,
    unexpected_error,
)
from breeze_mcp.http_request import Route
from breeze_mcp.mcp_endpoint import handle_mcp
from breeze_mcp.services import build_services

__all__ = ["RETRY_AFTER_SECONDS", "create_app", "verify_database"]

log = logging.getLogger(__name__)


async def verify_database(database_url: str) -> None:
    """:func:`~breeze_mcp.db.setup.check_database`, off the event loop."""
    await anyio.to_thread.run_sync(check_database, database_url)


class _App(Starlette):
    """Starlette, with ``Strict-Transport-Security`` (when the public URL is https) added
    outside even its own error middleware, so that a catch-all 500 carries it too."""

    def __init__(self, *, hsts: bool, **kwargs: Any) -> None:
        self.hsts = hsts
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return web.StrictTransportSecurity(stack) if self.hsts else stack


def create_app(settings: Settings, database_url: str) -> Starlette:
    """Build the application. The database is opened (and checked) in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database(database_url, pool_size=settings.db_pool_size,
                      pool_timeout=settings.db_pool_timeout)
        try:
            await verify_database(database_url)
            app.state.db = db
            app.state.settings = settings
            app.state.services = build_services(settings, db)
            async with audit_chain.sealing(db, settings.audit_seal_interval):
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

    return _App(
        hsts=settings.public_url.startswith("https://"),
        routes=[
            Route("/", index),
            Route("/healthz", healthz),
            Route("/mcp", handle_mcp, methods=["GET", "POST", "DELETE"]),
            Route("/api/v1/tools", rest.list_endpoint, methods=["GET"]),
            Route("/api/v1/tools/{name}", rest.call_endpoint, methods=["POST"]),
            Route("/api/v1/openapi.json", rest.openapi_endpoint, methods=["GET"]),
            Route("/api/v1/billing/webhook", webhooks.billing_webhook, methods=["POST"]),
            Route("/api/v1/signup", signup_api.signup_endpoint, methods=["POST"]),
            Route("/api/v1/verify-email", signup_api.verify_email, methods=["POST"]),
            Route("/api/v1/password-reset", signup_api.request_password_reset,
                  methods=["POST"]),
            Route("/api/v1/password-reset/confirm", signup_api.confirm_password_reset,
                  methods=["POST"]),
            Route("/api/v1/verify-email/resend", signup_api.resend_verification,
                  methods=["POST"]),
            # The admin API: every endpoint declared with admin_api.admin_endpoint.
            *admin_api.routes(),
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
            Route("/signup", web.signup_page, methods=["GET"]),
            Route("/signup", web.signup_submit, methods=["POST"]),
            Route("/verify-email", web.verify_email_page, methods=["GET"]),
            Route("/verify-email/resend", web.verify_email_resend, methods=["POST"]),
            Route("/forgot-password", web.forgot_password_page, methods=["GET"]),
            Route("/forgot-password", web.forgot_password_submit, methods=["POST"]),
            Route("/reset-password", web.reset_password_page, methods=["GET"]),
            Route("/reset-password", web.reset_password_submit, methods=["POST"]),
            Route("/account", web.account_page, methods=["GET"]),
            Route("/login/mfa", web.login_mfa_submit, methods=["POST"]),
            Route("/account/security", web.security_page, methods=["GET"]),
            Route("/account/security/start", web.security_start, methods=["POST"]),
            Route("/account/security/confirm", web.security_confirm, methods=["POST"]),
            Route("/account/security/disable", web.security_disable, methods=["POST"]),
            Route("/account/security/recovery-codes", web.security_recovery_codes,
                  methods=["POST"]),
            Route("/account/password", web.password_page, methods=["GET"]),
            Route("/account/password", web.password_submit, methods=["POST"]),
            Route("/account/sessions/end-all", web.end_all_sessions_submit, methods=["POST"]),
            Route("/account/sessions/{session_id}/end", web.end_session_submit,
                  methods=["POST"]),
            Route("/account/connections", web.connections_page, methods=["GET"]),
            Route("/account/connections/{grant_id}/disconnect", web.disconnect,
                  methods=["POST"]),
            # The web console.
            *console.ROUTES,
            *audit_endpoints.ROUTES,
            *console_apps.ROUTES,
            *admin_people.ROUTES,
        ],
        lifespan=lifespan,
        exception_handlers={
            HTTPException: http_error,
            psycopg.OperationalError: database_unavailable,
            # Anything else an endpoint let escape: a 500 in the surface's own shape.
            Exception: unexpected_error,
        },
    )
