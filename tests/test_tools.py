"""The RMM tools, called directly (no HTTP, no gate) against the real database.

Each call runs in its own tenant transaction with row-level security, like the call pipeline
runs it. Cross-tenant tests check that another tenant's id behaves exactly like an unknown id
and that nothing of the other tenant changes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from breeze_mcp.auth.accounts import Tenant
from breeze_mcp.db import Database
from breeze_mcp.db.models import (
    alerts,
    device_notes,
    devices,
    isolation_events,
    patch_jobs,
    script_runs,
)
from breeze_mcp.tools import ALL_TOOLS, default_registry
from breeze_mcp.tools.devices import assess_health, percentile
from breeze_mcp.tools.registry import BLOCKED_TIER, FinalRead, ToolContext, ToolError, ToolSpec

pytestmark = pytest.mark.anyio

ACTOR = "api_key:test"
REGISTRY = default_registry()
TENANT_TABLES = (devices, alerts, device_notes, script_runs, patch_jobs, isolation_events)
SOME_ID = "6f1c1e9e-3c55-4a57-9d59-6d7d1c1f0a01"

EXPECTED_TIERS = {
    "list_devices": 1,
    "get_device": 1,
    "get_device_health": 1,
    "query_alerts": 1,
    "list_notes": 1,
    "manage_alert": 2,
    "add_note": 2,
    "manage_device": 2,
    "run_script": 3,
    "deploy_patches": 3,
    "isolate_device": 3,
    "wipe_device": 4,
    "delete_tenant": 4,
    "disable_audit_log": 4,
}

#: Minimal valid arguments of every tool (ids are placeholders).
VALID_ARGS: dict[str, dict[str, Any]] = {
    "list_devices": {},
    "get_device": {"device_id": SOME_ID},
    "get_device_health": {"device_id": SOME_ID},
    "query_alerts": {},
    "list_notes": {"device_id": SOME_ID},
    "manage_alert": {"alert_id": SOME_ID, "action": "acknowledge"},
    "add_note": {"device_id": SOME_ID, "body": "checked"},
    "manage_device": {"device_id": SOME_ID, "action": "set_maintenance"},
    "run_script": {"device_id": SOME_ID, "interpreter": "bash", "script": "uptime"},
    "deploy_patches": {"device_id": SOME_ID, "patches": ["KB5034441"]},
    "isolate_device": {"device_id": SOME_ID, "action": "isolate", "reason": "ransomware"},
    "wipe_device": {"device_id": SOME_ID},
    "delete_tenant": {"confirm_slug": "acme"},
    "disable_audit_log": {"reason": "testing"},
}


# --------------------------------------------------------------------------- helpers


def spec(name: str) -> ToolSpec:
    tool = REGISTRY.get(name)
    assert tool is not None, name
    return tool


async def call(
    db: Database, tenant: Tenant, name: str, args: Mapping[str, Any], *, actor: str = ACTOR
) -> dict[str, Any]:
    """Validate the arguments and run the handler in one tenant transaction."""
    tool = spec(name)
    assert tool.handler is not None
    model = tool.input_model.model_validate(dict(args))
    async with db.tenant(tenant.id) as tx:
        outcome = await tool.handler(ToolContext(tx, tenant.id, actor), model)
        if isinstance(outcome, FinalRead):
            result = outcome.shape(await tx.finish(None, final=(outcome.statement,
                                                                 outcome.params)))
        else:
            result = outcome
            await tx.finish(None)
    json.dumps(result)  # JSON-serialisable, UUIDs and datetimes as strings
    return dict(result)


async def call_error(
    db: Database, tenant: Tenant, name: str, args: Mapping[str, Any]
) -> ToolError:
    with pytest.raises(ToolError) as caught:
        await call(db, tenant, name, args)
    return caught.value


async def rows(db: Database, tenant: Tenant, query: sa.Select[Any]) -> list[sa.Row[Any]]:
    async with db.tenant(tenant.id) as conn:
        return list((await conn.execute(query)).all())


async def device_ids(db: Database, tenant: Tenant) -> dict[str, uuid.UUID]:
    found = await rows(db, tenant, sa.select(devices.c.hostname, devices.c.id))
    return {r.hostname: r.id for r in found}


async def alert_ids(db: Database, tenant: Tenant) -> dict[str, uuid.UUID]:
    found = await rows(db, tenant, sa.select(alerts.c.title, alerts.c.id))
    return {r.title: r.id for r in found}


async def snapshot(db: Database, tenant: Tenant) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every tenant table the tools touch, as the tenant sees it."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    for table in TENANT_TABLES:
        found = await rows(db, tenant, sa.select(table).order_by(table.c.id))
        result[table.name] = [tuple(r) for r in found]
    return result


async def count(db: Database, tenant: Tenant, table: sa.Table) -> int:
    found = await rows(db, tenant, sa.select(sa.func.count()).select_from(table))
    return int(found[0][0])


def shape(error: ToolError, entity_id: uuid.UUID | str) -> tuple[str, str]:
    """The error with the id the caller passed blanked out: must not depend on whose id."""
    return error.code, error.message.replace(str(entity_id), "<id>")


# --------------------------------------------------------------------------- registry


@pytest.mark.req("TOOLS-RMM")
def test_registry_holds_every_tool_with_its_tier() -> None:
    assert {t.name: t.base_tier for t in REGISTRY} == EXPECTED_TIERS
    assert len(REGISTRY) == len(ALL_TOOLS) == len(EXPECTED_TIERS)
    assert default_registry() is not REGISTRY  # a fresh registry each time


@pytest.mark.req("TOOLS-RMM")
@pytest.mark.parametrize("tool", ALL_TOOLS, ids=lambda t: t.name)
def test_every_tool_is_described_with_an_object_schema(tool: ToolSpec) -> None:
    schema = tool.input_schema()
    assert schema["type"] == "object"
    assert schema.get("additionalProperties") is False
    assert isinstance(schema["properties"], dict)
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{tool.name}.{name} has no description"
    assert len(tool.description) > 60
    assert tool.title
    json.dumps(schema)


@pytest.mark.req("TOOLS-RMM")
@pytest.mark.parametrize(("tier", "has_handler"), [(1, False), (2, False), (3, False),
                                                   (BLOCKED_TIER, True)])
def test_a_tool_has_a_handler_exactly_when_it_is_not_tier4(tier: int, has_handler: bool) -> None:
    """The registry refuses to build a Tier 4 tool that could run, or another without a
    handler, so the rule holds for any tool anyone adds, not only for today's list."""
    listed = spec("list_devices")
    with pytest.raises(ValueError, match="Tier 4 tools have no handler"):
        ToolSpec(name="odd_tool", description="a tool against the rule",
                 input_model=listed.input_model, base_tier=tier,
                 handler=listed.handler if has_handler else None)


@pytest.mark.req("TOOLS-RMM")
@pytest.mark.parametrize(
    ("name", "arguments", "tier"),
    [
        ("manage_alert", {"action": "acknowledge"}, 2),
        ("manage_alert", {"action": "resolve"}, 2),
        ("manage_alert", {"action": "suppress"}, 2),
        ("manage_alert", {"action": "delete"}, 4),
        ("manage_alert", {"action": 1}, 4),
        ("manage_alert", {}, 4),
        ("manage_alert", None, 4),
        ("manage_device", {"action": "set_maintenance"}, 2),
        ("manage_device", {"action": "clear_maintenance"}, 2),
        ("manage_device", {"action": "reboot"}, 3),
        ("manage_device", {"action": "factory_reset"}, 4),
        ("isolate_device", {"action": "isolate"}, 3),
        ("isolate_device", {"action": "release"}, 3),
        ("list_devices", {"action": "anything"}, 1),
        ("run_script", {}, 3),
        ("wipe_device", {}, 4),
    ],
)
def test_effective_tier(name: str, arguments: dict[str, Any] | None, tier: int) -> None:
    assert spec(name).effective_tier(arguments) == tier


@pytest.mark.req("TOOLS-RMM")
@pytest.mark.parametrize("tool", [t for t in ALL_TOOLS if t.action_tiers], ids=lambda t: t.name)
def test_action_tiers_name_exactly_the_model_actions(tool: ToolSpec) -> None:
    """Every action the model accepts has a tier, and every tiered action is accepted."""
    action = tool.input_schema()["properties"]["action"]
    assert set(action["enum"]) == set(tool.action_tiers)
    assert "action" in tool.input_schema()["required"]


@pytest.mark.req("TOOLS-RMM")
def test_tier_range_of_manage_device_and_run_script_rate_limit() -> None:
    manage = spec("manage_device")
    assert (manage.min_tier, manage.max_tier) == (2, 3)
    assert spec("run_script").rate_limit == "5/5minute"
    assert {t.name for t in REGISTRY.listable(2)} == {
        n for n, tier in EXPECTED_TIERS.items() if tier <= 2
    }


# --------------------------------------------------------------------------- validation


@pytest.mark.req("TOOLS-RMM")
@pytest.mark.parametrize("name", sorted(VALID_ARGS))
def test_valid_arguments_pass_and_extra_fields_are_forbidden(name: str) -> None:
    model = spec(name).input_model
    model.model_validate(VALID_ARGS[name])
    with pytest.raises(ValidationError, match="tenant_id"):
        model.model_validate({**VALID_ARGS[name], "tenant_id": SOME_ID})


INVALID_ARGS = [
    ("list_devices", {"limit": 0}),
    ("list_devices", {"limit": 101}),
    ("list_devices", {"offset": -1}),
    ("list_devices", {"status": "broken"}),
    ("list_devices", {"search": ""}),
    ("list_devices", {"search": "x" * 101}),
    ("get_device", {"device_id": "not-a-uuid"}),
    ("get_device", {}),
    ("query_alerts", {"severity": "fatal"}),
    ("query_alerts", {"status": "closed"}),
    ("query_alerts", {"limit": 500}),
    ("list_notes", {"device_id": SOME_ID, "limit": 0}),
    ("manage_alert", {"alert_id": SOME_ID, "action": "delete"}),
    ("manage_alert", {"alert_id": SOME_ID, "action": "suppress"}),
    ("manage_alert", {"alert_id": SOME_ID, "action": "suppress", "suppress_minutes": 0}),
    ("manage_alert", {"alert_id": SOME_ID, "action": "suppress", "suppress_minutes": 10081}),
    ("manage_alert", {"alert_id": SOME_ID, "action": "resolve", "suppress_minutes": 5}),
    ("manage_alert", {"alert_id": SOME_ID, "action": "resolve", "comment": "x" * 1001}),
    ("add_note", {"device_id": SOME_ID, "body": "   "}),
    ("add_note", {"device_id": SOME_ID, "body": "x" * 4001}),
    ("manage_device", {"device_id": SOME_ID, "action": "wipe"}),
    ("run_script", {"device_id": SOME_ID, "interpreter": "zsh", "script": "ls"}),
    ("run_script", {"device_id": SOME_ID, "interpreter": "bash", "script": ""}),
    ("run_script", {"device_id": SOME_ID, "interpreter": "bash", "script": " \n "}),
    ("run_script", {"device_id": SOME_ID, "interpreter": "bash", "script": "x" * 20001}),
    ("run_script", {"device_id": SOME_ID, "interpreter": "bash", "script": "ls",
                    "timeout_seconds": 9}),
    ("run_script", {"device_id": SOME_ID, "interpreter": "bash", "script": "ls",
                    "timeout_seconds": 3601}),
    ("deploy_patches", {"device_id": SOME_ID, "patches": []}),
    ("deploy_patches", {"device_id": SOME_ID, "patches": [f"KB{i}" for i in range(51)]}),
    ("deploy_patches", {"device_id": SOME_ID, "patches": ["KB1; rm -rf /"]}),
    ("deploy_patches", {"device_id": SOME_ID, "patches": ["x" * 101]}),
    ("deploy_patches", {"device_id": SOME_ID, "patches": ["KB1"], "reboot": "sometimes"}),
    ("isolate_device", {"device_id": SOME_ID, "action": "quarantine", "reason": "x"}),
    ("isolate_device", {"device_id": SOME_ID, "action": "isolate", "reason": " "}),
    ("isolate_device", {"device_id": SOME_ID, "action": "isolate", "reason": "x" * 501}),
    ("delete_tenant", {"confirm_slug": "Not A Slug"}),
    ("disable_audit_log", {"reason": ""}),
]


@pytest.mark.req("TOOLS-RMM")
@pytest.mark.parametrize(("name", "arguments"), INVALID_ARGS)
def test_invalid_arguments_are_refused(name: str, arguments: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        spec(name).input_model.model_validate(arguments)


@pytest.mark.req("TOOLS-RMM")
def test_bounds_are_inclusive_and_inputs_normalised() -> None:
    listing = spec("list_devices").input_model.model_validate({"limit": 100, "offset": 0})
    assert listing.model_dump()["limit"] == 100
    assert spec("list_devices").input_model.model_validate({}).model_dump()["limit"] == 25
    note = spec("add_note").input_model.model_validate(
        {"device_id": SOME_ID, "body": "  " + "x" * 4000 + "\n"}
    )
    assert note.model_dump()["body"] == "x" * 4000
    script = spec("run_script").input_model.model_validate(
        {"device_id": SOME_ID, "interpreter": "python", "script": "x" * 20000,
         "timeout_seconds": 3600}
    ).model_dump()
    assert script["timeout_seconds"] == 3600
    assert spec("run_script").input_model.model_validate(VALID_ARGS["run_script"]).model_dump()[
        "timeout_seconds"] == 300
    patches = spec("deploy_patches").input_model.model_validate(
        {"device_id": SOME_ID, "patches": ["KB1", "openssl-3.0.13", "KB1", "a:b+c_d.e"]}
    ).model_dump()
    assert patches["patches"] == ["KB1", "openssl-3.0.13", "a:b+c_d.e"]
    assert patches["reboot"] == "if_required"
    suppress = spec("manage_alert").input_model.model_validate(
        {"alert_id": SOME_ID, "action": "suppress", "suppress_minutes": 10080,
         "comment": "x" * 1000}
    ).model_dump()
    assert suppress["suppress_minutes"] == 10080


# --------------------------------------------------------------------------- health analysis

GOOD = {
    "cpu_percent": [20.0] * 24,
    "memory_percent": [40.0] * 24,
    "disk_free_percent": 60,
    "uptime_hours": 100,
    "pending_patches": [],
    "services_down": [],
}


@pytest.mark.req("TOOLS-RMM")
def test_percentile_nearest_rank() -> None:
    assert percentile([], 95) is None
    assert percentile([7.0], 95) == 7.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0
    one_spike = [10.0] * 23 + [100.0]
    assert percentile(one_spike, 95) == 10.0
    assert percentile([10.0] * 22 + [100.0, 100.0], 95) == 100.0


@pytest.mark.req("TOOLS-RMM")
def test_health_of_a_healthy_device() -> None:
    result = assess_health(GOOD, status="online")
    assert (result.score, result.verdict) == (100, "healthy")
    assert result.findings[0] == "No problems found."
    assert result.cpu == {"avg": 20.0, "max": 20.0, "p95": 20.0, "samples": 24}
    assert result.memory == {"avg": 40.0, "max": 40.0, "samples": 24}
    json.dumps(result.as_dict())


@pytest.mark.req("TOOLS-RMM")
def test_health_of_a_failing_device() -> None:
    metrics = {
        "cpu_percent": [97.0] * 24,
        "memory_percent": [96.0] * 24,
        "disk_free_percent": 4,
        "uptime_hours": 2000,
        "pending_patches": ["KB1", "KB2", "KB3", "KB4", "KB5", "KB6"],
        "services_down": ["VSS", "Spooler", "DNS"],
    }
    result = assess_health(metrics, status="offline", active_critical_alerts=3,
                           active_warning_alerts=4)
    points = {d.reason.split(":")[0]: d.points for d in result.deductions}
    assert points["CPU is saturated"] == 20
    assert points["Memory is exhausted at times"] == 15
    assert points["Disk space is critically low"] == 25
    assert points["6 pending patch(es)"] == 10  # capped
    assert points["3 service(s) down"] == 20  # capped
    assert points["3 active critical alert(s)."] == 30  # capped
    assert points["4 active warning alert(s)."] == 15  # capped
    # Every rule at its cap, offline and a long uptime: 150 points, and the score floors at 0.
    assert sum(d.points for d in result.deductions) == 20 + 15 + 25 + 10 + 20 + 30 + 15 + 5 + 10
    assert (result.score, result.verdict) == (0, "critical")
    assert any("offline" in f for f in result.findings)
    assert any("83 days" in f for f in result.findings)
    assert result.as_dict()["pending_patches"]["count"] == 6


@pytest.mark.req("TOOLS-RMM")
@pytest.mark.parametrize(
    ("changes", "kwargs", "score", "verdict"),
    [
        ({"cpu_percent": [80.0] * 24}, {}, 90, "healthy"),  # high CPU: -10, not severe
        ({"cpu_percent": [10.0] * 23 + [100.0]}, {}, 100, "healthy"),  # one spike only
        ({"memory_percent": [88.0] * 24}, {}, 90, "healthy"),
        ({"disk_free_percent": 15}, {}, 90, "healthy"),
        ({"disk_free_percent": 8}, {}, 75, "degraded"),
        ({"pending_patches": ["KB1", "KB2"]}, {}, 96, "healthy"),
        ({"services_down": ["VSS"]}, {}, 90, "degraded"),  # severe caps the verdict
        ({}, {"active_critical_alerts": 1}, 85, "degraded"),
        ({}, {"active_warning_alerts": 2}, 90, "healthy"),
        ({"uptime_hours": 720}, {}, 95, "healthy"),
        ({}, {"status": "offline"}, 90, "healthy"),
        ({"disk_free_percent": 5, "cpu_percent": [95.0] * 24}, {}, 55, "degraded"),
        ({"disk_free_percent": 5, "cpu_percent": [95.0] * 24,
          "memory_percent": [99.0] * 24}, {}, 40, "critical"),
    ],
)
def test_health_deductions(
    changes: dict[str, Any], kwargs: dict[str, Any], score: int, verdict: str
) -> None:
    result = assess_health({**GOOD, **changes}, **kwargs)
    assert (result.score, result.verdict) == (score, verdict)
    # No row scores 0 (where the floor would hide points): the deductions are the whole loss.
    assert score > 0
    assert sum(d.points for d in result.deductions) == 100 - score
    assert all(f.endswith(f"(-{d.points})") for f, d in zip(result.findings, result.deductions,
                                                             strict=False))


@pytest.mark.req("TOOLS-RMM")
def test_health_with_missing_or_malformed_metrics() -> None:
    result = assess_health({})
    assert result.score == 85  # CPU, memory and disk unreported: -5 each
    assert result.cpu["samples"] == 0 and result.cpu["p95"] is None
    assert sum("not reported" in f for f in result.findings) == 3
    odd = assess_health({
        "cpu_percent": ["high", True, None, 50, float("nan")],
        "memory_percent": "lots",
        "disk_free_percent": "10",
        "uptime_hours": None,
        "pending_patches": "KB1",
        "services_down": [1, "VSS"],
    })
    assert odd.cpu["samples"] == 1 and odd.cpu["avg"] == 50.0
    assert odd.memory["samples"] == 0
    assert odd.disk_free_percent is None
    assert odd.pending_patches == [] and odd.services_down == ["VSS"]
    json.dumps(odd.as_dict())


# --------------------------------------------------------------------------- Tier 1 reads


@pytest.mark.req("TOOLS-RMM")
async def test_list_devices_defaults(db: Database, tenant_a: Tenant) -> None:
    result = await call(db, tenant_a, "list_devices", {})
    assert result["total"] == 10
    assert result["next_offset"] is None
    hostnames = [d["hostname"] for d in result["devices"]]
    assert hostnames == sorted(hostnames)
    first = result["devices"][0]
    assert set(first) == {"id", "hostname", "site", "os_family", "os_version", "status",
                          "ip_address", "tags", "last_seen_at"}
    uuid.UUID(first["id"])
    datetime.fromisoformat(first["last_seen_at"])
    assert first["ip_address"].startswith("10.")


@pytest.mark.req("TOOLS-RMM")
@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"site": "hq"}, 6),
        ({"site": "HQ"}, 6),
        ({"site": "nowhere"}, 0),
        ({"status": "offline"}, 1),
        ({"status": "maintenance"}, 0),
        ({"os_family": "LINUX"}, 3),
        ({"tag": "critical"}, 3),
        ({"tag": "workstation"}, 5),
        ({"search": "ws-acct"}, 2),
        ({"search": "01"}, 9),
        ({"search": "%"}, 0),  # LIKE wildcards are matched literally
        ({"search": "_"}, 0),
        ({"search": "\\"}, 0),
        ({"site": "branch", "tag": "critical", "os_family": "linux"}, 2),
    ],
)
async def test_list_devices_filters(
    db: Database, tenant_a: Tenant, filters: dict[str, Any], expected: int
) -> None:
    result = await call(db, tenant_a, "list_devices", filters)
    assert result["total"] == expected == len(result["devices"])
    for device in result["devices"]:
        if "site" in filters:
            assert device["site"] == filters["site"].lower()
        if "tag" in filters:
            assert filters["tag"] in device["tags"]


@pytest.mark.req("TOOLS-RMM")
async def test_list_devices_paging(db: Database, tenant_a: Tenant) -> None:
    seen: list[str] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        page = await call(db, tenant_a, "list_devices", {"limit": 4, "offset": offset})
        assert page["total"] == 10
        seen += [d["id"] for d in page["devices"]]
        offset = page["next_offset"]
        pages += 1
    assert pages == 3
    assert len(seen) == len(set(seen)) == 10
    beyond = await call(db, tenant_a, "list_devices", {"offset": 50})
    assert beyond == {"devices": [], "total": 10, "next_offset": None}


@pytest.mark.req("SEED-KEY-TENANT")
async def test_list_devices_shows_only_the_own_tenant(
    db: Database, tenant_a: Tenant, tenant_b: Tenant
) -> None:
    listed_a = await call(db, tenant_a, "list_devices", {"limit": 100})
    listed_b = await call(db, tenant_b, "list_devices", {"limit": 100})
    ids_a = {d["id"] for d in listed_a["devices"]}
    ids_b = {d["id"] for d in listed_b["devices"]}
    assert len(ids_a) == len(ids_b) == 10
    assert ids_a == {str(i) for i in (await device_ids(db, tenant_a)).values()}
    assert not ids_a & ids_b
    alerts_a = await call(db, tenant_a, "query_alerts", {"limit": 100})
    assert alerts_a["total"] == 8
    assert {a["device_id"] for a in alerts_a["alerts"]} <= ids_a


@pytest.mark.req("TOOLS-RMM")
async def test_get_device(db: Database, tenant_a: Tenant) -> None:
    dc = (await device_ids(db, tenant_a))["HQ-DC01"]
    device = await call(db, tenant_a, "get_device", {"device_id": str(dc)})
    assert device["id"] == str(dc)
    assert device["hostname"] == "HQ-DC01"
    assert device["tags"] == ["domain-controller", "critical"]
    assert device["agent_version"] == "2.4.1"
    datetime.fromisoformat(device["created_at"])
    metrics = device["metrics"]
    assert metrics["disk_free_percent"] == 6
    assert isinstance(metrics["cpu_percent_latest"], float)
    assert isinstance(metrics["memory_percent_latest"], float)
    assert isinstance(metrics["pending_patches"], list)
    assert device["open_alert_count"] == 1
    assert device["alert_counts"] == {"open": 1, "acknowledged": 0, "suppressed": 0,
                                      "resolved": 0}
    assert device["note_count"] == 1


@pytest.mark.req("TOOLS-RMM")
@pytest.mark.parametrize("name", ["get_device", "get_device_health", "list_notes"])
async def test_unknown_device_is_not_found(db: Database, tenant_a: Tenant, name: str) -> None:
    missing = uuid.uuid4()
    error = await call_error(db, tenant_a, name, {"device_id": str(missing)})
    assert error.code == "not_found"
    assert error.message == f"No device with id {missing}."


@pytest.mark.req("TOOLS-RMM")
async def test_query_alerts(db: Database, tenant_a: Tenant) -> None:
    everything = await call(db, tenant_a, "query_alerts", {})
    assert everything["total"] == 8 and everything["next_offset"] is None
    created = [datetime.fromisoformat(a["created_at"]) for a in everything["alerts"]]
    assert created == sorted(created, reverse=True)
    first = everything["alerts"][0]
    assert set(first) == {"id", "device_id", "hostname", "severity", "title", "message",
                          "status", "created_at", "updated_at", "updated_by",
                          "suppressed_until"}

    critical = await call(db, tenant_a, "query_alerts", {"severity": "critical"})
    assert critical["total"] == 3
    assert {a["hostname"] for a in critical["alerts"]} == {"HQ-DC01", "BR-DB01", "BR-NAS01"}
    open_alerts = await call(db, tenant_a, "query_alerts", {"status": "open"})
    assert open_alerts["total"] == 5
    assert all(a["status"] == "open" for a in open_alerts["alerts"])
    both = await call(db, tenant_a, "query_alerts", {"severity": "critical", "status": "open"})
    assert both["total"] == 2

    nas = (await device_ids(db, tenant_a))["BR-NAS01"]
    of_nas = await call(db, tenant_a, "query_alerts", {"device_id": str(nas)})
    assert [a["title"] for a in of_nas["alerts"]] == ["RAID degraded"]

    page = await call(db, tenant_a, "query_alerts", {"limit": 3, "offset": 3})
    assert page["next_offset"] == 6
    assert [a["id"] for a in page["alerts"]] == [a["id"] for a in everything["alerts"][3:6]]

    missing = uuid.uuid4()
    error = await call_error(db, tenant_a, "query_alerts", {"device_id": str(missing)})
    assert error.code == "not_found"


@pytest.mark.req("TOOLS-RMM")
async def test_get_device_health(db: Database, tenant_a: Tenant) -> None:
    ids = await device_ids(db, tenant_a)
    dc = await call(db, tenant_a, "get_device_health", {"device_id": str(ids["HQ-DC01"])})
    assert dc["hostname"] == "HQ-DC01"
    assert dc["disk_free_percent"] == 6
    assert dc["active_critical_alerts"] == 1
    assert dc["verdict"] in {"degraded", "critical"}
    assert 0 <= dc["score"] <= 75  # at least the low disk (-25)
    assert any("Disk space is critically low" in f for f in dc["findings"])
    assert dc["cpu_percent"]["samples"] == 24
    assert dc["cpu_percent"]["max"] >= dc["cpu_percent"]["p95"] >= 0
    assert {"reason", "points", "severe"} <= set(dc["deductions"][0])

    # An acknowledged alert is still active; a resolved one is not.
    db01 = await call(db, tenant_a, "get_device_health", {"device_id": str(ids["BR-DB01"])})
    assert db01["active_critical_alerts"] == 1
    acct = await call(db, tenant_a, "get_device_health", {"device_id": str(ids["HQ-WS-ACCT01"])})
    assert acct["active_warning_alerts"] == 0

    fs = await call(db, tenant_a, "get_device_health", {"device_id": str(ids["HQ-FS01"])})
    assert fs["services_down"] == ["VSS"]
    assert fs["active_warning_alerts"] == 1
    assert fs["verdict"] != "healthy"

    front = await call(db, tenant_a, "get_device_health",
                       {"device_id": str(ids["BR-WS-FRONT01"])})
    assert any("offline" in f for f in front["findings"])


@pytest.mark.req("TOOLS-RMM")
async def test_list_notes(db: Database, tenant_a: Tenant) -> None:
    ids = await device_ids(db, tenant_a)
    dc = str(ids["HQ-DC01"])
    listed = await call(db, tenant_a, "list_notes", {"device_id": dc})
    assert listed["total"] == 1 and listed["hostname"] == "HQ-DC01"
    assert listed["notes"][0]["author"] == "system:demo"
    assert "19:00" in listed["notes"][0]["body"]
    added = await call(db, tenant_a, "add_note", {"device_id": dc, "body": "Second note"})
    newest = await call(db, tenant_a, "list_notes", {"device_id": dc})
    assert newest["total"] == 2
    assert newest["notes"][0]["id"] == added["note_id"]
    assert newest["notes"][1]["author"] == "system:demo"
    limited = await call(db, tenant_a, "list_notes", {"device_id": dc, "limit": 1})
    assert len(limited["notes"]) == 1 and limited["total"] == 2
    empty = await call(db, tenant_a, "list_notes", {"device_id": str(ids["BR-NAS01"])})
    assert empty["notes"] == [] and empty["total"] == 0


# --------------------------------------------------------------------------- Tier 2 writes


@pytest.mark.req("TOOLS-RMM")
async def test_add_note(db: Database, tenant_a: Tenant) -> None:
    web = (await device_ids(db, tenant_a))["BR-WEB01"]
    result = await call(db, tenant_a, "add_note",
                        {"device_id": str(web), "body": "  Renewed the certificate.\n"},
                        actor="user:alice")
    assert result["author"] == "user:alice"
    assert result["body"] == "Renewed the certificate."
    assert result["device_id"] == str(web)
    stored = await rows(db, tenant_a, sa.select(device_notes).where(
        device_notes.c.id == uuid.UUID(result["note_id"])))
    assert len(stored) == 1
    assert (stored[0].author, stored[0].body, stored[0].device_id) == (
        "user:alice", "Renewed the certificate.", web)

    missing = uuid.uuid4()
    before = await count(db, tenant_a, device_notes)
    error = await call_error(db, tenant_a, "add_note", {"device_id": str(missing), "body": "x"})
    assert (error.code, error.message) == ("not_found", f"No device with id {missing}.")
    assert await count(db, tenant_a, device_notes) == before


@pytest.mark.req("TOOLS-RMM")
async def test_manage_alert_transitions(db: Database, tenant_a: Tenant) -> None:
    ids = await alert_ids(db, tenant_a)
    backup = str(ids["Backup job failed"])  # open

    acked = await call(db, tenant_a, "manage_alert",
                       {"alert_id": backup, "action": "acknowledge"}, actor="user:bob")
    assert acked["status"] == "acknowledged"
    assert acked["previous_status"] == "open"
    assert acked["updated_by"] == "user:bob"
    assert acked["comment_note_id"] is None
    assert datetime.fromisoformat(acked["updated_at"]) > datetime.fromisoformat(
        acked["created_at"])

    again = await call_error(db, tenant_a, "manage_alert",
                             {"alert_id": backup, "action": "acknowledge"})
    assert again.code == "invalid_state"
    assert "acknowledged" in again.message

    suppressed = await call(db, tenant_a, "manage_alert",
                            {"alert_id": backup, "action": "suppress", "suppress_minutes": 60})
    assert suppressed["status"] == "suppressed"
    until = datetime.fromisoformat(suppressed["suppressed_until"])
    updated = datetime.fromisoformat(suppressed["updated_at"])
    assert abs(until - updated - timedelta(minutes=60)) < timedelta(seconds=1)

    resolved = await call(db, tenant_a, "manage_alert",
                          {"alert_id": backup, "action": "resolve",
                           "comment": "Backup target was full; cleaned up."})
    assert resolved["status"] == "resolved"
    assert resolved["suppressed_until"] is None
    assert resolved["updated_by"] == ACTOR
    note = await rows(db, tenant_a, sa.select(device_notes).where(
        device_notes.c.id == uuid.UUID(resolved["comment_note_id"])))
    assert note[0].author == ACTOR
    assert note[0].device_id == uuid.UUID(resolved["device_id"])
    assert "Backup job failed" in note[0].body and "cleaned up" in note[0].body

    for action, extra in (("resolve", {}), ("acknowledge", {}),
                          ("suppress", {"suppress_minutes": 5})):
        error = await call_error(db, tenant_a, "manage_alert",
                                 {"alert_id": backup, "action": action, **extra})
        assert error.code == "invalid_state", action

    stored = await rows(db, tenant_a, sa.select(alerts).where(alerts.c.id == ids[
        "Backup job failed"]))
    assert (stored[0].status, stored[0].updated_by) == ("resolved", ACTOR)


@pytest.mark.req("TOOLS-RMM")
async def test_manage_alert_from_each_status(db: Database, tenant_a: Tenant) -> None:
    ids = await alert_ids(db, tenant_a)
    # The demo has one alert in each status.
    suppressed = str(ids["OS update available"])
    resolved = str(ids["Pending reboot"])
    acknowledged = str(ids["High CPU"])
    result = await call(db, tenant_a, "manage_alert",
                        {"alert_id": suppressed, "action": "acknowledge"})
    assert result["status"] == "acknowledged"
    error = await call_error(db, tenant_a, "manage_alert",
                             {"alert_id": resolved, "action": "acknowledge"})
    assert error.code == "invalid_state"
    result = await call(db, tenant_a, "manage_alert",
                        {"alert_id": acknowledged, "action": "resolve"})
    assert (result["previous_status"], result["status"]) == ("acknowledged", "resolved")

    missing = uuid.uuid4()
    error = await call_error(db, tenant_a, "manage_alert",
                             {"alert_id": str(missing), "action": "resolve"})
    assert (error.code, error.message) == ("not_found", f"No alert with id {missing}.")


@pytest.mark.req("TOOLS-RMM")
async def test_manage_device_maintenance(db: Database, tenant_a: Tenant) -> None:
    web = (await device_ids(db, tenant_a))["BR-WEB01"]
    args = {"device_id": str(web)}

    async def status() -> str:
        found = await rows(db, tenant_a, sa.select(devices.c.status).where(devices.c.id == web))
        return str(found[0].status)

    result = await call(db, tenant_a, "manage_device", {**args, "action": "set_maintenance"})
    assert (result["previous_status"], result["status"]) == ("online", "maintenance")
    assert await status() == "maintenance"
    error = await call_error(db, tenant_a, "manage_device", {**args, "action": "set_maintenance"})
    assert error.code == "invalid_state"

    result = await call(db, tenant_a, "manage_device", {**args, "action": "clear_maintenance"})
    assert (result["previous_status"], result["status"]) == ("maintenance", "online")
    assert await status() == "online"
    error = await call_error(db, tenant_a, "manage_device",
                             {**args, "action": "clear_maintenance"})
    assert error.code == "invalid_state"
    assert await count(db, tenant_a, script_runs) == 0


@pytest.mark.req("TOOLS-RMM")
async def test_manage_device_reboot_queues_a_script_run(db: Database, tenant_a: Tenant) -> None:
    web = (await device_ids(db, tenant_a))["BR-WEB01"]
    result = await call(db, tenant_a, "manage_device",
                        {"device_id": str(web), "action": "reboot"}, actor="user:carol")
    assert result["status"] == "queued" and result["action"] == "reboot"
    queued = await rows(db, tenant_a, sa.select(script_runs))
    assert len(queued) == 1
    job = queued[0]
    assert str(job.id) == result["job_id"]
    assert (job.device_id, job.interpreter, job.script, job.status, job.requested_by) == (
        web, "builtin", "reboot", "queued", "user:carol")
    device = await rows(db, tenant_a, sa.select(devices.c.status).where(devices.c.id == web))
    assert device[0].status == "online"  # a reboot request changes no record but the queue


# --------------------------------------------------------------------------- Tier 3 jobs

TIER3_CASES = [
    ("run_script", {"interpreter": "powershell", "script": "Get-Service VSS | Restart-Service",
                    "timeout_seconds": 120}, script_runs, "job_id",
     {"interpreter": "powershell", "script": "Get-Service VSS | Restart-Service",
      "timeout_seconds": 120}),
    ("deploy_patches", {"patches": ["KB5034441", "KB5035845"], "reboot": "never"}, patch_jobs,
     "job_id", {"patches": ["KB5034441", "KB5035845"], "reboot": "never"}),
    ("isolate_device", {"action": "isolate", "reason": "  Suspected ransomware  "},
     isolation_events, "event_id", {"action": "isolate", "reason": "Suspected ransomware"}),
    ("isolate_device", {"action": "release", "reason": "Cleaned"}, isolation_events,
     "event_id", {"action": "release", "reason": "Cleaned"}),
]


@pytest.mark.req("TOOLS-RMM")
@pytest.mark.parametrize(("name", "arguments", "table", "id_key", "stored"), TIER3_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TIER3_CASES)])
async def test_tier3_tools_queue_exactly_one_row(
    db: Database, tenant_a: Tenant, name: str, arguments: dict[str, Any], table: sa.Table,
    id_key: str, stored: dict[str, Any],
) -> None:
    fs = (await device_ids(db, tenant_a))["HQ-FS01"]
    before = await snapshot(db, tenant_a)
    result = await call(db, tenant_a, name, {"device_id": str(fs), **arguments},
                        actor="api_key:k1")
    assert result["status"] == "queued"
    assert result["device_id"] == str(fs)
    assert result["hostname"] == "HQ-FS01"
    assert result["requested_by"] == "api_key:k1"
    datetime.fromisoformat(result["requested_at"])
    assert "warning" not in result

    queued = await rows(db, tenant_a, sa.select(table))
    assert len(queued) == 1
    row = queued[0]
    assert str(row.id) == result[id_key]
    assert (row.device_id, row.status, row.requested_by, row.finished_at) == (
        fs, "queued", "api_key:k1", None)
    for column, value in stored.items():
        assert getattr(row, column) == value
        if column != "script":  # not echoed back
            assert result[column] == value

    after = await snapshot(db, tenant_a)
    changed = {t for t in before if before[t] != after[t]}
    assert changed == {table.name}


@pytest.mark.req("TOOLS-RMM")
async def test_tier3_on_offline_device_warns_and_unknown_device_fails(
    db: Database, tenant_a: Tenant
) -> None:
    front = (await device_ids(db, tenant_a))["BR-WS-FRONT01"]
    result = await call(db, tenant_a, "run_script",
                        {"device_id": str(front), "interpreter": "cmd", "script": "ipconfig"})
    assert result["status"] == "queued" and result["timeout_seconds"] == 300
    assert "offline" in result["warning"]

    for name, _, table, _, _ in TIER3_CASES:
        missing = uuid.uuid4()
        before = await count(db, tenant_a, table)
        args = {**VALID_ARGS[name], "device_id": str(missing)}
        error = await call_error(db, tenant_a, name, args)
        assert (error.code, error.message) == ("not_found", f"No device with id {missing}.")
        assert await count(db, tenant_a, table) == before


# --------------------------------------------------------------------------- cross-tenant

DEVICE_ID_CALLS = [
    ("get_device", {}),
    ("get_device_health", {}),
    ("list_notes", {}),
    ("query_alerts", {}),
    ("add_note", {"body": "hello from tenant A"}),
    ("manage_device", {"action": "set_maintenance"}),
    ("manage_device", {"action": "reboot"}),
    ("run_script", {"interpreter": "bash", "script": "rm -rf /"}),
    ("deploy_patches", {"patches": ["KB5034441"]}),
    ("isolate_device", {"action": "isolate", "reason": "x"}),
]


@pytest.mark.req("SEED-KEY-TENANT")
@pytest.mark.parametrize(("name", "extra"), DEVICE_ID_CALLS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(DEVICE_ID_CALLS)])
async def test_other_tenants_device_is_like_an_unknown_one(
    db: Database, tenant_a: Tenant, tenant_b: Tenant, name: str, extra: dict[str, Any]
) -> None:
    foreign = (await device_ids(db, tenant_b))["HQ-DC01"]
    missing = uuid.uuid4()
    before_a = await snapshot(db, tenant_a)
    before_b = await snapshot(db, tenant_b)

    via_foreign = await call_error(db, tenant_a, name, {"device_id": str(foreign), **extra})
    via_missing = await call_error(db, tenant_a, name, {"device_id": str(missing), **extra})
    assert via_foreign.code == "not_found"
    assert shape(via_foreign, foreign) == shape(via_missing, missing)
    assert type(via_foreign) is type(via_missing)

    assert await snapshot(db, tenant_b) == before_b
    assert await snapshot(db, tenant_a) == before_a


@pytest.mark.req("SEED-KEY-TENANT")
@pytest.mark.parametrize("action", ["acknowledge", "resolve", "suppress"])
async def test_other_tenants_alert_is_like_an_unknown_one(
    db: Database, tenant_a: Tenant, tenant_b: Tenant, action: str
) -> None:
    foreign = (await alert_ids(db, tenant_b))["Disk space low on C:"]
    missing = uuid.uuid4()
    extra = {"suppress_minutes": 30} if action == "suppress" else {}
    before_b = await snapshot(db, tenant_b)

    via_foreign = await call_error(db, tenant_a, "manage_alert",
                                   {"alert_id": str(foreign), "action": action,
                                    "comment": "gotcha", **extra})
    via_missing = await call_error(db, tenant_a, "manage_alert",
                                   {"alert_id": str(missing), "action": action,
                                    "comment": "gotcha", **extra})
    assert via_foreign.code == "not_found"
    assert shape(via_foreign, foreign) == shape(via_missing, missing)
    assert await snapshot(db, tenant_b) == before_b
    # The alert is still open for its own tenant.
    own = await call(db, tenant_b, "query_alerts", {"status": "open", "severity": "critical"})
    assert str(foreign) in {a["id"] for a in own["alerts"]}
