"""Tenants, users and memberships: creation and lookup shared by the CLI and the web console.

Each operation is one transaction: it either completes (with its audit entry) or leaves
nothing behind. An operation is done by an operator (the CLI, named by an actor label such as
``system:cli``) or by a :class:`Caller`, someone authenticated at a front door (a console
session, an admin API key), whose entries are then the caller's own
(:meth:`~breeze_mcp.auth.principal.Principal.audit_entry`), the same shape whichever door.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import sqlalchemy as sa
from psycopg.errors import IntegrityError

from breeze_mcp import audit
from breeze_mcp.auth.passwords import check_strength, hash_password
from breeze_mcp.auth.principal import (
    ADMIN_ROLES,  # re-exported for the services here
    Principal,
    RefusalCode,  # re-exported: the front doors import it from here
    RequestContext,
)
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Transaction
from breeze_mcp.db.models import ROLES, memberships, oauth_grants, tenants, users, web_sessions

__all__ = [
    "ADMIN_ROLES",
    "REFUSAL_STATUS",
    "AccessCut",
    "AccountError",
    "Actor",
    "Caller",
    "Organization",
    "RefusalCode",
    "Refused",
    "Role",
    "Tenant",
    "User",
    "activation_missing",
    "change_password",
    "create_tenant",
    "create_user",
    "cut_access",
    "find_tenant",
    "list_tenants",
    "mark_suspended",
    "normalise_email",
    "organizations_of",
    "owners",
    "remove_member",
    "remove_membership",
    "set_password",
    "set_suspended",
    "slugify",
]

Role = Literal["owner", "admin", "technician", "readonly"]


_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")


class AccountError(ValueError):
    """Bad input for an account operation; the message is safe to show as one line."""


#: The HTTP status each refusal is answered with at every front door.
REFUSAL_STATUS: dict[RefusalCode, int] = {
    "role": 403, "forbidden": 403, "not_found": 404, "last_owner": 409, "conflict": 409,
    "invalid": 400, "rate_limited": 429}


class Refused(AccountError):
    """A caller's operation that was not done (and was audited as denied): ``code`` says why,
    ``status`` is the HTTP status each front door answers with."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code: RefusalCode = code
        self.status = REFUSAL_STATUS[code]


@dataclass(frozen=True)
class Caller:
    """Someone authenticated at a front door doing an account operation: their Principal
    (a console session's, an API key's) and the request, which every entry records."""

    principal: Principal
    request: RequestContext

    @property
    def user_id(self) -> uuid.UUID | None:
        return self.principal.acting_user_id

    def entry(self, action: str, **parameters: Any) -> audit.AuditEntry:
        """The caller's entry for ``action`` done (a refusal's is :meth:`refuse`'s)."""
        return self.principal.audit_entry(
            self.request, action=action, parameters=parameters, decision="allowed",
            outcome="success")

    async def refuse(self, tx: Transaction, action: str, code: RefusalCode, message: str,
                     **parameters: Any) -> NoReturn:
        """Finish ``tx`` with the refusal's entry and raise :class:`Refused`. Refuse before
        writing anything: what ``tx`` holds so far commits with the entry."""
        await tx.finish(self.principal.refusal_entry(self.request, action, code, message,
                                                     parameters))
        raise Refused(code, message)


#: Who does an operation: an operator's actor label (``system:cli``) or a :class:`Caller`.
Actor = str | Caller


def _actor_entry(actor: Actor, action: str, *, subject: uuid.UUID,
                 tenant_id: uuid.UUID | None = None, **parameters: Any) -> audit.AuditEntry:
    """The entry of an operation on ``subject`` (a person): an operator's names the person as
    the acting user (there is no other), a caller's names the caller."""
    if isinstance(actor, Caller):
        return actor.entry(action, **parameters)
    return audit.operator_entry(actor, action, tenant_id=tenant_id, acting_user_id=subject,
                                parameters=parameters)


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    slug: str
    name: str
    status: str


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    tenant_id: uuid.UUID
    role: str


def _constraint(exc: IntegrityError) -> str | None:
    return exc.diag.constraint_name


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].strip("-")
    if not slug:
        raise AccountError(f"cannot make a tenant slug from {name!r}; pass --slug")
    return slug


def normalise_email(email: str) -> str:
    email = email.strip()
    # isprintable: no NUL, control character or lone surrogate reaches a statement.
    if len(email) > 254 or not email.isprintable() or not _EMAIL.match(email):
        raise AccountError(f"not a valid email address: {email!r}")
    local, domain = email.rsplit("@", 1)
    return f"{local}@{domain.lower()}"


async def create_tenant(
    db: Database,
    name: str,
    *,
    slug: str | None = None,
    status: str = "active",
    actor: str = "system:cli",
) -> Tenant:
    name = name.strip()
    if not name or len(name) > 200:
        raise AccountError("tenant name must be 1 to 200 characters")
    slug = slugify(slug or name)
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", slug):
        raise AccountError(f"invalid slug {slug!r}: lowercase letters, digits and '-'")
    tenant_id = uuid.uuid4()
    try:
        async with db.tenant(tenant_id) as conn:
            await conn.execute(
                tenants.insert().values(
                    id=tenant_id,
                    slug=slug,
                    name=name,
                    status=status,
                    activated_at=sa.func.now() if status == "active" else None,
                )
            )
            await conn.finish(audit.operator_entry(
                    actor, "tenant.create",
                    tenant_id=tenant_id,
                    parameters={"name": name, "slug": slug, "status": status},
                ))
    except IntegrityError as exc:
        if _constraint(exc) != "tenants_slug_key":
            raise
        raise AccountError(f"a tenant with slug {slug!r} already exists") from None
    return Tenant(id=tenant_id, slug=slug, name=name, status=status)


async def list_tenants(db: Database) -> list[Tenant]:
    """Every tenant, by slug (operator use: the CLI)."""
    async with db.system() as tx:
        rows = await tx.execute(
            sa.select(tenants.c.id, tenants.c.slug, tenants.c.name, tenants.c.status)
            .order_by(tenants.c.slug))
    return [Tenant(id=r.id, slug=r.slug, name=r.name, status=r.status) for r in rows]


async def find_tenant(db: Database, ref: str) -> Tenant:
    """A tenant by slug or id; :class:`AccountError` when there is none."""
    try:
        tid: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        tid = None
    query = sa.select(tenants.c.id, tenants.c.slug, tenants.c.name, tenants.c.status)
    query = query.where(tenants.c.id == tid) if tid else query.where(tenants.c.slug == ref)
    async with db.system() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        raise AccountError(f"unknown tenant {ref!r}")
    return Tenant(id=row.id, slug=row.slug, name=row.name, status=row.status)


async def create_user(
    db: Database,
    tenant: Tenant,
    *,
    email: str,
    password: str,
    role: str,
    display_name: str | None = None,
    verified: bool = True,
    actor: str = "system:cli",
) -> User:
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    email = normalise_email(email)
    try:
        check_strength(password, email=email)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    password_hash = hash_password(password)
    user_id = uuid.uuid4()
    try:
        async with db.tenant(tenant.id) as conn:
            await conn.execute(
                users.insert().values(
                    id=user_id,
                    email=email,
                    display_name=display_name,
                    password_hash=password_hash,
                    email_verified_at=sa.func.now() if verified else None,
                )
            )
            await conn.execute(
                memberships.insert().values(tenant_id=tenant.id, user_id=user_id, role=role)
            )
            await conn.finish(audit.operator_entry(
                    actor, "user.create",
                    tenant_id=tenant.id,
                    acting_user_id=None,
                    parameters={"email": email, "role": role, "user_id": str(user_id)},
                ))
    except IntegrityError as exc:
        if _constraint(exc) != "users_email_lower_key":
            raise
        raise AccountError(f"a user with email {email!r} already exists") from None
    return User(id=user_id, email=email, tenant_id=tenant.id, role=role)


@dataclass(frozen=True)
class AccessCut:
    """What :func:`cut_access` ended: web sessions, and OAuth grants per tenant."""

    sessions: int
    grants: int


async def cut_access(
    db: Database, user_id: uuid.UUID, *, reason: str, actor: Actor,
    tenant_ids: list[uuid.UUID] | None = None,
) -> AccessCut:
    """End every web session of the user and revoke every OAuth grant they made (with all
    its tokens and unused codes) in ``tenant_ids`` (default: every tenant they belong to),
    before returning: the next request with any of them is refused. API keys follow their
    creator already (``credentials.usable_scopes``). Each step is audited.

    A :class:`Caller` acts in their own tenant only: their entries carry it, and grants
    elsewhere are left alone (the tenant console suspends only people who belong to no other
    tenant)."""
    from breeze_mcp.auth.oauth.revocation import revoke_grant  # oauth builds on accounts

    if isinstance(actor, Caller):
        home = actor.principal.tenant_id
        tenant_ids = [t for t in (tenant_ids if tenant_ids is not None else [home])
                      if t == home]
        opened = db.tenant(home, user_id=user_id)
        actor_type, actor_id = actor.principal.actor_type, actor.principal.actor_id
        auth_path, acting, request = (actor.principal.auth_path, actor.user_id,
                                      actor.request)
    else:
        opened = db.system(user_id=user_id)
        (actor_type, auth_path), actor_id = audit.operator(actor), actor
        acting, request = user_id, None
    async with opened as tx:
        if tenant_ids is None:
            tenant_ids = list((await tx.execute(
                sa.select(memberships.c.tenant_id).where(memberships.c.user_id == user_id)
            )).scalars())
        ended = (await tx.execute(
            web_sessions.update()
            .where(web_sessions.c.user_id == user_id, web_sessions.c.revoked_at.is_(None))
            .values(revoked_at=sa.func.now())
        )).rowcount
        await tx.finish(_actor_entry(actor, "auth.sessions_ended", subject=user_id,
                                     user_id=str(user_id), reason=reason, sessions=ended))
    revoked = 0
    for tenant_id in tenant_ids:
        async with db.tenant(tenant_id, user_id=user_id) as tx:
            grant_ids = list((await tx.execute(
                sa.select(oauth_grants.c.id)
                .where(oauth_grants.c.tenant_id == tenant_id,
                       oauth_grants.c.user_id == user_id, oauth_grants.c.revoked_at.is_(None))
                .order_by(oauth_grants.c.created_at).with_for_update()
            )).scalars())
            for grant_id in grant_ids:
                await revoke_grant(tx, tenant_id, grant_id, reason=reason,
                                   actor_type=actor_type, actor_id=actor_id, request=request,
                                   auth_path=auth_path, acting_user_id=acting)
            await tx.finish(None)  # each revocation carries its own entry
        revoked += len(grant_ids)
    return AccessCut(sessions=ended, grants=revoked)


@dataclass(frozen=True)
class Organization:
    """A tenant as one of its members sees it: their role, its status, what it still lacks."""

    id: uuid.UUID
    slug: str
    name: str
    status: str
    role: str
    missing: list[str]


async def organizations_of(db: Database, user_id: uuid.UUID) -> list[Organization]:
    """Every tenant the person belongs to, by name, with what each inactive one still lacks
    (the owner's console says it)."""
    async with db.system(user_id=user_id) as tx:
        rows = (await tx.execute(
            sa.select(tenants.c.id, tenants.c.slug, tenants.c.name, tenants.c.status,
                      memberships.c.role)
            .join(tenants, tenants.c.id == memberships.c.tenant_id)
            .where(memberships.c.user_id == user_id).order_by(tenants.c.name))).all()
    found = []
    for row in rows:
        missing: list[str] = []
        if row.status != "active":
            async with db.tenant(row.id, user_id=user_id) as tx:
                missing = await activation_missing(tx, row.id)
        found.append(Organization(row.id, row.slug, row.name, row.status, row.role, missing))
    return found


async def activation_missing(tx: Transaction, tenant_id: uuid.UUID) -> list[str]:
    """What the tenant of ``tx`` still lacks to be active, in words for its callers (empty
    for an active tenant)."""
    verified_owner = sa.exists().where(
        memberships.c.tenant_id == tenants.c.id, memberships.c.role == "owner",
        memberships.c.user_id == users.c.id, users.c.email_verified_at.is_not(None))
    row = (await tx.execute(
        sa.select(tenants.c.status, tenants.c.payment_method_at,
                  sa.or_(tenants.c.email_verified_at.is_not(None), verified_owner)
                  .label("verified"))
        .where(tenants.c.id == tenant_id))).first()
    if row is None or row.status == "active":
        return []
    if row.status == "suspended":
        return ["the tenant is suspended: its owner should contact support"]
    missing = []
    if not row.verified:
        missing.append("a verified owner email (follow the link in the verification mail)")
    if row.payment_method_at is None:
        missing.append("a payment method")
    return missing


async def _user_id(db: Database, email: str) -> uuid.UUID:
    async with db.system() as tx:
        user_id: uuid.UUID | None = (await tx.execute(
            sa.select(users.c.id).where(sa.func.lower(users.c.email) == email.lower())
        )).scalar_one_or_none()
    if user_id is None:
        raise AccountError(f"no user with email {email!r}")
    return user_id


async def set_password(db: Database, email: str, password: str, *,
                       actor: str = "system:cli") -> tuple[uuid.UUID, AccessCut]:
    """Reset a password; the user's sessions and OAuth grants end in the same call (a reset
    is what someone does when a password may be known to another)."""
    email = normalise_email(email)
    try:
        check_strength(password, email=email)
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    async with db.system() as conn:
        user_id: uuid.UUID | None = (
            await conn.execute(
                users.update()
                .where(sa.func.lower(users.c.email) == email.lower())
                .values(password_hash=hash_password(password))
                .returning(users.c.id)
            )
        ).scalar_one_or_none()
        if user_id is None:
            raise AccountError(f"no user with email {email!r}")
        await conn.finish(audit.operator_entry(
            actor, "user.password_reset", acting_user_id=user_id,
            parameters={"user_id": str(user_id)}))
    return user_id, await cut_access(db, user_id, reason="password_reset", actor=actor)


async def change_password(db: Database, user_id: uuid.UUID, current: str, new: str
                          ) -> AccessCut:
    """A person changes their own password, proving the current one: every web session of
    theirs and every OAuth grant they made end in the same call (the caller signs the browser
    that asked in again, with a new session). :class:`AccountError` changes nothing."""
    from breeze_mcp.auth.passwords import verify_password

    async with db.system(user_id=user_id) as tx:
        row = (await tx.execute(sa.select(users.c.email, users.c.password_hash)
                                .where(users.c.id == user_id).with_for_update())).first()
        if row is None or not verify_password(row.password_hash, current):
            raise AccountError("the current password is not right")
        try:
            check_strength(new, email=row.email)
        except ValueError as exc:
            raise AccountError(f"new password: {exc}") from None
        if verify_password(row.password_hash, new):
            raise AccountError("the new password is the current one")
        await tx.execute(users.update().where(users.c.id == user_id)
                         .values(password_hash=hash_password(new)))
        await tx.finish(audit.AuditEntry(
            actor_type="user", actor_id=str(user_id), acting_user_id=user_id,
            auth_path="session", action="user.password_changed", decision="allowed",
            outcome="success", parameters={"user_id": str(user_id)}))
    return await cut_access(db, user_id, reason="password_changed", actor=f"user:{user_id}")


async def mark_suspended(tx: Transaction, user_id: uuid.UUID, suspended: bool, *,
                         from_tenant: uuid.UUID | None = None) -> None:
    """Suspend the person (no sign-in, no credential of theirs works), recording the tenant
    that did it (None: the operator), or lift a suspension; in ``tx``, which the caller
    finishes. A suspension keeps the time it began; the operator's takes it over from a
    tenant's (only the operator may then lift it)."""
    if not suspended:
        values: dict[str, Any] = {"disabled_at": None, "suspended_from_tenant_id": None}
    elif from_tenant is None:
        values = {"disabled_at": sa.func.coalesce(users.c.disabled_at, sa.func.now()),
                  "suspended_from_tenant_id": None}
    else:
        values = {"disabled_at": sa.func.coalesce(users.c.disabled_at, sa.func.now()),
                  "suspended_from_tenant_id": sa.case(
                      (users.c.disabled_at.is_(None), sa.literal(from_tenant, sa.Uuid)),
                      else_=users.c.suspended_from_tenant_id)}
    await tx.execute(users.update().where(users.c.id == user_id).values(**values))


async def set_suspended(db: Database, email: str, suspended: bool, *,
                        actor: str = "system:cli") -> tuple[uuid.UUID, AccessCut | None]:
    """Suspend a user (no sign-in, no credential of theirs works; sessions and grants end at
    once) or lift the suspension (nothing comes back: they sign in and connect again). The
    operator may lift any suspension, a tenant's included."""
    user_id = await _user_id(db, normalise_email(email))
    async with db.system() as tx:
        await mark_suspended(tx, user_id, suspended)
        await tx.finish(audit.operator_entry(
            actor, "user.suspended" if suspended else "user.resumed", acting_user_id=user_id,
            parameters={"user_id": str(user_id)}))
    if not suspended:
        return user_id, None
    return user_id, await cut_access(db, user_id, reason="user_suspended", actor=actor)


async def remove_membership(tx: Transaction, tenant_id: uuid.UUID, user_id: uuid.UUID, *,
                            actor: Actor) -> tuple[str, int] | None:
    """Delete the person's membership of the tenant of ``tx`` and revoke the grants they made
    there, in ``tx`` (the caller finishes it with ``member.removed``): their role and the
    number of grants revoked, None when they are not a member. The tenant keeps an owner:
    removing its last one raises :class:`AccountError`."""
    from breeze_mcp.auth.oauth.revocation import revoke_grant  # oauth builds on accounts

    role = (await tx.execute(
        sa.select(memberships.c.role).where(memberships.c.tenant_id == tenant_id,
                                            memberships.c.user_id == user_id)
        .with_for_update())).scalar_one_or_none()
    if role is None:
        return None
    if role == "owner" and await owners(tx, tenant_id) <= 1:
        raise AccountError("that is the organization's last owner: make another member "
                           "owner first")
    if isinstance(actor, Caller):
        actor_type, actor_id = actor.principal.actor_type, actor.principal.actor_id
        auth_path, acting, request = actor.principal.auth_path, actor.user_id, actor.request
    else:
        (actor_type, auth_path), actor_id = audit.operator(actor), actor
        acting, request = user_id, None
    grant_ids = list((await tx.execute(
        sa.select(oauth_grants.c.id)
        .where(oauth_grants.c.tenant_id == tenant_id, oauth_grants.c.user_id == user_id,
               oauth_grants.c.revoked_at.is_(None)).with_for_update()
    )).scalars())
    for grant_id in grant_ids:
        await revoke_grant(tx, tenant_id, grant_id, reason="member_removed",
                           actor_type=actor_type, actor_id=actor_id, request=request,
                           auth_path=auth_path, acting_user_id=acting)
    await tx.execute(memberships.delete().where(memberships.c.tenant_id == tenant_id,
                                                memberships.c.user_id == user_id))
    return role, len(grant_ids)


async def owners(tx: Transaction, tenant_id: uuid.UUID) -> int:
    """How many owners the tenant of ``tx`` has, their memberships locked until ``tx`` ends:
    two concurrent demotions or removals of different owners cannot both see the other one
    and leave none."""
    return len((await tx.execute(
        sa.select(memberships.c.user_id)
        .where(memberships.c.tenant_id == tenant_id, memberships.c.role == "owner")
        .with_for_update())).all())


async def remove_member(db: Database, tenant: Tenant, email: str, *,
                        actor: str = "system:cli") -> tuple[uuid.UUID, AccessCut]:
    """Remove a person from a tenant: their grants there are revoked and the membership
    deleted in one transaction, then their web sessions end. A tenant keeps an owner: its
    last one cannot be removed."""
    user_id = await _user_id(db, normalise_email(email))
    async with db.tenant(tenant.id, user_id=user_id) as tx:
        try:
            removed = await remove_membership(tx, tenant.id, user_id, actor=actor)
        except AccountError:
            raise AccountError(f"{email} is the last owner of tenant {tenant.slug!r}: "
                               "make another member owner first") from None
        if removed is None:
            raise AccountError(f"{email} is not a member of tenant {tenant.slug!r}")
        role, grants = removed
        await tx.finish(audit.operator_entry(
            actor, "member.removed", tenant_id=tenant.id, acting_user_id=user_id,
            parameters={"user_id": str(user_id), "role": role, "grants": grants}))
    cut = await cut_access(db, user_id, reason="member_removed", actor=actor, tenant_ids=[])
    return user_id, AccessCut(sessions=cut.sessions, grants=grants)
