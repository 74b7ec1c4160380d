"""Where the database is, who owns the schema, and how the runtime role gets its rights.

Two PostgreSQL roles:

* the **owner** (migration) role owns every table and function; only ``breeze-mcp migrate``
  connects as it (``BREEZE_MIGRATE_DATABASE_URL``);
* the **runtime** role (the user of ``BREEZE_DATABASE_URL``) is ``NOSUPERUSER NOBYPASSRLS``,
  owns nothing and holds only the privileges in :data:`RUNTIME_PRIVILEGES`. The service
  refuses to start as any other kind of role.

With no ``BREEZE_DATABASE_URL`` the embedded cluster is used; this module then creates both
roles and the ``breeze`` database inside it on first start.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from breeze_mcp.config import Settings
from breeze_mcp.db.catalog import isolation_problems
from breeze_mcp.db.embedded import EmbeddedPostgres
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.db.models import metadata

__all__ = [
    "EMBEDDED_DATABASE",
    "EMBEDDED_OWNER",
    "EMBEDDED_RUNTIME",
    "RUNTIME_PRIVILEGES",
    "DatabaseSetupError",
    "DatabaseTarget",
    "bootstrap_cluster",
    "check_database",
    "check_runtime_role",
    "database_target",
    "describe_url",
    "downgrade",
    "ensure_current",
    "head_revision",
    "migrate",
    "schema_is_current",
]

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "breeze"
EMBEDDED_OWNER = "breeze_owner"
EMBEDDED_RUNTIME = "breeze_app"

_CRUD = ("SELECT", "INSERT", "UPDATE", "DELETE")

#: What the runtime role may do, table by table. A table missing here gets nothing (and the
#: catalog tests fail until it is listed).
RUNTIME_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "tenants": ("SELECT", "INSERT", "UPDATE"),
    "users": ("SELECT", "INSERT", "UPDATE"),
    "memberships": _CRUD,
    "devices": _CRUD,
    "alerts": _CRUD,
    "device_notes": _CRUD,
    "script_runs": _CRUD,
    "patch_jobs": _CRUD,
    "isolation_events": _CRUD,
    "audit_log": ("SELECT", "INSERT"),
    "audit_chain": ("SELECT", "INSERT"),
    "api_keys": ("SELECT", "INSERT", "UPDATE"),
    "oauth_clients": _CRUD,
    "oauth_client_assertions": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "web_sessions": ("SELECT", "INSERT", "UPDATE"),
    "billing_events": ("SELECT", "INSERT"),
    "mail_links": ("SELECT", "INSERT", "UPDATE"),
    "invitations": ("SELECT", "INSERT", "UPDATE"),
    "mfa_totp": _CRUD,
    "mfa_recovery_codes": _CRUD,
    "oauth_grants": ("SELECT", "INSERT", "UPDATE"),
    "oauth_codes": ("SELECT", "INSERT", "UPDATE"),
    "oauth_refresh_tokens": ("SELECT", "INSERT", "UPDATE"),
    "oauth_access_tokens": ("SELECT", "INSERT", "UPDATE"),
    "oauth_client_blocks": ("SELECT", "INSERT", "UPDATE"),
}


#: Advisory lock keys (any constants, the same in every process) serialising role and database
#: creation and the migrate-and-grant step: two processes doing either at once would otherwise
#: race on the same catalog rows ("tuple concurrently updated").
_BOOTSTRAP_LOCK = 0x6272_6565_7A65_0001
_MIGRATE_LOCK = 0x6272_6565_7A65_0002


@contextlib.contextmanager
def _advisory_lock(conn: sa.Connection, key: int) -> Iterator[None]:
    """Hold a session-level advisory lock on ``conn`` (an AUTOCOMMIT connection)."""
    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
    try:
        yield
    finally:
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


class DatabaseSetupError(RuntimeError):
    """The database cannot be used as configured; the message says what to do."""


@dataclass
class DatabaseTarget:
    """Resolved connection URLs (and the embedded cluster, when one is used)."""

    runtime_url: str
    owner_url: str | None
    embedded: EmbeddedPostgres | None = None
    created: bool = False  # the database was created by this start (first run)


def describe_url(url: str) -> str:
    """A database URL fit to print: no password, no driver, no query but a socket host."""
    parsed = make_url(sqlalchemy_url(url))
    port = f":{parsed.port}" if parsed.port else ""
    user = f"{parsed.username}@" if parsed.username else ""
    where = f"/{parsed.database or ''}"
    socket = parsed.query.get("host")
    if parsed.host is None and isinstance(socket, str):
        return f"postgresql://{user}{where}?host={socket}"
    return f"postgresql://{user}{parsed.host or 'localhost'}{port}{where}"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def bootstrap_cluster(
    admin_url: str,
    *,
    database: str,
    owner: str,
    runtime: str,
    owner_password: str | None = None,
    runtime_password: str | None = None,
) -> bool:
    """Create the owner and runtime roles and the database (idempotent).

    ``admin_url`` must be a superuser connection. Returns True when the database was created.
    """
    engine = sa.create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn, _advisory_lock(conn, _BOOTSTRAP_LOCK):
            for role, password, attributes in (
                (owner, owner_password, "NOBYPASSRLS CREATEROLE"),
                (runtime, runtime_password, "NOBYPASSRLS NOINHERIT"),
            ):
                _ensure_role(conn, role, password, attributes)
            created = False
            if not conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
            ).first():
                conn.execute(
                    sa.text(
                        f"CREATE DATABASE {_quote_ident(database)} OWNER {_quote_ident(owner)} "
                        "ENCODING 'UTF8' TEMPLATE template0"
                    )
                )
                created = True
            db_url = make_url(sqlalchemy_url(admin_url)).set(database=database)
            db_engine = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
            try:
                with db_engine.connect() as db_conn:
                    _lock_down_database(db_conn, database, owner)
            finally:
                db_engine.dispose()
    finally:
        engine.dispose()
    return created


def _ensure_role(
    conn: sa.Connection, role: str, password: str | None, attributes: str
) -> None:
    """Create ``role``, or bring it to ``attributes``; no write when it already matches."""
    row = conn.execute(
        sa.text(
            "SELECT rolcanlogin AND NOT rolsuper AND NOT rolcreatedb AND NOT rolbypassrls"
            " AND rolcreaterole = :createrole AND rolinherit = :inherit AS ok"
            " FROM pg_roles WHERE rolname = :r"
        ),
        {"r": role, "createrole": "CREATEROLE" in attributes,
         "inherit": "NOINHERIT" not in attributes},
    ).first()
    if row is not None and row.ok and password is None:
        return
    pw = f" PASSWORD {_quote_literal(password)}" if password else ""
    verb = "ALTER" if row is not None else "CREATE"
    conn.execute(
        sa.text(
            f"{verb} ROLE {_quote_ident(role)} LOGIN NOSUPERUSER NOCREATEDB {attributes}{pw}"
        )
    )


def _lock_down_database(conn: sa.Connection, database: str, owner: str) -> None:
    """The owner owns schema public; PUBLIC may neither create in it nor connect."""
    state = conn.execute(
        sa.text(
            "SELECT pg_get_userbyid(n.nspowner) AS schema_owner,"
            " has_schema_privilege('public', 'public', 'CREATE') AS public_create,"
            " has_database_privilege('public', current_database(), 'CONNECT')"
            "  AS public_connect"
            " FROM pg_namespace n WHERE n.nspname = 'public'"
        )
    ).one()
    if state.schema_owner != owner:
        conn.execute(sa.text(f"ALTER SCHEMA public OWNER TO {_quote_ident(owner)}"))
    if state.public_create:
        conn.execute(sa.text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
    if state.public_connect:
        conn.execute(sa.text(f"REVOKE ALL ON DATABASE {_quote_ident(database)} FROM PUBLIC"))


@contextlib.contextmanager
def database_target(settings: Settings) -> Iterator[DatabaseTarget]:
    """Resolve where the database is; with the embedded cluster, hold it while in use."""
    if settings.database_url is not None:
        runtime = settings.database_url.get_secret_value()
        owner = (
            settings.migrate_database_url.get_secret_value()
            if settings.migrate_database_url is not None
            else None
        )
        yield DatabaseTarget(runtime_url=runtime, owner_url=owner)
        return
    cluster = EmbeddedPostgres(Path(settings.state_dir) / "postgres")
    cluster.acquire()
    try:
        created = bootstrap_cluster(
            cluster.url(),
            database=EMBEDDED_DATABASE,
            owner=EMBEDDED_OWNER,
            runtime=EMBEDDED_RUNTIME,
        )
        yield DatabaseTarget(
            runtime_url=cluster.url(EMBEDDED_RUNTIME, EMBEDDED_DATABASE),
            owner_url=cluster.url(EMBEDDED_OWNER, EMBEDDED_DATABASE),
            embedded=cluster,
            created=created,
        )
    finally:
        cluster.release()


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    location = importlib.resources.files("breeze_mcp.migrations")
    cfg.set_main_option("script_location", str(location))
    return cfg


def migrate(owner_url: str, runtime_url: str, *, revision: str = "head") -> list[str]:
    """Upgrade the schema as the owner, then create/grant the runtime role.

    Concurrent calls (several CLI commands, several instances starting) take turns.
    Returns human-readable lines describing what was done.
    """
    done: list[str] = []
    engine = sa.create_engine(sqlalchemy_url(owner_url))
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock_conn, \
                _advisory_lock(lock_conn, _MIGRATE_LOCK):
            with engine.connect() as conn:
                before = MigrationContext.configure(conn).get_current_revision()
                conn.commit()
            cfg = _alembic_config()
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
            with engine.connect() as conn:
                after = MigrationContext.configure(conn).get_current_revision()
                conn.commit()
            done.append(f"schema at revision {after} (was {before or 'empty'})")
            with engine.begin() as conn:
                done += _ensure_runtime_role(conn, runtime_url)
    finally:
        engine.dispose()
    return done


def ensure_current(owner_url: str, runtime_url: str) -> list[str]:
    """Migrate and grant only when needed: a no-op (and no write) when the schema is at head
    and the runtime role holds exactly its privileges. Returns what :func:`migrate` did."""
    engine = sa.create_engine(sqlalchemy_url(owner_url))
    try:
        with engine.connect() as conn:
            current, head = schema_is_current(conn)
            ready = current == head and _runtime_role_in_place(conn, runtime_url)
            conn.rollback()
    finally:
        engine.dispose()
    return [] if ready else migrate(owner_url, runtime_url)


def _expected_grants(role_tables: set[str], sequences: set[str]) -> set[tuple[str, str]]:
    grants = {
        (table, privilege)
        for table in metadata.tables
        if table in role_tables
        for privilege in RUNTIME_PRIVILEGES.get(table, ())
    }
    grants.add(("alembic_version", "SELECT"))
    return grants | {(sequence, "USAGE") for sequence in sequences}


def _runtime_role_in_place(conn: sa.Connection, runtime_url: str) -> bool:
    """The runtime role exists, cannot skip row-level security, and holds exactly the
    privileges :func:`_ensure_runtime_role` grants."""
    role = make_url(sqlalchemy_url(runtime_url)).username
    row = conn.execute(
        sa.text(
            "SELECT NOT rolsuper AND NOT rolbypassrls"
            " AND has_database_privilege(rolname, current_database(), 'CONNECT')"
            " AND has_schema_privilege(rolname, 'public', 'USAGE') AS ok"
            " FROM pg_roles WHERE rolname = :r"
        ),
        {"r": role},
    ).first()
    if row is None or not row.ok:
        return False
    relations = conn.execute(
        sa.text(
            "SELECT relname, relkind FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'S')"
        )
    ).all()
    granted = conn.execute(
        sa.text(
            "SELECT c.relname, a.privilege_type FROM pg_class c"
            " CROSS JOIN LATERAL aclexplode(c.relacl) a"
            " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'S')"
            " AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = :r)"
        ),
        {"r": role},
    ).all()
    tables = {r.relname for r in relations if r.relkind != "S"}
    sequences = {r.relname for r in relations if r.relkind == "S"}
    return {(g.relname, g.privilege_type) for g in granted} == _expected_grants(
        tables, sequences
    )


def downgrade(owner_url: str, revision: str) -> None:
    """Reverse migrations down to ``revision`` (``base`` removes everything)."""
    engine = sa.create_engine(sqlalchemy_url(owner_url))
    try:
        with engine.begin() as conn:
            cfg = _alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
    finally:
        engine.dispose()


def _ensure_runtime_role(conn: sa.Connection, runtime_url: str) -> list[str]:
    url = make_url(sqlalchemy_url(runtime_url))
    role = url.username
    if not role:
        raise DatabaseSetupError("BREEZE_DATABASE_URL must name the runtime role (user)")
    owner = conn.execute(sa.text("SELECT current_user")).scalar_one()
    if role == owner:
        raise DatabaseSetupError(
            f"the runtime role {role!r} would own the schema: BREEZE_DATABASE_URL must use a "
            "different role than BREEZE_MIGRATE_DATABASE_URL"
        )
    done: list[str] = []
    row = conn.execute(
        sa.text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role}
    ).first()
    if row is None:
        pw = f" PASSWORD {_quote_literal(url.password)}" if url.password else ""
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.text(
                        f"CREATE ROLE {_quote_ident(role)} LOGIN NOSUPERUSER NOBYPASSRLS "
                        f"NOCREATEDB NOCREATEROLE NOINHERIT{pw}"
                    )
                )
        except sa.exc.DBAPIError as exc:
            raise DatabaseSetupError(
                f"cannot create the runtime role {role!r} ({exc.orig}). Ask your DBA to run: "
                f"CREATE ROLE {_quote_ident(role)} LOGIN NOSUPERUSER NOBYPASSRLS NOINHERIT "
                "PASSWORD '...'; then run migrate again"
            ) from None
        done.append(f"created runtime role {role}")
    elif row.rolsuper or row.rolbypassrls:
        raise DatabaseSetupError(
            f"the runtime role {role!r} is SUPERUSER or BYPASSRLS, which skips row-level "
            f"security; run: ALTER ROLE {_quote_ident(role)} NOSUPERUSER NOBYPASSRLS"
        )
    database = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    grantee = _quote_ident(role)
    conn.execute(sa.text(f"GRANT CONNECT ON DATABASE {_quote_ident(database)} TO {grantee}"))
    conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {grantee}"))
    for table in metadata.tables:
        conn.execute(sa.text(f"REVOKE ALL ON TABLE {_quote_ident(table)} FROM {grantee}"))
        privileges = RUNTIME_PRIVILEGES.get(table, ())
        if privileges:
            conn.execute(
                sa.text(
                    f"GRANT {', '.join(privileges)} ON TABLE {_quote_ident(table)} "
                    f"TO {_quote_ident(role)}"
                )
            )
    # Identity columns (audit_log.id) draw from sequences the inserting role must use.
    conn.execute(sa.text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {_quote_ident(role)}"))
    # The service reads the schema revision at start-up to refuse running against an old schema.
    conn.execute(sa.text(f"REVOKE ALL ON TABLE alembic_version FROM {_quote_ident(role)}"))
    conn.execute(sa.text(f"GRANT SELECT ON TABLE alembic_version TO {_quote_ident(role)}"))
    done.append(f"granted runtime privileges to {role}")
    return done


def head_revision() -> str | None:
    """The newest migration this build knows."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def schema_is_current(conn: sa.Connection) -> tuple[str | None, str | None]:
    """(database revision, newest revision this build knows)."""
    current = MigrationContext.configure(conn).get_current_revision()
    return current, head_revision()


def check_runtime_role(conn: sa.Connection) -> None:
    """Refuse to run as a role that could skip row-level security."""
    row = conn.execute(
        sa.text(
            "SELECT r.rolname, r.rolsuper, r.rolbypassrls, "
            " (SELECT count(*) FROM pg_class c WHERE c.relowner = r.oid "
            "  AND c.relkind IN ('r', 'p', 'v', 'm') "
            "  AND c.relnamespace = 'public'::regnamespace) AS owned "
            "FROM pg_roles r WHERE r.rolname = current_user"
        )
    ).one()
    if row.rolsuper or row.rolbypassrls or row.owned:
        raise DatabaseSetupError(
            f"refusing to serve as database role {row.rolname!r}: it is "
            + ("a superuser" if row.rolsuper else "BYPASSRLS" if row.rolbypassrls else
               f"the owner of {row.owned} table(s) or view(s)")
            + ", so row-level security would not apply. Use the runtime role that "
            "`breeze-mcp migrate` creates."
        )


def check_database(database_url: str) -> None:
    """Refuse a role that skips RLS, an old schema, and a broken tenant-isolation invariant
    (synchronous: start-up work, on a connection of its own, with SQLAlchemy's inspection of
    the catalog and Alembic's revision)."""
    engine = sa.create_engine(sqlalchemy_url(database_url), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            check_runtime_role(conn)
            current, head = schema_is_current(conn)
            if current != head:
                raise DatabaseSetupError(
                    f"database schema is at revision {current or 'none'} but this build needs "
                    f"{head}: run `breeze-mcp migrate`"
                )
            role = conn.execute(sa.text("SELECT current_user")).scalar_one()
            problems = isolation_problems(conn, role)
    finally:
        engine.dispose()
    if problems:
        raise DatabaseSetupError(
            "refusing to serve, tenant isolation is broken: " + "; ".join(problems)
        )
