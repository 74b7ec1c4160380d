"""The one audit writer.

Every tool call and every security event, from every front door, becomes one
:class:`AuditEntry` written by :func:`write`. The entry of an allowed call is written on the
call's own connection, inside its transaction, so a committed action always has its entry.
Parameters are redacted (anything that looks secret) and size-capped before they are stored.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg.types.json import Jsonb
from sqlalchemy.ext.asyncio import AsyncConnection

from breeze_mcp.db.engine import driver, execute_then_commit

__all__ = [
    "MAX_PARAMETERS_BYTES",
    "ActorType",
    "AuditEntry",
    "AuthPath",
    "Decision",
    "Outcome",
    "operator",
    "redact",
    "write",
]

ActorType = Literal["user", "oauth_client", "api_key", "system"]
AuthPath = Literal["session", "oauth", "api_key", "cli", "system"]
Decision = Literal["allowed", "denied"]
Outcome = Literal["success", "error", "blocked", "rate_limited"]

MAX_PARAMETERS_BYTES = 8192
MAX_STRING = 1024
REDACTED = "[redacted]"

_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_-]?key|authorization|cookie|credential|"
    r"private[_-]?key|(?<![a-z])t?otp(?![a-z])|recovery|session|signature|bearer",
    re.IGNORECASE,
)
# Values that are secrets whatever their key is called: our own typed prefixes, JWTs,
# PEM blocks, and "Bearer ..." strings.
_SECRET_VALUE = re.compile(
    r"\bbz[a-z]_[A-Za-z0-9_-]{8,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\bBearer\s+\S+",
)


def redact(value: Any, *, _depth: int = 0) -> Any:
    """Copy of ``value`` with secret-looking keys and values replaced, strings shortened."""
    if _depth > 8:
        return "[truncated]"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            skey = str(key)
            out[skey] = REDACTED if _SECRET_KEY.search(skey) else redact(item, _depth=_depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item, _depth=_depth + 1) for item in value[:100]]
    if isinstance(value, str):
        if _SECRET_VALUE.search(value):
            return REDACTED
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "…[truncated]"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:MAX_STRING]


def _capped(parameters: Mapping[str, Any]) -> dict[str, Any]:
    cleaned = redact(parameters)
    encoded = json.dumps(cleaned, default=str)
    if len(encoded.encode()) <= MAX_PARAMETERS_BYTES:
        return dict(cleaned)
    return {"_truncated": True, "_bytes": len(encoded.encode()), "keys": sorted(cleaned)[:50]}


def operator(actor: str) -> tuple[ActorType, AuthPath]:
    """Who acted and through which door, for an operator action named by its actor label:
    ``system:cli...`` is the CLI, other ``system:...`` the service itself, anything else a
    person in the web console."""
    if actor.startswith("system:cli"):
        return "system", "cli"
    if actor.startswith("system:"):
        return "system", "system"
    return "user", "session"


@dataclass(frozen=True)
class AuditEntry:
    """One audit record; the same fields whichever door the request came through."""

    actor_type: ActorType
    auth_path: AuthPath
    action: str
    decision: Decision
    outcome: Outcome
    tenant_id: uuid.UUID | None = None
    actor_id: str | None = None
    acting_user_id: uuid.UUID | None = None
    credential_id: str | None = None
    client_id: str | None = None
    request_id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    risk_tier: int | None = None
    scopes: Sequence[str] = ()
    deny_reason: str | None = None
    error: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    duration_ms: float | None = None


# A plain INSERT (no RETURNING, whose returned row would have to pass the SELECT policy, which
# a pre-tenant event (tenant_id NULL) does not), prepared once per connection by psycopg.
_INSERT = (
    "INSERT INTO audit_log (actor_type, auth_path, action, decision, outcome, tenant_id,"
    " actor_id, acting_user_id, credential_id, client_id, request_id, parameters, risk_tier,"
    " scopes, deny_reason, error, client_ip, user_agent, duration_ms)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::text[], %s, %s,"
    " %s::inet, %s, %s)"
)


async def write(conn: AsyncConnection, entry: AuditEntry, *, commit: bool = False) -> None:
    """Insert ``entry`` on ``conn`` (inside the caller's transaction); with ``commit``, commit
    that transaction in the same round trip (if the insert fails, nothing is committed and
    the error is raised)."""
    error = None if entry.error is None else str(entry.error)[:MAX_STRING]
    user_agent = None if entry.user_agent is None else str(entry.user_agent)[:512]
    params = (
        entry.actor_type, entry.auth_path, entry.action, entry.decision, entry.outcome,
        entry.tenant_id, entry.actor_id, entry.acting_user_id, entry.credential_id,
        entry.client_id, entry.request_id, Jsonb(_capped(entry.parameters)), entry.risk_tier,
        list(entry.scopes), entry.deny_reason, error, entry.client_ip, user_agent,
        entry.duration_ms,
    )
    if commit:
        await execute_then_commit(conn, (_INSERT, params))
    else:
        await driver(conn).execute(_INSERT, params)
