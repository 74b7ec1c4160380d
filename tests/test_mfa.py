"""TOTP MFA over a real server: enrolment (password first, then a code from the shown secret),
the sealed secret, the sign-in step (which OAuth consent goes through), replay refused by the
database, recovery codes used once, and turning it off cutting access."""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pyotp
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from breeze_mcp.auth import mfa
from breeze_mcp.auth.accounts import create_user
from breeze_mcp.db import Database
from tests.oauth_support import (
    PASSWORD,
    OAuthWorld,
    authorize_url,
    module_world,
    pkce_pair,
    register,
)
from tests.support import ProvisionedDatabase, superuser_sql


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


def _superuser(world: OAuthWorld, sql: str, **params: Any) -> list[Any]:
    return superuser_sql(world.test_db, sql, **params)


def _person(world: OAuthWorld) -> tuple[str, uuid.UUID]:
    email = f"mfa-{uuid.uuid4().hex[:8]}@example.com"

    async def build() -> uuid.UUID:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            return (await create_user(db, world.tenant, email=email, password=PASSWORD,
                                      role="technician")).id
        finally:
            await db.dispose()

    return email, asyncio.run(build())


def _fields(page: str) -> dict[str, str]:
    return {k: html.unescape(v) for k, v in re.findall(r'name="([^"]+)" value="([^"]*)"', page)}


def _wait_for_a_fresh_step() -> None:
    """Codes are computed for steps relative to now: start well inside a 30 s step."""
    left = 30 - time.time() % 30
    if left < 6:
        time.sleep(left + 0.5)


def _code(secret: str, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(time.time() + 30 * steps)


def _sign_in(world: OAuthWorld, email: str) -> tuple[httpx.Client, httpx.Response]:
    browser = httpx.Client(base_url=world.url, timeout=30)
    page = browser.get("/login")
    r = browser.post("/login", data={**_fields(page.text), "email": email,
                                     "password": PASSWORD})
    return browser, r


def _enrol(world: OAuthWorld, email: str) -> tuple[httpx.Client, str, list[str]]:
    browser, r = _sign_in(world, email)
    assert r.status_code == 303
    page = browser.get("/account/security")
    assert "<strong>off</strong>" in page.text
    wrong = browser.post("/account/security/start", data={**_fields(page.text),
                                                          "password": "not the password!"})
    assert wrong.status_code == 400 and "not right" in wrong.text
    started = browser.post("/account/security/start", data={**_fields(page.text),
                                                            "password": PASSWORD})
    assert started.status_code == 200 and "<svg" in started.text
    match = re.search(r'<code id="secret">([A-Z2-7]+)</code>', started.text)
    assert match
    secret = match.group(1)
    bad = browser.post("/account/security/confirm", data={**_fields(started.text),
                                                          "code": "000000"})
    assert bad.status_code == 400
    started = browser.post("/account/security/start", data={**_fields(page.text),
                                                            "password": PASSWORD})
    secret = re.findall(r'<code id="secret">([A-Z2-7]+)</code>', started.text)[0]
    done = browser.post("/account/security/confirm", data={**_fields(started.text),
                                                           "code": _code(secret, -1)})
    assert done.status_code == 200, done.text
    codes = re.findall(r"<code>([0-9a-f]{8}-[0-9a-f]{8})</code>", done.text)
    assert len(codes) == mfa.RECOVERY_CODES
    return browser, secret, codes


@pytest.mark.req("HUMAN-MFA", "SEED-MFA-TOTP", "SEED-MFA-PASSWORD")
def test_enrolment_seals_the_secret(world: OAuthWorld) -> None:
    _wait_for_a_fresh_step()
    email, user_id = _person(world)
    browser, secret, _ = _enrol(world, email)
    browser.close()
    sealed = bytes(_superuser(world, "SELECT secret_sealed FROM mfa_totp WHERE user_id = :u",
                              u=user_id)[0][0])
    assert secret.encode() not in sealed
    assert mfa.unseal(world.settings, user_id, sealed) == secret
    session_key = hashlib.sha256(world.settings.secret("session_key").encode()).digest()
    with pytest.raises(InvalidTag):  # never opens under the session key
        AESGCM(session_key).decrypt(sealed[:12], sealed[12:], b"breeze-mcp totp v1:"
                                    + user_id.bytes)
    with pytest.raises(InvalidTag):  # nor as another person's
        mfa.unseal(world.settings, uuid.uuid4(), sealed)


@pytest.mark.req("HUMAN-MFA", "SEED-MFA-TOTP")
def test_sign_in_asks_for_a_code_once_and_refuses_a_replay(world: OAuthWorld) -> None:
    _wait_for_a_fresh_step()
    email, _ = _person(world)
    enrolled, secret, recovery = _enrol(world, email)
    enrolled.close()
    browser, step = _sign_in(world, email)
    assert step.status_code == 200 and 'name="code"' in step.text  # no session yet
    assert browser.get("/account").status_code == 303
    wrong = browser.post("/login/mfa", data={**_fields(step.text), "code": "123456"})
    assert wrong.status_code == 401
    code = _code(secret)
    ok = browser.post("/login/mfa", data={**_fields(step.text), "code": code})
    assert ok.status_code == 303 and browser.get("/account").status_code == 200
    browser.close()
    # The same code again, on another sign-in: refused (the database holds the last step).
    again, step = _sign_in(world, email)
    assert again.post("/login/mfa", data={**_fields(step.text), "code": code}).status_code == 401
    # A recovery code works once.
    assert again.post("/login/mfa", data={**_fields(step.text),
                                          "code": recovery[0]}).status_code == 303
    again.close()
    third, step = _sign_in(world, email)
    assert third.post("/login/mfa", data={**_fields(step.text),
                                          "code": recovery[0]}).status_code == 401
    # A forged ticket is no way round the code.
    forged = {**_fields(step.text), "ticket": "e30.deadbeef", "code": _code(secret, 1)}
    assert third.post("/login/mfa", data=forged).status_code == 401
    third.close()


@pytest.mark.req("HUMAN-MFA", "SEED-OAUTH-CONSENT")
def test_oauth_consent_requires_the_second_factor(world: OAuthWorld) -> None:
    _wait_for_a_fresh_step()
    email, _ = _person(world)
    enrolled, secret, _ = _enrol(world, email)
    enrolled.close()
    client = register(world)
    _, challenge = pkce_pair()
    with httpx.Client(base_url=world.url, timeout=30) as browser:
        login = browser.get(authorize_url(world, client["client_id"], challenge))
        assert 'name="password"' in login.text
        step = browser.post("/login", data={**_fields(login.text), "email": email,
                                            "password": PASSWORD})
        assert step.status_code == 200 and 'name="code"' in step.text  # not the consent yet
        done = browser.post("/login/mfa", data={**_fields(step.text), "code": _code(secret)})
        assert done.status_code == 303
        consent = browser.get(done.headers["location"])
        assert consent.status_code == 200 and "scope_choice" in consent.text


@pytest.mark.req("HUMAN-MFA", "HUMAN-CUT-ACCESS", "SEED-MFA-PASSWORD")
def test_turning_it_off_needs_password_and_code_and_cuts_access(world: OAuthWorld) -> None:
    _wait_for_a_fresh_step()
    email, user_id = _person(world)
    browser, secret, _ = _enrol(world, email)
    page = browser.get("/account/security")
    assert "<strong>on</strong>" in page.text
    r = browser.post("/account/security/disable", data={**_fields(page.text),
                                                        "password": PASSWORD, "code": "000000"})
    assert r.status_code == 400
    r = browser.post("/account/security/disable", data={**_fields(page.text),
                                                        "password": PASSWORD,
                                                        "code": _code(secret)})
    assert r.status_code == 303
    assert "<strong>off</strong>" in browser.get("/account/security").text  # still signed in
    assert _superuser(world, "SELECT count(*) FROM mfa_totp WHERE user_id = :u",
                      u=user_id)[0][0] == 0
    browser.close()
    other, r = _sign_in(world, email)
    assert r.status_code == 303  # no code asked any more
    other.close()
    actions = {row[0] for row in _superuser(
        world, "SELECT action FROM audit_log WHERE acting_user_id = :u", u=user_id)}
    assert {"mfa.enrolled", "mfa.disabled", "auth.sessions_ended"} <= actions


@pytest.mark.req("HUMAN-MFA")
def test_a_required_role_is_taken_to_set_up_at_sign_in(world: OAuthWorld) -> None:
    email, _ = _person(world)  # a technician

    async def require(roles: list[str]) -> None:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            await mfa.require_for_roles(db, world.tenant.id, roles)
        finally:
            await db.dispose()

    asyncio.run(require(["technician"]))
    try:
        browser, r = _sign_in(world, email)
        assert r.status_code == 303 and r.headers["location"] == "/account/security?required=1"
        page = browser.get(r.headers["location"])
        assert "requires two-factor sign-in" in page.text and "Set up" in page.text
        browser.close()
    finally:
        asyncio.run(require([]))
    browser, r = _sign_in(world, email)
    assert r.status_code == 303 and r.headers["location"] != "/account/security?required=1"
    browser.close()


@pytest.mark.req("HUMAN-MFA")
def test_recovery_codes_are_regenerated_with_password_and_code(world: OAuthWorld) -> None:
    _wait_for_a_fresh_step()
    email, _ = _person(world)
    browser, secret, old = _enrol(world, email)
    page = browser.get("/account/security")
    form = {**_fields(page.text), "password": PASSWORD}
    refused = browser.post("/account/security/recovery-codes", data={**form, "code": "000000"})
    assert refused.status_code == 400
    fresh = browser.post("/account/security/recovery-codes", data={**form,
                                                                   "code": _code(secret)})
    assert fresh.status_code == 200
    new = re.findall(r"<code>([0-9a-f]{8}-[0-9a-f]{8})</code>", fresh.text)
    assert len(new) == mfa.RECOVERY_CODES and not set(new) & set(old)
    browser.close()
    signing_in, step = _sign_in(world, email)
    assert signing_in.post("/login/mfa", data={**_fields(step.text),
                                               "code": old[0]}).status_code == 401
    assert signing_in.post("/login/mfa", data={**_fields(step.text),
                                               "code": new[0]}).status_code == 303
    signing_in.close()
