"""RMM tools, each with a risk tier; :func:`default_registry` holds every one of them.

Tier 1 reads (devices, alerts, health, notes), Tier 2 changes records (alerts, notes,
maintenance mode), Tier 3 queues device actions for the agent (scripts, patches, isolation,
reboot), Tier 4 is registered only to be refused (wipe, delete tenant, disable audit log).
"""

from __future__ import annotations

from breeze_mcp.tools.alerts import MANAGE_ALERT, QUERY_ALERTS
from breeze_mcp.tools.blocked import DELETE_TENANT, DISABLE_AUDIT_LOG, WIPE_DEVICE
from breeze_mcp.tools.devices import GET_DEVICE, GET_DEVICE_HEALTH, LIST_DEVICES
from breeze_mcp.tools.jobs import DEPLOY_PATCHES, ISOLATE_DEVICE, MANAGE_DEVICE, RUN_SCRIPT
from breeze_mcp.tools.notes import ADD_NOTE, LIST_NOTES
from breeze_mcp.tools.registry import (
    BLOCKED_TIER,
    Registry,
    ToolContext,
    ToolError,
    ToolSpec,
)

__all__ = [
    "ALL_TOOLS",
    "BLOCKED_TIER",
    "Registry",
    "ToolContext",
    "ToolError",
    "ToolSpec",
    "default_registry",
]

#: Every tool, in the order tools/list shows them (by tier, then reads before writes).
ALL_TOOLS: tuple[ToolSpec, ...] = (
    LIST_DEVICES,
    GET_DEVICE,
    GET_DEVICE_HEALTH,
    QUERY_ALERTS,
    LIST_NOTES,
    MANAGE_ALERT,
    ADD_NOTE,
    MANAGE_DEVICE,
    RUN_SCRIPT,
    DEPLOY_PATCHES,
    ISOLATE_DEVICE,
    WIPE_DEVICE,
    DELETE_TENANT,
    DISABLE_AUDIT_LOG,
)


def default_registry() -> Registry:
    """A new registry holding every tool (specs are immutable and shared)."""
    return Registry(ALL_TOOLS)
