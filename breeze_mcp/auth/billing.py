"""The billing provider's webhook: signed events that activate a tenant automatically.

An event is ``{"id": "evt_…", "type": "payment_method.attached" | "payment_method.detached",
"tenant_id": "…"}``, signed in ``Breeze-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>">`` with ``BREEZE_BILLING_WEBHOOK_SECRET``, within :data:`TOLERANCE_SECONDS`.
Each event id is processed once, in the transaction of the tenant it names: the event is
recorded there (``billing_events``), so a replay changes nothing. A tenant becomes ``active``
in the same transaction as the event that completes the pair "verified owner email and an
attached payment method", in either order (:func:`activate_if_ready`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.dialects.postgresql import insert as pg_insert

from breeze_mcp import audit
from breeze_mcp.auth.principal import RequestContext
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Transaction
from breeze_mcp.db.models import billing_events, memberships, tenants, users

__all__ = [
    "SIGNATURE_HEADER",
    "TOLERANCE_SECONDS",
    "Applied",
    "BillingEvent",
    "WebhookRefused",
    "activate_if_ready",
    "apply_event",
    "parse_event",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "Breeze-Signature"
TOLERANCE_SECONDS = 300

Refusal = Literal["missing_signature", "invalid_signature", "stale_signature",
                  "invalid_payload", "unknown_tenant"]


class WebhookRefused(Exception):
    """A webhook that changes nothing: ``reason`` is its audit reason and error code."""

    def __init__(self, reason: Refusal, message: str) -> None:
        super().__init__(message)
        self.reason: Refusal = reason
        self.message = message


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Breeze-Signature`` value for ``body`` at ``timestamp`` (what the provider sends;
    also how the docs' example and the tests sign)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(secret: str, header: str | None, body: bytes, *,
                     now: float | None = None) -> None:
    """Refuse a missing, malformed, wrong or stale signature (several ``v1`` values are
    allowed, for a provider rotating its secret: one must match)."""
    if not header:
        raise WebhookRefused("missing_signature", f"the {SIGNATURE_HEADER} header is required")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise WebhookRefused("invalid_signature", f"{SIGNATURE_HEADER} must be t=…,v1=…")
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise WebhookRefused("invalid_signature", "the signature does not match")
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_SECONDS:
        raise WebhookRefused("stale_signature",
                             f"the signature is older than {TOLERANCE_SECONDS} s "
                             "(or in the future)")


class BillingEvent(BaseModel):
    """One event; unknown fields (the provider's own) are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(pattern=r"^evt_[A-Za-z0-9_-]{1,200}$")
    type: Literal["payment_method.attached", "payment_method.detached"]
    tenant_id: uuid.UUID


def parse_event(body: bytes) -> BillingEvent:
    try:
        return BillingEvent.model_validate(json.loads(body))
    except (ValueError, ValidationError, UnicodeDecodeError, RecursionError):
        raise WebhookRefused("invalid_payload", "expected {\"id\": \"evt_…\", \"type\": "
                             "\"payment_method.attached\" or \"payment_method.detached\", "
                             "\"tenant_id\": \"…\"}") from None


@dataclass(frozen=True)
class Applied:
    replayed: bool  # the event id was processed before: nothing changed
    tenant_status: str
    activated: bool  # this event made the tenant active


async def activate_if_ready(tx: Transaction, tenant_id: uuid.UUID,
                            request: RequestContext | None, *, by: str) -> bool:
    """Make the tenant ``active`` (in ``tx``, audited there) if it is waiting and has both a
    verified owner email and an attached payment method; whether it did."""
    verified_owner = sa.exists().where(
        memberships.c.tenant_id == tenants.c.id, memberships.c.role == "owner",
        memberships.c.user_id == users.c.id, users.c.email_verified_at.is_not(None))
    row = (await tx.execute(
        tenants.update()
        .where(tenants.c.id == tenant_id,
               sa.or_(tenants.c.status == "pending_verification",
                      tenants.c.status == "pending_payment"),
               tenants.c.payment_method_at.is_not(None),
               sa.or_(tenants.c.email_verified_at.is_not(None), verified_owner))
        .values(status="active", activated_at=sa.func.now())
        .returning(tenants.c.id)
    )).first()
    if row is None:
        return False
    await audit.write(tx, audit.AuditEntry(
        actor_type="system", actor_id=by, auth_path="system", action="tenant.activated",
        decision="allowed", outcome="success", tenant_id=tenant_id,
        request_id=request.request_id if request else None,
        client_ip=request.client_ip if request else None))
    return True


async def apply_event(db: Database, event: BillingEvent, request: RequestContext) -> Applied:
    """Process ``event`` once, in its tenant's transaction; :class:`WebhookRefused`
    (``unknown_tenant``) when no such tenant exists."""
    async with db.tenant(event.tenant_id) as tx:
        tenant = (await tx.execute(
            sa.select(tenants.c.status).where(tenants.c.id == event.tenant_id).with_for_update()
        )).first()
        if tenant is None:
            raise WebhookRefused("unknown_tenant", "no tenant with that id")
        entry = audit.AuditEntry(
            actor_type="system", actor_id="system:billing", auth_path="system",
            action="billing.webhook", decision="allowed", outcome="success",
            tenant_id=event.tenant_id, request_id=request.request_id,
            client_ip=request.client_ip, user_agent=request.user_agent,
            parameters={"event_id": event.id, "type": event.type})
        recorded = (await tx.execute(
            pg_insert(billing_events)
            .values(id=event.id, tenant_id=event.tenant_id, type=event.type)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(billing_events.c.id)
        )).first()
        if recorded is None:  # seen before: change nothing
            await tx.finish(audit.AuditEntry(**{
                **vars(entry), "decision": "denied", "outcome": "blocked",
                "deny_reason": "replayed"}))
            return Applied(replayed=True, tenant_status=tenant.status, activated=False)
        attached = event.type == "payment_method.attached"
        await tx.execute(tenants.update().where(tenants.c.id == event.tenant_id).values(
            payment_method_at=sa.func.coalesce(tenants.c.payment_method_at, sa.func.now())
            if attached else None))
        activated = attached and await activate_if_ready(tx, event.tenant_id, request,
                                                         by="system:billing")
        await tx.finish(entry)
    return Applied(replayed=False, tenant_status="active" if activated else tenant.status,
                   activated=activated)
