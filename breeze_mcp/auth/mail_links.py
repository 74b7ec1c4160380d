"""The single-use links Breeze mails: one lifecycle for email verification and password reset.

A link is a random token (``bzv_…`` to verify an address, ``bzp_…`` to reset a password) whose
SHA-256 digest is stored in ``mail_links`` with its person, purpose and expiry. Issuing a link
supersedes every unused earlier one of the same person and purpose. A link is in exactly one
state, checked in this order: ``invalid`` (not ours, or not for this purpose), ``already_used``,
``replaced`` (a newer link was sent; said even after expiry, because it tells the person which
mail to use), ``expired``, ``usable``. Using it is one conditional ``UPDATE``: of two concurrent
uses, one wins and the other sees ``already_used``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

import sqlalchemy as sa

from breeze_mcp.auth.tokens import digest, mint
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Transaction
from breeze_mcp.db.models import mail_links, users

__all__ = ["PREFIXES", "Purpose", "State", "holder_email", "issue", "state", "use",
           "well_formed"]

Purpose = Literal["verify_email", "reset_password"]
State = Literal["usable", "replaced", "already_used", "expired", "invalid"]

PREFIXES: dict[Purpose, str] = {"verify_email": "bzv", "reset_password": "bzp"}


def well_formed(purpose: Purpose, token: str) -> bool:
    """Whether ``token`` could be a link of ``purpose`` (anything else is never looked up)."""
    return token.startswith(PREFIXES[purpose] + "_") and len(token) <= 100


async def issue(tx: Transaction, purpose: Purpose, user_id: uuid.UUID, ttl: int) -> str:
    """A new link for ``user_id``, valid ``ttl`` seconds; earlier unused ones of the same
    purpose stop working in the same transaction."""
    await tx.execute(
        mail_links.update()
        .where(mail_links.c.user_id == user_id, mail_links.c.purpose == purpose,
               mail_links.c.used_at.is_(None), mail_links.c.superseded_at.is_(None))
        .values(superseded_at=sa.func.now()))
    token = mint(PREFIXES[purpose])
    await tx.execute(mail_links.insert().values(
        digest=digest(token), user_id=user_id, purpose=purpose,
        expires_at=sa.func.now() + dt.timedelta(seconds=ttl)))
    return token


async def state(db: Database, purpose: Purpose, token: str
                ) -> tuple[State, uuid.UUID | None]:
    """The link's state and the person it was sent to (None for ``invalid``)."""
    if not well_formed(purpose, token):
        return "invalid", None
    async with db.system() as tx:
        row = (await tx.execute(
            sa.select(mail_links.c.user_id, mail_links.c.used_at, mail_links.c.superseded_at,
                      (mail_links.c.expires_at <= sa.func.now()).label("expired"))
            .where(mail_links.c.digest == digest(token), mail_links.c.purpose == purpose)
        )).first()
    if row is None:
        return "invalid", None
    found: State = ("already_used" if row.used_at is not None
                    else "replaced" if row.superseded_at is not None
                    else "expired" if row.expired else "usable")
    return found, row.user_id


async def use(tx: Transaction, purpose: Purpose, token: str) -> bool:
    """Mark a usable link used; False if it is not usable any more (a concurrent use won, or it
    expired or was replaced since it was checked)."""
    used = (await tx.execute(
        mail_links.update()
        .where(mail_links.c.digest == digest(token), mail_links.c.purpose == purpose,
               mail_links.c.used_at.is_(None), mail_links.c.superseded_at.is_(None),
               mail_links.c.expires_at > sa.func.now())
        .values(used_at=sa.func.now()).returning(mail_links.c.id))).first()
    return used is not None


async def holder_email(db: Database, purpose: Purpose, token: str) -> str | None:
    """The address a link (of any state) was sent to; None for a link that is not ours."""
    if not well_formed(purpose, token):
        return None
    async with db.system() as tx:
        email: str | None = (await tx.execute(
            sa.select(users.c.email).join(mail_links, mail_links.c.user_id == users.c.id)
            .where(mail_links.c.digest == digest(token), mail_links.c.purpose == purpose)
        )).scalar_one_or_none()
    return email
