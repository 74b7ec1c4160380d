"""Client blocks: an owner or admin bars one OAuth client from their tenant until a time.

While a block is open (not lifted, its end still ahead) the tenant gives the client no new
grant (:func:`~breeze_mcp.auth.oauth.codes.create_authorization` raises
:class:`ClientBlocked`), the consent page does not offer the tenant, and a code of the client
is not exchanged in it (:func:`~breeze_mcp.auth.oauth.tokens.exchange_code`). Who may block,
and the revocation of the client's grants that comes with a block, are
:mod:`breeze_mcp.auth.oauth.apps`'s. Whether a block is open is decided by the database
(``until > now()``) on each request: nothing is cached, so every instance sees a block, and
its end, at once.

A block and a consent of the same client take turns on the client's row (each locks it with
:func:`lock_client` first, a consent before it looks for a block), so a grant made while a
block is written is either revoked by the block or refused.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from breeze_mcp.auth.oauth.errors import AccessDenied
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row, Transaction
from breeze_mcp.db.models import oauth_client_blocks, oauth_clients, users

__all__ = [
    "MAX_BLOCK_DAYS",
    "MIN_BLOCK",
    "Block",
    "ClientBlocked",
    "block_end",
    "blocked_until",
    "lift_block",
    "list_blocks",
    "lock_client",
    "open_block_sql",
    "open_block_until",
    "open_blocks",
    "put_block",
    "utc_text",
]

#: The longest block; a longer bar is a decision to take again, not to forget.
MAX_BLOCK_DAYS = 365
#: The shortest: a block must end after the request that makes it.
MIN_BLOCK = dt.timedelta(minutes=1)

#: The rule, in one place: a block row ``{b}`` is open while it is not lifted and its end is
#: ahead, by the database's clock.
_OPEN = "{b}.lifted_at IS NULL AND {b}.until > now()"


def open_block_sql(tenant: str, client: str) -> str:
    """A scalar sub-select (for a statement's columns): the end of the open block of client
    ``client`` in tenant ``tenant`` (SQL expressions of the caller's own statement, never
    values), NULL when there is none."""
    return (f"(SELECT b.until FROM oauth_client_blocks b WHERE b.tenant_id = {tenant}"  # noqa: S608
            f" AND b.client_id = {client} AND {_OPEN.format(b='b')})")


_IS_OPEN = sa.literal_column(f"({_OPEN.format(b='oauth_client_blocks')})", sa.Boolean)


def utc_text(moment: dt.datetime) -> str:
    """A time as people read it on our pages and in messages: ``2030-01-31 18:00 UTC``."""
    return f"{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


class ClientBlocked(AccessDenied):
    """The client is blocked in the tenant the consent chose (an ``access_denied``)."""

    def __init__(self, until: dt.datetime) -> None:
        super().__init__("an administrator of that organization has blocked this application "
                         f"until {utc_text(until)}")
        self.until = until


def block_end(now: dt.datetime, *, days: object = None, until: object = None) -> dt.datetime:
    """When a block asked for as ``days`` (a whole number, 1 to :data:`MAX_BLOCK_DAYS`) or
    ``until`` (an ISO 8601 time with its offset, at least :data:`MIN_BLOCK` and at most
    :data:`MAX_BLOCK_DAYS` days after ``now``) ends: exactly one of the two. ValueError, saying
    what to send, for anything else."""
    if (days is None) == (until is None):
        raise ValueError(f'send {{"days": <1 to {MAX_BLOCK_DAYS}>}} or '
                         '{"until": "<ISO 8601 time>"}, one of the two')
    latest = now + dt.timedelta(days=MAX_BLOCK_DAYS)
    if days is not None:
        if isinstance(days, bool) or not isinstance(days, int) \
                or not 1 <= days <= MAX_BLOCK_DAYS:
            raise ValueError(f"days must be a whole number from 1 to {MAX_BLOCK_DAYS}")
        return now + dt.timedelta(days=days)
    if not isinstance(until, str) or len(until) > 64:
        raise ValueError("until must be an ISO 8601 time, such as 2030-01-31T18:00:00Z")
    try:
        end = dt.datetime.fromisoformat(until)
    except ValueError:
        raise ValueError("until must be an ISO 8601 time, such as 2030-01-31T18:00:00Z") \
            from None
    if end.tzinfo is None:
        raise ValueError("until must carry its UTC offset (Z or +hh:mm)")
    if end < now + MIN_BLOCK:
        raise ValueError("until must be in the future")
    if end > latest:
        raise ValueError(f"a block lasts at most {MAX_BLOCK_DAYS} days")
    return end


@dataclass(frozen=True)
class Block:
    """A block of one client in the tenant, as listed."""

    client_id: str
    client_name: str | None
    until: dt.datetime
    created_at: dt.datetime
    created_by: uuid.UUID | None
    created_by_email: str | None
    lifted_at: dt.datetime | None
    open: bool

    def json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id, "client_name": self.client_name,
            "until": self.until.isoformat(), "created_at": self.created_at.isoformat(),
            "created_by": str(self.created_by) if self.created_by else None,
            "created_by_email": self.created_by_email,
            "lifted_at": self.lifted_at.isoformat() if self.lifted_at else None,
            "active": self.open,
        }


async def lock_client(tx: Transaction, client_id: str) -> Row | None:
    """The client's row (client_id, client_name, redirect_uris), locked until ``tx`` ends
    so that no block or consent of the client runs meanwhile; None if there is no such
    client."""
    return (await tx.execute(
        sa.select(oauth_clients.c.client_id, oauth_clients.c.client_name,
                  oauth_clients.c.redirect_uris)
        .where(oauth_clients.c.client_id == client_id)
        .with_for_update(key_share=True)
    )).first()


def open_block_until(tenant_id: uuid.UUID,
                     client_id: str | sa.ColumnElement[str]) -> sa.ScalarSelect[dt.datetime]:
    """:func:`open_block_sql` as a SQLAlchemy scalar sub-select."""
    return (
        sa.select(oauth_client_blocks.c.until)
        .where(oauth_client_blocks.c.tenant_id == tenant_id,
               oauth_client_blocks.c.client_id == client_id, _IS_OPEN)
        .scalar_subquery()
    )


async def blocked_until(tx: Transaction, tenant_id: uuid.UUID,
                        client_id: str) -> dt.datetime | None:
    """The end of the client's open block in the tenant (``tx``'s), or None."""
    until: dt.datetime | None = (
        await tx.execute(sa.select(open_block_until(tenant_id, client_id)))).scalar()
    return until


async def open_blocks(db: Database, user_id: uuid.UUID, client_id: str,
                      tenant_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, dt.datetime]:
    """Of ``tenant_ids`` (the person's), those where the client is blocked: their blocks'
    ends. One tenant transaction each: a block is visible only inside its own tenant."""
    found: dict[uuid.UUID, dt.datetime] = {}
    for tenant_id in tenant_ids:
        async with db.tenant(tenant_id, user_id=user_id) as tx:
            until = await blocked_until(tx, tenant_id, client_id)
        if until is not None:
            found[tenant_id] = until
    return found


async def put_block(tx: Transaction, tenant_id: uuid.UUID, client_id: str, until: dt.datetime,
                    by: uuid.UUID | None) -> dt.datetime | None:
    """Block the client in the tenant until ``until``: a new block, or a new end for the one
    not yet lifted (an open one, or one that ran out). Returns the end of the block it
    replaced if that one was still open. Lock the client first (:func:`lock_client`)."""
    replaced = await blocked_until(tx, tenant_id, client_id)
    statement = insert(oauth_client_blocks).values(
        tenant_id=tenant_id, client_id=client_id, until=until, created_by=by)
    await tx.execute(statement.on_conflict_do_update(
        index_elements=["tenant_id", "client_id"],
        index_where=oauth_client_blocks.c.lifted_at.is_(None),
        set_={"until": statement.excluded.until, "created_by": statement.excluded.created_by,
              "created_at": sa.func.now()},
    ))
    return replaced


async def lift_block(tx: Transaction, tenant_id: uuid.UUID, client_id: str,
                     by: uuid.UUID | None) -> dt.datetime | None:
    """Lift the client's open block in the tenant; the end it would have had, or None when
    no block was open."""
    was: dt.datetime | None = (await tx.execute(
        oauth_client_blocks.update()
        .where(oauth_client_blocks.c.tenant_id == tenant_id,
               oauth_client_blocks.c.client_id == client_id, _IS_OPEN)
        .values(lifted_at=sa.func.now(), lifted_by=by)
        .returning(oauth_client_blocks.c.until)
    )).scalar()
    return was


async def list_blocks(tx: Transaction, tenant_id: uuid.UUID, *,
                      include_ended: bool = False) -> list[Block]:
    """The tenant's open blocks (with ``include_ended``, the lifted and run-out ones too),
    ending soonest first."""
    query = (
        sa.select(oauth_client_blocks, oauth_clients.c.client_name,
                  users.c.email.label("created_by_email"), _IS_OPEN.label("is_open"))
        .join(oauth_clients, oauth_clients.c.client_id == oauth_client_blocks.c.client_id)
        .outerjoin(users, users.c.id == oauth_client_blocks.c.created_by)
        .where(oauth_client_blocks.c.tenant_id == tenant_id)
        .order_by(oauth_client_blocks.c.until, oauth_client_blocks.c.client_id)
    )
    if not include_ended:
        query = query.where(_IS_OPEN)
    return [Block(client_id=r.client_id, client_name=r.client_name, until=r.until,
                  created_at=r.created_at, created_by=r.created_by,
                  created_by_email=r.created_by_email, lifted_at=r.lifted_at, open=r.is_open)
            for r in (await tx.execute(query)).all()]
