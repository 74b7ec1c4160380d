"""The OAuth 2.1 authorization server's state, one module per specification.

====================  ==========================================================================
``registration``      RFC 7591 §2 client metadata policy and redirect-URI rules (pure)
``clients``           RFC 7591 storage and RFC 6749 §2.3 client authentication
``client_documents``  Client ID Metadata Documents: fetch, validate, cache, use (the owner)
``fetch``             the hardened fetch of clients' documents and key sets (SSRF-safe)
``assertions``        RFC 7523 ``private_key_jwt`` client assertions, single use
``grants``            the grant (unit of consent, revocation, rate limit, audit); prefixes
``blocks``            a tenant's block of one client: no new grant, no code exchanged until it ends
``apps``              connected apps: who sees and revokes which grants, blocks (console and API)
``codes``             RFC 6749 §4.1 authorization codes and RFC 7636 PKCE
``tokens``            OAuth 2.1 §4.1.3 code exchange and §4.3 refresh rotation
``revocation``        grant revocation and RFC 7009 token revocation
``resource``          RFC 8707 resource normalisation and the RFC 6750 access-token lookup
``errors``            one error class per protocol error code (RFC 6749 §5.2, RFC 7591 §3.2.2)
====================  ==========================================================================

The names callers use are re-exported here: ``from breeze_mcp.auth import oauth``.
"""

from __future__ import annotations

from breeze_mcp.auth.oauth import apps, blocks
from breeze_mcp.auth.oauth.assertions import ALGORITHMS
from breeze_mcp.auth.oauth.blocks import ClientBlocked
from breeze_mcp.auth.oauth.client_documents import ClientDocuments, PresentedClient
from breeze_mcp.auth.oauth.clients import (
    Client,
    authenticate_client,
    get_client,
    plausible_client_id,
    register_client,
)
from breeze_mcp.auth.oauth.codes import (
    CODE_CHALLENGE_PATTERN,
    CODE_VERIFIER_PATTERN,
    create_authorization,
    verify_pkce,
)
from breeze_mcp.auth.oauth.errors import OAuthError
from breeze_mcp.auth.oauth.grants import (
    ACCESS_PREFIX,
    CODE_PREFIX,
    REFRESH_PREFIX,
    consentable_tenants,
    list_tenant_grants,
    parse_scope,
    user_grants,
    user_has_live_grant,
)
from breeze_mcp.auth.oauth.resource import (
    access_lookup,
    access_principal_from,
    normalize_resource,
)
from breeze_mcp.auth.oauth.revocation import (
    revoke_client_grants,
    revoke_grant,
    revoke_own_grant,
    revoke_token,
)
from breeze_mcp.auth.oauth.tokens import (
    AuthorizationCodeRequest,
    RefreshTokenRequest,
    TokenRequest,
    TokenResponse,
    exchange_code,
    parse_token_request,
    refresh,
)

__all__ = [
    "ACCESS_PREFIX",
    "ALGORITHMS",
    "CODE_CHALLENGE_PATTERN",
    "CODE_PREFIX",
    "CODE_VERIFIER_PATTERN",
    "REFRESH_PREFIX",
    "AuthorizationCodeRequest",
    "Client",
    "ClientBlocked",
    "ClientDocuments",
    "OAuthError",
    "PresentedClient",
    "RefreshTokenRequest",
    "TokenRequest",
    "TokenResponse",
    "access_lookup",
    "access_principal_from",
    "apps",
    "authenticate_client",
    "blocks",
    "consentable_tenants",
    "create_authorization",
    "exchange_code",
    "get_client",
    "list_tenant_grants",
    "normalize_resource",
    "parse_scope",
    "parse_token_request",
    "plausible_client_id",
    "refresh",
    "register_client",
    "revoke_client_grants",
    "revoke_grant",
    "revoke_own_grant",
    "revoke_token",
    "user_grants",
    "user_has_live_grant",
    "verify_pkce",
]
