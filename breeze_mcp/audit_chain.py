"""Tamper evidence for the audit log: one hash chain per tenant, sealed shortly after commit.

Entries are written exactly as before, in the call's own transaction; nothing is added to a
call's path. A :class:`Sealer`, running beside the server (:func:`sealing`), then chains the
committed entries: for each tenant, under that tenant's advisory lock (only sealers ever wait
for it, never a tool call), it appends one ``audit_chain`` row per entry not sealed yet, in id
order::

    digest_n = SHA-256(digest_n-1 || SHA-256(canonical(entry_n)))      digest_0 = 32 zero bytes

The chain's order is ``seq``, not the entry id: an entry that commits after a later one was
sealed is simply chained after it, so concurrent writers need no common queue.
:func:`verify` recomputes a tenant's chain and names the first link that does not hold.

:data:`CANONICAL` is the one definition of an entry's canonical form, used by both. It is
computed by PostgreSQL, next to the row, so only 32 bytes per entry leave the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa

from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row
from breeze_mcp.db.statements import prepared

__all__ = [
    "CANONICAL",
    "CANONICAL_COLUMNS",
    "GENESIS",
    "Break",
    "BreakReason",
    "ChainReport",
    "Link",
    "Sealer",
    "first_break",
    "link_digest",
    "sealing",
    "verify",
]

log = logging.getLogger(__name__)

#: The digest before a tenant's first link.
GENESIS = bytes(32)

# Every audit_log column as text that does not depend on session settings: times in UTC with
# microseconds (timestamptz's precision), the duration as the hex of its eight IEEE 754 bytes
# (float text depends on extra_float_digits), the address with its mask; uuids, numbers, jsonb
# and arrays print one way. Changing any of this breaks every chain sealed before.
_CANONICAL_FIELDS = (
    ("id", "a.id::text"),
    ("occurred_at",
     "to_char(a.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"),
    ("request_id", "a.request_id"),
    ("tenant_id", "a.tenant_id::text"),
    ("actor_type", "a.actor_type"),
    ("actor_id", "a.actor_id"),
    ("acting_user_id", "a.acting_user_id::text"),
    ("auth_path", "a.auth_path"),
    ("credential_id", "a.credential_id"),
    ("client_id", "a.client_id"),
    ("action", "a.action"),
    ("parameters", "a.parameters::text"),
    ("risk_tier", "a.risk_tier::text"),
    ("scopes", "a.scopes::text"),
    ("decision", "a.decision"),
    ("deny_reason", "a.deny_reason"),
    ("outcome", "a.outcome"),
    ("error", "a.error"),
    ("client_ip", "text(a.client_ip)"),
    ("user_agent", "a.user_agent"),
    ("duration_ms", "encode(float8send(a.duration_ms), 'hex')"),
)

#: The columns the canonical form covers, in its order (all of ``audit_log``'s; a test holds
#: it to that).
CANONICAL_COLUMNS = tuple(name for name, _ in _CANONICAL_FIELDS)

#: An entry's canonical form, over the ``audit_log`` row ``a``: each column of
#: :data:`CANONICAL_COLUMNS` as a SQL literal (``quote_nullable``: ``NULL``, or the text quoted,
#: quotes and backslashes doubled), joined by commas, UTF-8 encoded: unambiguous, and cheaper
#: for the database than a json object (docs/benchmarks.md, "Issue 12").
CANONICAL = (
    "convert_to(concat_ws(',', "
    + ", ".join(f"quote_nullable({expression})" for _, expression in _CANONICAL_FIELDS)
    + "), 'UTF8')"
)
_ENTRY_DIGEST = f"sha256({CANONICAL})"


def link_digest(previous: bytes, entry_digest: bytes) -> bytes:
    """The digest of a link: its predecessor's digest followed by its entry's SHA-256."""
    return hashlib.sha256(previous + entry_digest).digest()


# -- sealing ------------------------------------------------------------------------------------

# The sequence's last id (every id up to it has been handed out) and the snapshot's horizon:
# xmin, the oldest transaction still running; xmax, the next one to start.
_STATE = prepared(
    "SELECT pg_sequence_last_value(pg_get_serial_sequence('audit_log', 'id')::regclass) AS last,"
    " pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,"
    " pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax"
)
_TENANTS = prepared("SELECT id FROM tenants ORDER BY id")
# Held to the end of the sealing transaction; the two-key form keeps clear of the single-key
# locks taken elsewhere. The first key spells "bzac".
_LOCK = prepared("SELECT pg_advisory_xact_lock(1652187491, hashtext($1::text)) AS locked")
# The batch is chosen by id alone (however the rows are found, only ids are sorted); then
# only its entries are read whole and digested. Not a prepared statement: its best plan
# depends on the floor and the batch, and a generic plan read the whole log at every pass.
_UNSEALED = sa.text(
    f"SELECT a.id, {_ENTRY_DIGEST} AS entry_digest FROM ("  # noqa: S608
    "SELECT u.id FROM audit_log u WHERE u.tenant_id = :tenant AND u.id >= :start"
    " AND NOT EXISTS (SELECT FROM audit_chain c WHERE c.entry_id = u.id)"
    " ORDER BY u.id LIMIT :batch) AS batch JOIN audit_log a ON a.id = batch.id ORDER BY a.id"
)
_HEAD = prepared(
    "SELECT seq, digest FROM audit_chain WHERE tenant_id = $1::uuid ORDER BY seq DESC LIMIT 1"
)
# The links after seq $2, their entry ids and hex digests each as one array literal: quoting
# thousands of array elements client-side cost the server more than the rest of a pass
# (docs/benchmarks.md, "Issue 12").
_APPEND = prepared(
    "INSERT INTO audit_chain (tenant_id, seq, entry_id, digest)"
    " SELECT $1::uuid, $2::bigint + link.n, link.entry_id, decode(link.digest, 'hex')"
    " FROM unnest($3::text::bigint[], $4::text::text[]) WITH ORDINALITY"
    " AS link (entry_id, digest, n)"
)


class Sealer:
    """Chains committed audit entries, tenant by tenant; :meth:`seal` is one pass.

    It keeps a *floor*: every entry with a smaller id is sealed, so a pass reads only entries
    at or above it, and its cost follows what was written lately, not the size of the log.
    The floor may rise to the sequence's last id of one pass once every transaction that could
    still commit an entry below it has ended: the horizon (``xmax``) read at the next pass is
    passed by the snapshot ``xmin`` of a later one. A new sealer starts at 0, so its first pass
    reads each tenant's whole log once. Several sealers (instances) may run at once.
    """

    def __init__(self, db: Database, *, batch: int = 2000) -> None:
        self._db = db
        self._batch = batch
        self._floor = 0
        self._candidate: int | None = None  # ids up to this one had been handed out
        self._horizon: int | None = None  # every transaction that held one started below it

    async def seal(self) -> int:
        """One pass over every tenant: seal what has committed. Returns how many entries."""
        state = (await self._db.read(_STATE, ()))[0]
        if state.last is None or state.last < self._floor:
            return 0  # no id handed out since the floor: nothing can be unsealed
        settled = None
        if self._candidate is None:
            self._candidate = state.last
        elif self._horizon is None:
            self._horizon = state.xmax
        elif state.xmin >= self._horizon:
            settled = self._candidate  # each entry up to it is visible to this pass
        sealed = 0
        for row in await self._db.read(_TENANTS, ()):  # read after _STATE: none is missed
            sealed += await self._seal_tenant(row.id)
        if settled is not None:
            self._floor = settled + 1
            self._candidate, self._horizon = state.last, None
        return sealed

    async def _seal_tenant(self, tenant_id: uuid.UUID) -> int:
        sealed, start = 0, self._floor
        while True:
            lock = (_LOCK, (str(tenant_id),))
            async with self._db.tenant(tenant_id, first=lock) as tx:
                # Read after the lock is held: the chain as the last sealer left it.
                rows = (await tx.execute(_UNSEALED.bindparams(
                    tenant=tenant_id, start=start, batch=self._batch))).all()
                if not rows:
                    return sealed
                head = (await tx.execute(_HEAD, (tenant_id,))).first()
                seq, digest = (head.seq, head.digest) if head is not None else (0, GENESIS)
                digests = []
                for row in rows:
                    digest = link_digest(digest, row.entry_digest)
                    digests.append(digest)
                ids = "{" + ",".join(str(row.id) for row in rows) + "}"
                append = (tenant_id, seq, ids, "{" + ",".join(d.hex() for d in digests) + "}")
                await tx.finish(None, then=((_APPEND, append),))
            sealed += len(rows)
            if len(rows) < self._batch:
                return sealed
            start = rows[-1].id + 1

    async def run(self, interval: float) -> None:
        """Seal every ``interval`` seconds until cancelled; a failed pass is logged (once
        while it keeps failing) and tried again at the next."""
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await self.seal()
            except Exception:
                if not failing:
                    log.warning("sealing the audit chain failed; retrying every %g s",
                                interval, exc_info=True)
                failing = True
            else:
                if failing:
                    log.info("sealing the audit chain works again")
                failing = False


@contextlib.asynccontextmanager
async def sealing(db: Database, interval: float) -> AsyncIterator[Sealer]:
    """A :class:`Sealer` running in the background for as long as the context lasts (the
    server's lifespan owns it)."""
    sealer = Sealer(db)
    task = asyncio.create_task(sealer.run(interval), name="breeze-audit-sealer")
    try:
        yield sealer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- verifying ----------------------------------------------------------------------------------

_LINKS = sa.text(
    "SELECT c.seq, c.entry_id, c.digest,"  # noqa: S608
    f" CASE WHEN a.id IS NOT NULL THEN {_ENTRY_DIGEST} END AS entry_digest"
    " FROM audit_chain c LEFT JOIN audit_log a ON a.id = c.entry_id AND a.tenant_id = c.tenant_id"
    " WHERE c.tenant_id = :tenant AND c.seq > :after ORDER BY c.seq LIMIT :batch"
)
_UNSEALED_COUNT = sa.text(
    "SELECT count(*) AS entries FROM audit_log a WHERE a.tenant_id = :tenant"
    " AND NOT EXISTS (SELECT FROM audit_chain c WHERE c.entry_id = a.id)"
)

BreakReason = Literal[
    "entry_changed", "digest_changed", "entry_or_digest_changed", "entry_missing", "seq_gap"]


@dataclass(frozen=True)
class Link:
    """One stored link, with the digest of its entry as it reads now (None: no such entry)."""

    seq: int
    entry_id: int
    digest: bytes
    entry_digest: bytes | None


@dataclass(frozen=True)
class Break:
    """The first link that does not hold."""

    seq: int
    entry_id: int
    reason: BreakReason
    detail: str


@dataclass(frozen=True)
class ChainReport:
    tenant_id: uuid.UUID
    checked: int  # links that hold, from seq 1
    head: Link | None  # the last of them
    unsealed: int  # the tenant's entries no link names (yet)
    broken: Break | None


class _Walk:
    """The state of a walk along one chain, fed link by link in ``seq`` order."""

    def __init__(self) -> None:
        self.checked = 0  # links that hold, from seq 1
        self.head: Link | None = None  # the last of them
        self._suspect: Link | None = None  # a link that did not follow; its successor decides

    def feed(self, link: Link) -> Break | None:
        """The break ``link`` reveals, if any (the walk ends at the first)."""
        if self._suspect is not None:
            suspect = self._suspect
            if link.seq != suspect.seq + 1 or link.entry_digest is None:
                reason: BreakReason = "entry_or_digest_changed"
            elif link_digest(suspect.digest, link.entry_digest) == link.digest:
                reason = "entry_changed"  # its successor was built on the digest as sealed
            else:
                reason = "digest_changed"
            return _mismatch(suspect, reason)
        expected = self.head.seq + 1 if self.head is not None else 1
        if link.seq != expected:
            gap = f"seq {expected}" if link.seq == expected + 1 else \
                f"seq {expected} to seq {link.seq - 1}"
            return Break(expected, link.entry_id, "seq_gap",
                         f"{gap} missing: links were deleted (the next, seq {link.seq}, "
                         f"seals entry {link.entry_id})")
        if link.entry_digest is None:
            return Break(link.seq, link.entry_id, "entry_missing",
                         f"entry {link.entry_id}, sealed at seq {link.seq}, is gone: "
                         "it was deleted")
        previous = self.head.digest if self.head is not None else GENESIS
        if link_digest(previous, link.entry_digest) != link.digest:
            self._suspect = link
            return None
        self.checked += 1
        self.head = link
        return None

    def end(self) -> Break | None:
        """The break left when the links run out: a last link that did not follow."""
        if self._suspect is None:
            return None
        return _mismatch(self._suspect, "entry_or_digest_changed")


def _mismatch(link: Link, reason: BreakReason) -> Break:
    detail = {
        "entry_changed": f"entry {link.entry_id} was changed after it was sealed at seq "
                         f"{link.seq}",
        "digest_changed": f"the digest at seq {link.seq} (entry {link.entry_id}) was changed",
        "entry_or_digest_changed": f"entry {link.entry_id} or the digest at seq {link.seq} was "
                                   "changed after sealing",
    }[reason]
    return Break(link.seq, link.entry_id, reason, detail)


def first_break(links: Iterable[Link]) -> tuple[int, Link | None, Break | None]:
    """Walk ``links`` in ``seq`` order: how many hold from seq 1, the last that does, and the
    first that does not, if any.

    A link whose digest does not follow from its predecessor and its entry means an entry
    changed after sealing or a changed digest; its successor tells which, since it was built
    on the digest as sealed."""
    walk = _Walk()
    for link in links:
        if (broken := walk.feed(link)) is not None:
            return walk.checked, walk.head, broken
    return walk.checked, walk.head, walk.end()


async def verify(db: Database, tenant_id: uuid.UUID, *, batch: int = 5000) -> ChainReport:
    """Recompute ``tenant_id``'s chain from its stored entries (sealing nothing), reading
    ``batch`` links at a time."""
    walk, broken, after = _Walk(), None, 0
    async with db.tenant(tenant_id) as tx:
        while broken is None:
            rows = (await tx.execute(_LINKS.bindparams(
                tenant=tenant_id, after=after, batch=batch))).all()
            for row in rows:
                if (broken := walk.feed(_link(row))) is not None:
                    break
            if len(rows) < batch:
                broken = broken or walk.end()
                break
            after = rows[-1].seq
        unsealed = (await tx.execute(_UNSEALED_COUNT.bindparams(tenant=tenant_id))).scalar_one()
    return ChainReport(tenant_id, walk.checked, walk.head, int(unsealed), broken)


def _link(row: Row) -> Link:
    return Link(row.seq, row.entry_id, bytes(row.digest),
                None if row.entry_digest is None else bytes(row.entry_digest))
