"""Self-service password reset by a mailed link, over a real server and a real SMTP server.

The link in the mail is followed as a person would (the page, then its form); a reset ends every
web session of the person and revokes every OAuth grant they made in the same request, while
their API key keeps working (it follows its creator, who still has access). Nothing says whether
an address has an account: the same answer, and no mail, for an unknown or suspended address.
Each link outcome has its status and message; a newer link replaces the older; a weak password
changes nothing and leaves the link usable; one address gets at most five mails an hour.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from breeze_mcp.auth.accounts import set_suspended
from tests.oauth_support import PASSWORD, HumanAgent, OAuthWorld, module_world
from tests.support import ProvisionedDatabase, superuser_sql, wait_for
from tests.test_access_cut import Person, _actions, _cut, _db_run, _works
from tests.test_signup import Inbox, inbox  # noqa: F401 - the SMTP server fixture

NEW_PASSWORD = "a completely New passphrase 31"


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory,
          inbox: tuple[Inbox, int]) -> Iterator[OAuthWorld]:  # noqa: F811 - the fixture
    yield from module_world(test_db, tmp_path_factory, smtp_host="127.0.0.1",
                            smtp_port=inbox[1], smtp_starttls=False,
                            signup_rate_limit="1000/hour")


def _ask(world: OAuthWorld, email: str) -> httpx.Response:
    return httpx.post(f"{world.url}/api/v1/password-reset", json={"email": email}, timeout=30)


def _confirm(world: OAuthWorld, token: str, password: str = NEW_PASSWORD) -> httpx.Response:
    return httpx.post(f"{world.url}/api/v1/password-reset/confirm", timeout=30,
                      json={"token": token, "password": password})


def _mails(box: Inbox, email: str) -> int:
    return len(box.to(email))


def _signs_in(world: OAuthWorld, email: str, password: str) -> bool:
    agent = HumanAgent(world, email)
    try:
        page = agent.http.get("/login")
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
        r = agent.http.post("/login", data={**fields, "email": email, "password": password})
        return r.status_code == 303
    finally:
        agent.close()


@pytest.mark.req("HUMAN-PASSWORD-RESET", "HUMAN-CUT-ACCESS", "HUMAN-MAIL")
def test_the_mailed_link_resets_the_password_and_cuts_access(
    world: OAuthWorld, inbox: tuple[Inbox, int],  # noqa: F811 - the fixture
) -> None:
    person = Person(world)
    try:
        _works(world, person)
        r = _ask(world, person.email.upper())  # the address as typed, in any case
        assert r.status_code == 202 and r.json()["status"] == "check_your_email", r.text
        token = inbox[0].last_link(person.email, "reset-password")
        assert token.startswith("bzp_")
        mail = inbox[0].to(person.email)[-1]
        assert mail["Subject"] == "Reset your Breeze MCP password"
        assert f"{world.settings.public_url}/reset-password?token=" in str(
            mail.get_payload(decode=True))
        _works(world, person)  # asking changes nothing

        # The page, as the person's browser opens the link: a form, nothing used yet.
        browser = HumanAgent(world, person.email)
        try:
            page = browser.http.get(f"/reset-password?token={token}")
            assert page.status_code == 200 and 'name="password"' in page.text, page.text
            assert browser.http.get(f"/reset-password?token={token}").status_code == 200
            fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
            assert fields["token"] == token
            weak = browser.http.post("/reset-password", data={**fields, "password": "short"})
            assert weak.status_code == 400 and 'role="alert"' in weak.text
            _works(world, person)  # a weak password changed nothing
            done = browser.http.post("/reset-password", data={**fields,
                                                                "password": NEW_PASSWORD})
            assert done.status_code == 200 and "Password changed" in done.text, done.text
        finally:
            browser.close()

        _cut(world, person, key_refused=False)  # sessions and grants ended; the key follows
        assert not _signs_in(world, person.email, PASSWORD)
        assert _signs_in(world, person.email, NEW_PASSWORD)
        again = _confirm(world, token, "yet another New passphrase 5")
        assert again.status_code == 410 and again.json()["status"] == "already_used"
        actions = _actions(world, _user_id(world, person.email))
        assert actions[actions.index("auth.password_reset_requested"):] == [
            "auth.password_reset_requested", "user.password_reset", "auth.sessions_ended",
            "oauth.grant_revoked", "auth.login_failed", "auth.login", "user.password_reset"]
    finally:
        person.close()


def _user_id(world: OAuthWorld, email: str) -> uuid.UUID:
    rows = superuser_sql(world.test_db, "SELECT id FROM users WHERE lower(email) = lower(:e)",
                         e=email)
    return uuid.UUID(str(rows[0][0]))


@pytest.mark.req("HUMAN-PASSWORD-RESET")
def test_an_unknown_or_suspended_address_gets_the_same_answer_and_no_mail(
    world: OAuthWorld, inbox: tuple[Inbox, int],  # noqa: F811 - the fixture
) -> None:
    known = Person(world)
    suspended = Person(world)
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    try:
        _db_run(world, lambda db: set_suspended(db, suspended.email, True))
        answers = [_ask(world, email) for email in (unknown, suspended.email, known.email)]
        assert len({(a.status_code, a.content) for a in answers}) == 1, answers
        # The page answers alike too.
        pages = []
        for email in (unknown, known.email):
            agent = HumanAgent(world, email)
            try:
                form = agent.http.get("/forgot-password")
                fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.text))
                r = agent.http.post("/forgot-password", data={**fields, "email": email})
                pages.append((r.status_code, re.sub(r'nonce="[^"]+"', "", r.text)))
            finally:
                agent.close()
        assert pages[0] == pages[1] and pages[0][0] == 202
        # The known address's two mails arrive; by then the others' would have too.
        wait_for(lambda: _mails(inbox[0], known.email) == 2, timeout=10)
        time.sleep(0.5)
        assert _mails(inbox[0], unknown) == 0 and _mails(inbox[0], suspended.email) == 0
        reasons = superuser_sql(
            world.test_db, "SELECT deny_reason FROM audit_log WHERE action ="
            " 'auth.password_reset_requested' AND parameters->>'email' IN (:u, :s)"
            " ORDER BY id", u=unknown, s=suspended.email)
        assert [r[0] for r in reasons] == ["unknown_email", "user_suspended", "unknown_email"]
    finally:
        known.close()
        suspended.close()


@pytest.mark.req("HUMAN-PASSWORD-RESET")
def test_each_link_outcome_has_its_status_and_message(
    world: OAuthWorld, inbox: tuple[Inbox, int],  # noqa: F811 - the fixture
) -> None:
    person = Person(world)
    try:
        _ask(world, person.email)
        first = inbox[0].last_link(person.email, "reset-password")
        _ask(world, person.email)
        wait_for(lambda: _mails(inbox[0], person.email) == 2, timeout=10)
        second = inbox[0].last_link(person.email, "reset-password")
        assert second != first
        replaced = _confirm(world, first)
        assert replaced.status_code == 410 and replaced.json()["status"] == "replaced"
        assert "newer" in replaced.json()["message"]
        weak = _confirm(world, second, "password")
        assert weak.status_code == 400 and weak.json()["error"] == "invalid_request"
        superuser_sql(world.test_db, "UPDATE mail_links SET expires_at = now() - interval '1 s'"
                      " WHERE user_id = :u AND used_at IS NULL AND superseded_at IS NULL",
                      u=_user_id(world, person.email))
        expired = _confirm(world, second)
        assert expired.status_code == 410 and expired.json()["status"] == "expired"
        browser = HumanAgent(world, person.email)
        try:
            page = browser.http.get(f"/reset-password?token={second}")
            assert page.status_code == 410 and "has expired" in page.text
            assert 'href="/forgot-password"' in page.text and 'name="password"' not in page.text
        finally:
            browser.close()
        for bogus in ("bzp_not-a-token", "nothing like it", "bzp_" + "x" * 200):
            r = _confirm(world, bogus)
            assert r.status_code == 400 and r.json()["status"] == "invalid", bogus
        assert _signs_in(world, person.email, PASSWORD)  # none of it changed the password
    finally:
        person.close()


@pytest.mark.req("HUMAN-PASSWORD-RESET")
def test_a_verification_link_is_not_a_reset_link(
    world: OAuthWorld, inbox: tuple[Inbox, int],  # noqa: F811 - the fixture
) -> None:
    email = f"both-{uuid.uuid4().hex[:8]}@example.com"
    httpx.post(f"{world.url}/api/v1/signup", timeout=30, json={
        "organization": "Both Ltd", "email": email, "password": PASSWORD})
    verification = inbox[0].last_link(email)
    assert _confirm(world, verification).json()["status"] == "invalid"
    _ask(world, email)  # a reset link does not supersede the verification link
    wait_for(lambda: _mails(inbox[0], email) == 2, timeout=10)
    reset = inbox[0].last_link(email, "reset-password")
    assert httpx.post(f"{world.url}/api/v1/verify-email", json={"token": reset},
                      timeout=30).json()["status"] == "invalid"
    assert httpx.post(f"{world.url}/api/v1/verify-email", json={"token": verification},
                      timeout=30).json()["status"] == "verified"


@pytest.mark.req("HUMAN-PASSWORD-RESET")
def test_one_address_gets_at_most_five_mails_an_hour(
    world: OAuthWorld, inbox: tuple[Inbox, int],  # noqa: F811 - the fixture
) -> None:
    person = Person(world)
    try:
        answers = {_ask(world, person.email).status_code for _ in range(7)}
        assert answers == {202}
        wait_for(lambda: _mails(inbox[0], person.email) == 5, timeout=10)
        time.sleep(0.5)
        assert _mails(inbox[0], person.email) == 5
        reasons = [r[0] for r in superuser_sql(
            world.test_db, "SELECT deny_reason FROM audit_log WHERE action ="
            " 'auth.password_reset_requested' AND acting_user_id = :u ORDER BY id",
            u=_user_id(world, person.email))]
        assert reasons == [None] * 5 + ["rate_limited"] * 2
    finally:
        person.close()
