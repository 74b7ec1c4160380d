"""Credential changes cut access in the same request (issue 11, item 7; CLI paths).

A password reset, a suspension and a removal from the tenant each end the person's web
sessions (another browser's cookie stops working) and revoke every OAuth grant they made, so
the next request with a previously issued access token or refresh token is refused; API keys
follow their creator. Each step is audited.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from breeze_mcp.auth.accounts import (
    AccountError,
    create_user,
    remove_member,
    set_password,
    set_suspended,
)
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.db import Database
from tests.oauth_support import (
    PASSWORD,
    HumanAgent,
    OAuthWorld,
    connect,
    mcp_call,
    module_world,
    refresh,
)
from tests.support import ProvisionedDatabase


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


def _db_run(world: OAuthWorld, work: Any) -> Any:
    async def run() -> Any:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


class Person:
    """An admin with an OAuth grant's tokens, an API key and two web sessions: the browser that
    consented and another, signed in separately."""

    def __init__(self, world: OAuthWorld) -> None:
        self.email = f"p-{uuid.uuid4().hex[:8]}@example.com"

        async def build(db: Database) -> str:
            await create_user(db, world.tenant, email=self.email, password=PASSWORD,
                              role="admin")
            _, key = await create_api_key(db, world.tenant, name="p", scopes="ai:read",
                                          creator_email=self.email)
            return key

        self.key = _db_run(world, build)
        self.client_id, body = connect(world, self.email, scopes=["ai:read"])
        self.access, self.refresh = body["access_token"], body["refresh_token"]
        self.browser = HumanAgent(world, self.email)
        login = self.browser.http.get("/login")
        assert login.status_code == 200
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', login.text))
        r = self.browser.http.post("/login", data={**fields, "email": self.email,
                                                   "password": PASSWORD})
        assert r.status_code == 303, r.text

    def signed_in(self) -> bool:
        r = self.browser.http.get("/account/connections")
        return r.status_code == 200

    def close(self) -> None:
        self.browser.close()


def _works(world: OAuthWorld, person: Person) -> None:
    assert person.signed_in()
    assert mcp_call(world, person.access, "tools/list").status_code == 200
    assert mcp_call(world, person.key, "tools/list").status_code == 200


def _cut(world: OAuthWorld, person: Person, *, key_refused: bool) -> None:
    assert not person.signed_in()  # another browser's session ended
    assert mcp_call(world, person.access, "tools/list").status_code == 401
    r = refresh(world, person.client_id, person.refresh)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text
    assert (mcp_call(world, person.key, "tools/list").status_code == 401) is key_refused


def _actions(world: OAuthWorld, user_id: uuid.UUID) -> list[str]:
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from breeze_mcp.db.engine import sqlalchemy_url

    url = make_url(sqlalchemy_url(world.test_db.admin_url)).set(database=world.test_db.name)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(
                "SELECT action FROM audit_log WHERE acting_user_id = :u ORDER BY id"),
                {"u": user_id}).scalars())
    finally:
        engine.dispose()


@pytest.mark.req("HUMAN-CUT-ACCESS")
def test_password_reset_ends_sessions_and_grants(world: OAuthWorld) -> None:
    person = Person(world)
    try:
        _works(world, person)
        user_id, cut = _db_run(world, lambda db: set_password(
            db, person.email, "another-Strong-passphrase-7"))
        assert (cut.sessions, cut.grants) == (2, 1)
        _cut(world, person, key_refused=False)  # a key follows its creator, who still has access
        actions = _actions(world, user_id)
        assert actions[-3:] == ["user.password_reset", "auth.sessions_ended",
                                "oauth.grant_revoked"]
    finally:
        person.close()


@pytest.mark.req("HUMAN-CUT-ACCESS")
def test_suspension_cuts_everything_and_resuming_gives_nothing_back(world: OAuthWorld) -> None:
    person = Person(world)
    try:
        _works(world, person)
        user_id, cut = _db_run(world, lambda db: set_suspended(db, person.email, True))
        assert cut is not None and (cut.sessions, cut.grants) == (2, 1)
        _cut(world, person, key_refused=True)
        _db_run(world, lambda db: set_suspended(db, person.email, False))
        assert mcp_call(world, person.key, "tools/list").status_code == 200  # the key is back
        assert mcp_call(world, person.access, "tools/list").status_code == 401  # grants not
        assert not person.signed_in()
        assert {"user.suspended", "user.resumed", "auth.sessions_ended",
                "oauth.grant_revoked"} <= set(_actions(world, user_id))
    finally:
        person.close()


@pytest.mark.req("HUMAN-CUT-ACCESS")
def test_removal_from_the_tenant_cuts_everything(world: OAuthWorld) -> None:
    person = Person(world)
    try:
        _works(world, person)
        user_id, cut = _db_run(world, lambda db: remove_member(db, world.tenant, person.email))
        assert (cut.sessions, cut.grants) == (2, 1)
        _cut(world, person, key_refused=True)
        assert "member.removed" in _actions(world, user_id)
        with pytest.raises(AccountError, match="not a member"):
            _db_run(world, lambda db: remove_member(db, world.tenant, person.email))
    finally:
        person.close()


@pytest.mark.req("HUMAN-CUT-ACCESS")
def test_the_last_owner_cannot_be_removed(world: OAuthWorld) -> None:
    owner = world.tech_email.replace("tech-", "owner-")
    with pytest.raises(AccountError, match="last owner"):
        _db_run(world, lambda db: remove_member(db, world.tenant, owner))


@pytest.mark.req("HUMAN-CUT-ACCESS", "HUMAN-SESSIONS")
def test_a_web_password_change_cuts_everything_but_the_browser_that_asked(
    world: OAuthWorld,
) -> None:
    person = Person(world)
    other = HumanAgent(world, person.email)
    try:
        page = other.http.get("/login")
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
        assert other.http.post("/login", data={**fields, "email": person.email,
                                               "password": PASSWORD}).status_code == 303
        _works(world, person)
        form = person.browser.http.get("/account/password")
        csrf = dict(re.findall(r'name="(csrf_token)" value="([^"]*)"', form.text))
        wrong = person.browser.http.post("/account/password", data={
            **csrf, "current_password": "not it at all, sorry", "new_password": "x" * 20})
        assert wrong.status_code == 400 and "not right" in wrong.text
        _works(world, person)  # nothing changed
        old_cookie = person.browser.http.cookies.get("breeze_session")
        done = person.browser.http.post("/account/password", data={
            **csrf, "current_password": PASSWORD,
            "new_password": "a brand new Strong passphrase 9"})
        assert done.status_code == 303 and done.headers["location"] == "/account?done=password"
        assert person.signed_in()  # this browser: a new session
        assert person.browser.http.cookies.get("breeze_session") != old_cookie
        assert other.http.get("/account").status_code == 303  # the other browser: signed out
        assert mcp_call(world, person.access, "tools/list").status_code == 401
        r = refresh(world, person.client_id, person.refresh)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    finally:
        other.close()
        person.close()
