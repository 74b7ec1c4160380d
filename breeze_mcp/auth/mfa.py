"""TOTP second factor (RFC 6238: SHA-1, 6 digits, 30 s steps) and recovery codes.

* The secret is sealed with AES-256-GCM under ``BREEZE_MFA_ENCRYPTION_KEY`` (which start-up
  refuses equal to the session key), bound to its person by the associated data, so a stored
  secret opens under nothing else.
* A code is accepted at most once per time step per person, ±1 step of drift: the database
  decides (``last_step`` moves forward only), so no instance can accept a replay.
* Enrolment proves the password first, then a code from the new secret; ten one-time recovery
  codes are shown once and stored as digests. Disabling needs the password and a code.
"""

from __future__ import annotations

import hmac
import io
import os
import secrets
import time
import uuid
from dataclasses import dataclass

import pyotp
import segno
import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from breeze_mcp import audit
from breeze_mcp.auth.accounts import AccountError
from breeze_mcp.auth.passwords import verify_password
from breeze_mcp.auth.tokens import digest
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.models import memberships, mfa_recovery_codes, mfa_totp, tenants, users

__all__ = ["RECOVERY_CODES", "Enrolment", "confirm", "disable", "enabled",
           "regenerate_recovery_codes", "require_for_roles", "required", "seal", "start",
           "unseal", "verify"]

RECOVERY_CODES = 10
_ISSUER = "Breeze MCP"


def _aad(user_id: uuid.UUID) -> bytes:
    return b"breeze-mcp totp v1:" + user_id.bytes


def seal(settings: Settings, user_id: uuid.UUID, secret: str) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(settings.mfa_key_bytes()).encrypt(nonce, secret.encode(),
                                                            _aad(user_id))


def unseal(settings: Settings, user_id: uuid.UUID, sealed: bytes) -> str:
    return AESGCM(settings.mfa_key_bytes()).decrypt(sealed[:12], sealed[12:],
                                                    _aad(user_id)).decode()


@dataclass(frozen=True)
class Enrolment:
    secret: str  # shown as text beside the QR code
    uri: str
    qr_svg: str


def _entry(user_id: uuid.UUID, action: str, *, outcome: audit.Outcome = "success",
           deny_reason: str | None = None) -> audit.AuditEntry:
    return audit.AuditEntry(
        actor_type="user", actor_id=str(user_id), acting_user_id=user_id, auth_path="session",
        action=action, decision="allowed" if outcome == "success" else "denied",
        outcome=outcome, deny_reason=deny_reason)


async def _check_password(db: Database, user_id: uuid.UUID, password: str) -> str:
    async with db.system(user_id=user_id) as tx:
        row = (await tx.execute(sa.select(users.c.email, users.c.password_hash)
                                .where(users.c.id == user_id))).first()
    if row is None or not verify_password(row.password_hash, password):
        raise AccountError("the password is not right")
    return str(row.email)


async def required(db: Database, user_id: uuid.UUID) -> bool:
    """Whether a tenant the person belongs to requires two-factor sign-in of their role."""
    async with db.system(user_id=user_id) as tx:
        return bool((await tx.execute(
            sa.select(sa.func.count()).select_from(memberships)
            .join(tenants, tenants.c.id == memberships.c.tenant_id)
            .where(memberships.c.user_id == user_id,
                   memberships.c.role == sa.func.any(tenants.c.mfa_required_roles))
        )).scalar_one() > 0)


async def require_for_roles(db: Database, tenant_id: uuid.UUID, roles: list[str], *,
                            actor: str = "system:cli") -> None:
    """Set the roles of a tenant that must use two-factor sign-in (empty: none)."""
    async with db.tenant(tenant_id) as tx:
        await tx.execute(tenants.update().where(tenants.c.id == tenant_id)
                         .values(mfa_required_roles=sorted(set(roles))))
        await tx.finish(audit.operator_entry(actor, "tenant.mfa_required", tenant_id=tenant_id,
                                             parameters={"roles": sorted(set(roles))}))


async def enabled(db: Database, user_id: uuid.UUID) -> bool:
    async with db.system(user_id=user_id) as tx:
        return (await tx.execute(sa.select(mfa_totp.c.enabled_at)
                                 .where(mfa_totp.c.user_id == user_id))).scalar() is not None


async def start(db: Database, settings: Settings, user_id: uuid.UUID,
                password: str) -> Enrolment:
    """Step 1 of enrolment: the password, then a new (not yet enabled) secret."""
    email = await _check_password(db, user_id, password)
    secret = pyotp.random_base32()
    async with db.system(user_id=user_id) as tx:
        current = (await tx.execute(sa.select(mfa_totp.c.enabled_at)
                                    .where(mfa_totp.c.user_id == user_id)
                                    .with_for_update())).first()
        if current is not None and current.enabled_at is not None:
            raise AccountError("two-factor sign-in is already on")
        await tx.execute(mfa_totp.delete().where(mfa_totp.c.user_id == user_id))
        await tx.execute(mfa_totp.insert().values(user_id=user_id,
                                                  secret_sealed=seal(settings, user_id, secret)))
        await tx.finish(None)  # not on until a code proves it (audited then)
    uri = pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=_ISSUER)
    svg = io.BytesIO()
    segno.make(uri, error="m").save(svg, kind="svg", xmldecl=False, scale=4,
                                    title="Scan with your authenticator app")
    return Enrolment(secret, uri, svg.getvalue().decode())


def _matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step (±1 of now) whose code is ``code``."""
    if not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    step = int(now) // totp.interval
    for candidate in (step, step - 1, step + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            return candidate
    return None


async def confirm(db: Database, settings: Settings, user_id: uuid.UUID, code: str, *,
                  now: float | None = None) -> list[str]:
    """Step 2: a code from the new secret turns MFA on; the recovery codes (shown once)."""
    codes = [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(RECOVERY_CODES)]
    async with db.system(user_id=user_id) as tx:
        row = (await tx.execute(sa.select(mfa_totp.c.secret_sealed, mfa_totp.c.enabled_at)
                                .where(mfa_totp.c.user_id == user_id)
                                .with_for_update())).first()
        if row is None or row.enabled_at is not None:
            raise AccountError("start the set-up again")
        step = _matching_step(unseal(settings, user_id, bytes(row.secret_sealed)),
                              code.strip().replace(" ", ""), time.time() if now is None else now)
        if step is None:
            raise AccountError("that code is not right; check your device's clock")
        await tx.execute(mfa_totp.update().where(mfa_totp.c.user_id == user_id)
                         .values(enabled_at=sa.func.now(), last_step=step))
        await tx.execute(mfa_recovery_codes.delete()
                         .where(mfa_recovery_codes.c.user_id == user_id))
        for value in codes:
            await tx.execute(mfa_recovery_codes.insert().values(user_id=user_id,
                                                                digest=digest(value)))
        await tx.finish(_entry(user_id, "mfa.enrolled"))
    return codes


async def verify(db: Database, settings: Settings, user_id: uuid.UUID, code: str, *,
                 now: float | None = None) -> str | None:
    """The second factor at sign-in: ``"totp"`` or ``"recovery_code"`` when accepted (once),
    else None; audited either way."""
    code = code.strip().replace(" ", "")
    kind: str | None = None
    async with db.system(user_id=user_id) as tx:
        row = (await tx.execute(sa.select(mfa_totp.c.secret_sealed)
                                .where(mfa_totp.c.user_id == user_id,
                                       mfa_totp.c.enabled_at.is_not(None)))).first()
        if row is not None:
            step = _matching_step(unseal(settings, user_id, bytes(row.secret_sealed)), code,
                                  time.time() if now is None else now)
            # The database decides: a step at or before the last one accepted is a replay.
            if step is not None and (await tx.execute(
                    mfa_totp.update().where(mfa_totp.c.user_id == user_id,
                                            mfa_totp.c.last_step < step)
                    .values(last_step=step).returning(mfa_totp.c.user_id))).first():
                kind = "totp"
            elif len(code) == 17 and (await tx.execute(
                    mfa_recovery_codes.update()
                    .where(mfa_recovery_codes.c.user_id == user_id,
                           mfa_recovery_codes.c.digest == digest(code.lower()),
                           mfa_recovery_codes.c.used_at.is_(None))
                    .values(used_at=sa.func.now())
                    .returning(mfa_recovery_codes.c.id))).first():
                kind = "recovery_code"
        action = {"totp": "auth.mfa_passed", "recovery_code": "auth.mfa_recovery_code_used",
                  None: "auth.mfa_failed"}[kind]
        await tx.finish(_entry(user_id, action, outcome="success" if kind else "blocked",
                               deny_reason=None if kind else "wrong_or_replayed_code"))
    return kind


async def regenerate_recovery_codes(db: Database, settings: Settings, user_id: uuid.UUID,
                                    password: str, code: str) -> list[str]:
    """New recovery codes (the old ones stop working), for the password and a code."""
    await _check_password(db, user_id, password)
    if await verify(db, settings, user_id, code) is None:
        raise AccountError("that code is not right")
    codes = [f"{secrets.token_hex(4)}-{secrets.token_hex(4)}" for _ in range(RECOVERY_CODES)]
    async with db.system(user_id=user_id) as tx:
        await tx.execute(mfa_recovery_codes.delete()
                         .where(mfa_recovery_codes.c.user_id == user_id))
        for value in codes:
            await tx.execute(mfa_recovery_codes.insert().values(user_id=user_id,
                                                                digest=digest(value)))
        await tx.finish(_entry(user_id, "mfa.recovery_codes_regenerated"))
    return codes


async def disable(db: Database, settings: Settings, user_id: uuid.UUID, password: str,
                  code: str) -> None:
    """Turn MFA off: the password and a current code (or a recovery code)."""
    await _check_password(db, user_id, password)
    if await verify(db, settings, user_id, code) is None:
        raise AccountError("that code is not right")
    async with db.system(user_id=user_id) as tx:
        await tx.execute(mfa_totp.delete().where(mfa_totp.c.user_id == user_id))
        await tx.execute(mfa_recovery_codes.delete()
                         .where(mfa_recovery_codes.c.user_id == user_id))
        await tx.finish(_entry(user_id, "mfa.disabled"))
