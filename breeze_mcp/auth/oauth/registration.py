"""Dynamic Client Registration policy and redirect URI rules, as pure functions.

Accept what the real AI clients send, refuse what attackers send. Nothing here touches the
network or the database: the ``/register`` handler parses the body with
:func:`parse_registration_body`, validates it with :func:`validate_registration` and stores
the resulting :class:`ClientRegistration`; the ``/authorize`` handler checks the presented
``redirect_uri`` with :func:`redirect_uri_matches`.

Sources (look them up when a detail matters):

- RFC 7591 §2 (client metadata): ``redirect_uris``, ``token_endpoint_auth_method`` (default
  ``client_secret_basic``), ``grant_types`` (default ``authorization_code``),
  ``response_types`` (default ``code``), ``scope``, ``client_name``, ``client_uri``,
  ``logo_uri``, ``contacts``, ``software_id``, ``software_version``. Metadata the server does
  not understand is ignored; the server may replace requested values (here: unknown scopes
  are dropped, not fatal).
- RFC 7591 §3.2.2 (client registration error response): ``invalid_redirect_uri`` and
  ``invalid_client_metadata``, with an ``error_description`` safe to show the client.
- RFC 8252 §7.1 (private-use URI schemes, only those on a configured allowlist), §7.3 and
  §8.3 (loopback redirects: ``http`` to ``127.0.0.1``/``[::1]``/``localhost`` where the port is
  chosen at request time, so any port matches), §8.4 (refuse dangerous registrations).
- OAuth 2.1 (draft) §2.3 and §4.1.3 / RFC 9700 §4.1: redirect URIs are compared by exact
  string match (loopback port excepted), never contain a fragment, and plain ``http`` is only
  for loopback.

The URI parser is deliberately strict rather than lenient (``urllib.parse`` silently drops
tabs and newlines and strips leading control characters, which is how ``" javascript:"``
and ``"java\\tscript:"`` tricks get through): a redirect URI is printable ASCII from the RFC
3986 character set, or it is refused.
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, cast, get_args
from urllib.parse import unquote, urlsplit

from breeze_mcp.auth.oauth.errors import (
    InvalidClientMetadata,
    InvalidRedirectUri,
    RegistrationError,
    RegistrationErrorCode,
)

__all__ = [
    "DEFAULT_PRIVATE_SCHEMES",
    "KNOWN_SCOPES",
    "MAX_BODY_BYTES",
    "MAX_REDIRECT_URIS",
    "MAX_URI_LENGTH",
    "ClientRegistration",
    "RegistrationError",
    "RegistrationErrorCode",
    "TokenEndpointAuthMethod",
    "https_url_problem",
    "is_loopback_redirect",
    "parse_registration_body",
    "redirect_host",
    "redirect_uri_matches",
    "validate_redirect_uri",
    "validate_registration",
]

KNOWN_SCOPES = ("ai:read", "ai:write", "ai:execute", "offline_access")
MAX_REDIRECT_URIS = 10
MAX_URI_LENGTH = 2048
MAX_BODY_BYTES = 64 * 1024
DEFAULT_PRIVATE_SCHEMES = frozenset({"cursor", "vscode", "vscode-insiders", "windsurf"})

MAX_TEXT_LENGTH = 200  # client_name, software_id, software_version
MAX_CONTACTS = 10
MAX_CONTACT_LENGTH = 254
MAX_SHOWN_URI = 200  # how much of a refused URI an error description repeats

TokenEndpointAuthMethod = Literal["none", "client_secret_post", "client_secret_basic"]

_AUTH_METHODS: tuple[TokenEndpointAuthMethod, ...] = get_args(TokenEndpointAuthMethod)
_GRANT_TYPES = ("authorization_code", "refresh_token")  # canonical order
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# Never a redirect target, whatever the private-scheme allowlist says.
_DANGEROUS_SCHEMES = frozenset({"javascript", "data", "file", "vbscript"})

# RFC 3986 §2: unreserved, reserved and "%" (percent-encoding). Nothing else may appear.
_URI_CHARS = frozenset(string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=%")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_REG_NAME = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_PORT = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True)
class ClientRegistration:
    """Validated client metadata, with the RFC 7591 defaults applied."""

    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: TokenEndpointAuthMethod
    grant_types: tuple[str, ...]  # always includes "authorization_code"
    response_types: tuple[str, ...]  # ("code",)
    client_name: str | None
    client_uri: str | None
    logo_uri: str | None
    scope: str | None  # only KNOWN_SCOPES, canonical order; None if none remain
    contacts: tuple[str, ...]
    software_id: str | None
    software_version: str | None


# --------------------------------------------------------------------------------------------
# Body


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def parse_registration_body(raw: bytes) -> dict[str, Any]:
    """The registration request body as a JSON object, at most ``MAX_BODY_BYTES`` bytes."""
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidClientMetadata(f"request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InvalidClientMetadata("request body is not UTF-8 encoded") from None
    except (ValueError, RecursionError):
        raise InvalidClientMetadata("request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidClientMetadata("request body must be a JSON object")
    return cast(dict[str, Any], value)


# --------------------------------------------------------------------------------------------
# URIs


class _Refused(Exception):
    """Why a URI is refused (internal; becomes a RegistrationError)."""


@dataclass(frozen=True)
class _Uri:
    scheme: str  # as written
    host: str | None  # as written; None when there is no authority ("//")
    port: str | None  # digits as written; None when absent
    path: str
    query: str | None  # None when there is no "?"


def _parse(uri: str, *, allow_fragment: bool = False) -> _Uri:
    """Split an absolute URI strictly; raise ``_Refused`` for anything irregular."""
    if len(uri) > MAX_URI_LENGTH:
        raise _Refused(f"longer than {MAX_URI_LENGTH} characters")
    if not uri:
        raise _Refused("empty")
    for ch in uri:
        if ch.isspace() or unicodedata.category(ch).startswith("C"):
            raise _Refused("contains whitespace or control characters")
    if not uri.isascii():
        raise _Refused("contains non-ASCII characters")
    if not set(uri) <= _URI_CHARS:
        raise _Refused("contains characters not allowed in a URI")
    if _BAD_PERCENT.search(uri):
        raise _Refused("malformed percent-encoding")

    scheme, colon, rest = uri.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise _Refused("not an absolute URI")
    if scheme.lower() in _DANGEROUS_SCHEMES:
        raise _Refused(f"the {scheme.lower()!r} scheme is never allowed")
    if "#" in rest:
        if not allow_fragment:
            raise _Refused("fragments are not allowed")
        rest = rest.partition("#")[0]
    hier, question, query = rest.partition("?")
    if not hier.startswith("//"):
        return _Uri(scheme, None, None, hier, query if question else None)

    authority, slash, path = hier[2:].partition("/")
    if "@" in authority:
        raise _Refused("userinfo is not allowed")
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            raise _Refused("invalid host")
        host, after = authority[: end + 1], authority[end + 1 :]
        if after and not after.startswith(":"):
            raise _Refused("invalid host")
        has_port, port = bool(after), after[1:]
        _check_ipv6(host[1:-1])
    else:
        host, colon, port = authority.partition(":")
        has_port = bool(colon)
        if not host:
            raise _Refused("missing host")
        if "*" in host:
            raise _Refused("wildcards are not allowed in the host")
        if not _REG_NAME.fullmatch(host):
            raise _Refused("invalid host")
    if has_port and not (_PORT.fullmatch(port) and 0 < int(port) <= 65535):
        raise _Refused("invalid port")
    return _Uri(scheme, host, port if has_port else None, slash + path, query if question else None)


def _check_ipv6(literal: str) -> None:
    if "%" in literal:  # zone identifiers
        raise _Refused("invalid host")
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        raise _Refused("invalid host") from None


def _is_loopback(parts: _Uri) -> bool:
    return (
        parts.scheme.lower() == "http"
        and parts.host is not None
        and parts.host.lower() in _LOOPBACK_HOSTS
    )


def _check_web(parts: _Uri) -> None:
    """``https`` with a host, or ``http`` to a loopback host."""
    scheme = parts.scheme.lower()
    if scheme == "https":
        if not parts.host:
            raise _Refused("https URI needs a host")
    elif scheme == "http":
        if not parts.host:
            raise _Refused("http URI needs a host")
        if not _is_loopback(parts):
            raise _Refused("plain http is only allowed to localhost, 127.0.0.1 or [::1]")
    else:
        raise _Refused(f"the {scheme!r} scheme is not allowed")


def _check_redirect(uri: str, private_schemes: frozenset[str]) -> None:
    parts = _parse(uri)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        _check_web(parts)
    elif scheme in {s.lower() for s in private_schemes}:
        if parts.host is not None and not parts.host:
            raise _Refused("missing host")
        if parts.host is None and not parts.path:
            raise _Refused("missing path")
    else:
        raise _Refused(f"the private-use scheme {scheme!r} is not on the allowlist")


def _shown(uri: str) -> str:
    """A refused URI as an error description may repeat it: truncated, escaped to ASCII."""
    if len(uri) > MAX_SHOWN_URI:
        return ascii(uri[:MAX_SHOWN_URI]) + "..."
    return ascii(uri)


def validate_redirect_uri(uri: str, *, private_schemes: frozenset[str]) -> str:
    """``uri`` unchanged if it is an acceptable redirect URI, else ``invalid_redirect_uri``.

    Allowed: ``https`` with a host; ``http`` only to ``localhost``, ``127.0.0.1`` or ``[::1]``
    (any port); a private-use scheme on ``private_schemes``. Never a fragment, userinfo,
    wildcard host, whitespace or control character, or a dangerous scheme.
    """
    try:
        _check_redirect(uri, private_schemes)
    except _Refused as exc:
        raise InvalidRedirectUri(f"redirect URI {_shown(uri)} is not allowed: {exc}") from None
    return uri


def is_loopback_redirect(uri: str) -> bool:
    """``http://localhost|127.0.0.1|[::1](:port)?/path``, well formed (RFC 8252 §7.3)."""
    try:
        parts = _parse(uri)
    except _Refused:
        return False
    return _is_loopback(parts)


def redirect_uri_matches(registered: Sequence[str], presented: str) -> bool:
    """Exact string match, except that a loopback redirect matches on any port.

    For loopback (RFC 8252 §7.3) the scheme, host spelling, path and query must still be
    identical; only the port may differ, and the registered URI may have none. No other
    normalisation: no case folding, no trailing-slash or default-port equivalence.
    """
    if presented in registered:
        return True
    try:
        wanted = _parse(presented)
    except _Refused:
        return False
    if not _is_loopback(wanted):
        return False
    for candidate in registered:
        try:
            parts = _parse(candidate)
        except _Refused:
            continue
        if (
            _is_loopback(parts)
            and parts.scheme == wanted.scheme
            and parts.host == wanted.host
            and parts.path == wanted.path
            and parts.query == wanted.query
        ):
            return True
    return False


def https_url_problem(url: str, *, client_id: bool = False) -> str | None:
    """Why ``url`` cannot be fetched as a client's document, or None: an ``https`` URL with a
    host, parsed as strictly as a redirect URI, without userinfo or fragment. With
    ``client_id`` (a Client ID Metadata Document URL) it also needs a path, without ``.`` or
    ``..`` segments (draft-ietf-oauth-client-id-metadata-document §3)."""
    try:
        parts = _parse(url)
    except _Refused as exc:
        return str(exc)
    if parts.scheme != "https" or not parts.host:
        return "it must be an https URL with a host"
    if client_id:
        if not parts.path:
            return "it needs a path"
        if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
            return "it must not contain . or .. path segments"
    return None


def redirect_host(redirect_uri: str) -> str:
    """Where a redirect URI sends the person, as they should read it: the host of an http(s)
    URI, the scheme of a private-use one (``cursor://``)."""
    parts = urlsplit(redirect_uri)
    host = parts.hostname if parts.scheme in ("http", "https") else f"{parts.scheme}://"
    return host or redirect_uri


# --------------------------------------------------------------------------------------------
# Metadata


def _metadata_error(description: str) -> InvalidClientMetadata:
    return InvalidClientMetadata(description)


def _get(body: Mapping[str, Any], name: str) -> Any:
    """A member's value; JSON ``null`` is read as absent."""
    return body.get(name)


def _redirect_uris(value: Any, private_schemes: frozenset[str]) -> tuple[str, ...]:
    def refuse(description: str) -> InvalidRedirectUri:
        return InvalidRedirectUri(description)

    if value is None:
        raise refuse("redirect_uris is required")
    if not isinstance(value, list):
        raise refuse("redirect_uris must be a list of strings")
    if not value:
        raise refuse("redirect_uris must not be empty")
    if len(value) > MAX_REDIRECT_URIS:
        raise refuse(f"at most {MAX_REDIRECT_URIS} redirect_uris are allowed")
    uris: list[str] = []
    for index, uri in enumerate(value):
        if not isinstance(uri, str):
            raise refuse(f"redirect_uris[{index}] is not a string")
        try:
            _check_redirect(uri, private_schemes)
        except _Refused as exc:
            raise refuse(f"redirect_uris[{index}] {_shown(uri)} is not allowed: {exc}") from None
        if uri not in uris:
            uris.append(uri)
    return tuple(uris)


def _auth_method(value: Any) -> TokenEndpointAuthMethod:
    if value is None:
        return "client_secret_basic"  # RFC 7591 §2 default
    if not isinstance(value, str):
        raise _metadata_error("token_endpoint_auth_method must be a string")
    for method in _AUTH_METHODS:
        if value == method:
            return method
    raise _metadata_error(
        f"token_endpoint_auth_method {_shown(value)} is not supported; "
        f"use one of {', '.join(_AUTH_METHODS)}"
    )


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _metadata_error(f"{name} must be a list of strings")
    return cast(list[str], value)


def _grant_types(value: Any) -> tuple[str, ...]:
    if value is None:
        return ("authorization_code",)  # RFC 7591 §2 default
    requested = _string_list(value, "grant_types")
    for grant in requested:
        if grant not in _GRANT_TYPES:
            raise _metadata_error(
                f"grant type {_shown(grant)} is not supported; use {' and/or '.join(_GRANT_TYPES)}"
            )
    if "authorization_code" not in requested:
        raise _metadata_error("grant_types must include authorization_code")
    return tuple(grant for grant in _GRANT_TYPES if grant in requested)


def _response_types(value: Any) -> tuple[str, ...]:
    if value is None:
        return ("code",)  # RFC 7591 §2 default
    requested = _string_list(value, "response_types")
    for response_type in requested:
        if response_type != "code":
            raise _metadata_error(
                f"response type {_shown(response_type)} is not supported; use code"
            )
    if not requested:
        raise _metadata_error("response_types must include code")
    return ("code",)


def _scope(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _metadata_error("scope must be a space-separated string")
    requested = set(value.split())
    kept = [scope for scope in KNOWN_SCOPES if scope in requested]
    return " ".join(kept) or None


def _clean(text: str) -> str:
    """Control and format characters out (bidi overrides, zero-width), whitespace collapsed."""
    kept = []
    for ch in text:
        if ch.isspace():
            kept.append(" ")
        elif not unicodedata.category(ch).startswith("C"):
            kept.append(ch)
    return " ".join("".join(kept).split())


def _text(body: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = _get(body, name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _metadata_error(f"{name} must be a string")
    cleaned = _clean(value)
    if len(cleaned) > limit:
        raise _metadata_error(f"{name} is longer than {limit} characters")
    return cleaned or None


def _web_uri(body: Mapping[str, Any], name: str) -> str | None:
    value = _get(body, name)
    if value is None or value == "":  # "" is a placeholder for absent (as the MCP SDK reads it)
        return None
    if not isinstance(value, str):
        raise _metadata_error(f"{name} must be a string")
    try:
        _check_web(_parse(value, allow_fragment=True))
    except _Refused as exc:
        raise _metadata_error(f"{name} {_shown(value)} is not allowed: {exc}") from None
    return value


def _contacts(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    contacts = _string_list(value, "contacts")
    if len(contacts) > MAX_CONTACTS:
        raise _metadata_error(f"at most {MAX_CONTACTS} contacts are allowed")
    cleaned = [_clean(contact) for contact in contacts]
    if any(len(contact) > MAX_CONTACT_LENGTH for contact in cleaned):
        raise _metadata_error(f"a contact is longer than {MAX_CONTACT_LENGTH} characters")
    return tuple(contact for contact in cleaned if contact)


def validate_registration(
    body: Mapping[str, Any], *, private_schemes: frozenset[str] = DEFAULT_PRIVATE_SCHEMES
) -> ClientRegistration:
    """The RFC 7591 registration request ``body`` checked against the policy.

    Raises :class:`RegistrationError`: ``invalid_redirect_uri`` for anything wrong with
    ``redirect_uris`` (one bad URI fails the whole registration), ``invalid_client_metadata``
    for the rest. Unknown members are ignored; unknown scopes are dropped.
    """
    return ClientRegistration(
        redirect_uris=_redirect_uris(_get(body, "redirect_uris"), private_schemes),
        token_endpoint_auth_method=_auth_method(_get(body, "token_endpoint_auth_method")),
        grant_types=_grant_types(_get(body, "grant_types")),
        response_types=_response_types(_get(body, "response_types")),
        client_name=_text(body, "client_name", MAX_TEXT_LENGTH),
        client_uri=_web_uri(body, "client_uri"),
        logo_uri=_web_uri(body, "logo_uri"),
        scope=_scope(_get(body, "scope")),
        contacts=_contacts(_get(body, "contacts")),
        software_id=_text(body, "software_id", MAX_TEXT_LENGTH),
        software_version=_text(body, "software_version", MAX_TEXT_LENGTH),
    )
