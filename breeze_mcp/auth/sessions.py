"""Web sessions for humans, and CSRF tokens for every form.

A session id is a 256-bit ``bzs_`` secret in an HttpOnly, SameSite=Lax cookie; only its SHA-256
digest is stored. On an https public URL every cookie is ``Secure`` and named with the
``__Host-`` prefix, so no sibling subdomain can plant or overwrite it; browsers refuse that
prefix without ``Secure``, so plain-http development origins use the bare names.

A CSRF token is an HMAC, under the session key, of what the form is bound to: the session
cookie once signed in, and before that a random pre-session cookie that sign-in replaces. A
token harvested before sign-in, or in another session, is therefore refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from breeze_mcp import audit
from breeze_mcp.auth.credentials import CredentialRejected, usable_scopes
from breeze_mcp.auth.principal import ALL_SCOPES, Principal
from breeze_mcp.auth.tokens import digest, mint
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row, Transaction
from breeze_mcp.db.models import memberships, tenants, users, web_sessions

__all__ = [
    "STEP_UP_SECONDS",
    "CookieNames",
    "SessionUser",
    "console_principal",
    "cookie_names",
    "create_session",
    "csrf_binding",
    "csrf_token",
    "csrf_valid",
    "end_session",
    "end_sessions",
    "list_sessions",
    "load_session",
    "login_candidate",
    "mark_stepped_up",
    "new_csrf_cookie",
    "set_console_tenant",
]

SESSION_PREFIX = "bzs"

#: How long a confirmation of who one is (password or code) lets a session take Tier 3
#: actions in the console.
STEP_UP_SECONDS = 300


@dataclass(frozen=True)
class CookieNames:
    session: str
    csrf: str  # the pre-session cookie CSRF tokens are bound to before sign-in
    secure: bool


def cookie_names(public_url: str) -> CookieNames:
    if public_url.startswith("https://"):
        return CookieNames("__Host-breeze_session", "__Host-breeze_csrf", True)
    return CookieNames("breeze_session", "breeze_csrf", False)


@dataclass(frozen=True)
class SessionUser:
    session_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    display_name: str | None
    #: The organization the console acts in (None until the first console page).
    console_tenant_id: uuid.UUID | None = None
    #: Whether the person confirmed who they are within the last ``STEP_UP_SECONDS``.
    stepped_up: bool = False


async def create_session(
    db: Database, user_id: uuid.UUID, *, ttl: int, client_ip: str | None,
    user_agent: str | None,
) -> str:
    token = mint(SESSION_PREFIX)
    async with db.system(user_id=user_id) as conn:
        await conn.execute(web_sessions.insert().values(
            digest=digest(token), user_id=user_id,
            expires_at=sa.func.now() + dt.timedelta(seconds=ttl),
            client_ip=client_ip, user_agent=(user_agent or "")[:512] or None,
        ))
        await conn.finish(None)  # the sign-in's entry is written by the caller
    return token


async def login_candidate(db: Database, email: str) -> Row | None:
    """The account a sign-in with ``email`` is checked against (id, password_hash,
    disabled_at), or None."""
    async with db.system() as tx:
        return (await tx.execute(
            sa.select(users.c.id, users.c.password_hash, users.c.disabled_at)
            .where(sa.func.lower(users.c.email) == email.lower())
        )).first()


async def load_session(db: Database, token: str | None, *,
                       idle_timeout: int = 7200) -> SessionUser | None:
    """The signed-in person of a session cookie: a live session (not ended, within its
    absolute lifetime, used within ``idle_timeout`` seconds) of an enabled user."""
    if not token or not token.startswith(SESSION_PREFIX + "_") or len(token) > 100:
        return None
    async with db.system() as conn:
        row = (await conn.execute(
            sa.select(web_sessions.c.id, users.c.id.label("user_id"), users.c.email,
                      users.c.display_name, web_sessions.c.console_tenant_id,
                      sa.func.coalesce(web_sessions.c.stepped_up_at > sa.func.now()
                                       - dt.timedelta(seconds=STEP_UP_SECONDS), False)
                      .label("stepped_up"))
            .join(users, users.c.id == web_sessions.c.user_id)
            .where(web_sessions.c.digest == digest(token),
                   web_sessions.c.revoked_at.is_(None),
                   web_sessions.c.expires_at > sa.func.now(),
                   web_sessions.c.last_seen_at
                   > sa.func.now() - dt.timedelta(seconds=idle_timeout),
                   users.c.disabled_at.is_(None))
        )).first()
        if row is None:
            return None
        await conn.execute(  # at most once a minute: the idle clock's resolution
            web_sessions.update()
            .where(web_sessions.c.id == row.id,
                   web_sessions.c.last_seen_at < sa.func.now() - dt.timedelta(minutes=1))
            .values(last_seen_at=sa.func.now()))
        await conn.finish(None)  # bookkeeping, not an action
    return SessionUser(row.id, row.user_id, row.email, row.display_name,
                       row.console_tenant_id, row.stepped_up)


async def console_principal(tx: Transaction, user: SessionUser, tenant_id: uuid.UUID, *,
                            rate_limit: str) -> Principal:
    """The Principal of a console request in ``tenant_id`` (``tx``: that tenant's
    transaction), or :class:`~breeze_mcp.auth.credentials.CredentialRejected`. The person's
    role at this request caps the scopes through the table that caps API keys and consent
    (:func:`~breeze_mcp.auth.credentials.usable_scopes`): a session asks for every scope."""
    row = (await tx.execute(
        sa.select(tenants.c.status.label("tenant_status"), memberships.c.role)
        .select_from(tenants)
        .outerjoin(memberships, sa.and_(memberships.c.tenant_id == tenants.c.id,
                                        memberships.c.user_id == user.user_id))
        .where(tenants.c.id == tenant_id))).first()
    if row is None:
        raise CredentialRejected("no_access", "not a member of the organization")
    scopes = usable_scopes(_SessionClaim(row.tenant_status, row.role))
    return Principal(
        tenant_id=tenant_id, actor_type="user", actor_id=str(user.user_id),
        auth_path="session", credential_id=str(user.session_id), scopes=scopes,
        acting_user_id=user.user_id, role=row.role,
        rate_limits=((f"console:{tenant_id}:{user.user_id}", rate_limit),))


@dataclass(frozen=True)
class _SessionClaim:
    """A live session's claim, in the shape :func:`usable_scopes` judges (the session itself
    was checked by :func:`load_session`: not ended, not expired, its person enabled)."""

    tenant_status: str
    role: str | None
    revoked: bool = False
    expired: bool = False
    disabled_at: None = None
    scopes: tuple[str, ...] = ALL_SCOPES


async def set_console_tenant(db: Database, user: SessionUser, tenant_id: uuid.UUID) -> None:
    """Remember the organization this session's console acts in (its membership is checked
    on every request, not here)."""
    async with db.system(user_id=user.user_id) as tx:
        await tx.execute(web_sessions.update()
                         .where(web_sessions.c.id == user.session_id,
                                web_sessions.c.user_id == user.user_id)
                         .values(console_tenant_id=tenant_id))
        await tx.finish(None)  # a preference, not an action


async def mark_stepped_up(tx: Transaction, user: SessionUser) -> None:
    """The person confirmed who they are: Tier 3 console actions are allowed for
    ``STEP_UP_SECONDS``. In the caller's transaction, which it finishes with the audit
    entry of the confirmation."""
    await tx.execute(web_sessions.update()
                     .where(web_sessions.c.id == user.session_id,
                            web_sessions.c.user_id == user.user_id)
                     .values(stepped_up_at=sa.func.now()))


async def list_sessions(db: Database, user_id: uuid.UUID) -> list[Row]:
    """The person's live sessions, most recently used first: id, created_at, last_seen_at,
    client_ip, user_agent."""
    async with db.system(user_id=user_id) as tx:
        return (await tx.execute(
            sa.select(web_sessions.c.id, web_sessions.c.created_at, web_sessions.c.last_seen_at,
                      web_sessions.c.client_ip, web_sessions.c.user_agent)
            .where(web_sessions.c.user_id == user_id, web_sessions.c.revoked_at.is_(None),
                   web_sessions.c.expires_at > sa.func.now())
            .order_by(web_sessions.c.last_seen_at.desc()))).all()


async def end_sessions(db: Database, user_id: uuid.UUID, session_id: uuid.UUID | None,
                       entry: audit.AuditEntry) -> int:
    """End one of the person's own sessions (``session_id``) or all of them (None), audited
    with ``entry``; how many ended (0 for a session that is not theirs)."""
    only = web_sessions.c.id == session_id if session_id is not None else sa.true()
    async with db.system(user_id=user_id) as tx:
        ended = (await tx.execute(
            web_sessions.update()
            .where(web_sessions.c.user_id == user_id, web_sessions.c.revoked_at.is_(None), only)
            .values(revoked_at=sa.func.now()))).rowcount
        await tx.finish(audit.AuditEntry(**{**vars(entry),
                                            "parameters": {**entry.parameters, "ended": ended}}))
    return ended


async def end_session(db: Database, token: str | None) -> None:
    if not token:
        return
    async with db.system() as conn:
        await conn.execute(web_sessions.update()
                           .where(web_sessions.c.digest == digest(token))
                           .values(revoked_at=sa.func.coalesce(web_sessions.c.revoked_at,
                                                               sa.func.now())))
        await conn.finish(None)


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(32)


def csrf_binding(session_cookie: str | None, pre_session_cookie: str | None) -> str | None:
    """What a form's CSRF token is bound to: the session if there is one, else the
    pre-session cookie. The two kinds are labelled so neither can stand for the other."""
    if session_cookie:
        return "session:" + session_cookie
    if pre_session_cookie:
        return "pre-session:" + pre_session_cookie
    return None


def csrf_token(session_key: str, binding: str) -> str:
    mac = hmac.new(session_key.encode(), b"breeze-csrf:" + binding.encode(), hashlib.sha256)
    return mac.hexdigest()


def csrf_valid(session_key: str, binding: str | None, submitted: str | None) -> bool:
    if not binding or not submitted:
        return False
    return hmac.compare_digest(csrf_token(session_key, binding), submitted)
