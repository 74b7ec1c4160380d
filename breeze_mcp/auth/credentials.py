"""The one rule for whether a presented credential may act, whatever its kind.

An API key, an OAuth access token and an OAuth refresh token are each looked up with their
holder in one statement whose row carries the same columns: ``scopes``, ``revoked``,
``expired``, ``tenant_status``, ``role`` (the holder's membership, null when gone) and
``disabled_at`` (the holder's user). :func:`usable_scopes` judges that row, so a revocation,
an expiry, a tenant that is not active, a member removed, disabled or demoted is refused the
same way on every path; its :class:`CredentialRejected` carries the reason the audit log
records.
"""

from __future__ import annotations

from typing import Any, Literal

from breeze_mcp.auth.principal import effective_scopes

__all__ = ["CredentialRejected", "Reason", "usable_scopes"]

#: Why authentication failed, as the audit log records it.
Reason = Literal["missing", "malformed", "unknown", "expired", "revoked", "wrong_resource",
                 "no_access", "tenant_inactive", "throttled"]


class CredentialRejected(Exception):
    """The presented credential cannot be used: ``reason`` for the audit log, ``detail``
    (why the holder has no access) for the audit log too. Neither is shown to the caller."""

    def __init__(self, reason: Reason, detail: str | None = None) -> None:
        super().__init__(detail or reason)
        self.reason: Reason = reason
        self.detail = detail


def usable_scopes(row: Any) -> frozenset[str]:
    """The scopes a credential's lookup row may use now, or :class:`CredentialRejected`:
    not revoked, not expired, its tenant active, its holder still a member and enabled, and
    its scopes narrowed by the holder's role at this moment (a demotion shows at once)."""
    if row is None:
        raise CredentialRejected("unknown")
    if row.revoked:
        raise CredentialRejected("revoked")
    if row.expired:
        raise CredentialRejected("expired")
    if row.tenant_status != "active":  # a valid credential of a tenant not (yet) active
        raise CredentialRejected("tenant_inactive", f"tenant is {row.tenant_status}")
    if row.role is None or row.disabled_at is not None:
        raise CredentialRejected("no_access", "the holder no longer has access to the tenant")
    scopes = effective_scopes(row.role, row.scopes)
    if not scopes:
        raise CredentialRejected("no_access", "the holder's role allows none of its scopes")
    return scopes
