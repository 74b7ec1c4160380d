"""Hostile input at the tool-call edges: whatever the bytes, every tools call writes exactly
one audit entry, nothing answers 5xx, and the stored form of what was sent is lossless.

Pure functions (the escaped form, redaction, the deep JSON reader) are table-tested; the rest
runs over a real server and counts the audit rows each request wrote. The junk-body and deep
JSON tests also prove the ``/mcp`` and REST part of HARD-NO-5XX, still ``planned`` until the
catch-all that completes it lands: tag them with it then.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from breeze_mcp import audit
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.db import Database
from breeze_mcp.json_wire import loads
from tests.test_api import ACCEPT, World, owner_sql, world

__all__ = ["world"]  # the live server and its tenants, shared with tests/test_api.py

HOSTILE = {
    "nul": "wipe\x00device",
    "high_surrogate": "\ud800",
    "low_surrogate": "x\udfffy",
    "control": "a\x1b[31mred\x07\x7f\x85",
    "backslash_escape": "\\u0000 and \\\\",
}
DEPTH = 10_000


def deep(depth: int = DEPTH) -> str:
    """JSON text of ``depth`` nested objects."""
    return '{"a":' * depth + "1" + "}" * depth


# -- The escaped form ------------------------------------------------------------------------


@pytest.mark.req("HARD-AUDIT-ANY-BYTES")
def test_escape_round_trips_every_short_string_over_a_hostile_alphabet() -> None:
    """The round-trip property, checked exhaustively: every string of up to six characters
    over an alphabet of the characters that matter (the escape character, what follows it
    in an escape, what gets escaped, and plain text)."""
    alphabet = ["\\", "u", "0", "d", "f", "a", "\x00", "\ud800", "\udfff", "\n", "\x1b",
                "\x85", "é"]
    for length in range(6):
        for chars in itertools.product(alphabet, repeat=length):
            original = "".join(chars)
            stored = audit.escape(original)
            assert audit.unescape(stored) == original, (original, stored)
            stored.encode("utf-8")  # no lone surrogate left
            assert "\x00" not in stored


@pytest.mark.req("HARD-AUDIT-ANY-BYTES")
@pytest.mark.parametrize(
    ("original", "stored"),
    [
        ("plain text, é, 漢字, 🙂", "plain text, é, 漢字, 🙂"),
        ("line\nnext\ttab\r", "line\nnext\ttab\r"),
        ("C:\\Windows\\System32", "C:\\Windows\\System32"),  # an ordinary backslash stays
        ("wipe_device\x00", "wipe_device\\u0000"),
        ("\ud800", "\\ud800"),
        ("x\udfffy", "x\\udfffy"),
        ("\x1b[31m\x07\x7f\x85", "\\u001b[31m\\u0007\\u007f\\u0085"),
        ("\\u0000", "\\\\u0000"),  # text that looks like an escape is told apart
        ("\\\\", "\\\\\\"),
        ("end\\", "end\\"),
        ("\\\x00", "\\\\\\u0000"),
    ],
)
def test_the_escaped_form_is_readable(original: str, stored: str) -> None:
    assert audit.escape(original) == stored
    assert audit.unescape(stored) == original


@pytest.mark.req("HARD-AUDIT-ANY-BYTES")
def test_restore_inverts_the_stored_parameters() -> None:
    sent = {"na\x00me": ["\ud800", {"k\udfff": "C:\\\\u0041"}], "n": 1, "ok": True}
    assert audit.restore(audit.redact(sent)) == sent


@pytest.mark.req("HARD-NO-5XX", "HARD-AUDIT-ANY-BYTES")
def test_deep_nesting_is_read_and_stored_without_recursion() -> None:
    value = loads(deep().encode())
    assert loads(b'[1, {"a": [NaN, -Infinity]}, "\\ud800"]')[2] == "\ud800"
    stored = audit._capped({"x": value, "y": loads(("[" * DEPTH + "]" * DEPTH).encode())})
    json.dumps(stored)  # storable as it is
    level = stored["x"]
    for _ in range(audit.MAX_DEPTH):
        level = level["a"]
    assert level == "[truncated]"
    with pytest.raises(ValueError, match="nested this deep"):
        loads(b"[" * 100_000)
    for junk in (b"[1,]", b'{"a"}', b"[1 2]", b"[}", b"[1]x", b"01", b'"\x01"', b"nul"):
        with pytest.raises(ValueError):
            loads(b"[" * 2000 + junk + b"]" * 2000)


# -- Redaction ------------------------------------------------------------------------------


@pytest.mark.req("HARD-REDACT-INLINE")
@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("key", True), ("api_key", True), ("apiKey", True), ("APIKey", True), ("auth", True),
        ("authorization", True), ("x-auth-token", True), ("pwd", True), ("passwd", True),
        ("password", True), ("db_password", True), ("client_secret", True),
        ("credentials", True), ("accessToken", True), ("private_key", True), ("otp", True),
        ("monkey", False), ("keyword", False), ("keyboard", False), ("author", False),
        ("authority", False), ("device_id", False), ("hostname", False), ("hotpatch", False),
        ("passenger", False), ("bypass", False), ("script", False), ("body", False),
        ("key_id", False), ("apiKeyId", False), ("token_prefix", False),
        ("session_id", True), ("sessionId", True), ("key_secret_value", True),
    ],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    assert audit.secret_key(key) is secret
    assert (audit.redact({key: "v"})[key] == audit.REDACTED) is secret


@pytest.mark.req("HARD-REDACT-INLINE")
@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ('curl -H "Authorization: Bearer abc.def-123" https://x/ && uptime',
         'curl -H "Authorization: Bearer [redacted]" https://x/ && uptime'),
        ("use bzk_0123456789abcdef0123 here", "use [redacted] here"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTYifQ.c2lnbmF0dXJl end",
         "jwt [redacted] end"),
        ("git clone https://ghp_" + "a" * 36 + "@github.com/x", "git clone https://[redacted]@github.com/x"),
        ("token github_pat_" + "B" * 30 + " ok", "token [redacted] ok"),
        ("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE; ls",
         "export AWS_ACCESS_KEY_ID=[redacted]; ls"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [redacted]"),
        ("slack xoxb-1234567890-abcdef done", "slack [redacted] done"),
        ("mysql --host db password=hunter2 -e 'select 1'",
         "mysql --host db password=[redacted] -e 'select 1'"),
        ("https://x/?user=a&pwd=s3cret&page=2", "https://x/?user=a&pwd=[redacted]&page=2"),
        ('DB_PASSWORD: "two words"', "DB_PASSWORD: [redacted]"),
        ("a\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\nb",
         "a\n[redacted]\nb"),
        ("Get-Service | Where-Object Status -eq Running", None),  # nothing secret: kept
        ("the keyword and the author", None),
    ],
)
def test_secrets_are_masked_inside_a_string(sent: str, stored: str | None) -> None:
    assert audit.redact({"script": sent})["script"] == (stored or sent)


# -- Over a real server ----------------------------------------------------------------------


def _key(world: World, scopes: str, rate_limit: str = "10000/minute") -> tuple[str, str]:
    """A fresh API key of tenant a: (key, credential id), so rows can be counted per key."""
    async def make() -> tuple[str, str]:
        db = Database(world.runtime_url, pool_size=1)
        try:
            info, key = await create_api_key(db, world.a.tenant, name="hostile", scopes=scopes,
                                             rate_limit=rate_limit)
            return key, str(info.id)
        finally:
            await db.dispose()

    return asyncio.run(make())


def _rows(world: World, credential: str) -> list[Any]:
    """The entries of calls made with one key (not the entry of its creation)."""
    return owner_sql(world, world.a.tenant.id,
                     "SELECT * FROM audit_log WHERE credential_id = :c"
                     " AND actor_type = 'api_key' ORDER BY id",
                     c=credential)


def _post_mcp(world: World, key: str, body: str | bytes,
              headers: dict[str, Any] | None = None) -> httpx.Response:
    content = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return httpx.post(f"{world.url}/mcp", content=content, timeout=60, headers={
        "Content-Type": "application/json", "Accept": ACCEPT, "Authorization": f"Bearer {key}",
        "MCP-Protocol-Version": "2025-06-18", **(headers or {})})


def _post_rest(world: World, key: str, tool: str, body: str | bytes,
               headers: dict[str, Any] | None = None) -> httpx.Response:
    content = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return httpx.post(f"{world.url}/api/v1/tools/{tool}", content=content, timeout=60,
                      headers={"Content-Type": "application/json",
                               "Authorization": f"Bearer {key}", **(headers or {})})


def _call(name: str, arguments: str, id_: str = "1") -> str:
    """A tools/call message as JSON text (the arguments already JSON text)."""
    return ('{"jsonrpc":"2.0","id":' + id_ + ',"method":"tools/call","params":{"name":'
            + name + ',"arguments":' + arguments + "}}")


def _j(value: Any) -> str:
    return json.dumps(value)  # ensure_ascii: lone surrogates and NUL as \\u escapes


def _one_entry_each(world: World, credential: str, send: Callable[..., httpx.Response],
                    *args: Any) -> tuple[httpx.Response, Any]:
    """``send(world, *args)``, checked to be no 5xx and to write exactly one audit row."""
    before = len(_rows(world, credential))
    response = send(world, *args)
    assert response.status_code < 500, response.text
    rows = _rows(world, credential)
    assert len(rows) == before + 1, (response.status_code, response.text)
    return response, rows[-1]


@pytest.mark.req("HARD-NO-5XX", "HARD-AUDIT-ANY-BYTES")
@pytest.mark.parametrize("label", sorted(HOSTILE))
def test_every_refused_or_failed_call_is_audited_over_mcp(world: World, label: str) -> None:
    value = HOSTILE[label]
    key, credential = _key(world, "ai:read")
    device = world.a.device_ids[0]
    cases = [
        # (tool name, arguments as JSON text, the entry's deny_reason; None: not denied)
        ("wipe_device" + value, _j({"device_id": device}), "unknown_tool"),
        ("wipe_device", _j({"device_id": value}), "tier4_tool"),
        ("wipe_device", _j({value: device}), "tier4_tool"),
        ("wipe_device", '{"device_id":' + deep() + "}", "tier4_tool"),
        ("manage_alert", _j({"alert_id": value, "action": value}), "unknown_or_tier4_action"),
        ("add_note", _j({"device_id": device, "body": value}), "insufficient_scope"),
        ("list_devices", _j({"search": value}), None),
        ("list_devices", _j({value: 1}), None),
        ("get_device", _j({"device_id": value}), None),
        ("list_devices", '{"search":' + deep() + "}", None),
    ]
    for name, arguments, reason in cases:
        response, row = _one_entry_each(world, credential, _post_mcp, key,
                                        _call(_j(name), arguments))
        assert audit.unescape(row.action) == name
        assert row.deny_reason == reason, (name, row.deny_reason)
        if reason is not None:
            assert row.decision == "denied" and row.risk_tier in (2, 4)
        assert response.json()["id"] == 1


@pytest.mark.req("HARD-NO-5XX", "HARD-AUDIT-ANY-BYTES")
@pytest.mark.parametrize("label", sorted(HOSTILE))
def test_every_refused_or_failed_call_is_audited_over_rest(world: World, label: str) -> None:
    value = HOSTILE[label]
    key, credential = _key(world, "ai:read")
    device = world.a.device_ids[0]
    cases = [
        ("wipe_device", _j({"device_id": value}), "tier4_tool"),
        ("wipe_device", _j({value: device}), "tier4_tool"),
        ("wipe_device", '{"device_id":' + deep() + "}", "tier4_tool"),
        ("manage_alert", _j({"alert_id": value, "action": value}), "unknown_or_tier4_action"),
        ("add_note", _j({"device_id": device, "body": value}), "insufficient_scope"),
        ("list_devices", _j({"search": value}), None),
        ("list_devices", _j({value: 1}), None),
        ("list_devices", '{"search":' + deep() + "}", None),
        ("get_device", _j({"device_id": value}), None),
        ("no_such_tool", _j({"x": value}), "unknown_tool"),
    ]
    for tool, body, reason in cases:
        _response, row = _one_entry_each(world, credential, _post_rest, key, tool, body)
        assert row.action == tool
        assert row.deny_reason == reason, (tool, row.deny_reason)
    # The stored arguments give back exactly what was sent.
    _response, row = _one_entry_each(world, credential, _post_rest, key, "wipe_device",
                                     _j({value: value, "n": [value]}))
    assert audit.restore(row.parameters) == {value: value, "n": [value]}


@pytest.mark.req("HARD-AUDIT-ANY-BYTES")
def test_arguments_that_text_cannot_hold_are_refused_and_audited(world: World) -> None:
    key, credential = _key(world, "ai:read,ai:write")
    device = world.a.device_ids[0]
    for body in ("\ud800", "ok\x00", "x\udfff"):
        response, row = _one_entry_each(world, credential, _post_rest, key, "add_note",
                                        _j({"device_id": device, "body": body}))
        assert response.status_code == 400, response.text
        assert response.json()["details"][0]["field"] == "body"
        assert row.outcome == "error" and "lone surrogates" in row.error
        assert audit.restore(row.parameters)["body"] == body


@pytest.mark.req("HARD-AUDIT-ANY-BYTES")
def test_the_rate_limited_call_is_audited_whatever_its_name(world: World) -> None:
    key, credential = _key(world, "ai:read", rate_limit="1/minute")
    _post_rest(world, key, "list_devices", "{}")
    for name in ("wipe_device\x00", "\ud800"):
        response, row = _one_entry_each(world, credential, _post_mcp, key,
                                        _call(_j(name), _j({"k\udfff": "\x00"})))
        assert response.status_code == 429
        assert row.outcome == "rate_limited" and audit.unescape(row.action) == name


def _raw_post(world: World, path: str, head: bytes, body: bytes) -> tuple[int, bytes]:
    """A request written byte for byte (header values no client library would send)."""
    host, port = world.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b":"
                     + port.encode() + b"\r\nConnection: close\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n" + head + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.mark.req("HARD-AUDIT-ANY-BYTES")
def test_hostile_headers_are_stored_escaped(world: World) -> None:
    key, credential = _key(world, "ai:read")
    # Bytes past ASCII (obs-text) reach the application, latin-1 as HTTP reads them: U+0085
    # is a C1 control character, escaped in the entry.
    agent = b"bot caf\xe9 \x85\xff"
    head = (b"Authorization: Bearer " + key.encode() + b"\r\nContent-Type: application/json"
            b"\r\nAccept: application/json\r\nUser-Agent: " + agent
            + b"\r\nX-Request-Id: id\x85\r\n")
    # A refused tool call is a JSON-RPC error inside a 200 over MCP, a 403 over REST.
    for path, body, refused in (("/mcp", _call('"wipe_device"', "{}").encode(), 200),
                                ("/api/v1/tools/wipe_device", b"{}", 403)):
        before = len(_rows(world, credential))
        status, _ = _raw_post(world, path, head, body)
        rows = _rows(world, credential)
        assert status == refused, (path, status)
        assert len(rows) == before + 1
        assert rows[-1].user_agent == "bot café \\u0085ÿ"
        assert audit.unescape(rows[-1].user_agent) == agent.decode("latin-1")


@pytest.mark.req("HARD-AUDIT-ANY-BYTES", "HARD-HTTP-FRAMING")
@pytest.mark.parametrize("value", [b"bot\x1b[31m", b"bot\x7f", b"bot\x00", b"bot\x01x"])
def test_control_characters_in_a_header_are_refused_before_anything_runs(
        world: World, value: bytes) -> None:
    # RFC 9110 5.5: control characters are invalid in a field value. The HTTP parser refuses
    # the request (400, the connection closed) before a credential is read or a tool looked
    # up, so nothing about the tool is answered: there is no call to audit, and no probe.
    key, credential = _key(world, "ai:read")
    head = (b"Authorization: Bearer " + key.encode() + b"\r\nContent-Type: application/json"
            b"\r\nAccept: application/json\r\nUser-Agent: " + value + b"\r\n")
    for path, body in (("/mcp", _call('"wipe_device"', "{}").encode()),
                       ("/api/v1/tools/wipe_device", b"{}")):
        before = len(_rows(world, credential))
        status, answer = _raw_post(world, path, head, body)
        assert status == 400, (path, answer[:200])
        assert b"wipe_device" not in answer and b"tier" not in answer.lower()
        assert len(_rows(world, credential)) == before


# -- JSON-RPC without an id, and other malformed messages ---------------------------------------


@pytest.mark.req("HARD-RPC-NO-ID", "HARD-AUDIT-ANY-BYTES")
def test_a_request_without_an_id_is_invalid_and_a_tools_call_is_audited(world: World) -> None:
    key, credential = _key(world, "ai:read")
    for name in ("list_devices", "wipe_device", "no_such\x00tool"):
        message = ('{"jsonrpc":"2.0","method":"tools/call","params":{"name":' + _j(name)
                   + ',"arguments":{"limit":1}}}')
        response, row = _one_entry_each(world, credential, _post_mcp, key, message)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == -32600
        assert "needs an id" in response.json()["error"]["message"]
        assert audit.unescape(row.action) == name
        assert (row.decision, row.outcome, row.deny_reason) == (
            "denied", "error", "invalid_request")
        assert "needs an id" in row.error
    # Nothing ran: the list_devices without an id read nothing and counted as refused.
    for method in ("tools/list", "initialize", "ping", "resources/list"):
        before = len(_rows(world, credential))
        response = _post_mcp(world, key, _j({"jsonrpc": "2.0", "method": method}))
        assert response.status_code == 400 and response.json()["error"]["code"] == -32600
        assert response.json()["id"] is None
        assert len(_rows(world, credential)) == before  # not a tool call: nothing to audit
    response = _post_mcp(world, key, '{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert response.status_code == 202


@pytest.mark.req("HARD-NO-5XX", "HARD-RPC-NO-ID", "HARD-AUDIT-ANY-BYTES")
def test_malformed_tools_calls_are_answered_in_shape_and_audited(world: World) -> None:
    key, credential = _key(world, "ai:read")
    cases = [
        # (message, JSON-RPC code, HTTP status)
        ('{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"x"}}', -32600, 400),
        ('{"jsonrpc":"2.0","id":1.5,"method":"tools/call","params":{"name":"x"}}', -32600, 400),
        ('{"jsonrpc":"2.0","id":[1],"method":"tools/call","params":{"name":"x"}}', -32600, 400),
        ('{"jsonrpc":"2.0","id":true,"method":"tools/call","params":{}}', -32600, 400),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1,2]}', -32602, 200),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}', -32602, 200),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":' + deep() + "}}",
         -32602, 200),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call",'
         '"params":{"name":"list_devices","arguments":"\\ud800"}}', -32602, 200),
        ('{"jsonrpc":"2.0","id":1,"method":"tools/call",'
         '"params":{"name":"list_devices","arguments":' + "[" * 5000 + "]" * 5000 + "}}",
         -32602, 200),
    ]
    for message, code, status in cases:
        response, row = _one_entry_each(world, credential, _post_mcp, key, message)
        assert response.status_code == status, (message[:80], response.text[:200])
        assert response.json()["error"]["code"] == code
        assert row.deny_reason == "invalid_request"
    # An unsupported protocol revision on a tools call: refused, and audited.
    response, row = _one_entry_each(world, credential, _post_mcp, key,
                                    _call('"list_devices"', "{}"),
                                    {"MCP-Protocol-Version": "1999-01-01"})
    assert response.status_code == 400 and row.deny_reason == "invalid_request"


@pytest.mark.req("HARD-NO-5XX", "HARD-AUDIT-ANY-BYTES")
def test_junk_on_mcp_is_answered_in_shape(world: World) -> None:
    key, credential = _key(world, "ai:read")
    for body, code in (
        (b"[" * 100_000, -32700),
        (b'{"a":' * 100_000, -32700),
        (b"\xff\xfe\x00", -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":' + b"[" * 3000 + b"]" * 3000
         + b"}", -32602),
        (b'{"jsonrpc":"2.0","id":"\\ud800","method":"no/such"}', -32601),
        (b'{"jsonrpc":"2.0","id":1,"method":"\\udfff\\u0000"}', -32601),
        (b'{"jsonrpc":"2.0","id":1,"method":' + b"[" * 3000 + b"]" * 3000 + b"}", -32600),
        (b'{"jsonrpc":"2.0","id":' + b"9" * 4000 + b',"method":"ping"}', None),
        (b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}', -32700),
        (b'{"jsonrpc":"2.0","id":NaN,"method":"ping"}', -32600),
        (b'{"jsonrpc":"2.0","id":1e999,"method":"ping"}', -32600),
        (b'{"jsonrpc":"2.0","\\ud800":1,"id":1,"method":"ping"}', None),
    ):
        response = _post_mcp(world, key, body)
        assert response.status_code < 500, (body[:60], response.text[:200])
        message = response.json()
        if code is None:
            assert message["result"] == {}
        else:
            assert message["error"]["code"] == code, (body[:60], message)
    echoed = _post_mcp(world, key, b'{"jsonrpc":"2.0","id":"\\ud800","method":"no/such"}')
    assert echoed.json()["id"] == "\ud800"  # the id comes back exactly as it was sent
    assert _rows(world, credential) == []  # none of these was a tools call


@pytest.mark.req("HARD-NO-5XX", "HARD-AUDIT-ANY-BYTES")
def test_junk_bodies_on_rest_are_invalid_json_and_audited(world: World) -> None:
    key, credential = _key(world, "ai:read")
    for body, error in (
        (b"[" * 100_000, "invalid_json"),
        (b'{"limit":' + b"[" * 100_000, "invalid_json"),
        (b"\xff\xfe\x00", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"\\ud800"', "invalid_json"),
        (b'{"limit": Infinity}', "invalid_arguments"),
        (b'{"limit": ' + b"9" * 4000 + b"}", "invalid_arguments"),
        (b'{"limit": ' + b"9" * 5000 + b"}", "invalid_json"),
        (b'{"\\ud800\\u0000": 1}', "invalid_arguments"),
    ):
        response, row = _one_entry_each(world, credential, _post_rest, key, "list_devices",
                                        body)
        assert response.status_code == 400 and response.json()["error"] == error, body[:40]
        assert row.action == "list_devices"


# -- REST shapes, the unknown tool's tier, the 421 ----------------------------------------------


@pytest.mark.req("FH-REST-SHAPES")
def test_rest_404_and_405_are_json(world: World) -> None:
    key = world.a.keys["read"]
    auth = {"Authorization": f"Bearer {key}"}
    for method, path, status in (
        ("GET", "/api/v1/nope", 404), ("POST", "/api/v2/tools/list_devices", 404),
        ("GET", "/api/v1/tools/list_devices", 405), ("DELETE", "/api/v1/tools", 405),
        ("PUT", "/api/v1/openapi.json", 405), ("POST", "/api/v1/oauth/grants", 405),
    ):
        response = httpx.request(method, f"{world.url}{path}", headers=auth, timeout=30)
        assert response.status_code == status, (method, path)
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"error", "message"} and body["message"]
        assert body["error"] == ("not_found" if status == 404 else "method_not_allowed")
        if status == 405:
            assert response.headers["allow"]
    # Outside the API, pages keep their plain answers.
    assert httpx.get(f"{world.url}/no-such-page").headers["content-type"].startswith(
        "text/plain")


@pytest.mark.req("FH-REST-SHAPES")
def test_openapi_lists_the_admin_grant_endpoints_with_their_scope(world: World) -> None:
    doc = httpx.get(f"{world.url}/api/v1/openapi.json").json()
    expected = {
        ("/api/v1/oauth/grants", "get"): "ai:read",
        ("/api/v1/oauth/grants/{grant_id}", "delete"): "ai:write",
        ("/api/v1/oauth/clients/{client_id}/grants", "delete"): "ai:write",
    }
    for (path, method), scope in expected.items():
        operation = doc["paths"][path][method]
        assert operation["security"] == [{"bearer": [scope]}]
        assert operation["x-required-role"] == ["owner", "admin"]
        assert scope in operation["description"] and "owner or admin" in operation["description"]


@pytest.mark.req("FH-REST-SHAPES")
def test_an_unknown_tool_claims_no_tier(world: World) -> None:
    key, credential = _key(world, "ai:read")
    rest = _post_rest(world, key, "no_such_tool", "{}")
    assert rest.status_code == 404 and rest.json()["error"] == "unknown_tool"
    assert "tier" not in rest.json()
    mcp = _post_mcp(world, key, _call('"no_such_tool"', "{}"))
    assert mcp.json()["error"]["code"] == -32602 and "tier" not in mcp.text
    # Still gated as Tier 4 and audited so.
    rows = _rows(world, credential)
    assert [(r.deny_reason, r.risk_tier) for r in rows] == [("unknown_tool", 4)] * 2
    # A tool that exists with an unknown action is Tier 4, and says so.
    blocked = _post_rest(world, key, "manage_alert",
                         _j({"alert_id": world.a.alert_ids[0], "action": "explode"}))
    assert blocked.status_code == 403 and blocked.json()["tier"] == 4
    assert "'explode'" in blocked.json()["message"]


@pytest.mark.req("FH-HOST-421")
def test_a_bad_host_is_told_the_expected_host_and_the_setting(world: World) -> None:
    response = httpx.post(f"{world.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                          headers={"Host": "evil.example", "Accept": ACCEPT}, timeout=30)
    assert response.status_code == 421
    message = response.json()["error"]["message"]
    expected = world.url.removeprefix("http://")
    assert "'evil.example'" in message and expected in message
    assert f"BREEZE_PUBLIC_URL={world.url}" in message


@pytest.mark.req("HARD-NO-5XX", "HARD-AUDIT-ANY-BYTES")
def test_a_hostile_tool_name_in_the_rest_path_is_audited(world: World) -> None:
    key, credential = _key(world, "ai:read")
    for raw in ("wipe%00device", "%ED%A0%80", "%FF%FE", "x%1B%5B31m", "%5Cu0000"):
        response, row = _one_entry_each(
            world, credential, lambda _world, path: httpx.post(
                f"{world.url}/api/v1/tools/{path}", content=b"{}", timeout=30,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}),
            raw)
        assert response.status_code == 404 and response.json()["error"] == "unknown_tool"
        assert row.deny_reason == "unknown_tool" and row.risk_tier == 4
        assert audit.escape(audit.unescape(row.action)) == row.action
