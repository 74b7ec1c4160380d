"""Hostile input at the form endpoints and the pages, over a real uvicorn server.

Bounded form bodies (bytes, fields, media type), junk characters in fields and query
parameters, no open redirector at /authorize, CSRF tokens bound to the session, and the
cookies and HSTS of an https deployment. Nothing here mocks the server.
"""

from __future__ import annotations

import base64
import os
import re
import select
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.oauth_support import (
    PASSWORD,
    HumanAgent,
    OAuthWorld,
    authorize_url,
    code_from,
    exchange,
    module_world,
    oauth_error,
    pkce_pair,
    refresh,
    register,
)
from tests.support import ProvisionedDatabase

CAP = 16 * 1024  # BREEZE_MAX_FORM_BYTES, default
FIELDS = 32  # BREEZE_MAX_FORM_FIELDS, default
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
EVIL = "https://evil.example/cb"


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory, dcr_rate_limit="1000/minute")


@pytest.fixture(scope="module")
def https_world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory, scheme="https")


@pytest.fixture(scope="module")
def human(world: OAuthWorld) -> Iterator[HumanAgent]:
    """The technician, signed in once for the module (sign-ins are rate-limited)."""
    agent = HumanAgent(world, world.tech_email)
    sign_in(agent)
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture(scope="module")
def approved(world: OAuthWorld, human: HumanAgent) -> tuple[str, dict[str, Any]]:
    """A client ``human`` approved, and its token response: (client_id, tokens)."""
    client_id = register(world)["client_id"]
    verifier, challenge = pkce_pair()
    code = code_from(human.authorize(authorize_url(world, client_id, challenge)))
    r = exchange(world, client_id, code, verifier)
    assert r.status_code == 200, r.text
    return client_id, r.json()


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


def is_page(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("text/html"), r.headers
    assert "location" not in r.headers


# Bounded bodies -----------------------------------------------------------------------------


def send_until_answered(world: OAuthWorld, path: str, headers: dict[str, str], total: int, *,
                        chunked: bool, chunk: bytes = b"a" * 65536) -> tuple[int, int]:
    """POST a ``total``-byte body, stopping as soon as the server answers: (status, body
    bytes sent by then). A server that buffers the body answers only after all of it."""
    url = httpx.URL(world.url)
    assert url.host and url.port
    sock = socket.create_connection((url.host, url.port), timeout=30)
    head = [f"POST {path} HTTP/1.1", f"Host: {url.host}:{url.port}",
            *(f"{k}: {v}" for k, v in headers.items()),
            "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"]
    sent = 0
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        while sent < total and not select.select([sock], [], [], 0)[0]:
            data = chunk[:total - sent]
            try:
                sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(data)
        if chunked and sent == total:
            sock.sendall(b"0\r\n\r\n")
        answer = sock.recv(65536)
    finally:
        sock.close()
    status = re.match(rb"HTTP/1.1 (\d{3}) ", answer)
    assert status, answer[:200]
    return int(status.group(1)), sent


FORM_ENDPOINTS = ["/login", "/logout", "/authorize", "/token", "/revoke",
                  "/account/connections/{grant}/disconnect"]


def form_path(path: str) -> str:
    return path.format(grant=uuid.uuid4())


@pytest.mark.req("HARD-FORM-BOUNDS")
@pytest.mark.parametrize("path", FORM_ENDPOINTS)
def test_a_form_over_the_cap_is_413_in_the_endpoints_shape(world: OAuthWorld, human: HumanAgent,
                                                          path: str) -> None:
    body = "csrf_token=x&next=" + "a" * CAP
    r = human.http.post(form_path(path), content=body, headers=FORM)
    assert r.status_code == 413, (r.status_code, r.text[:300])
    assert r.headers["connection"] == "close"
    if path in ("/token", "/revoke"):
        oauth_error(r, 413, "invalid_request")
    else:
        is_page(r, 413)


@pytest.mark.req("HARD-FORM-BOUNDS")
@pytest.mark.parametrize("path", ["/login", "/token", "/revoke"])
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_a_50_mb_form_is_cut_off_long_before_it_is_sent(world: OAuthWorld, path: str,
                                                        chunked: bool) -> None:
    total = 50 * 1024 * 1024
    status, sent = send_until_answered(world, path, FORM, total, chunked=chunked)
    assert status == 413
    # Only socket buffers' worth was sent: the server neither read nor kept the rest.
    assert sent < total // 5, sent


@pytest.mark.req("HARD-FORM-BOUNDS")
@pytest.mark.parametrize("path", ["/login", "/authorize", "/token"])
def test_multipart_is_415_before_the_body_is_read_and_writes_no_file(
        world: OAuthWorld, path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server runs in this process: a private temp dir shows any file it would spool.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    total = 50 * 1024 * 1024
    status, sent = send_until_answered(
        world, path, {"Content-Type": "multipart/form-data; boundary=xyz"}, total,
        chunked=False, chunk=b"--xyz\r\nContent-Disposition: form-data; name=\"f\"; "
        b"filename=\"f.bin\"\r\n\r\n" + b"a" * 65536)
    assert status == 415
    assert sent < total // 5, sent
    assert os.listdir(tmp) == []


@pytest.mark.req("HARD-FORM-BOUNDS")
@pytest.mark.parametrize("path", ["/login", "/token"])
def test_too_many_fields_is_413(world: OAuthWorld, path: str) -> None:
    r = httpx.post(f"{world.url}{path}", content="&".join(["a=1"] * (FIELDS + 1)),
                   headers=FORM, timeout=30)
    assert r.status_code == 413, r.text
    r = httpx.post(f"{world.url}{path}", content="&".join(["a=1"] * FIELDS), headers=FORM,
                   timeout=30)
    assert r.status_code not in (413, 415)  # at the limit: the endpoint's own answer


@pytest.mark.req("HARD-FORM-BOUNDS")
def test_other_media_types_are_415(world: OAuthWorld) -> None:
    for ctype in ("text/plain", "application/json", "application/x-www-form-urlencoded; "
                  "charset=latin-1"):
        r = httpx.post(f"{world.url}/login", content="email=a", timeout=30,
                       headers={"Content-Type": ctype})
        is_page(r, 415)
        r = httpx.post(f"{world.url}/revoke", content="token=a", timeout=30,
                       headers={"Content-Type": ctype})
        oauth_error(r, 415, "invalid_request")


# Junk characters ----------------------------------------------------------------------------

JUNK = {"nul": "%00", "lone-surrogate": "%ED%A0%80", "control": "%01", "bad-percent": "%zz",
        "truncated-percent": "ab%E"}


@pytest.mark.req("HARD-NO-5XX")
@pytest.mark.parametrize("junk", JUNK.values(), ids=JUNK.keys())
def test_junk_in_form_fields_is_the_endpoints_own_error(
        world: OAuthWorld, approved: tuple[str, dict[str, Any]], junk: str) -> None:
    client_id, tokens = approved
    for field in ("client_id", "code", "redirect_uri", "resource", "code_verifier"):
        data = {"grant_type": "authorization_code", "client_id": client_id, "code": "bzc_x",
                "code_verifier": "v" * 43, "redirect_uri": "http://127.0.0.1:7777/cb"}
        data[field] = "bz" + junk
        r = httpx.post(f"{world.url}/token", timeout=30, headers=FORM,
                       content="&".join(f"{k}={v}" for k, v in data.items()))
        oauth_error(r, 400, "invalid_request")
    for field, value in (("refresh_token", tokens["refresh_token"]), ("scope", "ai:read"),
                         ("resource", world.mcp_url)):
        body = f"grant_type=refresh_token&client_id={client_id}&{field}={value}{junk}"
        if field != "refresh_token":
            body += f"&refresh_token={tokens['refresh_token']}"
        r = httpx.post(f"{world.url}/token", content=body, headers=FORM, timeout=30)
        oauth_error(r, 400, "invalid_request")
    r = httpx.post(f"{world.url}/revoke", content=f"client_id={client_id}&token=bzr_{junk}",
                   headers=FORM, timeout=30)
    oauth_error(r, 400, "invalid_request")
    for field in ("email", "password", "next", "csrf_token"):
        agent = HumanAgent(world, world.reader_email)
        try:
            page = agent.http.get("/login")
            fields = {"csrf_token": csrf_of(page), "email": world.reader_email,
                      "password": PASSWORD, "next": "/account/connections"}
            fields[field] = fields[field] + junk
            r = agent.http.post("/login", headers=FORM, content="&".join(
                f"{k}={v}" for k, v in fields.items()))
            is_page(r, 400)
            assert "set-cookie" not in r.headers or "breeze_session" not in r.headers[
                "set-cookie"]
        finally:
            agent.close()


@pytest.mark.req("HARD-NO-5XX")
@pytest.mark.parametrize("junk", JUNK.values(), ids=JUNK.keys())
def test_junk_in_query_parameters_and_paths_is_the_error_page(world: OAuthWorld,
                                                              human: HumanAgent,
                                                              junk: str) -> None:
    client_id = register(world)["client_id"]
    _, challenge = pkce_pair()
    good = authorize_url(world, client_id, challenge)
    for name in ("client_id", "redirect_uri", "resource", "state", "scope", "response_type"):
        url = re.sub(rf"([?&]{name}=)[^&]*", rf"\g<1>x{junk}", good)
        for agent in (httpx.Client(base_url=world.url), human.http):
            is_page(agent.get(url), 400)
    is_page(httpx.get(f"{world.url}/login?next=/account{junk}", timeout=30), 400)
    is_page(human.http.get(f"/account/connections?done=x{junk}"), 400)
    r = human.http.post(f"/account/connections/{junk}/disconnect", headers=FORM,
                        content="csrf_token=x")
    assert r.status_code in (400, 403, 404), r.status_code
    assert r.headers["content-type"].startswith("text/html")


@pytest.mark.req("HARD-NO-5XX")
def test_a_nul_in_basic_client_credentials_is_invalid_client(world: OAuthWorld) -> None:
    for user in ("bzi_\x00", "%00", "bzi_%ED%A0%80"):
        basic = base64.b64encode(f"{user}:secret".encode()).decode()
        r = httpx.post(f"{world.url}/revoke", content="token=bzr_x", headers={
            **FORM, "Authorization": f"Basic {basic}"}, timeout=30)
        oauth_error(r, 401, "invalid_client")


@pytest.mark.req("HARD-NO-5XX")
def test_non_ascii_basic_credentials_are_invalid_client(world: OAuthWorld) -> None:
    """A Basic value that is not ASCII at all (found by the no-5xx property test: base64
    decoding refuses it with a ValueError of its own)."""
    for path in ("/token", "/revoke"):
        headers = [(k.encode(), v.encode()) for k, v in FORM.items()]
        r = httpx.post(f"{world.url}{path}", content="token=bzr_x&grant_type=refresh_token",
                       headers=[*headers, (b"Authorization", b"Basic \xc2\x80")], timeout=30)
        oauth_error(r, 401, "invalid_client")


@pytest.mark.req("HARD-NO-5XX")
@pytest.mark.parametrize("resource", ["https://h:99999/mcp", "https://[::1/mcp",
                                      "https://h:port/mcp"])
def test_a_malformed_resource_is_invalid_target(world: OAuthWorld, human: HumanAgent,
                                                approved: tuple[str, dict[str, Any]],
                                                resource: str) -> None:
    client_id, tokens = approved
    oauth_error(refresh(world, client_id, tokens["refresh_token"], resource=resource), 400,
                   "invalid_target")
    verifier, challenge = pkce_pair()
    code = code_from(human.authorize(authorize_url(world, client_id, challenge)))
    oauth_error(exchange(world, client_id, code, verifier, resource=resource), 400,
                   "invalid_target")
    # At /authorize, for a client this human approved: back to the client, as invalid_target.
    r = human.http.get(authorize_url(world, client_id, challenge, resource=resource))
    assert r.status_code == 303, r.text[:300]
    assert httpx.URL(r.headers["location"]).params["error"] == "invalid_target"


# No open redirector -------------------------------------------------------------------------

PRE_APPROVAL_ERRORS = {
    "unsupported_response_type": {"response_type": "token"},
    "invalid_request": {"code_challenge_method": "plain"},
    "invalid_target": {"resource": "https://elsewhere.example/mcp"},
}


@pytest.mark.req("HARD-NO-OPEN-REDIRECT")
@pytest.mark.parametrize("error", PRE_APPROVAL_ERRORS)
def test_errors_before_approval_stay_on_our_page(world: OAuthWorld, human: HumanAgent,
                                                 error: str) -> None:
    client_id = register(world, client_name="Evil", redirect_uris=[EVIL])["client_id"]
    _, challenge = pkce_pair()
    url = authorize_url(world, client_id, challenge, redirect_uri=EVIL,
                        **PRE_APPROVAL_ERRORS[error])
    # Nobody signed in, and signed in without having approved this client: our page.
    for agent in (httpx.Client(base_url=world.url), human.http):
        r = agent.get(url)
        is_page(r, 400)
        assert "evil.example" in r.text and error in r.text, r.text
    # The user's own "deny" on the consent page still goes back: the user chose it.
    r = human.authorize(authorize_url(world, client_id, challenge, redirect_uri=EVIL),
                        decision="deny")
    assert r.status_code == 303 and r.headers["location"].startswith(EVIL + "?")
    assert httpx.URL(r.headers["location"]).params["error"] == "access_denied"


@pytest.mark.req("HARD-NO-OPEN-REDIRECT")
def test_a_client_the_user_approved_gets_its_errors_back(world: OAuthWorld,
                                                         human: HumanAgent) -> None:
    client_id = register(world)["client_id"]
    _, challenge = pkce_pair()
    code_from(human.authorize(authorize_url(world, client_id, challenge)))  # a live grant
    url = authorize_url(world, client_id, challenge, response_type="token", state="s-1")
    r = human.http.get(url)
    assert r.status_code == 303, r.text[:300]
    params = httpx.URL(r.headers["location"]).params
    assert params["error"] == "unsupported_response_type" and params["state"] == "s-1"
    # Another person, who never approved it, stays on our page.
    other = HumanAgent(world, world.reader_email)
    try:
        sign_in(other)
        is_page(other.http.get(url), 400)
    finally:
        other.close()


# CSRF bound to the session ------------------------------------------------------------------


def sign_in(agent: HumanAgent) -> str:
    """Sign in through the form; returns the sign-in form's CSRF token."""
    page = agent.http.get("/login")
    token = csrf_of(page)
    r = agent.http.post("/login", data={"csrf_token": token, "email": agent.email,
                                        "password": agent.password, "next": "/"})
    assert r.status_code == 303, r.text[:300]
    return token


def signed_in(agent: HumanAgent) -> bool:
    return agent.http.get("/account/connections").status_code == 200


@pytest.mark.req("HARD-CSRF-BOUND")
def test_a_token_from_before_sign_in_is_refused_after_it(world: OAuthWorld) -> None:
    agent = HumanAgent(world, world.reader_email)
    try:
        pre_cookie = agent.http.get("/login").cookies["breeze_csrf"]
        harvested = sign_in(agent)
        assert agent.http.cookies["breeze_csrf"] != pre_cookie  # rotated by the sign-in
        for cookie in (agent.http.cookies["breeze_csrf"], pre_cookie):
            agent.http.cookies.set("breeze_csrf", cookie)
            r = agent.http.post("/logout", data={"csrf_token": harvested})
            is_page(r, 403)
            assert signed_in(agent)
        page = agent.http.get("/account/connections")
        r = agent.http.post("/logout", data={"csrf_token": csrf_of(page)})
        assert r.status_code == 303 and not signed_in(agent)
    finally:
        agent.close()


@pytest.mark.req("HARD-CSRF-BOUND")
def test_a_token_from_one_session_is_refused_in_another(world: OAuthWorld) -> None:
    victim, attacker = HumanAgent(world, world.reader_email), HumanAgent(world, world.tech_email)
    try:
        sign_in(victim)
        sign_in(attacker)
        token = csrf_of(attacker.http.get("/account/connections"))
        # Even with the attacker's pre-session cookie planted in the victim's browser.
        victim.http.cookies.set("breeze_csrf", attacker.http.cookies["breeze_csrf"])
        is_page(victim.http.post("/logout", data={"csrf_token": token}), 403)
        assert signed_in(victim)
    finally:
        victim.close()
        attacker.close()


@pytest.mark.req("HARD-CSRF-BOUND")
def test_origin_null_is_refused_and_a_missing_origin_leaves_it_to_the_token(
        world: OAuthWorld) -> None:
    agent = HumanAgent(world, world.reader_email)
    try:
        page = agent.http.get("/login")
        fields = {"csrf_token": csrf_of(page), "email": agent.email, "password": PASSWORD}
        for origin in ("null", "https://evil.example", world.url + ".evil.example"):
            is_page(agent.http.post("/login", data=fields, headers={"Origin": origin}), 403)
        assert agent.http.post("/login", data=fields).status_code == 303
        page = agent.http.get("/account/connections")
        is_page(agent.http.post("/logout", data={"csrf_token": csrf_of(page)},
                                headers={"Origin": "null"}), 403)
        r = agent.http.post("/logout", data={"csrf_token": csrf_of(page)},
                            headers={"Origin": world.url})
        assert r.status_code == 303
    finally:
        agent.close()


# __Host- cookies and HSTS -------------------------------------------------------------------

HSTS = "max-age=63072000; includeSubDomains"


def set_cookies(r: httpx.Response) -> dict[str, list[str]]:
    """Each Set-Cookie by name: its attributes, lower-cased."""
    out: dict[str, list[str]] = {}
    for header in r.headers.get_list("set-cookie"):
        name_value, *attributes = [p.strip() for p in header.split(";")]
        out[name_value.split("=", 1)[0]] = [a.lower() for a in attributes]
    return out


@pytest.mark.req("HARD-COOKIES-HSTS")
def test_https_cookies_are_host_prefixed_and_every_response_has_hsts(
        https_world: OAuthWorld, world: OAuthWorld) -> None:
    w = https_world
    origin = w.settings.public_url
    assert origin.startswith("https://")
    with httpx.Client(base_url=w.url, timeout=30) as http:
        page = http.get("/login")
        cookies = set_cookies(page)
        assert set(cookies) == {"__Host-breeze_csrf"}, cookies
        attrs = cookies["__Host-breeze_csrf"]
        assert "secure" in attrs and "path=/" in attrs and "httponly" in attrs
        assert not any(a.startswith("domain") for a in attrs)
        pre = page.headers["set-cookie"].split(";")[0]
        # The browser sends the Secure cookie back over https; httpx would not over plain http.
        r = http.post("/login", headers={"Origin": origin, "Cookie": pre}, data={
            "csrf_token": csrf_of(page), "email": w.tech_email, "password": PASSWORD})
        assert r.status_code == 303, r.text[:300]
        cookies = set_cookies(r)
        assert set(cookies) == {"__Host-breeze_session", "__Host-breeze_csrf"}, cookies
        for attrs in cookies.values():
            assert "secure" in attrs and "path=/" in attrs
            assert not any(a.startswith("domain") for a in attrs)
        responses: list[Any] = [
            page, r, http.get("/healthz"), http.get("/.well-known/oauth-authorization-server"),
            http.post("/token", data={"grant_type": "x"}), http.get("/authorize"),
            http.post("/mcp", json={}), http.get("/no-such-page"),
        ]
        for resp in responses:
            assert resp.headers.get("strict-transport-security") == HSTS, (
                resp.request.url, resp.status_code)
    # A plain-http development origin: browsers refuse __Host- without Secure, so bare names.
    page = httpx.get(f"{world.url}/login", timeout=30)
    cookies = set_cookies(page)
    assert set(cookies) == {"breeze_csrf"} and "secure" not in cookies["breeze_csrf"]
    assert "strict-transport-security" not in page.headers
