"""The transaction helpers keep their connections open between transactions
(``breeze_mcp.db.engine._Keeper``): bounded, fair, clean, and replaced when dead."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

from breeze_mcp.db import Database
from breeze_mcp.db import engine as engine_module
from breeze_mcp.db.engine import driver
from tests.support import next_user

pytestmark = pytest.mark.anyio


async def _pid(db: Database) -> int:
    async with db.system_transaction(actor="test") as conn:
        return driver(conn).info.backend_pid


def _terminate(admin_url: str, pid: int) -> None:
    url = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)



def _queue_pool(db: Database) -> QueuePool:
    """The engine's pool, which is a fixed-size QueuePool (it counts checked-out ones)."""
    pool = db.engine.pool
    assert isinstance(pool, QueuePool)
    return pool

@pytest.mark.req("DB-POOL-BOUNDED")
async def test_the_same_connection_serves_transaction_after_transaction(test_db) -> None:
    db = Database(test_db.runtime_url, pool_size=3)
    pool = _queue_pool(db)  # dispose() replaces the engine's pool: keep this one
    try:
        pids = {await _pid(db) for _ in range(20)}
        assert len(pids) == 1
        assert pool.checkedout() == 1  # kept, counted against the pool
    finally:
        await db.dispose()
    assert pool.checkedout() == 0  # dispose gives the kept ones back


@pytest.mark.req("DB-POOL-BOUNDED")
async def test_no_more_than_pool_size_in_use_and_waiters_are_served(test_db) -> None:
    """Ten concurrent transactions through a pool of two: never more than two connections,
    every one served once a connection is released."""
    db = Database(test_db.runtime_url, pool_size=2, pool_timeout=10)
    in_use = peak = 0
    pids: set[int] = set()

    async def one() -> None:
        nonlocal in_use, peak
        async with db.tenant_transaction(uuid.uuid4(), actor="test") as conn:
            in_use += 1
            peak = max(peak, in_use)
            pids.add(driver(conn).info.backend_pid)
            await driver(conn).execute("SELECT pg_sleep(0.05)")
            in_use -= 1

    try:
        await asyncio.gather(*[one() for _ in range(10)])
        assert peak == 2
        assert len(pids) <= 2
        assert _queue_pool(db).checkedout() <= 2
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED")
async def test_a_caller_beyond_the_pool_gets_the_pool_timeout_error(test_db) -> None:
    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=0.3)
    try:
        async with db.system_transaction(actor="holder"):
            with pytest.raises(sa_exc.TimeoutError):
                async with db.system_transaction(actor="waiter"):
                    pass
        await _pid(db)  # the holder's connection is free again
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
async def test_a_kept_connection_that_died_idle_is_replaced(
    test_db, admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept connection whose backend went away while it sat idle (a restart, an idle
    timeout) is found dead by the ping before reuse, and a fresh one serves the call."""
    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=5)
    try:
        first = await _pid(db)
        _terminate(admin_url, first)
        monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.0)
        await asyncio.sleep(0.01)
        second = await _pid(db)
        assert second != first
        assert _queue_pool(db).checkedout() == 1
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
async def test_a_connection_that_broke_in_use_is_not_kept(test_db, admin_url: str) -> None:
    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=5)
    try:
        with pytest.raises(psycopg.OperationalError):
            async with db.system_transaction(actor="test") as conn:
                pid = driver(conn).info.backend_pid
                _terminate(admin_url, pid)
                await driver(conn).execute("SELECT 1")
        assert await _pid(db) != pid  # the broken one went back to the pool and was replaced
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
async def test_a_call_cancelled_while_its_kept_connection_is_pinged_loses_nothing(
    test_db, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=2)
    try:
        await _pid(db)  # one connection kept
        pinged = engine_module._pinged

        async def slow_ping(conn: object) -> bool:
            await asyncio.sleep(10)
            return True

        monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.0)
        monkeypatch.setattr(engine_module, "_pinged", slow_ping)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_pid(db), 0.2)
        assert _queue_pool(db).checkedout() == 0  # given back to the pool, not leaked
        monkeypatch.setattr(engine_module, "_pinged", pinged)
        await _pid(db)  # and the pool of one still serves
    finally:
        await db.dispose()


@pytest.mark.req("RLS-TX-LOCAL", "DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
async def test_a_connection_left_inside_a_transaction_is_never_kept(test_db) -> None:
    """Whatever leaves a transaction open on a connection (here: a raw BEGIN and a tenant
    set_config, never ended), the next user of a pool of one gets no transaction and no
    tenant."""
    db = Database(test_db.runtime_url, pool_size=1, pool_timeout=2)
    tenant = str(uuid.uuid4())
    try:
        async with db.connection() as conn:
            raw = driver(conn)
            await raw.execute("BEGIN")
            await raw.execute("SELECT set_config('breeze.tenant_id', %s, true)", (tenant,))
        seen = await next_user(db)
        assert seen.status == "IDLE"
        assert seen.tenant in ("", None)
    finally:
        await db.dispose()


@pytest.mark.req("DB-POOL-BOUNDED", "DB-KEPT-CLEAN")
async def test_after_one_dead_connection_every_kept_one_is_pinged(
    test_db, admin_url: str
) -> None:
    """A server restart kills every kept connection; the first call to find one dead costs
    one failure, after which the others are pinged (and replaced) before use, however
    recently they ran."""
    db = Database(test_db.runtime_url, pool_size=3, pool_timeout=5)
    try:
        async def hold() -> int:
            async with db.system_transaction(actor="test") as conn:
                await driver(conn).execute("SELECT pg_sleep(0.05)")
                return driver(conn).info.backend_pid

        pids = set(await asyncio.gather(hold(), hold(), hold()))
        assert len(pids) == 3
        for pid in pids:
            _terminate(admin_url, pid)
        with pytest.raises(psycopg.OperationalError):  # the one that finds out
            await _pid(db)
        fresh = {await _pid(db) for _ in range(3)}
        assert not fresh & pids
    finally:
        await db.dispose()
