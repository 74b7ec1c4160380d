"""No input gives a 5xx, and every tools call is audited once: generated junk thrown at every
endpoint of a real server (hypothesis), and the per-surface catch-all for what escapes anyway.

The number of generated requests per test is ``BREEZE_FUZZ_EXAMPLES`` (default 60), so
``make test`` stays bounded; raise it for a longer hunt.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from breeze_mcp.app import create_app
from breeze_mcp.auth.accounts import create_tenant, create_user
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.config import load_settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.errors import surface_of
from breeze_mcp.tools import default_registry
from breeze_mcp.tools.demo import seed_demo_data
from tests.support import LiveServer, ProvisionedDatabase, free_port

EXAMPLES = int(os.environ.get("BREEZE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

TOOLS = [spec.name for spec in default_registry()]


@dataclass
class Target:
    url: str
    key: str
    tenant_id: uuid.UUID
    owner_url: str
    engine: sa.Engine

    def audit_rows(self, request_id: str) -> int:
        with self.engine.begin() as conn:
            conn.execute(sa.text("SELECT set_config('breeze.tenant_id', :t, true)"),
                         {"t": str(self.tenant_id)})
            return int(conn.execute(
                sa.text("SELECT count(*) FROM audit_log WHERE request_id = :r"),
                {"r": request_id}).scalar_one())


async def _boom(request: Request) -> Response:
    raise RuntimeError("internal detail: do not show me")


@pytest.fixture(scope="module")
def target(test_db: ProvisionedDatabase,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    async def build() -> tuple[uuid.UUID, str]:
        db = Database(test_db.runtime_url, pool_size=2)
        try:
            tenant = await create_tenant(db, "Fuzz", slug=f"fuzz-{uuid.uuid4().hex[:6]}")
            await seed_demo_data(db, tenant.id)
            owner = await create_user(db, tenant, email=f"fuzz-{tenant.slug}@example.com",
                                      password="a-Strong-passphrase-42", role="owner")
            _, key = await create_api_key(db, tenant, name="fuzz",
                                          scopes="ai:read,ai:write,ai:execute",
                                          creator_email=owner.email,
                                          rate_limit="100000/minute")
            return tenant.id, key
        finally:
            await db.dispose()

    tenant_id, key = asyncio.run(build())
    port = free_port()
    config = load_settings(
        state_dir=tmp_path_factory.mktemp("state"),
        database_url=test_db.runtime_url,
        public_url=f"http://127.0.0.1:{port}",
        # Loopback is the proxy here, so forwarding headers are parsed, not ignored.
        trusted_proxies=["127.0.0.1/32"],
        auth_failure_rate_limit="100000/minute",
        dcr_rate_limit="100000/minute",
        dcr_global_rate_limit="100000/minute",
    )
    app = create_app(config, test_db.runtime_url)
    # One route per surface that fails in a way no endpoint foresaw: the catch-all's tests.
    for path in ("/mcp/boom", "/api/v1/boom", "/.well-known/boom", "/boom"):
        app.router.routes.append(Route(path, _boom, methods=["GET", "POST"]))
    engine = sa.create_engine(sqlalchemy_url(test_db.owner_url))
    try:
        with LiveServer(app, port=port) as server:
            yield Target(server.url, key, tenant_id, test_db.owner_url, engine)
    finally:
        engine.dispose()


# Strategies ---------------------------------------------------------------------------------

NASTY = ["\x00", "\ud800", "\udfff", "\u202e", "\x1b[31m", "\r\n", "%00", "\\", "'", '"',
         "\ufeff", "\U0010ffff", "wipe_device\x00", "a" * 3000, "../../etc/passwd", "%ED%A0%80",
         "fe80::1%eth0", "[::1", "http://h:99999/mcp"]
text = st.one_of(st.text(st.characters(exclude_categories=()), max_size=30),
                 st.sampled_from(NASTY))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), text)
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                     st.dictionaries(text, inner, max_size=4)),
    max_leaves=12)
DEEP = ["[" * 100_000, '{"a":' * 20_000 + "1" + "}" * 20_000, "[" * 5000 + "]" * 5000]
# Header values as an HTTP/1.1 client can send them (no CR, LF or NUL; any other octet).
header_bytes = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7f).strip(b" ") or b"x")


@dataclass(frozen=True)
class Nested:
    """An object nested ``depth`` levels deep, written out as JSON text directly (the json
    module itself cannot encode it)."""

    depth: int

    def text(self) -> str:
        return '{"k":' * self.depth + '"deep"' + "}" * self.depth


def _json(value: Any) -> bytes:
    """JSON text as a client would send it, lone surrogates escaped (as json.dumps does);
    a :class:`Nested` value anywhere inside is written out in place."""
    deep: list[Nested] = []

    def placeholder(obj: object) -> str:
        if isinstance(obj, Nested):
            deep.append(obj)
            return f"@@nested{len(deep) - 1}@@"
        raise TypeError(type(obj).__name__)

    text = json.dumps(value, allow_nan=True, default=placeholder)
    for index, nested in enumerate(deep):
        text = text.replace(f'"@@nested{index}@@"', nested.text(), 1)
    return text.encode()


def _quote(value: str) -> str:
    return quote_from_bytes(value.encode("utf-8", "surrogatepass"), safe="")


@st.composite
def credentials(draw: st.DrawFn, key: str) -> str | None:
    choice = draw(st.sampled_from(["key", "none", "junk", "typed", "scheme"]))
    if choice == "key":
        return f"Bearer {key}"
    if choice == "none":
        return None
    if choice == "typed":
        prefix = draw(st.sampled_from(["bzk_", "bza_", "bzr_", "bzs_"]))
        return "Bearer " + prefix + draw(st.text("abcdefABCDEF0123456789_-", max_size=80))
    if choice == "scheme":
        return draw(st.sampled_from(["Basic Zm9vOmJhcg==", "Bearer", "Bearer a b", "bearer x"]))
    return "Bearer " + draw(header_bytes).decode("latin-1")


@st.composite
def junk_headers(draw: st.DrawFn) -> dict[str, bytes]:
    headers: dict[str, bytes] = {}
    for name in draw(st.lists(st.sampled_from(
            ["user-agent", "x-forwarded-for", "forwarded", "origin", "referer", "cookie",
             "mcp-protocol-version", "accept"]), max_size=3, unique=True)):
        headers[name] = draw(st.one_of(header_bytes, st.sampled_from(
            [b"fe80::1%eth0", b"1.2.3.4, fe80::1%eth0", b"for=\"[fe80::1%25eth0]\"",
             b", , ,", b"999.1.1.1", b"null", b"2025-06-18", b"2026-07-28"])))
    return headers


def _send(target: Target, method: str, path: str, *, body: bytes | None = None,
          content_type: str | None = None, authorization: str | None = None,
          headers: dict[str, bytes] | None = None) -> tuple[httpx.Response, str]:
    request_id = uuid.uuid4().hex
    sent: dict[bytes, bytes] = {b"x-request-id": request_id.encode()}
    sent.update((name.encode(), value) for name, value in (headers or {}).items())
    if content_type is not None:
        sent[b"content-type"] = content_type.encode()
    if authorization is not None:
        sent[b"authorization"] = authorization.encode("latin-1", "replace")
    response = httpx.request(method, target.url + path, content=body, headers=sent,
                             timeout=60)
    assert response.status_code < 500, (method, path, body and body[:300], response.text[:500])
    return response, request_id


# The property tests -------------------------------------------------------------------------


@pytest.mark.req("HARD-FUZZ", "HARD-NO-5XX", "HARD-AUDIT-ANY-BYTES")
@FUZZ
@given(data=st.data())
def test_mcp_tools_calls_never_5xx_and_are_audited_once(target: Target, data: st.DataObject
                                                        ) -> None:
    name = data.draw(st.one_of(st.sampled_from(TOOLS), text), label="name")
    arguments = data.draw(st.one_of(
        st.dictionaries(text, json_values, max_size=5),
        st.builds(Nested, st.integers(min_value=1000, max_value=10_000)),
        json_values), label="arguments")
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": "tools/call",
                               "params": {"name": name, "arguments": arguments}}
    with_id = data.draw(st.booleans(), label="with id")
    if with_id:
        message["id"] = data.draw(st.one_of(st.integers(0, 2**31), st.text(max_size=10)))
    credential = data.draw(credentials(target.key), label="credential")
    response, request_id = _send(
        target, "POST", "/mcp", body=_json(message), content_type="application/json",
        authorization=credential,
        headers={"accept": b"application/json",
                 **data.draw(junk_headers().filter(lambda h: "accept" not in h),
                             label="headers")})
    if credential == f"Bearer {target.key}" and response.status_code != 403 \
            and isinstance(arguments, (dict, Nested)):
        # Authenticated, past the Origin check, a well-formed call: exactly one entry,
        # whatever the bytes of its name and arguments.
        assert target.audit_rows(request_id) == 1, (message, response.text[:300])
    else:
        assert target.audit_rows(request_id) <= 1


@pytest.mark.req("HARD-FUZZ", "HARD-NO-5XX")
@FUZZ
@given(data=st.data())
def test_mcp_junk_messages_never_5xx(target: Target, data: st.DataObject) -> None:
    body = data.draw(st.one_of(
        st.binary(max_size=200),
        st.sampled_from(DEEP).map(str.encode),
        json_values.map(_json),
        st.fixed_dictionaries({"jsonrpc": st.sampled_from(["2.0", "1.0"]),
                               "method": st.one_of(text, st.sampled_from(
                                   ["initialize", "ping", "tools/list", "tools/call",
                                    "notifications/initialized", "server/discover"])),
                               "id": json_values, "params": json_values}).map(_json)),
        label="body")
    content_type = data.draw(st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", None]))
    _send(target, "POST", "/mcp", body=body, content_type=content_type,
          authorization=data.draw(credentials(target.key)), headers=data.draw(junk_headers()))


@pytest.mark.req("HARD-FUZZ", "HARD-NO-5XX", "HARD-AUDIT-ANY-BYTES")
@FUZZ
@given(data=st.data())
def test_rest_calls_never_5xx_and_are_audited_once(target: Target, data: st.DataObject
                                                   ) -> None:
    name = data.draw(st.one_of(st.sampled_from(TOOLS), text), label="name")
    body = data.draw(st.one_of(
        st.dictionaries(text, json_values, max_size=5).map(_json),
        st.sampled_from(DEEP).map(str.encode), st.binary(max_size=100),
        json_values.map(_json)), label="body")
    credential = data.draw(credentials(target.key), label="credential")
    response, request_id = _send(
        target, "POST", f"/api/v1/tools/{_quote(name)}", body=body,
        content_type="application/json", authorization=credential,
        headers=data.draw(junk_headers(), label="headers"))
    try:
        is_object = isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):
        is_object = False
    simple_name = name.isascii() and name.isidentifier()
    if credential == f"Bearer {target.key}" and is_object and simple_name:
        assert target.audit_rows(request_id) == 1, (name, body[:200], response.text[:300])
    else:
        assert target.audit_rows(request_id) <= 1


FORM_PATHS = ["/token", "/revoke", "/login", "/logout", "/authorize", "/register",
              "/account/connections/{junk}/disconnect"]
CONTENT_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/json", "text/plain", None,
                 "application/x-www-form-urlencoded; charset=latin-1"]


@pytest.mark.req("HARD-FUZZ", "HARD-NO-5XX")
@FUZZ
@given(data=st.data())
def test_forms_never_5xx(target: Target, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(FORM_PATHS)).replace(
        "{junk}", _quote(data.draw(text)))
    fields = data.draw(st.lists(st.tuples(
        st.one_of(st.sampled_from(["client_id", "grant_type", "code", "code_verifier",
                                   "redirect_uri", "refresh_token", "resource", "token",
                                   "email", "password", "next", "csrf_token", "decision",
                                   "tenant_id", "scope_choice", "state", "client_secret"]),
                  text), text), max_size=8))
    body = data.draw(st.one_of(
        st.just("&".join(f"{_quote(k)}={_quote(v)}" for k, v in fields).encode()),
        st.binary(max_size=200), json_values.map(_json)), label="body")
    authorization = data.draw(st.one_of(st.none(), st.sampled_from(
        ["Basic Zm9vOmJhcg==", "Basic !!!", "Basic " + "QQ==" * 3, "Bearer x"]),
        header_bytes.map(lambda b: "Basic " + b.decode("latin-1"))))
    _send(target, "POST", path, body=body, content_type=data.draw(st.sampled_from(CONTENT_TYPES)),
          authorization=authorization, headers=data.draw(junk_headers()))


QUERY_PATHS = ["/authorize", "/login", "/account/connections", "/", "/healthz",
               "/.well-known/oauth-authorization-server", "/.well-known/oauth-protected-resource",
               "/api/v1/tools", "/api/v1/openapi.json", "/api/v1/oauth/grants", "/mcp",
               "/api/v1/audit", "/api/v1/audit/export"]


@pytest.mark.req("HARD-FUZZ", "HARD-NO-5XX")
@FUZZ
@given(data=st.data())
def test_queries_and_paths_never_5xx(target: Target, data: st.DataObject) -> None:
    method, path = data.draw(st.one_of(
        st.tuples(st.just("GET"), st.sampled_from(QUERY_PATHS)),
        st.tuples(st.just("DELETE"), st.sampled_from(
            ["/api/v1/oauth/grants/{junk}", "/api/v1/oauth/clients/{junk}/grants"])),
        st.tuples(st.sampled_from(["PUT", "PATCH", "DELETE", "OPTIONS"]),
                  st.sampled_from(QUERY_PATHS))), label="request")
    path = path.replace("{junk}", _quote(data.draw(text)))
    fields = data.draw(st.lists(st.tuples(
        st.one_of(st.sampled_from(["client_id", "redirect_uri", "response_type", "scope",
                                   "state", "code_challenge", "code_challenge_method",
                                   "resource", "next", "include_revoked",
                                   # the audit log's filters
                                   "from", "to", "actor", "path", "action", "tier",
                                   "decision", "outcome", "cursor", "limit", "format"]),
                  text), text),
        max_size=8), label="query")
    query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in fields)
    _send(target, method, f"{path}?{query}" if query else path,
          authorization=data.draw(credentials(target.key)), headers=data.draw(junk_headers()))


# The catch-all ------------------------------------------------------------------------------


@pytest.mark.req("HARD-NO-5XX")
@pytest.mark.parametrize(("path", "surface"), [
    ("/mcp", "jsonrpc"), ("/mcp/x", "jsonrpc"), ("/api/v1/tools", "rest"),
    ("/token", "oauth"), ("/revoke", "oauth"), ("/register", "oauth"),
    ("/.well-known/oauth-authorization-server", "oauth"), ("/authorize", "page"),
    ("/login", "page"), ("/account/connections", "page"), ("/", "page"), ("/mcpx", "page"),
])
def test_each_path_has_one_error_surface(path: str, surface: str) -> None:
    assert surface_of(path) == surface


@pytest.mark.req("HARD-NO-5XX")
@pytest.mark.parametrize("path", ["/mcp/boom", "/api/v1/boom", "/.well-known/boom", "/boom"])
def test_an_unexpected_exception_answers_in_the_surface_shape(target: Target, path: str
                                                              ) -> None:
    response = httpx.post(target.url + path, headers={"x-request-id": "boom-1"}, timeout=30)
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "boom-1"
    assert "do not show me" not in response.text and "RuntimeError" not in response.text
    surface = surface_of(path)
    if surface == "page":
        assert response.headers["content-type"].startswith("text/html")
        assert "boom-1" in response.text
        return
    body = response.json()
    if surface == "jsonrpc":
        assert body["jsonrpc"] == "2.0" and body["id"] is None
        assert body["error"]["code"] == -32603
        assert body["error"]["data"]["request_id"] == "boom-1"
    elif surface == "rest":
        assert body["error"] == "internal_error" and body["request_id"] == "boom-1"
    else:
        assert body["error"] == "server_error" and body["request_id"] == "boom-1"
        assert "error_description" in body


@pytest.mark.req("HARD-NO-5XX", "HARD-COOKIES-HSTS")
def test_a_catch_all_answer_carries_hsts_on_https(test_db: ProvisionedDatabase,
                                                  tmp_path: Path) -> None:
    config = load_settings(state_dir=tmp_path / "state", database_url=test_db.runtime_url,
                           public_url="https://mcp.example.com")
    app = create_app(config, test_db.runtime_url)
    app.router.routes.append(Route("/api/v1/boom", _boom))
    with LiveServer(app) as server:
        response = httpx.get(server.url + "/api/v1/boom", timeout=30)
        missing = httpx.get(server.url + "/api/v1/nothing-here", timeout=30)
    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert missing.headers["strict-transport-security"].startswith("max-age=")
