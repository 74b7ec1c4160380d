"""Alert tools: query_alerts (Tier 1) and manage_alert (Tier 2).

State machine of ``manage_alert`` (anything else is ``invalid_state``):

* acknowledge: open or suppressed -> acknowledged (clears any suppression)
* resolve: open, acknowledged or suppressed -> resolved (clears any suppression)
* suppress: open, acknowledged or suppressed -> suppressed until now + suppress_minutes

A resolved alert is final.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any, Literal, Self

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from breeze_mcp.db.models import alerts, device_notes, devices
from breeze_mcp.tools.devices import MAX_OFFSET, iso, load_device, next_offset
from breeze_mcp.tools.registry import ToolContext, ToolError, ToolSpec

__all__ = [
    "MANAGE_ALERT",
    "QUERY_ALERTS",
    "ManageAlertInput",
    "QueryAlertsInput",
    "alert_not_found",
]

Severity = Literal["info", "warning", "critical"]
AlertStatus = Literal["open", "acknowledged", "resolved", "suppressed"]
AlertAction = Literal["acknowledge", "resolve", "suppress"]

MAX_SUPPRESS_MINUTES = 10080  # one week

#: action -> (statuses it may start from, resulting status, past tense for messages)
_TRANSITIONS: dict[str, tuple[frozenset[str], str, str]] = {
    "acknowledge": (frozenset({"open", "suppressed"}), "acknowledged", "acknowledged"),
    "resolve": (frozenset({"open", "acknowledged", "suppressed"}), "resolved", "resolved"),
    "suppress": (frozenset({"open", "acknowledged", "suppressed"}), "suppressed", "suppressed"),
}


def alert_not_found(alert_id: uuid.UUID) -> ToolError:
    """The one error for an unknown alert id and for another tenant's alert id."""
    return ToolError("not_found", f"No alert with id {alert_id}.")


class QueryAlertsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: uuid.UUID | None = Field(
        default=None, description="Only alerts of this device (UUID from list_devices)."
    )
    severity: Severity | None = Field(default=None, description="Only alerts of this severity.")
    status: AlertStatus | None = Field(default=None, description="Only alerts in this status.")
    limit: int = Field(default=25, ge=1, le=100, description="Page size (1-100).")
    offset: int = Field(
        default=0, ge=0, le=MAX_OFFSET,
        description="Number of alerts to skip; use next_offset from the previous page.",
    )


class ManageAlertInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alert_id: uuid.UUID = Field(description="The alert's id (UUID), as listed by query_alerts.")
    action: AlertAction = Field(
        description="acknowledge (someone is on it), resolve (fixed), or suppress (mute for "
        "suppress_minutes)."
    )
    suppress_minutes: int | None = Field(
        default=None, ge=1, le=MAX_SUPPRESS_MINUTES,
        description="How long to suppress, in minutes (1-10080). Required for suppress; "
        "refused for the other actions.",
    )
    comment: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)
    ] | None = Field(
        default=None,
        description="Optional explanation (up to 1000 characters), kept as a note on the "
        "alert's device.",
    )

    @model_validator(mode="after")
    def _suppress_minutes_only_for_suppress(self) -> Self:
        if self.action == "suppress" and self.suppress_minutes is None:
            raise ValueError("suppress_minutes is required when action is 'suppress'")
        if self.action != "suppress" and self.suppress_minutes is not None:
            raise ValueError("suppress_minutes is only allowed when action is 'suppress'")
        return self


def _alert(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "device_id": str(row.device_id),
        "hostname": row.hostname,
        "severity": row.severity,
        "title": row.title,
        "message": row.message,
        "status": row.status,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "updated_by": row.updated_by,
        "suppressed_until": iso(row.suppressed_until),
    }


def _alerts_with_hostname() -> sa.Select[Any]:
    return sa.select(alerts, devices.c.hostname).join(
        devices,
        sa.and_(devices.c.id == alerts.c.device_id, devices.c.tenant_id == alerts.c.tenant_id),
    )


async def query_alerts(ctx: ToolContext, args: QueryAlertsInput) -> dict[str, Any]:
    conditions: list[sa.ColumnElement[bool]] = [alerts.c.tenant_id == ctx.tenant_id]
    if args.device_id is not None:
        await load_device(ctx, args.device_id)  # not_found, like any unknown id
        conditions.append(alerts.c.device_id == args.device_id)
    if args.severity is not None:
        conditions.append(alerts.c.severity == args.severity)
    if args.status is not None:
        conditions.append(alerts.c.status == args.status)
    total = (
        await ctx.tx.execute(sa.select(sa.func.count()).select_from(alerts).where(*conditions))
    ).scalar_one()
    rows = (
        await ctx.tx.execute(
            _alerts_with_hostname()
            .where(*conditions)
            .order_by(alerts.c.created_at.desc(), alerts.c.id.desc())
            .limit(args.limit)
            .offset(args.offset)
        )
    ).all()
    return {
        "alerts": [_alert(row) for row in rows],
        "total": total,
        "next_offset": next_offset(args.offset, len(rows), total),
    }


async def manage_alert(ctx: ToolContext, args: ManageAlertInput) -> dict[str, Any]:
    current = (
        await ctx.tx.execute(
            sa.select(alerts)
            .where(alerts.c.id == args.alert_id, alerts.c.tenant_id == ctx.tenant_id)
            .with_for_update()
        )
    ).first()
    if current is None:
        raise alert_not_found(args.alert_id)
    allowed_from, new_status, done = _TRANSITIONS[args.action]
    if current.status not in allowed_from:
        raise ToolError(
            "invalid_state",
            f"Alert {args.alert_id} is {current.status}; it cannot be {done}.",
        )
    suppressed_until: sa.ColumnElement[Any] | None = None
    if args.action == "suppress":
        assert args.suppress_minutes is not None  # the model guarantees it
        suppressed_until = sa.func.now() + sa.literal(
            timedelta(minutes=args.suppress_minutes), sa.Interval()
        )
    await ctx.tx.execute(
        alerts.update()
        .where(alerts.c.id == args.alert_id, alerts.c.tenant_id == ctx.tenant_id)
        .values(
            status=new_status,
            updated_at=sa.func.now(),
            updated_by=ctx.actor,
            suppressed_until=suppressed_until,
        )
    )
    note_id: str | None = None
    if args.comment is not None:
        note_id = str(
            (
                await ctx.tx.execute(
                    device_notes.insert()
                    .values(
                        tenant_id=ctx.tenant_id,
                        device_id=current.device_id,
                        author=ctx.actor,
                        body=f"Alert {current.title[:200]!r} {done}: {args.comment}",
                    )
                    .returning(device_notes.c.id)
                )
            ).scalar_one()
        )
    row = (
        await ctx.tx.execute(
            _alerts_with_hostname().where(
                alerts.c.id == args.alert_id, alerts.c.tenant_id == ctx.tenant_id
            )
        )
    ).one()
    return {**_alert(row), "previous_status": current.status, "comment_note_id": note_id}


QUERY_ALERTS = ToolSpec(
    name="query_alerts",
    title="Query alerts",
    description=(
        "List the monitoring alerts of the current customer's devices, newest first. "
        "Optionally filter by device id, severity (info, warning, critical) and status "
        "(open, acknowledged, resolved, suppressed). Each alert has its id, device id and "
        "hostname, severity, title, message, status, timestamps, who last changed it and, "
        "for suppressed alerts, until when. Returns a page plus the total and next_offset "
        "(null on the last page). Use an alert's id with manage_alert. Read-only."
    ),
    input_model=QueryAlertsInput,
    base_tier=1,
    handler=query_alerts,
)

MANAGE_ALERT = ToolSpec(
    name="manage_alert",
    title="Acknowledge, resolve or suppress an alert",
    description=(
        "Change an alert's status. action=acknowledge marks an open or suppressed alert as "
        "being handled; action=resolve closes an open, acknowledged or suppressed alert "
        "(resolved is final); action=suppress mutes an unresolved alert for suppress_minutes "
        "(1-10080, required for suppress and refused otherwise). An optional comment is "
        "kept as a note on the alert's device. A change that does not fit the alert's "
        "current status (e.g. resolving a resolved alert) fails with invalid_state. Returns "
        "the updated alert and its previous status. Changes records only; no device is "
        "touched."
    ),
    input_model=ManageAlertInput,
    base_tier=2,
    action_tiers={"acknowledge": 2, "resolve": 2, "suppress": 2},
    handler=manage_alert,
)
