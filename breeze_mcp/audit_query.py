"""Reading the audit log: one tenant's entries, filtered, a page at a time or all of them.

Every read runs in a transaction of the caller's tenant, so row-level security walls it into
that tenant's entries (the statement names the tenant too). Entries written before any tenant
was known (``tenant_id`` NULL: a failed sign-in, a client registration) belong to no tenant
and are never shown.

Entries come newest first, in ``(occurred_at, id)`` order, and are paged by keyset: a page
ends with a cursor, the position of its last entry, and the next page starts strictly below
it. An entry is therefore never shown twice, and entries written meanwhile (which sort above)
do not shift the pages. The cursor is signed (HMAC-SHA256 under a key derived from the
session key) together with the tenant and the filters it was made for: it cannot be forged,
edited, or carried to another tenant or another query (:class:`AuditQueryError`, a 400).

An export (:func:`export_chunks`) walks the same query in batches of :data:`EXPORT_BATCH`:
the first batch is read in the request's own transaction, each later one in a short
transaction of its own for the same tenant, closed before the batch is sent; so a slow
client holds its HTTP connection, never a pooled database connection.

Output: JSON (the API's pages, JSON Lines) carries every text exactly as it was sent
(:func:`breeze_mcp.audit.restore`); CSV carries the stored escaped form, which is printable
and inverted by :func:`breeze_mcp.audit.unescape`, and a cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return gets a leading apostrophe, so that a spreadsheet
shows it instead of running it as a formula.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import functools
import hashlib
import hmac
import io
import json
import re
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from breeze_mcp import audit
from breeze_mcp.db.models import audit_log, users

if TYPE_CHECKING:
    from breeze_mcp.db.engine import Database, Row, Transaction

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_PAGE_SIZE",
    "EXPORT_BATCH",
    "MAX_PAGE_SIZE",
    "MEDIA_TYPES",
    "AuditFilters",
    "AuditPage",
    "AuditQueryError",
    "ExportRequest",
    "Format",
    "PageRequest",
    "Position",
    "csv_cells",
    "cursor_key",
    "decode_cursor",
    "encode_cursor",
    "entry_json",
    "export_chunks",
    "json_text",
    "parse_request",
    "read_batch",
    "read_page",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: Entries read per transaction by an export.
EXPORT_BATCH = 500

Format = Literal["jsonl", "csv"]
MEDIA_TYPES: dict[str, str] = {"jsonl": "application/x-ndjson",
                               "csv": "text/csv; charset=utf-8"}


class AuditQueryError(ValueError):
    """A filter, the cursor, the limit or the format is not valid: a 400 naming it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = f"{name}: {message}"


def _instant(value: object) -> dt.datetime:
    """An ISO 8601 date or date-time; without an offset it is UTC."""
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str) and len(value) <= 40:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("expected an ISO 8601 date or date-time, such as "
                             "2026-01-31T09:00:00Z") from None
    else:
        raise ValueError("expected an ISO 8601 date or date-time")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("out of range") from None


class AuditFilters(BaseModel):
    """Which entries: each filter given narrows the result (all of them at once)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    #: From this instant (inclusive).
    since: dt.datetime | None = Field(default=None, alias="from")
    #: Before this instant (exclusive).
    until: dt.datetime | None = Field(default=None, alias="to")
    #: An email (what that person did, by any door: session, their API keys, the AI clients
    #: they connected) or an actor id (a user's, an API key's, an OAuth client's,
    #: ``system:cli``).
    actor: str | None = Field(default=None, min_length=1, max_length=320)
    path: audit.AuthPath | None = None
    #: An action name, or a prefix of one ending in ``*`` (``admin.*``).
    action: str | None = Field(default=None, min_length=1, max_length=200)
    tier: int | None = Field(default=None, ge=1, le=4)
    decision: audit.Decision | None = None
    outcome: audit.Outcome | None = None

    @field_validator("since", "until", mode="before")
    @classmethod
    def _iso_8601(cls, value: object) -> dt.datetime | None:
        return None if value is None else _instant(value)

    @field_validator("action")
    @classmethod
    def _star_last(cls, value: str | None) -> str | None:
        if value is not None and "*" in value[:-1]:
            raise ValueError("a * may only end the action, once (a prefix: admin.*)")
        return value

    @field_validator("until")
    @classmethod
    def _after_since(cls, value: dt.datetime | None,
                     info: ValidationInfo) -> dt.datetime | None:
        since = info.data.get("since")
        if value is not None and since is not None and value <= since:
            raise ValueError("must be after from")
        return value

    def only_filters(self) -> AuditFilters:
        """These filters alone (without a page's cursor and limit or an export's format)."""
        return AuditFilters.model_construct(
            **{name: getattr(self, name) for name in AuditFilters.model_fields})

    def parameters(self) -> dict[str, Any]:
        """The filters given, by their query names, in canonical form (times in UTC): the
        parameters of the read's audit entry, and what a cursor is signed with."""
        shown: dict[str, Any] = {}
        for name, info in AuditFilters.model_fields.items():
            value = getattr(self, name)
            if value is not None:
                shown[info.alias or name] = (value.isoformat() if isinstance(value, dt.datetime)
                                             else value)
        return shown


class PageRequest(AuditFilters):
    """A page of entries: the filters, where to continue and how many."""

    cursor: str | None = Field(default=None, max_length=100)
    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


class ExportRequest(AuditFilters):
    """Every entry the filters select, as JSON Lines or CSV."""

    format: Format


_Request = TypeVar("_Request", bound=AuditFilters)


class _Query(Protocol):
    def multi_items(self) -> list[tuple[str, str]]: ...


def parse_request(model: type[_Request], query: _Query) -> _Request:
    """``model`` from a query string (already held to :func:`breeze_mcp.forms.read_query`'s
    rules). Empty values count as absent (an empty field of the console's form); a repeated
    or unknown name is refused. Raises :class:`AuditQueryError` naming the first problem."""
    values: dict[str, str] = {}
    for name, value in query.multi_items():
        if name in values:
            raise AuditQueryError(name, "is given more than once")
        values[name] = value
    given = {name: value for name, value in values.items() if value != ""}
    try:
        return model.model_validate(given)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = ".".join(str(part) for part in error["loc"]) or "query"
        if error["type"] == "extra_forbidden":
            raise AuditQueryError(name[:40], "is not a filter of the audit log") from None
        message = str(error["msg"]).removeprefix("Value error, ")
        raise AuditQueryError(name, message[:1].lower() + message[1:]) from None


# -- the cursor ----------------------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_POSITION = struct.Struct(">qq")
_MAC_BYTES = 16
_CURSOR = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, unpadded base64url


@dataclass(frozen=True)
class Position:
    """Where an entry sorts: its time (microseconds since the epoch, exact) and its id."""

    occurred_us: int
    id: int

    @classmethod
    def of(cls, row: Row) -> Position:
        return cls((row.occurred_at - _EPOCH) // dt.timedelta(microseconds=1), row.id)

    @property
    def occurred_at(self) -> dt.datetime:
        return _EPOCH + dt.timedelta(microseconds=self.occurred_us)


@functools.lru_cache(maxsize=4)
def cursor_key(session_key: str) -> bytes:
    """The cursors' signing key: derived from the session key under its own label, so it is
    used for nothing else."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"breeze-mcp audit cursor v1").derive(session_key.encode())


def _mac(key: bytes, tenant_id: uuid.UUID, filters: AuditFilters, body: bytes) -> bytes:
    canonical = json.dumps(filters.parameters(), sort_keys=True).encode()
    return hmac.new(key, tenant_id.bytes + body + canonical, hashlib.sha256).digest()[:_MAC_BYTES]


def encode_cursor(key: bytes, tenant_id: uuid.UUID, filters: AuditFilters,
                  position: Position) -> str:
    """An opaque cursor for continuing below ``position``, valid only for this tenant and
    these filters."""
    body = _POSITION.pack(position.occurred_us, position.id)
    raw = body + _mac(key, tenant_id, filters.only_filters(), body)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(key: bytes, tenant_id: uuid.UUID, filters: AuditFilters,
                  cursor: str) -> Position:
    """The position in ``cursor``, or :class:`AuditQueryError` if this tenant's query with
    these filters did not give it out."""
    if _CURSOR.fullmatch(cursor):
        raw = base64.urlsafe_b64decode(cursor + "=")
        body, mac = raw[:_POSITION.size], raw[_POSITION.size:]
        if hmac.compare_digest(mac, _mac(key, tenant_id, filters.only_filters(), body)):
            occurred_us, entry_id = _POSITION.unpack(body)
            return Position(occurred_us, entry_id)
    raise AuditQueryError("cursor", "not a cursor of this query (start again from the "
                          "first page)")


# -- the query -----------------------------------------------------------------------------

_by_email = users.alias("by_email")
_COLUMNS = (
    audit_log.c.id, audit_log.c.occurred_at, audit_log.c.request_id, audit_log.c.tenant_id,
    audit_log.c.actor_type, audit_log.c.actor_id, audit_log.c.acting_user_id,
    users.c.email.label("acting_user_email"), audit_log.c.auth_path,
    audit_log.c.credential_id, audit_log.c.client_id, audit_log.c.action,
    audit_log.c.parameters, audit_log.c.risk_tier, audit_log.c.scopes, audit_log.c.decision,
    audit_log.c.deny_reason, audit_log.c.outcome, audit_log.c.error, audit_log.c.client_ip,
    audit_log.c.user_agent, audit_log.c.duration_ms,
)


def _actor(value: str) -> sa.ColumnElement[bool]:
    if "@" in value:
        person = (sa.select(_by_email.c.id)
                  .where(sa.func.lower(_by_email.c.email) == value.lower())
                  .scalar_subquery())
        return audit_log.c.acting_user_id == person
    named: sa.ColumnElement[bool] = audit_log.c.actor_id == audit.escape(value)
    try:
        return sa.or_(named, audit_log.c.acting_user_id == uuid.UUID(value))
    except ValueError:
        return named


def _statement(tenant_id: uuid.UUID, filters: AuditFilters, after: Position | None,
               limit: int) -> sa.Select[Any]:
    conditions: list[sa.ColumnElement[bool]] = [audit_log.c.tenant_id == tenant_id]
    if filters.since is not None:
        conditions.append(audit_log.c.occurred_at >= filters.since)
    if filters.until is not None:
        conditions.append(audit_log.c.occurred_at < filters.until)
    if filters.actor is not None:
        conditions.append(_actor(filters.actor))
    if filters.path is not None:
        conditions.append(audit_log.c.auth_path == filters.path)
    if filters.action is not None:
        if filters.action.endswith("*"):
            conditions.append(audit_log.c.action.startswith(
                audit.escape(filters.action[:-1]), autoescape=True))
        else:
            conditions.append(audit_log.c.action == audit.escape(filters.action))
    if filters.tier is not None:
        conditions.append(audit_log.c.risk_tier == filters.tier)
    if filters.decision is not None:
        conditions.append(audit_log.c.decision == filters.decision)
    if filters.outcome is not None:
        conditions.append(audit_log.c.outcome == filters.outcome)
    if after is not None:
        conditions.append(sa.tuple_(audit_log.c.occurred_at, audit_log.c.id)
                          < sa.tuple_(sa.literal(after.occurred_at), sa.literal(after.id)))
    return (sa.select(*_COLUMNS)
            .select_from(audit_log.outerjoin(users, users.c.id == audit_log.c.acting_user_id))
            .where(*conditions)
            .order_by(audit_log.c.occurred_at.desc(), audit_log.c.id.desc())
            .limit(limit))


async def read_batch(tx: Transaction, tenant_id: uuid.UUID, filters: AuditFilters,
                     after: Position | None, limit: int = EXPORT_BATCH) -> list[Row]:
    """Up to ``limit`` entries of the tenant that the filters select, newest first, strictly
    below ``after`` when it is given."""
    return (await tx.execute(_statement(tenant_id, filters, after, limit))).all()


@dataclass(frozen=True)
class AuditPage:
    entries: list[Row]
    #: Where the next page starts; None on the last page.
    next_cursor: str | None


async def read_page(tx: Transaction, tenant_id: uuid.UUID, request: PageRequest,
                    key: bytes) -> AuditPage:
    """One page of the tenant's entries, in ``tx`` (the request's tenant transaction, which
    the caller finishes with the read's audit entry). A bad cursor raises
    :class:`AuditQueryError` before anything is read."""
    filters = request.only_filters()
    after = (decode_cursor(key, tenant_id, filters, request.cursor)
             if request.cursor is not None else None)
    rows = await read_batch(tx, tenant_id, filters, after, request.limit + 1)
    if len(rows) <= request.limit:
        return AuditPage(rows, None)
    kept = rows[:request.limit]
    return AuditPage(kept, encode_cursor(key, tenant_id, filters, Position.of(kept[-1])))


# -- output --------------------------------------------------------------------------------

def _restored(value: str | None) -> str | None:
    return None if value is None else audit.unescape(value)


def entry_json(row: Row) -> dict[str, Any]:
    """An entry as JSON values, every text as it was sent (only redaction and the size caps
    lose anything)."""
    return {
        "id": row.id,
        "occurred_at": row.occurred_at.astimezone(dt.UTC).isoformat(),
        "request_id": _restored(row.request_id),
        "tenant_id": str(row.tenant_id),
        "actor_type": row.actor_type,
        "actor_id": _restored(row.actor_id),
        "acting_user_id": None if row.acting_user_id is None else str(row.acting_user_id),
        "acting_user_email": row.acting_user_email,
        "auth_path": row.auth_path,
        "credential_id": _restored(row.credential_id),
        "client_id": _restored(row.client_id),
        "action": audit.unescape(row.action),
        "parameters": audit.restore(row.parameters),
        "risk_tier": row.risk_tier,
        "scopes": [audit.unescape(s) for s in row.scopes],
        "decision": row.decision,
        "deny_reason": _restored(row.deny_reason),
        "outcome": row.outcome,
        "error": _restored(row.error),
        "client_ip": row.client_ip,
        "user_agent": _restored(row.user_agent),
        "duration_ms": row.duration_ms,
    }


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(value: Any) -> str:
    """``value`` as JSON, UTF-8 safe: a lone surrogate (which a caller may have sent, and
    UTF-8 cannot carry) is written as its ``\\uXXXX`` escape, which JSON parsers read back."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


#: The CSV export's columns, in order (the header row).
CSV_COLUMNS = ("id", "occurred_at", "request_id", "tenant_id", "actor_type", "actor_id",
               "acting_user_id", "acting_user_email", "auth_path", "credential_id",
               "client_id", "action", "parameters", "risk_tier", "scopes", "decision",
               "deny_reason", "outcome", "error", "client_ip", "user_agent", "duration_ms")

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> str | int | float:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = str(value)
        return "'" + text if text.startswith(_FORMULA_START) else text
    return value


def csv_cells(row: Row) -> list[str | int | float]:
    """An entry as CSV cells: texts in their stored escaped form (printable; the parameters
    as JSON of the stored form, ``audit.restore(json.loads(cell))`` gives them as sent), a
    formula-looking cell prefixed with an apostrophe."""
    values: dict[str, Any] = {
        **row._asdict(),
        "occurred_at": row.occurred_at.astimezone(dt.UTC).isoformat(),
        "parameters": json.dumps(row.parameters, ensure_ascii=False, separators=(",", ":")),
        "scopes": " ".join(row.scopes),
    }
    return [_cell(values[name]) for name in CSV_COLUMNS]


def _csv(rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def _render(rows: list[Row], fmt: Format) -> bytes:
    if fmt == "csv":
        return _csv([csv_cells(row) for row in rows])
    return "".join(json_text(entry_json(row)) + "\n" for row in rows).encode()


async def export_chunks(db: Database, tenant_id: uuid.UUID, filters: AuditFilters,
                        fmt: Format, first: list[Row]) -> AsyncIterator[bytes]:
    """The export's body, a batch at a time: ``first`` (read in the request's transaction,
    ``EXPORT_BATCH`` at most), then each further batch read in a tenant transaction of its
    own that is over before the batch is yielded: no database connection waits on the
    client. The walk goes down the keyset: entries written during the export sort above
    its start and are not in it."""
    filters = filters.only_filters()
    if fmt == "csv":
        yield _csv([list(CSV_COLUMNS)])
    batch = first
    while batch:
        yield _render(batch, fmt)
        if len(batch) < EXPORT_BATCH:
            return
        after = Position.of(batch[-1])
        async with db.tenant(tenant_id) as tx:
            batch = await read_batch(tx, tenant_id, filters, after)
            await tx.rollback()  # it only read
