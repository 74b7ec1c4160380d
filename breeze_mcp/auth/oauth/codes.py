"""Authorization codes and PKCE (RFC 6749 §4.1, RFC 7636).

The human approved: :func:`create_authorization` creates the grant and one single-use code
bound to the redirect URI, the S256 challenge and the resource. :func:`verify_pkce` checks the
verifier at the exchange (:mod:`.tokens`); only S256 is supported (OAuth 2.1 §4.1.1).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import uuid
from collections.abc import Sequence

import sqlalchemy as sa

from breeze_mcp import audit
from breeze_mcp.auth.oauth.blocks import ClientBlocked, blocked_until, lock_client
from breeze_mcp.auth.oauth.clients import Client
from breeze_mcp.auth.oauth.errors import AccessDenied, InvalidScope
from breeze_mcp.auth.oauth.grants import CODE_PREFIX, canonical_scopes, grant_audit
from breeze_mcp.auth.principal import RequestContext, effective_scopes
from breeze_mcp.auth.tokens import digest, mint_tenant_bound
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.models import memberships, oauth_clients, oauth_codes, oauth_grants

__all__ = [
    "CODE_CHALLENGE_PATTERN",
    "CODE_VERIFIER_PATTERN",
    "create_authorization",
    "verify_pkce",
]

#: RFC 7636 §4.1: 43-128 characters of [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~".
CODE_VERIFIER_PATTERN = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
#: RFC 7636 §4.2: BASE64URL(SHA256(verifier)) without padding is always 43 characters.
CODE_CHALLENGE_PATTERN = re.compile(r"^[A-Za-z0-9\-_]{43}$")


def verify_pkce(verifier: str, challenge: str) -> bool:
    """S256 only: BASE64URL(SHA256(verifier)) == challenge, compared in constant time."""
    if not CODE_VERIFIER_PATTERN.match(verifier):
        return False
    computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return hmac.compare_digest(computed.rstrip(b"=").decode(), challenge)



async def create_authorization(
    db: Database,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    client: Client,
    user_id: uuid.UUID,
    scopes: Sequence[str],
    resource: str,
    redirect_uri: str,
    code_challenge: str,
    request: RequestContext,
    requested_scopes: Sequence[str],
) -> str:
    """The human approved: create the grant and a single-use code; returns the code.
    :class:`~breeze_mcp.auth.oauth.blocks.ClientBlocked` (audited) when the client is blocked
    in the tenant."""
    code = mint_tenant_bound(CODE_PREFIX, tenant_id)
    async with db.tenant(tenant_id, user_id=user_id) as conn:
        role = (await conn.execute(
            sa.select(memberships.c.role).where(
                memberships.c.tenant_id == tenant_id, memberships.c.user_id == user_id)
        )).scalar_one_or_none()
        if role is None:
            raise AccessDenied("you are not a member of that tenant")
        granted = canonical_scopes(list(effective_scopes(role, scopes)))
        if not granted:
            raise InvalidScope("no scope left to grant")
        # The client's row, locked before the block check as a block locks it first: a
        # block being written is waited for, then seen.
        await lock_client(conn, client.client_id)
        until = await blocked_until(conn, tenant_id, client.client_id)
        if until is not None:
            await conn.finish(audit.AuditEntry(
                actor_type="user", actor_id=str(user_id), acting_user_id=user_id,
                auth_path="oauth", client_id=client.client_id, tenant_id=tenant_id,
                action="oauth.grant_created", decision="denied", outcome="blocked",
                deny_reason="client_blocked", scopes=granted,
                parameters={"requested": list(requested_scopes),
                            "blocked_until": until.isoformat()},
                request_id=request.request_id, client_ip=request.client_ip,
                user_agent=request.user_agent))
            raise ClientBlocked(until)
        grant_id = (await conn.execute(
            oauth_grants.insert().values(
                tenant_id=tenant_id, client_id=client.client_id, user_id=user_id,
                scopes=granted, resource=resource,
            ).returning(oauth_grants.c.id)
        )).scalar_one()
        await conn.execute(oauth_codes.insert().values(
            digest=digest(code), tenant_id=tenant_id, grant_id=grant_id,
            redirect_uri=redirect_uri, code_challenge=code_challenge, resource=resource,
            scopes=granted,
            expires_at=sa.func.now() + dt.timedelta(seconds=settings.auth_code_ttl),
        ))
        await conn.execute(
            oauth_clients.update().where(oauth_clients.c.client_id == client.client_id)
            .values(expires_at=None, last_authorized_at=sa.func.now())
        )
        narrowed = [s for s in canonical_scopes(requested_scopes) if s not in granted]
        await conn.finish(grant_audit(
            "oauth.grant_created", tenant_id, grant_id, client.client_id, user_id, granted,
            request, {"requested": list(requested_scopes), "granted": granted,
                      "withheld": narrowed, "resource": resource},
        ))
    return code
