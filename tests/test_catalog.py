"""Catalog contract: the tenant-isolation invariants hold in pg_catalog, and the checker
itself notices when someone breaks them."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from breeze_mcp.db.catalog import isolation_problems
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.db.models import metadata
from breeze_mcp.db.setup import RUNTIME_PRIVILEGES
from tests.support import ProvisionedDatabase


@pytest.fixture
def owner(test_db: ProvisionedDatabase):
    engine = sa.create_engine(sqlalchemy_url(test_db.owner_url))
    with engine.connect() as conn:
        yield conn
        conn.rollback()
    engine.dispose()


@pytest.fixture
def runtime(test_db: ProvisionedDatabase):
    engine = sa.create_engine(sqlalchemy_url(test_db.runtime_url))
    with engine.connect() as conn:
        yield conn
        conn.rollback()
    engine.dispose()


def tenant_tables(conn: sa.Connection) -> list[str]:
    return [r.relname for r in conn.execute(sa.text(
        "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' "
        "AND a.attname = 'tenant_id' ORDER BY 1"))]


@pytest.mark.req("RLS-FORCED", "RLS-POLICIES", "RLS-RUNTIME-ROLE", "RLS-VIEWS", "SEED-RLS")
def test_isolation_invariants_hold(owner: sa.Connection, test_db: ProvisionedDatabase) -> None:
    assert isolation_problems(owner, test_db.runtime_role) == []


@pytest.mark.req("RLS-FORCED", "RLS-POLICIES")
def test_every_tenant_table_is_forced_with_four_policies(owner: sa.Connection) -> None:
    tables = tenant_tables(owner)
    assert set(tables) >= {"memberships", "devices", "alerts", "device_notes", "script_runs",
                           "patch_jobs", "isolation_events", "audit_log"}
    for table in tables:
        rls, force = owner.execute(sa.text(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
            "WHERE oid = CAST(:t AS regclass)"), {"t": table}).one()
        assert rls and force, table
        cmds = sorted(r.cmd for r in owner.execute(sa.text(
            "SELECT cmd FROM pg_policies WHERE tablename = :t"), {"t": table}))
        assert cmds == ["DELETE", "INSERT", "SELECT", "UPDATE"], table


@pytest.mark.req("RLS-FORCED")
def test_checker_catches_a_new_tenant_table_without_rls(
    owner: sa.Connection, test_db: ProvisionedDatabase
) -> None:
    owner.execute(sa.text("CREATE TABLE rogue (id int, tenant_id uuid)"))
    problems = isolation_problems(owner, test_db.runtime_role)
    assert "rogue: row-level security is not enabled" in problems
    assert "rogue: row-level security is not forced" in problems
    assert "rogue: no policy for SELECT" in problems
    owner.execute(sa.text("ALTER TABLE rogue ENABLE ROW LEVEL SECURITY"))
    owner.execute(sa.text("ALTER TABLE rogue FORCE ROW LEVEL SECURITY"))
    owner.execute(sa.text("CREATE POLICY p ON rogue FOR SELECT USING (true)"))
    problems = isolation_problems(owner, test_db.runtime_role)
    assert "rogue: policy p does not use the tenant setting" in problems
    assert "rogue: no policy for DELETE" in problems


@pytest.mark.req("RLS-VIEWS")
def test_checker_catches_definer_views_and_functions(
    owner: sa.Connection, test_db: ProvisionedDatabase
) -> None:
    owner.execute(sa.text("CREATE VIEW leaky AS SELECT * FROM devices"))
    owner.execute(sa.text(
        "CREATE FUNCTION sneaky() RETURNS bigint LANGUAGE sql SECURITY DEFINER "
        "AS 'SELECT count(*) FROM devices'"))
    problems = isolation_problems(owner, test_db.runtime_role)
    assert "view leaky lacks security_invoker" in problems
    assert "SECURITY DEFINER function sneaky is executable by the runtime role" in problems
    owner.execute(sa.text("ALTER VIEW leaky SET (security_invoker = true)"))
    assert "view leaky lacks security_invoker" not in isolation_problems(
        owner, test_db.runtime_role)


@pytest.mark.req("RLS-RUNTIME-ROLE")
def test_runtime_role_attributes(owner: sa.Connection, test_db: ProvisionedDatabase) -> None:
    row = owner.execute(sa.text(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles "
        "WHERE rolname = :r"), {"r": test_db.runtime_role}).one()
    assert tuple(row) == (False, False, False, False)
    owned = owner.execute(sa.text(
        "SELECT count(*) FROM pg_class WHERE relowner = "
        "(SELECT oid FROM pg_roles WHERE rolname = :r)"), {"r": test_db.runtime_role}).scalar()
    assert owned == 0
    table_owner = owner.execute(sa.text(
        "SELECT tableowner FROM pg_tables WHERE tablename = 'devices'")).scalar_one()
    assert table_owner == test_db.owner_role


@pytest.mark.req("RLS-RUNTIME-ROLE", "AUDIT-APPEND-ONLY")
def test_runtime_privileges_are_exactly_the_manifest(
    owner: sa.Connection, test_db: ProvisionedDatabase
) -> None:
    assert set(RUNTIME_PRIVILEGES) == set(metadata.tables), "every table needs a privilege entry"
    rows = owner.execute(sa.text(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = :r"), {"r": test_db.runtime_role}).all()
    granted: dict[str, set[str]] = {}
    for table, priv in rows:
        granted.setdefault(table, set()).add(priv)
    expected = {t: set(p) for t, p in RUNTIME_PRIVILEGES.items()}
    expected["alembic_version"] = {"SELECT"}
    assert granted == expected
    assert granted["audit_log"] == {"INSERT", "SELECT"}
    assert granted["audit_chain"] == {"INSERT", "SELECT"}


@pytest.mark.req("AUDIT-APPEND-ONLY")
@pytest.mark.parametrize("who", ["owner", "runtime"])
@pytest.mark.parametrize("table", ["audit_log", "audit_chain"])
@pytest.mark.parametrize(
    "statement",
    ["UPDATE {table} SET tenant_id = NULL", "DELETE FROM {table}", "TRUNCATE {table}"],
)
def test_audit_tables_refuse_changes(
    who: str, table: str, statement: str, owner: sa.Connection, runtime: sa.Connection
) -> None:
    conn = owner if who == "owner" else runtime
    # Make sure there is a row the owner could otherwise see (RLS is forced even for it,
    # so set a tenant that has rows).
    tenant = owner.execute(sa.text("SELECT tenant_id FROM audit_log LIMIT 1")).scalar()
    with pytest.raises(DBAPIError) as err:
        conn.execute(sa.text("SELECT set_config('breeze.tenant_id', :t, true)"),
                     {"t": str(tenant or "")})
        conn.execute(sa.text(statement.format(table=table)))
    # The owner holds the privilege, so its own trigger is what refuses; the runtime role is
    # stopped before that by a privilege it was never granted.
    refusal = f"{table} is append-only" if who == "owner" else "permission denied"
    assert refusal in str(err.value)
    conn.rollback()


@pytest.mark.req("AUDIT-APPEND-ONLY")
def test_audit_trigger_refuses_even_owner_update_of_visible_row(
    owner: sa.Connection,
) -> None:
    owner.execute(sa.text(
        "INSERT INTO audit_log (actor_type, auth_path, action, decision, outcome) "
        "VALUES ('system', 'system', 'test.row', 'allowed', 'success')"))
    # TRUNCATE skips row-level security, so only the trigger stands between the owner and an
    # empty audit log.
    with pytest.raises(DBAPIError, match="append-only"):
        owner.execute(sa.text("TRUNCATE audit_log"))
