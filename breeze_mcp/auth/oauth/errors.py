"""OAuth errors in the protocol's own shape: one class per error code, each with its status.

An endpoint answers any of them with the same body (RFC 6749 §5.2, RFC 7591 §3.2.2)::

    OAuthError                     {"error": <code>, "error_description": <description>}
    ├── InvalidRequest             400 invalid_request (413 / 415 for a refused body)
    ├── InvalidClient              401 invalid_client
    ├── InvalidGrant               400 invalid_grant
    ├── UnauthorizedClient         400 unauthorized_client
    ├── UnsupportedGrantType       400 unsupported_grant_type
    ├── UnsupportedResponseType    400 unsupported_response_type   RFC 6749 §4.1.2.1
    ├── InvalidScope               400 invalid_scope
    ├── InvalidTarget              400 invalid_target               RFC 8707 §2
    ├── AccessDenied               400 access_denied                RFC 6749 §4.1.2.1
    ├── TemporarilyUnavailable     503 temporarily_unavailable      (429 when rate-limited)
    └── RegistrationError          400                              RFC 7591 §3.2.2
        ├── InvalidRedirectUri         invalid_redirect_uri
        └── InvalidClientMetadata      invalid_client_metadata

At the authorization endpoint the same errors travel to the client's redirect URI as query
parameters instead (RFC 6749 §4.1.2.1), once the redirect URI is known to be the client's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

__all__ = [
    "AccessDenied",
    "ErrorCode",
    "InvalidClient",
    "InvalidClientMetadata",
    "InvalidGrant",
    "InvalidRedirectUri",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTarget",
    "OAuthError",
    "RegistrationError",
    "RegistrationErrorCode",
    "TemporarilyUnavailable",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "UnsupportedResponseType",
]

RegistrationErrorCode = Literal["invalid_redirect_uri", "invalid_client_metadata"]
ErrorCode = Literal[
    "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
    "unsupported_grant_type", "unsupported_response_type", "invalid_scope", "invalid_target",
    "access_denied", "temporarily_unavailable", RegistrationErrorCode,
]


class OAuthError(Exception):
    """The base of every OAuth protocol error; ``description`` is safe to send the client."""

    error: ClassVar[ErrorCode]
    status: int = 400

    def __init__(self, description: str, *, status: int | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(description)
        self.description = description
        if status is not None:
            self.status = status
        #: Response headers the error needs (``Retry-After``, ``Connection: close``).
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    error = "invalid_target"


class AccessDenied(OAuthError):
    error = "access_denied"


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status = 503


class RegistrationError(OAuthError):
    """A refused client registration (RFC 7591 §3.2.2)."""

    error: ClassVar[RegistrationErrorCode]

    def as_dict(self) -> dict[str, str]:
        """The RFC 7591 §3.2.2 error body (answered with HTTP 400)."""
        return self.body()


class InvalidRedirectUri(RegistrationError):
    error = "invalid_redirect_uri"


class InvalidClientMetadata(RegistrationError):
    error = "invalid_client_metadata"
