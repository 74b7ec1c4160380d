"""Invitations: a mailed single-use link that makes a person a member of a tenant with a role.

An owner or admin invites an address with a role (admins cannot invite owners). The answer is
the same whether or not the address has an account: nothing about the account is looked up
when inviting, and the mail is the same. The link (``bzm_<tenant hex>_<43>``, stored as a
digest in the tenant's ``invitations``) lives ``BREEZE_INVITATION_TTL``; inviting the same
address again replaces the pending invitation (that is how one resends), and a pending one can
be withdrawn. One address gets at most :data:`ADDRESS_LIMIT` invitations, from all tenants.

Opening the link uses nothing (:func:`opened`). Accepting it (:func:`accept`) depends on the
address: an account that exists joins the tenant once its owner is signed in (two-factor sign-in
included); otherwise the person chooses a password and the account is created, its address
verified by the link itself. Either way the membership, the invitation's use and the
``member.joined`` entry commit together. A link is in exactly one state, checked in this order:
``invalid``, ``accepted``, ``revoked``, ``replaced``, ``expired``, ``usable``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal

import sqlalchemy as sa
from psycopg.errors import IntegrityError

from breeze_mcp import audit
from breeze_mcp.auth.accounts import ADMIN_ROLES, AccountError, Caller, Refused, normalise_email
from breeze_mcp.auth.members import assignable_roles
from breeze_mcp.auth.passwords import check_strength, hash_password
from breeze_mcp.auth.principal import Principal, RequestContext
from breeze_mcp.auth.rate_limit import RateLimiter
from breeze_mcp.auth.tokens import digest, mint_tenant_bound, tenant_of
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row, Transaction
from breeze_mcp.db.models import ROLES, invitations, memberships, tenants, users
from breeze_mcp.mail import message

__all__ = [
    "ADDRESS_LIMIT",
    "MESSAGES",
    "PREFIX",
    "Invitation",
    "Opened",
    "Outcome",
    "State",
    "accept",
    "invite",
    "list_pending",
    "opened",
    "resend",
    "revoke",
]

PREFIX = "bzm"

#: Invitations mailed to one address, whoever sends them.
ADDRESS_LIMIT = "5/hour"

State = Literal["usable", "accepted", "revoked", "replaced", "expired", "invalid"]
#: What a use of the link did (or why it did nothing).
Outcome = Literal["joined", "created", "sign_in", "wrong_account", "already_member",
                  "suspended", "account_exists", "accepted", "revoked", "replaced", "expired",
                  "invalid"]

#: Each outcome's HTTP status and the message that matches it, for the page.
MESSAGES: dict[Outcome, tuple[int, str]] = {
    "joined": (200, "You joined the organization."),
    "created": (200, "Your account is ready and you joined the organization. Sign in."),
    "sign_in": (401, "An account with this address exists: sign in with it, then open the "
                     "link in the mail again."),
    "wrong_account": (403, "This invitation is for another address than the one you are "
                           "signed in with. Sign out, sign in with the invited address, then "
                           "open the link again."),
    "already_member": (409, "You are already a member of this organization."),
    "suspended": (403, "This account is suspended and cannot join an organization."),
    "account_exists": (409, "An account with this address exists now: sign in with it, then "
                            "open the link in the mail again."),
    "accepted": (410, "This invitation was already used. If you accepted it, sign in."),
    "revoked": (410, "This invitation was withdrawn. Ask whoever invited you for a new one."),
    "replaced": (410, "A newer invitation was sent: use the link in the latest mail."),
    "expired": (410, "This invitation has expired. Ask whoever invited you for a new one."),
    "invalid": (400, "This is not a valid invitation link."),
}


@dataclass(frozen=True)
class Invitation:
    id: uuid.UUID
    email: str
    role: str
    invited_by_email: str | None
    created_at: dt.datetime
    expires_at: dt.datetime

    def as_json(self) -> dict[str, Any]:
        return {"id": str(self.id), "email": self.email, "role": self.role,
                "invited_by_email": self.invited_by_email,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat()}


@dataclass(frozen=True)
class Opened:
    """What the link's page shows: its state and, while usable, what it offers."""

    state: State
    organization: str | None = None
    email: str | None = None
    role: str | None = None
    #: Whether the invited address has an account (the page then asks its owner to sign in).
    account_exists: bool = False


_PENDING = sa.and_(invitations.c.accepted_at.is_(None), invitations.c.revoked_at.is_(None),
                   invitations.c.superseded_at.is_(None))


def _state(row: Row | None) -> State:
    if row is None:
        return "invalid"
    return ("accepted" if row.accepted_at is not None
            else "revoked" if row.revoked_at is not None
            else "replaced" if row.superseded_at is not None
            else "expired" if row.expired else "usable")


def _invitation(row: Row) -> Invitation:
    return Invitation(row.id, row.email, row.role, row.inviter, row.created_at, row.expires_at)


_COLUMNS = (invitations.c.id, invitations.c.email, invitations.c.role,
            invitations.c.created_at, invitations.c.expires_at,
            users.c.email.label("inviter"))


async def invite(tx: Transaction, caller: Caller, limiter: RateLimiter, settings: Settings, *,
                 email: str, role: str) -> tuple[Invitation, EmailMessage]:
    """Invite ``email`` to the caller's tenant as ``role`` (``tx`` finished here with
    ``member.invited``), replacing a pending invitation to the same address; the invitation
    and the mail to send once the answer is out. Refusals are audited."""
    principal, action = caller.principal, "member.invited"
    if principal.role not in ADMIN_ROLES:
        await caller.refuse(tx, action, "role", "only owners and admins invite members")
    try:
        email = normalise_email(email)
    except AccountError as exc:
        await caller.refuse(tx, action, "invalid", str(exc))
    if role not in ROLES:
        await caller.refuse(tx, action, "invalid", f"unknown role {role!r}: choose one of "
                            + ", ".join(ROLES), email=email)
    if role not in assignable_roles(principal.role):
        await caller.refuse(tx, action, "role", "only owners may invite an owner",
                            email=email, role=role)
    member = (await tx.execute(
        sa.select(memberships.c.user_id).join(users, users.c.id == memberships.c.user_id)
        .where(memberships.c.tenant_id == principal.tenant_id,
               sa.func.lower(users.c.email) == email.lower()))).first()
    if member is not None:
        await caller.refuse(tx, action, "conflict", f"{email} is already a member",
                            email=email, role=role)
    if not (await limiter.hit(f"invite:{email.lower()}", ADDRESS_LIMIT)).allowed:
        await caller.refuse(tx, action, "rate_limited", f"{email} was invited too often "
                            "lately: try again in an hour", email=email, role=role)
    await tx.execute(invitations.update()
                     .where(invitations.c.tenant_id == principal.tenant_id,
                            sa.func.lower(invitations.c.email) == email.lower(), _PENDING)
                     .values(superseded_at=sa.func.now()))
    token = mint_tenant_bound(PREFIX, principal.tenant_id)
    row = (await tx.execute(
        invitations.insert().values(
            tenant_id=principal.tenant_id, email=email, role=role, digest=digest(token),
            invited_by=principal.acting_user_id,
            expires_at=sa.func.now() + dt.timedelta(seconds=settings.invitation_ttl))
        .returning(invitations.c.id, invitations.c.email, invitations.c.role,
                   invitations.c.created_at, invitations.c.expires_at))).one()
    organization, inviter = (await tx.execute(
        sa.select(tenants.c.name, sa.select(users.c.email)
                  .where(users.c.id == principal.acting_user_id).scalar_subquery())
        .where(tenants.c.id == principal.tenant_id))).one()
    await tx.finish(caller.entry(action, invitation_id=str(row.id), email=email, role=role))
    days = max(settings.invitation_ttl // 86400, 1)
    mail = message(
        settings, email, f"You are invited to {organization} on Breeze MCP",
        f"{inviter or 'An administrator'} invited you to join {organization} on Breeze MCP "
        f"as {role}.\n\nAccept with this link (valid for {days} day{'s' if days > 1 else ''}, "
        f"usable once):\n\n{settings.public_url}/invite?token={token}\n\n"
        "If you already have a Breeze MCP account with this address, sign in first; "
        "otherwise you will choose a password.\n"
        "If you did not expect this invitation, ignore this message.\n")
    return Invitation(row.id, row.email, row.role, inviter, row.created_at,
                      row.expires_at), mail


async def resend(tx: Transaction, caller: Caller, limiter: RateLimiter, settings: Settings,
                 invitation_id: uuid.UUID) -> tuple[Invitation, EmailMessage]:
    """Invite the address of a pending invitation again, with its role: a new link, and the
    old one replaced."""
    row = (await tx.execute(
        sa.select(invitations.c.email, invitations.c.role)
        .where(invitations.c.id == invitation_id,
               invitations.c.tenant_id == caller.principal.tenant_id, _PENDING))).first()
    if row is None:
        await caller.refuse(tx, "member.invited", "not_found", "no such pending invitation",
                            invitation_id=str(invitation_id))
    return await invite(tx, caller, limiter, settings, email=row.email, role=row.role)


async def list_pending(tx: Transaction, principal: Principal) -> list[Invitation]:
    """The tenant's invitations still waiting (expired ones included, until replaced or
    withdrawn), newest first."""
    if principal.role not in ADMIN_ROLES:
        raise Refused("role", "only owners and admins manage invitations")
    rows = await tx.execute(
        sa.select(*_COLUMNS).outerjoin(users, users.c.id == invitations.c.invited_by)
        .where(invitations.c.tenant_id == principal.tenant_id, _PENDING)
        .order_by(invitations.c.created_at.desc()))
    return [_invitation(r) for r in rows]


async def revoke(tx: Transaction, caller: Caller, invitation_id: uuid.UUID) -> None:
    """Withdraw a pending invitation (``tx`` finished here with
    ``member.invitation_revoked``): its link stops working. Admins cannot withdraw an
    invitation to be owner."""
    action = "member.invitation_revoked"
    if caller.principal.role not in ADMIN_ROLES:
        await caller.refuse(tx, action, "role", "only owners and admins manage "
                            "invitations", invitation_id=str(invitation_id))
    row = (await tx.execute(
        sa.select(invitations.c.email, invitations.c.role)
        .where(invitations.c.id == invitation_id,
               invitations.c.tenant_id == caller.principal.tenant_id, _PENDING)
        .with_for_update())).first()
    if row is None:
        await caller.refuse(tx, action, "not_found", "no such pending invitation",
                            invitation_id=str(invitation_id))
    if row.role not in assignable_roles(caller.principal.role):
        await caller.refuse(tx, action, "role", "only owners may withdraw an invitation "
                            "to be owner", invitation_id=str(invitation_id))
    await tx.execute(invitations.update().where(invitations.c.id == invitation_id)
                     .values(revoked_at=sa.func.now()))
    await tx.finish(caller.entry(action, invitation_id=str(invitation_id), email=row.email,
                                 role=row.role))


def _lookup(token: str) -> sa.Select[Any]:
    return (sa.select(invitations.c.id, invitations.c.tenant_id, invitations.c.email,
                      invitations.c.role, invitations.c.accepted_at, invitations.c.revoked_at,
                      invitations.c.superseded_at,
                      (invitations.c.expires_at <= sa.func.now()).label("expired"))
            .where(invitations.c.digest == digest(token)))


def _tenant(token: str) -> uuid.UUID | None:
    return tenant_of(token, PREFIX) if len(token) <= 100 else None


async def opened(db: Database, token: str) -> Opened:
    """The link's state and, while usable, what it offers. Uses nothing."""
    tenant_id = _tenant(token)
    if tenant_id is None:
        return Opened("invalid")
    async with db.tenant(tenant_id) as tx:
        row = (await tx.execute(_lookup(token))).first()
        state = _state(row)
        if row is None or state != "usable":
            return Opened(state)
        organization = (await tx.execute(
            sa.select(tenants.c.name).where(tenants.c.id == tenant_id))).scalar_one()
        exists = (await tx.execute(
            sa.select(users.c.id).where(sa.func.lower(users.c.email) == row.email.lower())
        )).first() is not None
    return Opened(state, organization, row.email, row.role, exists)


def _entry(request: RequestContext, tenant_id: uuid.UUID | None, actor: uuid.UUID | None,
           *, deny_reason: str | None = None, **parameters: Any) -> audit.AuditEntry:
    return audit.AuditEntry(
        actor_type="user", actor_id=str(actor) if actor else None, acting_user_id=actor,
        auth_path="session", action="member.joined", tenant_id=tenant_id,
        decision="denied" if deny_reason else "allowed",
        outcome="blocked" if deny_reason else "success", deny_reason=deny_reason,
        request_id=request.request_id, client_ip=request.client_ip,
        user_agent=request.user_agent, parameters=parameters)


async def accept(db: Database, token: str, request: RequestContext, *,
                 user_id: uuid.UUID | None = None, password: str | None = None
                 ) -> tuple[Outcome, uuid.UUID | None]:
    """Use the link: the signed-in person ``user_id`` joins, when the invited address is
    theirs; or, when the address has no account, one is created with ``password``. The
    outcome (audited when the link was looked at) and the tenant joined.
    :class:`AccountError` (no password, a weak one) changes nothing."""
    tenant_id = _tenant(token)
    if tenant_id is None:
        async with db.system() as tx:
            await tx.finish(_entry(request, None, user_id, deny_reason="invalid"))
        return "invalid", None
    found = await opened(db, token)
    password_hash = None
    if found.state == "usable" and not found.account_exists:
        if not password:
            raise AccountError("choose a password")
        try:
            check_strength(password, email=found.email or "")
        except ValueError as exc:
            raise AccountError(f"password: {exc}") from None
        password_hash = hash_password(password)  # before any row is locked: it is slow
    async with db.tenant(tenant_id, user_id=user_id) as tx:
        row = (await tx.execute(_lookup(token).with_for_update())).first()
        state = _state(row)
        if row is None or state != "usable":
            closed: Outcome = "invalid" if state == "usable" else state
            await tx.finish(_entry(request, tenant_id if row else None, user_id,
                                   deny_reason=closed))
            return closed, None
        person = (await tx.execute(
            sa.select(users.c.id, users.c.disabled_at)
            .where(sa.func.lower(users.c.email) == row.email.lower())
            .with_for_update())).first()
        joined = {"invitation_id": str(row.id), "role": row.role}
        outcome: Outcome
        if person is not None:
            refusal: Outcome | None = (
                "sign_in" if user_id is None
                else "wrong_account" if person.id != user_id
                else "suspended" if person.disabled_at is not None else None)
            if refusal is None and (await tx.execute(
                    sa.select(memberships.c.role)
                    .where(memberships.c.tenant_id == tenant_id,
                           memberships.c.user_id == person.id))).first() is not None:
                refusal = "already_member"
            if refusal is not None:
                await tx.finish(_entry(request, tenant_id, user_id, deny_reason=refusal,
                                       **joined))
                return refusal, None
            new_user, outcome = person.id, "joined"
        else:
            if password_hash is None:  # the account was removed since the page was opened
                await tx.finish(_entry(request, tenant_id, user_id, deny_reason="invalid"))
                return "invalid", None
            new_user, outcome = uuid.uuid4(), "created"
            try:
                await tx.execute(users.insert().values(
                    id=new_user, email=row.email, password_hash=password_hash,
                    email_verified_at=sa.func.now()))
            except IntegrityError:  # an account for the address was made meanwhile
                await tx.finish(_entry(request, tenant_id, user_id,
                                       deny_reason="account_exists", **joined))
                return "account_exists", None
        await tx.execute(memberships.insert().values(tenant_id=tenant_id, user_id=new_user,
                                                     role=row.role))
        await tx.execute(invitations.update().where(invitations.c.id == row.id)
                         .values(accepted_at=sa.func.now(), accepted_by=new_user))
        await tx.execute(invitations.update()  # other pending ones to the address: moot now
                         .where(invitations.c.tenant_id == tenant_id,
                                sa.func.lower(invitations.c.email) == row.email.lower(),
                                _PENDING)
                         .values(superseded_at=sa.func.now()))
        await tx.finish(_entry(request, tenant_id, new_user, user_id=str(new_user),
                               new_account=outcome == "created", **joined))
    return outcome, tenant_id
