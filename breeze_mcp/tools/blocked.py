"""Tier 4 tools: registered so that a call is recognised, refused at every scope and audited.

They have no handler, so there is nothing that could execute them; the input models exist so
that a refused call's arguments are described like any other tool's.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from breeze_mcp.tools.registry import BLOCKED_TIER, ToolSpec

__all__ = [
    "DELETE_TENANT",
    "DISABLE_AUDIT_LOG",
    "WIPE_DEVICE",
    "DeleteTenantInput",
    "DisableAuditLogInput",
    "WipeDeviceInput",
]

_BLOCKED = (
    " This tool is blocked at every scope: calls are refused and recorded in the audit log, "
    "and it is never executed. Ask a human administrator to do this outside the assistant."
)


class WipeDeviceInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: uuid.UUID = Field(description="The device's id (UUID).")


class DeleteTenantInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    confirm_slug: Annotated[
        str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    ] = Field(description="The customer's slug, typed out to confirm.")


class DisableAuditLogInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)
    ] = Field(description="Why the audit log should be turned off (1-500 characters).")


WIPE_DEVICE = ToolSpec(
    name="wipe_device",
    title="Wipe a device (blocked)",
    description="Erase all data on a device and reset it to factory state." + _BLOCKED,
    input_model=WipeDeviceInput,
    base_tier=BLOCKED_TIER,
    handler=None,
)

DELETE_TENANT = ToolSpec(
    name="delete_tenant",
    title="Delete a customer (blocked)",
    description="Delete the current customer with all its devices, alerts and history."
    + _BLOCKED,
    input_model=DeleteTenantInput,
    base_tier=BLOCKED_TIER,
    handler=None,
)

DISABLE_AUDIT_LOG = ToolSpec(
    name="disable_audit_log",
    title="Disable the audit log (blocked)",
    description="Stop recording actions in the audit log." + _BLOCKED,
    input_model=DisableAuditLogInput,
    base_tier=BLOCKED_TIER,
    handler=None,
)
