"""The one audit writer.

Every tool call and every security event, from every front door, becomes one
:class:`AuditEntry` written by :func:`write`. The entry of an allowed call is written on the
call's own connection, inside its transaction, so a committed action always has its entry.
Parameters are redacted (anything that looks secret) and size-capped before they are stored,
and every text of the entry is stored in a lossless escaped form (:func:`escape`, inverted by
:func:`unescape`), so no bytes a caller sends can make an entry fail.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from breeze_mcp.db.statements import Prepared, prepared

if TYPE_CHECKING:
    from breeze_mcp.db.engine import Transaction

__all__ = [
    "MAX_PARAMETERS_BYTES",
    "ActorType",
    "AuditEntry",
    "AuthPath",
    "Decision",
    "Outcome",
    "escape",
    "insert_statement",
    "operator",
    "operator_entry",
    "redact",
    "restore",
    "secret_key",
    "stored_text",
    "unescape",
    "write",
]

ActorType = Literal["user", "oauth_client", "api_key", "system"]
AuthPath = Literal["session", "oauth", "api_key", "cli", "system"]
Decision = Literal["allowed", "denied"]
Outcome = Literal["success", "error", "blocked", "rate_limited"]

MAX_PARAMETERS_BYTES = 8192
MAX_STRING = 1024
MAX_DEPTH = 8
REDACTED = "[redacted]"
TRUNCATED = "…[truncated]"

# Key names that hold secrets, matched word by word (``apiKey``, ``x-auth-token``,
# ``client_secret`` are split into words) so that ``monkey``, ``keyword`` or ``author``
# are not caught: a word is secret if it is one of these, or ends or starts as listed.
_SECRET_WORDS = frozenset({
    "auth", "authorization", "authn", "bearer", "cookie", "cookies", "credential",
    "credentials", "creds", "key", "keys", "apikey", "otp", "totp", "pass", "passcode",
    "passphrase", "passwd", "password", "pwd", "privatekey", "recovery", "secret", "secrets",
    "session", "signature", "token", "tokens",
})
_SECRET_SUFFIXES = ("password", "passwd", "secret", "token", "tokens", "credential",
                    "credentials", "cookie", "apikey", "signature", "passphrase")
_SECRET_PREFIXES = ("password", "passwd", "secret", "credential", "token")
_HANDLES = frozenset({"id", "ids", "prefix"})
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

# Secret-looking substrings, masked where they stand so the rest of the text stays readable:
# our typed credentials, JWTs, PEM private keys, "Bearer ...", GitHub, AWS and Slack tokens,
# and the value of "password=..."-like pairs (the key before it is kept).
_SECRET_VALUE = re.compile(
    r"\bbz[a-z]_[A-Za-z0-9_-]{8,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*)?"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----(?:.*?-----END [A-Z ]*PRIVATE KEY-----|.*)"
    r"|(?P<scheme>\b(?i:bearer)\s+)[A-Za-z0-9._~+/-]+=*"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|(?P<pair>(?i:password|passwd|pwd|passphrase|secret|token|api[_-]?key)\s*[=:]\s*)"
    r"(?:\"[^\"]*\"|'[^']*'|[^\s&;,'\"]+)",
    re.DOTALL,
)
# Every match of _SECRET_VALUE contains one of these (lower-cased): a cheap test first, so
# that ordinary text does not pay for the pattern.
_SECRET_MARKERS = ("bz", "eyj", "-----begin", "bearer", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
                   "github_pat_", "akia", "asia", "xox", "password", "passwd", "passphrase",
                   "pwd", "secret", "token", "api")

# The escaped form that makes any text storable and readable (see docs/security.md):
# NUL, other control characters (but tab, newline, carriage return) and lone surrogates
# become \uXXXX; a backslash is doubled only where it would otherwise be read as the start
# of an escape, so ordinary text (a Windows path, a script) is stored exactly as it came.
_CONTROL = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff"
_ESCAPE = re.compile(rf"[{_CONTROL}]|\\(?=[\\{_CONTROL}]|u[0-9a-fA-F]{{4}})")
_UNESCAPE = re.compile(r"\\(\\|u[0-9a-fA-F]{4})")


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    return "\\\\" if char == "\\" else f"\\u{ord(char):04x}"


def escape(text: str) -> str:
    """``text`` in the stored form: lossless (see :func:`unescape`), valid UTF-8 and
    storable in PostgreSQL ``text`` and ``jsonb``."""
    if text.isprintable() and "\\" not in text:  # nothing to escape: the common case, fast
        return text
    return _ESCAPE.sub(_escape_one, text)


def unescape(text: str) -> str:
    """The inverse of :func:`escape`: the text exactly as the caller sent it."""
    return _UNESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(int(m[1][1:], 16)), text)


def restore(value: Any) -> Any:
    """Stored ``parameters`` back as sent (keys and strings unescaped); what redaction and
    the size caps removed stays removed."""
    if isinstance(value, dict):
        return {unescape(k): restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore(v) for v in value]
    return unescape(value) if isinstance(value, str) else value


@functools.lru_cache(maxsize=4096)
def secret_key(key: str) -> bool:
    """Whether a parameter named ``key`` holds a secret (its value is not stored).

    A name that ends in ``id``/``ids``/``prefix`` names a secret's public handle (``key_id``,
    ``token_prefix``) and is kept, except a session's id, which is the secret itself."""
    words = [word.lower() for word in _WORDS.findall(key)]
    if words and words[-1] in _HANDLES and "session" not in words:
        return False
    return any(word in _SECRET_WORDS or word.endswith(_SECRET_SUFFIXES)
               or word.startswith(_SECRET_PREFIXES) for word in words)


def _mask(match: re.Match[str]) -> str:
    return (match["scheme"] or match["pair"] or "") + REDACTED


def stored_text(value: str, limit: int = MAX_STRING, *, mask: bool = True) -> str:
    """A string as it is stored: secrets masked (unless ``mask`` is false, for the texts we
    write ourselves), shortened, escaped."""
    if mask:
        # A secret that starts before the cut is masked; past it, nothing is kept anyway.
        value = value[:limit + 512]
        lowered = value.lower()
        if any(marker in lowered for marker in _SECRET_MARKERS):
            value = _SECRET_VALUE.sub(_mask, value)
    if len(value) > limit:
        value = value[:limit] + TRUNCATED
    return escape(value)


def redact(value: Any, *, _depth: int = 0) -> Any:
    """Copy of ``value`` with secret-looking keys and values masked, strings shortened and
    escaped; nesting deeper than :data:`MAX_DEPTH` is cut (so no input can recurse far)."""
    if _depth > MAX_DEPTH:
        return "[truncated]"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            raw = str(key)
            out[escape(raw[:MAX_STRING])] = (REDACTED if secret_key(raw)
                                             else redact(item, _depth=_depth + 1))
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item, _depth=_depth + 1) for item in value[:100]]
    if isinstance(value, str):
        return stored_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN / Infinity (JSON parsers accept them; jsonb does not)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return stored_text(str(value))


def _optional(value: Any, limit: int = MAX_STRING, *, mask: bool = False) -> str | None:
    return None if value is None else stored_text(str(value), limit, mask=mask)


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


#: The audit_log columns an entry fills: the entry type's fields, in order (duration last).
_COLUMNS = tuple(f.name for f in dataclasses.fields(AuditEntry))


def _insert(duration: str) -> str:
    # A plain INSERT (no RETURNING, whose returned row would have to pass the SELECT policy,
    # which a pre-tenant event (tenant_id NULL) does not). The entry travels as one JSON
    # document that PostgreSQL turns into an audit_log row (jsonb_populate_record types each
    # field by its column): one parameter instead of 19, which matters where the statement is
    # bound client-side (``Transaction.finish``).
    columns = ", ".join(_COLUMNS)
    values = ", ".join(f"entry.{c}" for c in _COLUMNS[:-1])
    return (
        f"INSERT INTO audit_log ({columns}) SELECT {values}, {duration}"  # noqa: S608
        " FROM jsonb_populate_record(NULL::audit_log, %s::jsonb) AS entry"
    )


_INSERT = prepared(_insert("entry.duration_ms"))
# After a read in the same message: the database time of that read is added to the
# duration measured before it was sent (statement_timestamp() is the message's arrival).
_INSERT_AFTER_READ = prepared(_insert(
    "round(entry.duration_ms::numeric"
    " + 1000 * extract(epoch FROM clock_timestamp() - statement_timestamp()), 3)::float8"
))


def _params(entry: AuditEntry) -> tuple[str]:
    # The entry's fields (the columns, _COLUMNS), each stored as it is except these. Every
    # text goes through stored_text() (escaped; masked where it is the caller's own): a row
    # never fails because of the bytes someone sent.
    document = dict(vars(entry))
    document["action"] = stored_text(entry.action, mask=False)
    document["tenant_id"] = None if entry.tenant_id is None else str(entry.tenant_id)
    document["acting_user_id"] = (None if entry.acting_user_id is None
                                  else str(entry.acting_user_id))
    for name in ("actor_id", "credential_id", "client_id", "request_id", "deny_reason"):
        document[name] = _optional(document[name])
    # An error may quote what the caller sent (an unknown role, a scope): masked like it.
    document["error"] = _optional(entry.error, mask=True)
    document["parameters"] = _capped(entry.parameters)
    document["scopes"] = [stored_text(s, mask=False) for s in entry.scopes]
    document["user_agent"] = _optional(entry.user_agent, 512, mask=True)
    return (json.dumps(document, default=str),)


def insert_statement(entry: AuditEntry, *, after_read: bool = False
                     ) -> tuple[Prepared, tuple[str]]:
    """The prepared insert of ``entry`` and its parameter; ``after_read``: sent after a read
    in the same message, whose database time is added to the entry's duration."""
    return (_INSERT_AFTER_READ if after_read else _INSERT), _params(entry)


async def write(tx: Transaction, entry: AuditEntry) -> None:
    """Insert ``entry`` in ``tx`` (committed with it; :meth:`Transaction.finish` is how a
    transaction's one entry is usually written)."""
    await tx.execute(*insert_statement(entry))
