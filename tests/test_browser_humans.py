"""A person in a real browser (headless Chromium): signs up, verifies from the mail, turns on
two-factor sign-in with a code computed from the secret the page shows, signs out, and signs
in again with the password and a code."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest

from tests.oauth_support import PASSWORD, OAuthWorld, module_world
from tests.support import ProvisionedDatabase
from tests.test_browser import browser  # noqa: F401 - the Chromium fixture
from tests.test_mfa import _wait_for_a_fresh_step
from tests.test_signup import Inbox, inbox  # noqa: F401 - the SMTP server fixture


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory,
          inbox: tuple[Inbox, int]) -> Iterator[OAuthWorld]:  # noqa: F811
    yield from module_world(test_db, tmp_path_factory, smtp_host="127.0.0.1",
                            smtp_port=inbox[1], smtp_starttls=False)


@pytest.mark.req("HUMAN-SIGNUP", "HUMAN-MFA")
def test_sign_up_verify_enrol_sign_out_and_in(world: OAuthWorld, browser: Any,  # noqa: F811
                                              inbox: tuple[Inbox, int]) -> None:  # noqa: F811
    _wait_for_a_fresh_step()
    email = f"browser-{uuid.uuid4().hex[:8]}@example.com"
    page = browser.new_page()
    try:
        page.goto(f"{world.url}/signup")
        page.fill("#organization", "Browser MSP")
        page.fill("#email", email)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        assert "Check your email" in page.content()

        page.goto(f"{world.url}/verify-email?token={inbox[0].last_link(email)}")
        assert "Email verified" in page.content()

        page.goto(f"{world.url}/login")
        page.fill("#email", email)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.goto(f"{world.url}/account/security")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        secret = page.inner_text("#secret")
        assert page.locator("svg").count() == 1  # the QR code, rendered by the server
        page.fill("#code", pyotp.TOTP(secret).now())
        page.click("button[type=submit]")
        assert page.locator("ul.codes li").count() == 10

        page.goto(f"{world.url}/account/connections")
        page.click("text=Sign out")
        page.goto(f"{world.url}/account")
        assert "/login" in page.url

        page.goto(f"{world.url}/login")
        page.fill("#email", email)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        assert page.locator("#code").count() == 1  # the second step, no session yet
        page.fill("#code", pyotp.TOTP(secret).at(time.time() + 30))  # the next step's code
        page.click("button[type=submit]")
        page.goto(f"{world.url}/account")
        assert "Where you are signed in" in page.content()
    finally:
        page.close()


@pytest.mark.req("HUMAN-PASSWORD-RESET")
def test_forgot_password_from_the_sign_in_page(world: OAuthWorld, browser: Any,  # noqa: F811
                                               inbox: tuple[Inbox, int]) -> None:  # noqa: F811
    email = f"forgot-{uuid.uuid4().hex[:8]}@example.com"
    page = browser.new_page()
    try:
        page.goto(f"{world.url}/signup")
        page.fill("#organization", "Forgetful MSP")
        page.fill("#email", email)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")

        page.goto(f"{world.url}/login")
        page.click("text=Forgot your password?")
        page.fill("#email", email)
        page.click("button[type=submit]")
        assert "a mail with a link to choose a new password" in page.content()

        page.goto(f"{world.url}/reset-password?token="
                  f"{inbox[0].last_link(email, 'reset-password')}")
        page.fill("#password", "a fresh Browser passphrase 8")
        page.click("button[type=submit]")
        assert "Password changed" in page.content()
        page.click("a[href='/login']")
        page.fill("#email", email)
        page.fill("#password", "a fresh Browser passphrase 8")
        page.click("button[type=submit]")
        page.goto(f"{world.url}/account")
        assert "Where you are signed in" in page.content()
    finally:
        page.close()
