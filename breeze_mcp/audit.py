"""The one audit writer.

Every tool call and every security event, from every front door, becomes one
:class:`AuditEntry` written by :func:`write`. The entry of an allowed call is written on the
call's own connection, inside its transaction, so a committed action always has its entry.
Parameters are redacted (anything that looks secret) and size-capped before they are stored.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from psycopg import AsyncClientCursor
from sqlalchemy.ext.asyncio import AsyncConnection

from breeze_mcp.db.engine import Statement, driver, executable, execute_then_commit

__all__ = [
    "MAX_PARAMETERS_BYTES",
    "ActorType",
    "AuditEntry",
    "AuthPath",
    "Decision",
    "Outcome",
    "operator",
    "operator_entry",
    "redact",
    "write",
    "write_after_read",
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
            skey = _storable(str(key))
            out[skey] = REDACTED if _SECRET_KEY.search(skey) else redact(item, _depth=_depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item, _depth=_depth + 1) for item in value[:100]]
    if isinstance(value, str):
        if _SECRET_VALUE.search(value):
            return REDACTED
        value = _storable(value)
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "…[truncated]"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN / Infinity (JSON parsers accept them; jsonb does not)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _storable(str(value))[:MAX_STRING]


def _storable(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL: it is stored as U+FFFD."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


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


def operator_entry(actor: str, action: str, **fields: Any) -> AuditEntry:
    """The entry of a successful operator action (CLI, service, web console), its actor type
    and door decided by :func:`operator`."""
    actor_type, auth_path = operator(actor)
    return AuditEntry(actor_type=actor_type, actor_id=actor, auth_path=auth_path, action=action,
                      decision="allowed", outcome="success", **fields)


_COLUMNS = (
    "actor_type", "auth_path", "action", "decision", "outcome", "tenant_id", "actor_id",
    "acting_user_id", "credential_id", "client_id", "request_id", "parameters", "risk_tier",
    "scopes", "deny_reason", "error", "client_ip", "user_agent", "duration_ms",
)


def _insert(duration: str) -> str:
    # A plain INSERT (no RETURNING, whose returned row would have to pass the SELECT policy,
    # which a pre-tenant event (tenant_id NULL) does not). The entry travels as one JSON
    # document that PostgreSQL turns into an audit_log row (jsonb_populate_record types each
    # field by its column): one parameter instead of 19, which matters where the statement is
    # bound client-side (``write(..., commit=True)``, ``write_after_read``).
    columns = ", ".join(_COLUMNS)
    values = ", ".join(f"entry.{c}" for c in _COLUMNS[:-1])
    return (
        f"INSERT INTO audit_log ({columns}) SELECT {values}, {duration}"  # noqa: S608
        " FROM jsonb_populate_record(NULL::audit_log, %s::jsonb) AS entry"
    )


_INSERT = _insert("entry.duration_ms")
# After a read in the same message: the database time of that read is added to the
# duration measured before it was sent (statement_timestamp() is the message's arrival).
_INSERT_AFTER_READ = _insert(
    "round(entry.duration_ms::numeric"
    " + 1000 * extract(epoch FROM clock_timestamp() - statement_timestamp()), 3)::float8"
)


def _params(entry: AuditEntry) -> tuple[str]:
    error = None if entry.error is None else _storable(str(entry.error))[:MAX_STRING]
    user_agent = None if entry.user_agent is None else _storable(str(entry.user_agent))[:512]
    document = {
        "actor_type": entry.actor_type, "auth_path": entry.auth_path, "action": entry.action,
        "decision": entry.decision, "outcome": entry.outcome,
        "tenant_id": None if entry.tenant_id is None else str(entry.tenant_id),
        "actor_id": entry.actor_id,
        "acting_user_id": None if entry.acting_user_id is None else str(entry.acting_user_id),
        "credential_id": entry.credential_id, "client_id": entry.client_id,
        "request_id": entry.request_id, "parameters": _capped(entry.parameters),
        "risk_tier": entry.risk_tier, "scopes": list(entry.scopes),
        "deny_reason": entry.deny_reason, "error": error, "client_ip": entry.client_ip,
        "user_agent": user_agent, "duration_ms": entry.duration_ms,
    }
    return (json.dumps(document, default=str),)


async def write_after_read(
    conn: AsyncConnection, read: Statement, entry: AuditEntry
) -> list[tuple[Any, ...]]:
    """Run ``read``, insert ``entry`` and commit, in one round trip; the read's rows.

    For the last statement of a read-only call (``ToolContext.last_read``): the entry
    (the call's success) is committed only if the read succeeded; if it failed, the
    transaction is left aborted, nothing is committed and the error is raised. The entry's
    ``duration_ms`` gains the read's time in the database.
    """
    raw = driver(conn)
    read_sql, read_params = await executable(raw, read)
    insert_sql, insert_params = await executable(raw, (_INSERT_AFTER_READ, _params(entry)))
    cursor = AsyncClientCursor(raw)
    await cursor.execute(f"{read_sql}; {insert_sql}; COMMIT", (*read_params, *insert_params))
    return await cursor.fetchall()  # the first result: the read's


async def write(conn: AsyncConnection, entry: AuditEntry, *, commit: bool = False) -> None:
    """Insert ``entry`` on ``conn`` (inside the caller's transaction); with ``commit``, commit
    that transaction in the same round trip (if the insert fails, nothing is committed and
    the error is raised)."""
    params = _params(entry)
    if commit:
        await execute_then_commit(conn, (_INSERT, params))
    else:
        await driver(conn).execute(_INSERT, params)
