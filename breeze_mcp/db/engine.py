"""The runtime engine and the tenant transaction.

:meth:`Database.tenant_transaction` is the one way tenant data is touched: it opens a
transaction and sets the tenant and the actor with ``set_config(..., true)``
(transaction-local), so a pooled connection carries nothing to its next user. With no tenant
set, every tenant table reads as empty (row-level security).

Round trips are what a call costs, so the pooled connections are in autocommit mode and a
transaction is opened explicitly: ``BEGIN``, the ``set_config`` and, optionally, the caller's
first statement (the credential lookup) travel as one simple-query message, bound client-side
by psycopg (:class:`psycopg.AsyncClientCursor`, which quotes every value as a literal).
Outside these helpers a statement on this engine autocommits on its own; nothing in the
service runs one that way except the read-only start-up checks and the health probe.

Between transactions the helpers keep their connections open (:class:`_Keeper`) rather
than checking them in and out of SQLAlchemy's pool for every call.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import lru_cache
from typing import Any
from weakref import WeakKeyDictionary

import psycopg
from psycopg import AsyncClientCursor
from psycopg.pq import TransactionStatus
from psycopg.types.string import TextLoader
from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = [
    "IDLE_PING_SECONDS", "Database", "Statement", "driver", "executable", "execute_then_commit",
    "sqlalchemy_url",
]

# Straight on the psycopg connection (no per-statement SQLAlchemy work): the transaction and
# its tenant and actor in one message. (A credential lookup may name the caller as actor in
# its own statement; the tenant is never changed after this one.)
_BEGIN_CONTEXT = (
    "BEGIN; SELECT set_config('breeze.tenant_id', %s, true),"
    " set_config('breeze.actor', %s, true),"
    " set_config('breeze.user_id', %s, true)"
)

#: A statement and its parameters (psycopg ``%s`` placeholders).
Statement = tuple[str, tuple[Any, ...]]

#: A pooled connection idle for longer than this is pinged before use (one that was in use
#: moments ago is not: under load, no checkout pays a round trip for a ping).
IDLE_PING_SECONDS = 10.0
_CHECKED_IN = "breeze_checked_in"


def driver(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under ``conn``, in the same transaction; read through the
    synchronous proxies because ``get_raw_connection`` would cost a greenlet switch."""
    raw = conn.sync_connection.connection.driver_connection if conn.sync_connection else None
    if not isinstance(raw, psycopg.AsyncConnection):
        raise RuntimeError("the connection is closed")
    return raw


# Names of the statements prepared (SQL PREPARE) on each connection, see ``executable``.
_prepared: WeakKeyDictionary[psycopg.AsyncConnection[Any], set[str]] = WeakKeyDictionary()


async def executable(raw: psycopg.AsyncConnection[Any], statement: Statement) -> Statement:
    """``statement`` as ``EXECUTE name(%s, ...)`` of a statement prepared (SQL ``PREPARE``,
    once per connection) on ``raw``.

    psycopg does not prepare statements sent several to a simple-query message, so PostgreSQL
    would plan them on every call (see docs/benchmarks.md, "PostgreSQL's share"); a prepared
    statement is session-level and survives a rollback.
    """
    sql, params = statement
    name, numbered, count = _prepare_text(sql)
    if count != len(params):
        raise ValueError(f"{name}: {count} placeholders, {len(params)} parameters")
    names = _prepared.setdefault(raw, set())
    if name not in names:
        try:
            await raw.execute(f"PREPARE {name} AS {numbered}", prepare=False)
        except BaseException:
            # Cancelled (or failed) with the PREPARE in flight: the server may hold the
            # statement or not, and a wrong guess breaks every later call on this
            # connection. Close it; the pool replaces a closed connection at checkout.
            raw.pgconn.finish()
            raise
        names.add(name)
    placeholders = ", ".join(["%s"] * count)
    return (f"EXECUTE {name}({placeholders})" if count else f"EXECUTE {name}"), params


@lru_cache(maxsize=512)  # hot statements are few; list_devices has a text per filter set
def _prepare_text(sql: str) -> tuple[str, str, int]:
    """The statement's name, its text with numbered placeholders, and their count."""
    parts = sql.split("%s")
    if any("%" in part for part in parts):
        raise ValueError("a prepared hot-path statement takes only %s placeholders")
    name = "breeze_" + hashlib.blake2b(sql.encode(), digest_size=10).hexdigest()
    numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
    return name, numbered, len(parts) - 1


async def execute_then_commit(conn: AsyncConnection, statement: Statement) -> None:
    """Run ``statement`` (prepared, see :func:`executable`) and ``COMMIT`` in one round trip,
    bound client-side like :data:`_BEGIN_CONTEXT`. If the statement fails, the transaction
    is left aborted (the ``COMMIT`` is never reached) and the error is raised."""
    raw = driver(conn)
    sql, params = await executable(raw, statement)
    await AsyncClientCursor(raw).execute(sql + "; COMMIT", params)


def _install_health_checks(engine: AsyncEngine) -> None:
    """Instead of ``pool_pre_ping`` on every checkout: a broken or closed connection is
    replaced, and one that sat idle (the server may have restarted meanwhile) is pinged."""
    dialect = engine.dialect

    @event.listens_for(engine.sync_engine, "connect")
    def _connected(dbapi_conn: Any, record: Any) -> None:
        # inet values are read as PostgreSQL's own text ("10.0.0.7", "10.0.0.0/24"): every
        # reader formats them as strings anyway, so ipaddress objects would be built only to
        # be formatted again.
        dbapi_conn.driver_connection.adapters.register_loader("inet", TextLoader)

    @event.listens_for(engine.sync_engine, "reset")
    def _reset(dbapi_conn: Any, record: Any, state: Any) -> None:
        # What the pool's rollback-on-return does, minus the round into the event loop for
        # a connection with nothing open (every one our transaction helpers give back). A
        # connection returned mid-transaction (an error path) is rolled back, so the next
        # user never inherits a transaction or its tenant settings.
        raw = dbapi_conn.driver_connection
        if not state.asyncio_safe or raw.closed:  # a closed one is replaced at checkout
            return
        if raw.info.transaction_status != TransactionStatus.IDLE:
            dbapi_conn.rollback()

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


def _context(
    tenant_id: uuid.UUID | None, actor: str, user_id: uuid.UUID | None
) -> tuple[str, str, str]:
    """The values of ``breeze.tenant_id``, ``breeze.actor`` and ``breeze.user_id`` for a
    tenant's transaction. Anything but the tenant's UUID (None included) is refused: fail
    closed. (A system transaction has no tenant: :data:`_SYSTEM`.)"""
    if tenant_id is _SYSTEM:
        return "", actor, str(user_id) if user_id else ""
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("a tenant transaction needs the tenant's UUID (fail closed)")
    return str(tenant_id), actor, str(user_id) if user_id else ""


#: The tenant of a system transaction: none (tenant tables read as empty).
_SYSTEM: Any = object()


async def _begin(
    raw: psycopg.AsyncConnection[Any], context: tuple[str, str, str], first: Statement | None,
) -> tuple[Any, ...] | None:
    """Open a transaction on ``raw`` with ``context`` (and ``first``) in one message; the first
    row of ``first``, if given."""
    cursor = AsyncClientCursor(raw)
    if first is None:
        await cursor.execute(_BEGIN_CONTEXT, context)
        return None
    sql, params = await executable(raw, first)
    await cursor.execute(f"{_BEGIN_CONTEXT}; {sql}", context + params)
    cursor.nextset()  # past BEGIN's and set_config's results
    cursor.nextset()
    return await cursor.fetchone()


class _Keeper:
    """The runtime's connections, kept open as SQLAlchemy connections between transactions.

    Checking a connection out of SQLAlchemy's async pool and back in costs each call two
    greenlets, the pool's events and a new ``Connection`` (see docs/benchmarks.md, "Kept
    connections"). So the transaction helpers keep their connections instead, as already-open
    ``AsyncConnection`` objects, handed from one transaction to the next:

    * at most ``size`` are in use at once (a semaphore); a caller beyond that waits up to
      ``timeout`` and then gets SQLAlchemy's own pool-timeout error (answered 503 upstream);
    * only a **clean** connection is kept: no transaction open (at the driver and in
      SQLAlchemy), not closed, broken or invalidated. Anything else goes back to SQLAlchemy's
      pool through its protected exit, whose "reset" listener rolls it back (or drops it);
      the next checkout replaces a dead one;
    * a connection kept idle for longer than ``IDLE_PING_SECONDS`` is pinged before reuse,
      as the pool's "checkout" listener does for its own; once one is found dead, every
      other kept one is pinged before its next use too (after a server restart all are);
    * the kept connections are the pool's: with ``pool_size`` connections in the pool,
      the kept and in-use ones together never exceed it.

    Keeping changes nothing a transaction can see: the tenant, actor and user are
    transaction-local settings, gone with the ``COMMIT`` or ``ROLLBACK`` that ends each one.
    """

    def __init__(self, engine: AsyncEngine, size: int, timeout: float) -> None:
        self._engine = engine
        self._timeout = timeout
        self._in_use = asyncio.Semaphore(size)
        self._idle: list[tuple[AsyncConnection, float]] = []  # LIFO: the warmest on top
        self._closed = False

    async def acquire(self) -> AsyncConnection:
        if self._in_use.locked():
            try:
                async with asyncio.timeout(self._timeout):
                    await self._in_use.acquire()
            except TimeoutError:
                raise exc.TimeoutError(
                    f"no database connection free within {self._timeout:g} s") from None
        else:
            await self._in_use.acquire()  # free: returns without suspending
        try:
            while self._idle:
                conn, since = self._idle.pop()
                try:
                    if _usable(conn) and (time.monotonic() - since <= IDLE_PING_SECONDS
                                          or await _pinged(conn)):
                        return conn
                except BaseException:  # cancelled mid-ping: never lose the connection
                    await _give_back(conn)
                    raise
                await _give_back(conn)
                self._suspect_idle()
            return await self._engine.connect()
        except BaseException:
            self._in_use.release()
            raise

    async def release(self, conn: AsyncConnection) -> None:
        try:
            if not self._closed and _clean(conn):
                self._idle.append((conn, time.monotonic()))
            else:
                if not _usable(conn):
                    self._suspect_idle()
                await _give_back(conn)
        finally:
            self._in_use.release()

    def _suspect_idle(self) -> None:
        """One connection was found dead (a server restart, an idle timeout): the kept ones
        may be too, so each is pinged before its next use, however recently it ran."""
        self._idle = [(conn, -math.inf) for conn, _ in self._idle]

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            await _give_back(self._idle.pop()[0])


def _clean(conn: AsyncConnection) -> bool:
    """Usable, and no transaction open: neither at the driver nor in SQLAlchemy (where a
    transaction whose commit failed stays attached, though no longer "in" it)."""
    if not _usable(conn):
        return False
    proxied = conn.sync_connection
    assert proxied is not None
    return (proxied.get_transaction() is None and proxied.get_nested_transaction() is None
            and driver(conn).info.transaction_status == TransactionStatus.IDLE)


def _usable(conn: AsyncConnection) -> bool:
    proxied = conn.sync_connection
    if proxied is None or proxied.closed or proxied.invalidated:
        return False
    raw = proxied.connection.driver_connection
    return isinstance(raw, psycopg.AsyncConnection) and not raw.closed and not raw.broken


async def _pinged(conn: AsyncConnection) -> bool:
    try:
        await driver(conn).execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


async def _give_back(conn: AsyncConnection) -> None:
    """Return ``conn`` to SQLAlchemy's pool so that no cancellation can cut the return short:
    a clean one is checked in without I/O, any other through SQLAlchemy's ``async with`` exit,
    which finishes its rollback even if the caller is cancelled."""
    if _clean(conn):
        await conn.close()
    else:
        await conn.__aexit__(None, None, None)


class Database:
    """Async engine of the runtime role, plus the transaction helpers every caller uses."""

    def __init__(
        self, url: str, *, pool_size: int = 10, pool_timeout: float = 10.0,
        **engine_kwargs: Any,
    ) -> None:
        self.engine: AsyncEngine = create_async_engine(
            sqlalchemy_url(url),
            # A fixed pool: an overflow connection would make PostgreSQL fork a backend per
            # request beyond the pool size (see docs/benchmarks.md, "The pool"). A request
            # waits up to ``pool_timeout`` for a free connection.
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=pool_timeout,
            # Returned connections are rolled back by the "reset" listener below, and only
            # when a transaction is actually open.
            pool_reset_on_return=None,
            # Statement parameters (digests, emails, tool arguments) never reach an error
            # message or a log line.
            hide_parameters=True,
            # Transactions are opened explicitly by the helpers below (see the module doc).
            isolation_level="AUTOCOMMIT",
            # No automatic server-side preparation by psycopg: it answers any ROLLBACK (a
            # refused credential, a failing tool) with DEALLOCATE ALL, which would also drop
            # the hot-path statements prepared by ``executable``.
            connect_args={"prepare_threshold": None, **engine_kwargs.pop("connect_args", {})},
            **engine_kwargs,
        )
        _install_health_checks(self.engine)
        self._kept = _Keeper(self.engine, pool_size, pool_timeout)

    async def dispose(self) -> None:
        await self._kept.close()
        await self.engine.dispose()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """One of the transaction helpers' connections, with no transaction opened (each
        statement autocommits, and sees no tenant): for the health check and diagnostics.
        It waits for a free connection like any caller."""
        conn = await self._kept.acquire()
        try:
            yield conn
        finally:
            await self._kept.release(conn)

    async def ping(self) -> None:
        """``SELECT 1`` (the health check); raises if the database is unreachable."""
        async with self.connection() as conn:
            await driver(conn).execute("SELECT 1")

    @asynccontextmanager
    async def _transaction(
        self, tenant_id: uuid.UUID, actor: str, user_id: uuid.UUID | None,
        first: Statement | None,
    ) -> AsyncIterator[tuple[AsyncConnection, tuple[Any, ...] | None]]:
        context = _context(tenant_id, actor, user_id)
        conn = await self._kept.acquire()
        try:
            raw = driver(conn)
            try:
                row = await _begin(raw, context, first)
                yield conn, row
            except BaseException:
                # The pool rolls back on return as well; this one keeps the order plain.
                with suppress(psycopg.Error):
                    if not raw.closed:
                        await raw.rollback()
                raise
            if raw.info.transaction_status != TransactionStatus.IDLE:
                await raw.commit()  # unless the caller committed already
        finally:
            await self._kept.release(conn)

    async def restart_tenant_transaction(
        self, conn: AsyncConnection, tenant_id: uuid.UUID, *, actor: str,
        user_id: uuid.UUID | None = None,
    ) -> None:
        """Roll back whatever ``conn`` has open and begin a new tenant transaction on it, for
        a call that still has to write its audit entry: a full pool would not give a second
        connection."""
        context = _context(tenant_id, actor, user_id)
        raw = driver(conn)
        if raw.info.transaction_status != TransactionStatus.IDLE:
            await raw.rollback()
        await _begin(raw, context, None)

    @asynccontextmanager
    async def tenant_transaction(
        self,
        tenant_id: uuid.UUID,
        *,
        actor: str,
        user_id: uuid.UUID | None = None,
    ) -> AsyncIterator[AsyncConnection]:
        """A transaction scoped to one tenant; commits on success, rolls back on error. After
        a commit inside the block the tenant is gone: later statements see no tenant rows."""
        async with self._transaction(tenant_id, actor, user_id, None) as (conn, _):
            yield conn

    @asynccontextmanager
    async def tenant_lookup(
        self, tenant_id: uuid.UUID, *, actor: str, first: Statement,
    ) -> AsyncIterator[tuple[AsyncConnection, tuple[Any, ...] | None]]:
        """:meth:`tenant_transaction` whose first statement is sent in the same round trip
        as ``BEGIN`` and the context (the credential lookup); yields the connection and the
        statement's first row (None when it returned no row)."""
        async with self._transaction(tenant_id, actor, None, first) as result:
            yield result

    @asynccontextmanager
    async def system_transaction(
        self, *, actor: str, user_id: uuid.UUID | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """A transaction with no tenant (tenant tables read as empty), for work before a
        tenant is known; with ``user_id`` set, that user's own memberships are visible."""
        async with self._transaction(_SYSTEM, actor, user_id, None) as (conn, _):
            yield conn
