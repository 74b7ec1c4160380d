"""The request every endpoint receives (``breeze_mcp.http_request``): headers looked up through
a dict, answering exactly as Starlette's headers do, the first of a repeated header winning.

A repeated header is where two readers of one request could disagree (a proxy reads one copy,
the server another). A repeated credential is refused rather than one copy picked, tested over a
real server with raw sockets (an HTTP client would not send two); the one ``Host`` rule is the
HTTP layer's (``tests/test_http_protocol.py``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from breeze_mcp.app import create_app
from breeze_mcp.config import Settings
from breeze_mcp.http_request import IndexedHeaders, RepeatedCredential, Route, authorization
from tests.oauth_support import OAuthWorld, module_world
from tests.support import ProvisionedDatabase
from tests.test_http_protocol import exchange_raw, status_of


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


# ASGI header names are lower case; values are any bytes a parser let through.
_NAMES = ["host", "authorization", "x-request-id", "mcp-name", "accept", "x-forwarded-for"]
_raw_headers = st.lists(st.tuples(st.sampled_from(_NAMES).map(str.encode),
                                  st.binary(max_size=8)), max_size=8)
_keys = st.sampled_from([*_NAMES, "Host", "AUTHORIZATION", "X-Forwarded-For", "origin",
                         "Mcp-Name", "user-agent"])


@pytest.mark.req("HARD-HEADER-FIRST")
@settings(max_examples=500, deadline=None)
@given(_raw_headers, st.lists(_keys, min_size=1, max_size=6))
def test_indexed_headers_answer_as_starlettes_do(raw: list[tuple[bytes, bytes]],
                                                  keys: list[str]) -> None:
    ours = IndexedHeaders({"type": "http", "headers": list(raw)})
    theirs = Headers(raw=list(raw))
    for key in keys:
        assert ours.get(key) == theirs.get(key)
        assert ours.get(key, "-") == theirs.get(key, "-")
        assert (key in ours) == (key in theirs)
        assert ours.getlist(key) == theirs.getlist(key)
        if key in theirs:
            assert ours[key] == theirs[key]
        else:
            with pytest.raises(KeyError):
                ours[key]
    assert ours.raw == theirs.raw
    assert 1 not in ours  # type: ignore[comparison-overlap]  # not a header name at all


@pytest.mark.req("HARD-HEADER-FIRST")
def test_every_route_of_the_app_hands_over_the_indexed_request(
        settings: Settings, test_db: ProvisionedDatabase) -> None:
    app = create_app(settings, test_db.runtime_url)
    routes = [r for r in app.routes if getattr(r, "path", None)]
    assert len(routes) > 40
    assert all(isinstance(r, Route) for r in routes), [
        r.path for r in routes if not isinstance(r, Route)]  # type: ignore[attr-defined]


@pytest.mark.req("HARD-ONE-CREDENTIAL")
def test_the_authorization_reader_refuses_a_second_copy_whatever_the_headers_object() -> None:
    one = [(b"host", b"x"), (b"authorization", b"Bearer a"), (b"accept", b"*/*")]
    two = [*one, (b"authorization", b"Bearer b")]
    for make in (lambda raw: IndexedHeaders({"headers": raw}), lambda raw: Headers(raw=raw)):
        assert authorization(make(one)) == "Bearer a"
        assert authorization(make([(b"host", b"x"), (b"host", b"y")])) is None
        with pytest.raises(RepeatedCredential, match="send one Authorization header"):
            authorization(make(two))


def test_a_route_refuses_an_endpoint_it_could_not_await() -> None:
    def sync_endpoint(request: Any) -> Any:
        return None

    with pytest.raises(TypeError, match="not an async function"):
        Route("/x", sync_endpoint)


def _call(world: OAuthWorld, *head: bytes) -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "list_devices", "arguments": {"limit": 1}}}).encode()
    return (b"POST /mcp HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in head)
            + b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            b"MCP-Protocol-Version: 2025-06-18\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


@pytest.mark.req("HARD-ONE-CREDENTIAL")
def test_two_authorization_headers_are_refused_whichever_comes_first(world: OAuthWorld) -> None:
    # A proxy might check one copy and the server use the other: neither is picked.
    host = b"Host: " + world.url.removeprefix("http://").encode()
    good = b"Authorization: Bearer " + world.admin_key.encode()
    before = _calls(world)
    for first, second in ((good, b"Authorization: Bearer bzk_not-a-key"),
                          (b"Authorization: Bearer bzk_not-a-key", good), (good, good)):
        answer = exchange_raw(world.url, _call(world, host, first, second))
        # 401, as for any unusable credential on /mcp (a client then finds the challenge)
        assert status_of(answer) == 401, answer
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b'error="invalid_request"' in head
        assert json.loads(body)["error_description"] == "send one Authorization header, not several"
    # No tool ran (failed authentications are counted and audited per source, as any other).
    assert _calls(world) == before
    served = exchange_raw(world.url, _call(world, host, good))
    assert status_of(served) == 200 and b'"isError":false' in served
    assert _calls(world) == before + 1


def _calls(world: OAuthWorld) -> int:
    return int(world.owner_sql(
        "SELECT count(*) FROM audit_log WHERE action = 'list_devices'")[0][0])


@pytest.mark.req("HARD-ONE-CREDENTIAL")
def test_the_token_endpoint_refuses_two_authorization_headers(world: OAuthWorld) -> None:
    host = world.url.removeprefix("http://").encode()
    basic = b"Authorization: Basic " + base64.b64encode(b"some-client:some-secret")
    body = b"grant_type=refresh_token&refresh_token=bzr_x"
    request = (b"POST /token HTTP/1.1\r\nHost: " + host + b"\r\n" + basic + b"\r\n" + basic
               + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close"
               b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    answer = exchange_raw(world.url, request)
    assert status_of(answer) == 400, answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "error": "invalid_request",
        "error_description": "send one Authorization header, not several"}
