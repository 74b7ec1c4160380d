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
from breeze_mcp.auth.tokens import digest, mint
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row
from breeze_mcp.db.models import users, web_sessions

__all__ = [
    "CookieNames",
    "SessionUser",
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
    "new_csrf_cookie",
]

SESSION_PREFIX = "bzs"


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
                      users.c.display_name)
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
    return SessionUser(row.id, row.user_id, row.email, row.display_name)


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
