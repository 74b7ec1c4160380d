"""People and their keys, in the console and the admin API: API keys, members, invitations,
sessions.

Two doors onto the same services (:mod:`breeze_mcp.auth.api_keys`,
:mod:`breeze_mcp.auth.members`, :mod:`breeze_mcp.auth.invitations`), which hold the rules and
write the entries, so an action is audited alike whether a console session or an owner's API
key asked for it:

* console pages (``/console/keys`` for every member, ``/console/members`` for owners and
  admins), server-rendered, every form CSRF-checked before anything else;
* admin API endpoints under ``/api/v1/keys`` and ``/api/v1/members``, declared with
  :func:`~breeze_mcp.admin_api.admin_endpoint` (route and OpenAPI entry at once);
* the invitation's own page, ``/invite?token=…``: opening it uses nothing, its form does.

A new key's secret is shown once, in the answer to the request that created it: the console's
``POST`` page (never a URL, never a later page) and the API's ``POST`` body, both uncacheable.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from breeze_mcp.admin_api import admin_endpoint, admin_entry, in_path, refused
from breeze_mcp.auth import api_keys, invitations, members, sessions
from breeze_mcp.auth.accounts import ADMIN_ROLES, AccountError, Caller, Refused
from breeze_mcp.auth.principal import ALL_SCOPES, Principal
from breeze_mcp.console import Console, console_render, open_console
from breeze_mcp.db.engine import State, Transaction
from breeze_mcp.edge import read_body, request_context
from breeze_mcp.forms import Fields
from breeze_mcp.http_request import Route
from breeze_mcp.json_wire import loads
from breeze_mcp.services import Services
from breeze_mcp.web import (
    checked_form,
    current_user,
    error_page,
    page_query,
    render,
)

__all__ = [
    "ROUTES",
    "api_change_role",
    "api_create_key",
    "api_end_sessions",
    "api_invite",
    "api_list_invitations",
    "api_list_keys",
    "api_list_members",
    "api_list_sessions",
    "api_remove_member",
    "api_resume_member",
    "api_revoke_invitation",
    "api_revoke_key",
    "api_suspend_member",
    "invite_page",
    "invite_submit",
    "key_create",
    "key_revoke",
    "keys_page",
    "member_action",
    "members_page",
]

_KEYS_DONE = {"revoked": "Revoked: the key is refused from its next request on.",
              "already_revoked": "That key was already revoked."}
_MEMBERS_DONE = {
    "invited": "Invitation sent. If it does not arrive, use Resend.",
    "invitation_revoked": "Invitation withdrawn: its link no longer works.",
    "role_changed": "Role changed. It applies from the member's next request.",
    "suspended": "Suspended: their sessions ended and their apps were disconnected.",
    "resumed": "Suspension lifted. They sign in and connect their apps again.",
    "removed": "Removed: their sessions ended and their apps and keys stopped working.",
    "signed_out": "Signed out everywhere.",
}


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def _form(request: Request) -> Fields | Response:
    """A console form, read and CSRF-checked (a form without a good token changes nothing)."""
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    return form


async def _read(console: Console, work: Callable[[Transaction], Awaitable[Any]]) -> Any:
    """A read for the page, in the request's transaction while it is open (committing it
    when done: a page view is not an action), else in a transaction of its own."""
    if console.tx.state is State.OPEN:
        found = await work(console.tx)
        await console.tx.finish(None)
        return found
    async with console.services.db.tenant(console.principal.tenant_id,
                                          user_id=console.user.user_id) as tx:
        found = await work(tx)
        await tx.finish(None)
        return found


# -- the console: API keys -------------------------------------------------------------------


async def _keys_view(request: Request, console: Console, *, created: tuple[Any, str] | None = None,
                     error: str | None = None, message: str | None = None,
                     status: int = 200, form: Fields | None = None) -> HTMLResponse:
    keys = await _read(console, lambda tx: api_keys.list_keys(tx, console.principal))
    now = dt.datetime.now(dt.UTC)
    principal = console.principal
    return console_render(request, console, "keys.html", {
        "keys": [{"info": k, "status": k.status(now)} for k in keys],
        "everyone": principal.role in ADMIN_ROLES,
        "scopes": ALL_SCOPES,
        "grantable": api_keys.grantable_scopes(principal.role, principal.scopes),
        "created": created, "error": error, "message": message,
        "form": form or {}, "chosen": form.getlist("scope") if form else ["ai:read"],
    }, page="keys", status=status)


async def keys_page(request: Request) -> Response:
    """``/console/keys``: the keys the person may see (all of the tenant's for owners and
    admins, their own for everyone else) and the form to create one."""
    query = page_query(request)
    if isinstance(query, Response):
        return query
    async with open_console(request, "keys") as console:
        if isinstance(console, Response):
            return console
        return await _keys_view(request, console, message=_KEYS_DONE.get(query.get("done", "")))


_DAYS = re.compile(r"\d{1,5}")


async def key_create(request: Request) -> Response:
    """``POST /console/keys``: a key of the person's own. Its secret is on this answer only,
    in a read-only field (with a copy button where scripts run)."""
    form = await _form(request)
    if isinstance(form, Response):
        return form
    async with open_console(request, "keys") as console:
        if isinstance(console, Response):
            return console
        days, limit = (form.get("expires_in_days") or "").strip(), \
            (form.get("rate_limit") or "").strip()
        if days and not _DAYS.fullmatch(days):
            return await _keys_view(request, console, status=400, form=form,
                                    error="The expiry is a whole number of days.")
        try:
            created = await api_keys.create_own_key(
                console.tx, Caller(console.principal, console.context),
                name=form.get("name") or "", scopes=form.getlist("scope"),
                expires_in_days=int(days) if days else None, rate_limit=limit or None)
        except Refused as exc:
            return await _keys_view(request, console, error=str(exc), status=exc.status,
                                    form=form)
        return await _keys_view(request, console, created=created, status=201)


async def key_revoke(request: Request) -> Response:
    """``POST /console/keys/{key_id}/revoke``: at once, for every instance."""
    form = await _form(request)
    if isinstance(form, Response):
        return form
    key_id = _uuid(request.path_params["key_id"])
    if key_id is None:
        return error_page(request, "Not found", "No such API key.", status=404)
    async with open_console(request, "keys") as console:
        if isinstance(console, Response):
            return console
        try:
            _, newly = await api_keys.revoke_key(console.tx,
                                                 Caller(console.principal, console.context),
                                                 key_id)
        except Refused as exc:
            return await _keys_view(request, console, error=str(exc), status=exc.status)
        return RedirectResponse("/console/keys?done="
                                + ("revoked" if newly else "already_revoked"), status_code=303)


# -- the console: members ----------------------------------------------------------------------


async def _members_view(request: Request, console: Console, *, error: str | None = None,
                        message: str | None = None, status: int = 200) -> HTMLResponse:
    principal = console.principal

    async def load(tx: Transaction) -> tuple[list[members.Member], list[invitations.Invitation]]:
        return (await members.list_members(tx, principal),
                await invitations.list_pending(tx, principal))

    people, pending = await _read(console, load)
    return console_render(request, console, "members.html", {
        "members": people, "pending": pending, "me": console.user.user_id,
        "roles": members.assignable_roles(principal.role), "is_owner": principal.role == "owner",
        "error": error, "message": message,
    }, page="members", status=status)


async def members_page(request: Request) -> Response:
    """``/console/members`` (owners and admins): members with their role, two-factor status
    and state, pending invitations, and every action on them."""
    query = page_query(request)
    if isinstance(query, Response):
        return query
    async with open_console(request, "members", roles=ADMIN_ROLES) as console:
        if isinstance(console, Response):
            return console
        return await _members_view(request, console,
                                   message=_MEMBERS_DONE.get(query.get("done", "")))


async def _invite(console: Console, caller: Caller, form: Fields,
                  again: uuid.UUID | None = None) -> EmailMessage:
    """Invite (or, with ``again``, invite the address of that pending invitation again): the
    mail to send once the answer is out (so no pooled connection waits on the mail server)."""
    services = console.services
    if again is None:
        _, mail = await invitations.invite(console.tx, caller, services.limiter,
                                           services.settings, email=form.get("email") or "",
                                           role=form.get("role") or "")
    else:
        _, mail = await invitations.resend(console.tx, caller, services.limiter,
                                           services.settings, again)
    return mail


async def _member_form(console: Console, caller: Caller, form: Fields, action: str,
                       user_id: uuid.UUID) -> str | None:
    """One member form's work; the name of its result (None: no such form)."""
    tx, db = console.tx, console.services.db
    if action == "role":
        await members.change_role(tx, caller, user_id, form.get("role") or "")
        return "role_changed"
    if action == "suspend":
        await members.suspend(db, tx, caller, user_id)
        return "suspended"
    if action == "resume":
        await members.resume(tx, caller, user_id)
        return "resumed"
    if action == "remove":
        await members.remove(db, tx, caller, user_id)
        return "removed"
    if action == "sign-out":
        await members.end_sessions(tx, caller, user_id)
        return "signed_out"
    return None


async def _invitation_form(console: Console, caller: Caller, form: Fields, action: str,
                           invitation_id: uuid.UUID) -> str | EmailMessage | None:
    if action == "resend":
        return await _invite(console, caller, form, invitation_id)
    if action == "withdraw":
        await invitations.revoke(console.tx, caller, invitation_id)
        return "invitation_revoked"
    return None


_MEMBER_FORMS = ("role", "suspend", "resume", "remove", "sign-out")
_INVITATION_FORMS = ("resend", "withdraw")


async def member_action(request: Request) -> Response:
    """Every form of the members page: ``POST /console/members/invitations`` (invite),
    ``/console/members/invitations/{id}/{resend|withdraw}`` and
    ``/console/members/{id}/{role|suspend|resume|remove|sign-out}``. A refusal (the rules
    are the service's) shows the page again with why, in its status."""
    form = await _form(request)
    if isinstance(form, Response):
        return form
    on_invitation = request.url.path.startswith("/console/members/invitations")
    action = request.path_params.get("action", "invite")
    target = _uuid(request.path_params.get("id", ""))
    known = ("invite",) if "id" not in request.path_params \
        else _INVITATION_FORMS if on_invitation else _MEMBER_FORMS
    if action not in known or (action != "invite" and target is None):
        return error_page(request, "Not found", "No such member or invitation.", status=404)
    async with open_console(request, "members", roles=ADMIN_ROLES) as console:
        if isinstance(console, Response):
            return console
        caller = Caller(console.principal, console.context)
        done: str | EmailMessage | None
        try:
            if target is None:
                done = await _invite(console, caller, form)
            elif on_invitation:
                done = await _invitation_form(console, caller, form, action, target)
            else:
                done = await _member_form(console, caller, form, action, target)
        except Refused as exc:
            return await _members_view(request, console, error=str(exc), status=exc.status)
        if isinstance(done, EmailMessage):
            response = RedirectResponse("/console/members?done=invited", status_code=303)
            response.background = console.services.mailer.after_response(done)
            return response
        return RedirectResponse(f"/console/members?done={done or ''}", status_code=303)


# -- the invitation's page ---------------------------------------------------------------------

_INVITE_TITLES: dict[invitations.Outcome, str] = {
    "joined": "Welcome", "created": "Your account is ready", "sign_in": "Sign in first",
    "wrong_account": "Another account", "already_member": "Already a member",
    "suspended": "Account suspended", "account_exists": "Sign in first",
    "accepted": "Invitation already used", "revoked": "Invitation withdrawn",
    "replaced": "This invitation was replaced", "expired": "This invitation has expired",
    "invalid": "Not an invitation link",
}


def _invite_result(request: Request, outcome: invitations.Outcome) -> HTMLResponse:
    status, text = invitations.MESSAGES[outcome]
    return render(request, "invite.html", {
        "title": _INVITE_TITLES[outcome], "message": text, "ok": status == 200,
        "invitation": None, "sign_in": outcome in ("created", "sign_in", "account_exists",
                                                   "accepted"),
    }, status=status)


async def invite_page(request: Request) -> Response:
    """``GET /invite?token=…``: the mailed link. Shows what it offers (organization, role,
    address) and the one form that fits: join (signed in with the invited address), sign in
    first (an account exists), or choose a password (no account yet). Uses nothing."""
    services: Services = request.app.state.services
    query = page_query(request)
    if isinstance(query, Response):
        return query
    token = query.get("token") or ""
    found = await invitations.opened(services.db, token)
    if found.state != "usable":
        return _invite_result(request, found.state)
    user = await current_user(request)
    return render(request, "invite.html", {
        "title": f"Join {found.organization}", "message": None, "ok": True, "token": token,
        "invitation": found, "error": None, "sign_in": False,
        "signed_in_as": user.email if user else None,
        "is_invitee": bool(user and found.email and user.email.lower() == found.email.lower()),
    })


async def invite_submit(request: Request) -> Response:
    """``POST /invite``: accept. The signed-in person joins, or the new account is created
    with the chosen password; then the console (joined) or sign-in (created)."""
    services: Services = request.app.state.services
    form = await _form(request)
    if isinstance(form, Response):
        return form
    token = form.get("token") or ""
    user = await current_user(request)
    try:
        outcome, tenant_id = await invitations.accept(
            services.db, token, request_context(request, services),
            user_id=user.user_id if user else None, password=form.get("password"))
    except AccountError as exc:
        found = await invitations.opened(services.db, token)
        return render(request, "invite.html", {
            "title": f"Join {found.organization}", "message": None, "ok": True,
            "token": token, "invitation": found, "error": str(exc), "sign_in": False,
            "signed_in_as": user.email if user else None, "is_invitee": False}, status=400)
    if outcome == "joined" and user is not None and tenant_id is not None:
        await sessions.set_console_tenant(services.db, user, tenant_id)
        return RedirectResponse("/console", status_code=303)
    return _invite_result(request, outcome)


# -- the admin API ---------------------------------------------------------------------------

#: The wire's word for a refusal where it is not the refusal's own: a role's refusal is a
#: plain ``forbidden`` to the caller (the audit entry says ``role``).
_CODES = {"invalid": "invalid_request", "role": "forbidden"}


def _refusal(exc: Refused) -> JSONResponse:
    return refused(_CODES.get(exc.code, exc.code), str(exc), exc.status)


async def _body(request: Request, principal: Principal, tx: Transaction, action: str,
                fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any] | Response:
    """The JSON object body with ``fields`` of their types (all optional here: the services
    say what is missing); a body that is not one is refused, audited."""
    services: Services = request.app.state.services
    raw = await read_body(request, 64 * 1024)
    problem: tuple[str, str, int] | None = None
    body: Any = None
    if raw is None:
        problem = ("payload_too_large", "the body is too large", 413)
    else:
        try:
            body = loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            problem = ("invalid_json", "the body is not valid JSON", 400)
    if problem is None and not isinstance(body, dict):
        problem = ("invalid_json", "send a JSON object", 400)
    if problem is None:
        for name, kind in fields.items():
            value = body.get(name)
            kinds = kind if isinstance(kind, tuple) else (kind,)
            if value is not None and (not isinstance(value, kinds)
                                      or (isinstance(value, bool) and bool not in kinds)):
                problem = ("invalid_request", f"{name} has the wrong type", 400)
                break
    if problem is not None:  # malformed, whatever the wire calls it
        code, message, status = problem
        await tx.finish(principal.refusal_entry(request_context(request, services), action,
                                                "invalid", message, {}))
        return refused(code, message, status)
    return {name: body.get(name) for name in fields}


def _caller(request: Request, principal: Principal) -> Caller:
    return Caller(principal, request_context(request, request.app.state.services))


async def _not_found(request: Request, principal: Principal, tx: Transaction, action: str,
                     what: str) -> Response:
    """404 for an id that names nothing here (not even a well-formed one), audited like the
    services' own refusals."""
    await tx.finish(principal.refusal_entry(
        request_context(request, request.app.state.services), action, "not_found",
        f"no such {what}", {}))
    return refused("not_found", f"no such {what}", 404)


def _path_id(request: Request, name: str) -> uuid.UUID | None:
    return _uuid(request.path_params[name])


_NO_STORE = {"Cache-Control": "no-store"}
_KEY_BODY = {
    "type": "object", "required": ["name", "scopes"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "scopes": {"type": "array", "items": {"enum": list(ALL_SCOPES)},
                   "description": "At most the scopes of the calling key (and of its "
                   "creator's role)."},
        "expires_in_days": {"type": "integer", "minimum": 1,
                            "maximum": api_keys.MAX_EXPIRY_DAYS},
        "rate_limit": {"type": "string", "examples": ["60/minute"]},
    },
}


@admin_endpoint("GET", "/api/v1/keys", operation_id="list_api_keys",
                summary="List the tenant's API keys", scope="ai:read")
async def api_list_keys(request: Request, principal: Principal, tx: Transaction) -> Response:
    keys = await api_keys.list_keys(tx, principal)
    await tx.finish(admin_entry(request, principal, "admin.list_api_keys"))
    now = dt.datetime.now(dt.UTC)
    return JSONResponse({"api_keys": [{**k.as_json(), "status": k.status(now)} for k in keys]})


@admin_endpoint("POST", "/api/v1/keys", operation_id="create_api_key",
                summary="Create an API key on behalf of the calling key's creator (shown once)",
                scope="ai:write", body=_KEY_BODY,
                errors={400: "Invalid name, scopes, expiry or rate limit"})
async def api_create_key(request: Request, principal: Principal, tx: Transaction) -> Response:
    body = await _body(request, principal, tx, "api_key.created", {
        "name": str, "scopes": (list, str), "expires_in_days": int, "rate_limit": str})
    if isinstance(body, Response):
        return body
    try:
        info, plaintext = await api_keys.create_own_key(
            tx, _caller(request, principal), name=body["name"] or "",
            scopes=[s for s in body["scopes"] if isinstance(s, str)]
            if isinstance(body["scopes"], list) else body["scopes"] or "",
            expires_in_days=body["expires_in_days"], rate_limit=body["rate_limit"])
    except Refused as exc:
        return _refusal(exc)
    return JSONResponse({"api_key": {**info.as_json(), "status": "active"}, "key": plaintext},
                        headers=_NO_STORE)


@admin_endpoint("DELETE", "/api/v1/keys/{key_id}", operation_id="revoke_api_key",
                summary="Revoke an API key (refused from its next request)", scope="ai:write",
                parameters=(in_path("key_id", "The key's id"),),
                errors={404: "No such key in the tenant"})
async def api_revoke_key(request: Request, principal: Principal, tx: Transaction) -> Response:
    key_id = _path_id(request, "key_id")
    if key_id is None:
        return await _not_found(request, principal, tx, "api_key.revoked", "API key")
    try:
        info, newly = await api_keys.revoke_key(tx, _caller(request, principal), key_id)
    except Refused as exc:
        return _refusal(exc)
    return JSONResponse({"revoked": str(info.id), "already_revoked": not newly})


@admin_endpoint("GET", "/api/v1/members", operation_id="list_members",
                summary="List the tenant's members", scope="ai:read")
async def api_list_members(request: Request, principal: Principal,
                           tx: Transaction) -> Response:
    people = await members.list_members(tx, principal)
    await tx.finish(admin_entry(request, principal, "admin.list_members"))
    return JSONResponse({"members": [m.as_json() for m in people]})


@admin_endpoint("POST", "/api/v1/members/invitations", operation_id="invite_member",
                summary="Invite an address to join with a role (a mailed single-use link)",
                scope="ai:write",
                body={"type": "object", "required": ["email", "role"],
                      "additionalProperties": False,
                      "properties": {"email": {"type": "string", "format": "email"},
                                     "role": {"enum": ["owner", "admin", "technician",
                                                       "readonly"]}}},
                errors={400: "Invalid address or role", 409: "Already a member",
                        429: "Too many invitations to this address lately"})
async def api_invite(request: Request, principal: Principal, tx: Transaction) -> Response:
    services: Services = request.app.state.services
    body = await _body(request, principal, tx, "member.invited", {"email": str, "role": str})
    if isinstance(body, Response):
        return body
    try:
        invitation, mail = await invitations.invite(
            tx, _caller(request, principal), services.limiter, services.settings,
            email=body["email"] or "", role=body["role"] or "")
    except Refused as exc:
        return _refusal(exc)
    return JSONResponse({"invitation": invitation.as_json(), "mail": "queued"},
                        background=services.mailer.after_response(mail))


@admin_endpoint("GET", "/api/v1/members/invitations", operation_id="list_invitations",
                summary="List the tenant's pending invitations", scope="ai:read")
async def api_list_invitations(request: Request, principal: Principal,
                               tx: Transaction) -> Response:
    pending = await invitations.list_pending(tx, principal)
    await tx.finish(admin_entry(request, principal, "admin.list_invitations"))
    return JSONResponse({"invitations": [i.as_json() for i in pending]})


@admin_endpoint("DELETE", "/api/v1/members/invitations/{invitation_id}",
                operation_id="revoke_invitation",
                summary="Withdraw a pending invitation (its link stops working)",
                scope="ai:write", parameters=(in_path("invitation_id", "The invitation's id"),),
                errors={404: "No such pending invitation"})
async def api_revoke_invitation(request: Request, principal: Principal,
                                tx: Transaction) -> Response:
    invitation_id = _path_id(request, "invitation_id")
    if invitation_id is None:
        return await _not_found(request, principal, tx, "member.invitation_revoked",
                                "pending invitation")
    try:
        await invitations.revoke(tx, _caller(request, principal), invitation_id)
    except Refused as exc:
        return _refusal(exc)
    return JSONResponse({"revoked": str(invitation_id)})


_MEMBER = (in_path("user_id", "The member's user id"),)
_MEMBER_ERRORS = {404: "Not a member of the tenant", 409: "The last owner, or not in that "
                  "state"}


async def _member_call(request: Request, principal: Principal, tx: Transaction, action: str,
                       work: Callable[[uuid.UUID, Caller], Awaitable[dict[str, Any]]]
                       ) -> Response:
    user_id = _path_id(request, "user_id")
    if user_id is None:
        return await _not_found(request, principal, tx, action, "member")
    try:
        return JSONResponse(await work(user_id, _caller(request, principal)))
    except Refused as exc:
        return _refusal(exc)


@admin_endpoint("PATCH", "/api/v1/members/{user_id}", operation_id="change_member_role",
                summary="Change a member's role (effective from their next request)",
                scope="ai:write", parameters=_MEMBER,
                body={"type": "object", "required": ["role"], "additionalProperties": False,
                      "properties": {"role": {"enum": ["owner", "admin", "technician",
                                                       "readonly"]}}},
                errors={400: "Unknown role", **_MEMBER_ERRORS})
async def api_change_role(request: Request, principal: Principal, tx: Transaction) -> Response:
    body = await _body(request, principal, tx, "member.role_changed", {"role": str})
    if isinstance(body, Response):
        return body

    async def work(user_id: uuid.UUID, caller: Caller) -> dict[str, Any]:
        before = await members.change_role(tx, caller, user_id, body["role"] or "")
        return {"user_id": str(user_id), "from": before, "role": body["role"]}

    return await _member_call(request, principal, tx, "member.role_changed", work)


@admin_endpoint("POST", "/api/v1/members/{user_id}/suspend", operation_id="suspend_member",
                summary="Suspend a member who belongs to no other tenant: no sign-in, no "
                "credential of theirs works; sessions end and grants are revoked",
                scope="ai:write", parameters=_MEMBER, errors=_MEMBER_ERRORS)
async def api_suspend_member(request: Request, principal: Principal,
                             tx: Transaction) -> Response:
    services: Services = request.app.state.services

    async def work(user_id: uuid.UUID, caller: Caller) -> dict[str, Any]:
        cut = await members.suspend(services.db, tx, caller, user_id)
        return {"user_id": str(user_id), "suspended": True, "sessions_ended": cut.sessions,
                "grants_revoked": cut.grants}

    return await _member_call(request, principal, tx, "user.suspended", work)


@admin_endpoint("POST", "/api/v1/members/{user_id}/resume", operation_id="resume_member",
                summary="Lift a suspension this tenant made", scope="ai:write",
                parameters=_MEMBER, errors=_MEMBER_ERRORS)
async def api_resume_member(request: Request, principal: Principal,
                            tx: Transaction) -> Response:
    async def work(user_id: uuid.UUID, caller: Caller) -> dict[str, Any]:
        await members.resume(tx, caller, user_id)
        return {"user_id": str(user_id), "suspended": False}

    return await _member_call(request, principal, tx, "user.resumed", work)


@admin_endpoint("DELETE", "/api/v1/members/{user_id}", operation_id="remove_member",
                summary="Remove a member: their grants here are revoked, their keys here stop "
                "working and their sessions end", scope="ai:write", parameters=_MEMBER,
                errors=_MEMBER_ERRORS)
async def api_remove_member(request: Request, principal: Principal,
                            tx: Transaction) -> Response:
    services: Services = request.app.state.services

    async def work(user_id: uuid.UUID, caller: Caller) -> dict[str, Any]:
        cut = await members.remove(services.db, tx, caller, user_id)
        return {"user_id": str(user_id), "removed": True, "sessions_ended": cut.sessions,
                "grants_revoked": cut.grants}

    return await _member_call(request, principal, tx, "member.removed", work)


@admin_endpoint("GET", "/api/v1/members/{user_id}/sessions",
                operation_id="list_member_sessions",
                summary="List a member's live web sessions", scope="ai:read",
                parameters=_MEMBER, errors={404: "Not a member of the tenant"})
async def api_list_sessions(request: Request, principal: Principal,
                            tx: Transaction) -> Response:
    user_id = _path_id(request, "user_id")
    rows = None if user_id is None else await members.live_sessions(tx, principal, user_id)
    if rows is None:
        return await _not_found(request, principal, tx, "admin.list_member_sessions",
                                "member")
    await tx.finish(admin_entry(request, principal, "admin.list_member_sessions",
                                user_id=str(user_id)))
    return JSONResponse({"sessions": [
        {"id": str(r.id), "created_at": r.created_at.isoformat(),
         "last_seen_at": r.last_seen_at.isoformat(), "client_ip": r.client_ip,
         "user_agent": r.user_agent} for r in rows]})


@admin_endpoint("DELETE", "/api/v1/members/{user_id}/sessions",
                operation_id="end_member_sessions",
                summary="Sign a member out everywhere (their keys and apps are left alone)",
                scope="ai:write", parameters=_MEMBER, errors={404: "Not a member of the tenant"})
async def api_end_sessions(request: Request, principal: Principal,
                           tx: Transaction) -> Response:
    async def work(user_id: uuid.UUID, caller: Caller) -> dict[str, Any]:
        return {"user_id": str(user_id),
                "sessions_ended": await members.end_sessions(tx, caller, user_id)}

    return await _member_call(request, principal, tx, "auth.sessions_ended", work)


#: The console's key and member pages, and the invitation's page.
ROUTES = [
    Route("/console/keys", keys_page, methods=["GET"]),
    Route("/console/keys", key_create, methods=["POST"]),
    Route("/console/keys/{key_id}/revoke", key_revoke, methods=["POST"]),
    Route("/console/members", members_page, methods=["GET"]),
    Route("/console/members/invitations", member_action, methods=["POST"]),
    Route("/console/members/invitations/{id}/{action}", member_action, methods=["POST"]),
    Route("/console/members/{id}/{action}", member_action, methods=["POST"]),
    Route("/invite", invite_page, methods=["GET"]),
    Route("/invite", invite_submit, methods=["POST"]),
]
