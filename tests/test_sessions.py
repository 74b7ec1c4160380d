"""Web sessions done properly (issue 11, item 5, in part): server-side and revocable, an idle
and an absolute lifetime, and ``/account`` listing them with *Sign out* per session and *Sign
out everywhere*."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.oauth_support import PASSWORD, OAuthWorld, module_world
from tests.support import ProvisionedDatabase, superuser_sql


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


def _superuser(world: OAuthWorld, sql: str, **params: Any) -> list[Any]:
    return superuser_sql(world.test_db, sql, **params)


def _browser(world: OAuthWorld, email: str, agent: str) -> httpx.Client:
    browser = httpx.Client(base_url=world.url, timeout=30, headers={"User-Agent": agent})
    page = browser.get("/login")
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
    r = browser.post("/login", data={**fields, "email": email, "password": PASSWORD})
    assert r.status_code == 303, r.text
    return browser


def _signed_in(browser: httpx.Client) -> bool:
    return browser.get("/account").status_code == 200


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match
    return match.group(1)


@pytest.mark.req("HUMAN-SESSIONS")
def test_account_lists_sessions_and_signs_out_one_or_all(world: OAuthWorld) -> None:
    a = _browser(world, world.reader_email, "browser-a")
    b = _browser(world, world.reader_email, "browser-b")
    try:
        page = a.get("/account")
        assert page.status_code == 200
        assert "browser-a" in page.text and "browser-b" in page.text
        assert page.text.count("This browser") == 1
        others = re.findall(r'action="/account/sessions/([0-9a-f-]+)/end"', page.text)
        assert len(others) == 1  # b's; a's own row has no per-session button
        r = a.post(f"/account/sessions/{others[0]}/end", data={"csrf_token": _csrf(page.text)})
        assert r.status_code == 303
        assert not _signed_in(b) and _signed_in(a)
        # Not a's session to end (any more): nothing, and a 404.
        r = a.post(f"/account/sessions/{uuid.uuid4()}/end", data={"csrf_token": _csrf(page.text)})
        assert r.status_code == 404
        c = _browser(world, world.reader_email, "browser-c")
        page = a.get("/account")
        r = a.post("/account/sessions/end-all", data={"csrf_token": _csrf(page.text)})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert not _signed_in(a) and not _signed_in(c)
        c.close()
    finally:
        a.close()
        b.close()
    actions = [row[0] for row in _superuser(
        world, "SELECT action FROM audit_log WHERE acting_user_id ="
        " (SELECT id FROM users WHERE email = :e) AND action LIKE 'auth.session%'"
        " ORDER BY id", e=world.reader_email)]
    assert actions[-2:] == ["auth.session_ended", "auth.sessions_ended"]


@pytest.mark.req("HUMAN-SESSIONS")
def test_a_session_ends_when_idle_and_at_its_absolute_lifetime(world: OAuthWorld) -> None:
    idle = _browser(world, world.tech_email, "idle")
    old = _browser(world, world.tech_email, "old")
    try:
        assert _signed_in(idle) and _signed_in(old)
        timeout = world.settings.session_idle_timeout
        _superuser(world, "UPDATE web_sessions SET last_seen_at = now() - make_interval(secs =>"
                   " :s) WHERE user_agent = 'idle'", s=timeout + 60)
        _superuser(world, "UPDATE web_sessions SET expires_at = now() - interval '1 second'"
                   " WHERE user_agent = 'old'")
        assert not _signed_in(idle) and not _signed_in(old)
    finally:
        idle.close()
        old.close()


@pytest.mark.req("HUMAN-SESSIONS")
def test_session_pages_need_a_session_and_a_csrf_token(world: OAuthWorld) -> None:
    with httpx.Client(base_url=world.url, timeout=30) as anonymous:
        r = anonymous.get("/account")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    browser = _browser(world, world.tech_email, "csrf")
    try:
        r = browser.post("/account/sessions/end-all", data={"csrf_token": "forged"})
        assert r.status_code == 403 and _signed_in(browser)
    finally:
        browser.close()
