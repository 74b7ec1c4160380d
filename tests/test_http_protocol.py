"""The HTTP/1.1 layer under every endpoint: httptools with a bound on the request head
(``breeze_mcp.http_protocol``), over a real server, with raw sockets (an HTTP client would
not send what these send).

httptools alone accepts request heads of any size; h11, which it replaced, bounded them at
16 KiB. These tests hold the bound (a head over it is 431 before the application sees it, also
a single header line that grows across reads, also the second request of a kept-alive
connection) and the parser's refusal of the framing a request-smuggling attack relies on.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from breeze_mcp.http_protocol import MAX_HEAD_BYTES
from tests.oauth_support import OAuthWorld, module_world
from tests.support import REPO, ProvisionedDatabase, free_port, wait_for


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _send_then_read(sock: socket.socket, *parts: bytes) -> bytes:
    """Send ``parts`` one write each; everything the server sends back until it closes (or
    goes quiet for 5 s)."""
    # The server may answer and close while we are still sending.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        for part in parts:
            sock.sendall(part)
    received = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def exchange_raw(url: str, *parts: bytes) -> bytes:
    """:func:`_send_then_read` on a new connection."""
    with socket.create_connection(_address(url), timeout=5) as sock:
        return _send_then_read(sock, *parts)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _padding(total: int) -> bytes:
    """Header lines of about ``total`` bytes."""
    lines = [b"X-Pad-%d: %s\r\n" % (i, b"p" * 90) for i in range(total // 100 + 1)]
    return b"".join(lines)


def _tools_call(world: OAuthWorld, extra: bytes = b"") -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "list_devices", "arguments": {"limit": 1}}}).encode()
    host = world.url.removeprefix("http://").encode()
    return (b"POST /mcp HTTP/1.1\r\nHost: " + host + b"\r\n"
            b"Authorization: Bearer " + world.admin_key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            b"MCP-Protocol-Version: 2025-06-18\r\nConnection: close\r\n"
            + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _entries(world: OAuthWorld) -> int:
    return int(world.owner_sql("SELECT count(*) FROM audit_log")[0][0])


@pytest.mark.req("HARD-HEAD-BOUND")
def test_a_head_over_the_bound_is_431_and_never_reaches_the_application(
        world: OAuthWorld) -> None:
    before = _entries(world)
    answer = exchange_raw(world.url, _tools_call(world, _padding(MAX_HEAD_BYTES + 100)))
    assert status_of(answer) == 431, answer[:200]
    assert b"connection: close" in answer.lower()
    assert _entries(world) == before  # no tool call, no entry: the application never ran
    # A head just under the bound is an ordinary call, answered and audited.
    answer = exchange_raw(world.url, _tools_call(world, _padding(MAX_HEAD_BYTES - 1500)))
    assert status_of(answer) == 200, answer[:300]
    assert b'"isError":false' in answer
    assert _entries(world) == before + 1


@pytest.mark.req("HARD-HEAD-BOUND")
def test_one_header_line_growing_over_many_reads_is_refused(world: OAuthWorld) -> None:
    # The parser keeps an unfinished line itself: counting finished headers would never stop
    # this one. 4 MB in 8 KB writes, each let through before the next.
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Grow: "
    answer = exchange_raw(world.url, start, *([b"g" * 8192] * 512), b"\r\n\r\n")
    assert status_of(answer) == 431, answer[:200]


@pytest.mark.req("HARD-HEAD-BOUND")
def test_a_head_over_the_bound_in_reads_each_under_it_is_refused(world: OAuthWorld) -> None:
    # Neither read alone is over the bound; the head they make is.
    half = _padding(MAX_HEAD_BYTES // 2 + 500)
    with socket.create_connection(_address(world.url), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + half)
        time.sleep(0.3)  # read before the rest is sent
        answer = _send_then_read(sock, half.replace(b"X-Pad-", b"X-More-") + b"\r\n")
    assert status_of(answer) == 431, answer[:200]


@pytest.mark.req("HARD-HEAD-BOUND")
def test_the_bound_holds_for_every_request_of_a_kept_alive_connection(
        world: OAuthWorld) -> None:
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 300_000 + b"\r\n\r\n"
    with socket.create_connection(_address(world.url), timeout=5) as sock:
        sock.sendall(first)
        time.sleep(0.3)  # the first is answered; the connection stays open
        answered = sock.recv(65536)
        assert status_of(answered) == 200
        rest = _send_then_read(sock, second)
    assert status_of(rest) == 431, rest[:200]
    # Many requests on one connection, each under the bound, are all served.
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + _padding(4000) + b"\r\n"
    answer = exchange_raw(world.url, many * 9 + many.replace(b"Host: x\r\n",
                                                           b"Host: x\r\nConnection: close\r\n"))
    assert answer.count(b"HTTP/1.1 200 OK") == 10, answer[:300]


AMBIGUOUS = {
    # Content-Length and chunked together: a proxy and the server could each take a
    # different one, and the rest of the body becomes a second, unseen request.
    "length and chunked": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two lengths": b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                   b"Content-Length: 5\r\n\r\nabcde",
    "folded header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "space before the colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n",
    "bare line feeds": b"GET /healthz HTTP/1.1\nHost: x\n\n",
}


@pytest.mark.req("HARD-HTTP-FRAMING")
@pytest.mark.parametrize("name", sorted(AMBIGUOUS))
def test_framing_a_proxy_could_read_differently_is_refused(world: OAuthWorld,
                                                           name: str) -> None:
    answer = exchange_raw(world.url, AMBIGUOUS[name])
    assert status_of(answer) == 400, answer[:200]
    assert answer.count(b"HTTP/1.1") == 1  # one answer, the connection closed: nothing after


@pytest.mark.req("HARD-ONE-HOST")
@pytest.mark.parametrize("hosts", [(), (b"x", b"x"), (b"x", b"attacker.example"),
                                   (b"attacker.example", b"x")])
def test_an_http11_request_carries_exactly_one_host(world: OAuthWorld,
                                                     hosts: tuple[bytes, ...]) -> None:
    # RFC 9112 §3.2: none, or two that a proxy and the server could each read differently,
    # is 400 before the application runs (a tools call would write an audit entry).
    ours = world.url.removeprefix("http://").encode()
    before = _entries(world)
    lines = b"".join(b"Host: " + (ours if h == b"x" else h) + b"\r\n" for h in hosts)
    answer = exchange_raw(world.url, _tools_call(world).replace(
        b"Host: " + ours + b"\r\n", lines))
    assert status_of(answer) == 400, answer[:300]
    assert answer.count(b"HTTP/1.1") == 1
    why = b"A Host header is required" if not hosts else b"one Host header, not several"
    assert why in answer
    assert _entries(world) == before
    # The same call with one Host is served (and audited).
    assert status_of(exchange_raw(world.url, _tools_call(world))) == 200
    assert _entries(world) == before + 1


@pytest.mark.req("HARD-ONE-HOST")
def test_an_http10_request_may_leave_host_out(world: OAuthWorld) -> None:
    answer = exchange_raw(world.url, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status_of(answer) == 200, answer[:300]
    answer = exchange_raw(world.url, b"GET /healthz HTTP/1.0\r\nHost: x\r\nHost: y\r\n\r\n")
    assert status_of(answer) == 400, answer[:300]


@pytest.mark.req("HARD-HEAD-BOUND")
def test_breeze_mcp_serve_runs_the_bounded_parser(tmp_path: Path,
                                                  test_db: ProvisionedDatabase) -> None:
    port = free_port()
    env = test_db.env(tmp_path)
    server = subprocess.Popen([sys.executable, "-m", "breeze_mcp", "serve", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), timeout=60)
        answer = exchange_raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
                              _padding(MAX_HEAD_BYTES + 100), b"\r\n")
        assert status_of(answer) == 431, answer[:200]
        answer = exchange_raw(url, AMBIGUOUS["length and chunked"])
        assert status_of(answer) == 400, answer[:200]
        answer = exchange_raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
        assert status_of(answer) == 400, answer[:200]
    finally:
        server.terminate()
        server.wait(timeout=60)


def _answers(url: str) -> bool:
    try:
        return status_of(exchange_raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                      b"Connection: close\r\n\r\n")) == 200
    except (OSError, IndexError, ValueError):
        return False
