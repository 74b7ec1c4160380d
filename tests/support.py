"""Test infrastructure: a fresh database per test run, and a real HTTP server on a port."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import make_url

from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.db.setup import bootstrap_cluster, migrate
from breeze_mcp.http_protocol import BoundedHttpToolsProtocol

REPO = Path(__file__).resolve().parent.parent


@dataclass
class ProvisionedDatabase:
    """One freshly created database with its own owner and runtime roles."""

    admin_url: str
    name: str
    owner_role: str
    runtime_role: str
    owner_url: str
    runtime_url: str

    def env(self, state_dir: Path) -> dict[str, str]:
        """Environment for a ``breeze-mcp`` subprocess using this database."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BREEZE_")}
        env.update(
            BREEZE_DATABASE_URL=self.runtime_url,
            BREEZE_MIGRATE_DATABASE_URL=self.owner_url,
            BREEZE_STATE_DIR=str(state_dir),
        )
        return env


def _with_user(admin_url: str, user: str, password: str | None, database: str) -> str:
    url = make_url(sqlalchemy_url(admin_url)).set(username=user, password=password,
                                                   database=database)
    return url.render_as_string(hide_password=False)


def create_test_database(admin_url: str) -> ProvisionedDatabase:
    tag = secrets.token_hex(4)
    name = f"breeze_test_{tag}"
    owner, runtime = f"bzt_{tag}_owner", f"bzt_{tag}_app"
    # Passwords matter only over TCP (an external server); the embedded cluster trusts its
    # private socket.
    owner_pw, runtime_pw = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    bootstrap_cluster(admin_url, database=name, owner=owner, runtime=runtime,
                      owner_password=owner_pw, runtime_password=runtime_pw)
    db = ProvisionedDatabase(
        admin_url=admin_url,
        name=name,
        owner_role=owner,
        runtime_role=runtime,
        owner_url=_with_user(admin_url, owner, owner_pw, name),
        runtime_url=_with_user(admin_url, runtime, runtime_pw, name),
    )
    migrate(db.owner_url, db.runtime_url)
    return db


def drop_test_database(db: ProvisionedDatabase) -> None:
    engine = sa.create_engine(sqlalchemy_url(db.admin_url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)"))
        for role in (db.runtime_role, db.owner_role):
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
    engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """uvicorn serving an ASGI app on a real port, in a background thread."""

    def __init__(self, app: Any, port: int | None = None, *,
                 tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: (certificate chain, key) PEM files to serve https, at ``localhost``."""
        self.port = port or free_port()
        self.url = f"https://localhost:{self.port}" if tls else f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on", proxy_headers=False,
                                http=BoundedHttpToolsProtocol,  # as breeze-mcp serve
                                ssl_certfile=str(tls[0]) if tls else None,
                                ssl_keyfile=str(tls[1]) if tls else None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run_cli(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 120,
    user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``breeze-mcp`` exactly as a user would (a new process)."""
    return subprocess.run(
        [sys.executable, "-m", "breeze_mcp", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
        user=user,
        check=False,
    )


def wait_for(predicate: Any, timeout: float = 30, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def iter_lines(path: Path) -> Iterator[str]:
    yield from path.read_text().splitlines()


@dataclass(frozen=True)
class NextUser:
    """What the next user of a Database's connection sees, before setting anything itself."""

    pid: int
    status: str  # the driver's transaction status: IDLE when nothing was carried over
    tenant: str | None  # breeze.tenant_id, "" or None when no tenant was carried over
    devices: int  # tenant rows visible (0 without a tenant: row-level security)


async def next_user(db: Any) -> NextUser:
    """Read :class:`NextUser` through ``db.connection()``, which sets nothing of its own."""
    async with db.connection() as raw:
        status = raw.info.transaction_status.name
        tenant = ((await (await raw.execute(
            "SELECT current_setting('breeze.tenant_id', true)")).fetchone()) or (None,))[0]
        devices = ((await (await raw.execute("SELECT count(*) FROM devices")).fetchone())
                   or (0,))[0]
        return NextUser(raw.info.backend_pid, status, tenant, int(devices))


async def owner_api_key(db: Any, tenant: Any, *, scopes: str = "ai:read") -> tuple[Any, str]:
    """A fresh owner of ``tenant`` and an API key they created: (key info, key)."""
    import uuid

    from breeze_mcp.auth import api_keys
    from breeze_mcp.auth.accounts import create_user

    owner = await create_user(db, tenant, email=f"o-{uuid.uuid4().hex[:8]}@example.com",
                              password="correct horse battery staple", role="owner")
    return await api_keys.create_api_key(db, tenant, name="k", scopes=scopes,
                                         creator_email=owner.email)


def superuser_sql(test_db: ProvisionedDatabase, sql: str, **params: Any) -> list[Any]:
    """Run SQL as the cluster superuser (row-level security does not apply): for reading
    what a test must see whatever the tenant (pre-tenant audit entries) and for setting up
    states no API reaches. Returns the rows, if any."""
    import sqlalchemy as sa

    url = make_url(sqlalchemy_url(test_db.admin_url)).set(database=test_db.name)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()
