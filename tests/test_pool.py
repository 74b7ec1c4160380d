"""The runtime pool is bounded, and a request it cannot serve is a clean 503.

A burst larger than the pool waits for pooled connections instead of making PostgreSQL start
a backend per extra request; a request that gets no connection in time, or finds PostgreSQL
unreachable, is answered ``503`` with ``Retry-After`` and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from breeze_mcp.app import RETRY_AFTER_SECONDS, create_app
from breeze_mcp.auth.accounts import Tenant, create_tenant, create_user
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.config import load_settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.tools.demo import seed_demo_data
from tests.support import (
    LiveServer,
    ProvisionedDatabase,
    create_test_database,
    drop_test_database,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.req("DB-POOL-BOUNDED")

CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "list_devices", "arguments": {"limit": 2}}}


@dataclass
class Scratch:
    db: ProvisionedDatabase
    tenant: Tenant
    key: str
    admin: sa.Engine

    def runtime_backends_since(self, started: float) -> int:
        """Backends of the runtime role started after ``started`` (epoch seconds)."""
        with self.admin.connect() as conn:
            return int(conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = :role"
                " AND backend_start > to_timestamp(:t)"),
                {"role": self.db.runtime_role, "t": started}).scalar_one())


@pytest.fixture(scope="module")
def scratch(admin_url: str) -> Iterator[Scratch]:
    """A database of its own: these tests lock its tables and lock its runtime role out."""
    provisioned = create_test_database(admin_url)

    async def build() -> tuple[Tenant, str]:
        db = Database(provisioned.runtime_url, pool_size=1)
        try:
            tenant = await create_tenant(db, "Pool", slug=f"pool-{uuid.uuid4().hex[:6]}")
            await seed_demo_data(db, tenant.id)
            await create_user(db, tenant, email="owner@pool.example",
                              password="a-Strong-passphrase-42", role="owner")
            _, key = await create_api_key(db, tenant, name="k", scopes="ai:read",
                                          rate_limit="100000/minute")
            return tenant, key
        finally:
            await db.dispose()

    tenant, key = asyncio.run(build())
    admin = sa.create_engine(
        sa.engine.make_url(sqlalchemy_url(admin_url)).set(database=provisioned.name),
        isolation_level="AUTOCOMMIT")
    try:
        yield Scratch(provisioned, tenant, key, admin)
    finally:
        admin.dispose()
        drop_test_database(provisioned)


def _server(scratch: Scratch, tmp_path: Path, **settings: Any) -> LiveServer:
    port = free_port()
    config = load_settings(state_dir=tmp_path / "state", database_url=scratch.db.runtime_url,
                           public_url=f"http://127.0.0.1:{port}", **settings)
    return LiveServer(create_app(config, scratch.db.runtime_url), port=port)


def _headers(key: str, request_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-06-18"}
    if request_id:
        headers["X-Request-Id"] = request_id
    return headers


def _audit_rows(scratch: Scratch, request_id: str) -> int:
    with scratch.admin.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM audit_log WHERE request_id = :r"),
                                {"r": request_id}).scalar_one())


@pytest.mark.anyio
async def test_a_burst_waits_for_the_pool_instead_of_opening_connections(
    scratch: Scratch, tmp_path: Path
) -> None:
    started = time.time()
    with _server(scratch, tmp_path, db_pool_size=2) as server:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(*[
                    client.post(f"{server.url}/mcp", json=CALL, headers=_headers(scratch.key))
                    for _ in range(24)])

        for _ in range(3):
            responses = await burst()
            assert [r.status_code for r in responses] == [200] * 24
            assert all(len(r.json()["result"]["structuredContent"]["devices"]) == 2
                       for r in responses)
        # 72 calls, 24 at a time, through a pool of 2 (start-up checks close theirs).
        assert scratch.runtime_backends_since(started) <= 2


def test_no_free_connection_in_time_is_a_503_with_retry_after(
    scratch: Scratch, tmp_path: Path
) -> None:
    with _server(scratch, tmp_path, db_pool_size=1, db_pool_timeout=0.5) as server, \
            scratch.admin.connect() as locker:
        # The pool's one connection is opened (and its statements prepared) by a first call;
        # then the lookup of the held call waits on this lock, holding that connection.
        warm = httpx.post(f"{server.url}/mcp", json=CALL, headers=_headers(scratch.key),
                          timeout=30)
        assert warm.status_code == 200
        locker.execute(sa.text("BEGIN"))
        locker.execute(sa.text("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"))
        first: dict[str, httpx.Response] = {}
        thread = threading.Thread(target=lambda: first.update(response=httpx.post(
            f"{server.url}/mcp", json=CALL, headers=_headers(scratch.key, "held"),
            timeout=30)))
        thread.start()
        try:
            def lookup_waiting() -> bool:
                with scratch.admin.connect() as conn:
                    return bool(conn.execute(sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = :role"
                        " AND wait_event_type = 'Lock'"),
                        {"role": scratch.db.runtime_role}).scalar_one())
            wait_for(lookup_waiting, timeout=10)

            mcp = httpx.post(f"{server.url}/mcp", json=CALL,
                             headers=_headers(scratch.key, "refused-mcp"), timeout=10)
            assert mcp.status_code == 503
            assert mcp.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
            body = mcp.json()
            assert body["jsonrpc"] == "2.0" and body["id"] is None
            assert body["error"]["code"] == -32603
            assert "no database connection was free" in body["error"]["message"]

            rest = httpx.post(f"{server.url}/api/v1/tools/list_devices", json={"limit": 2},
                              headers=_headers(scratch.key, "refused-rest"), timeout=10)
            assert rest.status_code == 503
            assert rest.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
            assert rest.json()["error"] == "temporarily_unavailable"
        finally:
            locker.execute(sa.text("ROLLBACK"))
            thread.join(timeout=30)
        # The held call went through once the lock was gone; the refused ones did nothing.
        assert first["response"].status_code == 200
        assert _audit_rows(scratch, "held") == 1
        assert _audit_rows(scratch, "refused-mcp") == 0
        assert _audit_rows(scratch, "refused-rest") == 0


@contextmanager
def _cut_off(scratch: Scratch) -> Iterator[None]:
    """The runtime role may not connect, and its backends are terminated (the pool's kept
    connection is dead and no new one may be opened) until the block ends."""
    role = scratch.db.runtime_role
    with scratch.admin.connect() as conn:
        conn.execute(sa.text(f'ALTER ROLE "{role}" CONNECTION LIMIT 0'))
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                             " WHERE usename = :role"), {"role": role})
    try:
        yield
    finally:
        with scratch.admin.connect() as conn:
            conn.execute(sa.text(f'ALTER ROLE "{role}" CONNECTION LIMIT -1'))


def test_postgres_unreachable_is_a_503_and_service_resumes(
    scratch: Scratch, tmp_path: Path
) -> None:
    with _server(scratch, tmp_path, db_pool_size=1, db_pool_timeout=1) as server:
        ok = httpx.post(f"{server.url}/mcp", json=CALL, headers=_headers(scratch.key))
        assert ok.status_code == 200
        with _cut_off(scratch):
            for request_id in ("down-1", "down-2"):
                down = httpx.post(f"{server.url}/mcp", json=CALL,
                                  headers=_headers(scratch.key, request_id), timeout=30)
                assert down.status_code == 503, down.text
                assert down.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
                body = down.json()
                assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32603
                # unreachable, not busy: the pool's timeout is told apart by a direct attempt
                assert body["error"]["message"] == "the database is unreachable; retry shortly"
                assert _audit_rows(scratch, request_id) == 0

        def serving() -> bool:
            return httpx.post(f"{server.url}/mcp", json=CALL, headers=_headers(scratch.key),
                              timeout=30).status_code == 200
        wait_for(serving, timeout=30, interval=0.2)
