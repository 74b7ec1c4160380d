"""A read-only call's last read carries the call's audit entry and COMMIT (one round trip).

Called through the real pipeline (``call_tool``) against the real database with tools made
for the purpose: the entry is committed only when the read succeeded, its duration covers
the read, and a failure after the read adds an error entry. The hot statements sent in such
messages are prepared once per connection and survive rollbacks.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict

from breeze_mcp.accounts import Tenant
from breeze_mcp.auth import api_keys
from breeze_mcp.auth.principal import Principal, RequestContext
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import driver
from breeze_mcp.pipeline import call_tool
from breeze_mcp.services import build_services
from breeze_mcp.tools.registry import Registry, ToolContext, ToolError, ToolSpec
from tests.support import owner_api_key

pytestmark = pytest.mark.anyio


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


async def slow_read(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    rows = await ctx.last_read("SELECT pg_sleep(%s), count(*) FROM devices", (0.25,))
    return {"devices": rows[0][1]}


async def failing_read(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    await ctx.last_read("SELECT 1 / (count(*) - count(*)) FROM devices", ())
    return {}


async def fails_after_read(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    await ctx.last_read("SELECT count(*) FROM devices", ())
    raise RuntimeError("a bug after the last read")


async def tool_error_after_read(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    await ctx.last_read("SELECT count(*) FROM devices", ())
    raise ToolError("not_found", "decided too late")


async def tool_error_before_read(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    raise ToolError("not_found", "nothing here")


async def reads_twice(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    await ctx.last_read("SELECT count(*) FROM devices", ())
    rows = await ctx.last_read("SELECT count(*) FROM devices", ())  # no tenant any more
    return {"devices": rows[0][0]}


async def writes_then_reads(ctx: ToolContext, args: NoArgs) -> Mapping[str, Any]:
    # A Tier 2 tool: last_read is a plain query; the entry is written after the handler.
    rows = await ctx.last_read("SELECT count(*) FROM devices", ())
    return {"devices": rows[0][0]}


def _spec(name: str, handler: Any, tier: int = 1) -> ToolSpec:
    return ToolSpec(name=name, description=f"test tool {name}", input_model=NoArgs,
                    base_tier=tier, handler=handler)


REGISTRY = Registry([
    _spec("slow_read", slow_read),
    _spec("failing_read", failing_read),
    _spec("fails_after_read", fails_after_read),
    _spec("tool_error_after_read", tool_error_after_read),
    _spec("tool_error_before_read", tool_error_before_read),
    _spec("reads_twice", reads_twice),
    _spec("writes_then_reads", writes_then_reads, tier=2),
])


def _principal(tenant: Tenant) -> Principal:
    return Principal(tenant_id=tenant.id, actor_type="api_key", actor_id=str(uuid.uuid4()),
                     auth_path="api_key", credential_id="test",
                     scopes=frozenset({"ai:read", "ai:write"}))


async def _call(settings: Settings, db: Database, tenant: Tenant,
                name: str) -> tuple[Any, list[sa.Row[Any]]]:
    services = build_services(settings, db, REGISTRY)
    request_id = uuid.uuid4().hex
    outcome = await call_tool(services, _principal(tenant), name, {},
                              RequestContext(request_id=request_id, client_ip="192.0.2.7"))
    async with db.tenant_transaction(tenant.id, actor="test") as conn:
        rows = list(await conn.execute(sa.text(
            "SELECT outcome, decision, error, duration_ms, host(client_ip) AS ip"
            " FROM audit_log WHERE request_id = :r ORDER BY occurred_at, id"),
            {"r": request_id}))
    return outcome, rows


@pytest.mark.req("AUDIT-LAST-READ", "AUDIT-ONE-WRITER")
async def test_the_entry_commits_with_the_read_and_its_duration_covers_it(
    settings: Settings, db: Database, tenant_a: Tenant
) -> None:
    outcome, rows = await _call(settings, db, tenant_a, "slow_read")
    assert outcome.status == "ok" and outcome.result["devices"] > 0
    assert [(r.outcome, r.decision, r.ip) for r in rows] == [("success", "allowed", "192.0.2.7")]
    # measured before the message was sent, plus the read's time in the database
    assert 250 <= rows[0].duration_ms < 60_000
    assert rows[0].duration_ms == round(rows[0].duration_ms, 3)  # ms to the microsecond


@pytest.mark.req("AUDIT-LAST-READ")
async def test_a_failed_last_read_commits_no_success(
    settings: Settings, db: Database, tenant_a: Tenant
) -> None:
    outcome, rows = await _call(settings, db, tenant_a, "failing_read")
    assert outcome.status == "internal_error"
    assert [(r.outcome, r.error) for r in rows] == [("error", "internal error")]


@pytest.mark.req("AUDIT-LAST-READ")
@pytest.mark.parametrize("name", ["fails_after_read", "tool_error_after_read", "reads_twice"])
async def test_a_failure_after_the_last_read_adds_an_error_entry(
    settings: Settings, db: Database, tenant_a: Tenant, name: str
) -> None:
    outcome, rows = await _call(settings, db, tenant_a, name)
    assert outcome.status == "internal_error"
    assert [(r.outcome, r.error) for r in rows] == [
        ("success", None), ("error", "internal error after the last read")]


@pytest.mark.req("AUDIT-LAST-READ")
async def test_tool_errors_before_the_last_read_are_one_entry(
    settings: Settings, db: Database, tenant_a: Tenant
) -> None:
    outcome, rows = await _call(settings, db, tenant_a, "tool_error_before_read")
    assert outcome.status == "tool_error" and outcome.error_code == "not_found"
    assert [(r.outcome, r.error) for r in rows] == [("error", "not_found: nothing here")]


@pytest.mark.req("AUDIT-LAST-READ")
async def test_a_tool_that_can_write_gets_a_plain_last_read(
    settings: Settings, db: Database, tenant_a: Tenant
) -> None:
    outcome, rows = await _call(settings, db, tenant_a, "writes_then_reads")
    assert outcome.status == "ok" and outcome.result["devices"] > 0
    assert [r.outcome for r in rows] == ["success"]


@pytest.mark.req("DB-PREPARED-HOT")
async def test_the_lookup_is_prepared_once_and_survives_rollbacks(
    test_db: Any, db: Database, tenant_a: Tenant
) -> None:
    _, key = await owner_api_key(db, tenant_a)
    statement = api_keys.lookup(key, tenant_a.id)
    single = Database(test_db.runtime_url, pool_size=1)
    try:
        pids = set()
        for attempt in range(3):
            with pytest.raises(RuntimeError) if attempt == 1 else nullcontext():
                async with single.tenant_lookup(tenant_a.id, actor="system:auth",
                                                first=statement) as (conn, row):
                    assert row is not None and row[0] is not None
                    pids.add(driver(conn).info.backend_pid)
                    for _ in range(6):  # what psycopg would prepare by itself (then drop)
                        await driver(conn).execute("SELECT count(*) FROM devices")
                    # a rollback (here: an error in the block) keeps what was prepared
                    if attempt == 1:
                        raise RuntimeError("roll back")
        assert len(pids) == 1  # one connection throughout
        async with single.tenant_transaction(tenant_a.id, actor="test") as conn:
            prepared = list(await conn.execute(sa.text(
                "SELECT name, statement FROM pg_prepared_statements WHERE name LIKE 'breeze_%'")))
        assert len(prepared) == 1 and "FROM api_keys k" in prepared[0].statement
    finally:
        await single.dispose()


@pytest.mark.req("AUDIT-LAST-READ", "DB-POOL-BOUNDED")
@pytest.mark.parametrize(("name", "outcomes"), [
    ("failing_read", ["error"]),
    ("fails_after_read", ["success", "error"]),
])
async def test_failure_entries_need_no_second_connection(
    test_db: Any, settings: Settings, tenant_a: Tenant, name: str, outcomes: list[str]
) -> None:
    """The failure's entry is written on the call's own connection: with every pooled
    connection held by failing calls it is neither lost nor waited for."""
    import asyncio
    import time

    single = Database(test_db.runtime_url, pool_size=1, pool_timeout=2)
    try:
        started = time.monotonic()
        outcome, rows = await _call(settings, single, tenant_a, name)
        assert time.monotonic() - started < 2  # never waited for the pool
        assert outcome.status == "internal_error"
        assert [r.outcome for r in rows] == outcomes
        # and two at once through that one connection
        both = await asyncio.gather(*[_call(settings, single, tenant_a, name) for _ in "ab"])
        assert [[r.outcome for r in rows] for _, rows in both] == [outcomes, outcomes]
    finally:
        await single.dispose()


@pytest.mark.req("DB-PREPARED-HOT")
async def test_a_prepare_cancelled_in_flight_closes_its_connection(
    test_db: Any, db: Database, tenant_a: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled after the server prepared the statement but before the reply was read: the
    connection's bookkeeping cannot be trusted, so it is closed and replaced, and the next
    call prepares afresh."""
    import asyncio

    _, key = await owner_api_key(db, tenant_a)
    statement = api_keys.lookup(key, tenant_a.id)
    single = Database(test_db.runtime_url, pool_size=1)
    real_execute = psycopg.AsyncConnection.execute

    async def prepared_then_cancelled(self: Any, query: Any, *args: Any, **kw: Any) -> Any:
        result = await real_execute(self, query, *args, **kw)
        if str(query).startswith("PREPARE "):
            raise asyncio.CancelledError  # as if cancelled just after the server answered
        return result

    try:
        monkeypatch.setattr(psycopg.AsyncConnection, "execute", prepared_then_cancelled)
        with pytest.raises(asyncio.CancelledError):
            async with single.tenant_lookup(tenant_a.id, actor="system:auth",
                                            first=statement):
                pass
        monkeypatch.undo()
        async with single.tenant_lookup(tenant_a.id, actor="system:auth",
                                        first=statement) as (_conn, row):
            assert row is not None and row[0] is not None
    finally:
        await single.dispose()
