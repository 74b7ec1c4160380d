"""The web console as a front door of the one pipeline (issue 12, item 1).

Over a real server: a signed-in person's device and alert pages are tool calls through
``call_tool``, audited with ``auth_path`` ``session``, the person as actor and the session as
credential; the person's role caps the tiers through the table that caps keys and consent; a
Tier 3 action asks for the password or a code first (step-up, audited), then not again for
five minutes; Tier 4 is refused; forms without a CSRF token change nothing.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.oauth_support import PASSWORD, HumanAgent, OAuthWorld, module_world
from tests.support import ProvisionedDatabase, superuser_sql


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


def fields_of(page: str) -> dict[str, str]:
    """A page's form fields with their values, as a browser would send them."""
    return {name: html.unescape(value)
            for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', page)}


def signed_in(world: OAuthWorld, email: str) -> HumanAgent:
    agent = HumanAgent(world, email)
    page = agent.http.get("/login")
    r = agent.http.post("/login", data={**fields_of(page.text), "email": email,
                                        "password": PASSWORD})
    assert r.status_code == 303, r.text
    return agent


def csrf(agent: HumanAgent, path: str = "/console/devices") -> str:
    page = agent.http.get(path)
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


def entries(world: OAuthWorld, since: int, **where: Any) -> list[dict[str, Any]]:
    conditions = " AND ".join(f"{k} = :{k}" for k in where)
    rows = superuser_sql(world.test_db, "SELECT * FROM audit_log WHERE id > :since"
                         + (f" AND {conditions}" if conditions else "") + " ORDER BY id",
                         since=since, **where)
    return [dict(r._mapping) for r in rows]


def last_id(world: OAuthWorld) -> int:
    return int(superuser_sql(world.test_db, "SELECT coalesce(max(id), 0) FROM audit_log")[0][0])


def a_device(world: OAuthWorld) -> str:
    return str(world.owner_sql("SELECT id FROM devices ORDER BY hostname LIMIT 1")[0][0])


def an_open_alert(world: OAuthWorld) -> str:
    return str(world.owner_sql("SELECT id FROM alerts WHERE status = 'open'"
                               " ORDER BY created_at LIMIT 1")[0][0])


@pytest.mark.req("CONSOLE-DOOR")
def test_a_page_is_a_tool_call_audited_as_the_session(world: OAuthWorld) -> None:
    agent = signed_in(world, world.tech_email)
    try:
        since = last_id(world)
        page = agent.http.get("/console/devices")
        assert page.status_code == 200 and "Devices" in page.text
        hostnames = [r[0] for r in world.owner_sql("SELECT hostname FROM devices")]
        assert all(h in page.text for h in hostnames)
        # Times as people read them, the exact value kept in <time datetime>.
        seen = world.owner_sql("SELECT last_seen_at FROM devices WHERE last_seen_at IS NOT NULL"
                               " ORDER BY last_seen_at DESC LIMIT 1")[0][0]
        shown = f"{seen.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
        assert re.search(r'<time datetime="[^"]+">' + re.escape(shown) + "</time>", page.text)
        [entry] = entries(world, since, action="list_devices")
        session_id = superuser_sql(
            world.test_db, "SELECT s.id FROM web_sessions s JOIN users u ON u.id = s.user_id"
            " WHERE u.email = :e AND s.revoked_at IS NULL ORDER BY s.created_at DESC LIMIT 1",
            e=world.tech_email)[0][0]
        assert (entry["auth_path"], entry["actor_type"], entry["credential_id"]) == (
            "session", "user", str(session_id))
        assert entry["tenant_id"] == world.tenant.id and entry["risk_tier"] == 1
        assert entry["scopes"] == ["ai:execute", "ai:read", "ai:write"]
        assert entry["outcome"] == "success" and entry["client_id"] is None
        device = agent.http.get(f"/console/devices/{a_device(world)}")
        assert device.status_code == 200
        assert "Reboot" in device.text and 'class="tier tier-3"' in device.text
    finally:
        agent.close()


@pytest.mark.req("CONSOLE-DOOR")
def test_without_a_session_the_console_asks_to_sign_in(world: OAuthWorld) -> None:
    r = httpx.get(f"{world.url}/console/alerts?status=open", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=/console/alerts%3Fstatus%3Dopen"
    r = httpx.post(f"{world.url}/console/tools/manage_alert", follow_redirects=False,
                   data={"alert_id": an_open_alert(world), "action": "resolve"})
    assert r.status_code == 403  # no CSRF token: refused before anything else


@pytest.mark.req("CONSOLE-DOOR")
def test_a_tier_2_action_runs_through_the_pipeline(world: OAuthWorld) -> None:
    agent = signed_in(world, world.tech_email)
    try:
        alert = an_open_alert(world)
        token = csrf(agent, "/console/alerts")
        since = last_id(world)
        r = agent.http.post("/console/tools/manage_alert", data={
            "csrf_token": token, "alert_id": alert, "action": "acknowledge",
            "next": "/console/alerts"})
        assert r.status_code == 200 and "Done" in r.text, r.text
        assert world.owner_sql("SELECT status FROM alerts WHERE id = :a",
                               a=alert)[0][0] == "acknowledged"
        [entry] = entries(world, since, action="manage_alert")
        assert entry["parameters"] == {"alert_id": alert, "action": "acknowledge"}
        assert (entry["risk_tier"], entry["decision"], entry["auth_path"]) == (2, "allowed",
                                                                               "session")
        again = agent.http.post("/console/tools/manage_alert", data={
            "csrf_token": token, "alert_id": alert, "action": "suppress",
            "suppress_minutes": "not a number"})
        assert again.status_code == 400 and "suppress_minutes" in again.text
        forged = agent.http.post("/console/tools/manage_alert", data={
            "csrf_token": "0" * 64, "alert_id": alert, "action": "resolve"})
        assert forged.status_code == 403
        assert world.owner_sql("SELECT status FROM alerts WHERE id = :a",
                               a=alert)[0][0] == "acknowledged"
    finally:
        agent.close()


def _jobs(world: OAuthWorld, device: str) -> int:
    return int(world.owner_sql("SELECT count(*) FROM script_runs WHERE device_id = :d",
                               d=device)[0][0])


@pytest.mark.req("CONSOLE-DOOR", "CONSOLE-STEP-UP")
def test_a_tier_3_action_asks_who_you_are_first(world: OAuthWorld) -> None:
    agent = signed_in(world, world.tech_email)
    try:
        device = a_device(world)
        token = csrf(agent)
        call = {"csrf_token": token, "device_id": device, "interpreter": "bash",
                "script": "uptime", "timeout_seconds": "60",
                "next": f"/console/devices/{device}"}
        before = _jobs(world, device)
        prompt = agent.http.post("/console/tools/run_script", data=call)
        assert prompt.status_code == 200 and "Confirm it is you" in prompt.text
        assert _jobs(world, device) == before  # nothing ran
        carried = fields_of(prompt.text)
        since = last_id(world)
        wrong = agent.http.post("/console/step-up", data={**carried,
                                                          "password": "not my password"})
        assert wrong.status_code == 401 and _jobs(world, device) == before
        ok = agent.http.post("/console/step-up", data={**carried, "password": PASSWORD})
        assert ok.status_code == 200 and "Done" in ok.text, ok.text
        assert _jobs(world, device) == before + 1
        steps = entries(world, since, action="auth.step_up")
        assert [(e["outcome"], e["deny_reason"]) for e in steps] == [
            ("blocked", "wrong_password"), ("success", None)]
        assert all(e["auth_path"] == "session" and e["tenant_id"] == world.tenant.id
                   for e in steps)
        [run] = entries(world, since, action="run_script")
        assert run["parameters"] == {"device_id": device, "interpreter": "bash",
                                     "script": "uptime", "timeout_seconds": 60}
        # Within five minutes, the next Tier 3 action runs at once.
        again = agent.http.post("/console/tools/run_script", data=call)
        assert again.status_code == 200 and "Done" in again.text
        assert _jobs(world, device) == before + 2
    finally:
        agent.close()


@pytest.mark.req("CONSOLE-DOOR", "SEED-TIER4-NEVER")
def test_the_role_caps_the_tiers_and_tier_4_is_never_run(world: OAuthWorld) -> None:
    reader = signed_in(world, world.reader_email)
    tech = signed_in(world, world.tech_email)
    try:
        alert = an_open_alert(world)
        page = reader.http.get("/console/alerts")
        assert page.status_code == 200 and "up to Tier 1" in page.text
        assert re.search(r'disabled aria-disabled="true" title="Your role reaches Tier 1"',
                         page.text)
        since = last_id(world)
        r = reader.http.post("/console/tools/manage_alert", data={
            "csrf_token": csrf(reader), "alert_id": alert, "action": "resolve"})
        assert r.status_code == 403 and "ai:write" in r.text
        [denied] = entries(world, since, action="manage_alert")
        assert (denied["decision"], denied["deny_reason"], denied["scopes"]) == (
            "denied", "insufficient_scope", ["ai:read"])
        wipe = tech.http.post("/console/tools/wipe_device", data={
            "csrf_token": csrf(tech), "device_id": a_device(world)})
        assert wipe.status_code == 403 and "Tier 4" in wipe.text
        [blocked] = entries(world, since, action="wipe_device")
        assert (blocked["outcome"], blocked["deny_reason"]) == ("blocked", "tier4_tool")
    finally:
        reader.close()
        tech.close()


@pytest.mark.req("CONSOLE-DOOR")
def test_an_unknown_device_is_not_found(world: OAuthWorld) -> None:
    agent = signed_in(world, world.tech_email)
    try:
        assert agent.http.get(f"/console/devices/{uuid.uuid4()}").status_code == 404
        assert agent.http.get("/console/devices/not-a-uuid").status_code == 404
    finally:
        agent.close()


@pytest.mark.req("SEED-RLS-ALL-PATHS", "CONSOLE-DOOR")
def test_another_tenants_ids_are_unknown_through_every_door(world: OAuthWorld) -> None:
    """A device and an alert of another tenant: through the console session, an OAuth token
    and an API key alike, reading or acting on them is "not found", and nothing changes."""
    import asyncio

    from breeze_mcp.auth.accounts import create_tenant
    from breeze_mcp.db import Database
    from breeze_mcp.tools.demo import seed_demo_data
    from tests.oauth_support import ACCEPT, connect

    async def other() -> tuple[str, str]:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            tenant = await create_tenant(db, "Elsewhere", slug=f"else-{uuid.uuid4().hex[:6]}")
            await seed_demo_data(db, tenant.id)
        finally:
            await db.dispose()
        device = superuser_sql(world.test_db, "SELECT id FROM devices WHERE tenant_id = :t"
                               " LIMIT 1", t=tenant.id)[0][0]
        alert = superuser_sql(world.test_db, "SELECT id FROM alerts WHERE tenant_id = :t"
                              " AND status = 'open' LIMIT 1", t=tenant.id)[0][0]
        return str(device), str(alert)

    device, alert = asyncio.run(other())
    agent = signed_in(world, world.tech_email)
    _, body = connect(world, world.tech_email, scopes=["ai:read", "ai:write"])
    try:
        assert agent.http.get(f"/console/devices/{device}").status_code == 404
        r = agent.http.post("/console/tools/manage_alert", data={
            "csrf_token": csrf(agent), "alert_id": alert, "action": "resolve"})
        assert r.status_code == 404
        r = httpx.post(f"{world.url}/api/v1/tools/get_device", json={"device_id": device},
                       headers={"Authorization": f"Bearer {world.admin_key}"}, timeout=30)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        r = httpx.post(world.mcp_url, timeout=30, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
                "name": "manage_alert", "arguments": {"alert_id": alert, "action": "resolve"}}},
            headers={"Authorization": f"Bearer {body['access_token']}", "Accept": ACCEPT,
                     "MCP-Protocol-Version": "2025-06-18"})
        assert r.status_code == 200 and r.json()["result"]["isError"] is True
        assert superuser_sql(world.test_db, "SELECT status FROM alerts WHERE id = :a",
                             a=alert)[0][0] == "open"
    finally:
        agent.close()
