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
    "check_runtime_role",
    "database_target",
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
    "api_keys": ("SELECT", "INSERT", "UPDATE"),
    "oauth_clients": _CRUD,
    "web_sessions": ("SELECT", "INSERT", "UPDATE"),
    "oauth_grants": ("SELECT", "INSERT", "UPDATE"),
    "oauth_codes": ("SELECT", "INSERT", "UPDATE"),
    "oauth_refresh_tokens": ("SELECT", "INSERT", "UPDATE"),
    "oauth_access_tokens": ("SELECT", "INSERT", "UPDATE"),
}


class DatabaseSetupError(RuntimeError):
    """The database cannot be used as configured; the message says what to do."""


@dataclass
class DatabaseTarget:
    """Resolved connection URLs (and the embedded cluster, when one is used)."""

    runtime_url: str
    owner_url: str | None
    embedded: EmbeddedPostgres | None = None
    created: bool = False  # the database was created by this start (first run)


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
        with engine.connect() as conn:
            for role, password, extra in (
                (owner, owner_password, "NOBYPASSRLS CREATEROLE"),
                (runtime, runtime_password, "NOBYPASSRLS NOINHERIT"),
            ):
                exists = conn.execute(
                    sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
                ).first()
                pw = f" PASSWORD {_quote_literal(password)}" if password else ""
                verb = "ALTER" if exists else "CREATE"
                conn.execute(
                    sa.text(
                        f"{verb} ROLE {_quote_ident(role)} LOGIN NOSUPERUSER NOCREATEDB "
                        f"{extra}{pw}"
                    )
                )
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
    finally:
        engine.dispose()
    db_url = make_url(sqlalchemy_url(admin_url)).set(database=database)
    engine = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"ALTER SCHEMA public OWNER TO {_quote_ident(owner)}"))
            conn.execute(sa.text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
            conn.execute(
                sa.text(f"REVOKE ALL ON DATABASE {_quote_ident(database)} FROM PUBLIC")
            )
    finally:
        engine.dispose()
    return created


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

    Returns human-readable lines describing what was done.
    """
    done: list[str] = []
    engine = sa.create_engine(sqlalchemy_url(owner_url))
    try:
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
