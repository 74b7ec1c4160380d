"""Row-level security, proven with raw SQL against the real database as the runtime role."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from breeze_mcp.accounts import Tenant
from breeze_mcp.db import Database
from tests.support import next_user

pytestmark = pytest.mark.anyio

TENANT_TABLES = ["devices", "alerts", "device_notes", "memberships", "audit_log"]


@pytest.mark.req("SEED-RLS", "RLS-POLICIES")
async def test_select_without_where_returns_only_own_rows(
    db: Database, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    async with db.tenant_transaction(tenant_a.id, actor="test") as conn:
        rows = (await conn.execute(sa.text("SELECT * FROM devices"))).mappings().all()
        alerts = (await conn.execute(sa.text("SELECT tenant_id FROM alerts"))).all()
    assert len(rows) == 10
    assert {r["tenant_id"] for r in rows} == {tenant_a.id}
    assert alerts and {r.tenant_id for r in alerts} == {tenant_a.id}
    async with db.tenant_transaction(tenant_b.id, actor="test") as conn:
        ids_b = {r.id for r in await conn.execute(sa.text("SELECT id FROM devices"))}
    assert ids_b and ids_b.isdisjoint({r["id"] for r in rows})


@pytest.mark.req("RLS-NO-TENANT-EMPTY", "SEED-RLS")
@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_no_tenant_set_reads_nothing(
    db: Database, tenant_a: Tenant, table: str
) -> None:
    async with db.engine.begin() as conn:
        assert (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one() == 0
    async with db.system_transaction(actor="test") as conn:
        assert (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one() == 0


@pytest.mark.req("RLS-CROSS-WRITE")
async def test_insert_for_other_tenant_is_refused(
    db: Database, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.tenant_transaction(tenant_a.id, actor="test") as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO devices (tenant_id, hostname, os_family, os_version, "
                    "agent_version) VALUES (:t, 'evil', 'linux', 'x', '1')"
                ),
                {"t": tenant_b.id},
            )
    async with db.tenant_transaction(tenant_b.id, actor="test") as conn:
        n = (await conn.execute(
            sa.text("SELECT count(*) FROM devices WHERE hostname = 'evil'"))).scalar_one()
    assert n == 0


@pytest.mark.req("RLS-CROSS-WRITE")
async def test_update_and_delete_cannot_reach_other_tenant(
    db: Database, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    async with db.tenant_transaction(tenant_a.id, actor="test") as conn:
        updated = await conn.execute(
            sa.text("UPDATE devices SET site = 'pwned' WHERE tenant_id = :t"), {"t": tenant_b.id}
        )
        deleted = await conn.execute(
            sa.text("DELETE FROM alerts WHERE tenant_id = :t"), {"t": tenant_b.id}
        )
        assert updated.rowcount == 0 and deleted.rowcount == 0
    # Moving one's own row into another tenant is refused by the WITH CHECK clause.
    with pytest.raises(DBAPIError, match="row-level security"):
        async with db.tenant_transaction(tenant_a.id, actor="test") as conn:
            await conn.execute(
                sa.text("UPDATE device_notes SET tenant_id = :b"), {"b": tenant_b.id}
            )


@pytest.mark.req("RLS-FK-TENANT")
async def test_child_row_cannot_point_at_other_tenants_device(
    db: Database, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    async with db.tenant_transaction(tenant_b.id, actor="test") as conn:
        b_device = (await conn.execute(sa.text("SELECT id FROM devices LIMIT 1"))).scalar_one()
    with pytest.raises(DBAPIError, match="device_notes_device_fkey"):
        async with db.tenant_transaction(tenant_a.id, actor="test") as conn:
            await conn.execute(
                sa.text(
                    "INSERT INTO device_notes (tenant_id, device_id, author, body) "
                    "VALUES (:a, :d, 'x', 'y')"
                ),
                {"a": tenant_a.id, "d": b_device},
            )


@pytest.mark.req("RLS-TX-LOCAL")
async def test_pooled_connection_reused_after_tenant_transaction_sees_nothing(
    test_db, tenant_a: Tenant
) -> None:
    from breeze_mcp.db.engine import driver

    single = Database(test_db.runtime_url, pool_size=1)
    try:
        async with single.tenant_transaction(tenant_a.id, actor="test") as conn:
            raw = driver(conn)
            pid_a = raw.info.backend_pid
            assert ((await (await raw.execute("SELECT count(*) FROM devices")).fetchone())
                    or (0,))[0] > 0
        # The next user of the one connection (kept between transactions), with nothing of
        # its own set: no transaction, no tenant, no rows.
        seen = await next_user(single)
        assert seen.pid == pid_a, "the test must reuse the same pooled connection"
        assert seen.status == "IDLE"
        assert seen.tenant in ("", None)
        assert seen.devices == 0
    finally:
        await single.dispose()


@pytest.mark.req("RLS-TX-LOCAL")
async def test_a_connection_returned_inside_a_transaction_is_rolled_back(
    test_db, tenant_a: Tenant
) -> None:
    """Whatever leaves a transaction open on a pooled connection (a bug, a cancelled
    request), the pool rolls it back on return: the next user inherits neither the open
    transaction nor its tenant."""
    from breeze_mcp.db.engine import driver

    single = Database(test_db.runtime_url, pool_size=1)
    try:
        async with single.engine.connect() as conn:
            raw = driver(conn)
            await raw.execute("BEGIN")
            await raw.execute("SELECT set_config('breeze.tenant_id', %s, true)",
                              (str(tenant_a.id),))
            assert (await (await raw.execute("SELECT count(*) FROM devices")).fetchone()
                    or (0,))[0] > 0
            pid_a = raw.info.backend_pid
            # returned to the pool here, transaction still open
        async with single.engine.connect() as conn:
            raw = driver(conn)
            assert raw.info.backend_pid == pid_a, "the test must reuse the pooled connection"
            assert raw.info.transaction_status.name == "IDLE"
            count = (await (await raw.execute("SELECT count(*) FROM devices")).fetchone()
                     or (None,))[0]
        assert count == 0
    finally:
        await single.dispose()


@pytest.mark.req("RLS-TX-LOCAL")
@pytest.mark.parametrize("how", ["cancelled", "raised", "committed"])
async def test_a_tenant_transaction_always_gives_its_connection_back_clean(
    test_db, tenant_a: Tenant, how: str
) -> None:
    """However a tenant transaction ends (cancelled mid-statement, an exception, or a
    commit inside the block), its connection goes back to the pool at once (a pool of one
    serves the next caller) with no transaction and no tenant left on it."""
    import anyio

    from breeze_mcp.db.engine import driver

    single = Database(test_db.runtime_url, pool_size=1, pool_timeout=2)
    try:
        pids = []

        async def body() -> None:
            async with single.tenant_transaction(tenant_a.id, actor="test") as conn:
                raw = driver(conn)
                pids.append(raw.info.backend_pid)
                if how == "cancelled":
                    await raw.execute("SELECT pg_sleep(5)")
                elif how == "raised":
                    await raw.execute("SELECT count(*) FROM devices")
                    raise LookupError("boom")
                else:
                    await raw.execute("COMMIT")

        if how == "cancelled":
            with anyio.move_on_after(0.3):
                await body()
        elif how == "raised":
            with pytest.raises(LookupError):
                await body()
        else:
            await body()
        # The next user gets a connection at once from a pool of one (pool_timeout would
        # fail it otherwise), with no transaction or tenant carried over.
        seen = await next_user(single)
        assert seen.status == "IDLE"
        assert seen.tenant in ("", None)
        assert seen.devices == 0
        if how != "cancelled":  # a cancelled statement may cost the connection; others not
            assert seen.pid == pids[0]
    finally:
        await single.dispose()


@pytest.mark.req("RLS-TX-LOCAL")
async def test_tenant_and_actor_are_set_in_one_statement(db: Database) -> None:
    tenant_id = uuid.uuid4()
    user_id = uuid.uuid4()
    async with db.tenant_transaction(tenant_id, actor="api_key:k1", user_id=user_id) as conn:
        row = (await conn.execute(sa.text(
            "SELECT current_setting('breeze.tenant_id'), current_setting('breeze.actor'), "
            "current_setting('breeze.user_id')"))).one()
    assert tuple(row) == (str(tenant_id), "api_key:k1", str(user_id))


@pytest.mark.req("RLS-NO-TENANT-EMPTY")
async def test_tenant_transaction_refuses_missing_tenant(db: Database) -> None:
    with pytest.raises(TypeError, match="fail closed"):
        async with db.tenant_transaction(None, actor="test"):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError):
        async with db.tenant_transaction("not-a-uuid", actor="test"):  # type: ignore[arg-type]
            pass


@pytest.mark.req("RLS-POLICIES")
async def test_user_sees_own_memberships_without_tenant(
    db: Database, tenant_a: Tenant
) -> None:
    from breeze_mcp.accounts import create_user

    user = await create_user(db, tenant_a, email=f"m{uuid.uuid4().hex[:6]}@a.test",
                             password="correct-horse-battery", role="technician")
    async with db.system_transaction(actor="test", user_id=user.id) as conn:
        rows = (await conn.execute(sa.text("SELECT tenant_id, role FROM memberships"))).all()
    assert [(r.tenant_id, r.role) for r in rows] == [(tenant_a.id, "technician")]
    async with db.system_transaction(actor="test", user_id=uuid.uuid4()) as conn:
        assert (await conn.execute(sa.text("SELECT count(*) FROM memberships"))).scalar_one() == 0
