"""A tenant's members, governed by its owners and admins: roles, suspension, removal, sessions.

The rules live here, so the console and the admin API (and whatever door comes next) apply
them alike and write the same entries (:class:`~breeze_mcp.auth.accounts.Caller`):

* only owners and admins govern members; a refusal is audited and raised as
  :class:`~breeze_mcp.auth.accounts.Refused`;
* owners may do anything, including making owners; admins may neither make an owner nor
  change, suspend, resume, remove or sign out one;
* the tenant keeps an owner: its last one cannot be demoted or removed (the owners' rows are
  locked while that is decided, so two concurrent demotions cannot leave none);
* nobody suspends or removes themselves here (a lock-out by mistake has no way back);
* **suspension is the person's, not the membership's** (``users.disabled_at``: no sign-in and
  no credential of theirs works, anywhere). A tenant may therefore suspend only someone who
  belongs to no other tenant, else it would lock them out of organizations it does not govern;
  for anyone else, removal is the tenant's own tool. The suspension records the tenant, and only
  that tenant (or the operator) lifts it.

Each change takes effect on the next request: credentials are judged with the holder's role
and state at every request (:func:`~breeze_mcp.auth.credentials.usable_scopes`), so a demotion
narrows keys, grants and console sessions at once; a suspension or removal also ends the
person's web sessions and revokes their grants (:func:`~breeze_mcp.auth.accounts.cut_access`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from breeze_mcp.auth.accounts import (
    ADMIN_ROLES,
    AccessCut,
    AccountError,
    Caller,
    Refused,
    cut_access,
    mark_suspended,
    owners,
    remove_membership,
)
from breeze_mcp.auth.principal import Principal
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row, Transaction
from breeze_mcp.db.models import ROLES, memberships, mfa_totp, users, web_sessions

__all__ = [
    "Member",
    "assignable_roles",
    "change_role",
    "end_sessions",
    "list_members",
    "live_sessions",
    "remove",
    "resume",
    "suspend",
]


@dataclass(frozen=True)
class Member:
    user_id: uuid.UUID
    email: str
    display_name: str | None
    role: str
    mfa: bool
    #: Suspended (by anyone: no sign-in, no credential works), and whether by this tenant.
    suspended: bool
    suspended_here: bool
    joined_at: dt.datetime
    last_sign_in_at: dt.datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user_id), "email": self.email,
            "display_name": self.display_name, "role": self.role, "mfa": self.mfa,
            "status": "suspended" if self.suspended else "active",
            "suspended_by_this_organization": self.suspended_here,
            "joined_at": self.joined_at.isoformat(),
            "last_sign_in_at": (self.last_sign_in_at.isoformat()
                                if self.last_sign_in_at else None),
        }


def assignable_roles(role: str | None) -> tuple[str, ...]:
    """The roles a member of ``role`` may give (to a member or an invitation)."""
    if role == "owner":
        return ROLES
    if role == "admin":
        return tuple(r for r in ROLES if r != "owner")
    return ()


def _governs(principal: Principal) -> None:
    if principal.role not in ADMIN_ROLES:
        raise Refused("role", "only owners and admins manage members")


async def list_members(tx: Transaction, principal: Principal) -> list[Member]:
    """The members of the caller's tenant (``tx``), by address: role, two-factor sign-in on,
    suspended, joined, last signed in (the newest session it started)."""
    _governs(principal)
    mfa_on = sa.exists().where(mfa_totp.c.user_id == users.c.id,
                               mfa_totp.c.enabled_at.is_not(None))
    last_sign_in = (sa.select(sa.func.max(web_sessions.c.created_at))
                    .where(web_sessions.c.user_id == users.c.id).scalar_subquery())
    rows = await tx.execute(
        sa.select(users.c.id, users.c.email, users.c.display_name, memberships.c.role,
                  memberships.c.created_at, users.c.disabled_at,
                  users.c.suspended_from_tenant_id, mfa_on.label("mfa"),
                  last_sign_in.label("last_sign_in_at"))
        .join(users, users.c.id == memberships.c.user_id)
        .where(memberships.c.tenant_id == principal.tenant_id)
        .order_by(sa.func.lower(users.c.email)))
    return [Member(r.id, r.email, r.display_name, r.role, r.mfa, r.disabled_at is not None,
                   r.suspended_from_tenant_id == principal.tenant_id, r.created_at,
                   r.last_sign_in_at) for r in rows]


async def _target(tx: Transaction, caller: Caller, action: str, user_id: uuid.UUID, *,
                  self_allowed: bool = True) -> str:
    """The member's role (their membership locked until ``tx`` ends), once the caller may
    act on them; else the refusal, audited."""
    principal = caller.principal
    if principal.role not in ADMIN_ROLES:
        await caller.refuse(tx, action, "role", "only owners and admins manage members",
                            user_id=str(user_id))
    if not self_allowed and user_id == caller.user_id:
        await caller.refuse(tx, action, "forbidden", "you cannot do this to yourself: ask "
                            "another owner or admin", user_id=str(user_id))
    role: str | None = (await tx.execute(
        sa.select(memberships.c.role)
        .where(memberships.c.tenant_id == principal.tenant_id,
               memberships.c.user_id == user_id).with_for_update())).scalar_one_or_none()
    if role is None:
        await caller.refuse(tx, action, "not_found", "no such member", user_id=str(user_id))
    if role == "owner" and principal.role != "owner":
        await caller.refuse(tx, action, "role", "only owners may act on an owner",
                            user_id=str(user_id))
    return role


async def change_role(tx: Transaction, caller: Caller, user_id: uuid.UUID,
                      role: str) -> str:
    """Give the member ``role``, in ``tx`` (finished here with ``member.role_changed``); the
    role they had. Takes effect on their next request: keys and grants narrow with it."""
    action = "member.role_changed"
    if role not in ROLES:
        await caller.refuse(tx, action, "invalid", f"unknown role {role!r}: choose one of "
                            + ", ".join(ROLES), user_id=str(user_id))
    before = await _target(tx, caller, action, user_id)
    if role not in assignable_roles(caller.principal.role):
        await caller.refuse(tx, action, "role", "only owners may make an owner",
                            user_id=str(user_id), to=role)
    if before == "owner" and role != "owner" and await owners(tx, caller.principal.tenant_id) <= 1:
        await caller.refuse(tx, action, "last_owner", "that is the organization's last owner: "
                            "make another member owner first", user_id=str(user_id), to=role)
    if role != before:
        await tx.execute(memberships.update()
                         .where(memberships.c.tenant_id == caller.principal.tenant_id,
                                memberships.c.user_id == user_id)
                         .values(role=role))
    await tx.finish(caller.entry(action, user_id=str(user_id), **{"from": before, "to": role}))
    return before


async def _user_locked(tx: Transaction, user_id: uuid.UUID) -> Row:
    """The person's suspension state, their row locked until ``tx`` ends (an invitation
    accepted at the same moment waits, then sees the suspension)."""
    return (await tx.execute(
        sa.select(users.c.email, users.c.disabled_at, users.c.suspended_from_tenant_id)
        .where(users.c.id == user_id).with_for_update())).one()


async def suspend(db: Database, tx: Transaction, caller: Caller,
                  user_id: uuid.UUID) -> AccessCut:
    """Suspend a member who belongs to no other tenant (``tx`` finished here with
    ``user.suspended``), then end their sessions and revoke their grants. Someone who also
    belongs elsewhere is ``conflict``: remove them instead."""
    action, tenant_id = "user.suspended", caller.principal.tenant_id
    await _target(tx, caller, action, user_id, self_allowed=False)
    await _user_locked(tx, user_id)
    async with db.system(user_id=user_id) as other:  # their memberships, every tenant
        elsewhere = (await other.execute(
            sa.select(sa.func.count()).select_from(memberships)
            .where(memberships.c.user_id == user_id, memberships.c.tenant_id != tenant_id)
        )).scalar_one()
    if elsewhere:
        await caller.refuse(tx, action, "conflict", "this person belongs to other "
                            "organizations too, and a suspension would lock them out there "
                            "as well: remove them from this organization instead",
                            user_id=str(user_id))
    await mark_suspended(tx, user_id, True, from_tenant=tenant_id)
    await tx.finish(caller.entry(action, user_id=str(user_id)))
    return await cut_access(db, user_id, reason="user_suspended", actor=caller)


async def resume(tx: Transaction, caller: Caller, user_id: uuid.UUID) -> None:
    """Lift a suspension this tenant made (``tx`` finished here with ``user.resumed``).
    Nothing comes back: the person signs in and connects their apps again."""
    action = "user.resumed"
    await _target(tx, caller, action, user_id, self_allowed=False)
    person = await _user_locked(tx, user_id)
    if person.disabled_at is None:
        await caller.refuse(tx, action, "conflict", "this member is not suspended",
                            user_id=str(user_id))
    if person.suspended_from_tenant_id != caller.principal.tenant_id:
        await caller.refuse(tx, action, "forbidden", "this suspension was not made by this "
                            "organization: only the service operator can lift it",
                            user_id=str(user_id))
    await mark_suspended(tx, user_id, False)
    await tx.finish(caller.entry(action, user_id=str(user_id)))


async def remove(db: Database, tx: Transaction, caller: Caller,
                 user_id: uuid.UUID) -> AccessCut:
    """Remove a member: their grants here revoked and the membership deleted in ``tx``
    (finished here with ``member.removed``), then their web sessions ended. Their keys here
    stop working at once (a key needs its creator's membership)."""
    action, tenant_id = "member.removed", caller.principal.tenant_id
    await _target(tx, caller, action, user_id, self_allowed=False)
    try:
        removed = await remove_membership(tx, tenant_id, user_id, actor=caller)
    except AccountError as exc:  # the last owner
        await caller.refuse(tx, action, "last_owner", str(exc), user_id=str(user_id))
    assert removed is not None  # _target found and locked the membership
    role, grants = removed
    await tx.finish(caller.entry(action, user_id=str(user_id), role=role, grants=grants))
    cut = await cut_access(db, user_id, reason="member_removed", actor=caller, tenant_ids=[])
    return AccessCut(sessions=cut.sessions, grants=grants)


async def live_sessions(tx: Transaction, principal: Principal, user_id: uuid.UUID
                        ) -> list[Row] | None:
    """A member's live web sessions, most recently used first (id, created_at,
    last_seen_at, client_ip, user_agent); None when they are not a member. A session is the
    person's, for every organization they belong to."""
    _governs(principal)
    member = (await tx.execute(
        sa.select(memberships.c.role).where(memberships.c.tenant_id == principal.tenant_id,
                                            memberships.c.user_id == user_id))).first()
    if member is None:
        return None
    return (await tx.execute(
        sa.select(web_sessions.c.id, web_sessions.c.created_at, web_sessions.c.last_seen_at,
                  web_sessions.c.client_ip, web_sessions.c.user_agent)
        .where(web_sessions.c.user_id == user_id, web_sessions.c.revoked_at.is_(None),
               web_sessions.c.expires_at > sa.func.now())
        .order_by(web_sessions.c.last_seen_at.desc()))).all()


async def end_sessions(tx: Transaction, caller: Caller, user_id: uuid.UUID) -> int:
    """Sign a member out everywhere (``tx`` finished here with ``auth.sessions_ended``): how
    many sessions ended. Their keys and grants are left alone."""
    action = "auth.sessions_ended"
    await _target(tx, caller, action, user_id)
    ended = (await tx.execute(
        web_sessions.update()
        .where(web_sessions.c.user_id == user_id, web_sessions.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now()))).rowcount
    await tx.finish(caller.entry(action, user_id=str(user_id), reason="ended_by_admin",
                                 sessions=ended))
    return ended
