"""Tools that act on devices: manage_device (Tier 2, reboot Tier 3), run_script,
deploy_patches and isolate_device (Tier 3).

No real device is touched: each device action is recorded as a queued job (``script_runs``,
``patch_jobs``) or event (``isolation_events``) for the device's agent to pick up, with
``requested_by`` set to the acting principal.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from breeze_mcp.db.models import devices, isolation_events, patch_jobs, script_runs
from breeze_mcp.tools.devices import iso, load_device
from breeze_mcp.tools.registry import ToolContext, ToolError, ToolSpec

__all__ = [
    "DEPLOY_PATCHES",
    "ISOLATE_DEVICE",
    "MANAGE_DEVICE",
    "RUN_SCRIPT",
    "DeployPatchesInput",
    "IsolateDeviceInput",
    "ManageDeviceInput",
    "RunScriptInput",
]

_DEVICE_ID_DESCRIPTION = "The device's id (UUID), as listed by list_devices."


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


PatchId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:+-]{1,100}$")]


class ManageDeviceInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: uuid.UUID = Field(description=_DEVICE_ID_DESCRIPTION)
    action: Literal["set_maintenance", "clear_maintenance", "reboot"] = Field(
        description="set_maintenance (put the device in maintenance mode), clear_maintenance "
        "(back to online), or reboot (queue a reboot for the agent; needs execute rights)."
    )


class RunScriptInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: uuid.UUID = Field(description=_DEVICE_ID_DESCRIPTION)
    interpreter: Literal["powershell", "bash", "cmd", "python"] = Field(
        description="The interpreter the agent runs the script with; pick one the device's OS "
        "has (powershell or cmd on Windows, bash or python on Linux and macOS)."
    )
    script: Annotated[str, StringConstraints(min_length=1, max_length=20000),
                      AfterValidator(_not_blank)] = Field(
        description="The script's source code (1-20000 characters)."
    )
    timeout_seconds: int = Field(
        default=300, ge=10, le=3600,
        description="The agent stops the script after this many seconds (10-3600).",
    )


class DeployPatchesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: uuid.UUID = Field(description=_DEVICE_ID_DESCRIPTION)
    patches: Annotated[list[PatchId], AfterValidator(_unique)] = Field(
        min_length=1, max_length=50,
        description="1-50 patch identifiers to install, e.g. 'KB5034441' or "
        "'openssl-3.0.13' (letters, digits and . _ : + -; duplicates are dropped). "
        "get_device lists a device's pending patches.",
    )
    reboot: Literal["never", "if_required", "always"] = Field(
        default="if_required",
        description="Whether the agent may reboot after installing: never, if_required, always.",
    )


class IsolateDeviceInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: uuid.UUID = Field(description=_DEVICE_ID_DESCRIPTION)
    action: Literal["isolate", "release"] = Field(
        description="isolate (cut the device off the network except for the management "
        "agent) or release (restore its network access)."
    )
    reason: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)
    ] = Field(description="Why (1-500 characters); recorded with the event.")


def _queued(row: sa.Row[Any], device: sa.Row[Any], id_key: str) -> dict[str, Any]:
    result: dict[str, Any] = {
        id_key: str(row.id),
        "status": row.status,
        "device_id": str(device.id),
        "hostname": device.hostname,
        "requested_by": row.requested_by,
        "requested_at": iso(row.requested_at),
    }
    if device.status == "offline":
        result["warning"] = (
            "The device is offline; the agent will pick this up when it reconnects."
        )
    return result


async def _queue_script(
    ctx: ToolContext, device: sa.Row[Any], interpreter: str, script: str, timeout_seconds: int
) -> sa.Row[Any]:
    result = await ctx.tx.execute(
        script_runs.insert()
        .values(
            tenant_id=ctx.tenant_id,
            device_id=device.id,
            interpreter=interpreter,
            script=script,
            timeout_seconds=timeout_seconds,
            status="queued",
            requested_by=ctx.actor,
        )
        .returning(script_runs)
    )
    row: sa.Row[Any] = result.one()
    return row


async def manage_device(ctx: ToolContext, args: ManageDeviceInput) -> dict[str, Any]:
    device = await load_device(ctx, args.device_id, for_update=True)
    if args.action == "reboot":
        job = await _queue_script(ctx, device, "builtin", "reboot", 300)
        return {**_queued(job, device, "job_id"), "action": "reboot"}
    if args.action == "set_maintenance":
        if device.status == "maintenance":
            raise ToolError("invalid_state",
                            f"Device {device.id} is already in maintenance mode.")
        new_status = "maintenance"
    else:
        if device.status != "maintenance":
            raise ToolError("invalid_state",
                            f"Device {device.id} is not in maintenance mode "
                            f"(it is {device.status}).")
        new_status = "online"
    await ctx.tx.execute(
        devices.update()
        .where(devices.c.id == device.id, devices.c.tenant_id == ctx.tenant_id)
        .values(status=new_status)
    )
    return {
        "device_id": str(device.id),
        "hostname": device.hostname,
        "action": args.action,
        "previous_status": device.status,
        "status": new_status,
    }


async def run_script(ctx: ToolContext, args: RunScriptInput) -> dict[str, Any]:
    device = await load_device(ctx, args.device_id)
    job = await _queue_script(ctx, device, args.interpreter, args.script, args.timeout_seconds)
    return {
        **_queued(job, device, "job_id"),
        "interpreter": job.interpreter,
        "timeout_seconds": job.timeout_seconds,
    }


async def deploy_patches(ctx: ToolContext, args: DeployPatchesInput) -> dict[str, Any]:
    device = await load_device(ctx, args.device_id)
    job = (
        await ctx.tx.execute(
            patch_jobs.insert()
            .values(
                tenant_id=ctx.tenant_id,
                device_id=device.id,
                patches=args.patches,
                reboot=args.reboot,
                status="queued",
                requested_by=ctx.actor,
            )
            .returning(patch_jobs)
        )
    ).one()
    return {**_queued(job, device, "job_id"), "patches": list(job.patches), "reboot": job.reboot}


async def isolate_device(ctx: ToolContext, args: IsolateDeviceInput) -> dict[str, Any]:
    device = await load_device(ctx, args.device_id)
    event = (
        await ctx.tx.execute(
            isolation_events.insert()
            .values(
                tenant_id=ctx.tenant_id,
                device_id=device.id,
                action=args.action,
                reason=args.reason,
                status="queued",
                requested_by=ctx.actor,
            )
            .returning(isolation_events)
        )
    ).one()
    return {**_queued(event, device, "event_id"), "action": event.action, "reason": event.reason}


MANAGE_DEVICE = ToolSpec(
    name="manage_device",
    title="Maintenance mode or reboot",
    description=(
        "Put a device into maintenance mode (action=set_maintenance), take it out again "
        "(action=clear_maintenance, back to online), or queue a reboot (action=reboot). "
        "Maintenance mode only changes the device's status record and fails with "
        "invalid_state if the device is already in (or not in) maintenance. A reboot is a "
        "device-changing action that needs execute rights: it is queued as a job for the "
        "device's agent and its job_id is returned. Check list_notes for maintenance windows "
        "before rebooting."
    ),
    input_model=ManageDeviceInput,
    base_tier=2,
    action_tiers={"set_maintenance": 2, "clear_maintenance": 2, "reboot": 3},
    handler=manage_device,
)

RUN_SCRIPT = ToolSpec(
    name="run_script",
    title="Run a script on a device",
    description=(
        "Queue a script to run on one device through its management agent, with the chosen "
        "interpreter (powershell, bash, cmd or python) and a timeout (10-3600 s, default "
        "300). This changes the device, so use it only when the user asked for it and prefer "
        "read-only diagnostics. Returns the queued job's id and status ('queued'); the agent "
        "runs it when it next checks in. Limited to 5 calls per 5 minutes per customer."
    ),
    input_model=RunScriptInput,
    base_tier=3,
    handler=run_script,
    rate_limit="5/5minute",
)

DEPLOY_PATCHES = ToolSpec(
    name="deploy_patches",
    title="Deploy patches to a device",
    description=(
        "Queue the installation of 1-50 named patches or package updates (e.g. 'KB5034441', "
        "'openssl-3.0.13') on one device, with a reboot policy (never, if_required - the "
        "default - or always). get_device and get_device_health list a device's pending "
        "patches. This changes the device, and a reboot interrupts its users. Returns the "
        "queued job's id and status ('queued')."
    ),
    input_model=DeployPatchesInput,
    base_tier=3,
    handler=deploy_patches,
)

ISOLATE_DEVICE = ToolSpec(
    name="isolate_device",
    title="Isolate or release a device",
    description=(
        "Cut a device off the network except for its management agent (action=isolate), e.g. "
        "a suspected ransomware infection, or restore its network access (action=release). "
        "A reason (1-500 characters) is required and recorded. Isolation stops the device's "
        "users from working, so confirm with the user first. Returns the queued event's id "
        "and status ('queued') for the device's agent."
    ),
    input_model=IsolateDeviceInput,
    base_tier=3,
    action_tiers={"isolate": 3, "release": 3},
    handler=isolate_device,
)
