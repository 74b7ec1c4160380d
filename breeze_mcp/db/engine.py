"""The one database stack: a psycopg connection pool and the transaction object.

:class:`Database` owns a :class:`psycopg_pool.AsyncConnectionPool` of the runtime role's
connections. Each connection is configured once when it is opened (type loaders, row
factory, ``PREPARE`` of every hot statement: :mod:`breeze_mcp.db.statements`), rolled back
when it comes back with a transaction open, and pinged before use only when it has sat idle.

Tenant data is touched only inside a :class:`Transaction`, opened by
:meth:`Database.tenant` (one tenant; row-level security hides every other) or
:meth:`Database.system` (no tenant: tenant tables read as empty). ``BEGIN`` and the tenant
setting travel in one message with the transaction's first statement, if it has one (the
credential lookup). A transaction commits only through :meth:`Transaction.finish`, which sends
``[final read;] INSERT audit entry; COMMIT`` as one message: work and its audit entry are
committed together or not at all. Anything else that ends it rolls it back.

SQLAlchemy is the query builder only: a Core statement is compiled (once per shape) to
psycopg's placeholders and run on the pooled psycopg connection, and rows are read by name.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
from collections import namedtuple
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any, cast
from weakref import WeakKeyDictionary

import psycopg
import sqlalchemy as sa
from psycopg import AsyncClientCursor
from psycopg.pq import TransactionStatus
from psycopg.types.json import JsonbDumper
from psycopg.types.string import TextLoader
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.dialects.postgresql import psycopg as sa_psycopg

from breeze_mcp.db.statements import Prepared, all_prepared

if TYPE_CHECKING:
    from breeze_mcp.audit import AuditEntry

__all__ = [
    "IDLE_PING_SECONDS", "Database", "Result", "Row", "State", "Transaction", "compile_statement",
    "sqlalchemy_url",
]

log = logging.getLogger(__name__)

#: A row: a named tuple, read by column name (``row.digest``).
Row = Any
#: Anything a transaction runs: a prepared hot statement, or a SQLAlchemy Core statement.
Runnable = Prepared | sa.Executable

#: A pooled connection idle for longer than this is pinged before use (one in use moments
#: ago is not: under load no checkout pays a round trip for a ping).
IDLE_PING_SECONDS = 10.0

_DIALECT = sa_psycopg.dialect()  # type: ignore[no-untyped-call]
_compiled: dict[Any, Any] = {}  # SQLAlchemy cache key -> compiled statement
_MAX_COMPILED = 2048


def sqlalchemy_url(url: str) -> str:
    """Accept ``postgres://`` / ``postgresql://`` URLs and select the psycopg 3 driver (for
    Alembic and the start-up checks)."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError("database URL must start with postgresql:// (PostgreSQL is the only database)")


def _conninfo(url: str) -> str:
    """The libpq form of a database URL (``postgresql+psycopg://`` accepted too)."""
    return "postgresql://" + sqlalchemy_url(url)[len("postgresql+psycopg://"):]


def compile_statement(statement: sa.Executable) -> tuple[str, Mapping[str, Any]]:
    """A Core statement as psycopg SQL (``%(name)s`` placeholders) and its parameters; the
    compilation is cached per statement shape, as SQLAlchemy's own engine does."""
    key = cast(Any, statement)._generate_cache_key()
    compiled = _compiled.get(key.key) if key is not None else None
    if compiled is None:
        compiled = cast(Any, statement).compile(dialect=_DIALECT, cache_key=key)
        if compiled.post_compile_params or compiled.literal_execute_params:
            # An expanding IN list would have to be rendered per call: use = ANY(array).
            raise ValueError("IN (list) is not supported: compare with = ANY(array)")
        if key is not None:
            if len(_compiled) >= _MAX_COMPILED:
                _compiled.clear()
            _compiled[key.key] = compiled
    params = compiled.construct_params(
        extracted_parameters=key.bindparams if key is not None else None)
    return compiled.string, params


_row_types: dict[str, Any] = {}  # statement -> the named tuple type of its rows


def _make_row_type(names: list[str]) -> Any:
    return namedtuple("Row", names, rename=True)


def _named(cursor: psycopg.AsyncCursor[Any], key: str, rows: list[Any]) -> list[Row]:
    """``rows`` (plain tuples, as psycopg returns them cheaply) as named tuples, whose type is
    made once per statement from the result's column names."""
    row_type: Any = _row_types.get(key)
    if row_type is None:
        assert cursor.description is not None
        row_type = _make_row_type([c.name for c in cursor.description])
        if len(_row_types) < 4096:
            _row_types[key] = row_type
    make = functools.partial(tuple.__new__, row_type)  # no Python frame per row
    return [make(row) for row in rows]


class Result:
    """The rows of one statement (named tuples) and the number of rows it touched."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Row], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def first(self) -> Row | None:
        return self.rows[0] if self.rows else None

    def one(self) -> Row:
        if len(self.rows) != 1:
            raise LookupError(f"expected one row, got {len(self.rows)}")
        return self.rows[0]

    def one_or_none(self) -> Row | None:
        if len(self.rows) > 1:
            raise LookupError(f"expected at most one row, got {len(self.rows)}")
        return self.first()

    def all(self) -> list[Row]:
        return self.rows

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self.rows]


class State(Enum):
    OPEN = "open"
    ABORTED = "aborted"  # a statement failed: only finish (which starts over) or roll back
    DONE = "done"  # committed or rolled back; nothing more runs in it


_SAVEPOINT = "SAVEPOINT breeze_work"
_ROLLBACK_WORK = "ROLLBACK TO SAVEPOINT breeze_work"


class Transaction:
    """One transaction on one pooled connection, with an explicit :class:`State`.

    Statements run with :meth:`execute` (any Core statement or a :class:`Prepared` one).
    The only commit is :meth:`finish`, with the audit entry of what was done. Work that may
    have to be undone while the entry is still written runs after :meth:`savepoint`.
    """

    def __init__(self, db: Database, conn: psycopg.AsyncConnection[Any],
                 context: tuple[str, str]) -> None:
        self._db = db
        self._conn = conn
        self._context = context  # (tenant id, user id) as set_config values
        self.state = State.OPEN
        self._savepoint = False

    @property
    def connection(self) -> psycopg.AsyncConnection[Any]:
        """The psycopg connection (for :mod:`breeze_mcp.db` and diagnostics only)."""
        return self._conn

    def _check_open(self) -> None:
        if self.state is not State.OPEN:
            raise RuntimeError(f"the transaction is {self.state.value}")

    async def _run(self, sql: str, params: Any) -> Result:
        self._check_open()
        try:
            cursor = await self._conn.execute(sql, params)
        except BaseException:
            self._note_failure()
            raise
        if cursor.description is None:
            return Result([], cursor.rowcount)
        return Result(_named(cursor, sql, await cursor.fetchall()), cursor.rowcount)

    def _note_failure(self) -> None:
        if self._conn.info.transaction_status != TransactionStatus.INTRANS:
            self.state = State.ABORTED

    async def execute(self, statement: Runnable, params: Sequence[Any] = ()) -> Result:
        """Run one statement; ``params`` only for a :class:`Prepared` one."""
        if isinstance(statement, Prepared):
            sql, bound = await self._db.executable(self._conn, statement, params)
            return await self._run_client_bound(statement.name, sql, bound)
        sql, named = compile_statement(statement)
        return await self._run(sql, named)

    async def _run_client_bound(self, key: str, sql: str, params: Sequence[Any]) -> Result:
        self._check_open()
        cursor = AsyncClientCursor(self._conn)
        try:
            await cursor.execute(sql, params)
        except BaseException:
            self._note_failure()
            raise
        if cursor.description is None:
            return Result([], cursor.rowcount)
        return Result(_named(cursor, key, await cursor.fetchall()), cursor.rowcount)

    async def savepoint(self) -> None:
        """Mark the point :meth:`undo` returns to: work after it can be undone and the
        transaction still finished with its audit entry."""
        await self._run(_SAVEPOINT, None)
        self._savepoint = True

    async def undo(self) -> None:
        """Undo everything since :meth:`savepoint` (also after a failed statement)."""
        if not self._savepoint:
            raise RuntimeError("undo without a savepoint")
        if self.state is State.ABORTED and self._conn.info.transaction_status \
                == TransactionStatus.INERROR:
            self.state = State.OPEN  # a savepoint rollback is what an aborted one allows
        await self._run(_ROLLBACK_WORK, None)

    async def finish(self, entry: AuditEntry | None,
                     final: tuple[Prepared, Sequence[Any]] | None = None, *,
                     then: Sequence[tuple[Prepared, Sequence[Any]]] = ()) -> list[Row]:
        """Commit, with ``entry`` inserted in the same transaction, in one message:
        ``[then...;] [final read;] INSERT entry; COMMIT``: ``then``, the last writes decided
        already (the token endpoint's), ``final``, a read-only tool's last read. Returns the
        final read's rows.

        If the final read or the insert fails, nothing is committed and the error is raised
        (the transaction is then aborted, and may be finished again with another entry). An
        aborted transaction is finished by rolling it back and committing ``entry`` alone,
        in a fresh transaction with the same tenant: an entry is never lost because the work
        failed. ``entry`` None commits without an entry (for work that is not an action,
        such as the service's own bookkeeping)."""
        from breeze_mcp.audit import insert_statement  # the audit writer builds the insert

        if self.state is State.DONE:
            raise RuntimeError("the transaction is done")
        parts: list[str] = []
        params: list[Any] = []
        if self.state is State.ABORTED:
            if final is not None or then:
                raise RuntimeError("work to finish in an aborted transaction")
            if self._conn.closed:
                return await self._finish_elsewhere(entry)
            parts.append("ROLLBACK")
            parts.append(_BEGIN)
            params.extend(self._context)
            self.state = State.OPEN
        for statement in (*then, *([final] if final is not None else [])):
            sql, bound = await self._db.executable(self._conn, *statement)
            parts.append(sql)
            params.extend(bound)
        if entry is not None:
            sql, bound = await self._db.executable(
                self._conn, *insert_statement(entry, after_read=final is not None))
            parts.append(sql)
            params.extend(bound)
        parts.append("COMMIT")
        cursor = AsyncClientCursor(self._conn)
        try:
            await cursor.execute("; ".join(parts), params)
        except BaseException:
            self._note_failure()
            if self._conn.info.transaction_status == TransactionStatus.IDLE \
                    and not self._conn.closed:
                self.state = State.ABORTED  # failed before anything began: start over
            raise
        self.state = State.DONE
        if final is None:
            return []
        for _ in then:  # past the results of the writes before it
            cursor.nextset()
        return _named(cursor, final[0].name, await cursor.fetchall())

    async def _finish_elsewhere(self, entry: AuditEntry | None) -> list[Row]:
        """The connection is gone: commit ``entry`` on a one-off connection outside the
        pool (the dead one still counts against it, and a full pool must not delay or lose
        the entry)."""
        log.warning("the transaction's connection is gone; its audit entry goes on another")
        if entry is not None:
            async with self._db.one_off() as conn:
                other = Transaction(self._db, conn, self._context)
                await AsyncClientCursor(conn).execute(_BEGIN, self._context)
                await other.finish(entry)
        self.state = State.DONE
        return []

    async def rollback(self) -> None:
        """Roll back (nothing is committed); the transaction is done."""
        if self.state is State.DONE:
            return
        self.state = State.DONE
        if not self._conn.closed and \
                self._conn.info.transaction_status != TransactionStatus.IDLE:
            await self._conn.rollback()


# BEGIN and the tenant (and user) settings, transaction-local: a pooled connection carries
# nothing to its next user. With no tenant set, every tenant table reads as empty (RLS).
_BEGIN = ("BEGIN; SELECT set_config('breeze.tenant_id', %s, true) AS tenant,"
          " set_config('breeze.user_id', %s, true) AS usr")

#: The context of a transaction with no tenant.
_SYSTEM = ""


def _context(tenant_id: uuid.UUID | None, user_id: uuid.UUID | None) -> tuple[str, str]:
    """The values of ``breeze.tenant_id`` and ``breeze.user_id``. A tenant transaction needs
    the tenant's UUID: anything else (None included) is refused, failing closed."""
    if not isinstance(tenant_id, uuid.UUID):
        raise TypeError("a tenant transaction needs the tenant's UUID (fail closed)")
    return str(tenant_id), str(user_id) if user_id else ""


class _Kept:
    """The thinnest layer over the pool: connections stay checked out between transactions.

    psycopg_pool's ``getconn``/``putconn`` cost a call about ten coroutine frames, two locks
    and four log calls (see docs/benchmarks.md, "Issue 10"); handing a clean connection
    straight to the next transaction does not. The pool still owns every connection's life:
    it opens and configures them, and takes back any that is not clean (a transaction still
    open, closed, broken: it rolls back or replaces it).

    * at most ``size`` connections are in use or kept (a semaphore); a caller beyond that
      waits up to ``timeout``, then gets :class:`PoolTimeout` (or, when PostgreSQL cannot be
      reached, the reason);
    * the most recently used connection is handed out first; one idle for longer than
      :data:`IDLE_PING_SECONDS` is pinged first, and once one is found dead (a server
      restart) every other kept one is pinged before its next use too.
    """

    def __init__(self, db: Database, size: int, timeout: float) -> None:
        self._db = db
        self._timeout = timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []
        self.closed = False

    async def take(self) -> psycopg.AsyncConnection[Any]:
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._timeout):
                    await self._slots.acquire()
            except TimeoutError:
                await self._db.probe()
                raise PoolTimeout(f"no database connection free within {self._timeout:g} s") \
                    from None
        else:
            await self._slots.acquire()  # free: returns without suspending
        try:
            while self._idle:
                conn, since = self._idle.pop()
                try:
                    if _usable(conn) and (time.monotonic() - since <= IDLE_PING_SECONDS
                                          or await _pinged(conn)):
                        return conn
                except BaseException:  # cancelled mid-ping: never lose the connection
                    await self._db._pool.putconn(conn)
                    raise
                await self._db._pool.putconn(conn)
                self._suspect()
            try:
                return await self._db._pool.getconn(self._timeout)
            except PoolTimeout:  # none could be opened in time: say why, if it is known
                await self._db.probe()
                raise
        except BaseException:
            self._slots.release()
            raise

    async def give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            if not self.closed and _usable(conn) \
                    and conn.pgconn.transaction_status == TransactionStatus.IDLE:
                self._idle.append((conn, time.monotonic()))
            else:
                if not _usable(conn):
                    self._suspect()
                await self._db._pool.putconn(conn)  # rolled back or replaced by the pool
        finally:
            self._slots.release()

    def _suspect(self) -> None:
        """One connection was found dead: the kept ones may be too."""
        self._idle = [(conn, -math.inf) for conn, _ in self._idle]

    async def close(self) -> None:
        self.closed = True
        while self._idle:
            await self._db._pool.putconn(self._idle.pop()[0])


def _usable(conn: psycopg.AsyncConnection[Any]) -> bool:
    return not conn.closed and not conn.broken


async def _pinged(conn: psycopg.AsyncConnection[Any]) -> bool:
    try:
        await conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


class Database:
    """The runtime role's connection pool and the transactions over it."""

    def __init__(self, url: str, *, pool_size: int = 10, pool_timeout: float = 10.0) -> None:
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            _conninfo(url),
            # A fixed ceiling: beyond it a request waits up to ``pool_timeout`` for a free
            # connection (503 upstream), rather than PostgreSQL forking a backend per request.
            min_size=1, max_size=pool_size, timeout=pool_timeout,
            # psycopg's own automatic preparation is off: it answers any ROLLBACK with
            # DEALLOCATE ALL, which would drop the statements prepared at connect.
            kwargs={"autocommit": True, "prepare_threshold": None},
            configure=self._configure, check=_check,
            open=False, name="breeze",
        )
        self._conninfo = _conninfo(url)
        self._timeout = pool_timeout
        self._opened = False
        self._opening = asyncio.Lock()
        self._prepared: WeakKeyDictionary[psycopg.AsyncConnection[Any], set[str]] = \
            WeakKeyDictionary()
        self._kept = _Kept(self, pool_size, pool_timeout)

    # -- the pool's callbacks ------------------------------------------------------------

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Once per new connection: inet read as PostgreSQL's text (every reader formats it
        as a string anyway), dicts written as jsonb, and every hot statement prepared in one
        message. (Rows are read as tuples and named once per statement: :func:`_named`.)"""
        conn.adapters.register_loader("inet", TextLoader)
        conn.adapters.register_loader("cidr", TextLoader)
        conn.adapters.register_dumper(dict, JsonbDumper)
        statements = all_prepared()
        if statements:
            await conn.execute("; ".join(s.prepare_sql for s in statements))
        self._prepared[conn] = {s.name for s in statements}

    async def executable(self, conn: psycopg.AsyncConnection[Any], statement: Prepared,
                         params: Sequence[Any]) -> tuple[str, Sequence[Any]]:
        """``EXECUTE`` of ``statement`` on ``conn``: prepared at connect, or now if it was
        defined after the connection was opened."""
        names = self._prepared.setdefault(conn, set())
        if statement.name not in names:
            try:
                await conn.execute(statement.prepare_sql)
            except BaseException:
                # Cancelled (or failed) with the PREPARE in flight: whether the server holds
                # it is unknown. Close; the pool replaces a closed connection.
                await conn.close()
                raise
            names.add(statement.name)
        if len(params) != statement.count:
            raise ValueError(f"{statement.name}: {statement.count} parameters expected, "
                             f"{len(params)} given")
        return statement.execute, params

    # -- lifecycle -------------------------------------------------------------------------

    async def _open(self) -> None:
        async with self._opening:
            if not self._opened:
                await self._pool.open(wait=True, timeout=self._timeout)
                self._opened = True

    async def dispose(self) -> None:
        if self._opened:
            await self._kept.close()
            await self._pool.close()
            self._opened = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One of the pool's connections, with no transaction open (each statement
        autocommits and sees no tenant): for the transactions below, the health check and
        diagnostics. It waits for a free connection like any caller, up to ``pool_timeout``;
        then a direct connection attempt tells "busy" (:class:`PoolTimeout`) from
        "unreachable" (its :class:`psycopg.OperationalError`)."""
        if not self._opened:
            await self._open()
        conn = await self._kept.take()
        try:
            yield conn
        finally:
            await self._kept.give_back(conn)

    async def probe(self) -> None:
        """Raise the reason PostgreSQL cannot be reached, if it cannot (one direct attempt,
        outside the pool)."""
        probe = await psycopg.AsyncConnection.connect(self._conninfo, connect_timeout=2)
        await probe.close()

    @asynccontextmanager
    async def one_off(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection outside the pool, configured like the pool's, closed after use: for
        an audit entry whose own connection died while the pool may be full."""
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, prepare_threshold=None, connect_timeout=5)
        try:
            await self._configure(conn)
            yield conn
        finally:
            await conn.close()

    async def ping(self) -> None:
        """``SELECT 1`` (the health check); raises if the database is unreachable."""
        async with self.connection() as conn:
            await conn.execute("SELECT 1")

    async def read(self, statement: Prepared, params: Sequence[Any]) -> list[Row]:
        """One read-only statement outside any transaction, in one round trip: no tenant is
        set, so tenant tables read as empty; for the tables that belong to no tenant (OAuth
        clients)."""
        async with self.connection() as conn:
            sql, bound = await self.executable(conn, statement, params)
            cursor = AsyncClientCursor(conn)
            await cursor.execute(sql, bound)
            return _named(cursor, statement.name, await cursor.fetchall())

    async def scalar(self, sql: str) -> Any:
        """One value of a read-only statement outside any transaction (diagnostics)."""
        async with self.connection() as conn:
            cursor = await conn.execute(sql)
            row = await cursor.fetchone()
            return None if row is None else row[0]

    # -- transactions --------------------------------------------------------------------

    @asynccontextmanager
    async def _transaction(
        self, context: tuple[str, str], first: tuple[Prepared, Sequence[Any]] | None,
    ) -> AsyncIterator[tuple[Transaction, Row]]:
        if not self._opened:
            await self._open()
        conn = await self._kept.take()  # (as connection() does, one generator frame less)
        tx = Transaction(self, conn, context)
        try:
            cursor = AsyncClientCursor(conn)
            if first is None:
                await cursor.execute(_BEGIN, context)
                row = None
            else:
                sql, params = await self.executable(conn, *first)
                await cursor.execute(f"{_BEGIN}; {sql}", (*context, *params))
                cursor.nextset()  # past BEGIN's and set_config's results
                cursor.nextset()
                found = await cursor.fetchone()
                row = None if found is None else _named(cursor, first[0].name, [found])[0]
            yield tx, row
        finally:
            try:
                if tx.state is not State.DONE:
                    await _quietly_rolled_back(tx)
            finally:
                await self._kept.give_back(conn)

    @asynccontextmanager
    async def tenant(
        self, tenant_id: uuid.UUID, *, user_id: uuid.UUID | None = None,
        first: tuple[Prepared, Sequence[Any]] | None = None,
    ) -> AsyncIterator[Transaction]:
        """A transaction of one tenant (row-level security hides every other); with
        ``user_id``, that user's own memberships of other tenants are visible too. Commits
        only through :meth:`Transaction.finish`; left unfinished it rolls back."""
        async with self._transaction(_context(tenant_id, user_id), first) as (tx, _):
            yield tx

    def tenant_lookup(
        self, tenant_id: uuid.UUID, first: tuple[Prepared, Sequence[Any]],
    ) -> AbstractAsyncContextManager[tuple[Transaction, Row]]:
        """:meth:`tenant` whose first statement (the credential lookup) travels with
        ``BEGIN``; yields the transaction and that statement's first row, or None."""
        return self._transaction(_context(tenant_id, None), first)

    @asynccontextmanager
    async def system(self, *, user_id: uuid.UUID | None = None) -> AsyncIterator[Transaction]:
        """A transaction with no tenant (tenant tables read as empty), for work before a
        tenant is known; with ``user_id`` set, that user's own memberships are visible."""
        context = (_SYSTEM, str(user_id) if user_id else "")
        async with self._transaction(context, None) as (tx, _):
            yield tx


async def _check(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check, when it hands out one of its own idle connections (kept ones are
    checked by :class:`_Kept`): replaced if the ping fails."""
    await conn.execute("SELECT 1")


async def _quietly_rolled_back(tx: Transaction) -> None:
    try:
        await tx.rollback()
    except psycopg.Error:  # the connection is broken: the pool discards it
        log.debug("rollback failed", exc_info=True)


