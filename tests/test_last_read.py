"""A read-only call's final read carries the call's audit entry and COMMIT (one round trip).

Called through the real pipeline (``call_tool``) against the real database, with the real
``list_devices`` and tools made for the purpose: a read-only tool returns its last statement
(:class:`~breeze_mcp.tools.registry.FinalRead`) and the pipeline finishes the transaction with
``final read; INSERT entry; COMMIT``. The entry is committed as a success only when the read
succeeded, and its duration covers the read; a failure anywhere is one error entry, with a
writing tool's work undone; a connection lost mid-call still gets its entry. The hot
statements sent in such messages are prepared once per connection and survive rollbacks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from breeze_mcp.auth import api_keys
from breeze_mcp.auth.accounts import Tenant
from breeze_mcp.auth.principal import Principal, RequestContext
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row, State
from breeze_mcp.db.statements import all_prepared, prepared
from breeze_mcp.pipeline import CallResult, call_tool
from breeze_mcp.services import build_services
from breeze_mcp.tools.devices import LIST_DEVICES
from breeze_mcp.tools.registry import FinalRead, Registry, ToolContext, ToolError, ToolSpec
from tests.support import ProvisionedDatabase, owner_api_key

pytestmark = pytest.mark.anyio


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _devices(rows: list[Row]) -> Mapping[str, Any]:
    return {"devices": rows[0].devices}


_COUNT = prepared("SELECT count(*) AS devices FROM devices")
_FAILING = prepared("SELECT 1 / (count(*) - count(*)) AS devices FROM devices")
_COUNT_WRITTEN = prepared("SELECT count(*) AS devices FROM devices WHERE site = 'written'")
_KILL_SELF = prepared("SELECT pg_terminate_backend(pg_backend_pid()) AS devices")
_WRITE = sa.text("UPDATE devices SET site = 'written'")


async def failing_read(ctx: ToolContext, args: NoArgs) -> FinalRead:
    return FinalRead(_FAILING, (), _devices)


async def tool_error_before_read(ctx: ToolContext, args: NoArgs) -> FinalRead:
    raise ToolError("not_found", "nothing here")


async def writes_then_reads(ctx: ToolContext, args: NoArgs) -> FinalRead:
    await ctx.tx.execute(_WRITE)
    return FinalRead(_COUNT_WRITTEN, (), _devices)


async def writes_then_tool_error(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    await ctx.tx.execute(_WRITE)
    raise ToolError("invalid_state", "decided after writing")


async def writes_then_fails(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    await ctx.tx.execute(_WRITE)
    await ctx.tx.execute(sa.text("SELECT 1 / 0"))
    return {}


async def writes_then_failing_read(ctx: ToolContext, args: NoArgs) -> FinalRead:
    await ctx.tx.execute(_WRITE)
    return FinalRead(_FAILING, (), _devices)


async def killed_mid_tool(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    await ctx.tx.execute(_KILL_SELF)
    return {}


async def writes_then_killed(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    await ctx.tx.execute(_WRITE)
    await ctx.tx.execute(_KILL_SELF)
    return {}


async def killed_in_final_read(ctx: ToolContext, args: NoArgs) -> FinalRead:
    return FinalRead(_KILL_SELF, (), _devices)


def _spec(name: str, handler: Any, tier: int = 1) -> ToolSpec:
    return ToolSpec(name=name, description=f"test tool {name}", input_model=NoArgs,
                    base_tier=tier, handler=handler)


REGISTRY = Registry([
    LIST_DEVICES,
    _spec("failing_read", failing_read),
    _spec("tool_error_before_read", tool_error_before_read),
    _spec("writes_then_reads", writes_then_reads, tier=2),
    _spec("writes_then_tool_error", writes_then_tool_error, tier=2),
    _spec("writes_then_fails", writes_then_fails, tier=2),
    _spec("writes_then_failing_read", writes_then_failing_read, tier=2),
    _spec("killed_mid_tool", killed_mid_tool),
    _spec("writes_then_killed", writes_then_killed, tier=2),
    _spec("killed_in_final_read", killed_in_final_read),
])


def _principal(tenant: Tenant) -> Principal:
    return Principal(tenant_id=tenant.id, actor_type="api_key", actor_id=str(uuid.uuid4()),
                     auth_path="api_key", credential_id="test",
                     scopes=frozenset({"ai:read", "ai:write"}))


async def _call(settings: Settings, db: Database, tenant: Tenant, name: str,
                arguments: Mapping[str, Any] | None = None) -> tuple[CallResult, list[Row]]:
    """The call's result and its audit entries (read back in a transaction of its own)."""
    services = build_services(settings, db, REGISTRY)
    request_id = uuid.uuid4().hex
    outcome = await call_tool(services, _principal(tenant), name, arguments or {},
                              RequestContext(request_id=request_id, client_ip="192.0.2.7"))
    async with db.tenant(tenant.id) as tx:
        rows = (await tx.execute(sa.text(
            "SELECT outcome, decision, error, duration_ms, host(client_ip) AS ip"
            " FROM audit_log WHERE request_id = :r ORDER BY occurred_at, id")
            .bindparams(r=request_id))).all()
    return outcome, rows


async def _written(db: Database, tenant: Tenant) -> int:
    """How many of the tenant's devices a writing tool's UPDATE left committed."""
    async with db.tenant(tenant.id) as tx:
        return int((await tx.execute(sa.text(
            "SELECT count(*) FROM devices WHERE site = 'written'"))).scalar_one())


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.mark.req("AUDIT-LAST-READ", "AUDIT-ONE-WRITER")
async def test_list_devices_commits_one_success_entry_whose_duration_covers_the_read(
    test_db: ProvisionedDatabase, settings: Settings, db: Database, tenant_a: Tenant
) -> None:
    """The devices table is locked by another session while the call runs: its final read
    waits for the lock, and the entry, measured before the message was sent plus the read's
    time in the database, covers that wait."""
    async with await psycopg.AsyncConnection.connect(_conninfo(test_db.owner_url)) as locker:
        await locker.execute("LOCK TABLE devices IN ACCESS EXCLUSIVE MODE")
        call = asyncio.ensure_future(_call(settings, db, tenant_a, "list_devices",
                                           {"limit": 3}))
        await asyncio.sleep(0.5)
        assert not call.done()  # the read is waiting for the lock
        await locker.rollback()
    outcome, rows = await call
    assert outcome.status == "ok" and outcome.result is not None
    assert outcome.result["total"] == 10 and len(outcome.result["devices"]) == 3
    assert [(r.outcome, r.decision, r.error, r.ip) for r in rows] == [
        ("success", "allowed", None, "192.0.2.7")]
    assert 300 <= rows[0].duration_ms < 60_000  # the call was held ~500 ms
    assert rows[0].duration_ms == round(rows[0].duration_ms, 3)  # ms to the microsecond


@pytest.mark.req("AUDIT-LAST-READ")
async def test_a_failed_final_read_commits_no_success(
    settings: Settings, db: Database, tenant_a: Tenant
) -> None:
    outcome, rows = await _call(settings, db, tenant_a, "failing_read")
    assert outcome.status == "internal_error"
    assert [(r.outcome, r.decision, r.error) for r in rows] == [
        ("error", "allowed", "internal error")]


@pytest.mark.req("AUDIT-LAST-READ")
async def test_a_tool_error_before_the_final_read_is_one_entry(
    settings: Settings, db: Database, tenant_a: Tenant
) -> None:
    outcome, rows = await _call(settings, db, tenant_a, "tool_error_before_read")
    assert outcome.status == "tool_error" and outcome.error_code == "not_found"
    assert [(r.outcome, r.error) for r in rows] == [("error", "not_found: nothing here")]


@pytest.mark.req("AUDIT-LAST-READ", "AUDIT-ONE-WRITER", "DB-ONE-COMMIT")
async def test_a_tool_that_writes_can_end_with_a_final_read(
    settings: Settings, db: Database, tenant_a: Tenant
) -> None:
    """Its write, its final read (which sees the write) and its entry commit together."""
    outcome, rows = await _call(settings, db, tenant_a, "writes_then_reads")
    assert outcome.status == "ok" and outcome.result == {"devices": 10}
    assert [r.outcome for r in rows] == ["success"]
    assert await _written(db, tenant_a) == 10


@pytest.mark.req("AUDIT-LAST-READ", "AUDIT-ONE-WRITER")
@pytest.mark.parametrize(("name", "status", "error"), [
    ("writes_then_tool_error", "tool_error", "invalid_state: decided after writing"),
    ("writes_then_fails", "internal_error", "internal error"),
    ("writes_then_failing_read", "internal_error", "internal error"),
])
async def test_a_failed_writing_tool_is_undone_and_one_error_entry(
    settings: Settings, db: Database, tenant_a: Tenant, name: str, status: str, error: str
) -> None:
    outcome, rows = await _call(settings, db, tenant_a, name)
    assert outcome.status == status
    assert [(r.outcome, r.decision, r.error) for r in rows] == [("error", "allowed", error)]
    assert await _written(db, tenant_a) == 0


@pytest.mark.req("AUDIT-LAST-READ", "AUDIT-ONE-WRITER", "DB-POOL-BOUNDED")
@pytest.mark.parametrize("name", ["killed_mid_tool", "writes_then_killed",
                                  "killed_in_final_read"])
async def test_a_connection_killed_mid_call_still_gets_its_entry(
    settings: Settings, db: Database, tenant_a: Tenant, name: str
) -> None:
    """The call's backend is terminated under it (here by the tool itself): the call is an
    internal error, its work is gone with the connection, and its one entry is written on
    another connection; the pool then serves the next call."""
    outcome, rows = await _call(settings, db, tenant_a, name)
    assert outcome.status == "internal_error"
    assert [(r.outcome, r.decision, r.error) for r in rows] == [
        ("error", "allowed", "internal error")]
    assert await _written(db, tenant_a) == 0
    again, rows = await _call(settings, db, tenant_a, "list_devices")
    assert again.status == "ok" and [r.outcome for r in rows] == ["success"]


@pytest.mark.req("AUDIT-LAST-READ", "DB-POOL-BOUNDED")
@pytest.mark.parametrize("name", ["failing_read", "writes_then_fails", "writes_then_tool_error",
                                  "writes_then_failing_read"])
async def test_failure_entries_need_no_second_connection(
    test_db: ProvisionedDatabase, settings: Settings, tenant_a: Tenant, name: str
) -> None:
    """The failure's entry is written on the call's own (live) connection: with every
    pooled connection held by failing calls it is neither lost nor waited for."""
    single = Database(test_db.runtime_url, pool_size=1, pool_timeout=2)
    try:
        started = time.monotonic()
        outcome, rows = await _call(settings, single, tenant_a, name)
        assert time.monotonic() - started < 2  # never waited for the pool
        assert outcome.status in ("internal_error", "tool_error")
        assert [r.outcome for r in rows] == ["error"]
        # and two at once through that one connection
        both = await asyncio.gather(*[_call(settings, single, tenant_a, name) for _ in "ab"])
        assert [[r.outcome for r in rows] for _, rows in both] == [["error"], ["error"]]
    finally:
        await single.dispose()


@pytest.mark.req("DB-ONE-COMMIT", "AUDIT-ONE-WRITER")
async def test_a_transaction_commits_only_by_finishing_with_its_entry(
    db: Database, tenant_a: Tenant
) -> None:
    """Left unfinished, a transaction's work is rolled back. Finished, its work, final read
    and entry commit together; if the final read fails nothing of it commits, and finishing
    the aborted transaction again commits the new entry alone."""
    from breeze_mcp.audit import AuditEntry

    def entry(request_id: str) -> AuditEntry:
        return AuditEntry(actor_type="system", auth_path="system", action="test.commit",
                          decision="allowed", outcome="success", tenant_id=tenant_a.id,
                          actor_id="system:test", request_id=request_id)

    async def entries(request_id: str) -> int:
        async with db.tenant(tenant_a.id) as tx:
            return int((await tx.execute(sa.text(
                "SELECT count(*) FROM audit_log WHERE request_id = :r").bindparams(
                    r=request_id))).scalar_one())

    async with db.tenant(tenant_a.id) as tx:
        await tx.execute(_WRITE)
    assert await _written(db, tenant_a) == 0  # unfinished: rolled back

    failed, alone = uuid.uuid4().hex, uuid.uuid4().hex
    async with db.tenant(tenant_a.id) as tx:
        await tx.execute(_WRITE)
        with pytest.raises(psycopg.errors.DivisionByZero):
            await tx.finish(entry(failed), final=(_FAILING, ()))
        aborted = tx.state
        await tx.finish(entry(alone))
        assert (aborted, tx.state) == (State.ABORTED, State.DONE)
    assert (await _written(db, tenant_a), await entries(failed), await entries(alone)) == (
        0, 0, 1)

    done = uuid.uuid4().hex
    async with db.tenant(tenant_a.id) as tx:
        await tx.execute(_WRITE)
        rows = await tx.finish(entry(done), final=(_COUNT_WRITTEN, ()))
    assert [row.devices for row in rows] == [10]  # the final read saw the work
    assert (await _written(db, tenant_a), await entries(done)) == (10, 1)


@pytest.mark.req("AUDIT-LAST-READ", "AUDIT-ONE-WRITER", "DB-POOL-BOUNDED")
@pytest.mark.parametrize("name", ["killed_mid_tool", "writes_then_killed",
                                  "killed_in_final_read"])
async def test_a_killed_connections_entry_needs_no_free_connection(
    test_db: ProvisionedDatabase, settings: Settings, tenant_a: Tenant, name: str
) -> None:
    """Every pooled connection is held by calls whose backends die at once (a server
    restart): each call still gets its one entry, without waiting for the pool."""
    single = Database(test_db.runtime_url, pool_size=1, pool_timeout=1)
    try:
        started = time.monotonic()
        outcome, rows = await _call(settings, single, tenant_a, name)
        assert time.monotonic() - started < 1  # never waited for the pool
        assert outcome.status == "internal_error"
        assert [(r.outcome, r.error) for r in rows] == [("error", "internal error")]
    finally:
        await single.dispose()


_PREPARED = sa.text("SELECT name, prepare_time FROM pg_prepared_statements ORDER BY name")


@pytest.mark.req("DB-PREPARED-HOT", "DB-PREPARED-AT-CONNECT")
async def test_hot_statements_are_prepared_once_and_survive_rollbacks(
    test_db: ProvisionedDatabase, db: Database, tenant_a: Tenant
) -> None:
    """Every hot statement is prepared when the connection opens, once: rollbacks (here:
    an error in the block, and transactions left unfinished) keep them, and psycopg
    prepares nothing of its own however often a statement repeats."""
    _, key = await owner_api_key(db, tenant_a)
    statement = api_keys.lookup(key, tenant_a.id)
    single = Database(test_db.runtime_url, pool_size=1)
    try:
        pids = set()
        seen = []
        for attempt in range(3):
            with pytest.raises(RuntimeError) if attempt == 1 else nullcontext():
                async with single.tenant_lookup(tenant_a.id, statement) as (tx, row):
                    assert row is not None and row.id is not None
                    pids.add(tx.connection.info.backend_pid)
                    for _ in range(6):  # what psycopg would prepare by itself (then drop)
                        await tx.execute(sa.text("SELECT count(*) FROM devices"))
                    seen.append({r.name: r.prepare_time for r in await tx.execute(_PREPARED)})
                    if attempt == 1:
                        raise RuntimeError("roll back")
        assert len(pids) == 1  # one connection throughout
        assert seen[0] == seen[1] == seen[2]  # the same statements, never prepared again
        names = set(seen[0])
        assert all(name.startswith("breeze_") for name in names)  # none of psycopg's own
        assert {s.name for s in all_prepared()} <= names
        assert {statement[0].name, _COUNT.name} <= names
    finally:
        await single.dispose()


@pytest.mark.req("DB-PREPARED-HOT", "DB-PREPARED-AT-CONNECT")
async def test_a_prepare_cancelled_in_flight_closes_its_connection(
    test_db: ProvisionedDatabase, db: Database, tenant_a: Tenant,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A statement declared after a connection opened is prepared on it at first use. Cancelled
    after the server prepared it but before the reply was read, the connection's bookkeeping
    cannot be trusted, so it is closed and replaced, and the next call prepares afresh."""
    single = Database(test_db.runtime_url, pool_size=1)
    real_execute = psycopg.AsyncConnection.execute

    async def prepared_then_cancelled(self: Any, query: Any, *args: Any, **kw: Any) -> Any:
        result = await real_execute(self, query, *args, **kw)
        if str(query).startswith("PREPARE "):
            raise asyncio.CancelledError  # as if cancelled just after the server answered
        return result

    try:
        async with single.connection() as raw:  # the pool's one connection is open
            first = raw.info.backend_pid
        late = prepared(f"SELECT %s::text AS tag, '{uuid.uuid4().hex}' AS salt")
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", prepared_then_cancelled)
        with pytest.raises(asyncio.CancelledError):
            async with single.tenant_lookup(tenant_a.id, (late, ("x",))):
                pass
        monkeypatch.undo()
        async with single.tenant_lookup(tenant_a.id, (late, ("y",))) as (tx, row):
            assert row is not None and row.tag == "y"
            assert tx.connection.info.backend_pid != first  # a fresh connection
    finally:
        await single.dispose()
