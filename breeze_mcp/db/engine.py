"""The runtime engine and the tenant transaction.

:meth:`Database.tenant_transaction` is the one way tenant data is touched: it opens a
transaction and, in a single statement, sets the tenant and the actor with
``set_config(..., true)`` (transaction-local), so a pooled connection carries nothing to its
next user. With no tenant set, every tenant table reads as empty (row-level security).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["IDLE_PING_SECONDS", "Database", "driver", "sqlalchemy_url"]

# Run as a prepared statement straight on the psycopg connection (no per-statement
# SQLAlchemy work): tenant and actor in one statement. (A credential lookup later names the
# caller as actor in its own statement; the tenant is never changed after this one.)
_SET_CONTEXT = (
    "SELECT set_config('breeze.tenant_id', %s, true),"
    " set_config('breeze.actor', %s, true),"
    " set_config('breeze.user_id', %s, true)"
)

#: A pooled connection idle for longer than this is pinged before use (one that was in use
#: moments ago is not: under load, no checkout pays a round trip for a ping).
IDLE_PING_SECONDS = 10.0
_CHECKED_IN = "breeze_checked_in"


async def driver(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under ``conn``, in the same transaction."""
    raw = (await conn.get_raw_connection()).driver_connection
    assert isinstance(raw, psycopg.AsyncConnection)
    return raw


def _install_health_checks(engine: AsyncEngine) -> None:
    """Instead of ``pool_pre_ping`` on every checkout: a broken or closed connection is
    replaced, and one that sat idle (the server may have restarted meanwhile) is pinged."""
    dialect = engine.dialect

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(dbapi_conn: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        raw = dbapi_conn.driver_connection
        if raw.closed or raw.broken:
            raise exc.DisconnectionError("connection closed")
        checked_in = record.info.get(_CHECKED_IN)
        if checked_in is not None and time.monotonic() - checked_in > IDLE_PING_SECONDS:
            try:
                dialect.do_ping(dbapi_conn)
            except Exception as error:
                raise exc.DisconnectionError("ping failed") from error


def sqlalchemy_url(url: str) -> str:
    """Accept ``postgres://`` / ``postgresql://`` URLs and select the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError("database URL must start with postgresql:// (PostgreSQL is the only database)")


class Database:
    """Async engine of the runtime role, plus the transaction helpers every caller uses."""

    def __init__(
        self, url: str, *, pool_size: int = 10, max_overflow: int | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.engine: AsyncEngine = create_async_engine(
            sqlalchemy_url(url),
            pool_size=pool_size,
            max_overflow=pool_size if max_overflow is None else max_overflow,
            # Statement parameters (digests, emails, tool arguments) never reach an error
            # message or a log line.
            hide_parameters=True,
            **engine_kwargs,
        )
        _install_health_checks(self.engine)

    async def dispose(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def tenant_transaction(
        self,
        tenant_id: uuid.UUID,
        *,
        actor: str,
        user_id: uuid.UUID | None = None,
    ) -> AsyncIterator[AsyncConnection]:
        """A transaction scoped to one tenant; commits on success, rolls back on error."""
        if not isinstance(tenant_id, uuid.UUID):
            raise TypeError("tenant_transaction needs the tenant's UUID (fail closed)")
        async with self.engine.begin() as conn:
            await (await driver(conn)).execute(
                _SET_CONTEXT, (str(tenant_id), actor, str(user_id) if user_id else "")
            )
            yield conn

    @asynccontextmanager
    async def system_transaction(
        self, *, actor: str, user_id: uuid.UUID | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """A transaction with no tenant: tenant tables read as empty, global tables work.

        For sign-in and registry work (tenants, users) before a tenant is known. With
        ``user_id`` set, that user's own memberships are visible.
        """
        async with self.engine.begin() as conn:
            await (await driver(conn)).execute(
                _SET_CONTEXT, ("", actor, str(user_id) if user_id else "")
            )
            yield conn
