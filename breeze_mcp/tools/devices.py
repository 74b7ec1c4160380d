"""Tier 1 device tools: list_devices, get_device, get_device_health.

Also the helpers the other tool modules share: loading a device of the calling tenant (an id
of another tenant is indistinguishable from an unknown id), paging fields, ISO 8601 output.

Health analysis (:func:`assess_health`) is a pure function over a device's ``metrics`` JSON
and its alert counts. The score starts at 100 and loses points per finding:

=====================================  ========  ==========================================
Finding                                Points    Notes
=====================================  ========  ==========================================
CPU p95 >= 90 %                        -20       severe; else p95 >= 75 %: -10
Memory max >= 95 %                     -15       severe; else average >= 85 %: -10
Disk free < 10 %                       -25       severe; else < 20 %: -10
Pending patches                        -2 each   at most -10
Services down                          -10 each  at most -20; severe
Active critical alerts                 -15 each  at most -30; severe
Active warning alerts                  -5 each   at most -15
Uptime >= 720 h (30 days)              -5
Device offline                         -10       metrics may be stale
CPU / memory / disk not reported       -5 each
=====================================  ========  ==========================================

"Active" alerts are open or acknowledged ones, and suppressed ones whose suppression has
expired. Verdict: score < 50 is ``critical``; score < 80, or any severe finding, is
``degraded``; otherwise ``healthy``. Percentiles use the nearest-rank method.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from breeze_mcp.db.engine import Row
from breeze_mcp.db.models import alerts, device_notes, devices
from breeze_mcp.db.statements import Prepared, prepared
from breeze_mcp.tools.registry import FinalRead, ToolContext, ToolError, ToolSpec

__all__ = [
    "GET_DEVICE",
    "GET_DEVICE_HEALTH",
    "LIST_DEVICES",
    "MAX_OFFSET",
    "Deduction",
    "DeviceIdInput",
    "HealthAssessment",
    "ListDevicesInput",
    "assess_health",
    "device_not_found",
    "iso",
    "load_device",
    "next_offset",
    "percentile",
]

MAX_OFFSET = 1_000_000
DeviceStatus = Literal["online", "offline", "maintenance"]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


# --------------------------------------------------------------------------- shared helpers


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with offset, or None."""
    return value.isoformat() if value is not None else None


def device_not_found(device_id: uuid.UUID) -> ToolError:
    """The one error for an unknown device id and for another tenant's device id."""
    return ToolError("not_found", f"No device with id {device_id}.")


async def load_device(
    ctx: ToolContext, device_id: uuid.UUID, *, for_update: bool = False
) -> Row:
    """The calling tenant's device, or ToolError('not_found'); the tenant filter is defense
    in depth beside row-level security."""
    query = sa.select(devices).where(
        devices.c.id == device_id, devices.c.tenant_id == ctx.tenant_id
    )
    if for_update:
        query = query.with_for_update()
    row = (await ctx.tx.execute(query)).first()
    if row is None:
        raise device_not_found(device_id)
    return row


def next_offset(offset: int, returned: int, total: int) -> int | None:
    """The offset of the next page, or None when this page is the last."""
    following = offset + returned
    return following if returned and following < total else None


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _ip(value: object) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- metrics parsing


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _numbers(value: object) -> list[float]:
    if not isinstance(value, list):
        return []
    return [n for n in (_number(v) for v in value) if n is not None]


def _strings(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, str)]


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def metrics_summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The latest values of a device's metrics JSON (missing or malformed values are None)."""
    cpu = _numbers(metrics.get("cpu_percent"))
    memory = _numbers(metrics.get("memory_percent"))
    return {
        "cpu_percent_latest": cpu[-1] if cpu else None,
        "memory_percent_latest": memory[-1] if memory else None,
        "disk_free_percent": _number(metrics.get("disk_free_percent")),
        "uptime_hours": _number(metrics.get("uptime_hours")),
        "pending_patches": _strings(metrics.get("pending_patches")),
        "services_down": _strings(metrics.get("services_down")),
    }


# --------------------------------------------------------------------------- health analysis

HEALTHY_MIN_SCORE = 80
DEGRADED_MIN_SCORE = 50
LONG_UPTIME_HOURS = 720


@dataclass(frozen=True)
class Deduction:
    reason: str
    points: int
    severe: bool = False


@dataclass(frozen=True)
class HealthAssessment:
    """The result of :func:`assess_health`; ``as_dict`` is JSON-serialisable."""

    score: int
    verdict: Literal["healthy", "degraded", "critical"]
    findings: list[str]
    deductions: list[Deduction]
    cpu: dict[str, float | int | None]
    memory: dict[str, float | int | None]
    disk_free_percent: float | None
    uptime_hours: float | None
    pending_patches: list[str]
    services_down: list[str]
    active_critical_alerts: int
    active_warning_alerts: int
    status: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "verdict": self.verdict,
            "findings": list(self.findings),
            "deductions": [
                {"reason": d.reason, "points": -d.points, "severe": d.severe}
                for d in self.deductions
            ],
            "cpu_percent": dict(self.cpu),
            "memory_percent": dict(self.memory),
            "disk_free_percent": self.disk_free_percent,
            "uptime_hours": self.uptime_hours,
            "pending_patches": {"count": len(self.pending_patches),
                                "items": list(self.pending_patches)},
            "services_down": list(self.services_down),
            "active_critical_alerts": self.active_critical_alerts,
            "active_warning_alerts": self.active_warning_alerts,
        }


def _capped(count: int, each: int, cap: int) -> int:
    return min(count * each, cap)


def assess_health(
    metrics: Mapping[str, Any],
    *,
    status: str | None = None,
    active_critical_alerts: int = 0,
    active_warning_alerts: int = 0,
) -> HealthAssessment:
    """Score a device's health from its metrics JSON and alert counts (see module docstring)."""
    cpu = _numbers(metrics.get("cpu_percent"))
    memory = _numbers(metrics.get("memory_percent"))
    disk_free = _number(metrics.get("disk_free_percent"))
    uptime = _number(metrics.get("uptime_hours"))
    patches = _strings(metrics.get("pending_patches"))
    services_down = _strings(metrics.get("services_down"))

    cpu_avg = _round(sum(cpu) / len(cpu)) if cpu else None
    cpu_max = max(cpu) if cpu else None
    cpu_p95 = percentile(cpu, 95)
    mem_avg = _round(sum(memory) / len(memory)) if memory else None
    mem_max = max(memory) if memory else None

    deductions: list[Deduction] = []
    notes: list[str] = []

    def deduct(reason: str, points: int, *, severe: bool = False) -> None:
        if points > 0:
            deductions.append(Deduction(reason, points, severe))

    if cpu_p95 is None:
        deduct("CPU usage is not reported, so CPU load cannot be assessed.", 5)
    elif cpu_p95 >= 90:
        deduct(f"CPU is saturated: 95th percentile {cpu_p95:.1f}% (average {cpu_avg}%, "
               f"peak {cpu_max:.1f}%) over the last {len(cpu)} samples.", 20, severe=True)
    elif cpu_p95 >= 75:
        deduct(f"CPU load is high: 95th percentile {cpu_p95:.1f}% (average {cpu_avg}%) "
               f"over the last {len(cpu)} samples.", 10)
    else:
        notes.append(f"CPU load is normal: average {cpu_avg}%, 95th percentile {cpu_p95:.1f}%.")

    if mem_max is None:
        deduct("Memory usage is not reported, so memory pressure cannot be assessed.", 5)
    elif mem_max >= 95:
        deduct(f"Memory is exhausted at times: peak {mem_max:.1f}% (average {mem_avg}%).",
               15, severe=True)
    elif mem_avg is not None and mem_avg >= 85:
        deduct(f"Memory pressure is high: average {mem_avg}% (peak {mem_max:.1f}%).", 10)
    else:
        notes.append(f"Memory usage is normal: average {mem_avg}%, peak {mem_max:.1f}%.")

    if disk_free is None:
        deduct("Free disk space is not reported.", 5)
    elif disk_free < 10:
        deduct(f"Disk space is critically low: {disk_free:g}% free.", 25, severe=True)
    elif disk_free < 20:
        deduct(f"Disk space is getting low: {disk_free:g}% free.", 10)
    else:
        notes.append(f"Disk space is fine: {disk_free:g}% free.")

    if patches:
        deduct(f"{len(patches)} pending patch(es): {', '.join(patches)}.",
               _capped(len(patches), 2, 10))
    if services_down:
        deduct(f"{len(services_down)} service(s) down: {', '.join(services_down)}.",
               _capped(len(services_down), 10, 20), severe=True)
    if active_critical_alerts:
        deduct(f"{active_critical_alerts} active critical alert(s).",
               _capped(active_critical_alerts, 15, 30), severe=True)
    if active_warning_alerts:
        deduct(f"{active_warning_alerts} active warning alert(s).",
               _capped(active_warning_alerts, 5, 15))
    if uptime is not None and uptime >= LONG_UPTIME_HOURS:
        deduct(f"Not restarted for {uptime / 24:.0f} days; updates may be waiting for a "
               "reboot.", 5)
    if status == "offline":
        deduct("The device is offline; its metrics may be stale.", 10)
    elif status == "maintenance":
        notes.append("The device is in maintenance mode.")

    score = max(0, 100 - sum(d.points for d in deductions))
    verdict: Literal["healthy", "degraded", "critical"]
    if score < DEGRADED_MIN_SCORE:
        verdict = "critical"
    elif score < HEALTHY_MIN_SCORE or any(d.severe for d in deductions):
        verdict = "degraded"
    else:
        verdict = "healthy"

    findings = [f"{d.reason} (-{d.points})" for d in deductions]
    if not deductions:
        findings.append("No problems found.")
    findings.extend(notes)

    return HealthAssessment(
        score=score,
        verdict=verdict,
        findings=findings,
        deductions=deductions,
        cpu={"avg": cpu_avg, "max": cpu_max, "p95": cpu_p95, "samples": len(cpu)},
        memory={"avg": mem_avg, "max": mem_max, "samples": len(memory)},
        disk_free_percent=disk_free,
        uptime_hours=uptime,
        pending_patches=patches,
        services_down=services_down,
        active_critical_alerts=active_critical_alerts,
        active_warning_alerts=active_warning_alerts,
        status=status,
    )


# --------------------------------------------------------------------------- input models


class ListDevicesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site: ShortText | None = Field(
        default=None, description="Only devices at this site (case-insensitive), e.g. 'hq'."
    )
    status: DeviceStatus | None = Field(
        default=None, description="Only devices with this status."
    )
    os_family: ShortText | None = Field(
        default=None,
        description="Only devices of this OS family (case-insensitive): windows, linux, macos.",
    )
    tag: ShortText | None = Field(
        default=None, description="Only devices carrying this tag (exact match), e.g. 'critical'."
    )
    search: ShortText | None = Field(
        default=None, description="Case-insensitive substring of the hostname."
    )
    limit: int = Field(default=25, ge=1, le=100, description="Page size (1-100).")
    offset: int = Field(
        default=0, ge=0, le=MAX_OFFSET,
        description="Number of devices to skip; use next_offset from the previous page.",
    )


class DeviceIdInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: uuid.UUID = Field(description="The device's id (UUID), as listed by list_devices.")


# --------------------------------------------------------------------------- handlers


def _summary(row: Row) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "hostname": row.hostname,
        "site": row.site,
        "os_family": row.os_family,
        "os_version": row.os_version,
        "status": row.status,
        "ip_address": _ip(row.ip_address),
        "tags": list(row.tags),
        "last_seen_at": iso(row.last_seen_at),
    }


_SUMMARY_COLUMNS = (
    "id, hostname, site, os_family, os_version, status, ip_address, tags, last_seen_at"
)
# The filters a call may set, each a condition on its own parameter. Each set of filters is
# its own statement (PostgreSQL plans the filters actually given), prepared once per
# connection; the one without filters, the common call, is prepared when a connection opens.
# RLS scopes it; the tenant filter ($1) is defense in depth.
_CONDITIONS = {
    "site": "lower(site) = {}",
    "status": "status = {}",
    "os_family": "lower(os_family) = {}",
    "tag": "tags @> ARRAY[{}::text]",
    "search": "hostname ILIKE {} ESCAPE '\\'",
}


@functools.lru_cache(maxsize=len(_CONDITIONS) ** 2 * 2)
def _list_statement(filters: tuple[str, ...]) -> Prepared:
    """The page of summary columns (the id as text: it is shown as text) and the number of
    matches, the latter also for a page past the end (then the one row has only the total)."""
    where = " AND ".join(["tenant_id = $1::uuid", *(
        _CONDITIONS[name].format(f"${n}") for n, name in enumerate(filters, 2))])
    limit, offset = len(filters) + 2, len(filters) + 3
    return prepared(
        "SELECT page.id::text AS id, page.hostname, page.site, page.os_family,"  # noqa: S608
        " page.os_version, page.status, page.ip_address, page.tags, page.last_seen_at,"
        " matched.total"
        f" FROM (SELECT count(*) AS total FROM devices WHERE {where}) AS matched"
        f" LEFT JOIN LATERAL (SELECT {_SUMMARY_COLUMNS} FROM devices WHERE {where}"
        f" ORDER BY hostname, id LIMIT ${limit} OFFSET ${offset}) AS page ON true"
        " ORDER BY page.hostname, page.id"
    )


_list_statement(())  # the common call's, declared now: prepared when a connection opens


async def list_devices(ctx: ToolContext, args: ListDevicesInput) -> FinalRead:
    given = {
        "site": None if args.site is None else args.site.lower(),
        "status": args.status,
        "os_family": None if args.os_family is None else args.os_family.lower(),
        "tag": args.tag,
        "search": None if args.search is None else f"%{_escape_like(args.search)}%",
    }
    filters = tuple(name for name, value in given.items() if value is not None)
    params = (str(ctx.tenant_id), *(given[name] for name in filters), args.limit, args.offset)

    def shape(rows: list[Row]) -> dict[str, Any]:
        total = int(rows[0].total)
        page = [row for row in rows if row.id is not None]
        return {
            "devices": [{  # _summary's fields, inline: this runs per row of every call
                "id": row.id, "hostname": row.hostname, "site": row.site,
                "os_family": row.os_family, "os_version": row.os_version,
                "status": row.status, "ip_address": row.ip_address, "tags": list(row.tags),
                "last_seen_at": None if row.last_seen_at is None
                else row.last_seen_at.isoformat(),
            } for row in page],
            "total": total,
            "next_offset": next_offset(args.offset, len(page), total),
        }

    return FinalRead(_list_statement(filters), params, shape)


async def _alert_counts(ctx: ToolContext, device_id: uuid.UUID) -> dict[str, int]:
    rows = (
        await ctx.tx.execute(
            sa.select(alerts.c.status, sa.func.count())
            .where(alerts.c.device_id == device_id, alerts.c.tenant_id == ctx.tenant_id)
            .group_by(alerts.c.status)
        )
    ).all()
    return {status: count for status, count in rows}


async def get_device(ctx: ToolContext, args: DeviceIdInput) -> dict[str, Any]:
    row = await load_device(ctx, args.device_id)
    counts = await _alert_counts(ctx, row.id)
    note_count = (
        await ctx.tx.execute(
            sa.select(sa.func.count())
            .select_from(device_notes)
            .where(device_notes.c.device_id == row.id,
                   device_notes.c.tenant_id == ctx.tenant_id)
        )
    ).scalar_one()
    metrics = row.metrics if isinstance(row.metrics, Mapping) else {}
    return {
        **_summary(row),
        "agent_version": row.agent_version,
        "created_at": iso(row.created_at),
        "metrics": metrics_summary(metrics),
        "open_alert_count": counts.get("open", 0),
        "alert_counts": {s: counts.get(s, 0) for s in ("open", "acknowledged", "suppressed",
                                                         "resolved")},
        "note_count": note_count,
    }


async def get_device_health(ctx: ToolContext, args: DeviceIdInput) -> dict[str, Any]:
    row = await load_device(ctx, args.device_id)
    active = sa.or_(
        sa.or_(alerts.c.status == "open", alerts.c.status == "acknowledged"),
        sa.and_(alerts.c.status == "suppressed", alerts.c.suppressed_until < sa.func.now()),
    )
    rows = (
        await ctx.tx.execute(
            sa.select(alerts.c.severity, sa.func.count())
            .where(alerts.c.device_id == row.id, alerts.c.tenant_id == ctx.tenant_id, active)
            .group_by(alerts.c.severity)
        )
    ).all()
    severity_counts: dict[str, int] = {severity: count for severity, count in rows}
    metrics = row.metrics if isinstance(row.metrics, Mapping) else {}
    assessment = assess_health(
        metrics,
        status=row.status,
        active_critical_alerts=severity_counts.get("critical", 0),
        active_warning_alerts=severity_counts.get("warning", 0),
    )
    return {
        "device_id": str(row.id),
        "hostname": row.hostname,
        "status": row.status,
        "last_seen_at": iso(row.last_seen_at),
        **assessment.as_dict(),
    }


# --------------------------------------------------------------------------- specs

LIST_DEVICES = ToolSpec(
    name="list_devices",
    title="List devices",
    description=(
        "List the managed devices (servers, workstations, NAS) of the current customer, "
        "sorted by hostname. Optionally filter by site, status (online, offline, "
        "maintenance), OS family, tag, or a case-insensitive hostname substring. Returns a "
        "page of device summaries (id, hostname, site, OS, status, IP, tags, last seen), the "
        "total number of matches and next_offset (null on the last page; pass it as offset to "
        "get the next page). Use this first to find a device's id for the other tools. "
        "Read-only."
    ),
    input_model=ListDevicesInput,
    base_tier=1,
    handler=list_devices,
)

GET_DEVICE = ToolSpec(
    name="get_device",
    title="Get device details",
    description=(
        "Get everything known about one device by its id: hostname, site, OS and version, "
        "agent version, status, IP, tags, last-seen time, a summary of its latest metrics "
        "(CPU and memory percent, free disk percent, uptime hours, pending patches, services "
        "down), its alert counts by status and its number of notes. An unknown id gives a "
        "not_found error. Read-only."
    ),
    input_model=DeviceIdInput,
    base_tier=1,
    handler=get_device,
)

GET_DEVICE_HEALTH = ToolSpec(
    name="get_device_health",
    title="Analyse device health",
    description=(
        "Analyse one device's health from its last 24 hours of metrics and its alerts. "
        "Returns CPU average/peak/95th percentile, memory average/peak, free disk, uptime, "
        "pending patches, services down, active critical and warning alerts, a 0-100 score, "
        "a verdict (healthy, degraded or critical) and findings in plain words, each with the "
        "points it cost. Scoring: CPU p95 >= 90% -20 (>= 75% -10); memory peak >= 95% -15 "
        "(average >= 85% -10); disk free < 10% -25 (< 20% -10); -2 per pending patch (max "
        "-10); -10 per service down (max -20); -15 per active critical alert (max -30); -5 "
        "per active warning alert (max -15); uptime >= 30 days -5; offline -10; each of CPU, "
        "memory, disk unreported -5. Score < 50 is critical; < 80, or any severe finding "
        "(saturated CPU, exhausted memory, disk < 10%, service down, critical alert), is "
        "degraded. Use it to triage before acting. Read-only."
    ),
    input_model=DeviceIdInput,
    base_tier=1,
    handler=get_device_health,
)
