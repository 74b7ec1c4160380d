"""API keys: scoped, tenant-bound, shown once, stored as a SHA-256 digest.

A key's scopes are exactly some of ``ai:read``, ``ai:write``, ``ai:execute`` (no wildcard, no
admin override). They can never exceed what the key's creator's role allows, and that is
re-checked on every request: a creator who is demoted takes the key down with them, and a
creator who is removed (or disabled) leaves the key with nothing, so it is refused.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from limits import parse as parse_limit

from breeze_mcp import audit
from breeze_mcp.auth.accounts import AccountError, Tenant
from breeze_mcp.auth.credentials import usable_scopes
from breeze_mcp.auth.principal import ALL_SCOPES, Principal, effective_scopes
from breeze_mcp.auth.tokens import digest, mint_tenant_bound
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row, Transaction
from breeze_mcp.db.models import api_keys, memberships, tenants, users
from breeze_mcp.db.statements import Prepared, prepared

__all__ = [
    "PREFIX",
    "ApiKeyInfo",
    "check_rate_limit",
    "create_api_key",
    "list_api_keys",
    "lookup",
    "parse_scopes",
    "principal_from",
    "revoke_api_key",
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
    )


_COLUMNS = [api_keys.c.id, api_keys.c.tenant_id, api_keys.c.name, api_keys.c.prefix,
            api_keys.c.scopes, api_keys.c.created_by, api_keys.c.created_at,
            api_keys.c.expires_at, api_keys.c.last_used_at, api_keys.c.revoked_at,
            api_keys.c.rate_limit]


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
    """Create a key; returns its record and the plaintext, which is never stored or shown again."""
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise AccountError("key name must be 1 to 100 characters")
    wanted = parse_scopes(scopes)
    if expires_in_days is not None and not 1 <= expires_in_days <= MAX_EXPIRY_DAYS:
        raise AccountError(f"--expires-in must be between 1 and {MAX_EXPIRY_DAYS} days")
    if rate_limit is not None:
        check_rate_limit(rate_limit)
    plaintext = mint_tenant_bound(PREFIX, tenant.id)
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
        if creator.role not in ("owner", "admin"):
            raise AccountError(
                f"{creator.email} is {creator.role}: only owners and admins create API keys"
            )
        allowed = effective_scopes(creator.role, wanted)
        beyond = [s for s in wanted if s not in allowed]
        if beyond:
            raise AccountError(f"{creator.email}'s role {creator.role} cannot grant {beyond[0]}")
        expires = (
            sa.func.now() + dt.timedelta(days=expires_in_days) if expires_in_days else None
        )
        row = (
            await conn.execute(
                api_keys.insert()
                .values(
                    tenant_id=tenant.id,
                    name=name,
                    prefix=plaintext[:4] + "…" + plaintext[-6:],
                    digest=digest(plaintext),
                    scopes=list(wanted),
                    created_by=creator.id,
                    rate_limit=rate_limit,
                    expires_at=expires,
                )
                .returning(*_COLUMNS)
            )
        ).one()
        info = _info(row)
        await conn.finish(audit.operator_entry(
                actor, "api_key.create",
                tenant_id=tenant.id,
                acting_user_id=creator.id,
                credential_id=str(info.id),
                parameters={"name": name, "scopes": list(wanted),
                            "expires_in_days": expires_in_days, "rate_limit": rate_limit},
                scopes=list(wanted),
            ))
    return info, plaintext


async def list_api_keys(db: Database, tenant: Tenant) -> list[ApiKeyInfo]:
    async with db.tenant(tenant.id) as conn:
        rows = await conn.execute(
            sa.select(*_COLUMNS).where(api_keys.c.tenant_id == tenant.id)
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
                    actor, "api_key.revoke",
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
