"""Revocation: of a whole grant, and of one token by its client (RFC 7009).

Revoking a grant revokes every access token, refresh token and pending code of it in one
transaction; since every access-token lookup joins its grant, the very next request with any
of them fails, on every instance.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from breeze_mcp import audit
from breeze_mcp.auth.oauth.clients import Client
from breeze_mcp.auth.oauth.grants import ACCESS_PREFIX, REFRESH_PREFIX, grant_audit
from breeze_mcp.auth.principal import RequestContext
from breeze_mcp.auth.tokens import digest, tenant_of
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Transaction
from breeze_mcp.db.models import (
    memberships,
    oauth_access_tokens,
    oauth_codes,
    oauth_grants,
    oauth_refresh_tokens,
)

__all__ = ["revoke_client_grants", "revoke_grant", "revoke_own_grant", "revoke_token"]


async def revoke_grant(
    tx: Transaction, tenant_id: uuid.UUID, grant_id: uuid.UUID, *, reason: str,
    actor_type: audit.ActorType, actor_id: str, request: RequestContext | None,
    action: str = "oauth.grant_revoked", auth_path: audit.AuthPath = "oauth",
    acting_user_id: uuid.UUID | None = None, owner: uuid.UUID | None = None,
) -> bool:
    """Revoke a grant and every access token, refresh token and pending code of it, in
    ``tx`` (audited there; the caller finishes it): once committed, the very next request
    with any of them fails. With ``owner``, only a grant that user made (checked by the
    revoking statement itself). Returns False if there was no such live grant."""
    return await _revoke_in(tx, tenant_id, grant_id, reason=reason, actor_type=actor_type,
                            actor_id=actor_id, request=request, action=action,
                            auth_path=auth_path, acting_user_id=acting_user_id, owner=owner)


async def revoke_client_grants(
    tx: Transaction, tenant_id: uuid.UUID, client_id: str, *, reason: str,
    actor_type: audit.ActorType, actor_id: str, request: RequestContext | None,
    auth_path: audit.AuthPath = "oauth", acting_user_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    """Revoke every live grant of one client in the tenant, all or none, in ``tx`` (each
    audited as its own ``oauth.grant_revoked``; the caller finishes it); the ids revoked."""
    ids = list((await tx.execute(
        sa.select(oauth_grants.c.id)
        .where(oauth_grants.c.tenant_id == tenant_id, oauth_grants.c.client_id == client_id,
               oauth_grants.c.revoked_at.is_(None))
        .order_by(oauth_grants.c.created_at)
        .with_for_update()
    )).scalars())
    for grant_id in ids:
        await _revoke_in(tx, tenant_id, grant_id, reason=reason, actor_type=actor_type,
                         actor_id=actor_id, request=request, action="oauth.grant_revoked",
                         auth_path=auth_path, acting_user_id=acting_user_id)
    return ids


async def revoke_own_grant(
    db: Database, user_id: uuid.UUID, grant_id: uuid.UUID, *, request: RequestContext | None,
) -> bool:
    """A person's "disconnect": revoke ``grant_id`` only if ``user_id`` made it. The tenant is
    found from the person's own memberships, never from the request; ownership is checked by
    the revoking statement itself, so check and act are one. False when no live grant of
    theirs has that id."""
    async with db.system(user_id=user_id) as conn:
        tenant_ids = list((await conn.execute(
            sa.select(memberships.c.tenant_id).where(memberships.c.user_id == user_id)
        )).scalars())
    for tenant_id in tenant_ids:
        async with db.tenant(tenant_id,
                                         user_id=user_id) as conn:
            if await _revoke_in(conn, tenant_id, grant_id, reason="disconnected_by_user",
                                actor_type="user", actor_id=str(user_id), request=request,
                                action="oauth.grant_revoked", auth_path="session",
                                acting_user_id=user_id, owner=user_id):
                await conn.finish(None)  # the revocation carries its own entry
                return True
    return False


async def _revoke_in(
    conn: Transaction, tenant_id: uuid.UUID, grant_id: uuid.UUID, *, reason: str,
    actor_type: audit.ActorType, actor_id: str, request: RequestContext | None, action: str,
    auth_path: audit.AuthPath, acting_user_id: uuid.UUID | None, owner: uuid.UUID | None = None,
) -> bool:
    """Revoke one live grant (and, with ``owner``, only if that user made it) in ``conn``."""
    mine = oauth_grants.c.user_id == owner if owner is not None else sa.true()
    row = (await conn.execute(
        oauth_grants.update()
        .where(oauth_grants.c.id == grant_id, oauth_grants.c.tenant_id == tenant_id,
               oauth_grants.c.revoked_at.is_(None), mine)
        .values(revoked_at=sa.func.now(), revoked_reason=reason)
        .returning(oauth_grants.c.client_id, oauth_grants.c.user_id, oauth_grants.c.scopes)
    )).first()
    if row is None:
        return False
    tokens = (await conn.execute(
        oauth_access_tokens.update()
        .where(oauth_access_tokens.c.grant_id == grant_id,
               oauth_access_tokens.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now())
    )).rowcount
    refreshes = (await conn.execute(
        oauth_refresh_tokens.update()
        .where(oauth_refresh_tokens.c.grant_id == grant_id,
               oauth_refresh_tokens.c.revoked_at.is_(None))
        .values(revoked_at=sa.func.now(), successor_sealed=None)
    )).rowcount
    codes = (await conn.execute(
        oauth_codes.update()
        .where(oauth_codes.c.grant_id == grant_id, oauth_codes.c.used_at.is_(None))
        .values(used_at=sa.func.now())
    )).rowcount
    detected = action.endswith("_detected")
    await audit.write(conn, grant_audit(
        action, tenant_id, grant_id, row.client_id, acting_user_id or row.user_id,
        row.scopes, request,
        # (key names avoid "token": the audit redactor hides such keys' values)
        {"reason": reason, "access_revoked": tokens, "refresh_revoked": refreshes,
         "codes_revoked": codes, "grant_id": str(grant_id)},
        actor_type=actor_type, actor_id=actor_id, auth_path=auth_path,
        decision="denied" if detected else "allowed",
        outcome="blocked" if detected else "success",
        deny_reason=reason if detected else None,
    ))
    return True


async def revoke_token(
    db: Database, client: Client, token: str, hint: str | None, request: RequestContext
) -> None:
    """RFC 7009: revoking a refresh token revokes its grant; an access token, itself.
    Unknown or foreign tokens are ignored (the endpoint answers 200 either way)."""
    for prefix in (REFRESH_PREFIX, ACCESS_PREFIX):
        tenant_id = tenant_of(token, prefix)
        if tenant_id is None:
            continue
        table = oauth_refresh_tokens if prefix == REFRESH_PREFIX else oauth_access_tokens
        async with db.tenant(tenant_id) as conn:
            row = (await conn.execute(
                sa.select(table.c.id, table.c.grant_id, oauth_grants.c.client_id)
                .join(oauth_grants, (oauth_grants.c.id == table.c.grant_id)
                      & (oauth_grants.c.tenant_id == table.c.tenant_id))
                .where(table.c.digest == digest(token))
            )).first()
            if row is None or row.client_id != client.client_id:
                return
            if prefix == ACCESS_PREFIX:
                await conn.execute(table.update().where(table.c.id == row.id)
                                   .values(revoked_at=sa.func.coalesce(table.c.revoked_at,
                                                                       sa.func.now())))
                await conn.finish(grant_audit(
                    "oauth.token_revoked", tenant_id, row.grant_id, client.client_id, None,
                    [], request, {"token_type": "access_token"},
                    actor_type="oauth_client", actor_id=client.client_id))
                return
            await revoke_grant(conn, tenant_id, row.grant_id, reason="revoked_by_client",
                               actor_type="oauth_client", actor_id=client.client_id,
                               request=request)
            await conn.finish(None)  # the revocation carries its own entry
        return
