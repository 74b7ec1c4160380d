"""Tools over MCP and REST with API keys, through a real uvicorn server on a port.

The tier x scope matrix for every tool, tenant walls, audit parity between the two paths,
revoked / expired / demoted keys, rate limits, and protocol errors.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from breeze_mcp.app import create_app
from breeze_mcp.auth.accounts import Tenant, create_tenant, create_user
from breeze_mcp.auth.api_keys import create_api_key, revoke_api_key
from breeze_mcp.config import load_settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.tools import default_registry
from breeze_mcp.tools.demo import seed_demo_data
from tests.support import LiveServer, ProvisionedDatabase, free_port

PASSWORD = "a-Strong-passphrase-42"
SCOPE_SETS = {
    "read": "ai:read",
    "write": "ai:read,ai:write",
    "execute": "ai:read,ai:write,ai:execute",
}
CEILING = {"read": 1, "write": 2, "execute": 3}
ACCEPT = "application/json, text/event-stream"


@dataclass
class TenantWorld:
    tenant: Tenant
    keys: dict[str, str] = field(default_factory=dict)
    key_ids: dict[str, uuid.UUID] = field(default_factory=dict)
    device_ids: list[str] = field(default_factory=list)
    alert_ids: list[str] = field(default_factory=list)


@dataclass
class World:
    url: str
    runtime_url: str
    owner_url: str
    a: TenantWorld  # the matrix and most tests
    b: TenantWorld  # the other side of the wall; its own run_script budget
    c: TenantWorld  # cross-tenant probes (own per-tenant tool budget)


async def _tenant_world(db: Database, label: str) -> TenantWorld:
    tenant = await create_tenant(db, f"API {label}", slug=f"api-{label}-{uuid.uuid4().hex[:6]}")
    await seed_demo_data(db, tenant.id)
    await create_user(db, tenant, email=f"owner-{tenant.slug}@example.com", password=PASSWORD,
                      role="owner")
    world = TenantWorld(tenant)
    for name, scopes in SCOPE_SETS.items():
        info, key = await create_api_key(db, tenant, name=name, scopes=scopes,
                                         rate_limit="1000/minute")
        world.keys[name] = key
        world.key_ids[name] = info.id
    async with db.tenant(tenant.id) as conn:
        world.device_ids = [str(r.id) for r in await conn.execute(
            sa.text("SELECT id FROM devices ORDER BY hostname"))]
        world.alert_ids = [str(r.id) for r in await conn.execute(
            sa.text("SELECT id FROM alerts ORDER BY created_at"))]
    return world


@pytest.fixture(scope="module")
def world(
    test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    async def build() -> tuple[TenantWorld, TenantWorld, TenantWorld]:
        db = Database(test_db.runtime_url, pool_size=2)
        try:
            return (await _tenant_world(db, "a"), await _tenant_world(db, "b"),
                    await _tenant_world(db, "c"))
        finally:
            await db.dispose()

    a, b, c = asyncio.run(build())
    port = free_port()
    settings = load_settings(
        state_dir=tmp_path_factory.mktemp("state"),
        database_url=test_db.runtime_url,
        public_url=f"http://127.0.0.1:{port}",
    )
    with LiveServer(create_app(settings, test_db.runtime_url), port=port) as server:
        yield World(server.url, test_db.runtime_url, test_db.owner_url, a, b, c)


def mcp(world: World, key: str | None, method: str, params: dict[str, Any] | None = None,
        *, id_: Any = 1, headers: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        body["params"] = params
    h = {"Content-Type": "application/json", "Accept": ACCEPT,
         "MCP-Protocol-Version": "2025-06-18"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    h.update(headers or {})
    return httpx.post(f"{world.url}/mcp", content=json.dumps(body), headers=h, timeout=30)


def rest(world: World, key: str | None, tool: str, args: dict[str, Any]) -> httpx.Response:
    h = {"Content-Type": "application/json"}
    if key:
        h["Authorization"] = f"Bearer {key}"
    return httpx.post(f"{world.url}/api/v1/tools/{tool}", json=args, headers=h, timeout=30)


def owner_sql(world: World, tenant_id: uuid.UUID, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(sqlalchemy_url(world.owner_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT set_config('breeze.tenant_id', :t, true)"),
                         {"t": str(tenant_id)})
            result = conn.execute(sa.text(sql), params)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def new_device(world: World, tw: TenantWorld) -> str:
    rows = owner_sql(
        world, tw.tenant.id,
        "INSERT INTO devices (tenant_id, hostname, os_family, os_version, agent_version) "
        "VALUES (:t, :h, 'linux', 'Debian 12', '2.4.1') RETURNING id",
        t=tw.tenant.id, h=f"matrix-{uuid.uuid4().hex[:8]}",
    )
    return str(rows[0].id)


def new_open_alert(world: World, tw: TenantWorld) -> str:
    rows = owner_sql(
        world, tw.tenant.id,
        "INSERT INTO alerts (tenant_id, device_id, severity, title) "
        "VALUES (:t, :d, 'warning', 'matrix') RETURNING id",
        t=tw.tenant.id, d=tw.device_ids[0],
    )
    return str(rows[0].id)


# Arguments for every call of the matrix: (tool, arguments) -> the tier it must have.
def matrix_calls(world: World) -> list[tuple[str, dict[str, Any], int]]:
    a = world.a
    device = a.device_ids[1]
    return [
        ("list_devices", {"limit": 5}, 1),
        ("get_device", {"device_id": device}, 1),
        ("get_device_health", {"device_id": device}, 1),
        ("query_alerts", {"status": "open"}, 1),
        ("list_notes", {"device_id": device}, 1),
        ("manage_alert", {"alert_id": "<new-alert>", "action": "acknowledge"}, 2),
        ("add_note", {"device_id": device, "body": "matrix note"}, 2),
        ("manage_device", {"device_id": "<new-device>", "action": "set_maintenance"}, 2),
        ("manage_device", {"device_id": device, "action": "reboot"}, 3),
        ("run_script", {"device_id": device, "interpreter": "bash", "script": "uptime"}, 3),
        ("deploy_patches", {"device_id": device, "patches": ["KB5034441"]}, 3),
        ("isolate_device", {"device_id": device, "action": "isolate", "reason": "matrix"}, 3),
        ("manage_alert", {"alert_id": a.alert_ids[0], "action": "delete"}, 4),
        ("wipe_device", {"device_id": device}, 4),
        ("delete_tenant", {"confirm_slug": a.tenant.slug}, 4),
        ("disable_audit_log", {"reason": "matrix"}, 4),
        ("no_such_tool", {}, 4),
    ]


def test_matrix_covers_every_registered_tool(world: World) -> None:
    names = {name for name, _, _ in matrix_calls(world)}
    assert {spec.name for spec in default_registry()} <= names
    for name, args, tier in matrix_calls(world):
        spec = default_registry().get(name)
        assert (spec.effective_tier(args) if spec else 4) == tier, name


@pytest.mark.req("SEED-TIER-SCOPES", "SEED-TIER4-NEVER", "SEED-NO-OVERRIDE", "TOOLS-GATE")
@pytest.mark.parametrize("transport", ["mcp", "rest"])
@pytest.mark.parametrize("scope", ["read", "write", "execute"])
def test_tier_scope_matrix(world: World, transport: str, scope: str) -> None:
    key = world.a.keys[scope]
    for name, template, tier in matrix_calls(world):
        args = dict(template)
        if args.get("alert_id") == "<new-alert>":
            args["alert_id"] = new_open_alert(world, world.a)
        if args.get("device_id") == "<new-device>":
            args["device_id"] = new_device(world, world.a)
        allowed = tier <= CEILING[scope]
        needed = {1: "ai:read", 2: "ai:write", 3: "ai:execute"}.get(tier)
        if transport == "rest":
            r = rest(world, key, name, args)
            assert r.status_code < 500, (name, r.text)
            body = r.json()
            if name == "no_such_tool":
                assert r.status_code == 404 and body["error"] == "unknown_tool"
            elif tier == 4:
                assert r.status_code == 403 and body["error"] == "blocked", (name, body)
                assert "blocked at every scope level" in body["message"]
            elif allowed:
                assert r.status_code == 200, (name, scope, body)
                assert body["tier"] == tier
            else:
                assert r.status_code == 403 and body["error"] == "insufficient_scope", body
                assert body["required_scope"] == needed
                assert needed in body["message"] and f"Tier {tier}" in body["message"]
                assert f'scope="{needed}"' in r.headers["www-authenticate"]
        else:
            r = mcp(world, key, "tools/call", {"name": name, "arguments": args})
            assert r.status_code < 500, (name, r.text)
            body = r.json()
            if name == "no_such_tool":
                assert body["error"]["code"] == -32602
                assert "Unknown tool" in body["error"]["message"]
            elif tier == 4:
                result = body["result"]
                assert result["isError"] is True, (name, body)
                assert "blocked at every scope level" in result["content"][0]["text"]
            elif allowed:
                assert r.status_code == 200 and "result" in body, (name, scope, body)
                assert body["result"].get("isError") is not True, (name, body)
                assert body["result"]["structuredContent"]
            else:
                assert r.status_code == 403, (name, scope, body)
                assert body["error"]["data"]["required_scope"] == needed
                assert needed in body["error"]["message"]
                challenge = r.headers["www-authenticate"]
                assert 'error="insufficient_scope"' in challenge
                assert f'scope="{needed}"' in challenge and "resource_metadata=" in challenge


@pytest.mark.req("SEED-TIER4-NEVER")
def test_tier4_and_denied_calls_are_audited_and_change_nothing(world: World) -> None:
    tw = world.a
    before = owner_sql(world, tw.tenant.id, "SELECT count(*) FROM devices")[0][0]
    r = rest(world, tw.keys["execute"], "wipe_device", {"device_id": tw.device_ids[2]})
    assert r.status_code == 403
    assert owner_sql(world, tw.tenant.id, "SELECT count(*) FROM devices")[0][0] == before
    rows = owner_sql(world, tw.tenant.id,
                     "SELECT decision, outcome, deny_reason, risk_tier, credential_id "
                     "FROM audit_log WHERE action = 'wipe_device' ORDER BY id DESC LIMIT 1")
    assert rows and tuple(rows[0])[:4] == ("denied", "blocked", "tier4_tool", 4)
    assert rows[0].credential_id == str(tw.key_ids["execute"])


@pytest.mark.req("SEED-TIER-SCOPES", "TOOLS-MCP")
@pytest.mark.parametrize("scope", ["read", "write", "execute"])
def test_tools_list_by_scope(world: World, scope: str) -> None:
    r = mcp(world, world.a.keys[scope], "tools/list")
    assert r.status_code == 200
    tools = r.json()["result"]["tools"]
    registry = default_registry()
    names = {t["name"] for t in tools}
    expected = {s.name for s in registry if s.base_tier < 4 and s.min_tier <= CEILING[scope]}
    assert names == expected
    assert not names & {"wipe_device", "delete_tenant", "disable_audit_log"}
    for tool in tools:
        schema = tool["inputSchema"]
        assert schema["type"] == "object" and isinstance(schema["properties"], dict)
        assert tool["description"]
        spec = registry.get(tool["name"])
        assert spec is not None
        hints = tool["annotations"]
        assert hints["readOnlyHint"] is (spec.max_tier == 1)
        if spec.max_tier == 3:
            assert hints["destructiveHint"] is True
    if scope == "read":
        assert all(t["annotations"]["readOnlyHint"] for t in tools)
    listed = httpx.get(f"{world.url}/api/v1/tools",
                       headers={"Authorization": f"Bearer {world.a.keys[scope]}"}).json()
    assert {t["name"] for t in listed["tools"]} == expected


@pytest.mark.req("AUDIT-PARITY-TRANSPORTS", "AUDIT-ONE-WRITER")
def test_same_call_over_mcp_and_rest_audits_the_same(world: World) -> None:
    tw = world.a
    device = tw.device_ids[3]
    marker = uuid.uuid4().hex
    args = {"device_id": device, "body": f"parity {marker}"}
    r1 = mcp(world, tw.keys["write"], "tools/call", {"name": "add_note", "arguments": args},
             headers={"User-Agent": "parity-test", "X-Request-Id": "req-mcp"})
    assert r1.status_code == 200 and not r1.json()["result"].get("isError")
    r2 = httpx.post(f"{world.url}/api/v1/tools/add_note", json=args, headers={
        "Authorization": f"Bearer {tw.keys['write']}", "User-Agent": "parity-test",
        "X-Request-Id": "req-rest"})
    assert r2.status_code == 200
    rows = owner_sql(world, tw.tenant.id,
                     "SELECT * FROM audit_log WHERE parameters->>'body' = :b ORDER BY id",
                     b=f"parity {marker}")
    assert len(rows) == 2
    first, second = (dict(r._mapping) for r in rows)
    assert (first["request_id"], second["request_id"]) == ("req-mcp", "req-rest")
    path_fields = {"id", "occurred_at", "request_id", "duration_ms"}
    assert {k: v for k, v in first.items() if k not in path_fields} == \
        {k: v for k, v in second.items() if k not in path_fields}
    assert first["actor_type"] == "api_key" and first["auth_path"] == "api_key"
    assert first["risk_tier"] == 2 and first["decision"] == "allowed"
    assert first["outcome"] == "success" and str(first["client_ip"]) == "127.0.0.1"
    assert first["scopes"] == ["ai:read", "ai:write"]
    assert first["user_agent"] == "parity-test"
    # The note itself was written twice, each in the same transaction as its entry.
    notes = owner_sql(world, tw.tenant.id,
                      "SELECT count(*) FROM device_notes WHERE body = :b", b=f"parity {marker}")
    assert notes[0][0] == 2


@pytest.mark.req("SEED-KEY-TENANT")
@pytest.mark.parametrize("transport", ["mcp", "rest"])
def test_tenant_a_key_never_reaches_tenant_b(world: World, transport: str) -> None:
    a, b = world.c, world.b
    key = a.keys["execute"]

    def call(tool: str, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if transport == "rest":
            r = rest(world, key, tool, args)
            return r.status_code, r.json()
        r = mcp(world, key, "tools/call", {"name": tool, "arguments": args})
        result = r.json()["result"]
        return r.status_code, result

    _status, listed = call("list_devices", {"limit": 100})
    devices = listed["result"]["devices"] if transport == "rest" else \
        listed["structuredContent"]["devices"]
    a_now = {str(r.id) for r in owner_sql(world, a.tenant.id, "SELECT id FROM devices")}
    assert {d["id"] for d in devices} == a_now
    assert not {d["id"] for d in devices} & set(b.device_ids)

    before_b = owner_sql(world, b.tenant.id,
                         "SELECT (SELECT count(*) FROM device_notes), "
                         "(SELECT count(*) FROM script_runs), "
                         "(SELECT string_agg(status, ',' ORDER BY id) FROM alerts)")[0]
    random_id = str(uuid.uuid4())
    for tool, field_name, b_id in (
        ("get_device", "device_id", b.device_ids[0]),
        ("get_device_health", "device_id", b.device_ids[0]),
        ("add_note", "device_id", b.device_ids[0]),
        ("run_script", "device_id", b.device_ids[0]),
        ("manage_alert", "alert_id", b.alert_ids[0]),
    ):
        extra: dict[str, Any] = {
            "add_note": {"body": "cross-tenant"},
            "run_script": {"interpreter": "bash", "script": "id"},
            "manage_alert": {"action": "acknowledge"},
        }.get(tool, {})
        other = call(tool, {field_name: b_id, **extra})
        missing = call(tool, {field_name: random_id, **extra})
        assert other[0] == missing[0] and other[0] in (200, 404), (tool, other)
        if transport == "rest":
            assert other[1]["error"] == missing[1]["error"] == "not_found"
            assert other[1]["message"].replace(b_id, "X") == \
                missing[1]["message"].replace(random_id, "X")
        else:
            assert other[1]["isError"] and missing[1]["isError"]
            assert other[1]["content"][0]["text"].replace(b_id, "X") == \
                missing[1]["content"][0]["text"].replace(random_id, "X")
    after_b = owner_sql(world, b.tenant.id,
                        "SELECT (SELECT count(*) FROM device_notes), "
                        "(SELECT count(*) FROM script_runs), "
                        "(SELECT string_agg(status, ',' ORDER BY id) FROM alerts)")[0]
    assert tuple(before_b) == tuple(after_b)


@pytest.mark.req("KEYS-LIFECYCLE")
def test_revoked_expired_and_unknown_keys_are_refused(world: World) -> None:
    tw = world.a

    async def make() -> tuple[str, str, uuid.UUID]:
        db = Database(world.runtime_url, pool_size=1)
        try:
            info1, revoked = await create_api_key(db, tw.tenant, name="to-revoke",
                                                  scopes="ai:read")
            info2, expired = await create_api_key(db, tw.tenant, name="to-expire",
                                                  scopes="ai:read", expires_in_days=1)
            assert rest(world, revoked, "list_devices", {}).status_code == 200
            await revoke_api_key(db, info1.id, tenant=tw.tenant)
            return revoked, expired, info2.id
        finally:
            await db.dispose()

    revoked, expired, expired_id = asyncio.run(make())
    owner_sql(world, tw.tenant.id,
              "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = :i",
              i=expired_id)
    forged = tw.keys["read"][:-4] + ("AAAA" if not tw.keys["read"].endswith("AAAA") else "BBBB")
    other_tenant_prefix = "bzk_" + world.b.tenant.id.hex + tw.keys["read"][36:]
    for key in (revoked, expired, forged, other_tenant_prefix, "bzk_garbage", "not-a-key"):
        for r in (rest(world, key, "list_devices", {}), mcp(world, key, "tools/list")):
            assert r.status_code == 401, (key, r.text)
            challenge = r.headers["www-authenticate"]
            assert 'error="invalid_token"' in challenge and "resource_metadata=" in challenge
    none = mcp(world, None, "tools/list")
    assert none.status_code == 401
    assert none.headers["www-authenticate"].startswith("Bearer resource_metadata=")
    assert 'scope="ai:read ai:write ai:execute"' in none.headers["www-authenticate"]
    # A token in the query string is never read.
    q = httpx.post(f"{world.url}/mcp?access_token={tw.keys['read']}",
                   json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                   headers={"Accept": ACCEPT})
    assert q.status_code == 401


@pytest.mark.req("KEYS-CREATOR-CEILING")
def test_key_follows_its_creators_role(world: World) -> None:
    async def make() -> tuple[str, uuid.UUID]:
        db = Database(world.runtime_url, pool_size=1)
        try:
            tenant = await create_tenant(db, "Demote", slug=f"demote-{uuid.uuid4().hex[:6]}")
            await seed_demo_data(db, tenant.id)
            user = await create_user(db, tenant, email=f"adm-{tenant.slug}@example.com",
                                     password=PASSWORD, role="admin")
            _, key = await create_api_key(db, tenant, name="exec", scopes="ai:read,ai:execute",
                                          creator_email=user.email)
            return key, user.id
        finally:
            await db.dispose()

    key, user_id = asyncio.run(make())
    tenant_id = uuid.UUID(hex=key[4:36])
    device = owner_sql(world, tenant_id, "SELECT id FROM devices LIMIT 1")[0][0]
    script = {"device_id": str(device), "interpreter": "bash", "script": "true"}
    assert rest(world, key, "run_script", script).status_code == 200
    owner_sql(world, tenant_id, "UPDATE memberships SET role = 'readonly' WHERE user_id = :u",
              u=user_id)
    demoted = rest(world, key, "run_script", script)
    assert demoted.status_code == 403 and demoted.json()["required_scope"] == "ai:execute"
    assert rest(world, key, "list_devices", {}).status_code == 200
    owner_sql(world, tenant_id, "DELETE FROM memberships WHERE user_id = :u", u=user_id)
    assert rest(world, key, "list_devices", {}).status_code == 401


@pytest.mark.req("KEYS-RATELIMIT")
@pytest.mark.parametrize("transport", ["mcp", "rest"])
def test_rate_limit_fires_with_headers_and_audit(world: World, transport: str) -> None:
    tw = world.a

    async def make() -> tuple[str, uuid.UUID]:
        db = Database(world.runtime_url, pool_size=1)
        try:
            info, key = await create_api_key(db, tw.tenant, name="limited", scopes="ai:read",
                                             rate_limit="3/minute")
            return key, info.id
        finally:
            await db.dispose()

    key, key_id = asyncio.run(make())

    def call() -> httpx.Response:
        if transport == "rest":
            return rest(world, key, "list_devices", {"limit": 1})
        return mcp(world, key, "tools/call", {"name": "list_devices", "arguments": {"limit": 1}})

    remaining = []
    for _ in range(3):
        r = call()
        assert r.status_code == 200, r.text
        assert r.headers["ratelimit-limit"] == "3"
        remaining.append(int(r.headers["ratelimit-remaining"]))
        assert r.headers["ratelimit-policy"] == "3;w=60"
    assert remaining == [2, 1, 0]
    limited = call()
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["ratelimit-remaining"] == "0"
    body = limited.json()
    if transport == "rest":
        assert body["error"] == "rate_limited"
    else:
        assert body["error"]["data"]["error"] == "rate_limited"
    rows = owner_sql(world, tw.tenant.id,
                     "SELECT outcome, decision, deny_reason FROM audit_log "
                     "WHERE credential_id = :k AND outcome = 'rate_limited'", k=str(key_id))
    assert [tuple(r) for r in rows] == [("rate_limited", "denied", f"rate_limit:api_key:{key_id}")]


@pytest.mark.req("TOOLS-RATELIMIT")
def test_run_script_has_its_own_tenant_limit(world: World) -> None:
    tw = world.b  # untouched by the matrix
    script = {"device_id": tw.device_ids[0], "interpreter": "bash", "script": "true"}
    statuses = [rest(world, tw.keys["execute"], "run_script", script).status_code
                for _ in range(6)]
    assert statuses == [200] * 5 + [429]
    # Reads are not affected by the run_script bucket.
    assert rest(world, tw.keys["execute"], "list_devices", {}).status_code == 200


@pytest.mark.req("TOOLS-MCP")
def test_protocol_errors_are_answered_in_shape(world: World) -> None:
    key = world.a.keys["read"]
    auth = {"Authorization": f"Bearer {key}", "Accept": ACCEPT}
    post = lambda content, **h: httpx.post(  # noqa: E731
        f"{world.url}/mcp", content=content, headers={**auth, **h}, timeout=30)

    r = post(b"{not json", **{"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == -32700
    r = post(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', **{"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == -32600
    r = post(b'{"jsonrpc":"1.0","id":1,"method":"ping"}', **{"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == -32600
    r = post(b'{"jsonrpc":"2.0","id":1,"method":"ping"}', **{"Content-Type": "text/plain"})
    assert r.status_code == 415
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping",
                      "params": {"x": "a" * (1024 * 1024 + 10)}}).encode()
    r = post(big, **{"Content-Type": "application/json"})
    assert r.status_code == 413
    r = mcp(world, key, "no/such/method")
    assert r.status_code == 200 and r.json()["error"]["code"] == -32601
    r = mcp(world, key, "ping")
    assert r.json() == {"jsonrpc": "2.0", "id": 1, "result": {}}
    r = post(b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
             **{"Content-Type": "application/json"})
    assert r.status_code == 202 and r.content == b""
    r = mcp(world, key, "ping", headers={"MCP-Protocol-Version": "1999-01-01"})
    assert r.status_code == 400 and "Unsupported MCP-Protocol-Version" in r.text
    r = mcp(world, key, "tools/call", {"name": "list_devices", "arguments": {"limit": 0}})
    result = r.json()["result"]
    assert result["isError"] is True and "limit" in result["content"][0]["text"]
    r = mcp(world, key, "tools/call", {"name": "list_devices", "arguments": {"bogus": 1}})
    result = r.json()["result"]
    assert result["isError"] is True and "bogus" in result["content"][0]["text"]
    r = mcp(world, key, "tools/call", {"name": "list_devices", "arguments": [1]})
    assert r.json()["error"]["code"] == -32602
    for method in ("GET", "DELETE"):
        r = httpx.request(method, f"{world.url}/mcp", headers=auth)
        assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = mcp(world, key, "ping", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    r = mcp(world, key, "ping", headers={"Origin": world.url})
    assert r.status_code == 200
    r = mcp(world, key, "ping", headers={"Host": "evil.example"})
    assert r.status_code == 421
    r = mcp(world, key, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                       "clientInfo": {"name": "t", "version": "1"}})
    init = r.json()["result"]
    assert init["protocolVersion"] == "2025-06-18" and init["serverInfo"]["name"] == "breeze-mcp"
    assert init["capabilities"]["tools"] == {"listChanged": False}
    r = mcp(world, key, "initialize", {"protocolVersion": "2099-01-01", "capabilities": {},
                                       "clientInfo": {"name": "t", "version": "1"}})
    assert r.json()["result"]["protocolVersion"] == "2025-11-25"


@pytest.mark.req("TOOLS-REST")
def test_rest_errors_and_openapi(world: World) -> None:
    key = world.a.keys["read"]
    h = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{world.url}/api/v1/tools/list_devices", content=b"{bad",
                   headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    r = httpx.post(f"{world.url}/api/v1/tools/list_devices", content=b"[]",
                   headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    r = httpx.post(f"{world.url}/api/v1/tools/list_devices", content=b"{}",
                   headers={**h, "Content-Type": "text/plain"})
    assert r.status_code == 415
    r = httpx.post(f"{world.url}/api/v1/tools/get_device", json={"device_id": "nope"}, headers=h)
    body = r.json()
    assert r.status_code == 400 and body["error"] == "invalid_arguments"
    assert body["details"][0]["field"] == "device_id"
    r = httpx.post(f"{world.url}/api/v1/tools/list_devices",
                   content=json.dumps({"search": "x" * (1024 * 1024)}),
                   headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413
    r = httpx.post(f"{world.url}/api/v1/tools/list_devices", json={})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    doc = httpx.get(f"{world.url}/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    listed = {p.rsplit("/", 1)[1] for p in doc["paths"] if p.startswith("/api/v1/tools/")}
    assert listed == {s.name for s in default_registry() if s.base_tier < 4}
    for path, item in doc["paths"].items():
        if path.startswith("/api/v1/tools/"):
            schema = item["post"]["requestBody"]["content"]["application/json"]["schema"]
            assert schema["type"] == "object"


@pytest.mark.anyio
@pytest.mark.req("TOOLS-MCP", "TOOLS-SDK-CLIENT")
async def test_official_sdk_client_with_api_key(world: World) -> None:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run() -> tuple[list[str], dict[str, Any], bool]:
        headers = {"Authorization": f"Bearer {world.a.keys['write']}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
                streamable_http_client(f"{world.url}/mcp", http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                result = await session.call_tool("get_device",
                                                 {"device_id": world.a.device_ids[0]})
                denied = await session.call_tool("wipe_device",
                                                 {"device_id": world.a.device_ids[0]})
                return ([t.name for t in tools.tools], result.structured_content or {},
                        denied.is_error)

    names, device, denied = await run()
    assert "add_note" in names and "run_script" not in names
    assert device["id"] == world.a.device_ids[0]
    assert device["hostname"]
    assert denied is True


@pytest.mark.req("TOOLS-REST")
def test_openapi_and_challenges_name_the_public_url(world: World) -> None:
    """The documents and challenges a client follows point at the configured public URL."""
    doc = httpx.get(f"{world.url}/api/v1/openapi.json").json()
    assert doc["servers"] == [{"url": world.url}]
    challenge = rest(world, None, "list_devices", {}).headers["www-authenticate"]
    assert f'resource_metadata="{world.url}/.well-known/oauth-protected-resource/mcp"' in challenge


@pytest.mark.req("AUDIT-ONE-WRITER", "AUDIT-REDACT")
def test_arguments_jsonb_cannot_hold_are_still_audited(world: World) -> None:
    """NaN (which JSON parsers accept) and NUL (which PostgreSQL text cannot hold) in the
    arguments: the caller gets a clear answer and the call its audit entry."""
    key = world.a.keys["read"]
    marker = uuid.uuid4().hex
    h = {"Content-Type": "application/json", "Authorization": f"Bearer {key}",
         "X-Request-Id": f"nan-{marker}"}
    nan = httpx.post(f"{world.url}/api/v1/tools/list_devices", content=b'{"limit": NaN}',
                     headers=h, timeout=30)
    assert nan.status_code == 400 and nan.json()["error"] == "invalid_arguments"
    h["X-Request-Id"] = f"nul-{marker}"
    nul = httpx.post(f"{world.url}/api/v1/tools/list_devices",
                     content=b'{"search": "db\\u0000x"}', headers=h, timeout=30)
    assert nul.status_code == 400, nul.text
    assert nul.json()["error"] == "invalid_arguments"
    assert nul.json()["details"][0]["field"] == "search"
    rows = owner_sql(world, world.a.tenant.id,
                     "SELECT request_id, parameters FROM audit_log WHERE request_id LIKE :m"
                     " ORDER BY id", m=f"%-{marker}")
    assert [(r.request_id, r.parameters) for r in rows] == [
        (f"nan-{marker}", {"limit": "nan"}), (f"nul-{marker}", {"search": "db\\u0000x"})]
