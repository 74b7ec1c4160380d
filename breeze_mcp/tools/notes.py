"""Device notes: list_notes (Tier 1) and add_note (Tier 2)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from breeze_mcp.db.models import device_notes
from breeze_mcp.tools.devices import iso, load_device
from breeze_mcp.tools.registry import ToolContext, ToolSpec

__all__ = ["ADD_NOTE", "LIST_NOTES", "AddNoteInput", "ListNotesInput"]

MAX_NOTE_CHARS = 4000


class ListNotesInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: uuid.UUID = Field(description="The device's id (UUID), as listed by list_devices.")
    limit: int = Field(default=20, ge=1, le=100, description="How many notes, newest first "
                       "(1-100).")


class AddNoteInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: uuid.UUID = Field(description="The device's id (UUID), as listed by list_devices.")
    body: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NOTE_CHARS)
    ] = Field(description="The note text (1-4000 characters; surrounding whitespace is removed).")


def _note(row: sa.Row[Any]) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "device_id": str(row.device_id),
        "author": row.author,
        "body": row.body,
        "created_at": iso(row.created_at),
    }


async def list_notes(ctx: ToolContext, args: ListNotesInput) -> dict[str, Any]:
    device = await load_device(ctx, args.device_id)
    conditions = (
        device_notes.c.device_id == device.id,
        device_notes.c.tenant_id == ctx.tenant_id,
    )
    total = (
        await ctx.tx.execute(
            sa.select(sa.func.count()).select_from(device_notes).where(*conditions)
        )
    ).scalar_one()
    rows = (
        await ctx.tx.execute(
            sa.select(device_notes)
            .where(*conditions)
            .order_by(device_notes.c.created_at.desc(), device_notes.c.id.desc())
            .limit(args.limit)
        )
    ).all()
    return {
        "device_id": str(device.id),
        "hostname": device.hostname,
        "notes": [_note(row) for row in rows],
        "total": total,
    }


async def add_note(ctx: ToolContext, args: AddNoteInput) -> dict[str, Any]:
    device = await load_device(ctx, args.device_id)
    row = (
        await ctx.tx.execute(
            device_notes.insert()
            .values(
                tenant_id=ctx.tenant_id,
                device_id=device.id,
                author=ctx.actor,
                body=args.body,
            )
            .returning(device_notes)
        )
    ).one()
    return {"note_id": str(row.id), **_note(row), "hostname": device.hostname}


LIST_NOTES = ToolSpec(
    name="list_notes",
    title="List device notes",
    description=(
        "Read the notes technicians and assistants have left on one device (maintenance "
        "windows, known issues, what was done), newest first, with author and time. Returns "
        "up to limit notes and the total count. Check them before acting on a device. "
        "Read-only."
    ),
    input_model=ListNotesInput,
    base_tier=1,
    handler=list_notes,
)

ADD_NOTE = ToolSpec(
    name="add_note",
    title="Add a device note",
    description=(
        "Leave a note on a device (1-4000 characters), e.g. what you found or did, so the next "
        "technician sees it. The note is recorded with you as its author and the current "
        "time; returns its id. Changes records only; no device is touched."
    ),
    input_model=AddNoteInput,
    base_tier=2,
    handler=add_note,
)
