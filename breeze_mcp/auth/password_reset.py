"""Self-service password reset: "forgot password" by a mailed single-use link.

:func:`request_reset` answers the same whatever the address: it returns the mail to send for a
registered, unsuspended person (the caller sends it after answering, so neither the answer nor
its timing says whether the address exists) and nothing otherwise. Requests are limited per
source address (the sign-up limit) and per target address (``ADDRESS_LIMIT``, so nobody can
flood one mailbox). Issuing a link supersedes earlier reset links of that person.

:func:`reset` uses a link: the new password is set and the link used in one transaction, then
every web session of the person and every OAuth grant they made end before it returns (a reset
is what someone does when the password may be known to another). Two-factor sign-in stays on:
the next sign-in still asks for a code. A weak new password changes nothing and leaves the link
usable.
"""

from __future__ import annotations

import uuid
from email.message import EmailMessage
from typing import Literal

import sqlalchemy as sa

from breeze_mcp import audit
from breeze_mcp.auth import mail_links
from breeze_mcp.auth.accounts import AccessCut, AccountError, cut_access, normalise_email
from breeze_mcp.auth.passwords import check_strength, hash_password
from breeze_mcp.auth.principal import RequestContext
from breeze_mcp.auth.rate_limit import RateLimiter
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.models import users
from breeze_mcp.mail import message

__all__ = ["ADDRESS_LIMIT", "MESSAGES", "Outcome", "request_reset", "reset", "state"]

#: Reset mails to one address, whoever asks.
ADDRESS_LIMIT = "5/hour"

Outcome = Literal["reset", "replaced", "already_used", "expired", "invalid"]

#: Each outcome's HTTP status and the message that matches it, for the API and the pages.
MESSAGES: dict[Outcome, tuple[int, str]] = {
    "reset": (200, "Your password is changed and every session and connected app of yours "
                   "was signed out. Sign in with the new password."),
    "replaced": (410, "A newer reset link was sent: use the link in the latest mail."),
    "already_used": (410, "This link was already used. If that was not you, ask for a new "
                          "link at once."),
    "expired": (410, "This link has expired. Ask for a new one."),
    "invalid": (400, "This is not a valid password reset link."),
}


def _entry(action: str, request: RequestContext, *, user_id: uuid.UUID | None,
           outcome: audit.Outcome = "success", deny_reason: str | None = None,
           parameters: dict[str, object] | None = None) -> audit.AuditEntry:
    return audit.AuditEntry(
        actor_type="user", actor_id=str(user_id) if user_id else None, acting_user_id=user_id,
        auth_path="session", action=action,
        decision="allowed" if outcome == "success" else "denied", outcome=outcome,
        deny_reason=deny_reason, request_id=request.request_id, client_ip=request.client_ip,
        user_agent=request.user_agent, parameters=parameters or {})


async def request_reset(db: Database, limiter: RateLimiter, settings: Settings, email: str,
                        request: RequestContext) -> EmailMessage | None:
    """Issue a reset link for ``email`` and return its mail, or None (not registered,
    suspended, or the address's limit reached); each request is audited."""
    try:
        email = normalise_email(email)
    except AccountError:
        return None
    decision = await limiter.hit(f"password-reset:{email.lower()}", ADDRESS_LIMIT)
    async with db.system() as tx:
        user = (await tx.execute(
            sa.select(users.c.id, users.c.email, users.c.disabled_at)
            .where(sa.func.lower(users.c.email) == email.lower()))).first()
        refused = ("unknown_email" if user is None
                   else "user_suspended" if user.disabled_at is not None
                   else "rate_limited" if not decision.allowed else None)
        user_id = user.id if user is not None else None
        if refused is not None or user is None:
            await tx.finish(_entry("auth.password_reset_requested", request, user_id=user_id,
                                   outcome="blocked", deny_reason=refused,
                                   parameters={"email": email}))
            return None
        token = await mail_links.issue(tx, "reset_password", user.id,
                                       settings.password_reset_ttl)
        await tx.finish(_entry("auth.password_reset_requested", request, user_id=user.id,
                               parameters={"email": email}))
    minutes = settings.password_reset_ttl // 60
    return message(
        settings, user.email, "Reset your Breeze MCP password",
        "Someone (we hope you) asked to reset the password of your Breeze MCP account.\n"
        f"Choose a new one with this link (valid for {minutes} minutes, usable once):\n\n"
        f"{settings.public_url}/reset-password?token={token}\n\n"
        "Resetting signs you out everywhere and disconnects the AI apps you connected.\n"
        "If you did not ask, ignore this message: your password stays as it is.\n")


async def state(db: Database, token: str) -> mail_links.State:
    """Whether a reset link can still be used (the page shows the form only if so)."""
    found, _ = await mail_links.state(db, "reset_password", token)
    return found


async def reset(db: Database, token: str, password: str, request: RequestContext
                ) -> tuple[Outcome, AccessCut | None]:
    """Use a reset link to set ``password``; the outcome (audited) and, once reset, what was
    cut. :class:`AccountError` (a weak password) changes nothing."""
    found, user_id = await mail_links.state(db, "reset_password", token)
    row = None
    if user_id is not None:
        async with db.system(user_id=user_id) as tx:
            row = (await tx.execute(sa.select(users.c.email, users.c.disabled_at)
                                    .where(users.c.id == user_id))).first()
    if found == "usable" and row is not None and row.disabled_at is None:
        try:
            check_strength(password, email=row.email)
        except ValueError as exc:
            raise AccountError(f"password: {exc}") from None
        assert user_id is not None
        async with db.system(user_id=user_id) as tx:
            if await mail_links.use(tx, "reset_password", token):
                await tx.execute(users.update().where(users.c.id == user_id)
                                 .values(password_hash=hash_password(password)))
                await tx.finish(_entry(
                    "user.password_reset", request, user_id=user_id,
                    parameters={"user_id": str(user_id), "via": "mail_link"}))
                cut = await cut_access(db, user_id, reason="password_reset",
                                       actor=f"user:{user_id}")
                return "reset", cut
        found = "already_used"  # a concurrent use won
    outcome: Outcome = ("invalid" if found == "usable" else found)  # usable: suspended
    async with db.system() as tx:
        await tx.finish(_entry("user.password_reset", request, user_id=user_id,
                               outcome="blocked",
                               deny_reason="user_suspended" if found == "usable" else found))
    return outcome, None
