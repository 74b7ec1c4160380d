"""The resource server's side: RFC 8707 resource indicators and RFC 6750 bearer tokens.

* :func:`normalize_resource` is how a requested ``resource`` is compared with ours.
* Validating an access token is one indexed lookup joined with its grant, user, membership and
  tenant (:func:`access_lookup`), judged by the rule API keys share
  (:mod:`breeze_mcp.auth.credentials`); revoking a grant therefore takes effect on the very
  next request, on every instance: no cache outlives it.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

from breeze_mcp.auth.credentials import CredentialRejected, usable_scopes
from breeze_mcp.auth.principal import Principal
from breeze_mcp.auth.tokens import digest
from breeze_mcp.config import Settings
from breeze_mcp.db.engine import Row, Transaction
from breeze_mcp.db.statements import Prepared, prepared

__all__ = [
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


# The token with its grant and holder (the user who consented), in the columns
# credentials.usable_scopes judges.
_ACCESS_LOOKUP = prepared(
    "SELECT a.scopes, a.revoked_at IS NOT NULL OR g.revoked_at IS NOT NULL AS revoked,"
    " a.expires_at <= now() AS expired,"
    " g.id AS grant_id, g.client_id, g.user_id, g.resource,"
    " g.last_used_at IS NULL OR g.last_used_at < now() - interval '60 seconds' AS touch,"
    " t.status AS tenant_status, m.role, u.disabled_at"
    " FROM oauth_access_tokens a"
    " JOIN oauth_grants g ON g.id = a.grant_id AND g.tenant_id = a.tenant_id"
    " JOIN tenants t ON t.id = g.tenant_id"
    " JOIN users u ON u.id = g.user_id"
    " LEFT OUTER JOIN memberships m ON m.tenant_id = g.tenant_id AND m.user_id = g.user_id"
    " WHERE a.digest = %s AND a.tenant_id = %s"
)
_GRANT_TOUCH = prepared("UPDATE oauth_grants SET last_used_at = now() WHERE id = %s")


def access_lookup(token: str, tenant_id: uuid.UUID) -> tuple[Prepared, tuple[bytes, str]]:
    """The lookup statement for a presented access token, ``tenant_id`` being the tenant it
    names (``tokens.tenant_of``); run by :meth:`Database.tenant_lookup` with its ``BEGIN``,
    judged by :func:`access_principal_from`."""
    return _ACCESS_LOOKUP, (digest(token), str(tenant_id))  # str: a cheaper literal


async def access_principal_from(
    tx: Transaction, settings: Settings, tenant_id: uuid.UUID, row: Row,
) -> Principal:
    """The Principal for a presented access token, from the row :func:`access_lookup`'s
    statement returned for it, or :class:`~breeze_mcp.auth.credentials.CredentialRejected`."""
    scopes = usable_scopes(row)
    if row.resource != settings.mcp_url:
        raise CredentialRejected("wrong_resource")
    if row.touch:
        await tx.execute(_GRANT_TOUCH, (row.grant_id,))
    return Principal(
        tenant_id=tenant_id,
        actor_type="oauth_client",
        actor_id=row.client_id,
        auth_path="oauth",
        credential_id=str(row.grant_id),
        scopes=scopes,
        acting_user_id=row.user_id,
        role=row.role,
        client_id=row.client_id,
        rate_limits=((f"grant:{row.grant_id}", settings.grant_rate_limit),),
    )
