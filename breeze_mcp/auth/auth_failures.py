"""Failed bearer authentication: throttled per source address, audited in aggregate.

A source address (IPv6 folded to its /64, :func:`~breeze_mcp.auth.client_ip.rate_limit_key`)
may fail ``BREEZE_AUTH_FAILURE_RATE_LIMIT`` times in a moving window; the failure beyond it is
answered 429, and so is every request from that source, valid credential or not, until the
window lets a failure through again. Such a request is turned away before its credential is
looked up, from a memory of the refusal in this process (:meth:`RateLimiter.refusal`), so a
throttled source costs no database work and a successful call no extra storage round trip.
A request with no credential at all is the MCP discovery step (its 401 tells a client where
to get a token), which AI platforms make for all their users from a few shared addresses: it
is audited but does not count towards the throttle.

Each failure is audited as ``auth.bearer_failed``, at most one entry per source and reason
per :data:`AUDIT_PERIOD`: failures are counted in the limiter's storage (shared by every
instance when it is Redis), and the first failure of a period writes an entry whose
``parameters.count`` is the number of failures it stands for: itself and those of the same
source and reason since the previous entry. Only the credential's type prefix (and, for one of
our tenant-bound secrets, the first characters of the tenant id, which is not secret) is kept.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from breeze_mcp import audit
from breeze_mcp.auth.client_ip import rate_limit_key
from breeze_mcp.auth.credentials import Reason
from breeze_mcp.auth.principal import AuthPath, RequestContext
from breeze_mcp.auth.rate_limit import RateDecision

if TYPE_CHECKING:  # the edge hands its Services in; nothing here builds one
    from breeze_mcp.services import Services

__all__ = [
    "AUDIT_PERIOD",
    "Reason",
    "count_failure",
    "credential_prefix",
    "record",
    "source_of",
    "throttled",
]

log = logging.getLogger(__name__)


#: At most one audit entry per source and reason in this period (``limits`` notation).
AUDIT_PERIOD = "1/minute"
#: How long failures not yet carried by an entry wait for the next one (seconds).
PENDING_TTL = 24 * 3600

_OURS = re.compile(r"^(bz[a-z])_([0-9a-f]{6})[0-9a-f]{26}_")
_TYPE = re.compile(r"^([A-Za-z0-9]{1,8})_")


def credential_prefix(token: str) -> str | None:
    """What of a presented credential may be logged: ``bzk_0123ab…`` (type and the start of
    the tenant id) for one of our tenant-bound secrets, the bare type (``ghp_``) for another
    token with a short type prefix, else nothing."""
    if match := _OURS.match(token):
        return f"{match.group(1)}_{match.group(2)}…"
    if match := _TYPE.match(token):
        return f"{match.group(1)}_"
    return None


def source_of(context: RequestContext) -> str:
    """The throttled and audited source: the client address, IPv6 folded to its /64."""
    return rate_limit_key(context.client_ip or "unknown")


def throttled(services: Services, source: str) -> RateDecision | None:
    """The refusal ``source`` is under in this process, if any (no I/O)."""
    return services.limiter.refusal(f"auth-fail:{source}")


async def count_failure(services: Services, source: str) -> RateDecision | None:
    """Count a failure of ``source``; the refusal when it is one too many."""
    decision = await services.limiter.hit(f"auth-fail:{source}",
                                          services.settings.auth_failure_rate_limit)
    if decision.allowed:
        return None
    services.limiter.remember_refusal(decision)
    return decision


async def record(
    services: Services, context: RequestContext, *, source: str, reason: Reason,
    auth_path: AuthPath, prefix: str | None, endpoint: str, detail: str | None = None,
    period: str = AUDIT_PERIOD,
) -> None:
    """Count the failure for the audit and, if it is the first of its source and reason in
    ``period``, write the entry carrying the count. Never raises: a failed sign-in is
    answered whatever happens to its audit entry."""
    key = f"{source}|{reason}"
    try:
        await services.limiter.add(f"auth-fail-pending:{key}", ttl=PENDING_TTL)
        if not (await services.limiter.hit(f"auth-fail-entry:{key}", period)).allowed:
            return  # this period's entry is written; the next one will carry this failure
        count = await services.limiter.take(f"auth-fail-pending:{key}")
        if count <= 0:  # nothing counted (a storage outage): no entry that would stand for it
            return
        parameters: dict[str, object] = {"count": count, "endpoint": endpoint[:200]}
        if prefix:
            parameters["prefix"] = prefix
        if detail:
            parameters["detail"] = detail
        entry = audit.AuditEntry(
            actor_type="api_key" if auth_path == "api_key" else "oauth_client",
            auth_path=auth_path, action="auth.bearer_failed", decision="denied",
            outcome="rate_limited" if reason == "throttled" else "blocked",
            deny_reason=reason, request_id=context.request_id, client_ip=context.client_ip,
            user_agent=context.user_agent, parameters=parameters,
        )
        async with services.db.system() as tx:
            await tx.finish(entry)
    except Exception:
        log.exception("could not audit a failed bearer authentication (%s)", reason)
