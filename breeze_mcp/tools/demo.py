"""Sample RMM data (devices with metric history, alerts, a note) for a tenant.

Idempotent: devices are keyed by hostname, so running it twice adds nothing the second time.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from breeze_mcp import audit
from breeze_mcp.db import Database
from breeze_mcp.db.models import alerts, device_notes, devices

__all__ = ["DemoResult", "seed_demo_data"]

_DEVICES = [
    ("HQ-DC01", "hq", "windows", "Windows Server 2022", ["domain-controller", "critical"]),
    ("HQ-FS01", "hq", "windows", "Windows Server 2019", ["file-server"]),
    ("HQ-WS-ACCT01", "hq", "windows", "Windows 11 23H2", ["workstation", "accounting"]),
    ("HQ-WS-ACCT02", "hq", "windows", "Windows 11 23H2", ["workstation", "accounting"]),
    ("HQ-WS-SALES01", "hq", "windows", "Windows 10 22H2", ["workstation", "sales"]),
    ("HQ-MAC-DESIGN01", "hq", "macos", "macOS 14.5", ["workstation", "design"]),
    ("BR-WEB01", "branch", "linux", "Ubuntu 22.04 LTS", ["web", "critical"]),
    ("BR-DB01", "branch", "linux", "Debian 12", ["database", "critical"]),
    ("BR-WS-FRONT01", "branch", "windows", "Windows 11 23H2", ["workstation"]),
    ("BR-NAS01", "branch", "linux", "TrueNAS SCALE 24.04", ["storage"]),
]

_ALERTS = [
    ("HQ-DC01", "critical", "Disk space low on C:", "C: has 6% free space left", "open"),
    ("HQ-FS01", "warning", "Backup job failed", "Nightly backup exited with code 2", "open"),
    ("BR-DB01", "critical", "High CPU", "CPU above 95% for 15 minutes", "acknowledged"),
    ("HQ-WS-SALES01", "warning", "Antivirus definitions outdated", "Last update 9 days ago",
     "open"),
    ("BR-WEB01", "info", "TLS certificate renews in 20 days", "CN=www.example.com", "open"),
    ("HQ-WS-ACCT01", "warning", "Pending reboot", "Reboot required for updates", "resolved"),
    ("BR-NAS01", "critical", "RAID degraded", "Disk 3 of 4 reports SMART errors", "open"),
    ("HQ-MAC-DESIGN01", "info", "OS update available", "macOS 14.6 is available",
     "suppressed"),
]


@dataclass(frozen=True)
class DemoResult:
    devices_created: int
    alerts_created: int


def _metrics(rng: random.Random, hostname: str) -> dict[str, object]:
    heavy = "DB" in hostname or "DC" in hostname
    base = 55 if heavy else 20
    cpu = [
        round(min(100.0, max(0.0, base + 25 * math.sin(i / 3) + rng.uniform(-8, 8))), 1)
        for i in range(24)
    ]
    mem = [round(min(100.0, max(5.0, base + 15 + rng.uniform(-5, 10))), 1) for _ in range(24)]
    return {
        "cpu_percent": cpu,
        "memory_percent": mem,
        "disk_free_percent": 6 if hostname == "HQ-DC01" else rng.randint(15, 80),
        "uptime_hours": rng.randint(2, 2000),
        "pending_patches": rng.sample(
            ["KB5034441", "KB5035845", "KB5036893", "openssl-3.0.13", "linux-image-6.1.0-21"],
            k=rng.randint(0, 3),
        ),
        "services_down": ["VSS"] if hostname == "HQ-FS01" else [],
    }


async def seed_demo_data(db: Database, tenant_id: uuid.UUID, *, seed: int = 7) -> DemoResult:
    rng = random.Random(seed)  # noqa: S311 - sample data, not security
    created = 0
    alerts_created = 0
    async with db.tenant(tenant_id) as conn:
        ids: dict[str, uuid.UUID] = {}
        for i, (hostname, site, family, version, tags) in enumerate(_DEVICES):
            row = (
                await conn.execute(
                    insert(devices)
                    .values(
                        tenant_id=tenant_id,
                        hostname=hostname,
                        site=site,
                        os_family=family,
                        os_version=version,
                        agent_version="2.4.1",
                        status="offline" if hostname == "BR-WS-FRONT01" else "online",
                        ip_address=f"10.{1 if site == 'hq' else 2}.0.{10 + i}",
                        tags=tags,
                        metrics=_metrics(rng, hostname),
                        last_seen_at=sa.text(f"now() - interval '{rng.randint(1, 300)} seconds'"),
                    )
                    .on_conflict_do_nothing(index_elements=["tenant_id", "hostname"])
                    .returning(devices.c.id)
                )
            ).first()
            if row is not None:
                ids[hostname] = row.id
                created += 1
        for hostname, severity, title, message, status in _ALERTS:
            if hostname not in ids:
                continue
            await conn.execute(
                alerts.insert().values(
                    tenant_id=tenant_id,
                    device_id=ids[hostname],
                    severity=severity,
                    title=title,
                    message=message,
                    status=status,
                )
            )
            alerts_created += 1
        if "HQ-DC01" in ids:
            await conn.execute(
                device_notes.insert().values(
                    tenant_id=tenant_id,
                    device_id=ids["HQ-DC01"],
                    author="system:demo",
                    body="Primary domain controller. Schedule maintenance after 19:00 only.",
                )
            )
        await conn.finish(audit.AuditEntry(
                actor_type="system",
                actor_id="system:demo",
                auth_path="cli",
                action="demo_data.seed",
                decision="allowed",
                outcome="success",
                tenant_id=tenant_id,
                parameters={"devices": created, "alerts": alerts_created},
            ))
    return DemoResult(devices_created=created, alerts_created=alerts_created)
