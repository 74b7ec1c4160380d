"""``/mcp`` speaks MCP 2026-07-28 beside the 2025 revisions, on a live server (issue 13).

* The stateless era: ``server/discover``; every request's ``_meta`` envelope and its mirror in
  the ``MCP-Protocol-Version``, ``Mcp-Method`` and ``Mcp-Name`` headers, with the revision's
  error codes and HTTP statuses; removed and unknown methods are 404; results say
  ``resultType`` and who answered; ``tools/list`` is cacheable, private and in one order.
* The header picks the era: a 2025 header with a 2026 envelope is served as 2025.
* Whichever the era, the same gate, pipeline and audit entry; scope challenges name every scope
  a call needs in one challenge, and never ``offline_access``.
* The MCP SDK's own client: in its default mode it probes 2026-07-28 first, completes OAuth
  and calls tools without falling back; forced to the legacy era it still works.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp_types import methods as wire

from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.db import Database
from breeze_mcp.tools import default_registry
from tests.oauth_support import ACCEPT, HumanAgent, OAuthWorld, connect, module_world
from tests.support import ProvisionedDatabase
from tests.test_console import a_device, entries, last_id
from tests.test_oauth_clients import HeadlessBrowser, MemoryTokenStorage

MODERN = "2026-07-28"
VERSIONS = ["2025-03-26", "2025-06-18", "2025-11-25", MODERN]
PROTOCOL, CAPABILITIES, CLIENT_INFO, SERVER_INFO = (
    f"io.modelcontextprotocol/{k}"
    for k in ("protocolVersion", "clientCapabilities", "clientInfo", "serverInfo"))
#: An audit entry's per-request fields: everything else is the same call's whatever the era.
PER_REQUEST = {"id", "request_id", "occurred_at", "duration_ms"}
PRM_PATHS = ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource")


@dataclass
class Keys:
    read: str
    write: str
    execute: str


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


@pytest.fixture(scope="module")
def keys(world: OAuthWorld) -> Keys:
    async def make() -> Keys:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            made = [(await create_api_key(db, world.tenant, name=f"eras {scopes}",
                                          scopes=scopes, rate_limit="1000/minute"))[1]
                    for scopes in ("ai:read", "ai:read,ai:write", "ai:read,ai:write,ai:execute")]
            return Keys(*made)
        finally:
            await db.dispose()

    return asyncio.run(make())


def envelope(**overrides: Any) -> dict[str, Any]:
    """A request's ``_meta``: the 2026-07-28 envelope; an override of None leaves a key out."""
    meta = {PROTOCOL: MODERN, CAPABILITIES: {}, CLIENT_INFO: {"name": "eras-test",
                                                              "version": "1.0"}}
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


def modern(world: OAuthWorld, token: str, method: str, params: dict[str, Any] | None = None,
           *, meta: dict[str, Any] | None = None, headers: dict[str, str | None] | None = None,
           id_: Any = 7, version: str = MODERN) -> httpx.Response:
    """A request as a 2026-07-28 client sends it: ``_meta`` in the params, the headers that
    mirror it; ``headers`` override them (None leaves one out)."""
    params = dict(params or {})
    params["_meta"] = envelope() if meta is None else meta
    sent: dict[str, str | None] = {
        "Authorization": f"Bearer {token}", "Accept": ACCEPT,
        "Content-Type": "application/json", "MCP-Protocol-Version": version,
        "Mcp-Method": method,
        "Mcp-Name": params.get("name") if method == "tools/call" else None,
    }
    sent.update(headers or {})
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if id_ is not None:
        body["id"] = id_
    return httpx.post(world.mcp_url, content=json.dumps(body), timeout=30,
                      headers={k: v for k, v in sent.items() if v is not None})


def legacy(world: OAuthWorld, token: str, method: str, params: dict[str, Any] | None = None,
           *, version: str = "2025-11-25") -> httpx.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 7, "method": method}
    if params is not None:
        body["params"] = params
    return httpx.post(world.mcp_url, json=body, timeout=30, headers={
        "Authorization": f"Bearer {token}", "Accept": ACCEPT, "MCP-Protocol-Version": version})


def error_of(r: httpx.Response, status: int, code: int, id_: Any = 7) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["id"] == id_ and body["error"]["code"] == code, body
    error: dict[str, Any] = body["error"]
    return error


def result_of(r: httpx.Response, method: str, version: str = MODERN) -> dict[str, Any]:
    """A result, checked against the revision's own schema (the SDK's surface models)."""
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["result"]
    wire.validate_server_result(method, version, result)
    return result


def challenge_params(header: str) -> dict[str, str]:
    assert header.startswith("Bearer ") and header.count("Bearer") == 1, header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


# The header picks the era --------------------------------------------------------------------


@pytest.mark.req("MCP-ERA-BY-HEADER")
@pytest.mark.parametrize(("header", "era"), [
    (None, "handshake"),  # the transport's default: 2025-03-26
    ("2025-03-26", "handshake"), ("2025-06-18", "handshake"), ("2025-11-25", "handshake"),
    ("2024-11-05", "handshake"),  # a handshake revision: refused there, as before
    ("2026-07-28", "stateless"),
    ("2099-01-01", "stateless"), ("", "stateless"),  # told -32022 and what is spoken
])
def test_the_header_alone_picks_the_era(header: str | None, era: str) -> None:
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
    from starlette.datastructures import Headers

    from breeze_mcp import mcp_eras

    headers = Headers(raw=[] if header is None else [(b"mcp-protocol-version",
                                                      header.encode())])
    expected = {"handshake": mcp_eras.HANDSHAKE, "stateless": mcp_eras.STATELESS}[era]
    assert mcp_eras.era_of(headers) is expected
    # The revisions each era speaks are the SDK's revisions of that era.
    assert set(mcp_eras.HANDSHAKE_VERSIONS) <= set(HANDSHAKE_PROTOCOL_VERSIONS)
    assert set(mcp_eras.STATELESS_VERSIONS) <= set(MODERN_PROTOCOL_VERSIONS)


# The stateless era ---------------------------------------------------------------------------


@pytest.mark.req("MCP-2026-DISCOVER")
def test_discover_names_both_eras_capabilities_and_who_answers(world: OAuthWorld,
                                                               keys: Keys) -> None:
    result = result_of(modern(world, keys.read, "server/discover"), "server/discover")
    assert result["supportedVersions"] == VERSIONS
    assert result["capabilities"] == {"tools": {"listChanged": False}}
    assert "Tier 4 is never executed" in result["instructions"]
    assert result["resultType"] == "complete"
    assert result["_meta"][SERVER_INFO]["name"] == "breeze-mcp"
    assert result["_meta"][SERVER_INFO]["version"]
    # The same for every caller, so shareable; it changes only with a deployment.
    assert result["cacheScope"] == "public" and result["ttlMs"] > 0
    # Like every request on /mcp, it needs a credential: no token is a 401 with the challenge
    # an OAuth client starts from.
    r = modern(world, "", "server/discover", headers={"Authorization": None})
    assert r.status_code == 401 and "resource_metadata=" in r.headers["www-authenticate"]


@pytest.mark.req("MCP-2026-META")
def test_every_request_carries_its_envelope_and_the_headers_mirror_it(world: OAuthWorld,
                                                                      keys: Keys) -> None:
    key = keys.read
    call = {"name": "list_devices", "arguments": {"limit": 1}}
    bad_params = [
        ("no _meta", "server/discover", None, {}),
        ("no protocol version", "server/discover", None, envelope(**{PROTOCOL: None})),
        ("no client capabilities", "tools/list", None, envelope(**{CAPABILITIES: None})),
        ("capabilities not an object", "tools/list", None, envelope(**{CAPABILITIES: []})),
        ("client info not an object", "tools/list", None, envelope(**{CLIENT_INFO: "me"})),
        ("no _meta on a call", "tools/call", call, {}),
    ]
    for what, method, params, meta in bad_params:
        error = error_of(modern(world, key, method, params, meta=meta), 400, -32602)
        assert "_meta" in error["message"], (what, error)
    mismatches: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None,
                           dict[str, str | None]]] = [
        ("body names another version", "server/discover", None,
         envelope(**{PROTOCOL: "2025-11-25"}), {}),
        ("no Mcp-Method", "tools/list", None, None, {"Mcp-Method": None}),
        ("Mcp-Method names another method", "tools/list", None, None,
         {"Mcp-Method": "server/discover"}),
        ("no Mcp-Name", "tools/call", call, None, {"Mcp-Name": None}),
        ("Mcp-Name names another tool", "tools/call", call, None, {"Mcp-Name": "get_device"}),
        ("a bad base64 Mcp-Name", "tools/call", call, None, {"Mcp-Name": "=?base64?%%?="}),
    ]
    for what, method, sent, sent_meta, headers in mismatches:
        r = modern(world, key, method, sent, meta=sent_meta, headers=headers)
        assert error_of(r, 400, -32020)["message"], what
    # A routing header sent twice is a mismatch too (which copy would a proxy have read?).
    raw = httpx.Request("POST", world.mcp_url, content=json.dumps({
        "jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": envelope()}}),
        headers=[("Authorization", f"Bearer {key}"), ("Accept", ACCEPT),
                 ("Content-Type", "application/json"), ("MCP-Protocol-Version", MODERN),
                 ("Mcp-Method", "tools/list"), ("Mcp-Method", "tools/list")])
    with httpx.Client(timeout=30) as client:
        error_of(client.send(raw), 400, -32020)

    # A version we do not speak: -32022 with what we do (a modern client retries with one of
    # them instead of falling back), whatever the body carries.
    for version, meta in (("2099-01-01", envelope(**{PROTOCOL: "2099-01-01"})),
                          ("v999.0.0", {})):
        r = modern(world, key, "server/discover", meta=meta, version=version)
        error = error_of(r, 400, -32022)
        assert error["data"] == {"supported": VERSIONS, "requested": version}

    # What a request may leave out, or spell differently, and still be served.
    result_of(modern(world, key, "tools/list", meta=envelope(**{CLIENT_INFO: None})),
              "tools/list")
    name = base64.b64encode(b"list_devices").decode()
    result_of(modern(world, key, "tools/call", call, headers={"Mcp-Name": f"=?base64?{name}?="}),
              "tools/call")


_V = "io.modelcontextprotocol/protocolVersion"
_CAPS = "io.modelcontextprotocol/clientCapabilities"
_INFO = "io.modelcontextprotocol/clientInfo"
_LEFT_OUT = object()
_odd = st.one_of(st.none(), st.integers(), st.text(max_size=12), st.lists(st.integers(),
                                                                          max_size=2))


def _mostly(right: Any, *others: Any) -> st.SearchStrategy[Any]:
    """``right`` three times in four, else one of ``others`` or an odd value: most requests
    are plain but for one or two parts, which is where a shortcut could go wrong."""
    return st.one_of(st.just(right), st.just(right), st.just(right),
                     st.one_of(*(st.just(o) for o in others), _odd) if others else _odd)


@st.composite
def _requests(draw: st.DrawFn) -> tuple[list[tuple[bytes, bytes]], dict[str, Any], str]:
    """A request's routing headers and body, each part plain, wrong, odd or missing."""
    method = draw(_mostly("tools/call", "tools/list", "server/discover", "prompts/get",
                          "resources/read", "initialize"))
    if not isinstance(method, str):
        method = "tools/list"
    name = draw(_mostly("list_devices", "=?base64?bGlzdA==?=", "=?base64?", "", " x",
                        _LEFT_OUT))
    version = draw(_mostly("2026-07-28", "2025-06-18", "2099-01-01", _LEFT_OUT))
    meta: Any = {}
    for key, part in ((_V, version), (_CAPS, draw(_mostly({}, {"x": 1}, _LEFT_OUT))),
                      (_INFO, draw(_mostly({"name": "c", "version": "1"}, _LEFT_OUT)))):
        if part is not _LEFT_OUT:
            meta[key] = part
    meta = draw(_mostly(meta, _LEFT_OUT))
    params: dict[str, Any] = {"arguments": {}}
    if meta is not _LEFT_OUT:
        params["_meta"] = meta
    if name is not _LEFT_OUT:
        params["uri" if method == "resources/read" else "name"] = name
    headers: list[tuple[bytes, bytes]] = []
    for header, right in (("mcp-protocol-version", version), ("mcp-method", method),
                          ("mcp-name", name)):
        shape = draw(st.sampled_from(["right"] * 9 + ["wrong", "gone", "twice"]))
        value: str | None = right if isinstance(right, str) else "2026-07-28"
        if shape == "wrong":
            value = f"{value}x"
        elif shape == "gone":
            value = None
        if value is not None:
            headers += [(header.encode(), value.encode())] * (2 if shape == "twice" else 1)
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    if draw(st.integers(0, 9)) == 0:
        del message["params"]  # JSON-RPC lets a request leave its params out
    return headers, message, method


@pytest.mark.req("MCP-2026-META")
@settings(max_examples=3000, deadline=None)
@given(_requests())
def test_the_plain_case_shortcut_never_changes_an_outcome(
        request_: tuple[list[tuple[bytes, bytes]], dict[str, Any], str]) -> None:
    # 2026-07-28 requests take a shortcut past the SDK's ladder when they are plainly well
    # formed; whatever a request holds, the outcome must be the full check's.
    from starlette.datastructures import Headers

    from breeze_mcp import mcp_eras
    from breeze_mcp.http_request import IndexedHeaders

    raw, message, method = request_
    era = mcp_eras.STATELESS
    assert isinstance(era, mcp_eras._Stateless)
    routing = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    full = era.full_refusal(routing, dict(routing), message)
    # The endpoint's headers (the shortcut's), and Starlette's own (always the full check).
    assert era.refusal(IndexedHeaders({"headers": raw}), message, method) == full
    assert era.refusal(Headers(raw=raw), message, method) == full


@pytest.mark.req("MCP-2026-META")
def test_the_shortcut_is_taken_by_a_plain_call() -> None:
    # Else the property above holds of nothing: the shortcut must serve the common request.
    from breeze_mcp import mcp_eras
    from breeze_mcp.http_request import IndexedHeaders

    message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "list_devices", "arguments": {},
        "_meta": {_V: "2026-07-28", _CAPS: {}, _INFO: {"name": "c", "version": "1"}}}}
    headers = IndexedHeaders({"headers": [(b"mcp-protocol-version", b"2026-07-28"),
                                          (b"mcp-method", b"tools/call"),
                                          (b"mcp-name", b"list_devices")]})
    assert mcp_eras._plainly_served(headers, message, "tools/call")
    del message["params"]["_meta"][_INFO]  # client info is optional
    assert mcp_eras._plainly_served(headers, message, "tools/call")
    assert mcp_eras._plainly_served(headers, {**message, "method": "tools/list", "params": {
        "_meta": message["params"]["_meta"]}}, "tools/list") is False  # header says tools/call


@pytest.mark.req("MCP-2026-METHODS")
def test_removed_and_unknown_methods_are_404_and_notifications_202(world: OAuthWorld,
                                                                   keys: Keys) -> None:
    for method in ("initialize", "ping", "logging/setLevel", "resources/subscribe",
                   "resources/unsubscribe", "prompts/list", "unknown/method"):
        error = error_of(modern(world, keys.read, method, id_="req-9"), 404, -32601, "req-9")
        assert method in error["message"]
    r = modern(world, keys.read, "notifications/cancelled", id_=None)
    assert r.status_code == 202 and r.content == b""
    r = modern(world, keys.read, "notifications/cancelled", id_=None, version="2099-01-01")
    assert error_of(r, 400, -32022, None)["data"]["supported"] == VERSIONS
    # A request without an id is not a notification: refused, not silently accepted.
    error_of(modern(world, keys.read, "tools/list", id_=None), 400, -32600, None)
    for http_method in ("GET", "DELETE"):
        r = httpx.request(http_method, world.mcp_url, timeout=30, headers={
            "Authorization": f"Bearer {keys.read}", "MCP-Protocol-Version": MODERN,
            "Mcp-Session-Id": "whatever"})
        assert r.status_code == 405 and r.headers["allow"] == "POST"


@pytest.mark.req("MCP-2026-RESULTS", "TOOLS-MCP")
def test_results_say_complete_and_who_answered_and_tools_list_is_private(world: OAuthWorld,
                                                                         keys: Keys) -> None:
    registry = default_registry()
    listed: dict[str, list[str]] = {}
    for scope, key in (("read", keys.read), ("execute", keys.execute)):
        results = [result_of(modern(world, key, "tools/list"), "tools/list") for _ in range(3)]
        first = results[0]
        assert first["resultType"] == "complete" and first["_meta"][SERVER_INFO]["name"]
        # Cacheable, but only within this caller's authorization: it varies with the scopes.
        assert first["cacheScope"] == "private" and first["ttlMs"] > 0
        names = [t["name"] for t in first["tools"]]
        assert all([t["name"] for t in r["tools"]] == names for r in results)  # one order
        assert names == [s.name for s in registry.listable(3 if scope == "execute" else 1)]
        listed[scope] = names
        for tool in first["tools"]:
            hints = tool["annotations"]
            assert {k: type(v) for k, v in hints.items() if k.endswith("Hint")} == dict.fromkeys(
                ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"), bool)
            spec = registry.get(tool["name"])
            assert spec is not None and hints["readOnlyHint"] is (spec.max_tier == 1)
            assert hints["destructiveHint"] is (spec.max_tier == 3)
    assert set(listed["read"]) < set(listed["execute"])

    call = {"name": "list_devices", "arguments": {"limit": 2}}
    result = result_of(modern(world, keys.read, "tools/call", call), "tools/call")
    assert result["resultType"] == "complete" and result["isError"] is False
    assert result["_meta"] == {SERVER_INFO: result["_meta"][SERVER_INFO]}
    assert len(result["structuredContent"]["devices"]) == 2
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    # A tool's own error is a result the model can read, in this era's shape too.
    bad = {"name": "list_devices", "arguments": {"limit": 0}}
    result = result_of(modern(world, keys.read, "tools/call", bad), "tools/call")
    assert result["isError"] is True and result["resultType"] == "complete"
    assert result["_meta"][SERVER_INFO]["name"] == "breeze-mcp"
    # No such tool: invalid params, which this revision answers with HTTP 400.
    error = error_of(modern(world, keys.read, "tools/call", {"name": "no_such_tool"}), 400,
                     -32602)
    assert "Unknown tool" in error["message"]


@pytest.mark.req("MCP-ERA-BY-HEADER")
def test_a_2025_header_with_a_2026_envelope_is_served_as_2025(world: OAuthWorld,
                                                              keys: Keys) -> None:
    """The shape a widely used connector sends: header 2025-11-25, body ``_meta`` 2026-07-28.
    The header decides; the envelope is ignored like any other ``_meta``."""
    call = {"name": "list_devices", "arguments": {"limit": 1}, "_meta": envelope()}
    for version in ("2025-11-25", "2025-06-18"):
        r = legacy(world, keys.read, "tools/call", call, version=version)
        result = result_of(r, "tools/call", version)
        assert "resultType" not in result and "_meta" not in result
        assert len(result["structuredContent"]["devices"]) == 1
        r = legacy(world, keys.read, "tools/list", {"_meta": envelope()}, version=version)
        result = result_of(r, "tools/list", version)
        assert not {"resultType", "ttlMs", "cacheScope", "_meta"} & set(result)
        # 2025 has no server/discover, and answers an unknown method with HTTP 200.
        error_of(legacy(world, keys.read, "server/discover", {"_meta": envelope()},
                        version=version), 200, -32601)
        r = legacy(world, keys.read, "initialize", {
            "protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}, "_meta": envelope()}, version=version)
        assert result_of(r, "initialize", version)["protocolVersion"] == version
    # No header at all is 2025-03-26, as the transport specifies.
    r = httpx.post(world.mcp_url, timeout=30, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": envelope()}},
        headers={"Authorization": f"Bearer {keys.read}", "Accept": ACCEPT})
    assert "resultType" not in result_of(r, "tools/list", "2025-03-26")


# The same gate, pipeline and audit entry whichever the era -----------------------------------


@pytest.mark.req("MCP-ERA-SAME-PIPELINE", "SEED-AUDIT-PARITY")
def test_the_same_call_gets_the_same_gate_and_audit_entry_in_both_eras(world: OAuthWorld,
                                                                      keys: Keys) -> None:
    _, body = connect(world)
    token = body["access_token"]
    device = a_device(world)
    cases = [  # (credential, tool, arguments, outcome, HTTP status)
        (keys.read, "list_devices", {"limit": 3}, "success", 200),
        (keys.write, "add_note", {"device_id": device, "body": "eras"}, "success", 200),
        (keys.read, "add_note", {"device_id": device, "body": "eras"}, "blocked", 403),
        (keys.execute, "wipe_device", {"device_id": device}, "blocked", 200),
        (keys.read, "list_devices", {"limit": 0}, "error", 200),
        (keys.read, "no_such_tool", {}, "blocked", None),
        (token, "get_device", {"device_id": device}, "success", 200),
    ]
    for credential, tool, arguments, outcome, status in cases:
        seen: dict[str, dict[str, Any]] = {}
        answers: dict[str, httpx.Response] = {}
        for era in ("2025", "2026"):
            since = last_id(world)
            params = {"name": tool, "arguments": arguments}
            answers[era] = (legacy(world, credential, "tools/call", params) if era == "2025"
                            else modern(world, credential, "tools/call", params))
            [seen[era]] = entries(world, since, action=tool)
        assert seen["2025"]["outcome"] == outcome, seen["2025"]
        same = {k: v for k, v in seen["2025"].items() if k not in PER_REQUEST}
        other = {k: v for k, v in seen["2026"].items() if k not in PER_REQUEST}
        assert other == same, {k: (same[k], other[k]) for k in same if same[k] != other[k]}
        if status is not None:  # an unknown tool is an invalid-params error: 200 vs 400
            assert answers["2025"].status_code == answers["2026"].status_code == status
        if status == 403:
            assert (answers["2025"].headers["www-authenticate"]
                    == answers["2026"].headers["www-authenticate"])
            assert answers["2025"].json()["error"] == answers["2026"].json()["error"]

    # A call this era's envelope refuses is refused before it is a call, and audited all the
    # same, as a 2025 call with a revision we do not speak is.
    since = last_id(world)
    r = modern(world, keys.read, "tools/call", {"name": "list_devices"},
               headers={"Mcp-Name": "get_device"})
    error_of(r, 400, -32020)
    [entry] = entries(world, since, action="list_devices")
    assert entry["decision"] == "denied" and entry["deny_reason"] == "invalid_request"


@pytest.mark.req("MCP-SCOPE-CHALLENGE", "OAUTH-STEP-UP")
def test_a_scope_challenge_names_every_scope_the_call_needs_and_never_offline_access(
        world: OAuthWorld, keys: Keys) -> None:
    device = a_device(world)
    beyond_read = [
        ("add_note", {"device_id": device, "body": "step"}),
        ("manage_device", {"device_id": device, "action": "reboot"}),
        ("run_script", {"device_id": device, "interpreter": "bash", "script": "uptime"}),
    ]
    by_scopes = {"ai:read": keys.read, "ai:read ai:write": keys.write,
                 "ai:read ai:write ai:execute": keys.execute}
    for tool, arguments in beyond_read:
        params = {"name": tool, "arguments": arguments}
        for r in (legacy(world, keys.read, "tools/call", params),
                  modern(world, keys.read, "tools/call", params)):
            assert r.status_code == 403, r.text
            assert len(r.headers.get_list("www-authenticate")) == 1  # one challenge
            challenge = challenge_params(r.headers["www-authenticate"])
            assert challenge["error"] == "insufficient_scope"
            needed = challenge["scope"].split()
            assert "offline_access" not in needed
            # Every scope the call needs is named: a credential holding exactly the named
            # scopes (with the narrower ones a broader scope implies) makes the same call.
            holding = next(key for scopes, key in by_scopes.items()
                           if set(needed) <= set(scopes.split()))
            again = modern(world, holding, "tools/call", params)
            assert again.status_code == 200 and again.json()["result"]["isError"] is False, (
                tool, needed, again.text)
    # The 401 challenge of either era, and the protected resource's metadata, offer the
    # resource's scopes and never offline_access (refresh is the authorization server's
    # business, whose own metadata may list it).
    for r in (legacy(world, "bzk_not-a-key", "tools/list"),
              modern(world, "bzk_not-a-key", "tools/list"),
              modern(world, "", "tools/list", headers={"Authorization": None})):
        assert r.status_code == 401
        scopes = challenge_params(r.headers["www-authenticate"])["scope"].split()
        assert scopes == ["ai:read", "ai:write", "ai:execute"]
    for path in PRM_PATHS:
        document = httpx.get(f"{world.url}{path}", timeout=30).json()
        assert document["scopes_supported"] == ["ai:read", "ai:write", "ai:execute"]


# The MCP SDK's own client --------------------------------------------------------------------


@dataclass
class Traffic:
    """What the SDK client sent to /mcp: (JSON-RPC method, MCP-Protocol-Version header)."""

    mcp_url: str
    sent: list[tuple[str, str | None]]

    async def record(self, request: Any) -> None:
        if str(request.url) == self.mcp_url and request.method == "POST":
            method = json.loads(request.content).get("method")
            self.sent.append((method, request.headers.get("mcp-protocol-version")))


async def _sdk_run(world: OAuthWorld, auth: Any, mode: str, work: Any,
                   headers: dict[str, str] | None = None) -> tuple[Any, Traffic]:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    traffic = Traffic(world.mcp_url, [])
    async with httpx2.AsyncClient(auth=auth, headers=headers, timeout=30,
                                  event_hooks={"request": [traffic.record]}) as http:
        transport = streamable_http_client(world.mcp_url, http_client=http)
        async with Client(transport, mode=mode, read_timeout_seconds=30) as client:
            return await work(client), traffic


async def _use(client: Any) -> dict[str, Any]:
    tools = await client.list_tools()
    call = await client.call_tool("list_devices", {"limit": 2})
    return {"version": client.protocol_version, "server": client.server_info,
            "tools": [t.name for t in tools.tools], "call": call}


def _provider(world: OAuthWorld, browser: HeadlessBrowser, storage: MemoryTokenStorage) -> Any:
    from mcp.client.auth import OAuthClientProvider
    from mcp.shared.auth import OAuthClientMetadata

    metadata = OAuthClientMetadata.model_validate({
        "client_name": "MCP SDK, default mode", "redirect_uris": ["http://localhost:53682/cb"],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none"})
    return OAuthClientProvider(world.mcp_url, metadata, storage,
                               redirect_handler=browser.redirect,
                               callback_handler=browser.callback)


@pytest.mark.anyio
@pytest.mark.req("MCP-2026-SDK-CLIENT", "OAUTH-SDK-CLIENT")
async def test_the_sdk_client_probes_2026_completes_oauth_and_calls_tools(
        world: OAuthWorld) -> None:
    agent = HumanAgent(world, world.tech_email)
    try:
        storage = MemoryTokenStorage()
        browser = HeadlessBrowser(agent, grants=[None])
        used, traffic = await _sdk_run(world, _provider(world, browser, storage), "auto", _use)
        # The same client forced to the legacy era, with the tokens it holds.
        old, old_traffic = await _sdk_run(world, _provider(world, browser, storage), "legacy",
                                          _use)
    finally:
        agent.close()
    # The first request was the 2026-07-28 probe; it met the 401, the client authorized
    # (once), and from then on spoke 2026-07-28 only: no initialize, no fallback.
    assert traffic.sent[0] == ("server/discover", MODERN)
    assert len(browser.urls) == 1 and storage.tokens is not None
    assert {version for _, version in traffic.sent} == {MODERN}
    assert [m for m, _ in traffic.sent if m != "server/discover"] == ["tools/list",
                                                                     "tools/call"]
    assert used["version"] == MODERN and used["server"].name == "breeze-mcp"
    assert "run_script" in used["tools"]
    assert used["call"].is_error is False
    assert len(used["call"].structured_content["devices"]) == 2
    assert [m for m, _ in old_traffic.sent] == ["initialize", "notifications/initialized",
                                                "tools/list", "tools/call"]
    assert old["version"] == "2025-11-25" and old["tools"] == used["tools"]
    assert old["call"].structured_content == used["call"].structured_content
    assert len(browser.urls) == 1  # no second authorization


@pytest.mark.anyio
@pytest.mark.req("MCP-2026-SDK-CLIENT", "TOOLS-SDK-CLIENT")
async def test_the_sdk_client_with_an_api_key_in_either_mode(world: OAuthWorld,
                                                             keys: Keys) -> None:
    auth = {"Authorization": f"Bearer {keys.read}"}
    modern_use, modern_traffic = await _sdk_run(world, None, "auto", _use, auth)
    legacy_use, legacy_traffic = await _sdk_run(world, None, "legacy", _use, auth)
    assert modern_traffic.sent == [("server/discover", MODERN), ("tools/list", MODERN),
                                   ("tools/call", MODERN)]
    assert modern_use["version"] == MODERN
    # Forced to the legacy era: the initialize handshake, then the negotiated revision.
    assert [m for m, _ in legacy_traffic.sent] == ["initialize", "notifications/initialized",
                                                   "tools/list", "tools/call"]
    assert legacy_use["version"] == "2025-11-25"
    assert {v for m, v in legacy_traffic.sent if m.startswith("tools/")} == {"2025-11-25"}
    for used in (modern_use, legacy_use):
        assert used["server"].name == "breeze-mcp"
        assert used["tools"] == [s.name for s in default_registry().listable(1)]
        assert used["call"].is_error is False
        assert len(used["call"].structured_content["devices"]) == 2
