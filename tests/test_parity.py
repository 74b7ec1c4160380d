"""Audit parity across the three front doors (issue 12, item 2), one table.

The same tool call — Tier 1, 2 and 3, allowed and denied, and a Tier 4 attempt — made through
the web console (a session), an OAuth access token (over MCP) and an API key (over REST),
by the same person with the same scopes, writes entries equal in every field except those
that name the door or the credential (``auth_path``, ``actor_type``, ``actor_id``,
``credential_id``, ``client_id``) and the per-request ones (``id``, ``request_id``,
``occurred_at``, ``duration_ms``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.db import Database
from tests.oauth_support import (
    ACCEPT,
    PASSWORD,
    HumanAgent,
    OAuthWorld,
    connect,
    module_world,
)
from tests.support import ProvisionedDatabase
from tests.test_console import a_device, an_open_alert, csrf, entries, fields_of, last_id, signed_in

#: Fields that name the door or the credential, and the per-request ones.
DIFFERING = {"auth_path", "actor_type", "actor_id", "credential_id", "client_id", "id",
             "request_id", "occurred_at", "duration_ms"}
ALL = ["ai:read", "ai:write", "ai:execute"]
USER_AGENT = "parity-test/1.0"


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory)


@dataclass
class Doors:
    """One person's three ways in, with the same scopes."""

    console: HumanAgent
    csrf: str  # the console session's form token (bound to the session, fetched once)
    token: str
    key: str

    def close(self) -> None:
        self.console.close()


def _key(world: OAuthWorld, email: str, scopes: list[str]) -> str:
    """A key of ``email``'s own. The CLI's service lets only owners and admins create keys,
    so a member of another role is made admin for the moment of its creation; the key then
    follows the role they have again (its scopes fit it)."""
    role = world.owner_sql("SELECT m.role FROM memberships m JOIN users u ON u.id = m.user_id"
                           " WHERE u.email = :e", e=email)[0][0]
    world.owner_sql("UPDATE memberships SET role = 'admin' WHERE user_id ="
                    " (SELECT id FROM users WHERE email = :e)", e=email)

    async def make() -> str:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            _, key = await create_api_key(db, world.tenant, name="parity",
                                          scopes=",".join(scopes), creator_email=email)
            return key
        finally:
            await db.dispose()

    try:
        return asyncio.run(make())
    finally:
        world.owner_sql("UPDATE memberships SET role = :r WHERE user_id ="
                        " (SELECT id FROM users WHERE email = :e)", r=role, e=email)


def _doors(world: OAuthWorld, email: str, scopes: list[str]) -> Doors:
    _, body = connect(world, email, scopes=scopes)
    console = signed_in(world, email)
    console.http.headers["User-Agent"] = USER_AGENT
    if "ai:execute" in scopes:  # confirm who they are once: Tier 3 then runs at once
        prompt = console.http.post("/console/tools/run_script", data={
            "csrf_token": csrf(console), "device_id": a_device(world), "interpreter": "bash",
            "script": "true"})
        r = console.http.post("/console/step-up", data={**fields_of(prompt.text),
                                                         "password": PASSWORD})
        assert r.status_code == 200, r.text
    return Doors(console, csrf(console), body["access_token"], _key(world, email, scopes))


def via_console(world: OAuthWorld, doors: Doors, tool: str, arguments: dict[str, Any]) -> None:
    form = {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in arguments.items()}
    doors.console.http.post(f"/console/tools/{tool}",
                            data={**form, "csrf_token": doors.csrf})


def via_oauth(world: OAuthWorld, doors: Doors, tool: str, arguments: dict[str, Any]) -> None:
    httpx.post(world.mcp_url, timeout=30, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}}, headers={
        "Authorization": f"Bearer {doors.token}", "Accept": ACCEPT,
        "MCP-Protocol-Version": "2025-06-18", "User-Agent": USER_AGENT})


def via_key(world: OAuthWorld, doors: Doors, tool: str, arguments: dict[str, Any]) -> None:
    httpx.post(f"{world.url}/api/v1/tools/{tool}", timeout=30, content=json.dumps(arguments),
               headers={"Authorization": f"Bearer {doors.key}", "User-Agent": USER_AGENT,
                        "Content-Type": "application/json"})


PATHS: dict[str, Callable[[OAuthWorld, Doors, str, dict[str, Any]], None]] = {
    "session": via_console, "oauth": via_oauth, "api_key": via_key}


def _cases(world: OAuthWorld) -> list[tuple[str, str, dict[str, Any], str]]:
    """(who, tool, arguments, expected outcome): who is ``tech`` (every scope) or ``reader``
    (ai:read)."""
    device, alert = a_device(world), an_open_alert(world)
    suppress = {"alert_id": alert, "action": "suppress", "suppress_minutes": 60}
    script = {"device_id": device, "interpreter": "bash", "script": "uptime",
              "timeout_seconds": 60}
    return [
        ("tech", "list_devices", {"site": "HQ"}, "success"),  # Tier 1, allowed
        ("tech", "manage_alert", suppress, "success"),  # Tier 2, allowed
        ("tech", "run_script", script, "success"),  # Tier 3, allowed
        ("reader", "list_devices", {"status": "online"}, "success"),  # Tier 1, allowed
        ("reader", "manage_alert", suppress, "blocked"),  # Tier 2, denied: ai:read
        ("reader", "run_script", script, "blocked"),  # Tier 3, denied
        ("tech", "wipe_device", {"device_id": device}, "blocked"),  # Tier 4, never
    ]


@pytest.mark.req("SEED-AUDIT-PARITY")
def test_the_same_call_writes_the_same_entry_through_every_door(world: OAuthWorld) -> None:
    people = {"tech": _doors(world, world.tech_email, ALL),
              "reader": _doors(world, world.reader_email, ["ai:read"])}
    try:
        for who, tool, arguments, outcome in _cases(world):
            by_path: dict[str, dict[str, Any]] = {}
            for path, call in PATHS.items():
                since = last_id(world)
                call(world, people[who], tool, arguments)
                [entry] = entries(world, since, action=tool)
                by_path[path] = entry
            session, oauth, key = (by_path[p] for p in PATHS)
            assert session["outcome"] == outcome, (who, tool, session)
            for path, entry in by_path.items():
                assert entry["auth_path"] == path, entry
            same = {k: v for k, v in session.items() if k not in DIFFERING}
            for path in ("oauth", "api_key"):
                other = {k: v for k, v in by_path[path].items() if k not in DIFFERING}
                assert other == same, (who, tool, path, {
                    k: (same[k], other[k]) for k in same if same[k] != other[k]})
            assert session["actor_type"] == "user" and oauth["actor_type"] == "oauth_client"
            assert key["actor_type"] == "api_key" and session["client_id"] is None
            assert oauth["client_id"] is not None
    finally:
        for doors in people.values():
            doors.close()


#: Parameters naming the subject of a security event (the key or grant it created or ended).
SUBJECT = {"key_id", "grant_id"}


def _same_but_door(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The fields where two entries differ, other than the door's, the credential's, the
    per-request ones, and the event's subject (its own id)."""
    differ = DIFFERING | {"credential_id"}
    a = {**a, "parameters": {k: v for k, v in a["parameters"].items() if k not in SUBJECT}}
    b = {**b, "parameters": {k: v for k, v in b["parameters"].items() if k not in SUBJECT}}
    return {k: (a[k], b[k]) for k in a if k not in differ and a[k] != b[k]}


@pytest.mark.req("SEED-AUDIT-PARITY", "CONSOLE-KEYS", "CONSOLE-APPS")
def test_security_events_have_one_shape_through_the_console_and_the_admin_api(
    world: OAuthWorld,
) -> None:
    owner = world.tech_email.replace("tech-", "owner-")
    console = signed_in(world, owner)
    console.http.headers["User-Agent"] = USER_AGENT
    # The owner's own key with every scope: the same scopes as the owner's session.
    api = {"Authorization": f"Bearer {_key(world, owner, ALL)}", "User-Agent": USER_AGENT}
    try:
        # Key creation.
        token = csrf(console, "/console/keys")
        since = last_id(world)
        r = console.http.post("/console/keys", data={"csrf_token": token, "name": "same",
                                                     "scope": "ai:read"})
        assert r.status_code == 201 and "bzk_" in r.text, r.text
        [by_console] = entries(world, since, action="api_key.created")
        since = last_id(world)
        r = httpx.post(f"{world.url}/api/v1/keys", json={"name": "same", "scopes": ["ai:read"]},
                       headers=api, timeout=30)
        assert r.status_code in (200, 201), r.text
        [by_api] = entries(world, since, action="api_key.created")
        assert (by_console["auth_path"], by_api["auth_path"]) == ("session", "api_key")
        assert _same_but_door(by_console, by_api) == {}

        # Revoking an OAuth grant.
        revoked = []
        for way in ("console", "api"):
            connect(world, world.tech_email, scopes=["ai:read"])
            grants = httpx.get(f"{world.url}/api/v1/oauth/grants", headers=api,
                               timeout=30).json()["grants"]
            grant = max(grants, key=lambda g: g["created_at"])
            since = last_id(world)
            if way == "console":
                r = console.http.post(f"/console/apps/grants/{grant['id']}/disconnect",
                                      data={"csrf_token": csrf(console, "/console/apps")})
            else:
                r = httpx.delete(f"{world.url}/api/v1/oauth/grants/{grant['id']}",
                                 headers=api, timeout=30)
            assert r.status_code in (200, 303), r.text
            [entry] = entries(world, since, action="oauth.grant_revoked")
            revoked.append(entry)
        # The same fields; only the recorded reason says who revoked (the person, an admin).
        reasons = {k: v for k, v in _same_but_door(*revoked).items()}
        assert set(reasons) <= {"parameters"}, reasons
        if reasons:
            a, b = reasons["parameters"]
            assert {k for k in a if a[k] != b.get(k)} == {"reason"}, (a, b)
            assert set(a) == set(b)
    finally:
        console.close()
