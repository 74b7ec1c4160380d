"""Tenants, users and memberships: creation and lookup shared by the CLI and the web console.

Each operation is one transaction: it either completes (with its audit entry) or leaves
nothing behind.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from psycopg.errors import IntegrityError

from breeze_mcp import audit
from breeze_mcp.auth.passwords import check_strength, hash_password
from breeze_mcp.db import Database
from breeze_mcp.db.models import ROLES, memberships, tenants, users

__all__ = [
    "AccountError",
    "Role",
    "Tenant",
    "User",
    "create_tenant",
    "create_user",
    "find_tenant",
    "list_tenants",
    "normalise_email",
    "set_password",
    "slugify",
]

Role = Literal["owner", "admin", "technician", "readonly"]

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")


class AccountError(ValueError):
    """Bad input for an account operation; the message is safe to show as one line."""


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
    if len(email) > 254 or not _EMAIL.match(email):
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


async def set_password(db: Database, email: str, password: str) -> uuid.UUID:
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
        await conn.finish(audit.AuditEntry(
                actor_type="system",
                actor_id="system:cli",
                auth_path="cli",
                action="user.set_password",
                decision="allowed",
                outcome="success",
                parameters={"user_id": str(user_id)},
            ))
    return user_id
