"""API keys: scoped, tenant-bound, shown once, stored as a SHA-256 digest.

A key's scopes are exactly some of ``ai:read``, ``ai:write``, ``ai:execute`` (no wildcard, no
admin override). They can never exceed what the key's creator's role allows, and that is
re-checked on every request: a creator who is demoted takes the key down with them, and a
creator who is removed (or disabled) leaves the key with nothing, so it is refused.

Every member may create keys of their own (:func:`create_own_key`, the console and the admin
API), never with a scope beyond their role's nor, when the caller is itself a key, beyond that
key's own scopes. Owners and admins see and revoke every key of the tenant; everyone else only
their own (:func:`list_keys`, :func:`revoke_key`). The operator's CLI creates a key on behalf
of a named member (:func:`create_api_key`). Creation and revocation are audited as
``api_key.created`` and ``api_key.revoked``, with the same parameters whoever does them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from limits import parse as parse_limit

from breeze_mcp import audit
from breeze_mcp.auth.accounts import ADMIN_ROLES, AccountError, Caller, Tenant
from breeze_mcp.auth.credentials import usable_scopes
from breeze_mcp.auth.principal import ALL_SCOPES, Principal, effective_scopes
from breeze_mcp.auth.tokens import digest, mint_tenant_bound
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row, Transaction
from breeze_mcp.db.models import api_keys, memberships, tenants, users
from breeze_mcp.db.statements import Prepared, prepared

__all__ = [
    "MAX_EXPIRY_DAYS",
    "PREFIX",
    "ApiKeyInfo",
    "check_rate_limit",
    "create_api_key",
    "create_own_key",
    "grantable_scopes",
    "list_api_keys",
    "list_keys",
    "lookup",
    "parse_scopes",
    "principal_from",
    "revoke_api_key",
    "revoke_key",
]

PREFIX = "bzk"
MAX_EXPIRY_DAYS = 3650


@dataclass(frozen=True)
class ApiKeyInfo:
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    prefix: str
    scopes: tuple[str, ...]
    created_by: uuid.UUID
    created_at: dt.datetime
    expires_at: dt.datetime | None
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None
    rate_limit: str | None
    created_by_email: str | None = None

    def status(self, now: dt.datetime) -> Literal["active", "revoked", "expired"]:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def as_json(self) -> dict[str, object]:
        return {
            "id": str(self.id),
            "tenant_id": str(self.tenant_id),
            "name": self.name,
            "prefix": self.prefix,
            "scopes": list(self.scopes),
            "created_by": str(self.created_by),
            "created_by_email": self.created_by_email,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "rate_limit": self.rate_limit,
        }


def parse_scopes(raw: str | Iterable[str]) -> tuple[str, ...]:
    """Exactly the known scopes, deduplicated, in canonical order; anything else is refused."""
    items = [s.strip() for s in (raw.split(",") if isinstance(raw, str) else raw)]
    items = [s for s in items if s]
    if not items:
        raise AccountError("at least one scope is required (ai:read, ai:write, ai:execute)")
    unknown = [s for s in items if s not in ALL_SCOPES]
    if unknown:
        raise AccountError(
            f"unknown scope {unknown[0]!r}: scopes are exactly ai:read, ai:write, ai:execute"
        )
    return tuple(s for s in ALL_SCOPES if s in items)


def check_rate_limit(rate_limit: str) -> None:
    """A key's own limit: one ``N/period`` with N of at least 1 (0 would refuse every call)."""
    try:
        amount = parse_limit(rate_limit).amount
    except ValueError:
        amount = 0
    if amount < 1:
        raise AccountError(
            f"invalid rate limit {rate_limit!r}: use a positive number of calls per period, "
            "e.g. '120/minute' or '10/second'"
        )


def _info(row: Row) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id, tenant_id=row.tenant_id, name=row.name, prefix=row.prefix,
        scopes=tuple(row.scopes), created_by=row.created_by, created_at=row.created_at,
        expires_at=row.expires_at, last_used_at=row.last_used_at,
        revoked_at=row.revoked_at, rate_limit=row.rate_limit,
        created_by_email=getattr(row, "email", None),
    )


_COLUMNS = [api_keys.c.id, api_keys.c.tenant_id, api_keys.c.name, api_keys.c.prefix,
            api_keys.c.scopes, api_keys.c.created_by, api_keys.c.created_at,
            api_keys.c.expires_at, api_keys.c.last_used_at, api_keys.c.revoked_at,
            api_keys.c.rate_limit]


def _checked(name: str, scopes: Iterable[str] | str, expires_in_days: int | None,
             rate_limit: str | None) -> tuple[str, tuple[str, ...]]:
    """A new key's name and scopes, once every field is valid (else :class:`AccountError`)."""
    name = name.strip()
    if not 1 <= len(name) <= 100 or not name.isprintable():
        raise AccountError("key name must be 1 to 100 printable characters")
    wanted = parse_scopes(scopes)
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise AccountError(f"the expiry must be between 1 and {MAX_EXPIRY_DAYS} days")
    if rate_limit is not None:
        check_rate_limit(rate_limit)
    return name, wanted


def grantable_scopes(role: str | None, held: Iterable[str] = ALL_SCOPES) -> tuple[str, ...]:
    """The scopes a key created by a member of ``role`` may have, when the creator acts with
    ``held`` (a key can give no scope it does not hold itself), in canonical order."""
    allowed = effective_scopes(role, held)
    return tuple(s for s in ALL_SCOPES if s in allowed)


def _parameters(info: ApiKeyInfo, expires_in_days: int | None) -> dict[str, Any]:
    return {"key_id": str(info.id), "name": info.name, "scopes": list(info.scopes),
            "expires_in_days": expires_in_days, "rate_limit": info.rate_limit}


async def _insert(tx: Transaction, tenant_id: uuid.UUID, creator: uuid.UUID, name: str,
                  wanted: tuple[str, ...], expires_in_days: int | None,
                  rate_limit: str | None) -> tuple[ApiKeyInfo, str]:
    plaintext = mint_tenant_bound(PREFIX, tenant_id)
    row = (await tx.execute(
        api_keys.insert().values(
            tenant_id=tenant_id, name=name, prefix=plaintext[:4] + "…" + plaintext[-6:],
            digest=digest(plaintext), scopes=list(wanted), created_by=creator,
            rate_limit=rate_limit,
            expires_at=(sa.func.now() + dt.timedelta(days=expires_in_days)
                        if expires_in_days else None),
        ).returning(*_COLUMNS))).one()
    return _info(row), plaintext


async def create_api_key(
    db: Database,
    tenant: Tenant,
    *,
    name: str,
    scopes: Iterable[str] | str,
    creator_email: str | None = None,
    expires_in_days: int | None = None,
    rate_limit: str | None = None,
    actor: str = "system:cli",
) -> tuple[ApiKeyInfo, str]:
    """Create a key on behalf of a member (the first owner by default); returns its record
    and the plaintext, which is never stored or shown again."""
    name, wanted = _checked(name, scopes, expires_in_days, rate_limit)
    async with db.tenant(tenant.id) as conn:
        query = (
            sa.select(users.c.id, users.c.email, memberships.c.role)
            .join(memberships, memberships.c.user_id == users.c.id)
            .where(memberships.c.tenant_id == tenant.id, users.c.disabled_at.is_(None))
        )
        if creator_email:
            query = query.where(sa.func.lower(users.c.email) == creator_email.strip().lower())
        else:
            query = query.where(memberships.c.role == "owner").order_by(memberships.c.created_at)
        creator = (await conn.execute(query.limit(1))).first()
        if creator is None:
            raise AccountError(
                f"no member {creator_email!r} in tenant {tenant.slug!r}" if creator_email
                else f"tenant {tenant.slug!r} has no owner to create the key; pass --created-by"
            )
        beyond = [s for s in wanted if s not in grantable_scopes(creator.role)]
        if beyond:
            raise AccountError(f"{creator.email}'s role {creator.role} cannot grant {beyond[0]}")
        info, plaintext = await _insert(conn, tenant.id, creator.id, name, wanted,
                                        expires_in_days, rate_limit)
        await conn.finish(audit.operator_entry(
                actor, "api_key.created",
                tenant_id=tenant.id,
                acting_user_id=creator.id,
                credential_id=str(info.id),
                parameters=_parameters(info, expires_in_days),
                scopes=list(wanted),
            ))
    return info, plaintext


async def create_own_key(
    tx: Transaction, caller: Caller, *, name: str, scopes: Iterable[str] | str,
    expires_in_days: int | None = None, rate_limit: str | None = None,
) -> tuple[ApiKeyInfo, str]:
    """The caller creates a key of their own in their tenant (``tx``: the request's tenant
    transaction, finished here with ``api_key.created``): never with a scope their role does
    not allow, nor one the caller's own credential does not hold (a key cannot mint a
    stronger key). Returns the record and the plaintext, shown once. A refusal is
    :class:`~breeze_mcp.auth.accounts.Refused`, audited."""
    principal = caller.principal
    action = "api_key.created"
    try:
        name, wanted = _checked(name, scopes, expires_in_days, rate_limit)
    except AccountError as exc:
        await caller.refuse(tx, action, "invalid", str(exc))
    if principal.acting_user_id is None:
        await caller.refuse(tx, action, "forbidden", "only a person creates API keys")
    beyond = [s for s in wanted if s not in grantable_scopes(principal.role, principal.scopes)]
    if beyond:
        if beyond[0] not in grantable_scopes(principal.role):
            await caller.refuse(tx, action, "role", f"a {principal.role} cannot give a key "
                                f"{beyond[0]}", scopes=list(wanted))
        await caller.refuse(tx, action, "forbidden", "a key cannot create a key with a scope "
                            f"it does not hold ({beyond[0]})", scopes=list(wanted))
    info, plaintext = await _insert(tx, principal.tenant_id, principal.acting_user_id, name,
                                    wanted, expires_in_days, rate_limit)
    await tx.finish(caller.entry(action, **_parameters(info, expires_in_days)))
    return info, plaintext


async def list_keys(tx: Transaction, principal: Principal) -> list[ApiKeyInfo]:
    """The keys the caller may see in the tenant of ``tx``, newest first, with their
    creators' addresses: every key for an owner or admin, their own for anyone else."""
    query = (sa.select(*_COLUMNS, users.c.email)
             .join(users, users.c.id == api_keys.c.created_by)
             .where(api_keys.c.tenant_id == principal.tenant_id)
             .order_by(api_keys.c.created_at.desc()))
    if principal.role not in ADMIN_ROLES:
        query = query.where(api_keys.c.created_by == principal.acting_user_id)
    return [_info(r) for r in await tx.execute(query)]


async def revoke_key(tx: Transaction, caller: Caller, key_id: uuid.UUID
                     ) -> tuple[ApiKeyInfo, bool]:
    """The caller revokes a key (any of the tenant's for an owner or admin, else only one of
    their own), in ``tx``, finished here with ``api_key.revoked``: the next request with it
    is refused. Returns its record and False when it was already revoked (the first
    revocation's time and author are kept). Another's key, or none, is ``not_found``."""
    principal = caller.principal
    mine = (sa.true() if principal.role in ADMIN_ROLES
            else api_keys.c.created_by == principal.acting_user_id)
    row = (await tx.execute(
        sa.select(*_COLUMNS).where(api_keys.c.id == key_id,
                                   api_keys.c.tenant_id == principal.tenant_id, mine)
        .with_for_update())).first()
    if row is None:
        await caller.refuse(tx, "api_key.revoked", "not_found", "no such API key of yours",
                            key_id=str(key_id))
    newly = row.revoked_at is None
    if newly:
        row = (await tx.execute(
            api_keys.update().where(api_keys.c.id == key_id)
            .values(revoked_at=sa.func.now(), revoked_by=principal.actor)
            .returning(*_COLUMNS))).one()
    info = _info(row)
    await tx.finish(caller.entry("api_key.revoked", key_id=str(key_id), name=info.name,
                                 already_revoked=not newly))
    return info, newly


async def list_api_keys(db: Database, tenant: Tenant) -> list[ApiKeyInfo]:
    async with db.tenant(tenant.id) as conn:
        rows = await conn.execute(
            sa.select(*_COLUMNS, users.c.email)
            .join(users, users.c.id == api_keys.c.created_by)
            .where(api_keys.c.tenant_id == tenant.id)
            .order_by(api_keys.c.created_at)
        )
        return [_info(r) for r in rows]


async def revoke_api_key(
    db: Database, key_id: uuid.UUID, *, tenant: Tenant | None = None, actor: str = "system:cli"
) -> tuple[ApiKeyInfo, bool]:
    """Revoke a key (idempotent): its record, and False when it was already revoked (the
    first revocation's time and author are kept). Without ``tenant``, every tenant is
    searched (CLI use)."""
    if tenant is not None:
        candidates = [tenant.id]
    else:
        async with db.system() as conn:
            candidates = list((await conn.execute(sa.select(tenants.c.id))).scalars())
    for tenant_id in candidates:
        async with db.tenant(tenant_id) as conn:
            row = (
                await conn.execute(
                    sa.select(*_COLUMNS)
                    .where(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                continue
            newly = row.revoked_at is None
            if newly:
                row = (
                    await conn.execute(
                        api_keys.update()
                        .where(api_keys.c.id == key_id, api_keys.c.tenant_id == tenant_id)
                        .values(revoked_at=sa.func.now(), revoked_by=actor)
                        .returning(*_COLUMNS)
                    )
                ).one()
            info = _info(row)
            await conn.finish(audit.operator_entry(
                    actor, "api_key.revoked",
                    tenant_id=tenant_id,
                    credential_id=str(key_id),
                    parameters={"key_id": str(key_id), "name": info.name,
                                "already_revoked": not newly},
                ))
            return info, newly
    raise AccountError(f"no API key {key_id}")


# The key with its holder (its creator), in the columns credentials.usable_scopes judges.
_KEY_LOOKUP = prepared(
    "SELECT k.id, k.scopes, k.created_by, k.rate_limit, k.revoked_at IS NOT NULL AS revoked,"
    " k.expires_at <= now() AS expired,"
    " k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds' AS touch,"
    " t.status AS tenant_status, m.role, u.disabled_at"
    " FROM api_keys k"
    " JOIN tenants t ON t.id = k.tenant_id"
    " JOIN users u ON u.id = k.created_by"
    " LEFT OUTER JOIN memberships m ON m.tenant_id = k.tenant_id AND m.user_id = k.created_by"
    " WHERE k.digest = %s AND k.tenant_id = %s"
)
_KEY_TOUCH = prepared("UPDATE api_keys SET last_used_at = now() WHERE id = %s")


def lookup(token: str, tenant_id: uuid.UUID) -> tuple[Prepared, tuple[bytes, str]]:
    """The lookup statement for a presented key in the tenant it names, sent with the
    transaction's ``BEGIN``; :func:`principal_from` judges the row."""
    return _KEY_LOOKUP, (digest(token), str(tenant_id))  # str: a cheaper literal to quote


async def principal_from(
    tx: Transaction, tenant_id: uuid.UUID, row: Row, *, default_rate_limit: str,
) -> Principal:
    """The Principal for a presented key, from the row :func:`lookup`'s statement returned
    for it, or :class:`~breeze_mcp.auth.credentials.CredentialRejected`.

    The effective scopes are the key's intersected with what the creator's role allows at
    this request (:func:`~breeze_mcp.auth.credentials.usable_scopes`)."""
    scopes = usable_scopes(row)
    if row.touch:  # last-used time, at most once a minute per key
        await tx.execute(_KEY_TOUCH, (row.id,))
    return Principal(
        tenant_id=tenant_id,
        actor_type="api_key",
        actor_id=str(row.id),
        auth_path="api_key",
        credential_id=str(row.id),
        scopes=scopes,
        acting_user_id=row.created_by,
        role=row.role,
        rate_limits=((f"api_key:{row.id}", row.rate_limit or default_rate_limit),),
    )
