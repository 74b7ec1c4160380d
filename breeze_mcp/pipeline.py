"""The one call pipeline every front door uses.

``call_tool(services, principal, name, arguments, request)``, read top to bottom:

1. resolve the tool and the call's effective tier (max of the tool's and the action's tier;
   an unknown tool or action is Tier 4);
2. the caller's rate limit (per key / per grant) — first, so that even refused calls are
   throttled and one credential cannot flood the audit log;
3. tier gate: Tier 4 is refused for everyone; a tier above the scopes' ceiling is refused with
   the scope that would reach it; then the tool's own limit, if it has one;
4. argument validation by the tool's pydantic model;
5. one tenant transaction in which the tool runs and its audit entry is written, committed
   together.

Every outcome — denied, blocked, rate-limited, invalid, failed, or refused by the edge before
it could be a call — writes exactly one audit entry too, so nothing is ever silently dropped;
whatever bytes the caller sent are stored escaped (:func:`breeze_mcp.audit.escape`). This is
the only place the tier decision is made.

The transaction is the one the edge authenticated the caller in (``tx``, see
:func:`breeze_mcp.edge.bearer_transaction`), or without one, a tenant transaction of its own.
The pipeline alone finishes it, with the call's one audit entry
(:meth:`breeze_mcp.db.engine.Transaction.finish`). A tool that can write runs after a
savepoint, and a failure undoes its work before the entry is written; a read-only tool
returns its last statement (:class:`~breeze_mcp.tools.registry.FinalRead`), which travels
with the entry and the ``COMMIT``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from breeze_mcp import audit
from breeze_mcp.auth.principal import Principal, RequestContext, scope_for_tier
from breeze_mcp.auth.rate_limit import RateDecision
from breeze_mcp.db.engine import Transaction
from breeze_mcp.services import Services
from breeze_mcp.tools.registry import BLOCKED_TIER, FinalRead, ToolContext, ToolError

__all__ = ["CallResult", "Status", "call_tool", "format_validation_error", "shown"]

log = logging.getLogger(__name__)

Status = Literal[
    "ok",
    "unknown_tool",
    "blocked",
    "insufficient_scope",
    "rate_limited",
    "invalid_arguments",
    "invalid_request",
    "tool_error",
    "internal_error",
]


@dataclass(frozen=True)
class CallResult:
    status: Status
    tool: str
    tier: int | None  # None for a tool that does not exist (gated and audited as Tier 4)
    message: str = ""
    result: Mapping[str, Any] | None = None
    error_code: str | None = None  # for tool_error: not_found, invalid_state, ...
    required_scope: str | None = None
    rate: RateDecision | None = None
    details: list[dict[str, Any]] = field(default_factory=list)


def format_validation_error(exc: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = []
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = shown(".".join(str(p) for p in err["loc"])) or "(arguments)"
        details.append({"field": loc, "message": err["msg"], "type": err["type"]})
        parts.append(f"{loc}: {err['msg']}")
    return "invalid arguments: " + "; ".join(parts), details


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# A dotted path as a chain of links to the parent's path (innermost first).
_Path = tuple[str, "_Path"] | None


def _unstorable_field(value: Any) -> str | None:
    """The dotted path of the first string (or key) PostgreSQL text cannot hold (a NUL, a
    lone surrogate), if any.

    A loop, not recursion, so any nesting is fine; each path is kept as a link to its
    parent's and spelled out only for the one found."""
    pending: list[tuple[_Path, Any]] = [(None, value)]

    def spelled(link: _Path) -> str:
        parts: list[str] = []
        while link is not None:
            parts.append(link[0])
            link = link[1]
        return ".".join(reversed(parts)) or "(arguments)"

    while pending:
        link, item = pending.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item):
                return spelled(link)
        elif isinstance(item, Mapping):
            children: list[tuple[_Path, Any]] = []
            for key, child in item.items():
                if _UNSTORABLE.search(str(key)):
                    return spelled((str(key), link))
                children.append(((str(key), link), child))
            pending.extend(reversed(children))
        elif isinstance(item, list):
            pending.extend(reversed([((str(i), link), child) for i, child in enumerate(item)]))
    return None


def shown(text: str, limit: int = 200) -> str:
    """A caller's string as an error message repeats it: shortened and escaped."""
    return audit.escape(text if len(text) <= limit else text[:limit] + "…")


async def call_tool(
    services: Services,
    principal: Principal,
    name: str,
    arguments: Mapping[str, Any] | None,
    request: RequestContext,
    tx: Transaction | None = None,
    *,
    refused: str | None = None,
) -> CallResult:
    """Run one call; ``tx``: the caller's tenant transaction (the pipeline finishes it).

    ``refused``: the edge could not make a call of the request (no JSON-RPC id, a body that
    is not a JSON object, ...) and says why; the call is rate-limited and audited as denied
    (``deny_reason`` ``invalid_request``) like any other, and never run."""
    if tx is None:
        async with services.db.tenant(principal.tenant_id,
                                      user_id=principal.acting_user_id) as own:
            return await _call_tool(services, principal, name, arguments, request, own,
                                    refused)
    return await _call_tool(services, principal, name, arguments, request, tx, refused)


async def _call_tool(
    services: Services,
    principal: Principal,
    name: str,
    arguments: Mapping[str, Any] | None,
    request: RequestContext,
    tx: Transaction,
    refused: str | None = None,
) -> CallResult:
    started = time.perf_counter()
    arguments = arguments or {}
    spec = services.registry.get(name)
    tier = spec.effective_tier(arguments) if spec else BLOCKED_TIER

    def entry(**fields: Any) -> audit.AuditEntry:
        return principal.audit_entry(
            request, action=name, parameters=arguments, risk_tier=tier,
            duration_ms=round((time.perf_counter() - started) * 1000, 3), **fields)

    async def limited(buckets: list[tuple[str, str]]) -> CallResult | RateDecision | None:
        decision = await services.limiter.hit_all(buckets)
        if decision is None or decision.allowed:
            return decision
        await tx.finish(entry(decision="denied", outcome="rate_limited",
                              deny_reason=f"rate_limit:{decision.bucket}"))
        return CallResult(
            "rate_limited", name, tier if spec else None,
            decision.message,
            rate=decision,
        )

    # 1-2. Resolve; the caller's own rate limit. ------------------------------------------
    rate = await limited(list(principal.rate_limits))
    if isinstance(rate, CallResult):
        return rate
    if refused is not None:
        await tx.finish(entry(decision="denied", outcome="error",
                              deny_reason="invalid_request", error=refused))
        return CallResult("invalid_request", name, tier if spec else None, refused, rate=rate)

    # 3. Gate. ---------------------------------------------------------------------------------
    if spec is None:
        await tx.finish(entry(decision="denied", outcome="blocked", deny_reason="unknown_tool"))
        return CallResult("unknown_tool", name, None, f"Unknown tool: {shown(name)}",
                          rate=rate)
    if tier >= BLOCKED_TIER:
        reason = "tier4_tool" if spec.base_tier >= BLOCKED_TIER else "unknown_or_tier4_action"
        await tx.finish(entry(decision="denied", outcome="blocked", deny_reason=reason))
        action = arguments.get("action")
        what = f"tool {name!r}" if spec.base_tier >= BLOCKED_TIER else (
            f"action '{shown(action)}' of tool {name!r}" if isinstance(action, str) else
            f"the action ({type(action).__name__}) of tool {name!r}")
        return CallResult(
            "blocked", name, tier,
            f"{what} is Tier 4: blocked at every scope level and never executed",
            rate=rate,
        )
    if tier > principal.tier_ceiling:
        needed = scope_for_tier(tier)
        await tx.finish(entry(decision="denied", outcome="blocked",
                              deny_reason="insufficient_scope"))
        return CallResult(
            "insufficient_scope", name, tier,
            f"{name} is a Tier {tier} call and needs the {needed} scope "
            f"(granted: {', '.join(sorted(principal.scopes)) or 'none'})",
            required_scope=needed,
            rate=rate,
        )

    if spec.rate_limit:  # the dangerous tools' own per-tenant budget
        tool_rate = await limited([(f"tenant:{principal.tenant_id}:tool:{name}",
                                    spec.rate_limit)])
        if isinstance(tool_rate, CallResult):
            return tool_rate
        if tool_rate is not None and (rate is None or tool_rate.remaining < rate.remaining):
            rate = tool_rate

    # 4. Validate. ---------------------------------------------------------------------------
    try:
        bad = _unstorable_field(arguments)
        if bad is not None:  # PostgreSQL text cannot hold it: refuse it here, clearly
            bad = shown(bad)
            details = [{"field": bad, "type": "string_unstorable", "message":
                        "must not contain NUL characters or lone surrogates"}]
            message = (f"invalid arguments: {bad}: must not contain NUL characters or lone "
                       "surrogates")
            await tx.finish(entry(decision="allowed", outcome="error", error=message))
            return CallResult("invalid_arguments", name, tier, message, rate=rate,
                              details=details)
        args = spec.input_model.model_validate(arguments)
    except ValidationError as exc:
        message, details = format_validation_error(exc)
        await tx.finish(entry(decision="allowed", outcome="error", error=message))
        return CallResult("invalid_arguments", name, tier, message, rate=rate, details=details)

    # 5. Run, and finish the transaction with the call's one entry. -------------------------
    assert spec.handler is not None  # Tier 1-3 only: Tier 4 has no handler and never gets here
    # A tool that can write runs after a savepoint, so that a failure undoes its work and
    # still commits the entry. A read-only (Tier 1) tool has nothing to undo.
    writes = spec.max_tier > 1
    try:
        if writes:
            await tx.savepoint()
        outcome = await spec.handler(ToolContext(tx, principal.tenant_id, principal.actor),
                                     args)
        success = entry(decision="allowed", outcome="success")
        if isinstance(outcome, FinalRead):
            rows = await tx.finish(success, final=(outcome.statement, outcome.params))
        else:
            await tx.finish(success)
    except ToolError as exc:
        await _finish_failed(tx, entry(decision="allowed", outcome="error",
                                       error=f"{exc.code}: {exc.message}"), writes)
        return CallResult("tool_error", name, tier, exc.message, error_code=exc.code, rate=rate)
    except Exception:
        log.exception("tool %s failed", name)
        await _finish_failed(tx, entry(decision="allowed", outcome="error",
                                       error="internal error"), writes)
        return CallResult("internal_error", name, tier, "internal error", rate=rate)
    if isinstance(outcome, FinalRead):
        # Committed with its entry: shaping the rows is pure formatting, which a test of
        # each read-only tool proves cannot fail on the rows its statement returns.
        try:
            return CallResult("ok", name, tier, result=outcome.shape(rows), rate=rate)
        except Exception:
            log.exception("tool %s: shaping the committed rows failed", name)
            return CallResult("internal_error", name, tier, "internal error", rate=rate)
    return CallResult("ok", name, tier, result=outcome, rate=rate)


async def _finish_failed(tx: Transaction, entry: audit.AuditEntry, undo: bool) -> None:
    """Finish a call whose tool failed: its work undone (back to the savepoint, or all of
    it, by :meth:`Transaction.finish` of an aborted transaction), its entry committed."""
    try:
        if undo:
            await tx.undo()
        await tx.finish(entry)
    except Exception:
        # The savepoint could not be reached (the connection failed mid-tool): the
        # transaction is lost; finish writes the entry in a new one.
        log.warning("audit entry for %s written after restarting the transaction",
                    entry.action, exc_info=True)
        await tx.finish(entry)
