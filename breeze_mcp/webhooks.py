"""``POST /api/v1/billing/webhook``: the billing provider's signed events (see
:mod:`breeze_mcp.auth.billing`).

A refused webhook (no or a wrong signature, a stale one, a malformed event, an unknown tenant)
changes nothing and is audited as ``billing.webhook_refused``; a source that keeps sending
refused webhooks is throttled like failed bearer authentication
(``BREEZE_AUTH_FAILURE_RATE_LIMIT``). A replayed event is answered 200 (so the provider stops
retrying) and changes nothing.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from breeze_mcp import audit
from breeze_mcp.auth import auth_failures, billing
from breeze_mcp.edge import read_body, request_context
from breeze_mcp.services import Services

__all__ = ["billing_webhook"]

_STATUS = {"missing_signature": 401, "invalid_signature": 401, "stale_signature": 401,
           "invalid_payload": 400, "unknown_tenant": 404}


async def billing_webhook(request: Request) -> Response:
    services: Services = request.app.state.services
    context = request_context(request, services)
    source = auth_failures.source_of(context)
    throttled = auth_failures.throttled(services, source)
    if throttled is not None:
        return JSONResponse({"error": "rate_limited", "message": throttled.message},
                            status_code=429, headers=throttled.headers())
    body = await read_body(request, services.settings.max_request_bytes)
    try:
        if body is None:
            raise billing.WebhookRefused("invalid_payload", "the body is too large")
        billing.verify_signature(services.settings.secret("billing_webhook_secret"),
                                 request.headers.get(billing.SIGNATURE_HEADER), body)
        event = billing.parse_event(body)
        applied = await billing.apply_event(services.db, event, context)
    except billing.WebhookRefused as refused:
        await auth_failures.count_failure(services, source)
        async with services.db.system() as tx:
            await tx.finish(audit.AuditEntry(
                actor_type="system", actor_id="system:billing", auth_path="system",
                action="billing.webhook_refused", decision="denied", outcome="blocked",
                deny_reason=refused.reason, request_id=context.request_id,
                client_ip=context.client_ip, user_agent=context.user_agent))
        return JSONResponse({"error": refused.reason, "message": refused.message},
                            status_code=_STATUS[refused.reason])
    return JSONResponse({"status": "duplicate" if applied.replayed else "processed",
                         "tenant_status": applied.tenant_status,
                         "activated": applied.activated})
