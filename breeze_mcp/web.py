"""Pages for humans: sign-in, the consent screen's rendering, connected apps, sign-out.

Every page is served with ``Content-Security-Policy`` (``frame-ancestors 'none'``, a per-page
style nonce, no scripts), ``X-Frame-Options: DENY``, ``Referrer-Policy: same-origin`` and
``Cache-Control: no-store``; every form carries a CSRF token bound to the session (or, before
sign-in, to a pre-session cookie) and is read through :mod:`breeze_mcp.forms`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from breeze_mcp import audit
from breeze_mcp.auth import mfa, oauth, password_reset, sessions, signup
from breeze_mcp.auth.passwords import verify_password
from breeze_mcp.auth.principal import RequestContext
from breeze_mcp.edge import request_context
from breeze_mcp.forms import Fields, FormError, read_form, read_query
from breeze_mcp.services import Services

__all__ = [
    "StrictTransportSecurity",
    "account_page",
    "check_csrf",
    "checked_form",
    "connections_page",
    "current_user",
    "disconnect",
    "end_all_sessions_submit",
    "end_session_submit",
    "error_page",
    "forgot_password_page",
    "forgot_password_submit",
    "form_error_page",
    "form_target_for",
    "login_form",
    "login_mfa_submit",
    "login_page",
    "login_submit",
    "logout",
    "password_page",
    "password_submit",
    "render",
    "reset_password_page",
    "reset_password_submit",
    "security_confirm",
    "security_disable",
    "security_page",
    "security_recovery_codes",
    "security_start",
    "signup_page",
    "signup_submit",
    "verify_email_page",
    "verify_email_resend",
]

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("breeze_mcp", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,
)


def _when(value: object, missing: str = "never") -> Markup:
    """The ``when`` filter: a moment as people read it (``2026-11-29 19:22 UTC``) in a
    ``<time>`` element that keeps the exact value; a datetime, or the ISO text a tool's result
    carries. Text that is not a moment is shown as it is; none is ``missing``."""
    if value is None or value == "":
        return Markup("{}").format(missing)
    moment = value if isinstance(value, dt.datetime) else None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            moment = dt.datetime.fromisoformat(value)
    if moment is None or moment.tzinfo is None:
        return Markup("{}").format(value)
    return Markup('<time datetime="{}">{}</time>').format(moment.isoformat(),
                                                          oauth.blocks.utc_text(moment))


_templates.filters["when"] = _when

_MESSAGES = {"disconnected": "Disconnected: the app's access ended at once."}

LOGIN_IP_LIMIT = "20/minute"
LOGIN_ACCOUNT_LIMIT = "10/15minute"


HSTS = "max-age=63072000; includeSubDomains"


class StrictTransportSecurity:
    """Adds ``Strict-Transport-Security`` to every response (used when the public URL is
    https), so pages, JSON and redirects alike tell the browser to stay on https."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"strict-transport-security", HSTS.encode())]
            await send(message)

        await self.app(scope, receive, send_with_hsts)


def cookies(request: Request) -> sessions.CookieNames:
    services: Services = request.app.state.services
    return sessions.cookie_names(services.settings.public_url)


def set_cookie(response: Response, names: sessions.CookieNames, name: str, value: str,
               max_age: int | None = None) -> None:
    """Every cookie of ours: HttpOnly, SameSite=Lax, Path=/, no Domain; Secure on https."""
    response.set_cookie(name, value, max_age=max_age, path="/", secure=names.secure,
                        httponly=True, samesite="lax")


def pre_session_cookie(request: Request) -> tuple[str, bool]:
    """The pre-session cookie value, and whether it must be (re)set on the response."""
    value = request.cookies.get(cookies(request).csrf)
    if value and 20 <= len(value) <= 100:
        return value, False
    return sessions.new_csrf_cookie(), True


def csrf_binding(request: Request, pre_session: str | None = None) -> str | None:
    names = cookies(request)
    return sessions.csrf_binding(request.cookies.get(names.session),
                                 pre_session or request.cookies.get(names.csrf))


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    form_targets: Iterable[str] = (),
) -> HTMLResponse:
    services: Services = request.app.state.services
    nonce = secrets.token_urlsafe(16)
    pre_session, fresh = pre_session_cookie(request)
    binding = csrf_binding(request, pre_session) or ""
    body = _templates.get_template(template).render(
        nonce=nonce, csrf=sessions.csrf_token(services.settings.secret("session_key"), binding),
        **context,
    )
    # form-action must allow where an approved consent redirects (Chrome enforces it on the
    # redirect that follows a form submission).
    targets = " ".join(sorted({t for t in form_targets if t}))
    csp = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "img-src 'self'; "
        f"form-action 'self' {targets}".rstrip()
        + "; frame-ancestors 'none'; base-uri 'none'"
    )
    response = HTMLResponse(body, status_code=status, headers={
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        # same-origin: no Referer (with its query string) leaves for the client's site, while
        # our own form posts keep a real Origin header for the CSRF check.
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
    })
    if fresh:
        set_cookie(response, cookies(request), cookies(request).csrf, pre_session)
    return response


def error_page(request: Request, title: str, message: str, *, status: int = 400,
               hint: str | None = None) -> HTMLResponse:
    return render(request, "error.html", {"title": title, "message": message, "hint": hint},
                  status=status)


def form_error_page(request: Request, exc: FormError) -> HTMLResponse:
    """A refused form body or query string, on the HTML error page. A body refused unread
    (413, 415) closes the connection, so its remainder is never received."""
    title = {413: "Form too large", 415: "Unsupported form"}.get(exc.status, "Bad request")
    response = error_page(request, title, f"The request was refused: {exc.message}.",
                          status=exc.status)
    if exc.status in (413, 415):
        response.headers["Connection"] = "close"
    return response


async def page_form(request: Request) -> Fields | HTMLResponse:
    try:
        return await read_form(request, request.app.state.services.settings)
    except FormError as exc:
        return form_error_page(request, exc)


def page_query(request: Request) -> Fields | HTMLResponse:
    try:
        return read_query(request, request.app.state.services.settings)
    except FormError as exc:
        return form_error_page(request, exc)


async def checked_form(request: Request) -> Fields | HTMLResponse:
    """A state-changing page form, read and its CSRF token checked (:func:`check_csrf`): the
    fields, or the page to answer instead (a refused body, or 403 "Form expired")."""
    form = await page_form(request)
    if isinstance(form, HTMLResponse) or check_csrf(request, form):
        return form
    return error_page(request, "Form expired", "Reload the page and try again.", status=403)


def check_csrf(request: Request, form: Fields) -> bool:
    """A state-changing form is accepted only with a token bound to this browser's session
    (or pre-session cookie) and, when the browser names an ``Origin``, our own. ``Origin:
    null`` (sandboxed frames, some redirects) is refused; a missing ``Origin`` leaves the
    decision to the token, since browsers send one with every cross-origin POST."""
    services: Services = request.app.state.services
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/").lower() != services.settings.public_url:
        return False
    return sessions.csrf_valid(services.settings.secret("session_key"), csrf_binding(request),
                               form.get("csrf_token"))


async def current_user(request: Request) -> sessions.SessionUser | None:
    services: Services = request.app.state.services
    return await sessions.load_session(services.db, request.cookies.get(cookies(request).session),
                                       idle_timeout=services.settings.session_idle_timeout)


def safe_next(value: object, default: str = "/console") -> str:
    """Only same-site relative paths; never '//host' or a scheme."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") \
            or "\\" in value or len(value) > 16000:
        return default
    return value


def login_form(request: Request, *, next_url: str, email: str = "", error: str | None = None,
               client_name: str | None = None, status: int = 200) -> HTMLResponse:
    return render(request, "login.html", {
        "action": "/login", "next": next_url, "email": email, "error": error,
        "client_name": client_name,
    }, status=status)


async def login_page(request: Request) -> Response:
    query = page_query(request)
    if isinstance(query, Response):
        return query
    if await current_user(request) is not None:
        return RedirectResponse(safe_next(query.get("next")), status_code=303)
    return login_form(request, next_url=safe_next(query.get("next")))


async def login_submit(request: Request) -> Response:
    services: Services = request.app.state.services
    form = await page_form(request)
    if isinstance(form, Response):
        return form
    next_url = safe_next(form.get("next"))
    email = (form.get("email") or "").strip()[:254]
    password = form.get("password") or ""
    if not check_csrf(request, form):
        return error_page(request, "Form expired",
                          "This form is no longer valid. Go back, reload the page and try again.",
                          status=403)
    ctx = request_context(request, services)
    for bucket, limit in ((f"login-ip:{ctx.rate_key}", LOGIN_IP_LIMIT),
                          (f"login-email:{email.lower()}", LOGIN_ACCOUNT_LIMIT)):
        decision = await services.limiter.hit(bucket, limit)
        if not decision.allowed:
            await _audit_login(services, ctx, None, email, "rate_limited", "rate_limited")
            response = login_form(request, next_url=next_url, email=email, status=429,
                                  error="Too many sign-in attempts. Wait a few minutes and "
                                  "try again.")
            response.headers.update(decision.headers())
            return response
    row = await sessions.login_candidate(services.db, email)
    # verify_password costs the same whether or not the account exists: no enumeration.
    ok = verify_password(row.password_hash if row else None, password)
    if not ok or row is None or row.disabled_at is not None:
        await _audit_login(services, ctx, row.id if row else None, email, "error",
                           "bad_credentials")
        return login_form(request, next_url=next_url, email=email, status=401,
                          error="Wrong email or password.")
    if await mfa.enabled(services.db, row.id):  # the second factor before any session
        return render(request, "mfa.html", {
            "ticket": _mfa_ticket(services, row.id, email, next_url), "error": None})
    if await mfa.required(services.db, row.id):  # required of their role: set it up first
        next_url = "/account/security?required=1"
    return await _signed_in(request, services, row.id, email, next_url)


_TICKET_SECONDS = 300


def _mfa_ticket(services: Services, user_id: uuid.UUID, email: str, next_url: str) -> str:
    """The proof, for the code step, that the password was right: who, until when, where to
    go next; signed with the session key."""
    body = base64.urlsafe_b64encode(json.dumps(
        [str(user_id), email, int(time.time()) + _TICKET_SECONDS, next_url]).encode()).decode()
    mac = hmac.new(services.settings.secret("session_key").encode(),
                   b"breeze-mfa-ticket:" + body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def _open_ticket(services: Services, ticket: str) -> tuple[uuid.UUID, str, str] | None:
    body, _, mac = ticket.partition(".")
    expected = hmac.new(services.settings.secret("session_key").encode(),
                        b"breeze-mfa-ticket:" + body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, mac):
        return None
    try:
        user_id, email, until, next_url = json.loads(base64.urlsafe_b64decode(body))
        if int(until) < time.time():
            return None
        return uuid.UUID(user_id), str(email), safe_next(next_url)
    except (ValueError, TypeError):
        return None


async def login_mfa_submit(request: Request) -> Response:
    """The code step of sign-in (and so of OAuth consent, which signs in through here)."""
    services: Services = request.app.state.services
    form = await page_form(request)
    if isinstance(form, Response):
        return form
    if not check_csrf(request, form):
        return error_page(request, "Form expired", "Sign in again.", status=403)
    opened = _open_ticket(services, form.get("ticket") or "")
    if opened is None:
        return login_form(request, next_url="/console", status=401,
                          error="That sign-in took too long. Sign in again.")
    user_id, email, next_url = opened
    decision = await services.limiter.hit(f"mfa:{user_id}", "5/5minute")
    if not decision.allowed:
        response = error_page(request, "Too many codes", "Wait a few minutes and sign in "
                              "again.", status=429)
        response.headers.update(decision.headers())
        return response
    if await mfa.verify(services.db, services.settings, user_id, form.get("code") or "") is None:
        return render(request, "mfa.html", {"ticket": form.get("ticket"),
                                            "error": "That code is not right (each code works "
                                            "once)."}, status=401)
    return await _signed_in(request, services, user_id, email, next_url)


async def _signed_in(request: Request, services: Services, user_id: uuid.UUID, email: str,
                     next_url: str) -> Response:
    """A new session (rotated at every sign-in), audited, and on to ``next_url``."""
    ctx = request_context(request, services)
    token = await sessions.create_session(services.db, user_id, ttl=services.settings.session_ttl,
                                          client_ip=ctx.client_ip, user_agent=ctx.user_agent)
    await _audit_login(services, ctx, user_id, email, "success", None)
    redirect = RedirectResponse(next_url, status_code=303)
    names = cookies(request)
    set_cookie(redirect, names, names.session, token, max_age=services.settings.session_ttl)
    # Rotated, so a token harvested from the sign-in form is worth nothing afterwards.
    set_cookie(redirect, names, names.csrf, sessions.new_csrf_cookie())
    return redirect


async def _audit_login(services: Services, ctx: Any, user_id: uuid.UUID | None, email: str,
                       outcome: audit.Outcome, reason: str | None) -> None:
    async with services.db.system() as conn:
        await conn.finish(audit.AuditEntry(
            actor_type="user", actor_id=str(user_id) if user_id else None,
            acting_user_id=user_id, auth_path="session",
            action="auth.login" if outcome == "success" else "auth.login_failed",
            decision="allowed" if outcome == "success" else "denied", outcome=outcome,
            deny_reason=reason, request_id=ctx.request_id, client_ip=ctx.client_ip,
            user_agent=ctx.user_agent, parameters={"email": email},
        ))


async def logout(request: Request) -> Response:
    services: Services = request.app.state.services
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    names = cookies(request)
    await sessions.end_session(services.db, request.cookies.get(names.session))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(names.session, path="/", secure=names.secure, httponly=True,
                           samesite="lax")
    set_cookie(response, names, names.csrf, sessions.new_csrf_cookie())
    return response


async def _my_grants(services: Services, user: sessions.SessionUser) -> list[dict[str, Any]]:
    return [{"id": str(g.id), "tenant_id": str(g.tenant_id), "tenant_name": g.tenant_name,
             "client_name": g.client_name or g.client_id, "scopes": list(g.scopes)}
            for g in await oauth.user_grants(services.db, user.user_id)]


async def connections_page(request: Request) -> Response:
    user = await current_user(request)
    if user is None:
        return RedirectResponse("/login?next=/account/connections", status_code=303)
    services: Services = request.app.state.services
    query = page_query(request)
    if isinstance(query, Response):
        return query
    return render(request, "connections.html", {
        "user_email": user.email, "grants": await _my_grants(services, user),
        "message": _MESSAGES.get(query.get("done", "")),
    })


async def disconnect(request: Request) -> Response:
    """The human's "disconnect": revoke one of their own grants, at once."""
    services: Services = request.app.state.services
    user = await current_user(request)
    if user is None:
        return RedirectResponse("/login?next=/account/connections", status_code=303)
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    try:
        grant_id = uuid.UUID(request.path_params["grant_id"])
    except ValueError:
        return error_page(request, "Not found", "No such connection.", status=404)
    # The tenant comes from the person's memberships, never from the form.
    if not await oauth.revoke_own_grant(services.db, user.user_id, grant_id,
                                        request=request_context(request, services)):
        return error_page(request, "Not found", "No such connection.", status=404)
    return RedirectResponse("/account/connections?done=disconnected", status_code=303)


def form_target_for(redirect_uri: str) -> str:
    """The CSP form-action source for a redirect URI (origin, or scheme for custom schemes)."""
    parts = urlsplit(redirect_uri)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"


_VERIFY_TITLES = {"verified": "Email verified", "replaced": "This link was replaced",
                  "already_used": "Link already used", "expired": "This link has expired",
                  "invalid": "Not a verification link"}


async def verify_email_page(request: Request) -> Response:
    """``GET /verify-email?token=…``: the link of the verification mail, and its outcome; a
    replaced or expired link offers a one-click resend."""

    services: Services = request.app.state.services
    query = page_query(request)
    if isinstance(query, Response):
        return query
    token = query.get("token") or ""
    outcome = await signup.verify(services.db, token, request_context(request, services))
    status, message = signup.MESSAGES[outcome]
    return render(request, "verify_email.html", {
        "title": _VERIFY_TITLES[outcome], "message": message, "ok": outcome == "verified",
        "resend": outcome in ("replaced", "expired"), "token": token,
        "sign_in": outcome in ("verified", "already_used")}, status=status)


async def _mail_form(request: Request) -> tuple[Fields, RequestContext] | Response:
    """The prologue of an anonymous form that makes us send mail (sign-up, verification
    resend, forgot password): the form read, its CSRF token checked, the source address
    counted against the sign-up limit."""
    services: Services = request.app.state.services
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    ctx = request_context(request, services)
    decision = await signup.hit_limit(services.limiter, services.settings, ctx)
    if not decision.allowed:
        response = error_page(request, "Too many requests",
                              "Wait a while and try again.", status=429)
        response.headers.update(decision.headers())
        return response
    return form, ctx


async def verify_email_resend(request: Request) -> Response:
    """``POST /verify-email/resend``: a new link to where the given one was sent, or to the
    given address (the sign-up page's "send it again"); the same answer whatever the link or
    address, rate-limited per source like sign-ups."""
    from breeze_mcp.mail import MailError

    services: Services = request.app.state.services
    read = await _mail_form(request)
    if isinstance(read, Response):
        return read
    form, ctx = read
    with contextlib.suppress(MailError):
        if form.get("email"):  # from the sign-up page's "send it again"
            await signup.resend(services.db, services.mailer, services.settings,
                                form.get("email") or "", ctx)
        else:
            await signup.resend_for_link(services.db, services.mailer, services.settings,
                                         form.get("token") or "", ctx)
    return render(request, "verify_email.html", {
        "title": "Check your email", "ok": True, "resend": False, "sign_in": False,
        "message": "If that link was ours and the address is not verified yet, a new link "
                   "is on its way. Earlier links no longer work."}, status=202)


async def signup_page(request: Request) -> Response:
    return render(request, "signup.html", {"organization": "", "email": "", "error": None,
                                           "done": None})


async def signup_submit(request: Request) -> Response:
    """``POST /signup``: the page's side of :func:`breeze_mcp.auth.signup.sign_up` (the same
    answer whether or not the address is registered)."""
    from breeze_mcp.auth.accounts import AccountError
    from breeze_mcp.mail import MailError

    services: Services = request.app.state.services
    read = await _mail_form(request)
    if isinstance(read, Response):
        return read
    form, ctx = read
    organization, email = form.get("organization") or "", form.get("email") or ""
    done = "Check your email: if the address can receive mail, a message with a link to " \
        "verify it is on its way."
    try:
        await signup.sign_up(services.db, services.mailer, services.settings,
                             organization=organization, email=email,
                             password=form.get("password") or "", request=ctx)
    except AccountError as exc:
        return render(request, "signup.html", {"organization": organization, "email": email,
                                               "error": str(exc), "done": None}, status=400)
    except MailError:
        done = ("Your account is created, but the mail could not be sent right now. Send it "
                "again in a moment with the button below.")
    return render(request, "signup.html", {"done": done, "email": email}, status=202)


async def forgot_password_page(request: Request) -> Response:
    return render(request, "forgot_password.html", {"done": False, "email": "",
                                                    "error": None})


async def forgot_password_submit(request: Request) -> Response:
    """``POST /forgot-password``: the same page whether or not the address has an account;
    the mail, if one is due, leaves after the answer (:mod:`breeze_mcp.auth.password_reset`)."""
    services: Services = request.app.state.services
    read = await _mail_form(request)
    if isinstance(read, Response):
        return read
    form, ctx = read
    mail = await password_reset.request_reset(services.db, services.limiter, services.settings,
                                              form.get("email") or "", ctx)
    response = render(request, "forgot_password.html", {"done": True}, status=202)
    response.background = services.mailer.after_response(mail)
    return response


_RESET_TITLES = {"reset": "Password changed", "replaced": "This link was replaced",
                 "already_used": "Link already used", "expired": "This link has expired",
                 "invalid": "Not a reset link"}


def _reset_result(request: Request, outcome: password_reset.Outcome) -> HTMLResponse:
    status, message = password_reset.MESSAGES[outcome]
    return render(request, "reset_password.html", {
        "title": _RESET_TITLES[outcome], "form": False, "ok": outcome == "reset",
        "message": message}, status=status)


async def reset_password_page(request: Request) -> Response:
    """``GET /reset-password?token=…``: the link of the reset mail; the new-password form
    while it is usable (opening it uses nothing), else what happened to it."""
    services: Services = request.app.state.services
    query = page_query(request)
    if isinstance(query, Response):
        return query
    token = query.get("token") or ""
    found = await password_reset.state(services.db, token)
    if found != "usable":
        return _reset_result(request, found)
    return render(request, "reset_password.html", {
        "title": "Choose a new password", "form": True, "token": token, "error": None})


async def reset_password_submit(request: Request) -> Response:
    """``POST /reset-password``: the new password set, the link used, and every session and
    grant of the person ended, in this request."""
    from breeze_mcp.auth.accounts import AccountError

    services: Services = request.app.state.services
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    token = form.get("token") or ""
    try:
        outcome, _ = await password_reset.reset(services.db, token, form.get("password") or "",
                                                request_context(request, services))
    except AccountError as exc:
        return render(request, "reset_password.html", {
            "title": "Choose a new password", "form": True, "token": token,
            "error": str(exc)}, status=400)
    response = _reset_result(request, outcome)
    if outcome == "reset":  # this browser's session (if any) ended with the others
        names = cookies(request)
        response.delete_cookie(names.session, path="/", secure=names.secure, httponly=True,
                               samesite="lax")
    return response


def _session_entry(request: Request, user: sessions.SessionUser, action: str,
                   **parameters: object) -> audit.AuditEntry:
    ctx = request_context(request, request.app.state.services)
    return audit.AuditEntry(
        actor_type="user", actor_id=str(user.user_id), acting_user_id=user.user_id,
        auth_path="session", action=action, decision="allowed", outcome="success",
        request_id=ctx.request_id, client_ip=ctx.client_ip, user_agent=ctx.user_agent,
        parameters=dict(parameters))


async def account_page(request: Request) -> Response:
    """``/account``: where the person is signed in, with *Sign out* per session and *Sign out
    everywhere*."""
    user = await current_user(request)
    if user is None:
        return RedirectResponse("/login?next=/account", status_code=303)
    services: Services = request.app.state.services
    query = page_query(request)
    if isinstance(query, Response):
        return query
    rows = await sessions.list_sessions(services.db, user.user_id)
    shown = [{"id": r.id, "created_at": r.created_at.strftime("%Y-%m-%d %H:%M UTC"),
              "last_seen_at": r.last_seen_at.strftime("%Y-%m-%d %H:%M UTC"),
              "client_ip": r.client_ip, "user_agent": (r.user_agent or "")[:120],
              "current": r.id == user.session_id} for r in rows]
    from breeze_mcp.auth.accounts import organizations_of

    return render(request, "account.html", {
        "user_email": user.email, "sessions": shown,
        "organizations": await organizations_of(services.db, user.user_id),
        "message": {"ended": "Signed out there.",
                    "password": "Password changed. You are signed out everywhere else, and "
                                "your connected apps must connect again."}.get(
                                    query.get("done", ""))})


async def end_session_submit(request: Request) -> Response:
    """Sign out one of the person's own other sessions (a session of someone else is
    untouched: the statement itself checks the owner)."""
    services: Services = request.app.state.services
    user = await current_user(request)
    if user is None:
        return RedirectResponse("/login?next=/account", status_code=303)
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    try:
        session_id = uuid.UUID(request.path_params["session_id"])
    except ValueError:
        return error_page(request, "Not found", "No such session.", status=404)
    ended = await sessions.end_sessions(
        services.db, user.user_id, session_id,
        _session_entry(request, user, "auth.session_ended", session_id=str(session_id)))
    if not ended:
        return error_page(request, "Not found", "No such session.", status=404)
    return RedirectResponse("/account?done=ended", status_code=303)


async def end_all_sessions_submit(request: Request) -> Response:
    """*Sign out everywhere*: every session of the person, this one included."""
    services: Services = request.app.state.services
    user = await current_user(request)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    await sessions.end_sessions(
        services.db, user.user_id, None,
        _session_entry(request, user, "auth.sessions_ended", reason="signed_out_everywhere"))
    names = cookies(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(names.session, path="/", secure=names.secure, httponly=True,
                           samesite="lax")
    return response


async def password_page(request: Request) -> Response:
    if await current_user(request) is None:
        return RedirectResponse("/login?next=/account/password", status_code=303)
    return render(request, "password.html", {"error": None})


async def password_submit(request: Request) -> Response:
    """A password change with the current password: every other session and every grant
    end in the same request; this browser gets a new session (rotated)."""
    from breeze_mcp.auth.accounts import AccountError, change_password

    services: Services = request.app.state.services
    user = await current_user(request)
    if user is None:
        return RedirectResponse("/login?next=/account/password", status_code=303)
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    decision = await services.limiter.hit(f"password-change:{user.user_id}", "5/15minute")
    if not decision.allowed:
        response = error_page(request, "Too many attempts", "Wait a while and try again.",
                              status=429)
        response.headers.update(decision.headers())
        return response
    try:
        await change_password(services.db, user.user_id, form.get("current_password") or "",
                              form.get("new_password") or "")
    except AccountError as exc:
        return render(request, "password.html", {"error": str(exc)}, status=400)
    ctx = request_context(request, services)
    token = await sessions.create_session(services.db, user.user_id,
                                          ttl=services.settings.session_ttl,
                                          client_ip=ctx.client_ip, user_agent=ctx.user_agent)
    done = RedirectResponse("/account?done=password", status_code=303)
    names = cookies(request)
    set_cookie(done, names, names.session, token, max_age=services.settings.session_ttl)
    set_cookie(done, names, names.csrf, sessions.new_csrf_cookie())
    return done


async def security_page(request: Request) -> Response:
    """``/account/security``: two-factor sign-in on or off."""
    services: Services = request.app.state.services
    user = await current_user(request)
    if user is None:
        return RedirectResponse("/login?next=/account/security", status_code=303)
    query = page_query(request)
    if isinstance(query, Response):
        return query
    return render(request, "security.html", {
        "is_on": await mfa.enabled(services.db, user.user_id), "enrolment": None,
        "recovery_codes": None, "error": None,
        "required": query.get("required") == "1"})


async def _security_form(request: Request) -> tuple[sessions.SessionUser, Fields] | Response:
    user = await current_user(request)
    if user is None:
        return RedirectResponse("/login?next=/account/security", status_code=303)
    form = await checked_form(request)
    if isinstance(form, Response):
        return form
    services: Services = request.app.state.services
    decision = await services.limiter.hit(f"mfa-manage:{user.user_id}", "10/15minute")
    if not decision.allowed:
        response = error_page(request, "Too many attempts", "Wait a while and try again.",
                              status=429)
        response.headers.update(decision.headers())
        return response
    return user, form


async def security_start(request: Request) -> Response:
    """Enrolment, step 1: the password, then the QR code and the secret."""
    from breeze_mcp.auth.accounts import AccountError

    services: Services = request.app.state.services
    checked = await _security_form(request)
    if isinstance(checked, Response):
        return checked
    user, form = checked
    try:
        enrolment = await mfa.start(services.db, services.settings, user.user_id,
                                    form.get("password") or "")
    except AccountError as exc:
        return render(request, "security.html", {
            "is_on": await mfa.enabled(services.db, user.user_id), "enrolment": None,
            "recovery_codes": None, "error": str(exc)}, status=400)
    return render(request, "security.html", {"is_on": False, "enrolment": enrolment,
                                             "recovery_codes": None, "error": None})


async def security_confirm(request: Request) -> Response:
    """Enrolment, step 2: a code turns it on; the recovery codes, shown once. The session
    is rotated: a privilege change."""
    from breeze_mcp.auth.accounts import AccountError

    services: Services = request.app.state.services
    checked = await _security_form(request)
    if isinstance(checked, Response):
        return checked
    user, form = checked
    try:
        codes = await mfa.confirm(services.db, services.settings, user.user_id,
                                  form.get("code") or "")
    except AccountError as exc:
        return render(request, "security.html", {
            "is_on": False, "enrolment": None, "recovery_codes": None,
            "error": f"{exc}. Start the set-up again."}, status=400)
    response = render(request, "security.html", {"is_on": True, "enrolment": None,
                                                 "recovery_codes": codes, "error": None})
    await _rotate_session(request, services, user, response)
    return response


async def security_recovery_codes(request: Request) -> Response:
    """New recovery codes (password and a code); the old ones stop working."""
    from breeze_mcp.auth.accounts import AccountError

    services: Services = request.app.state.services
    checked = await _security_form(request)
    if isinstance(checked, Response):
        return checked
    user, form = checked
    try:
        codes = await mfa.regenerate_recovery_codes(
            services.db, services.settings, user.user_id, form.get("password") or "",
            form.get("code") or "")
    except AccountError as exc:
        return render(request, "security.html", {"is_on": True, "enrolment": None,
                                                 "recovery_codes": None, "error": str(exc)},
                      status=400)
    return render(request, "security.html", {"is_on": True, "enrolment": None,
                                             "recovery_codes": codes, "error": None})


async def security_disable(request: Request) -> Response:
    """Turn it off (password and code): like a password change, every session and every
    grant of the person end; this browser gets a new session."""
    from breeze_mcp.auth.accounts import AccountError, cut_access

    services: Services = request.app.state.services
    checked = await _security_form(request)
    if isinstance(checked, Response):
        return checked
    user, form = checked
    try:
        await mfa.disable(services.db, services.settings, user.user_id,
                          form.get("password") or "", form.get("code") or "")
    except AccountError as exc:
        return render(request, "security.html", {"is_on": True, "enrolment": None,
                                                 "recovery_codes": None, "error": str(exc)},
                      status=400)
    await cut_access(services.db, user.user_id, reason="mfa_disabled",
                     actor=f"user:{user.user_id}")
    done = RedirectResponse("/account/security", status_code=303)
    await _rotate_session(request, services, user, done, end_old=False)
    return done


async def _rotate_session(request: Request, services: Services, user: sessions.SessionUser,
                          response: Response, *, end_old: bool = True) -> None:
    """A new session for this browser (its old one ended), set on ``response``."""
    if end_old:
        await sessions.end_sessions(services.db, user.user_id, user.session_id,
                                    _session_entry(request, user, "auth.session_rotated"))
    ctx = request_context(request, services)
    token = await sessions.create_session(services.db, user.user_id,
                                          ttl=services.settings.session_ttl,
                                          client_ip=ctx.client_ip, user_agent=ctx.user_agent)
    names = cookies(request)
    set_cookie(response, names, names.session, token, max_age=services.settings.session_ttl)
