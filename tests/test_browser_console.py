"""The console's journey in a real browser (headless Chromium), with a screenshot of every page.

An owner turns on two-factor sign-in and signs in with a code; creates an API key and calls a
tool with it over HTTP; approves an OAuth consent for a registered client; sees the grant under
Connected apps and disconnects it, after which the client's next MCP call is 401; acknowledges
an alert (Tier 2) from the Alerts page; finds all of it in the Audit log with the right paths;
and exports the log. Screenshots go to ``$BREEZE_TEST_ARTIFACTS/screenshots`` (default
``test-artifacts/screenshots``); the README shows the main ones (``docs/screenshots/``).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from tests.oauth_support import (
    ACCEPT,
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
from tests.test_browser import browser  # noqa: F401 - the Chromium fixture
from tests.test_mfa import _wait_for_a_fresh_step

SCREENSHOTS = Path(os.environ.get("BREEZE_TEST_ARTIFACTS", "test-artifacts")) / "screenshots"


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _mcp(world: OAuthWorld, token: str) -> int:
    return httpx.post(world.mcp_url, timeout=30, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "list_devices", "arguments": {}}}, headers={
        "Authorization": f"Bearer {token}", "Accept": ACCEPT,
        "MCP-Protocol-Version": "2025-06-18"}).status_code


@pytest.mark.req("CONSOLE-BROWSER-JOURNEY", "CONSOLE-DOOR", "CONSOLE-KEYS", "CONSOLE-APPS",
                 "CONSOLE-AUDIT", "HUMAN-MFA")
def test_the_console_journey(world: OAuthWorld, browser: Any) -> None:  # noqa: F811
    owner = world.tech_email.replace("tech-", "owner-")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    landed: list[str] = []

    def callback(route: Any) -> None:  # the OAuth client's redirect URI
        landed.append(route.request.url)
        route.fulfill(status=200, body="ok")

    redirect = httpx.URL(REDIRECT)
    context.route(f"{redirect.scheme}://{redirect.netloc.decode()}/**", callback)
    try:
        # Sign in, turn on two-factor sign-in, sign out, sign in again with a code.
        _wait_for_a_fresh_step()
        page.goto(f"{world.url}/login")
        _shot(page, "01-sign-in")
        page.fill("#email", owner)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.goto(f"{world.url}/account/security")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        secret = page.inner_text("#secret")
        _shot(page, "02-two-factor-setup")
        page.fill("#code", pyotp.TOTP(secret).now())
        page.click("button[type=submit]")
        page.goto(f"{world.url}/console/devices")
        page.click("header.console button:has-text('Sign out')")
        page.goto(f"{world.url}/login?next=/console/devices")
        page.fill("#email", owner)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        _shot(page, "03-sign-in-code")
        page.fill("#code", pyotp.TOTP(secret).at(time.time() + 30))  # the next step's code
        page.click("button[type=submit]")
        page.wait_for_url("**/console/devices")
        _shot(page, "04-devices")
        page.click("table a")  # the first device
        _shot(page, "05-device")

        # An API key, created in the console, calls a tool over HTTP.
        page.goto(f"{world.url}/console/keys")
        page.fill("#key-name", "nightly report")
        page.check("input[name=scope][value='ai:read']")
        page.click("form[action='/console/keys'] button[type=submit]")
        key = page.input_value("#new-key")
        assert key.startswith("bzk_")
        _shot(page, "06-api-key-created")
        r = httpx.post(f"{world.url}/api/v1/tools/list_devices", json={}, timeout=30,
                       headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text

        # An OAuth consent for a registered client.
        client = register(world, client_name="Journey Assistant", redirect_uris=[REDIRECT])
        verifier, challenge = pkce_pair()
        page.goto(authorize_url(world, client["client_id"], challenge))
        _shot(page, "07-consent")
        page.click("button[value=approve]")
        for _ in range(50):  # the redirect to the client is followed asynchronously
            if landed:
                break
            page.wait_for_timeout(100)
        assert landed, "the consent did not reach the client's redirect URI"
        code = httpx.URL(landed[-1]).params["code"]
        tokens = exchange(world, client["client_id"], code, verifier)
        assert tokens.status_code == 200, tokens.text
        access = tokens.json()["access_token"]
        assert _mcp(world, access) == 200

        # Connected apps: the grant is there; disconnecting it ends the client's access.
        page.goto(f"{world.url}/console/apps")
        assert "Journey Assistant" in page.content()
        _shot(page, "08-connected-apps")
        page.click("button[aria-label^='Disconnect Journey Assistant for']")
        assert _mcp(world, access) == 401

        # A Tier 2 action from the Alerts page.
        page.goto(f"{world.url}/console/alerts?status=open")
        _shot(page, "09-alerts")
        page.locator("button:has-text('Acknowledge')").first.click()
        assert "Done" in page.content()
        _shot(page, "10-action-done")

        # The audit log shows all of it, with the right paths; then the export.
        page.goto(f"{world.url}/console/audit")
        _shot(page, "11-audit-log")
        content = page.content()
        for action in ("manage_alert", "oauth.grant_revoked", "api_key.created",
                       "list_devices"):
            assert action in content, action
        with page.expect_download() as download:
            page.click("a:has-text('JSON Lines')")
        lines = Path(download.value.path()).read_text().splitlines()
        entries = [json.loads(line) for line in lines]
        paths = {(e["action"], e["auth_path"]) for e in entries}
        assert ("manage_alert", "session") in paths
        assert ("list_devices", "api_key") in paths
        assert ("list_devices", "oauth") in paths
        assert any(e["action"] == "oauth.grant_revoked" and e["auth_path"] == "session"
                   for e in entries)
        assert any(e["action"] == "api_key.created" and e["auth_path"] == "session"
                   for e in entries)
        assert str(uuid.UUID(entries[0]["tenant_id"])) == str(world.tenant.id)
    finally:
        context.close()
