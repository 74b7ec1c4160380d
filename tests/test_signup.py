"""Sign-up → mail → verify → webhook → active, over a real server and a real SMTP server.

aiosmtpd runs in the test process and receives what the service sends; the links in the mail
are followed as a person would. Both orders of "verified owner email" and "payment method
attached" activate the tenant; each verification outcome has its status and message; a resend
supersedes earlier links; an address already registered gets a warning mail and the same
answer.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from breeze_mcp.auth import billing
from tests.oauth_support import PASSWORD, OAuthWorld, module_world
from tests.support import ProvisionedDatabase, free_port, superuser_sql, wait_for


class Inbox:
    """An aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for m in self.messages if str(m["To"]).lower() == address.lower()]

    def last_link(self, address: str, page: str = "verify-email") -> str:
        """The token of the link to ``page`` in the last mail to ``address``."""
        wait_for(lambda: bool(self.to(address)), timeout=10)
        body = self.to(address)[-1].get_payload(decode=True)
        assert isinstance(body, bytes)
        match = re.search(rf"https?://\S+/{page}\?token=(\S+)", body.decode())
        assert match, body
        return match.group(1)


@pytest.fixture(scope="module")
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory,
          inbox: tuple[Inbox, int]) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory, smtp_host="127.0.0.1",
                            smtp_port=inbox[1], smtp_starttls=False,
                            signup_rate_limit="1000/hour")


def _superuser(world: OAuthWorld, sql: str, **params: Any) -> list[Any]:
    return superuser_sql(world.test_db, sql, **params)


def _signup(world: OAuthWorld, email: str, organization: str = "Acme IT") -> httpx.Response:
    return httpx.post(f"{world.url}/api/v1/signup", timeout=30, json={
        "organization": organization, "email": email, "password": PASSWORD})


def _verify(world: OAuthWorld, token: str) -> httpx.Response:
    return httpx.post(f"{world.url}/api/v1/verify-email", json={"token": token}, timeout=30)


def _tenant_of(world: OAuthWorld, email: str) -> tuple[str, str]:
    rows = _superuser(world, "SELECT t.id, t.status FROM tenants t JOIN memberships m"
                      " ON m.tenant_id = t.id JOIN users u ON u.id = m.user_id"
                      " WHERE lower(u.email) = lower(:e)", e=email)
    return str(rows[0][0]), str(rows[0][1])


def _attach(world: OAuthWorld, tenant_id: str) -> httpx.Response:
    body = json.dumps({"id": f"evt_{uuid.uuid4().hex}", "type": "payment_method.attached",
                       "tenant_id": tenant_id}).encode()
    signature = billing.sign(world.settings.secret("billing_webhook_secret"), body,
                             int(time.time()))
    return httpx.post(f"{world.url}/api/v1/billing/webhook", content=body, timeout=30,
                      headers={billing.SIGNATURE_HEADER: signature,
                               "Content-Type": "application/json"})


def _address() -> str:
    return f"signup-{uuid.uuid4().hex[:8]}@example.com"


@pytest.mark.req("HUMAN-SIGNUP", "HUMAN-ACTIVATION", "SEED-EMAIL-VERIFY", "SEED-AUTO-ACTIVATE")
def test_signup_verify_then_pay_activates(world: OAuthWorld,
                                          inbox: tuple[Inbox, int]) -> None:
    email = _address()
    r = _signup(world, email)
    assert r.status_code == 202 and r.json()["status"] == "check_your_email", r.text
    tenant_id, status = _tenant_of(world, email)
    assert status == "pending_verification"
    token = inbox[0].last_link(email)
    mail = inbox[0].to(email)[-1]
    assert mail["From"] == world.settings.smtp_from
    assert world.settings.public_url in str(mail.get_payload(decode=True))
    r = _verify(world, token)
    assert r.status_code == 200 and r.json()["status"] == "verified", r.text
    assert _tenant_of(world, email)[1] == "pending_payment"
    assert _attach(world, tenant_id).json()["activated"] is True
    assert _tenant_of(world, email)[1] == "active"


@pytest.mark.req("HUMAN-SIGNUP", "HUMAN-ACTIVATION", "SEED-EMAIL-VERIFY", "SEED-AUTO-ACTIVATE")
def test_signup_pay_then_verify_activates(world: OAuthWorld, inbox: tuple[Inbox, int]) -> None:
    email = _address()
    assert _signup(world, email).status_code == 202
    tenant_id, _ = _tenant_of(world, email)
    assert _attach(world, tenant_id).json() == {
        "status": "processed", "tenant_status": "pending_verification", "activated": False}
    assert _verify(world, inbox[0].last_link(email)).json()["status"] == "verified"
    assert _tenant_of(world, email)[1] == "active"  # the verification completed the pair
    actions = [r[0] for r in _superuser(
        world, "SELECT action FROM audit_log WHERE tenant_id = :t ORDER BY id", t=tenant_id)]
    assert actions[-2:] == ["tenant.activated", "auth.email_verification"]


@pytest.mark.req("HUMAN-SIGNUP", "SEED-EMAIL-MESSAGES")
def test_each_verification_outcome(world: OAuthWorld, inbox: tuple[Inbox, int]) -> None:
    email = _address()
    _signup(world, email)
    first = inbox[0].last_link(email)
    r = httpx.post(f"{world.url}/api/v1/verify-email/resend", json={"email": email},
                   timeout=30)
    assert r.status_code == 202
    wait_for(lambda: len(inbox[0].to(email)) == 2, timeout=10)
    second = inbox[0].last_link(email)
    assert second != first
    r = _verify(world, first)
    assert (r.status_code, r.json()["status"]) == (410, "replaced")
    assert "newer" in r.json()["message"]
    _superuser(world, "UPDATE mail_links SET expires_at = now() - interval '1 s'"
               " WHERE user_id = (SELECT id FROM users WHERE email = :e)"
               " AND superseded_at IS NULL", e=email)
    r = _verify(world, second)
    assert (r.status_code, r.json()["status"]) == (410, "expired")
    httpx.post(f"{world.url}/api/v1/verify-email/resend", json={"email": email}, timeout=30)
    wait_for(lambda: len(inbox[0].to(email)) == 3, timeout=10)
    third = inbox[0].last_link(email)
    assert _verify(world, third).json()["status"] == "verified"
    r = _verify(world, third)
    assert (r.status_code, r.json()["status"]) == (410, "already_used")
    r = _verify(world, "bzv_" + "x" * 43)
    assert (r.status_code, r.json()["status"]) == (400, "invalid")
    outcomes = [r[0] for r in _superuser(
        world, "SELECT coalesce(deny_reason, 'verified') FROM audit_log"
        " WHERE action = 'auth.email_verification' AND acting_user_id ="
        " (SELECT id FROM users WHERE email = :e) ORDER BY id", e=email)]
    assert outcomes == ["replaced", "expired", "verified", "already_used"]


@pytest.mark.req("HUMAN-SIGNUP")
def test_the_same_answer_for_a_registered_address(world: OAuthWorld,
                                                  inbox: tuple[Inbox, int]) -> None:
    email = _address()
    first = _signup(world, email)
    again = _signup(world, email.upper(), organization="Someone else")
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    wait_for(lambda: len(inbox[0].to(email)) == 2, timeout=10)  # the link, then the warning
    assert "already has one" in str(inbox[0].to(email)[-1].get_payload(decode=True))
    assert len(_superuser(world, "SELECT 1 FROM users WHERE lower(email) = :e",
                          e=email.lower())) == 1
    # A resend for an unknown address answers the same and sends nothing.
    r = httpx.post(f"{world.url}/api/v1/verify-email/resend",
                   json={"email": _address()}, timeout=30)
    assert r.status_code == 202 and r.json()["status"] == "check_your_email"


@pytest.mark.req("HUMAN-SIGNUP")
@pytest.mark.parametrize(("body", "status"), [
    ({"organization": "A", "email": "not-an-address", "password": PASSWORD}, 400),
    ({"organization": "A", "email": "weak@example.com", "password": "password"}, 400),
    ({"organization": "", "email": "x@example.com", "password": PASSWORD}, 400),
    ({"email": "x@example.com", "password": PASSWORD}, 400),
])
def test_bad_signups_create_nothing(world: OAuthWorld, body: dict[str, Any],
                                    status: int) -> None:
    before = _superuser(world, "SELECT count(*) FROM tenants")[0][0]
    r = httpx.post(f"{world.url}/api/v1/signup", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert _superuser(world, "SELECT count(*) FROM tenants")[0][0] == before


@pytest.mark.req("HUMAN-MAIL")
@pytest.mark.anyio
async def test_without_smtp_mail_goes_to_the_outbox(
    settings: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from breeze_mcp.mail import Mailer, message

    assert settings.smtp_host is None
    outbox = tmp_path / "outbox"
    link = f"{settings.public_url}/verify-email?token=bzv_abc"
    await Mailer(settings, outbox).send(message(settings, "a@example.com", "Hi", f"Go: {link}\n"))
    [written] = list(outbox.iterdir())
    assert written.suffix == ".eml" and written.stat().st_mode & 0o777 == 0o600
    parsed = message_from_bytes(written.read_bytes())
    assert parsed["To"] == "a@example.com" and parsed["Subject"] == "Hi"
    assert link in caplog.text  # the link is logged, so `make run` needs nothing else


@pytest.mark.req("HUMAN-MAIL")
@pytest.mark.anyio
async def test_an_unreachable_smtp_server_is_a_mail_error(settings: Any, tmp_path: Any) -> None:
    from breeze_mcp.mail import Mailer, MailError, message

    refused = settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": free_port(),
                                          "smtp_starttls": False})
    with pytest.raises(MailError):
        await Mailer(refused, tmp_path).send(message(refused, "a@example.com", "Hi", "x"))


@pytest.mark.req("HUMAN-SIGNUP", "SEED-EMAIL-MESSAGES")
def test_the_verification_page_and_its_one_click_resend(world: OAuthWorld,
                                                        inbox: tuple[Inbox, int]) -> None:
    email = _address()
    _signup(world, email)
    first = inbox[0].last_link(email)
    httpx.post(f"{world.url}/api/v1/verify-email/resend", json={"email": email}, timeout=30)
    wait_for(lambda: len(inbox[0].to(email)) == 2, timeout=10)
    with httpx.Client(base_url=world.url, timeout=30) as browser:
        page = browser.get("/verify-email", params={"token": first})
        assert page.status_code == 410 and "This link was replaced" in page.text
        assert "newer verification link" in page.text
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
        assert fields["token"] == first
        forged = browser.post("/verify-email/resend", data={"token": first,
                                                           "csrf_token": "forged"})
        assert forged.status_code == 403
        assert len(inbox[0].to(email)) == 2
        resent = browser.post("/verify-email/resend", data=fields)
        assert resent.status_code == 202 and "on its way" in resent.text
        wait_for(lambda: len(inbox[0].to(email)) == 3, timeout=10)
        newest = inbox[0].last_link(email)
        done = browser.get("/verify-email", params={"token": newest})
        assert done.status_code == 200 and "Email verified" in done.text
        assert 'href="/login"' in done.text
        again = browser.get("/verify-email", params={"token": newest})
        assert again.status_code == 410 and "already used" in again.text
        assert browser.get("/verify-email").status_code == 400  # no token: invalid


@pytest.mark.req("HUMAN-SIGNUP")
def test_the_signup_page(world: OAuthWorld, inbox: tuple[Inbox, int]) -> None:
    email = _address()
    with httpx.Client(base_url=world.url, timeout=30) as browser:
        page = browser.get("/signup")
        assert page.status_code == 200 and 'name="organization"' in page.text
        fields = dict(re.findall(r'name="(csrf_token)" value="([^"]*)"', page.text))
        weak = browser.post("/signup", data={**fields, "organization": "Acme",
                                             "email": email, "password": "password"})
        assert weak.status_code == 400 and 'role="alert"' in weak.text
        assert f'value="{email}"' in weak.text  # the form keeps what was typed
        assert browser.post("/signup", data={"organization": "Acme", "email": email,
                                             "password": PASSWORD}).status_code == 403
        done = browser.post("/signup", data={**fields, "organization": "Acme", "email": email,
                                             "password": PASSWORD})
        assert done.status_code == 202 and "Check your email" in done.text
        token = inbox[0].last_link(email)
        again = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', done.text))
        assert again["email"] == email
        assert browser.post("/verify-email/resend", data=again).status_code == 202
        wait_for(lambda: len(inbox[0].to(email)) == 2, timeout=10)
        assert _verify(world, token).json()["status"] == "replaced"
    assert _tenant_of(world, email)[1] == "pending_verification"


@pytest.mark.req("HUMAN-ACTIVATION")
def test_the_owners_account_page_says_what_is_missing(world: OAuthWorld,
                                                      inbox: tuple[Inbox, int]) -> None:
    from tests.oauth_support import HumanAgent

    email = _address()
    _signup(world, email, organization="Waiting Room Ltd")
    tenant_id, _ = _tenant_of(world, email)
    agent = HumanAgent(world, email)
    try:
        page = agent.http.get("/login")
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
        assert agent.http.post("/login", data={**fields, "email": email,
                                               "password": PASSWORD}).status_code == 303
        account = agent.http.get("/account").text
        assert "Waiting Room Ltd" in account and "Not active yet" in account
        assert "a verified owner email" in account and "a payment method" in account
        _verify(world, inbox[0].last_link(email))
        account = agent.http.get("/account").text
        assert "a verified owner email" not in account and "a payment method" in account
        _attach(world, tenant_id)
        account = agent.http.get("/account").text
        assert "Not active yet" not in account and "Active" in account
    finally:
        agent.close()
