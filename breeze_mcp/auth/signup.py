"""Sign-up and email verification.

:func:`sign_up` creates a tenant in ``pending_verification`` with its owner, in one transaction,
and mails a verification link. The answer is the same whether or not the address is already
registered: an existing account gets a "someone tried to sign up with your address" mail
instead. :func:`verify` checks a link, with exactly these outcomes: ``verified``, ``replaced``
(a newer link was sent; checked before expiry), ``already_used``, ``expired``, ``invalid``. A
successful verification marks the owner's tenants verified and activates any that has a
payment method, in the same transaction (:func:`breeze_mcp.auth.billing.activate_if_ready`).
:func:`resend` supersedes every earlier link and answers the same whether or not the address
exists. Links are single use, expire (``BREEZE_EMAIL_VERIFICATION_TTL``) and are stored as
digests.
"""

from __future__ import annotations

import re
import secrets
import uuid
from email.message import EmailMessage
from typing import Literal

import sqlalchemy as sa

from breeze_mcp import audit
from breeze_mcp.auth import mail_links
from breeze_mcp.auth.accounts import AccountError, normalise_email
from breeze_mcp.auth.billing import activate_if_ready
from breeze_mcp.auth.passwords import check_strength, hash_password
from breeze_mcp.auth.principal import RequestContext
from breeze_mcp.auth.rate_limit import RateDecision, RateLimiter
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.models import memberships, tenants, users
from breeze_mcp.mail import Mailer, message

__all__ = ["MESSAGES", "Outcome", "hit_limit", "resend", "resend_for_link", "sign_up", "verify"]

Outcome = Literal["verified", "replaced", "already_used", "expired", "invalid"]


#: Each outcome's HTTP status and the message that matches it, for the API and the page.
MESSAGES: dict[Outcome, tuple[int, str]] = {
    "verified": (200, "Your email address is verified."),
    "replaced": (410, "A newer verification link was sent: use the link in the latest mail."),
    "already_used": (410, "This link was already used; your address is verified. Sign in."),
    "expired": (410, "This link has expired. Ask for a new one."),
    "invalid": (400, "This is not a valid verification link."),
}


async def hit_limit(limiter: RateLimiter, settings: Settings,
                    request: RequestContext) -> RateDecision:
    """Count a sign-up, a verification resend or a password-reset request (anything an
    anonymous caller can make us mail) against its source address (IPv6 /64): the one limit
    the API and the pages share (``BREEZE_SIGNUP_RATE_LIMIT``)."""
    return await limiter.hit(f"signup:{request.rate_key}",
                             settings.signup_rate_limit)


def _entry(action: str, request: RequestContext, *, user_id: uuid.UUID | None = None,
           tenant_id: uuid.UUID | None = None, outcome: audit.Outcome = "success",
           deny_reason: str | None = None, **parameters: object) -> audit.AuditEntry:
    return audit.AuditEntry(
        actor_type="user", actor_id=str(user_id) if user_id else None, acting_user_id=user_id,
        auth_path="session", action=action, tenant_id=tenant_id,
        decision="allowed" if outcome == "success" else "denied", outcome=outcome,
        deny_reason=deny_reason, request_id=request.request_id, client_ip=request.client_ip,
        user_agent=request.user_agent, parameters=dict(parameters))


def _slug(name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50].strip("-") or "tenant"
    return f"{base}-{secrets.token_hex(3)}"


async def sign_up(db: Database, mailer: Mailer, settings: Settings, *, organization: str,
                  email: str, password: str, request: RequestContext) -> None:
    """Create the pending tenant and its owner and mail the link, or (an address already
    registered) mail its owner a warning; :class:`AccountError` for bad input only."""
    organization = organization.strip()
    if not 1 <= len(organization) <= 200 or not organization.isprintable():
        raise AccountError("organization: 1 to 200 printable characters")
    email = normalise_email(email)
    try:
        check_strength(password, email=email)
    except ValueError as exc:
        raise AccountError(f"password: {exc}") from None
    async with db.system() as tx:
        existing = (await tx.execute(
            sa.select(users.c.id).where(sa.func.lower(users.c.email) == email.lower())
        )).scalar_one_or_none()
        if existing is not None:
            await tx.finish(_entry("auth.signup", request, user_id=existing, outcome="blocked",
                                   deny_reason="email_registered"))
    if existing is not None:
        await mailer.send(message(
            settings, email, "Someone tried to sign up with your address",
            "Someone (perhaps you) tried to create a Breeze MCP account with this address,\n"
            "which already has one. Nothing was changed.\n\n"
            f"To sign in: {settings.public_url}/login\n"))
        return
    tenant_id, user_id = uuid.uuid4(), uuid.uuid4()
    async with db.tenant(tenant_id) as tx:
        await tx.execute(tenants.insert().values(
            id=tenant_id, slug=_slug(organization), name=organization,
            status="pending_verification"))
        await tx.execute(users.insert().values(
            id=user_id, email=email, password_hash=hash_password(password)))
        await tx.execute(memberships.insert().values(tenant_id=tenant_id, user_id=user_id,
                                                     role="owner"))
        token = await mail_links.issue(tx, "verify_email", user_id,
                                       settings.email_verification_ttl)
        await tx.finish(_entry("auth.signup", request, user_id=user_id, tenant_id=tenant_id,
                               organization=organization))
    await mailer.send(_verification_mail(settings, email, token))


def _verification_mail(settings: Settings, email: str, token: str) -> EmailMessage:
    hours = settings.email_verification_ttl // 3600
    return message(
        settings, email, "Verify your email for Breeze MCP",
        "Welcome to Breeze MCP. Verify your email address with this link (valid for "
        f"{hours} hours, usable once):\n\n{settings.public_url}/verify-email?token={token}\n\n"
        "If you did not sign up, ignore this message.\n")


async def verify(db: Database, token: str, request: RequestContext) -> Outcome:
    """Check and use a verification link; its outcome (audited, each one)."""
    found, user_id = await mail_links.state(db, "verify_email", token)
    outcome: Outcome = "verified" if found == "usable" else found
    if outcome != "verified":
        async with db.system() as tx:
            await tx.finish(_entry("auth.email_verification", request, user_id=user_id,
                                   outcome="blocked", deny_reason=outcome))
        return outcome
    assert user_id is not None
    async with db.system(user_id=user_id) as tx:
        owned = list((await tx.execute(
            sa.select(memberships.c.tenant_id)
            .where(memberships.c.user_id == user_id, memberships.c.role == "owner"))).scalars())
    # One transaction: the link used, the address verified, the tenant the person signed up
    # (and owns) marked verified and, if it has a payment method, activated. A tenant
    # transaction may touch the global tables; with no tenant owned, none is touched.
    async with db.tenant(owned[0] if owned else uuid.uuid4(), user_id=user_id) as tx:
        used = await mail_links.use(tx, "verify_email", token)
        if not used:  # a concurrent use won: this one is the second
            outcome = "already_used"
        else:
            await tx.execute(users.update().where(users.c.id == user_id).values(
                email_verified_at=sa.func.coalesce(users.c.email_verified_at, sa.func.now())))
            for tenant_id in owned[:1]:
                await tx.execute(tenants.update().where(tenants.c.id == tenant_id).values(
                    email_verified_at=sa.func.coalesce(tenants.c.email_verified_at,
                                                       sa.func.now()),
                    status=sa.case((tenants.c.status == "pending_verification",
                                    "pending_payment"), else_=tenants.c.status)))
                await activate_if_ready(tx, tenant_id, request, by="system:signup")
        await tx.finish(_entry("auth.email_verification", request, user_id=user_id,
                               tenant_id=owned[0] if owned else None,
                               outcome="success" if used else "blocked",
                               deny_reason=None if used else "already_used"))
    return outcome


async def resend(db: Database, mailer: Mailer, settings: Settings, email: str,
                 request: RequestContext) -> None:
    """A new link for an unverified address, superseding every earlier one; nothing (but the
    same answer) for an unknown or verified address."""
    try:
        email = normalise_email(email)
    except AccountError:
        return
    async with db.system() as tx:
        user = (await tx.execute(
            sa.select(users.c.id, users.c.email_verified_at)
            .where(sa.func.lower(users.c.email) == email.lower()))).first()
        if user is None or user.email_verified_at is not None:
            return
        token = await mail_links.issue(tx, "verify_email", user.id,
                                       settings.email_verification_ttl)
        await tx.finish(_entry("auth.email_verification_resent", request, user_id=user.id))
    await mailer.send(_verification_mail(settings, email, token))


async def resend_for_link(db: Database, mailer: Mailer, settings: Settings, token: str,
                          request: RequestContext) -> None:
    """:func:`resend` to the address an earlier link (replaced or expired) was sent to: the
    one-click resend of the verification page. Nothing for an unknown link."""
    email = await mail_links.holder_email(db, "verify_email", token)
    if email is not None:
        await resend(db, mailer, settings, email, request)
