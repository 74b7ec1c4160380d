"""The runtime engine and the tenant transaction.

:meth:`Database.tenant_transaction` is the one way tenant data is touched: it opens a
transaction and, in a single statement, sets the tenant and the actor with
``set_config(..., true)`` (transaction-local), so a pooled connection carries nothing to its
next user. With no tenant set, every tenant table reads as empty (row-level security).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["Database", "sqlalchemy_url"]

_SET_CONTEXT = sa.text(
    "SELECT set_config('breeze.tenant_id', :tenant_id, true),"
    " set_config('breeze.actor', :actor, true),"
    " set_config('breeze.user_id', :user_id, true)"
)


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
            pool_pre_ping=True,
            **engine_kwargs,
        )

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
            await conn.execute(
                _SET_CONTEXT,
                {
                    "tenant_id": str(tenant_id),
                    "actor": actor,
                    "user_id": str(user_id) if user_id else "",
                },
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
            await conn.execute(
                _SET_CONTEXT,
                {"tenant_id": "", "actor": actor, "user_id": str(user_id) if user_id else ""},
            )
            yield conn
