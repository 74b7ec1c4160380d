"""The sign-in and consent pages in a real browser (headless Chromium).

Uses the system Chromium (``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH, or
``BREEZE_TEST_CHROMIUM``); skipped, with the reason printed, where there is none.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.oauth_support import (
    PASSWORD,
    REDIRECT,
    OAuthWorld,
    authorize_url,
    exchange,
    module_world,
    pkce_pair,
    register,
)
from tests.support import ProvisionedDatabase


def _chromium() -> str | None:
    explicit = os.environ.get("BREEZE_TEST_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine (install the 'chromium' package or set "
                    "BREEZE_TEST_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


@pytest.mark.req("SEED-OAUTH-CONSENT", "OAUTH-CONSENT-SCOPES", "OAUTH-AUTHZ-RESPONSE")
def test_sign_in_and_consent_in_a_browser(world: OAuthWorld, browser: Any) -> None:
    client = register(world, client_name="Browser Test App", redirect_uris=[REDIRECT])
    verifier, challenge = pkce_pair()
    context = browser.new_context()
    page = context.new_page()
    landed: list[str] = []

    def callback(route: Any) -> None:  # the client's redirect URI
        landed.append(route.request.url)
        route.fulfill(status=200, body="ok")

    page.route("http://127.0.0.1:7777/**", callback)
    try:
        page.goto(authorize_url(world, client["client_id"], challenge, state="s p&a=c/é"))
        assert "Browser Test App" in page.content()
        page.fill("#email", world.tech_email)
        page.fill("#password", "wrong password entirely")
        page.click("button[type=submit]")
        assert "Wrong email or password." in page.content()
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")

        # The consent screen: client, redirect host, each scope in words.
        page.wait_for_selector("#client-name")
        assert page.inner_text("#client-name") == "Browser Test App"
        assert page.inner_text("#redirect-host") == "127.0.0.1"
        text = page.inner_text("main")
        assert "Read devices, alerts, device health and notes" in text
        assert "Run scripts, deploy patches, isolate and reboot devices" in text
        assert "never available" in text
        # The human grants fewer scopes than asked.
        page.uncheck("input[value='ai:execute']")
        page.click("button[value=approve]")
        for _ in range(50):
            if landed:
                break
            page.wait_for_timeout(100)
        assert landed, f"the browser never reached the client's redirect URI: {page.url} " \
            + page.content()[-600:]
        got = httpx.URL(landed[0])
        assert got.params["state"] == "s p&a=c/é"
        assert got.params["iss"] == world.settings.issuer
        r = exchange(world, client["client_id"], got.params["code"], verifier,
                     redirect_uri=REDIRECT)
        assert r.status_code == 200, r.text
        assert r.json()["scope"] == "ai:read ai:write"
    finally:
        context.close()


@pytest.mark.req("OAUTH-CONSENT-SCOPES")
def test_pages_refuse_to_be_framed(world: OAuthWorld, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        # A page on another origin tries to frame the sign-in page (clickjacking).
        page.route("http://attacker.test/**", lambda route: route.fulfill(
            status=200, content_type="text/html",
            body=f'<iframe id="f" src="{world.url}/login" width="600" height="400"></iframe>'))
        page.goto("http://attacker.test/")
        page.wait_for_timeout(500)
        framed = [f for f in page.frames if f != page.main_frame]
        assert framed
        # Chromium blocks the frame (frame-ancestors 'none'): no sign-in form inside it.
        assert all("password" not in f.content() for f in framed)
    finally:
        context.close()
    direct = httpx.get(f"{world.url}/login")
    assert "frame-ancestors 'none'" in direct.headers["content-security-policy"]
