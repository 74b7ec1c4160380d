"""The tenant-isolation invariants, checked against the PostgreSQL catalog.

:func:`isolation_problems` returns one line per broken invariant; the catalog tests assert it
is empty, and the server refuses to start when it is not. Each check reads ``pg_catalog``
directly, so a table added later without row-level security is caught without anyone having
to remember to list it.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["ALLOWED_SECURITY_DEFINER", "COMMANDS", "isolation_problems"]

COMMANDS = ("SELECT", "INSERT", "UPDATE", "DELETE")

#: SECURITY DEFINER functions the runtime role may execute, by name, with the reason.
#: Empty: none is needed.
ALLOWED_SECURITY_DEFINER: dict[str, str] = {}

_POLICY_CMD = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "*": "ALL"}


def isolation_problems(conn: sa.Connection, runtime_role: str, schema: str = "public") -> list[str]:
    problems: list[str] = []
    tenant_tables = [
        row.relname
        for row in conn.execute(
            sa.text(
                "SELECT c.relname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
                "WHERE c.relnamespace = CAST(:schema AS regnamespace) "
                "AND c.relkind IN ('r', 'p') "
                "AND a.attname = 'tenant_id' AND NOT a.attisdropped ORDER BY c.relname"
            ),
            {"schema": schema},
        )
    ]
    if not tenant_tables:
        problems.append(f"no table with tenant_id found in schema {schema!r}")
    for table in tenant_tables:
        flags = conn.execute(
            sa.text(
                "SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
                "WHERE oid = CAST(:t AS regclass)"
            ),
            {"t": f"{schema}.{table}"},
        ).one()
        if not flags.relrowsecurity:
            problems.append(f"{table}: row-level security is not enabled")
        if not flags.relforcerowsecurity:
            problems.append(f"{table}: row-level security is not forced")
        cmds = {
            _POLICY_CMD[row.polcmd]
            for row in conn.execute(
                sa.text(
                    "SELECT polcmd FROM pg_policy WHERE polrelid = CAST(:t AS regclass) "
                    "AND polpermissive"
                ),
                {"t": f"{schema}.{table}"},
            )
        }
        for cmd in COMMANDS:
            if cmd not in cmds and "ALL" not in cmds:
                problems.append(f"{table}: no policy for {cmd}")
        # Every policy must key on the transaction's tenant setting.
        for row in conn.execute(
            sa.text(
                "SELECT polname, pg_get_expr(polqual, polrelid) AS q, "
                "pg_get_expr(polwithcheck, polrelid) AS c FROM pg_policy "
                "WHERE polrelid = CAST(:t AS regclass)"
            ),
            {"t": f"{schema}.{table}"},
        ):
            text = f"{row.q or ''} {row.c or ''}"
            deny_all = (row.q or "").strip() == "false" and row.c is None
            if "breeze_current_tenant()" not in text and not deny_all:
                problems.append(f"{table}: policy {row.polname} does not use the tenant setting")

    role = conn.execute(
        sa.text("SELECT oid, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"),
        {"r": runtime_role},
    ).first()
    if role is None:
        problems.append(f"runtime role {runtime_role!r} does not exist")
    else:
        if role.rolsuper:
            problems.append(f"runtime role {runtime_role!r} is a superuser")
        if role.rolbypassrls:
            problems.append(f"runtime role {runtime_role!r} has BYPASSRLS")
        for row in conn.execute(
            sa.text("SELECT relname FROM pg_class WHERE relowner = :oid ORDER BY relname"),
            {"oid": role.oid},
        ):
            problems.append(f"runtime role {runtime_role!r} owns {row.relname}")
        for row in conn.execute(
            sa.text(
                "SELECT b.rolname FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid "
                "WHERE m.member = :oid"
            ),
            {"oid": role.oid},
        ):
            problems.append(f"runtime role {runtime_role!r} is a member of {row.rolname}")
        for row in conn.execute(
            sa.text(
                "SELECT p.proname FROM pg_proc p "
                "WHERE p.prosecdef AND p.pronamespace = CAST(:schema AS regnamespace) "
                "AND has_function_privilege(:r, p.oid, 'EXECUTE')"
            ),
            {"schema": schema, "r": runtime_role},
        ):
            if row.proname not in ALLOWED_SECURITY_DEFINER:
                problems.append(
                    f"SECURITY DEFINER function {row.proname} is executable by the runtime role"
                )

    for row in conn.execute(
        sa.text(
            "SELECT c.relname, c.reloptions FROM pg_class c "
            "WHERE c.relkind IN ('v', 'm') AND c.relnamespace = CAST(:schema AS regnamespace)"
        ),
        {"schema": schema},
    ):
        options = row.reloptions or []
        if "security_invoker=true" not in options and "security_invoker=on" not in options:
            problems.append(f"view {row.relname} lacks security_invoker")
    return problems
