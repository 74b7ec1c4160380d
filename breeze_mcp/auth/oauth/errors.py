"""OAuth errors in the protocol's own shape (RFC 6749 §5.2)."""

from __future__ import annotations

from typing import Literal

__all__ = ["ErrorCode", "OAuthError"]

ErrorCode = Literal[
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "invalid_scope", "invalid_target", "temporarily_unavailable",
    "access_denied", "server_error",
]


class OAuthError(Exception):
    """An error in the protocol's own shape (RFC 6749 §5.2)."""

    def __init__(self, error: ErrorCode, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}
