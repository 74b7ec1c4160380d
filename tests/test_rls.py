"""Row-level security, proven with raw SQL against the real database as the runtime role."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import sqlalchemy as sa

from breeze_mcp.auth.accounts import Tenant
from breeze_mcp.db import Database
from breeze_mcp.db.statements import prepared
from tests.support import ProvisionedDatabase, next_user, owner_api_key

pytestmark = pytest.mark.anyio

TENANT_TABLES = ["devices", "alerts", "device_notes", "memberships", "audit_log", "audit_chain"]


@pytest.mark.req("SEED-RLS", "RLS-POLICIES")
async def test_select_without_where_returns_only_own_rows(
    db: Database, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    async with db.tenant(tenant_a.id) as tx:
        rows = (await tx.execute(sa.text("SELECT * FROM devices"))).all()
        alerts = (await tx.execute(sa.text("SELECT tenant_id FROM alerts"))).all()
    assert len(rows) == 10
    assert {r.tenant_id for r in rows} == {tenant_a.id}
    assert alerts and {r.tenant_id for r in alerts} == {tenant_a.id}
    async with db.tenant(tenant_b.id) as tx:
        ids_b = {r.id for r in await tx.execute(sa.text("SELECT id FROM devices"))}
    assert ids_b and ids_b.isdisjoint({r.id for r in rows})


@pytest.mark.req("RLS-NO-TENANT-EMPTY", "SEED-RLS")
@pytest.mark.parametrize("table", TENANT_TABLES)
async def test_no_tenant_set_reads_nothing(
    db: Database, tenant_a: Tenant, table: str
) -> None:
    async with db.connection() as raw:  # no transaction, nothing set
        assert await (await raw.execute(f"SELECT count(*) FROM {table}")).fetchone() == (0,)
    async with db.system() as tx:
        assert (await tx.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one() == 0


@pytest.mark.req("RLS-CROSS-WRITE")
async def test_insert_for_other_tenant_is_refused(
    db: Database, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        async with db.tenant(tenant_a.id) as tx:
            await tx.execute(
                sa.text(
                    "INSERT INTO devices (tenant_id, hostname, os_family, os_version, "
                    "agent_version) VALUES (:t, 'evil', 'linux', 'x', '1')"
                ).bindparams(t=tenant_b.id),
            )
    async with db.tenant(tenant_b.id) as tx:
        n = (await tx.execute(
            sa.text("SELECT count(*) FROM devices WHERE hostname = 'evil'"))).scalar_one()
    assert n == 0


@pytest.mark.req("RLS-CROSS-WRITE")
async def test_update_and_delete_cannot_reach_other_tenant(
    db: Database, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    async with db.tenant(tenant_a.id) as tx:
        updated = await tx.execute(
            sa.text("UPDATE devices SET site = 'pwned' WHERE tenant_id = :t")
            .bindparams(t=tenant_b.id)
        )
        deleted = await tx.execute(
            sa.text("DELETE FROM alerts WHERE tenant_id = :t").bindparams(t=tenant_b.id)
        )
        assert updated.rowcount == 0 and deleted.rowcount == 0
        # the same statements do reach the tenant's own rows
        own = await tx.execute(
            sa.text("UPDATE devices SET site = 'mine' WHERE tenant_id = :t")
            .bindparams(t=tenant_a.id)
        )
        assert own.rowcount == 10
    # Moving one's own row into another tenant is refused by the WITH CHECK clause.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        async with db.tenant(tenant_a.id) as tx:
            await tx.execute(
                sa.text("UPDATE device_notes SET tenant_id = :b").bindparams(b=tenant_b.id)
            )


@pytest.mark.req("RLS-FK-TENANT")
async def test_child_row_cannot_point_at_other_tenants_device(
    db: Database, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    async with db.tenant(tenant_b.id) as tx:
        b_device = (await tx.execute(sa.text("SELECT id FROM devices LIMIT 1"))).scalar_one()
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="device_notes_device_fkey"):
        async with db.tenant(tenant_a.id) as tx:
            await tx.execute(
                sa.text(
                    "INSERT INTO device_notes (tenant_id, device_id, author, body) "
                    "VALUES (:a, :d, 'x', 'y')"
                ).bindparams(a=tenant_a.id, d=b_device),
            )


@pytest.mark.req("RLS-TX-LOCAL")
async def test_pooled_connection_reused_after_tenant_transaction_sees_nothing(
    test_db: ProvisionedDatabase, tenant_a: Tenant
) -> None:
    single = Database(test_db.runtime_url, pool_size=1)
    try:
        async with single.tenant(tenant_a.id) as tx:
            pid_a = tx.connection.info.backend_pid
            assert (await tx.execute(sa.text("SELECT count(*) FROM devices"))).scalar_one() > 0
            await tx.finish(None)  # committed, not merely rolled back
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
    test_db: ProvisionedDatabase, tenant_a: Tenant
) -> None:
    """Whatever leaves a transaction open on a pooled connection (a bug, a cancelled
    request), the pool rolls it back on return: the next user inherits neither the open
    transaction nor its tenant."""
    single = Database(test_db.runtime_url, pool_size=1)
    try:
        async with single.connection() as raw:
            await raw.execute("BEGIN")
            await raw.execute("SELECT set_config('breeze.tenant_id', %s, true)",
                              (str(tenant_a.id),))
            assert (await (await raw.execute("SELECT count(*) FROM devices")).fetchone()
                    or (0,))[0] > 0
            pid_a = raw.info.backend_pid
            # returned to the pool here, transaction still open
        seen = await next_user(single)
        assert seen.pid == pid_a, "the test must reuse the pooled connection"
        assert seen.status == "IDLE"
        assert seen.tenant in ("", None)
        assert seen.devices == 0
    finally:
        await single.dispose()


@pytest.mark.req("RLS-TX-LOCAL", "DB-ONE-COMMIT")
@pytest.mark.parametrize("how", ["cancelled", "raised", "failed", "committed", "unfinished"])
async def test_a_tenant_transaction_always_gives_its_connection_back_clean(
    test_db: ProvisionedDatabase, tenant_a: Tenant, how: str
) -> None:
    """However a tenant transaction ends (cancelled mid-statement, an exception, a failed
    statement, a commit sent behind its back, or simply left without ``finish``), its
    connection goes back to the pool at once (a pool of one serves the next caller) with no
    transaction and no tenant left on it."""
    import anyio

    single = Database(test_db.runtime_url, pool_size=1, pool_timeout=2)
    try:
        pids = []

        async def body() -> None:
            async with single.tenant(tenant_a.id) as tx:
                pids.append(tx.connection.info.backend_pid)
                if how == "cancelled":
                    await tx.execute(sa.text("SELECT pg_sleep(5)"))
                elif how == "raised":
                    await tx.execute(sa.text("SELECT count(*) FROM devices"))
                    raise LookupError("boom")
                elif how == "failed":
                    await tx.execute(sa.text("SELECT 1 / 0"))
                elif how == "committed":
                    await tx.connection.execute("COMMIT")
                else:
                    await tx.execute(sa.text("SELECT count(*) FROM devices"))

        if how == "cancelled":
            with anyio.move_on_after(0.3):
                await body()
        elif how == "raised":
            with pytest.raises(LookupError):
                await body()
        elif how == "failed":
            with pytest.raises(psycopg.errors.DivisionByZero):
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
async def test_tenant_and_user_are_set_for_the_transaction_only(db: Database) -> None:
    tenant_id = uuid.uuid4()
    user_id = uuid.uuid4()
    settings = sa.text("SELECT current_setting('breeze.tenant_id', true) AS tenant,"
                       " current_setting('breeze.user_id', true) AS usr")
    async with db.tenant(tenant_id, user_id=user_id) as tx:
        row = (await tx.execute(settings)).one()
        assert (row.tenant, row.usr) == (str(tenant_id), str(user_id))
        await tx.finish(None)
    async with db.tenant(tenant_id) as tx:
        row = (await tx.execute(settings)).one()
        assert (row.tenant, row.usr) == (str(tenant_id), "")
    async with db.system(user_id=user_id) as tx:
        row = (await tx.execute(settings)).one()
        assert (row.tenant, row.usr) == ("", str(user_id))


@pytest.mark.req("RLS-NO-TENANT-EMPTY")
async def test_tenant_transaction_refuses_missing_tenant(db: Database) -> None:
    with pytest.raises(TypeError, match="fail closed"):
        async with db.tenant(None):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError):
        async with db.tenant("not-a-uuid"):  # type: ignore[arg-type]
            pass
    with pytest.raises(TypeError, match="fail closed"):
        async with db.tenant_lookup(str(uuid.uuid4()),  # type: ignore[arg-type]
                                    (_ONE, ())):
            pass


@pytest.mark.req("RLS-POLICIES")
async def test_user_sees_own_memberships_without_tenant(
    db: Database, tenant_a: Tenant
) -> None:
    from breeze_mcp.auth.accounts import create_user

    user = await create_user(db, tenant_a, email=f"m{uuid.uuid4().hex[:6]}@a.test",
                             password="correct-horse-battery", role="technician")
    async with db.system(user_id=user.id) as tx:
        rows = (await tx.execute(sa.text("SELECT tenant_id, role FROM memberships"))).all()
    assert [(r.tenant_id, r.role) for r in rows] == [(tenant_a.id, "technician")]
    async with db.system(user_id=uuid.uuid4()) as tx:
        assert (await tx.execute(sa.text("SELECT count(*) FROM memberships"))).scalar_one() == 0


_ONE = prepared("SELECT 1")


@pytest.mark.req("RLS-TX-LOCAL", "DB-ONE-COMMIT")
async def test_a_credential_lookup_runs_in_its_tenants_transaction_and_a_refusal_leaves_nothing(
    test_db: ProvisionedDatabase, db: Database, tenant_a: Tenant
) -> None:
    """The credential lookup travels with the tenant transaction's BEGIN (row-level
    security lets it find the key only because the tenant is already set). A rejected
    credential's transaction is rolled back: the next user of the one connection finds no
    transaction and no tenant, and nothing the lookup's transaction did is kept."""
    from breeze_mcp.auth import api_keys
    from breeze_mcp.auth.credentials import CredentialRejected

    info, key = await owner_api_key(db, tenant_a)
    statement = api_keys.lookup(key, tenant_a.id)
    settings = sa.text("SELECT current_setting('breeze.tenant_id', true) AS tenant,"
                       " current_setting('breeze.user_id', true) AS usr")

    async def last_used() -> object:
        async with db.tenant(tenant_a.id) as tx:
            return (await tx.execute(sa.text("SELECT last_used_at FROM api_keys WHERE id = :i")
                                     .bindparams(i=info.id))).scalar_one()

    single = Database(test_db.runtime_url, pool_size=1)
    try:
        # Accepted: the lookup found the key in its tenant. principal_from touched the key's
        # last use, and the block is left unfinished: that touch is not committed.
        async with single.tenant_lookup(tenant_a.id, statement) as (tx, row):
            pid = tx.connection.info.backend_pid
            assert row is not None and row.id == info.id
            principal = await api_keys.principal_from(tx, tenant_a.id, row,
                                                      default_rate_limit="10/minute")
            assert principal.tenant_id == tenant_a.id
            assert principal.actor == f"api_key:{info.id}"
            assert tuple((await tx.execute(settings)).one()) == (str(tenant_a.id), "")
        assert await last_used() is None
        seen = await next_user(single)
        assert (seen.pid, seen.status, seen.devices) == (pid, "IDLE", 0)
        assert seen.tenant in ("", None)

        # Rejected (revoked): the lookup still found the row in the tenant, judged it, and
        # the refusal rolled everything back.
        await api_keys.revoke_api_key(db, info.id, tenant=tenant_a)
        with pytest.raises(CredentialRejected) as refused:
            async with single.tenant_lookup(tenant_a.id, statement) as (tx, row):
                assert row is not None and row.revoked
                assert (await tx.execute(settings)).one().tenant == str(tenant_a.id)
                await api_keys.principal_from(tx, tenant_a.id, row,
                                              default_rate_limit="10/minute")
        assert refused.value.reason == "revoked"
        seen = await next_user(single)
        assert seen.pid == pid, "the test must reuse the pooled connection"
        assert seen.status == "IDLE"
        assert seen.tenant in ("", None)
        assert seen.devices == 0
    finally:
        await single.dispose()
