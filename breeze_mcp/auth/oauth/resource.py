"""The resource server's side: RFC 8707 resource indicators and RFC 6750 bearer tokens.

* :func:`normalize_resource` is how a requested ``resource`` is compared with ours.
* Validating an access token is one indexed lookup joined with its grant, user, membership and
  tenant (:func:`access_lookup`), judged by :func:`access_principal_from`; revoking a grant
  therefore takes effect on the very next request, on every instance: no cache outlives it.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.ext.asyncio import AsyncConnection

from breeze_mcp.auth.principal import Principal, effective_scopes
from breeze_mcp.auth.tokens import digest
from breeze_mcp.config import Settings
from breeze_mcp.db.engine import Statement, driver

__all__ = [
    "TokenRejected",
    "access_lookup",
    "access_principal_from",
    "normalize_resource",
]


def normalize_resource(value: str) -> str:
    """RFC 8707 resource, compared case-insensitively in scheme and host, default port and
    trailing slash dropped: ``HTTPS://MCP.Example.com:443/mcp/`` == ``https://mcp.example.com/mcp``.
    """
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # raises for a port out of range or not a number
    except ValueError:  # also a broken IPv6 literal ("https://[::1/mcp")
        return "invalid:"
    if "#" in value or parts.username is not None or parts.password is not None:
        return "invalid:"  # RFC 8707 §2: no fragment; userinfo is never our resource
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if (scheme, port) in (("https", 443), ("http", 80)):
        port = None
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/")
    return urlunsplit((scheme, netloc, path, parts.query, ""))


class TokenRejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_ACCESS_LOOKUP = (
    "SELECT a.scopes, a.revoked_at, a.expires_at <= now() AS expired,"
    " g.id AS grant_id, g.client_id, g.user_id, g.resource, g.revoked_at AS grant_revoked,"
    " g.last_used_at IS NULL OR g.last_used_at < now() - interval '60 seconds' AS touch,"
    " t.status AS tenant_status, m.role, u.disabled_at,"
    # The caller becomes the transaction's actor in the same round trip (Principal.actor and
    # acting_user_id); a rejected token's transaction is rolled back, taking this with it.
    " set_config('breeze.actor',"
    " 'user:' || g.user_id::text || ' via oauth_client:' || g.client_id, true),"
    " set_config('breeze.user_id', g.user_id::text, true)"
    " FROM oauth_access_tokens a"
    " JOIN oauth_grants g ON g.id = a.grant_id AND g.tenant_id = a.tenant_id"
    " JOIN tenants t ON t.id = g.tenant_id"
    " JOIN users u ON u.id = g.user_id"
    " LEFT OUTER JOIN memberships m ON m.tenant_id = g.tenant_id AND m.user_id = g.user_id"
    " WHERE a.digest = %s AND a.tenant_id = %s"
)
_GRANT_TOUCH = "UPDATE oauth_grants SET last_used_at = now() WHERE id = %s"


def access_lookup(token: str, tenant_id: uuid.UUID) -> Statement:
    """The lookup statement for a presented access token, ``tenant_id`` being the tenant it
    names (``tokens.tenant_of``); run by :meth:`Database.tenant_lookup` with its ``BEGIN``,
    judged by :func:`access_principal_from`."""
    return _ACCESS_LOOKUP, (digest(token), str(tenant_id))  # str: a cheaper literal


async def access_principal_from(
    conn: AsyncConnection, settings: Settings, tenant_id: uuid.UUID,
    row: tuple[Any, ...] | None,
) -> Principal:
    """The Principal for a presented access token, from the row :func:`access_lookup`'s
    statement returned for it, or :class:`TokenRejected`. The lookup also made the caller
    (``user:<id> via oauth_client:<id>``) the transaction's actor; callers roll back on
    :class:`TokenRejected` (``edge.bearer_transaction`` does)."""
    if row is None:
        raise TokenRejected("unknown token")
    (token_scopes, revoked_at, expired, grant_id, client_id, user_id, resource, grant_revoked,
     touch, tenant_status, role, disabled_at, _actor, _user_id) = row
    if revoked_at is not None or grant_revoked is not None:
        raise TokenRejected("revoked")
    if expired:
        raise TokenRejected("expired")
    if resource != settings.mcp_url:
        raise TokenRejected("token minted for another resource")
    if tenant_status != "active" or role is None or disabled_at is not None:
        raise TokenRejected("the user no longer has access to the tenant")
    scopes = effective_scopes(role, token_scopes)
    if not scopes:
        raise TokenRejected("the user's role no longer allows any granted scope")
    if touch:
        await driver(conn).execute(_GRANT_TOUCH, (grant_id,))
    return Principal(
        tenant_id=tenant_id,
        actor_type="oauth_client",
        actor_id=client_id,
        auth_path="oauth",
        credential_id=str(grant_id),
        scopes=scopes,
        acting_user_id=user_id,
        client_id=client_id,
        rate_limits=((f"grant:{grant_id}", settings.grant_rate_limit),),
    )
