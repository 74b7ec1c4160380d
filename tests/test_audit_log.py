"""The audit log, read (issue 12, item 3's Audit log page and item 4's audit query and export).

Over a real server and a real PostgreSQL: entries are made by real calls (REST with an API
key, the console with a session, a failed sign-in), and read back through ``GET /api/v1/audit``,
``GET /api/v1/audit/export`` and the console's ``/console/audit``. The truth they are
compared with is read as the database superuser, outside row-level security.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import ImmutableMultiDict

from breeze_mcp import audit
from breeze_mcp.audit_query import (
    EXPORT_BATCH,
    AuditFilters,
    AuditQueryError,
    ExportRequest,
    PageRequest,
    export_chunks,
    parse_request,
    read_batch,
)
from breeze_mcp.auth.accounts import Tenant, create_tenant, create_user
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.db import Database
from breeze_mcp.tools.demo import seed_demo_data
from tests.oauth_support import PASSWORD, HumanAgent, OAuthWorld, connect, module_world
from tests.support import ProvisionedDatabase, superuser_sql
from tests.test_console import csrf, signed_in

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
EXPORT = "/api/v1/audit/export"


@dataclass
class Cast:
    """The module's tenant (A) with its people, keys and entries, and a second tenant (B)."""

    world: OAuthWorld
    admin_email: str
    admin_id: uuid.UUID
    reader_key: str  # an admin's key, for reading the log (ai:read)
    tools_key: str  # an owner's key making tool calls (ai:read, ai:write)
    tools_key_id: str
    demoted_key: str  # made by an admin who is now a technician
    other: Tenant
    other_key: str  # tenant B's owner's key
    bound: dt.datetime  # every entry of the set-up was written before this
    hostile_text: str  # a search sent with a NUL, a bidi override and a lone surrogate

    @property
    def url(self) -> str:
        return self.world.url


def _run_db(world: OAuthWorld, work: Callable[[Database], Any]) -> Any:
    async def go() -> Any:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(go())


def _bearer(key: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **headers}


def _tool(cast: Cast, name: str, arguments: dict[str, Any], key: str | None = None,
          **headers: str) -> httpx.Response:
    return httpx.post(f"{cast.url}/api/v1/tools/{name}", timeout=30,
                      content=json.dumps(arguments).encode(),
                      headers=_bearer(key or cast.tools_key, **{
                          "Content-Type": "application/json", **headers}))


def _now(world: OAuthWorld) -> dt.datetime:
    value: dt.datetime = superuser_sql(world.test_db, "SELECT clock_timestamp()")[0][0]
    return value


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


@pytest.fixture(scope="module")
def cast(world: OAuthWorld) -> Cast:
    tag = uuid.uuid4().hex[:6]
    admin_email = f"admin-{tag}@example.com"
    demoted_email = f"demoted-{tag}@example.com"

    async def people(db: Database) -> tuple[Any, ...]:
        admin = await create_user(db, world.tenant, email=admin_email, password=PASSWORD,
                                  role="admin")
        await create_user(db, world.tenant, email=demoted_email, password=PASSWORD,
                          role="admin")
        _, reader = await create_api_key(db, world.tenant, name="audit reader",
                                         scopes="ai:read", creator_email=admin_email,
                                         rate_limit="1000/minute")
        tools_info, tools = await create_api_key(db, world.tenant, name="tools",
                                                 scopes="ai:read,ai:write",
                                                 rate_limit="1000/minute")
        _, demoted = await create_api_key(db, world.tenant, name="demoted", scopes="ai:read",
                                          creator_email=demoted_email)
        other = await create_tenant(db, f"Other {tag}", slug=f"other-{tag}")
        await seed_demo_data(db, other.id)
        await create_user(db, other, email=f"other-{tag}@example.com", password=PASSWORD,
                          role="owner")
        _, other_key = await create_api_key(db, other, name="other", scopes="ai:read",
                                            rate_limit="1000/minute")
        return admin.id, reader, tools, str(tools_info.id), demoted, other, other_key

    admin_id, reader, tools, tools_id, demoted, other, other_key = _run_db(world, people)
    superuser_sql(world.test_db, "UPDATE memberships SET role = 'technician' WHERE user_id ="
                  " (SELECT id FROM users WHERE email = :e)", e=demoted_email)
    hostile = "nul\x00 rtl\u202e surrogate\ud800"
    cast = Cast(world, admin_email, admin_id, reader, tools, tools_id, demoted, other,
                other_key, dt.datetime.now(dt.UTC), hostile)

    device = str(world.owner_sql("SELECT id FROM devices ORDER BY hostname LIMIT 1")[0][0])
    alerts = [str(r[0]) for r in world.owner_sql(
        "SELECT id FROM alerts WHERE status = 'open' ORDER BY created_at LIMIT 2")]
    # Over REST with an API key: Tier 1, 2 (one with a formula-looking parameter), a Tier 3
    # call the key may not make, Tier 4, an unknown tool with formula-looking headers.
    assert _tool(cast, "list_devices", {}).status_code == 200
    assert _tool(cast, "add_note", {"device_id": device,
                                    "body": '=HYPERLINK("http://evil.example")'}
                 ).status_code == 200
    assert _tool(cast, "manage_alert", {"alert_id": alerts[0], "action": "acknowledge"}
                 ).status_code == 200
    assert _tool(cast, "run_script", {"device_id": device, "interpreter": "bash",
                                      "script": "uptime"}).status_code == 403
    assert _tool(cast, "wipe_device", {"device_id": device}).status_code == 403
    assert _tool(cast, "=cmd", {}, **{"X-Request-Id": "=SUM(1,2)",
                                      "User-Agent": "@evil"}).status_code == 404
    assert _tool(cast, "list_devices", {"search": hostile}).status_code in (200, 400)
    # Through the console, signed in as the admin.
    agent = signed_in(world, admin_email)
    try:
        assert agent.http.get("/console/devices").status_code == 200
        r = agent.http.post("/console/tools/manage_alert", data={
            "csrf_token": csrf(agent), "alert_id": alerts[1], "action": "acknowledge"})
        assert r.status_code == 200, r.text
    finally:
        agent.close()
    # Before any tenant is known: a failed sign-in (tenant NULL).
    stranger = HumanAgent(world, f"nobody-{tag}@example.com", "wrong password 123")
    try:
        page = stranger.http.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        stranger.http.post("/login", data={"csrf_token": token.group(1), "next": "/account",
                                           "email": stranger.email,
                                           "password": stranger.password})
    finally:
        stranger.close()
    # And in tenant B.
    assert _tool(cast, "list_devices", {}, key=other_key).status_code == 200
    cast.bound = _now(world)
    return cast


def truth(cast: Cast, tenant_id: uuid.UUID | None = None,
          until: dt.datetime | None = None) -> list[Any]:
    """The tenant's entries as the superuser sees them, newest first."""
    return superuser_sql(
        cast.world.test_db,
        "SELECT a.*, u.email AS acting_user_email FROM audit_log a"
        " LEFT JOIN users u ON u.id = a.acting_user_id WHERE a.tenant_id = :t"
        " AND a.occurred_at < :until ORDER BY a.occurred_at DESC, a.id DESC",
        t=tenant_id or cast.world.tenant.id, until=until or cast.bound)


def entries_since(cast: Cast, since: int, action: str) -> list[Any]:
    return superuser_sql(cast.world.test_db, "SELECT * FROM audit_log WHERE id > :s AND"
                         " action = :a ORDER BY id", s=since, a=action)


def last_id(cast: Cast) -> int:
    return int(superuser_sql(cast.world.test_db,
                             "SELECT coalesce(max(id), 0) FROM audit_log")[0][0])


def query(cast: Cast, key: str | None = None, endpoint: str = "/api/v1/audit",
          **params: Any) -> httpx.Response:
    return httpx.get(f"{cast.url}{endpoint}", params=params, timeout=60,
                     headers=_bearer(key or cast.reader_key))


def walk(cast: Cast, key: str | None = None, between: Callable[[], None] | None = None,
         **params: Any) -> list[dict[str, Any]]:
    """Every page of a query, following next_cursor; ``between`` runs after each page."""
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = query(cast, key, **params, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"entries", "next_cursor"}
        seen.extend(body["entries"])
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
        if between is not None:
            between()


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat()


# -- filters -------------------------------------------------------------------------------

#: (name, the query's filters, which entries they select), given the cast.
Case = Callable[[Cast, list[Any]], tuple[dict[str, Any], Callable[[Any], bool]]]
FILTERS: list[tuple[str, Case]] = [
    ("path api_key", lambda c, rows: ({"path": "api_key"}, lambda r: r.auth_path == "api_key")),
    ("path session", lambda c, rows: ({"path": "session"}, lambda r: r.auth_path == "session")),
    ("actor email", lambda c, rows: ({"actor": c.admin_email.upper()},
                                     lambda r: r.acting_user_id == c.admin_id)),
    ("actor key id", lambda c, rows: ({"actor": c.tools_key_id},
                                      lambda r: r.actor_id == c.tools_key_id)),
    ("actor user id", lambda c, rows: ({"actor": str(c.admin_id)},
                                       lambda r: r.acting_user_id == c.admin_id)),
    ("action exact", lambda c, rows: ({"action": "list_devices"},
                                      lambda r: r.action == "list_devices")),
    ("action prefix", lambda c, rows: ({"action": "manage_*"},
                                       lambda r: r.action.startswith("manage_"))),
    ("action with LIKE characters", lambda c, rows: (
        {"action": "list%*"}, lambda r: r.action.startswith("list%"))),
    ("tier 2", lambda c, rows: ({"tier": "2"}, lambda r: r.risk_tier == 2)),
    ("tier 4", lambda c, rows: ({"tier": "4"}, lambda r: r.risk_tier == 4)),
    ("decision denied", lambda c, rows: ({"decision": "denied"},
                                         lambda r: r.decision == "denied")),
    ("outcome blocked", lambda c, rows: ({"outcome": "blocked"},
                                         lambda r: r.outcome == "blocked")),
    ("from", lambda c, rows: ({"from": _iso(rows[len(rows) // 2].occurred_at)},
                              lambda r: r.occurred_at >= rows[len(rows) // 2].occurred_at)),
    ("from and to", lambda c, rows: (
        {"from": _iso(rows[-3].occurred_at), "to": _iso(rows[2].occurred_at)},
        lambda r: rows[-3].occurred_at <= r.occurred_at < rows[2].occurred_at)),
    ("several at once", lambda c, rows: (
        {"path": "api_key", "tier": "1", "decision": "allowed"},
        lambda r: r.auth_path == "api_key" and r.risk_tier == 1 and r.decision == "allowed")),
]


@pytest.mark.req("AUDIT-QUERY", "ADMIN-API-AUDIT")
@pytest.mark.parametrize(("name", "case"), FILTERS, ids=[n for n, _ in FILTERS])
def test_each_filter_selects_exactly_its_entries(cast: Cast, name: str, case: Case) -> None:
    rows = truth(cast)
    filters, selects = case(cast, rows)
    if "to" not in filters:
        filters["to"] = _iso(cast.bound)
    expected = [r.id for r in rows if selects(r)]
    assert expected or name == "action with LIKE characters"  # the case can fail
    assert len(expected) < len(rows) or name.startswith("from")  # and it narrows
    got = walk(cast, limit=4, **filters)
    assert [e["id"] for e in got] == expected
    assert all(e["tenant_id"] == str(cast.world.tenant.id) for e in got)


@pytest.mark.req("AUDIT-QUERY")
def test_entries_read_as_written_and_texts_as_sent(cast: Cast) -> None:
    [entry] = walk(cast, actor=cast.tools_key_id, action="add_note", to=_iso(cast.bound))
    [row] = [r for r in truth(cast) if r.id == entry["id"]]
    assert entry == {
        "id": row.id, "occurred_at": row.occurred_at.astimezone(dt.UTC).isoformat(),
        "request_id": row.request_id, "tenant_id": str(cast.world.tenant.id),
        "actor_type": "api_key", "actor_id": cast.tools_key_id,
        "acting_user_id": str(row.acting_user_id), "acting_user_email": row.acting_user_email,
        "auth_path": "api_key", "credential_id": cast.tools_key_id, "client_id": None,
        "action": "add_note", "parameters": row.parameters, "risk_tier": 2,
        "scopes": ["ai:read", "ai:write"], "decision": "allowed", "deny_reason": None,
        "outcome": "success", "error": None, "client_ip": "127.0.0.1",
        "user_agent": row.user_agent, "duration_ms": row.duration_ms}
    # A NUL, a bidi override and a lone surrogate come back exactly as they were sent.
    searched = [e for e in walk(cast, action="list_devices", path="api_key")
                if "search" in e["parameters"]]
    assert [e["parameters"]["search"] for e in searched] == [cast.hostile_text]


@pytest.mark.req("AUDIT-QUERY", "ADMIN-API-AUDIT")
def test_a_bad_filter_is_a_400_that_names_it(cast: Cast) -> None:
    for params, named in (
        ({"tier": "5"}, "tier"), ({"from": "yesterday"}, "from"),
        ({"from": "2026-02-01", "to": "2026-01-01"}, "to"), ({"path": "ftp"}, "path"),
        ({"outcome": "maybe"}, "outcome"), ({"action": "a*b"}, "action"),
        ({"limit": "1000"}, "limit"), ({"limit": "0"}, "limit"), ({"teir": "2"}, "teir"),
        ({"actor": "x" * 400}, "actor"), ({"tier": ["1", "2"]}, "tier"),
        ({"from": "9999-12-31T23:00:00-12:00"}, "from"),
    ):
        r = query(cast, **params)
        assert r.status_code == 400, (params, r.text)
        body = r.json()
        assert body["error"] == "bad_request" and body["message"].startswith(f"{named}:"), body
    r = httpx.get(f"{cast.url}/api/v1/audit?action=%00", headers=_bearer(cast.reader_key),
                  timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    # Dates without a time, and times without an offset (UTC), are ISO 8601 too.
    assert query(cast, **{"from": "2020-01-01", "to": "2999-01-01T00:00"}).status_code == 200


_NAMES = ["from", "to", "actor", "path", "action", "tier", "decision", "outcome", "cursor",
          "limit", "format", "junk"]
_VALUES = st.one_of(
    st.text(max_size=40),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(dt.datetime.isoformat),
    st.dates().map(dt.date.isoformat),
    st.integers(min_value=-10, max_value=10**20).map(str),
    st.sampled_from(["api_key", "session", "denied", "blocked", "jsonl", "csv", "admin.*",
                     "a*", "*", "**", "+14:00", "-12:00"]),
)


@pytest.mark.req("AUDIT-QUERY")
@settings(max_examples=300, deadline=None, database=None)
@given(fields=st.lists(st.tuples(st.sampled_from(_NAMES), _VALUES), max_size=6))
def test_any_query_is_parsed_or_refused_by_name(fields: list[tuple[str, str]]) -> None:
    """Whatever a query string holds, parsing ends in a request or in an error naming one
    parameter (a 400), never in anything else."""
    for model in (PageRequest, ExportRequest):
        try:
            asked = parse_request(model, ImmutableMultiDict(fields))
        except AuditQueryError as exc:
            assert exc.name in {name for name, _ in fields} | {"format"}, exc.message
        else:
            assert AuditFilters.model_validate(asked.parameters()) == asked.only_filters()


@pytest.mark.req("AUDIT-QUERY", "SEED-RLS")
def test_one_tenant_never_sees_another_tenants_entries(cast: Cast) -> None:
    mine = walk(cast, limit=200, to=_iso(cast.bound))
    theirs = walk(cast, cast.other_key, limit=200)
    assert mine and theirs
    assert {e["tenant_id"] for e in mine} == {str(cast.world.tenant.id)}
    assert {e["tenant_id"] for e in theirs} == {str(cast.other.id)}
    assert not {e["id"] for e in mine} & {e["id"] for e in theirs}
    # Naming the other tenant's key, user or action finds nothing.
    assert walk(cast, cast.other_key, actor=cast.tools_key_id) == []
    assert walk(cast, cast.other_key, actor=cast.admin_email) == []
    assert walk(cast, cast.other_key, action="add_note") == []
    export = query(cast, cast.other_key, EXPORT, format="jsonl")
    assert {json.loads(line)["tenant_id"] for line in export.text.splitlines()} == {
        str(cast.other.id)}
    # Entries written before any tenant was known belong to none: not shown.
    orphans = superuser_sql(cast.world.test_db, "SELECT id FROM audit_log WHERE tenant_id IS"
                            " NULL AND action = 'auth.login_failed'")
    assert orphans and not {r[0] for r in orphans} & {e["id"] for e in mine}
    assert [e["id"] for e in mine] == [r.id for r in truth(cast)]


# -- pages ---------------------------------------------------------------------------------

@pytest.mark.req("AUDIT-CURSOR")
def test_pages_walk_every_entry_once_while_new_ones_arrive(cast: Cast) -> None:
    start = truth(cast, until=_now(cast.world))
    expected = [r.id for r in start if r.actor_id == cast.tools_key_id]
    assert len(expected) >= 6
    arrived: list[int] = []

    def another_call() -> None:
        assert _tool(cast, "list_devices", {}).status_code == 200
        arrived.append(last_id(cast))

    got = [e["id"] for e in walk(cast, limit=2, between=another_call, actor=cast.tools_key_id)]
    assert got == expected  # each once, in order; what arrived meanwhile sorts above
    assert len(arrived) == (len(expected) + 1) // 2 - 1  # after each page but the last
    fresh = [e["id"] for e in walk(cast, limit=2, actor=cast.tools_key_id)]
    assert fresh[:len(arrived)] == arrived[::-1] and fresh[len(arrived):] == expected


@pytest.mark.req("AUDIT-CURSOR")
def test_a_cursor_is_tamper_proof_and_bound_to_its_query_and_tenant(cast: Cast) -> None:
    first = query(cast, limit=1, path="api_key").json()
    cursor = first["next_cursor"]
    assert isinstance(cursor, str) and len(cursor) == 43
    assert query(cast, limit=1, path="api_key", cursor=cursor).status_code == 200
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    since = last_id(cast)
    for params, key in (
        ({"path": "api_key", "cursor": flipped}, None),  # edited
        ({"path": "session", "cursor": cursor}, None),  # another query's
        ({"cursor": cursor}, None),  # the filters dropped
        ({"path": "api_key", "cursor": cursor}, cast.other_key),  # another tenant's
        ({"path": "api_key", "cursor": "not-a-cursor"}, None),
        ({"path": "api_key", "cursor": "A" * 43}, None),
    ):
        r = query(cast, key, **params)
        assert r.status_code == 400, params
        assert r.json()["message"].startswith("cursor:")
    refusals = entries_since(cast, since, "admin.query_audit_log")
    assert len(refusals) == 6
    assert all(e.outcome == "error" and e.error.startswith("cursor:") for e in refusals)


# -- export --------------------------------------------------------------------------------

def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


@pytest.mark.req("AUDIT-EXPORT", "ADMIN-API-AUDIT")
def test_export_holds_exactly_the_filtered_entries(cast: Cast) -> None:
    filters: dict[str, Any] = {"path": "api_key", "to": _iso(cast.bound)}
    expected = walk(cast, limit=200, **filters)
    assert len(expected) >= 7
    jsonl = query(cast, endpoint=EXPORT, format="jsonl", **filters)
    assert jsonl.status_code == 200
    assert jsonl.headers["content-type"] == "application/x-ndjson"
    assert re.fullmatch(r'attachment; filename="audit-\d{8}T\d{6}Z\.jsonl"',
                        jsonl.headers["content-disposition"])
    assert jsonl.headers["cache-control"] == "no-store"
    assert [json.loads(line) for line in jsonl.text.splitlines()] == expected

    exported = query(cast, endpoint=EXPORT, format="csv", **filters)
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "text/csv; charset=utf-8"
    assert exported.headers["content-disposition"].endswith('.csv"')
    rows = _csv_rows(exported.text)
    assert [int(r["id"]) for r in rows] == [e["id"] for e in expected]
    by_id = {int(r["id"]): r for r in rows}
    for entry in expected:
        row = by_id[entry["id"]]
        assert row["tenant_id"] == entry["tenant_id"] and row["outcome"] == entry["outcome"]
        assert audit.restore(json.loads(row["parameters"])) == entry["parameters"]
        assert row["scopes"].split() == entry["scopes"]

    for bad in ({}, {"format": "xml"}, {"format": "csv", "tier": "0"}):
        r = query(cast, endpoint=EXPORT, **bad)
        assert r.status_code == 400 and r.json()["error"] == "bad_request", bad


@pytest.mark.req("AUDIT-EXPORT")
def test_csv_cells_cannot_run_as_formulas(cast: Cast) -> None:
    r = query(cast, endpoint=EXPORT, format="csv", actor=cast.tools_key_id,
              to=_iso(cast.bound))
    assert r.status_code == 200
    rows = _csv_rows(r.text)
    [unknown] = [row for row in rows if row["action"].endswith("=cmd")]
    assert unknown["action"] == "'=cmd"
    assert unknown["request_id"] == "'=SUM(1,2)" and unknown["user_agent"] == "'@evil"
    [note] = [row for row in rows if row["action"] == "add_note"]
    assert note["parameters"].startswith("{")
    assert json.loads(note["parameters"])["body"] == '=HYPERLINK("http://evil.example")'
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(FORMULA_START), row
    # The stored escaped form: printable, and audit.unescape gives the text as sent.
    [hostile] = [row for row in rows if "search" in row["parameters"]]
    assert audit.restore(json.loads(hostile["parameters"]))["search"] == cast.hostile_text
    assert "\x00" not in r.text and "\u202e" in r.text


def _bulk_tenant(cast: Cast, count: int) -> tuple[Tenant, str]:
    """A tenant with ``count`` entries, three at each instant (ties broken by id)."""

    async def make(db: Database) -> tuple[Tenant, str]:
        tag = uuid.uuid4().hex[:6]
        tenant = await create_tenant(db, f"Bulk {tag}", slug=f"bulk-{tag}")
        await create_user(db, tenant, email=f"bulk-{tag}@example.com", password=PASSWORD,
                          role="owner")
        _, key = await create_api_key(db, tenant, name="bulk", scopes="ai:read",
                                      rate_limit="1000/minute")
        return tenant, key

    tenant, key = _run_db(cast.world, make)
    superuser_sql(cast.world.test_db,
                  "INSERT INTO audit_log (tenant_id, actor_type, auth_path, action, decision,"
                  " outcome, parameters, occurred_at) SELECT :t, 'system', 'system',"
                  " 'bulk.test', 'allowed', 'success', jsonb_build_object('n', g),"
                  " timestamptz '2026-01-01' + (g / 3) * interval '1 second'"
                  " FROM generate_series(1, :n) AS g", t=tenant.id, n=count)
    return tenant, key


@pytest.mark.req("AUDIT-EXPORT", "AUDIT-CURSOR")
def test_a_large_export_walks_batches_without_holding_a_connection(cast: Cast) -> None:
    count = 2 * EXPORT_BATCH + 7
    tenant, key = _bulk_tenant(cast, count)
    expected = [r.id for r in superuser_sql(
        cast.world.test_db, "SELECT id FROM audit_log WHERE tenant_id = :t AND"
        " action = 'bulk.test' ORDER BY occurred_at DESC, id DESC", t=tenant.id)]
    assert len(expected) == count
    jsonl = query(cast, key, EXPORT, format="jsonl", action="bulk.test")
    assert [json.loads(line)["id"] for line in jsonl.text.splitlines()] == expected
    exported = query(cast, key, EXPORT, format="csv", action="bulk.test")
    assert [int(r["id"]) for r in _csv_rows(exported.text)] == expected
    assert [e["id"] for e in walk(cast, key, limit=200, action="bulk.test")] == expected

    # Between the chunks of an export, no connection is held: with a pool of one, another
    # transaction runs while the export waits to send each chunk.
    async def stream(db: Database) -> list[int]:
        filters = AuditFilters(action="bulk.test")
        async with db.tenant(tenant.id) as tx:
            first = await read_batch(tx, tenant.id, filters, None)
            await tx.rollback()
        ids: list[int] = []
        async for chunk in export_chunks(db, tenant.id, filters, "jsonl", first):
            ids.extend(json.loads(line)["id"] for line in chunk.decode().splitlines())
            async with db.tenant(tenant.id) as other:  # the pool's only connection
                await other.rollback()
        return ids

    async def with_one_connection() -> list[int]:
        db = Database(cast.world.test_db.runtime_url, pool_size=1, pool_timeout=5)
        try:
            return await stream(db)
        finally:
            await db.dispose()

    assert asyncio.run(with_one_connection()) == expected


# -- who may read, and the read's own entry ------------------------------------------------

@pytest.mark.req("ADMIN-API-AUDIT")
def test_only_owner_and_admin_keys_read_the_log(cast: Cast) -> None:
    since = last_id(cast)
    for path in ("/api/v1/audit", "/api/v1/audit/export"):
        r = query(cast, cast.demoted_key, path, format="csv")
        assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    denied = [*entries_since(cast, since, "admin.query_audit_log"),
              *entries_since(cast, since, "admin.export_audit_log")]
    assert [(e.decision, e.outcome, e.deny_reason) for e in denied] == [
        ("denied", "blocked", "role")] * 2  # as the console's refusal of a technician
    # An AI client is never handed the log, whoever connected it.
    _, tokens = connect(cast.world, cast.world.tech_email, scopes=["ai:read"])
    for path in ("/api/v1/audit", "/api/v1/audit/export"):
        r = query(cast, tokens["access_token"], path, format="jsonl")
        assert r.status_code == 403 and "API key" in r.json()["message"]
    assert httpx.get(f"{cast.url}/api/v1/audit", timeout=30).status_code == 401


@pytest.mark.req("ADMIN-API-AUDIT", "AUDIT-EXPORT")
def test_each_query_and_export_is_itself_audited(cast: Cast) -> None:
    since = last_id(cast)
    first = query(cast, tier="2", limit="3", actor=cast.admin_email).json()
    assert query(cast, endpoint=EXPORT, format="csv", action="manage_*"
                 ).status_code == 200
    [read] = entries_since(cast, since, "admin.query_audit_log")
    assert read.parameters == {"tier": 2, "actor": cast.admin_email, "limit": 3,
                               "cursor": False}
    assert (read.auth_path, read.actor_type, read.tenant_id, read.outcome) == (
        "api_key", "api_key", cast.world.tenant.id, "success")
    assert read.acting_user_id == cast.admin_id
    [export] = entries_since(cast, since, "admin.export_audit_log")
    assert export.parameters == {"action": "manage_*", "format": "csv"}
    # A query's own entry is not in its answer; the next query sees it.
    assert read.id not in {e["id"] for e in first["entries"]}
    again = query(cast, action="admin.query_audit_log", limit="200").json()["entries"]
    assert read.id in {e["id"] for e in again}


@pytest.mark.req("ADMIN-API-AUDIT")
def test_openapi_lists_the_audit_endpoints_with_their_scope(cast: Cast) -> None:
    doc = httpx.get(f"{cast.url}/api/v1/openapi.json", timeout=30).json()
    filters = {"from", "to", "actor", "path", "action", "tier", "decision", "outcome"}
    page = doc["paths"]["/api/v1/audit"]["get"]
    export = doc["paths"]["/api/v1/audit/export"]["get"]
    for operation in (page, export):
        assert operation["security"] == [{"bearer": ["ai:read"]}]
        assert operation["x-required-scope"] == "ai:read"
        assert operation["x-required-role"] == ["owner", "admin"]
        assert "400" in operation["responses"]
    assert {p["name"] for p in page["parameters"]} == filters | {"cursor", "limit"}
    assert {p["name"] for p in export["parameters"]} == filters | {"format"}
    assert set(export["responses"]["200"]["content"]) == {"application/x-ndjson",
                                                          "text/csv; charset=utf-8"}


# -- the console ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def admin(cast: Cast) -> Iterator[HumanAgent]:
    agent = signed_in(cast.world, cast.admin_email)
    yield agent
    agent.close()


def _page_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r"<dt>Entry id</dt><dd>(\d+)</dd>", page)]


@pytest.mark.req("CONSOLE-AUDIT")
def test_the_console_page_filters_and_pages(cast: Cast, admin: HumanAgent) -> None:
    expected = [r.id for r in truth(cast) if r.action == "list_devices"]
    assert len(expected) >= 3
    params = {"action": "list_devices", "to": _iso(cast.bound), "limit": "2", "path": "",
              "tier": ""}
    page = admin.http.get("/console/audit", params=params)
    assert page.status_code == 200, page.text
    text = page.text
    for field in ("from", "to", "actor", "path", "action", "tier", "decision", "outcome"):
        assert re.search(rf'<label for="f-{field}">', text) and f'name="{field}"' in text
    assert text.count('<th scope="col">') == 9
    assert 'aria-current="page">Audit log' in text
    seen = _page_ids(text)
    while (link := re.search(r'<a href="(/console/audit\?[^"]+)" rel="next">', text)):
        assert "cursor=" in link.group(1) and "action=list_devices" in link.group(1)
        text = admin.http.get(link.group(1).replace("&amp;", "&")).text
        seen += _page_ids(text)
    assert seen == expected
    # The export links carry the same filters (and nothing empty).
    jsonl = re.search(r'<a href="/console/audit/export\?([^"]+)" download>JSON Lines', page.text)
    assert jsonl and "format=jsonl" in jsonl.group(1) and "action=list_devices" in jsonl.group(1)
    assert "tier=" not in jsonl.group(1) and "limit=" not in jsonl.group(1)
    export = admin.http.get("/console/audit/export?" + jsonl.group(1).replace("&amp;", "&"))
    assert [json.loads(line)["id"] for line in export.text.splitlines()] == expected


@pytest.mark.req("CONSOLE-AUDIT")
def test_the_console_shows_every_text_printable(cast: Cast, admin: HumanAgent) -> None:
    page = admin.http.get("/console/audit", params={"action": "list_devices",
                                                    "path": "api_key"})
    assert page.status_code == 200
    assert "\\u0000" in page.text and "\\u202e" in page.text and "\\ud800" in page.text
    assert "\u202e" not in page.text and "\x00" not in page.text


@pytest.mark.req("CONSOLE-AUDIT")
def test_a_bad_filter_is_shown_on_the_page(cast: Cast, admin: HumanAgent) -> None:
    since = last_id(cast)
    page = admin.http.get("/console/audit", params={"tier": "9", "actor": "someone"})
    assert page.status_code == 400
    assert re.search(r'<p class="error" role="alert" id="audit-error">tier: [^<]+</p>', page.text)
    assert 'value="someone"' in page.text  # the form keeps what was typed
    assert re.search(r'<select id="f-tier" name="tier" aria-invalid="true"', page.text)
    assert "Export every entry" not in page.text and "<table" not in page.text
    [entry] = entries_since(cast, since, "console.audit")
    assert entry.outcome == "error" and entry.error.startswith("tier:")
    assert entry.parameters == {"tier": "9", "actor": "someone"}


@pytest.mark.req("CONSOLE-AUDIT", "AUDIT-EXPORT")
def test_the_console_exports_what_it_shows(cast: Cast, admin: HumanAgent) -> None:
    expected = [r.id for r in truth(cast) if r.auth_path == "session"]
    assert expected
    since = last_id(cast)
    for fmt in ("csv", "jsonl"):
        r = admin.http.get("/console/audit/export", params={
            "format": fmt, "path": "session", "to": _iso(cast.bound), "actor": ""})
        assert r.status_code == 200, r.text
        assert r.headers["content-disposition"].startswith("attachment; ")
        ids = ([int(row["id"]) for row in _csv_rows(r.text)] if fmt == "csv"
               else [json.loads(line)["id"] for line in r.text.splitlines()])
        assert ids == expected
    exports = entries_since(cast, since, "console.audit_export")
    assert [e.parameters["format"] for e in exports] == ["csv", "jsonl"]
    assert all(e.parameters["path"] == "session" and e.auth_path == "session"
               and e.acting_user_id == cast.admin_id for e in exports)
    bad = admin.http.get("/console/audit/export", params={"format": "pdf"})
    assert bad.status_code == 400 and 'role="alert" id="audit-error">format:' in bad.text


@pytest.mark.req("CONSOLE-AUDIT")
def test_a_technician_may_not_open_the_audit_log(cast: Cast) -> None:
    tech = signed_in(cast.world, cast.world.tech_email)
    try:
        since = last_id(cast)
        assert "/console/audit" not in tech.http.get("/console/devices").text  # not offered
        for path in ("/console/audit", "/console/audit/export?format=csv"):
            r = tech.http.get(path)
            assert r.status_code == 403 and "owners and admins" in r.text
        denied = [*entries_since(cast, since, "console.audit"),
                  *entries_since(cast, since, "console.audit_export")]
        assert [(e.decision, e.outcome, e.deny_reason, e.auth_path) for e in denied] == [
            ("denied", "blocked", "role", "session")] * 2
    finally:
        tech.close()
    r = httpx.get(f"{cast.url}/console/audit", follow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
