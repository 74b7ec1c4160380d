"""The Principal: who is calling, for which tenant, with what scopes, through which door.

Each front door (MCP endpoint, REST, web console) authenticates its credential and builds one
Principal. Nothing after that point knows which door was used, except to write it into the
audit entry, which is how audit parity holds by construction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

# The audit log defines who can act and through which door; a Principal uses the same words.
from breeze_mcp.audit import ActorType, AuditEntry, AuthPath
from breeze_mcp.auth.client_ip import rate_limit_key

__all__ = [
    "ADMIN_ROLES",
    "ALL_SCOPES",
    "ROLE_SCOPES",
    "SCOPE_CEILING",
    "ActorType",
    "AuthPath",
    "Principal",
    "RefusalCode",
    "RequestContext",
    "effective_scopes",
    "scope_for_tier",
]

#: The only scopes there are, from weakest to strongest.
ALL_SCOPES: tuple[str, ...] = ("ai:read", "ai:write", "ai:execute")

#: Highest risk tier each scope reaches. Tier 4 is reached by none.
SCOPE_CEILING: dict[str, int] = {"ai:read": 1, "ai:write": 2, "ai:execute": 3}

#: Scopes a member of each role may hold (and so grant to a key or an AI client).
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "owner": frozenset(ALL_SCOPES),
    "admin": frozenset(ALL_SCOPES),
    "technician": frozenset(ALL_SCOPES),
    "readonly": frozenset({"ai:read"}),
}


#: Roles that govern the tenant's credentials: every member's OAuth grants, client blocks.
ADMIN_ROLES: tuple[str, ...] = ("owner", "admin")


def effective_scopes(role: str | None, requested: Iterable[str]) -> frozenset[str]:
    """The scopes out of ``requested`` that a member of ``role`` may hold: the one place a role
    narrows scopes (an API key at creation and on every request, consent, an access token).
    No role, or one we do not know, holds none."""
    if role is None:
        return frozenset()
    return frozenset(requested) & ROLE_SCOPES.get(role, frozenset())


def scope_for_tier(tier: int) -> str | None:
    """The weakest scope that reaches ``tier`` (None for Tier 4: nothing does)."""
    for scope in ALL_SCOPES:
        if SCOPE_CEILING[scope] >= tier:
            return scope
    return None


#: Why a caller's request was refused, whichever door it came through: ``role`` (the person's
#: role may not), ``forbidden`` (not with this credential, or not this caller's to do),
#: ``not_found`` (not there, or not the caller's to see), ``last_owner``, ``conflict``,
#: ``invalid`` (a malformed request), ``rate_limited``.
RefusalCode = Literal["role", "forbidden", "not_found", "last_owner", "conflict", "invalid",
                      "rate_limited"]

#: How each refusal is written to the audit log: (outcome, deny_reason). A malformed request
#: is ``error``/``invalid_request`` on every path, as a tool call's is.
_REFUSAL_AUDIT: dict[RefusalCode, tuple[str, str]] = {
    "role": ("blocked", "role"), "forbidden": ("blocked", "forbidden"),
    "not_found": ("blocked", "not_found"), "last_owner": ("blocked", "last_owner"),
    "conflict": ("blocked", "conflict"), "invalid": ("error", "invalid_request"),
    "rate_limited": ("rate_limited", "rate_limited"),
}
#: Refusals whose reason is the caller's standing, not the request: no ``error`` is written
#: (as for a tool denied by the gate).
_STANDING: frozenset[RefusalCode] = frozenset({"role", "forbidden"})


@dataclass(frozen=True)
class RequestContext:
    """Facts about the HTTP request, resolved once at the edge."""

    request_id: str
    client_ip: str | None = None
    user_agent: str | None = None

    @property
    def rate_key(self) -> str:
        """The client's address as per-source rate limits count it (IPv6 folded to /64)."""
        return rate_limit_key(self.client_ip or "")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``tenant_id`` comes only from the credential."""

    tenant_id: uuid.UUID
    actor_type: ActorType
    actor_id: str
    auth_path: AuthPath
    credential_id: str
    scopes: frozenset[str]
    acting_user_id: uuid.UUID | None = None
    client_id: str | None = None
    #: The acting user's role in the tenant at this request (owner, admin, ...), if any.
    role: str | None = None
    #: Rate-limit buckets this caller draws from, with their limits in ``limits`` notation:
    #: (("api_key:<id>", "120/minute"),) or (("grant:<id>", "300/minute"),).
    rate_limits: tuple[tuple[str, str], ...] = field(default=())

    @property
    def tier_ceiling(self) -> int:
        """Highest tier the scopes reach (0 when they reach nothing)."""
        return max((SCOPE_CEILING[s] for s in self.scopes if s in SCOPE_CEILING), default=0)

    @property
    def actor(self) -> str:
        """Label stored on rows this caller creates (requested_by, author): ``api_key:<id>``,
        ``user:<id>``, or for an AI client ``user:<id> via oauth_client:<client id>``."""
        if self.actor_type == "oauth_client" and self.acting_user_id is not None:
            return f"user:{self.acting_user_id} via oauth_client:{self.actor_id}"
        return f"{self.actor_type}:{self.actor_id}"

    def audit_entry(self, request: RequestContext, **fields: Any) -> AuditEntry:
        """The audit entry of something this caller did in ``request``: the caller's and the
        request's fields, plus ``fields`` (action, decision, outcome, ...). The one place a
        Principal becomes audit fields, whichever door it came through."""
        return AuditEntry(
            actor_type=self.actor_type, actor_id=self.actor_id,
            acting_user_id=self.acting_user_id, auth_path=self.auth_path,
            credential_id=self.credential_id, client_id=self.client_id,
            tenant_id=self.tenant_id, scopes=sorted(self.scopes),
            request_id=request.request_id, client_ip=request.client_ip,
            user_agent=request.user_agent, **fields,
        )

    def refusal_entry(self, request: RequestContext, action: str, code: RefusalCode,
                      message: str, parameters: dict[str, Any]) -> AuditEntry:
        """The entry of ``action`` refused for ``code``: the one shape of a refusal on every
        path (console, REST, admin API, apps and people alike). Denied; the outcome and
        ``deny_reason`` by :data:`_REFUSAL_AUDIT`; ``error`` says what was wrong, except
        where the caller's standing is the reason."""
        outcome, deny_reason = _REFUSAL_AUDIT[code]
        return self.audit_entry(
            request, action=action, parameters=parameters, decision="denied",
            outcome=outcome, deny_reason=deny_reason,
            error=None if code in _STANDING else message)
