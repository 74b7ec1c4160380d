"""The hot path's plain-SQL statements agree with the SQLAlchemy queries they replace."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from breeze_mcp.accounts import Tenant
from breeze_mcp.db import Database
from breeze_mcp.db.models import devices
from breeze_mcp.tools.devices import ListDevicesInput, iso, list_devices, next_offset
from breeze_mcp.tools.registry import ToolContext

pytestmark = pytest.mark.anyio


def _summary(row: sa.Row[object]) -> dict[str, object]:
    m = row._mapping
    return {
        "id": str(m["id"]), "hostname": m["hostname"], "site": m["site"],
        "os_family": m["os_family"], "os_version": m["os_version"], "status": m["status"],
        "ip_address": None if m["ip_address"] is None else str(m["ip_address"]),
        "tags": list(m["tags"]), "last_seen_at": iso(m["last_seen_at"]),
    }


async def _reference(conn: object, tenant: Tenant, args: ListDevicesInput,
                     *conditions: sa.ColumnElement[bool]) -> dict[str, object]:
    where = [devices.c.tenant_id == tenant.id, *conditions]
    total = (await conn.execute(  # type: ignore[attr-defined]
        sa.select(sa.func.count()).select_from(devices).where(*where))).scalar_one()
    rows = (await conn.execute(  # type: ignore[attr-defined]
        sa.select(devices).where(*where).order_by(devices.c.hostname, devices.c.id)
        .limit(args.limit).offset(args.offset))).all()
    return {"devices": [_summary(r) for r in rows], "total": total,
            "next_offset": next_offset(args.offset, len(rows), total)}


async def test_list_devices_matches_the_sqlalchemy_query(db: Database, tenant_a: Tenant) -> None:
    cases = [
        (ListDevicesInput(limit=5), ()),
        (ListDevicesInput(limit=3, offset=2), ()),
        (ListDevicesInput(offset=10_000), ()),
        (ListDevicesInput(status="online"), (devices.c.status == "online",)),
        (ListDevicesInput(os_family="WINDOWS"),
         (sa.func.lower(devices.c.os_family) == "windows",)),
        (ListDevicesInput(search="1"), (devices.c.hostname.ilike("%1%"),)),
        (ListDevicesInput(search="%_\\"), (sa.false(),)),
        (ListDevicesInput(tag="critical"), (devices.c.tags.contains(["critical"]),)),
        (ListDevicesInput(site="nowhere"), (sa.false(),)),
    ]
    async with db.tenant_transaction(tenant_a.id, actor="test") as conn:
        ctx = ToolContext(conn, tenant_a.id, "test")
        for args, conditions in cases:
            got = await list_devices(ctx, args)
            assert got == await _reference(conn, tenant_a, args, *conditions), args
        assert (await list_devices(ctx, ListDevicesInput(limit=100)))["total"] > 0


async def test_idle_connection_whose_backend_died_is_replaced(
    test_db: object, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from breeze_mcp.db import engine as engine_module

    single = Database(test_db.runtime_url, pool_size=1)  # type: ignore[attr-defined]
    try:
        async with single.engine.connect() as conn:
            pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        async with db.engine.connect() as other:
            assert (await other.execute(sa.text("SELECT pg_terminate_backend(:p)"),
                                        {"p": pid})).scalar_one()
        monkeypatch.setattr(engine_module, "IDLE_PING_SECONDS", 0.0)
        async with single.tenant_transaction(uuid.uuid4(), actor="test") as conn:
            new_pid = (await conn.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        assert new_pid != pid
    finally:
        await single.dispose()


async def test_device_addresses_read_as_postgres_text(db: Database, tenant_a: Tenant) -> None:
    """inet values come back as PostgreSQL prints them, the same in every tool."""
    from breeze_mcp.tools.devices import DeviceIdInput, get_device

    addresses = ["10.9.0.7", "10.9.0.0/24", "2001:db8::1", "::ffff:10.0.0.1"]
    async with db.tenant_transaction(tenant_a.id, actor="test") as conn:
        ids = [r.id for r in await conn.execute(sa.text(
            "SELECT id FROM devices ORDER BY hostname LIMIT 4"))]
        for device_id, address in zip(ids, addresses, strict=True):
            await conn.execute(sa.text("UPDATE devices SET ip_address = CAST(:a AS inet)"
                                       " WHERE id = :i"), {"a": address, "i": device_id})
        ctx = ToolContext(conn, tenant_a.id, "test")
        listed = {d["id"]: d["ip_address"]
                  for d in (await list_devices(ctx, ListDevicesInput(limit=100)))["devices"]}
        for device_id, address in zip(ids, addresses, strict=True):
            assert listed[str(device_id)] == address
            got = await get_device(ctx, DeviceIdInput(device_id=device_id))
            assert got["ip_address"] == address
