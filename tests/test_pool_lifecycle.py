"""The runtime role's connection pool (``Database``, over psycopg_pool): connections are kept
and reused between transactions, bounded, handed on only clean, pinged when they sat idle,
and replaced when dead."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg_pool import PoolTimeout

from breeze_mcp.db import Database
from breeze_mcp.db import engine as engine_module
from tests.support import ProvisionedDatabase, next_user, wait_for

pytestmark = pytest.mark.anyio


async def _pid(db: Database) -> int:
    """The backend of a transaction that worked (its statement ran on the server)."""
    async with db.system() as tx:
        return int((await tx.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one())


def _admin(admin_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(admin_url.replace("postgresql+psycopg://", "postgresql://", 1),
                           autocommit=True)


def _terminate(admin_url: str, pid: int) -> None:
    with _admin(admin_url) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def _alive(admin_url: str, pid: int) -> bool:
    with _admin(admin_url) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone()
        return bool(row and row[0])


@pytest.mark.req("DB-POOL-BOUNDED")
async def test_kept_connections_serve_transaction_after_transaction_until_dispose(
    test_db: ProvisionedDatabase, admin_url: str
) -> None:
    """Transactions one after another reuse the pool's kept connections (no backend per
    transaction, never more than the ceiling), and dispose closes every one."""
    db = Database(test_db.runtime_url, pool_size=3)
    try:
        pids = [await _pid(db) for _ in range(20)]
        assert len(set(pids)) <= 3
        assert all(_alive(admin_url, pid) for pid in set(pids))  # kept open between them
    finally:
        await db.dispose()
    wait_for(lambda: not any(_alive(admin_url, pid) for pid in set(pids)), timeout=10)


@pytest.mark.req("DB-POOL-BOUNDED")
async def test_one_caller_at_a_time_is_served_by_one_connection(
    test_db: ProvisionedDatabase
) -> None:
    """With one caller at a time, the pool never needs a second connection."""
    db = Database(test_db.runtime_url, pool_size=3)
    try:
        pids = {await _pid(db) for _ in range(20)}
        assert len(pids) == 1
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED")
async def test_no_more_than_pool_size_in_use_and_waiters_are_served(
    test_db: ProvisionedDatabase
) -> None:
    """Ten concurrent transactions through a pool of two: never more than two connections,
    every one served once a connection is released."""
    db = Database(test_db.runtime_url, pool_size=2, pool_timeout=10)
    in_use = peak = 0
    pids: set[int] = set()

    async def one() -> None:
        nonlocal in_use, peak
        async with db.tenant(uuid.uuid4()) as tx:
            in_use += 1
            peak = max(peak, in_use)
            pids.add(int((await tx.execute(sa.text(
                "SELECT pg_backend_pid() FROM pg_sleep(0.05)"))).scalar_one()))
            in_use -= 1

    try:
        await asyncio.gather(*[one() for _ in range(10)])
        assert peak == 2
        assert len(pids) == 2
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED")
async def test_a_caller_beyond_the_pool_waits_then_gets_the_pool_timeout_error(
    test_db: ProvisionedDatabase
) -> None:
    """A pool at its ceiling makes the next caller wait: served if a connection comes back in
    time, psycopg_pool.PoolTimeout after ``pool_timeout`` if none does."""
    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=0.5)
    try:
        async with db.system():
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                async with db.system():
                    pass
            assert time.monotonic() - started >= 0.45  # it waited

        async def hold_briefly() -> None:
            async with db.system():
                await asyncio.sleep(0.2)

        holder = asyncio.ensure_future(hold_briefly())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await _pid(db)  # waits for the holder, then is served
        assert time.monotonic() - started >= 0.1
        await holder
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
async def test_an_idle_connection_is_pinged_and_replaced_when_dead(
    test_db: ProvisionedDatabase, admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept connection whose backend went away while it sat idle (a restart, an idle
    timeout) is found dead by the ping before reuse, and a fresh one serves the call."""
    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=5)
    try:
        first = await _pid(db)
        _terminate(admin_url, first)
        monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.0)  # it has sat idle
        await asyncio.sleep(0.01)
        second = await _pid(db)
        assert second != first
        assert await _pid(db) == second  # and the fresh one is kept
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
async def test_a_recently_used_connection_found_dead_costs_one_call_and_is_replaced(
    test_db: ProvisionedDatabase, admin_url: str
) -> None:
    """A connection used moments ago is not pinged (no round trip per checkout under load):
    if it died meanwhile, the one call that finds out fails, the pool discards it, and the
    next transaction works on a fresh one."""
    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=5)
    try:
        first = await _pid(db)
        _terminate(admin_url, first)
        with pytest.raises(psycopg.OperationalError):
            await _pid(db)
        second = await _pid(db)
        assert second != first
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
async def test_a_connection_that_broke_in_use_is_not_kept(
    test_db: ProvisionedDatabase, admin_url: str
) -> None:
    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=5)
    try:
        with pytest.raises(psycopg.OperationalError):
            async with db.system() as tx:
                pid = tx.connection.info.backend_pid
                _terminate(admin_url, pid)
                await tx.execute(sa.text("SELECT 1"))
        assert await _pid(db) != pid  # the broken one went back to the pool and was replaced
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
async def test_a_call_cancelled_while_its_connection_is_pinged_loses_nothing(
    test_db: ProvisionedDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while its kept connection is pinged (idle too long): the connection goes
    back to the pool, and a pool of one still serves the next caller."""
    real_ping = engine_module._pinged
    slow = True

    async def slow_ping(conn: psycopg.AsyncConnection[Any]) -> bool:
        if slow:
            await asyncio.sleep(10)
        return await real_ping(conn)

    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=2)
    try:
        await _pid(db)  # now kept
        monkeypatch.setattr(engine_module, "_pinged", slow_ping)
        monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", -1.0)  # every kept one is idle
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_pid(db), 0.2)
        slow = False
        await _pid(db)  # the pool of one still serves
    finally:
        await db.dispose()


@pytest.mark.req("RLS-TX-LOCAL", "DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
@pytest.mark.parametrize("state", ["open", "failed"])
async def test_a_connection_returned_mid_transaction_hands_nothing_on(
    test_db: ProvisionedDatabase, state: str
) -> None:
    """Whatever leaves a transaction open on a connection (here: a raw BEGIN and a tenant
    set_config, never ended; or the same transaction after a failed statement), the next
    user of a pool of one gets the same connection with no transaction and no tenant."""
    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=2)
    tenant = str(uuid.uuid4())
    try:
        async with db.connection() as raw:
            pid = raw.info.backend_pid
            await raw.execute("BEGIN")
            await raw.execute("SELECT set_config('breeze.tenant_id', %s, true)", (tenant,))
            if state == "failed":
                with pytest.raises(psycopg.errors.DivisionByZero):
                    await raw.execute("SELECT 1 / 0")
            assert raw.info.transaction_status.name == (
                "INTRANS" if state == "open" else "INERROR")
        seen = await next_user(db)
        assert seen.pid == pid, "the test must reuse the pooled connection"
        assert seen.status == "IDLE"
        assert seen.tenant in ("", None)
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
async def test_after_one_dead_connection_every_kept_one_is_pinged(
    test_db: ProvisionedDatabase, admin_url: str
) -> None:
    """A server restart kills every kept connection; the first call to find one dead costs
    one failure, after which the others are pinged (and replaced) before use, however
    recently they ran."""
    db = Database(test_db.runtime_url, pool_size=3, pool_timeout=5)
    try:
        async def hold() -> int:
            async with db.system() as tx:
                return int((await tx.execute(sa.text(
                    "SELECT pg_backend_pid() FROM pg_sleep(0.1)"))).scalar_one())

        pids = set(await asyncio.gather(hold(), hold(), hold()))
        assert len(pids) == 3
        for pid in pids:
            _terminate(admin_url, pid)
        try:
            await _pid(db)
        except psycopg.OperationalError:
            pass  # the one call that finds out (if it was not pinged itself)
        else:
            pytest.fail("a dead connection served a call")
        fresh = {await _pid(db) for _ in range(3)}
        assert not fresh & pids
    finally:
        await db.dispose()
