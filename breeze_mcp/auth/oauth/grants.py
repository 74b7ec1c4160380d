"""Grants: the unit of consent, revocation, rate limiting and audit.

A grant is one client acting for one user in one tenant with some scopes, bound to one
resource (RFC 8707). Its codes (``bzc_``), refresh tokens (``bzr_``) and access tokens
(``bza_``) are opaque, tenant-bound, 256-bit secrets stored as SHA-256 digests; each lookup
runs inside its tenant's row-level-security transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from breeze_mcp import audit
from breeze_mcp.auth.principal import ALL_SCOPES, RequestContext
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row, Transaction
from breeze_mcp.db.models import (
    memberships,
    oauth_clients,
    oauth_codes,
    oauth_grants,
    tenants,
    users,
)

__all__ = [
    "ACCESS_PREFIX",
    "CODE_PREFIX",
    "REFRESH_PREFIX",
    "canonical_scopes",
    "consentable_tenants",
    "grant_audit",
    "list_tenant_grants",
    "parse_scope",
    "user_grants",
    "user_has_live_grant",
]

ACCESS_PREFIX = "bza"
REFRESH_PREFIX = "bzr"
CODE_PREFIX = "bzc"


def parse_scope(value: str | None) -> list[str]:
    return [s for s in (value or "").split() if s]


def canonical_scopes(scopes: Sequence[str]) -> list[str]:
    return [s for s in ALL_SCOPES if s in scopes]


def grant_audit(
    action: str, tenant_id: uuid.UUID, grant_id: uuid.UUID, client_id: str,
    user_id: uuid.UUID | None, scopes: Sequence[str], request: RequestContext | None,
    parameters: dict[str, Any], *, decision: audit.Decision = "allowed",
    outcome: audit.Outcome = "success", actor_type: audit.ActorType = "user",
    actor_id: str | None = None, auth_path: audit.AuthPath = "oauth",
    deny_reason: str | None = None,
) -> audit.AuditEntry:
    """The audit entry of something that happened to a grant."""
    return audit.AuditEntry(
        actor_type=actor_type, actor_id=actor_id or (str(user_id) if user_id else None),
        acting_user_id=user_id, auth_path=auth_path, credential_id=str(grant_id),
        client_id=client_id, tenant_id=tenant_id, action=action, decision=decision,
        outcome=outcome, scopes=list(scopes), parameters=parameters, deny_reason=deny_reason,
        request_id=request.request_id if request else None,
        client_ip=request.client_ip if request else None,
        user_agent=request.user_agent if request else None,
    )


async def user_has_live_grant(db: Database, user_id: uuid.UUID, client_id: str) -> bool:
    """Whether ``user_id`` holds an unrevoked grant for the client in one of their tenants."""
    async with db.system(user_id=user_id) as conn:
        tenant_ids = (await conn.execute(
            sa.select(memberships.c.tenant_id).where(memberships.c.user_id == user_id)
        )).scalars()
    for tenant_id in tenant_ids:
        async with db.tenant(tenant_id,
                                         user_id=user_id) as conn:
            found = (await conn.execute(
                sa.select(oauth_grants.c.id).where(
                    oauth_grants.c.client_id == client_id, oauth_grants.c.user_id == user_id,
                    oauth_grants.c.revoked_at.is_(None)).limit(1)
            )).first()
        if found is not None:
            return True
    return False


async def list_tenant_grants(tx: Transaction, tenant_id: uuid.UUID, *,
                             include_revoked: bool = False,
                             user_id: uuid.UUID | None = None) -> list[Row]:
    """Every grant of the tenant (or, with ``user_id``, every grant that user made), newest
    first, with its client's name and registered redirect URIs, the redirect URI its consent
    sent the code to, and its user's email."""
    consented_to = (
        sa.select(sa.func.min(oauth_codes.c.redirect_uri))
        .where(oauth_codes.c.tenant_id == oauth_grants.c.tenant_id,
               oauth_codes.c.grant_id == oauth_grants.c.id)
        .scalar_subquery()
    )
    query = (
        sa.select(oauth_grants, oauth_clients.c.client_name, oauth_clients.c.redirect_uris,
                  consented_to.label("redirect_uri"), users.c.email)
        .join(oauth_clients, oauth_clients.c.client_id == oauth_grants.c.client_id)
        .join(users, users.c.id == oauth_grants.c.user_id)
        .where(oauth_grants.c.tenant_id == tenant_id)
        .order_by(oauth_grants.c.created_at.desc())
    )
    if not include_revoked:
        query = query.where(oauth_grants.c.revoked_at.is_(None))
    if user_id is not None:
        query = query.where(oauth_grants.c.user_id == user_id)
    return (await tx.execute(query)).all()


async def user_grants(db: Database, user_id: uuid.UUID) -> list[Row]:
    """The person's own live grants in every tenant they belong to, newest first in each:
    id, tenant_id, tenant_name, client_id, client_name, scopes, created_at."""
    async with db.system(user_id=user_id) as tx:
        tenant_rows = (await tx.execute(
            sa.select(memberships.c.tenant_id, tenants.c.name)
            .join(tenants, tenants.c.id == memberships.c.tenant_id)
            .where(memberships.c.user_id == user_id)
        )).all()
    found: list[Row] = []
    for tenant_id, tenant_name in tenant_rows:
        async with db.tenant(tenant_id, user_id=user_id) as tx:
            found.extend((await tx.execute(
                sa.select(oauth_grants.c.id, oauth_grants.c.tenant_id,
                          sa.literal(tenant_name).label("tenant_name"),
                          oauth_clients.c.client_id, oauth_clients.c.client_name,
                          oauth_grants.c.scopes, oauth_grants.c.created_at)
                .join(oauth_clients, oauth_clients.c.client_id == oauth_grants.c.client_id)
                .where(oauth_grants.c.user_id == user_id, oauth_grants.c.revoked_at.is_(None))
                .order_by(oauth_grants.c.created_at.desc())
            )).all())
    return found


async def consentable_tenants(db: Database, user_id: uuid.UUID) -> list[Row]:
    """The active tenants the person belongs to (id, name, role), by name: where a consent
    can put a grant."""
    async with db.system(user_id=user_id) as tx:
        return (await tx.execute(
            sa.select(tenants.c.id, tenants.c.name, memberships.c.role)
            .join(tenants, tenants.c.id == memberships.c.tenant_id)
            .where(memberships.c.user_id == user_id, tenants.c.status == "active")
            .order_by(tenants.c.name)
        )).all()
