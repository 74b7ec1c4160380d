"""JSON endpoints for sign-up and email verification (the pages come with the console).

* ``POST /api/v1/signup`` ``{"organization", "email", "password"}`` → ``202
  {"status": "check_your_email"}``, the same whether or not the address is registered;
* ``POST /api/v1/verify-email`` ``{"token"}`` → ``{"status": <outcome>, "message"}``: 200
  ``verified``; 410 ``replaced``, ``already_used``, ``expired``; 400 ``invalid``;
* ``POST /api/v1/verify-email/resend`` ``{"email"}`` → ``202 {"status": "check_your_email"}``;
* ``POST /api/v1/password-reset`` ``{"email"}`` → ``202 {"status": "check_your_email"}``, the
  same whether or not the address has an account (the mail leaves after the answer);
* ``POST /api/v1/password-reset/confirm`` ``{"token", "password"}`` → ``{"status": <outcome>,
  "message"}``: 200 ``reset``; 410 ``replaced``, ``already_used``, ``expired``; 400 ``invalid``;
  a weak password is ``400 invalid_request`` and leaves the link usable.

Sign-ups, resends and reset requests are rate-limited per source address
(``BREEZE_SIGNUP_RATE_LIMIT``).
"""

from __future__ import annotations

import contextlib
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from breeze_mcp.auth import password_reset, signup
from breeze_mcp.auth.accounts import AccountError
from breeze_mcp.edge import read_body, request_context
from breeze_mcp.json_wire import loads
from breeze_mcp.mail import MailError
from breeze_mcp.services import Services

__all__ = ["confirm_password_reset", "request_password_reset", "resend_verification",
           "signup_endpoint", "verify_email"]

_ACCEPTED = {"status": "check_your_email",
             "message": "If the address can receive mail, a message is on its way."}


def _error(code: str, message: str, status: int, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


async def _json_fields(request: Request, services: Services,
                       names: tuple[str, ...]) -> dict[str, str] | JSONResponse:
    raw = await read_body(request, 64 * 1024)
    if raw is None:
        return _error("payload_too_large", "the body is too large", 413)
    try:
        body = loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _error("invalid_json", "the body is not valid JSON", 400)
    if not isinstance(body, dict):
        return _error("invalid_json", "send a JSON object", 400)
    missing = [n for n in names if not isinstance(body.get(n), str) or not body[n]]
    if missing:
        return _error("invalid_request", f"{missing[0]} is required (a string)", 400)
    return {n: body[n] for n in names}


async def _limited(request: Request, services: Services) -> JSONResponse | None:
    decision = await signup.hit_limit(services.limiter, services.settings,
                                      request_context(request, services))
    if decision.allowed:
        return None
    return JSONResponse({"error": "rate_limited", "message": decision.message},
                        status_code=429, headers=decision.headers())


async def signup_endpoint(request: Request) -> Response:
    services: Services = request.app.state.services
    fields = await _json_fields(request, services, ("organization", "email", "password"))
    if isinstance(fields, Response):
        return fields
    if (refused := await _limited(request, services)) is not None:
        return refused
    try:
        await signup.sign_up(services.db, services.mailer, services.settings,
                             request=request_context(request, services), **fields)
    except AccountError as exc:
        return _error("invalid_request", str(exc), 400)
    except MailError:
        return JSONResponse({**_ACCEPTED, "message": "Your account is created, but the mail "
                             "could not be sent right now: ask for a new link in a moment."},
                            status_code=202)
    return JSONResponse(_ACCEPTED, status_code=202)


async def verify_email(request: Request) -> Response:
    services: Services = request.app.state.services
    fields = await _json_fields(request, services, ("token",))
    if isinstance(fields, Response):
        return fields
    outcome = await signup.verify(services.db, fields["token"],
                                  request_context(request, services))
    status, message = signup.MESSAGES[outcome]
    return JSONResponse({"status": outcome, "message": message}, status_code=status)


async def resend_verification(request: Request) -> Response:
    services: Services = request.app.state.services
    fields = await _json_fields(request, services, ("email",))
    if isinstance(fields, Response):
        return fields
    if (refused := await _limited(request, services)) is not None:
        return refused
    # A mail failure gets the same answer: whether a mail was due says whether the address
    # exists.
    with contextlib.suppress(MailError):
        await signup.resend(services.db, services.mailer, services.settings, fields["email"],
                            request_context(request, services))
    return JSONResponse(_ACCEPTED, status_code=202)


async def request_password_reset(request: Request) -> Response:
    services: Services = request.app.state.services
    fields = await _json_fields(request, services, ("email",))
    if isinstance(fields, Response):
        return fields
    if (refused := await _limited(request, services)) is not None:
        return refused
    mail = await password_reset.request_reset(services.db, services.limiter, services.settings,
                                              fields["email"],
                                              request_context(request, services))
    return JSONResponse(_ACCEPTED, status_code=202,
                        background=services.mailer.after_response(mail))


async def confirm_password_reset(request: Request) -> Response:
    services: Services = request.app.state.services
    fields = await _json_fields(request, services, ("token", "password"))
    if isinstance(fields, Response):
        return fields
    try:
        outcome, _ = await password_reset.reset(services.db, fields["token"],
                                                fields["password"],
                                                request_context(request, services))
    except AccountError as exc:
        return _error("invalid_request", str(exc), 400)
    status, message = password_reset.MESSAGES[outcome]
    return JSONResponse({"status": outcome, "message": message}, status_code=status)
