"""The hot path's plain-SQL statements agree with the SQLAlchemy queries they replace."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from breeze_mcp.auth.accounts import Tenant
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row, Transaction
from breeze_mcp.db.models import devices
from breeze_mcp.tools.devices import ListDevicesInput, iso, list_devices, next_offset
from breeze_mcp.tools.registry import FinalRead, ToolContext

pytestmark = pytest.mark.anyio


def _summary(row: Row) -> dict[str, object]:
    return {
        "id": str(row.id), "hostname": row.hostname, "site": row.site,
        "os_family": row.os_family, "os_version": row.os_version, "status": row.status,
        "ip_address": None if row.ip_address is None else str(row.ip_address),
        "tags": list(row.tags), "last_seen_at": iso(row.last_seen_at),
    }


async def _reference(tx: Transaction, tenant: Tenant, args: ListDevicesInput,
                     *conditions: sa.ColumnElement[bool]) -> dict[str, object]:
    where = [devices.c.tenant_id == tenant.id, *conditions]
    total = (await tx.execute(
        sa.select(sa.func.count()).select_from(devices).where(*where))).scalar_one()
    rows = (await tx.execute(
        sa.select(devices).where(*where).order_by(devices.c.hostname, devices.c.id)
        .limit(args.limit).offset(args.offset))).all()
    return {"devices": [_summary(r) for r in rows], "total": total,
            "next_offset": next_offset(args.offset, len(rows), total)}


async def _listed(ctx: ToolContext, args: ListDevicesInput) -> dict[str, Any]:
    """list_devices' result: its final read run in the transaction, its rows shaped."""
    final = await list_devices(ctx, args)
    assert isinstance(final, FinalRead)
    return dict(final.shape((await ctx.tx.execute(final.statement, final.params)).all()))


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
    async with db.tenant(tenant_a.id) as tx:
        ctx = ToolContext(tx, tenant_a.id, "test")
        for args, conditions in cases:
            got = await _listed(ctx, args)
            assert got == await _reference(tx, tenant_a, args, *conditions), args
        assert (await _listed(ctx, ListDevicesInput(limit=100)))["total"] > 0


async def test_device_addresses_read_as_postgres_text(db: Database, tenant_a: Tenant) -> None:
    """inet values come back as PostgreSQL prints them, the same in every tool."""
    from breeze_mcp.tools.devices import DeviceIdInput, get_device

    addresses = ["10.9.0.7", "10.9.0.0/24", "2001:db8::1", "::ffff:10.0.0.1"]
    async with db.tenant(tenant_a.id) as tx:
        ids = [r.id for r in await tx.execute(sa.text(
            "SELECT id FROM devices ORDER BY hostname LIMIT 4"))]
        for device_id, address in zip(ids, addresses, strict=True):
            await tx.execute(sa.text("UPDATE devices SET ip_address = CAST(:a AS inet)"
                                     " WHERE id = :i").bindparams(a=address, i=device_id))
        ctx = ToolContext(tx, tenant_a.id, "test")
        listed = {d["id"]: d["ip_address"]
                  for d in (await _listed(ctx, ListDevicesInput(limit=100)))["devices"]}
        for device_id, address in zip(ids, addresses, strict=True):
            assert listed[str(device_id)] == address
            got = await get_device(ctx, DeviceIdInput(device_id=device_id))
            assert got["ip_address"] == address
