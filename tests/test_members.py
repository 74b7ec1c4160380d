"""Members in the web console (issue 12, item 3), over a real server and a real SMTP server.

Owners and admins invite by email (a mailed single-use link that creates the account, or joins
an existing one after sign-in), change roles, suspend, resume and remove; a technician is
refused every page and form (403, audited). The consequences are those of the humans issue: a
demotion narrows keys and grants from the next request, a suspension or removal ends the
person's sessions, revokes their grants and stops their keys. Owners are protected from admins,
the last owner from everyone.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from breeze_mcp.auth.accounts import Tenant, create_tenant, create_user, set_suspended
from breeze_mcp.auth.api_keys import create_api_key
from breeze_mcp.db import Database
from tests.oauth_support import (
    PASSWORD,
    HumanAgent,
    OAuthWorld,
    authorize_url,
    code_from,
    exchange,
    mcp_call,
    module_world,
    pkce_pair,
    register,
)
from tests.support import ProvisionedDatabase, superuser_sql, wait_for
from tests.test_console import csrf, entries, fields_of, last_id, signed_in
from tests.test_signup import Inbox, inbox  # noqa: F401 - the SMTP server fixture


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory,
          inbox: tuple[Inbox, int]) -> Iterator[OAuthWorld]:  # noqa: F811 - the fixture
    yield from module_world(test_db, tmp_path_factory, smtp_host="127.0.0.1",
                            smtp_port=inbox[1], smtp_starttls=False)


def run_db(world: OAuthWorld, work: Any) -> Any:
    async def run() -> Any:
        db = Database(world.test_db.runtime_url, pool_size=1)
        try:
            return await work(db)
        finally:
            await db.dispose()

    return asyncio.run(run())


def owner_of(world: OAuthWorld) -> str:
    return world.tech_email.replace("tech-", "owner-")


def address(label: str = "p") -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@example.com"


def user_id(world: OAuthWorld, email: str) -> str:
    return str(superuser_sql(world.test_db, "SELECT id FROM users WHERE lower(email) ="
                             " lower(:e)", e=email)[0][0])


def role_of(world: OAuthWorld, email: str, tenant: Tenant | None = None) -> str | None:
    rows = superuser_sql(world.test_db, "SELECT m.role FROM memberships m JOIN users u"
                         " ON u.id = m.user_id WHERE lower(u.email) = lower(:e)"
                         " AND m.tenant_id = :t", e=email, t=(tenant or world.tenant).id)
    return str(rows[0][0]) if rows else None


def tool(world: OAuthWorld, key: str, name: str = "list_devices",
         arguments: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{world.url}/api/v1/tools/{name}", json=arguments or {}, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})


def an_open_alert(world: OAuthWorld) -> str:
    return str(world.owner_sql("SELECT id FROM alerts ORDER BY created_at LIMIT 1")[0][0])


@dataclass
class Person:
    """A member with an API key, an AI app connected with OAuth, and a signed-in browser."""

    email: str
    key: str
    access: str
    browser: HumanAgent

    def signed_in(self) -> bool:
        return self.browser.http.get("/console/keys").status_code == 200

    def close(self) -> None:
        self.browser.close()


def person(world: OAuthWorld, role: str, *, scopes: str = "ai:read",
           tenant: Tenant | None = None) -> Person:
    email = address(role)

    async def build(db: Database) -> str:
        await create_user(db, tenant or world.tenant, email=email, password=PASSWORD,
                          role=role)
        _, key = await create_api_key(db, tenant or world.tenant, name=f"{role}'s",
                                      scopes=scopes, creator_email=email)
        return key

    key = run_db(world, build)
    browser = signed_in(world, email)  # one sign-in: the consent below reuses the session
    verifier, challenge = pkce_pair()
    client = register(world)["client_id"]
    code = code_from(browser.authorize(authorize_url(world, client, challenge),
                                       scopes=scopes.split(",")))
    r = exchange(world, client, code, verifier)
    assert r.status_code == 200, r.text
    return Person(email, key, r.json()["access_token"], browser)


def act(agent: HumanAgent, path: str, **data: str) -> httpx.Response:
    """A members-page form, with the page's CSRF token."""
    return agent.http.post(path, data={"csrf_token": csrf(agent, "/console/members"), **data})


def invite(agent: HumanAgent, email: str, role: str) -> httpx.Response:
    return act(agent, "/console/members/invitations", email=email, role=role)


def row_of(page: str, email: str) -> str:
    """The members table's row of ``email``."""
    return page[page.index(f"<td>{email}"):].split("</tr>")[0]


def form_token(agent: HumanAgent) -> str:
    """A CSRF token for this browser, from a page that has a form (the sign-in page)."""
    return fields_of(agent.http.get("/login").text)["csrf_token"]


def link(box: Inbox, email: str, *, after: int = 0) -> str:
    """The token of the latest invitation to ``email``, once more than ``after`` mails reached
    it (mails leave after the answer)."""
    wait_for(lambda: len(box.to(email)) > after, timeout=10)
    return box.last_link(email, page="invite")


@pytest.fixture(scope="module")
def owner(world: OAuthWorld) -> Iterator[HumanAgent]:
    """The tenant's owner, signed in once (sign-ins are rate-limited per source address)."""
    agent = signed_in(world, owner_of(world))
    yield agent
    agent.close()


@pytest.mark.req("CONSOLE-MEMBERS")
def test_the_page_lists_the_members(world: OAuthWorld, owner: HumanAgent) -> None:
    page = owner.http.get("/console/members")
    assert page.status_code == 200
    for email in (owner_of(world), world.tech_email, world.reader_email):
        assert email in page.text
    row = row_of(page.text, world.reader_email)
    assert "<td>readonly</td>" in row and "<td>off</td>" in row and "<td>active</td>" in row
    assert f"{owner_of(world)} (you)" in page.text
    assert '<th scope="col">Two-factor</th>' in page.text
    assert 'aria-current="page">Members' in page.text


@pytest.mark.req("CONSOLE-MEMBERS")
def test_a_technician_is_refused_the_page_and_every_form(world: OAuthWorld) -> None:
    tech = signed_in(world, world.tech_email)
    reader = user_id(world, world.reader_email)
    try:
        assert "/console/members" not in tech.http.get("/console/keys").text
        since = last_id(world)
        assert tech.http.get("/console/members").status_code == 403
        token = csrf(tech, "/console/keys")  # a good token: the role is what is refused
        invited = address()
        for path, data in (("/console/members/invitations",
                            {"email": invited, "role": "admin"}),
                           (f"/console/members/{reader}/role", {"role": "admin"}),
                           (f"/console/members/{reader}/suspend", {}),
                           (f"/console/members/{reader}/remove", {}),
                           (f"/console/members/{reader}/sign-out", {})):
            r = tech.http.post(path, data={"csrf_token": token, **data})
            assert r.status_code == 403 and "Only owners and admins" in r.text, path
        refused = entries(world, since, actor_id=user_id(world, world.tech_email))
        assert [e["action"] for e in refused] == ["console.members"] * 6
        assert all((e["decision"], e["deny_reason"]) == ("denied", "role") for e in refused)
        assert role_of(world, world.reader_email) == "readonly"
        assert superuser_sql(world.test_db, "SELECT count(*) FROM invitations"
                             " WHERE email = :e", e=invited)[0][0] == 0
    finally:
        tech.close()


@pytest.mark.req("MEMBER-INVITE", "CONSOLE-MEMBERS")
def test_an_invitation_creates_the_account_and_its_membership(
    world: OAuthWorld, owner: HumanAgent, inbox: tuple[Inbox, int],  # noqa: F811
) -> None:
    email = address("new")
    since = last_id(world)
    r = invite(owner, email, "technician")
    assert r.status_code == 303 and r.headers["location"] == "/console/members?done=invited"
    pending = owner.http.get(r.headers["location"]).text
    assert "Invitation sent." in pending and email in pending
    token = link(inbox[0], email)
    mail = inbox[0].to(email)[-1]
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert "as technician" in body.decode() and world.tenant.name in str(mail["Subject"])
    assert token.startswith("bzm_")
    newcomer = HumanAgent(world, email)
    try:
        page = newcomer.http.get(f"/invite?token={token}")
        assert page.status_code == 200 and 'name="password"' in page.text
        assert "technician" in page.text and world.tenant.name in page.text
        assert page.headers["cache-control"] == "no-store"
        fields = fields_of(page.text)
        weak = newcomer.http.post("/invite", data={**fields, "password": "short"})
        assert weak.status_code == 400 and 'role="alert"' in weak.text
        assert role_of(world, email) is None  # nothing happened; the link still works
        done = newcomer.http.post("/invite", data={**fields, "password": PASSWORD})
        assert done.status_code == 200 and "Your account is ready" in done.text, done.text
        assert role_of(world, email) == "technician"
        verified = superuser_sql(world.test_db, "SELECT email_verified_at IS NOT NULL FROM"
                                 " users WHERE email = :e", e=email)[0][0]
        assert verified  # the link proved the mailbox
        again = newcomer.http.get(f"/invite?token={token}")
        assert again.status_code == 410 and "already used" in again.text
        reuse = newcomer.http.post("/invite", data={**fields, "password": PASSWORD})
        assert reuse.status_code == 410
        console = signed_in(world, email)
        try:
            assert "technician (up to Tier 3)" in console.http.get("/console/devices").text
        finally:
            console.close()
        invited = entries(world, since, action="member.invited")
        assert [(e["auth_path"], e["parameters"]["email"], e["parameters"]["role"])
                for e in invited] == [("session", email, "technician")]
        joined = entries(world, since, action="member.joined")
        assert [(e["decision"], e["parameters"].get("new_account")) for e in joined] == [
            ("allowed", True), ("denied", None)]
        assert joined[0]["tenant_id"] == world.tenant.id
        assert all(token not in str(e) for e in invited + joined)
        assert email not in owner.http.get("/console/members").text.split(
            "Pending invitations")[1]
    finally:
        newcomer.close()


@pytest.mark.req("MEMBER-INVITE")
def test_an_existing_account_joins_after_signing_in(
    world: OAuthWorld, owner: HumanAgent, inbox: tuple[Inbox, int],  # noqa: F811
) -> None:
    email = address("elsewhere")

    async def elsewhere(db: Database) -> Tenant:
        tag = uuid.uuid4().hex[:6]
        tenant = await create_tenant(db, f"Elsewhere {tag}", slug=f"elsewhere-{tag}")
        await create_user(db, tenant, email=email, password=PASSWORD, role="owner")
        return tenant

    other = run_db(world, elsewhere)
    assert invite(owner, email, "readonly").status_code == 303
    token = link(inbox[0], email)
    anonymous = HumanAgent(world, email)
    stranger = signed_in(world, world.tech_email)
    invitee = signed_in(world, email)
    try:
        page = anonymous.http.get(f"/invite?token={token}")
        assert page.status_code == 200 and "Sign in</a>, then open the" in page.text
        assert 'name="password"' not in page.text
        r = anonymous.http.post("/invite", data={"csrf_token": form_token(anonymous),
                                                 "token": token})
        assert r.status_code == 401 and "sign in with it" in r.text
        page = stranger.http.get(f"/invite?token={token}")
        assert f"signed in as {world.tech_email}" in page.text
        r = stranger.http.post("/invite", data={**fields_of(page.text), "token": token})
        assert r.status_code == 403 and role_of(world, email) is None
        page = invitee.http.get(f"/invite?token={token}")
        assert f"Join {world.tenant.name}" in page.text
        r = invitee.http.post("/invite", data=fields_of(page.text))
        assert r.status_code == 303 and r.headers["location"] == "/console"
        assert token not in r.headers["location"]
        assert role_of(world, email) == "readonly" and role_of(world, email, other) == "owner"
        landed = invitee.http.get("/console/devices").text
        assert "readonly (up to Tier 1)" in landed and world.tenant.name in landed
    finally:
        for agent in (anonymous, stranger, invitee):
            agent.close()


@pytest.mark.req("MEMBER-INVITE")
def test_the_answer_is_the_same_whether_or_not_the_address_has_an_account(
    world: OAuthWorld, owner: HumanAgent, inbox: tuple[Inbox, int],  # noqa: F811
) -> None:
    registered = owner_of(world).replace("owner-", "stranger-")
    run_db(world, lambda db: create_tenant(db, "Stranger's", slug=f"s-{uuid.uuid4().hex[:6]}"))

    async def account(db: Database) -> None:
        tenant = await create_tenant(db, "Own", slug=f"own-{uuid.uuid4().hex[:6]}")
        await create_user(db, tenant, email=registered, password=PASSWORD, role="owner")

    run_db(world, account)
    unknown = address("nobody")
    answers = [invite(owner, email, "technician") for email in (registered, unknown)]
    assert [(a.status_code, a.headers["location"]) for a in answers] == [
        (303, "/console/members?done=invited")] * 2

    def mail_text(email: str) -> str:
        link(inbox[0], email)
        body = inbox[0].to(email)[-1].get_payload(decode=True)
        assert isinstance(body, bytes)
        return re.sub(r"token=\S+", "token=…", body.decode())

    assert mail_text(registered) == mail_text(unknown)


@pytest.mark.req("MEMBER-INVITE")
def test_resend_replaces_withdraw_ends_and_links_expire(
    world: OAuthWorld, owner: HumanAgent, inbox: tuple[Inbox, int],  # noqa: F811
) -> None:
    email = address("later")
    visitor = HumanAgent(world, email)
    try:
        def state(token: str) -> tuple[int, str]:
            page = visitor.http.get(f"/invite?token={token}")
            return page.status_code, page.text

        assert invite(owner, email, "admin").status_code == 303
        first = link(inbox[0], email)
        [invitation] = superuser_sql(world.test_db, "SELECT id FROM invitations WHERE email ="
                                     " :e", e=email)
        r = act(owner, f"/console/members/invitations/{invitation[0]}/resend")
        assert r.status_code == 303
        second = link(inbox[0], email, after=1)
        assert second != first
        status, text = state(first)
        assert status == 410 and "A newer invitation was sent" in text
        assert state(second)[0] == 200
        [pending] = superuser_sql(world.test_db, "SELECT id FROM invitations WHERE email = :e"
                                  " AND superseded_at IS NULL", e=email)
        r = act(owner, f"/console/members/invitations/{pending[0]}/withdraw")
        assert r.headers["location"] == "/console/members?done=invitation_revoked"
        status, text = state(second)
        assert status == 410 and "withdrawn" in text
        r = visitor.http.post("/invite", data={"csrf_token": form_token(visitor),
                                               "token": second, "password": PASSWORD})
        assert r.status_code == 410 and role_of(world, email) is None
        assert invite(owner, email, "admin").status_code == 303
        third = link(inbox[0], email, after=2)
        superuser_sql(world.test_db, "UPDATE invitations SET expires_at = now() - interval"
                      " '1 minute' WHERE email = :e AND superseded_at IS NULL"
                      " AND revoked_at IS NULL", e=email)
        status, text = state(third)
        assert status == 410 and "expired" in text
        for junk in ("", "bzm_nope", third[:-1] + ("A" if third[-1] != "A" else "B"),
                     "bzk_" + third[4:]):
            status, text = state(junk)
            assert status == 400 and "not a valid invitation link" in text, junk
        assert act(owner, f"/console/members/invitations/{uuid.uuid4()}/withdraw"
                   ).status_code == 404
    finally:
        visitor.close()


@pytest.mark.req("CONSOLE-MEMBERS", "KEYS-CREATOR-CEILING")
def test_a_role_change_applies_from_the_next_request(
    world: OAuthWorld, owner: HumanAgent,
) -> None:
    admin = person(world, "admin", scopes="ai:read,ai:write")
    try:
        admin_api = {"Authorization": f"Bearer {admin.key}"}
        assert httpx.get(f"{world.url}/api/v1/members", headers=admin_api,
                         timeout=30).status_code == 200
        assert admin.browser.http.get("/console/members").status_code == 200
        listed = mcp_call(world, admin.access, "tools/list").json()["result"]["tools"]
        assert "manage_alert" in {t["name"] for t in listed}
        target = user_id(world, admin.email)
        since = last_id(world)
        r = act(owner, f"/console/members/{target}/role", role="technician")
        assert r.headers["location"] == "/console/members?done=role_changed"
        assert httpx.get(f"{world.url}/api/v1/members", headers=admin_api,
                         timeout=30).status_code == 403
        assert admin.browser.http.get("/console/members").status_code == 403
        assert act(owner, f"/console/members/{target}/role",
                   role="readonly").status_code == 303
        alert = {"alert_id": an_open_alert(world), "action": "acknowledge"}
        r = tool(world, admin.key, "manage_alert", alert)
        assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
        assert tool(world, admin.key).status_code == 200
        listed = mcp_call(world, admin.access, "tools/list").json()["result"]["tools"]
        assert "manage_alert" not in {t["name"] for t in listed}  # the grant narrowed too
        changes = entries(world, since, action="member.role_changed")
        assert [(e["parameters"]["from"], e["parameters"]["to"]) for e in changes] == [
            ("admin", "technician"), ("technician", "readonly")]
        bad = act(owner, f"/console/members/{target}/role", role="superuser")
        assert bad.status_code == 400 and "unknown role" in bad.text
        missing = act(owner, f"/console/members/{uuid.uuid4()}/role", role="admin")
        assert missing.status_code == 404
    finally:
        admin.close()


@pytest.mark.req("CONSOLE-MEMBERS", "HUMAN-CUT-ACCESS")
def test_suspension_cuts_everything_and_resuming_gives_back_only_the_keys(
    world: OAuthWorld, owner: HumanAgent,
) -> None:
    tech = person(world, "technician")
    try:
        assert tech.signed_in() and tool(world, tech.key).status_code == 200
        assert mcp_call(world, tech.access, "tools/list").status_code == 200
        target = user_id(world, tech.email)
        since = last_id(world)
        r = act(owner, f"/console/members/{target}/suspend")
        assert r.headers["location"] == "/console/members?done=suspended"
        assert not tech.signed_in()
        assert tool(world, tech.key).status_code == 401
        assert mcp_call(world, tech.access, "tools/list").status_code == 401
        row = row_of(owner.http.get("/console/members").text, tech.email)
        assert "<td>suspended</td>" in row and "Resume" in row
        cut = [(e["action"], e["auth_path"], e["tenant_id"]) for e in entries(world, since)
               if e["action"] not in ("console.members", "auth.bearer_failed")]
        assert cut == [(action, "session", world.tenant.id) for action in (
            "user.suspended", "auth.sessions_ended", "oauth.grant_revoked")]
        [ended] = entries(world, since, action="auth.sessions_ended")
        assert ended["parameters"] == {"user_id": target, "reason": "user_suspended",
                                       "sessions": 1}
        assert act(owner, f"/console/members/{target}/resume").status_code == 303
        assert tool(world, tech.key).status_code == 200  # a key follows its creator back
        assert mcp_call(world, tech.access, "tools/list").status_code == 401  # grants do not
        again = act(owner, f"/console/members/{target}/resume")
        assert again.status_code == 409 and "not suspended" in again.text
    finally:
        tech.close()


@pytest.mark.req("CONSOLE-MEMBERS")
def test_only_people_of_this_organization_alone_are_suspended_here(
    world: OAuthWorld, owner: HumanAgent,
) -> None:
    email = address("two-orgs")

    async def two_orgs(db: Database) -> None:
        tag = uuid.uuid4().hex[:6]
        other = await create_tenant(db, f"Other {tag}", slug=f"other-{tag}")
        await create_user(db, other, email=email, password=PASSWORD, role="technician")

    run_db(world, two_orgs)
    superuser_sql(world.test_db, "INSERT INTO memberships (tenant_id, user_id, role)"
                  " SELECT :t, id, 'technician' FROM users WHERE email = :e",
                  t=world.tenant.id, e=email)
    target = user_id(world, email)
    r = act(owner, f"/console/members/{target}/suspend")
    assert r.status_code == 409 and "remove them from this organization instead" in r.text
    assert superuser_sql(world.test_db, "SELECT disabled_at FROM users WHERE id = :u",
                         u=target)[0][0] is None
    # The operator's suspension is the operator's to lift.
    only_here = person(world, "readonly")
    try:
        run_db(world, lambda db: set_suspended(db, only_here.email, True))
        r = act(owner, f"/console/members/{user_id(world, only_here.email)}/resume")
        assert r.status_code == 403 and "service operator" in r.text
        row = row_of(owner.http.get("/console/members").text, only_here.email)
        assert "suspended (by the service operator)" in row
    finally:
        only_here.close()


@pytest.mark.req("CONSOLE-MEMBERS", "HUMAN-CUT-ACCESS")
def test_removal_cuts_everything(world: OAuthWorld, owner: HumanAgent) -> None:
    admin = person(world, "admin")
    try:
        target = user_id(world, admin.email)
        since = last_id(world)
        r = act(owner, f"/console/members/{target}/remove")
        assert r.headers["location"] == "/console/members?done=removed"
        assert role_of(world, admin.email) is None
        assert not admin.signed_in()
        assert tool(world, admin.key).status_code == 401
        assert mcp_call(world, admin.access, "tools/list").status_code == 401
        [removed] = entries(world, since, action="member.removed")
        assert removed["parameters"] == {"user_id": target, "role": "admin", "grants": 1}
        assert removed["auth_path"] == "session"
        assert act(owner, f"/console/members/{target}/remove").status_code == 404
        me = user_id(world, owner_of(world))
        r = act(owner, f"/console/members/{me}/remove")
        assert r.status_code == 403 and "yourself" in r.text
    finally:
        admin.close()


@pytest.mark.req("CONSOLE-MEMBERS")
def test_admins_cannot_touch_owners_and_the_last_owner_stays(world: OAuthWorld) -> None:
    tag = uuid.uuid4().hex[:6]
    emails = {role: f"{role}-{tag}@example.com" for role in ("owner", "admin", "other")}

    async def organization(db: Database) -> None:
        tenant = await create_tenant(db, f"Guarded {tag}", slug=f"guarded-{tag}")
        await create_user(db, tenant, email=emails["owner"], password=PASSWORD, role="owner")
        await create_user(db, tenant, email=emails["admin"], password=PASSWORD, role="admin")
        await create_user(db, tenant, email=emails["other"], password=PASSWORD, role="admin")

    run_db(world, organization)
    owner, admin = signed_in(world, emails["owner"]), signed_in(world, emails["admin"])
    boss, other = user_id(world, emails["owner"]), user_id(world, emails["other"])
    try:
        for path, data in ((f"/console/members/{boss}/role", {"role": "admin"}),
                           (f"/console/members/{boss}/suspend", {}),
                           (f"/console/members/{boss}/remove", {}),
                           (f"/console/members/{boss}/sign-out", {}),
                           (f"/console/members/{other}/role", {"role": "owner"}),
                           ("/console/members/invitations",
                            {"email": address(), "role": "owner"})):
            r = act(admin, path, **data)
            assert r.status_code == 403 and "only owners" in r.text, path
        offered = admin.http.get("/console/members").text
        assert 'value="owner"' not in offered  # no role select offers it to an admin
        r = act(owner, f"/console/members/{boss}/role", role="admin")
        assert r.status_code == 409 and "last owner" in r.text
        assert act(admin, f"/console/members/{other}/role", role="technician"
                   ).status_code == 303  # admins govern everyone else
        assert act(owner, f"/console/members/{other}/role", role="owner").status_code == 303
        assert act(owner, f"/console/members/{boss}/role", role="admin").status_code == 303
        page = owner.http.get("/console/members")  # no longer an owner; an admin still
        assert page.status_code == 200 and 'value="owner"' not in page.text
    finally:
        owner.close()
        admin.close()


@pytest.mark.req("CONSOLE-MEMBERS", "HARD-CSRF-BOUND")
def test_member_forms_without_their_csrf_token_change_nothing(
    world: OAuthWorld, owner: HumanAgent,
) -> None:
    reader = user_id(world, world.reader_email)
    email = address("forged")
    for data in ({"role": "admin"}, {"csrf_token": "0" * 64, "role": "admin"}):
        for path in (f"/console/members/{reader}/role", f"/console/members/{reader}/remove",
                     f"/console/members/{reader}/suspend"):
            assert owner.http.post(path, data=data).status_code == 403
        r = owner.http.post("/console/members/invitations", data={**data, "email": email})
        assert r.status_code == 403
    assert role_of(world, world.reader_email) == "readonly"
    assert superuser_sql(world.test_db, "SELECT count(*) FROM invitations WHERE email = :e",
                         e=email)[0][0] == 0
    assert superuser_sql(world.test_db, "SELECT disabled_at FROM users WHERE id = :u",
                         u=reader)[0][0] is None


@pytest.mark.req("CONSOLE-MEMBERS", "SEED-RLS")
def test_people_of_another_organization_are_not_found_here(
    world: OAuthWorld, owner: HumanAgent,
) -> None:
    email = address("outsider")

    async def outsider(db: Database) -> None:
        tag = uuid.uuid4().hex[:6]
        tenant = await create_tenant(db, f"Outside {tag}", slug=f"outside-{tag}")
        await create_user(db, tenant, email=email, password=PASSWORD, role="technician")

    run_db(world, outsider)
    target = user_id(world, email)
    assert email not in owner.http.get("/console/members").text
    for action, data in (("role", {"role": "readonly"}), ("suspend", {}), ("resume", {}),
                         ("remove", {}), ("sign-out", {})):
        r = act(owner, f"/console/members/{target}/{action}", **data)
        assert r.status_code == 404 and "no such member" in r.text, action
    assert superuser_sql(world.test_db, "SELECT m.role, u.disabled_at FROM memberships m"
                         " JOIN users u ON u.id = m.user_id WHERE u.id = :u",
                         u=target) == [("technician", None)]
