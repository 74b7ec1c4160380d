"""The audit log's hash chains: every committed entry sealed once, in its tenant's chain, with
concurrent writers and sealers; and ``verify`` naming the first link an owner broke.

Against the real database: entries are committed the way the pipeline commits them
(``Transaction.finish``), and tampering is done the way an attacker with the database owner's
(or a superuser's) rights would do it, triggers and row-level security switched off.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any, Literal

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from breeze_mcp import audit
from breeze_mcp.app import create_app
from breeze_mcp.audit_chain import (
    CANONICAL,
    CANONICAL_COLUMNS,
    GENESIS,
    Break,
    Link,
    Sealer,
    first_break,
    link_digest,
    verify,
)
from breeze_mcp.auth.accounts import Tenant, create_tenant
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from tests.support import LiveServer, ProvisionedDatabase, run_cli

pytestmark = pytest.mark.anyio


def entry(tenant: Tenant, action: str = "test.chain", **fields: Any) -> audit.AuditEntry:
    return audit.AuditEntry(actor_type="system", auth_path="system", action=action,
                            decision="allowed", outcome="success", tenant_id=tenant.id,
                            **fields)


async def fresh_tenant(db: Database, label: str = "chain") -> Tenant:
    return await create_tenant(db, f"Chain {label}", slug=f"{label}-{uuid.uuid4().hex[:8]}")


async def commit(db: Database, tenant: Tenant, count: int = 1) -> None:
    for _ in range(count):
        async with db.tenant(tenant.id) as tx:
            await tx.finish(entry(tenant))


def tamper(test_db: ProvisionedDatabase, sql: str, *, who: Literal["owner", "superuser"],
           **params: Any) -> int:
    """Change the audit tables behind the service's back; returns the rows touched.

    The owner switches its append-only triggers off and stops forcing row-level security on
    itself; a superuser skips both (RLS does not apply to it; ``replica`` turns triggers off)."""
    url: str | sa.URL
    if who == "owner":
        url = sqlalchemy_url(test_db.owner_url)
        before = [f"ALTER TABLE {t} DISABLE TRIGGER USER" for t in ("audit_log", "audit_chain")]
        before += [f"ALTER TABLE {t} NO FORCE ROW LEVEL SECURITY"
                   for t in ("audit_log", "audit_chain")]
        after = [s.replace("DISABLE", "ENABLE").replace("NO FORCE", "FORCE") for s in before]
    else:
        url = make_url(sqlalchemy_url(test_db.admin_url)).set(database=test_db.name)
        before, after = ["SET LOCAL session_replication_role = replica"], []
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in before:
                conn.execute(sa.text(statement))
            touched = conn.execute(sa.text(sql), params).rowcount
            for statement in after:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()
    return touched


async def chain_of(db: Database, tenant: Tenant) -> list[Any]:
    async with db.tenant(tenant.id) as tx:
        return (await tx.execute(sa.text(
            "SELECT seq, entry_id FROM audit_chain ORDER BY seq"))).all()


async def entry_ids(db: Database, tenant: Tenant) -> list[int]:
    async with db.tenant(tenant.id) as tx:
        return list((await tx.execute(sa.text("SELECT id FROM audit_log ORDER BY id"))).scalars())


# -- the canonical form ------------------------------------------------------------------------


@pytest.mark.req("AUDIT-CHAIN")
def test_the_canonical_form_covers_every_column(owner_engine: sa.Engine) -> None:
    with owner_engine.connect() as conn:
        columns = [c["name"] for c in sa.inspect(conn).get_columns("audit_log")]
    assert sorted(CANONICAL_COLUMNS) == sorted(columns)


@pytest.mark.req("AUDIT-CHAIN")
async def test_the_canonical_form_does_not_depend_on_session_settings(
    db: Database, owner_engine: sa.Engine
) -> None:
    tenant = await fresh_tenant(db)
    async with db.tenant(tenant.id) as tx:
        await tx.finish(entry(tenant, parameters={"n": 1.5, "s": "é\u0000"}, duration_ms=0.1,
                              client_ip="2001:db8::1", scopes=["ai:read"]))
    sessions = [
        "SET TimeZone = 'UTC'",
        "SET TimeZone = 'Pacific/Chatham'; SET DateStyle = 'German, DMY'",
        "SET extra_float_digits = -15; SET lc_numeric = 'C'",
    ]
    seen = set()
    for settings in sessions:
        with owner_engine.connect() as conn:
            for statement in settings.split("; "):
                conn.execute(sa.text(statement))
            conn.execute(sa.text("SELECT set_config('breeze.tenant_id', :t, false)"),
                         {"t": str(tenant.id)})
            seen.add(conn.execute(sa.text(
                f"SELECT {CANONICAL} FROM audit_log a WHERE action = 'test.chain'")).scalar_one())
            conn.rollback()
    assert len(seen) == 1
    form = bytes(seen.pop()).decode()
    fields = re.findall(r"(NULL|E?'(?:[^']|'')*')(?:,|$)", form)
    assert ",".join(fields) == form and len(fields) == len(CANONICAL_COLUMNS)
    named = dict(zip(CANONICAL_COLUMNS, fields, strict=True))
    assert named["duration_ms"] == "'3fb999999999999a'"  # 0.1, bit for bit
    assert re.fullmatch(r"'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z'", named["occurred_at"])
    # Stored escaped (\u0000), printed by jsonb with its backslash escaped, then doubled.
    assert named["parameters"] == r"""E'{"n": 1.5, "s": "é\\\\u0000"}'"""
    assert (named["client_ip"], named["error"]) == ("'2001:db8::1/128'", "NULL")


# -- sealing -----------------------------------------------------------------------------------


@pytest.mark.req("AUDIT-CHAIN")
async def test_concurrent_writers_and_sealers_seal_every_entry_once(
    db: Database, test_db: ProvisionedDatabase
) -> None:
    """Writers to one tenant commit at once while two sealers (two instances, each with its
    own pool) chain them: afterwards each committed entry has exactly one link, and the chain
    verifies."""
    tenant = await fresh_tenant(db)
    writers = Database(test_db.runtime_url, pool_size=8)
    other = Database(test_db.runtime_url, pool_size=2)
    sealers = [Sealer(db, batch=7), Sealer(other, batch=50)]
    running = [asyncio.create_task(s.run(0.001)) for s in sealers]
    try:
        await asyncio.gather(*(commit(writers, tenant, 3) for _ in range(40)))
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await writers.dispose()
    for sealer in sealers:  # what was still unsealed when they stopped
        await sealer.seal()
    await other.dispose()
    links = await chain_of(db, tenant)
    ids = await entry_ids(db, tenant)
    assert len(ids) == 121  # the tenant's creation and 120 calls
    assert sorted(link.entry_id for link in links) == ids  # each once
    assert [link.seq for link in links] == list(range(1, 122))
    report = await verify(db, tenant.id)
    assert (report.checked, report.unsealed, report.broken) == (121, 0, None)


@pytest.mark.req("AUDIT-CHAIN")
async def test_an_entry_that_commits_late_is_chained_after_later_ones(db: Database) -> None:
    """An entry given a lower id commits after a higher one was sealed: it is sealed at the
    next seq, and passes made while its transaction was open never skip it."""
    tenant = await fresh_tenant(db)
    sealer = Sealer(db)
    await sealer.seal()
    async with db.tenant(tenant.id) as late:
        await audit.write(late, entry(tenant, "test.late"))
        await commit(db, tenant)
        for _ in range(4):  # long enough for the sealer to move its floor, were it careless
            await sealer.seal()
        sealed_before = await chain_of(db, tenant)
        await late.finish(None)
    await sealer.seal()
    ids = await entry_ids(db, tenant)
    late_id, early_id = ids[-2], ids[-1]
    assert [link.entry_id for link in sealed_before][-1] == early_id
    assert late_id not in {link.entry_id for link in sealed_before}
    links = await chain_of(db, tenant)
    assert [link.entry_id for link in links][-2:] == [early_id, late_id]
    assert (await verify(db, tenant.id)).broken is None


@pytest.mark.req("AUDIT-CHAIN")
async def test_the_server_seals_in_the_background(
    settings: Settings, test_db: ProvisionedDatabase, db: Database
) -> None:
    tenant = await fresh_tenant(db)
    fast = settings.model_copy(update={"audit_seal_interval": 0.05})
    with LiveServer(create_app(fast, test_db.runtime_url)):
        await commit(db, tenant, 5)
        for _ in range(600):  # the sealer's next passes; bounded so a failure cannot hang
            report = await verify(db, tenant.id)
            if report.checked == 6:
                break
            await asyncio.sleep(0.05)
    assert (report.checked, report.unsealed, report.broken) == (6, 0, None)


@pytest.mark.req("AUDIT-CHAIN", "RLS-CROSS-WRITE")
async def test_a_tenant_sees_and_writes_only_its_own_chain(db: Database) -> None:
    mine, theirs = await fresh_tenant(db, "mine"), await fresh_tenant(db, "theirs")
    await Sealer(db).seal()
    async with db.tenant(mine.id) as tx:
        seen = set((await tx.execute(sa.text("SELECT tenant_id FROM audit_chain"))).scalars())
    assert seen == {mine.id}
    with pytest.raises(Exception, match="row-level security"):
        async with db.tenant(mine.id) as tx:
            await tx.execute(sa.text(
                "INSERT INTO audit_chain (tenant_id, seq, entry_id, digest)"
                " VALUES (:t, 99, 0, sha256(''))").bindparams(t=theirs.id))


# -- verifying ---------------------------------------------------------------------------------


def _links(count: int) -> list[Link]:
    links, digest = [], GENESIS
    for seq in range(1, count + 1):
        entry_digest = hashlib.sha256(f"entry {seq}".encode()).digest()
        digest = link_digest(digest, entry_digest)
        links.append(Link(seq, 100 + seq, digest, entry_digest))
    return links


_OTHER = hashlib.sha256(b"something else").digest()


@pytest.mark.req("AUDIT-CHAIN-VERIFY")
@pytest.mark.parametrize(("change", "expected"), [
    ("nothing", None),
    ("entry 3", Break(3, 103, "entry_changed", "")),
    ("digest 3", Break(3, 103, "digest_changed", "")),
    ("delete entry 3", Break(3, 103, "entry_missing", "")),
    ("delete link 3", Break(3, 104, "seq_gap", "")),
    ("delete links 3-4", Break(3, 105, "seq_gap", "")),
    ("delete link 1", Break(1, 102, "seq_gap", "")),
    ("entry 5", Break(5, 105, "entry_or_digest_changed", "")),
    ("digest 5", Break(5, 105, "entry_or_digest_changed", "")),
    ("entry 3, delete link 4", Break(3, 103, "entry_or_digest_changed", "")),
])
def test_first_break_names_the_first_link_that_does_not_hold(
    change: str, expected: Break | None
) -> None:
    links = _links(5)
    k = 2  # seq 3
    if change == "entry 3":
        links[k] = Link(3, 103, links[k].digest, _OTHER)
    elif change == "digest 3":
        links[k] = Link(3, 103, _OTHER, links[k].entry_digest)
    elif change == "delete entry 3":
        links[k] = Link(3, 103, links[k].digest, None)
    elif change == "delete link 3":
        del links[k]
    elif change == "delete links 3-4":
        del links[k:k + 2]
    elif change == "delete link 1":
        del links[0]
    elif change == "entry 5":
        links[4] = Link(5, 105, links[4].digest, _OTHER)
    elif change == "digest 5":
        links[4] = Link(5, 105, _OTHER, links[4].entry_digest)
    elif change == "entry 3, delete link 4":
        links[k] = Link(3, 103, links[k].digest, _OTHER)
        del links[k + 1]
    checked, head, broken = first_break(links)
    if expected is None:
        assert (checked, head, broken) == (5, links[-1], None)
        return
    assert broken is not None
    assert (broken.seq, broken.entry_id, broken.reason) == \
        (expected.seq, expected.entry_id, expected.reason)
    assert str(expected.entry_id) in broken.detail and f"seq {expected.seq}" in broken.detail
    assert checked == expected.seq - 1
    assert head == (links[checked - 1] if checked else None)


async def sealed_tenant(db: Database, calls: int = 5) -> tuple[Tenant, list[Any]]:
    """A tenant whose creation and ``calls`` calls are sealed: (tenant, its links)."""
    tenant = await fresh_tenant(db)
    await commit(db, tenant, calls)
    await Sealer(db).seal()
    links = await chain_of(db, tenant)
    assert len(links) == calls + 1
    return tenant, links


@pytest.mark.req("AUDIT-CHAIN-VERIFY")
async def test_verify_names_an_entry_the_owner_changed(
    db: Database, test_db: ProvisionedDatabase
) -> None:
    tenant, links = await sealed_tenant(db)
    changed = links[2].entry_id  # seq 3
    assert tamper(test_db, "UPDATE audit_log SET outcome = 'error' WHERE id = :id",
                  who="owner", id=changed) == 1
    report = await verify(db, tenant.id)
    assert report.broken is not None
    assert (report.broken.seq, report.broken.entry_id, report.broken.reason) == \
        (3, changed, "entry_changed")
    assert (report.checked, report.head and report.head.seq) == (2, 2)


@pytest.mark.req("AUDIT-CHAIN-VERIFY")
async def test_verify_names_an_entry_a_superuser_deleted(
    db: Database, test_db: ProvisionedDatabase
) -> None:
    tenant, links = await sealed_tenant(db)
    deleted = links[3].entry_id  # seq 4
    assert tamper(test_db, "DELETE FROM audit_log WHERE id = :id", who="superuser",
                  id=deleted) == 1
    report = await verify(db, tenant.id)
    assert report.broken is not None
    assert (report.broken.seq, report.broken.entry_id, report.broken.reason) == \
        (4, deleted, "entry_missing")


@pytest.mark.req("AUDIT-CHAIN-VERIFY")
async def test_verify_names_a_changed_digest_and_missing_links(
    db: Database, test_db: ProvisionedDatabase
) -> None:
    tenant, links = await sealed_tenant(db)
    assert tamper(test_db, "UPDATE audit_chain SET digest = sha256('forged')"
                  " WHERE tenant_id = :t AND seq = 2", who="owner", t=tenant.id) == 1
    report = await verify(db, tenant.id)
    assert report.broken is not None
    assert (report.broken.seq, report.broken.entry_id, report.broken.reason) == \
        (2, links[1].entry_id, "digest_changed")

    tenant, links = await sealed_tenant(db)
    assert tamper(test_db, "DELETE FROM audit_chain WHERE tenant_id = :t AND seq = 5",
                  who="owner", t=tenant.id) == 1
    report = await verify(db, tenant.id)
    assert report.broken is not None
    assert (report.broken.seq, report.broken.entry_id, report.broken.reason) == \
        (5, links[5].entry_id, "seq_gap")
    assert report.unsealed == 1  # the entry whose link was deleted


@pytest.mark.req("AUDIT-CHAIN-VERIFY", "CLI-COMMANDS")
def test_audit_verify_on_the_command_line(scratch: ProvisionedDatabase, tmp_path: Path) -> None:
    env = scratch.env(tmp_path / "state")
    for args in (("tenant", "create", "Chain One", "--slug", "one"),
                 ("tenant", "create", "Chain Two", "--slug", "two"),
                 ("demo-data", "--tenant", "two")):
        assert run_cli(*args, env=env).returncode == 0
    before = run_cli("audit", "verify", "--json", env=env)
    assert before.returncode == 0, before.stderr
    assert {t["tenant"]: (t["checked"], t["unsealed"]) for t in json.loads(before.stdout)[
        "tenants"]} == {"one": (0, 1), "two": (0, 2)}

    sealed = run_cli("audit", "seal", "--json", env=env)
    assert (sealed.returncode, json.loads(sealed.stdout)) == (0, {"sealed": 3})
    ok = run_cli("audit", "verify", env=env)
    assert ok.returncode == 0, ok.stderr
    assert [line.split()[:4] for line in ok.stdout.splitlines()] == [
        ["one", "ok", "1", "links"], ["two", "ok", "2", "links"]]

    changed = int(json.loads(run_cli("audit", "verify", "--tenant", "two", "--json",
                                     env=env).stdout)["tenants"][0]["head"]["entry_id"])
    assert tamper(scratch, "UPDATE audit_log SET parameters = '{}' WHERE id = :id",
                  who="owner", id=changed) == 1
    broken = run_cli("audit", "verify", env=env)
    assert broken.returncode == 1
    assert f"the audit chain of two is broken at seq 2 (entry {changed})" in broken.stderr
    assert "Traceback" not in broken.stderr
    assert [line.split()[:2] for line in broken.stdout.splitlines()] == [
        ["one", "ok"], ["two", "BROKEN"]]
    report = json.loads(run_cli("audit", "verify", "--tenant", "two", "--json",
                                env=env).stdout)
    assert report["ok"] is False
    assert report["tenants"][0]["broken"]["seq"] == 2
    assert report["tenants"][0]["broken"]["entry_id"] == changed
    assert run_cli("audit", "verify", "--tenant", "one", env=env).returncode == 0
