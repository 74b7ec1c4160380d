"""The two eras of MCP that ``/mcp`` speaks, chosen per request by its ``MCP-Protocol-Version``
header, as the MCP SDK routes them.

* The **handshake era** (2025-03-26, 2025-06-18, 2025-11-25): ``initialize`` negotiates the
  revision, later requests name it in the header (none means 2025-03-26), results are plain.
* The **stateless era** (2026-07-28): no handshake; every request carries its own envelope in
  ``params._meta`` (protocol version, client capabilities, optionally client info) mirrored in
  the ``MCP-Protocol-Version``, ``Mcp-Method`` and ``Mcp-Name`` headers; ``server/discover``
  says what the server speaks; every result says ``resultType`` and who answered
  (``_meta`` server info); list results carry caching hints; protocol errors have their own
  HTTP statuses (``-32601`` is a 404).

A header naming a handshake revision (or none) is the handshake era whatever the body carries,
so a client that sends a 2025 header with a 2026 envelope is served as 2025. Anything else is
the stateless era, whose first check answers an unsupported version with ``-32022`` and the
list of what is supported.

An :class:`Era` is the one place a difference between the eras lives: which methods exist, how a
request's envelope is checked, the HTTP status of an error, how a result is written. The
endpoint (:mod:`breeze_mcp.mcp_endpoint`) asks the request's era and does everything else —
authentication, rate limits, the call pipeline, the audit entry — the same way for both.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import mcp_types as types
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp_types import methods as wire
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel
from starlette.datastructures import Headers

from breeze_mcp import __version__
from breeze_mcp.http_request import IndexedHeaders
from breeze_mcp.pipeline import shown

__all__ = [
    "HANDSHAKE",
    "HANDSHAKE_VERSIONS",
    "INSTRUCTIONS",
    "STATELESS",
    "STATELESS_VERSIONS",
    "SUPPORTED_VERSIONS",
    "Era",
    "Refusal",
    "era_of",
    "success_body",
]

#: Revisions reachable by the ``initialize`` handshake that this endpoint speaks, oldest first.
HANDSHAKE_VERSIONS: Final = ("2025-03-26", "2025-06-18", "2025-11-25")
#: Revisions served without a handshake, each request carrying its own envelope.
STATELESS_VERSIONS: Final = ("2026-07-28",)
#: Every revision ``/mcp`` speaks, oldest first (what ``server/discover`` and ``-32022`` list).
SUPPORTED_VERSIONS: Final = (*HANDSHAKE_VERSIONS, *STATELESS_VERSIONS)
#: Assumed when a request carries no ``MCP-Protocol-Version`` (the transport spec's default).
DEFAULT_VERSION: Final = "2025-03-26"

INVALID_REQUEST: Final = -32600
INVALID_PARAMS: Final = -32602
HEADER_MISMATCH: Final = types.HEADER_MISMATCH
UNSUPPORTED_PROTOCOL_VERSION: Final = types.UNSUPPORTED_PROTOCOL_VERSION

INSTRUCTIONS: Final = (
    "Breeze RMM tools for one MSP tenant. Every tool carries a risk tier: Tier 1 reads, "
    "Tier 2 changes alerts and notes, Tier 3 queues actions on devices (scripts, patches, "
    "isolation), Tier 4 is never executed. What you can call depends on the scopes granted."
)
SERVER_INFO: Final = types.Implementation(name="breeze-mcp", title="Breeze MCP",
                                          version=__version__)
CAPABILITIES: Final = types.ServerCapabilities(tools=types.ToolsCapability(list_changed=False))

#: Caching hints of the stateless era's cacheable results: (ttlMs, cacheScope). The tool list
#: depends on the caller's scopes, so it is private to the authorization context, and short
#: enough that a step-up shows its new tools within a minute; what the server speaks is the
#: same for everyone until the next deployment.
CACHE_HINTS: Final[Mapping[str, tuple[int, str]]] = {
    "tools/list": (60_000, "private"),
    "server/discover": (3_600_000, "public"),
}

_NEWER_FIELDS = {"result_type", "ttl_ms", "cache_scope"}  # 2026-07-28-only result fields
#: The routing headers' ASGI (lower-case) names, and the names the SDK's ladder looks up.
_ROUTING_HEADERS: Final = {
    h.lower().encode(): h for h in (MCP_PROTOCOL_VERSION_HEADER, MCP_METHOD_HEADER,
                                    MCP_NAME_HEADER)}
_SERVER_INFO_META: Final = {types.SERVER_INFO_META_KEY: SERVER_INFO.model_dump(
    by_alias=True, exclude_none=True, mode="json")}


@dataclass(frozen=True)
class Refusal:
    """A request refused before it is served: its JSON-RPC error and (handshake era) HTTP
    status; the stateless era takes the status from the error code where the revision
    names one."""

    code: int
    message: str
    status: int = 400
    data: Any = None


def success_body(id_: Any, result: Mapping[str, Any], tail: str = "") -> bytes:
    """The ``CallToolResult`` of a successful ``tools/call``, built by hand because it is the
    hot path's: the result is serialised once, and that text is both the text content and,
    verbatim, the structured content (a test checks it against ``types.CallToolResult``).
    ``tail``: the era's further result members, already JSON (``Era.call_result_tail``)."""
    text = json.dumps(result, default=str)
    return (
        '{"jsonrpc":"2.0","id":' + json.dumps(id_)
        + ',"result":{"content":[{"type":"text","text":' + json.dumps(text)
        + '}],"structuredContent":' + text + ',"isError":false' + tail + '}}'
    ).encode()


class Era(ABC):
    """What differs between the eras; see the module docstring. Two instances exist:
    :data:`HANDSHAKE` and :data:`STATELESS`."""

    #: JSON-RPC methods served in this era (anything else is -32601).
    methods: frozenset[str]
    #: Members a successful ``tools/call`` result carries besides the content (JSON text).
    call_result_tail: str = ""

    def status(self, code: int, status: int) -> int:
        """The HTTP status of an error with JSON-RPC ``code`` that the handshake era answers
        with ``status``."""
        return status

    @abstractmethod
    def refusal(self, headers: Headers, message: Mapping[str, Any], method: str
                ) -> Refusal | None:
        """Why a request (it has an id and object params) cannot be served in this era."""

    def notification_refusal(self, headers: Headers) -> Refusal | None:
        """Why a notification cannot be accepted (else it is acknowledged with 202)."""
        return None

    @abstractmethod
    def answer(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The result of a method only this era has (``initialize``, ``ping``,
        ``server/discover``), written for the wire."""

    @abstractmethod
    def result(self, method: str, result: BaseModel) -> dict[str, Any]:
        """A result model written for this era's wire."""


class _Handshake(Era):
    methods = frozenset({"initialize", "ping", "tools/list", "tools/call"})

    def refusal(self, headers: Headers, message: Mapping[str, Any], method: str
                ) -> Refusal | None:
        if method == "initialize":  # it carries the version it asks for in its params
            return None
        version = headers.get(MCP_PROTOCOL_VERSION_HEADER, DEFAULT_VERSION)
        if version not in HANDSHAKE_VERSIONS:
            return Refusal(INVALID_REQUEST, f"Unsupported MCP-Protocol-Version "
                           f"'{shown(version)}'; supported: " + ", ".join(SUPPORTED_VERSIONS))
        return None

    def answer(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        if method == "ping":
            return {}
        asked = params.get("protocolVersion")
        return self.result(method, types.InitializeResult(
            protocol_version=asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1],
            capabilities=CAPABILITIES, server_info=SERVER_INFO, instructions=INSTRUCTIONS))

    def result(self, method: str, result: BaseModel) -> dict[str, Any]:
        return result.model_dump(by_alias=True, exclude_none=True, mode="json",
                                 exclude=_NEWER_FIELDS & set(type(result).model_fields))


class _Stateless(Era):
    methods = frozenset({"server/discover", "tools/list", "tools/call"})
    call_result_tail = ',"resultType":"complete","_meta":' + json.dumps(_SERVER_INFO_META)

    def status(self, code: int, status: int) -> int:
        return ERROR_CODE_HTTP_STATUS.get(code, status)

    def _unsupported(self, version: str) -> Refusal | None:
        if version in STATELESS_VERSIONS:
            return None
        return Refusal(UNSUPPORTED_PROTOCOL_VERSION,
                       f"Unsupported MCP-Protocol-Version '{shown(version)}'; supported: "
                       + ", ".join(SUPPORTED_VERSIONS),
                       data={"supported": list(SUPPORTED_VERSIONS), "requested": version})

    def refusal(self, headers: Headers, message: Mapping[str, Any], method: str
                ) -> Refusal | None:
        if (isinstance(headers, IndexedHeaders) and not headers.repeats
                and _plainly_served(headers, message, method)):
            return None
        # The routing headers alone, read once (ASGI names are lower case).
        routing = [(_ROUTING_HEADERS[k], v.decode("latin-1")) for k, v in headers.raw
                   if k in _ROUTING_HEADERS]
        return self.full_refusal(routing, dict(routing), message)

    def full_refusal(self, routing: list[tuple[str, str]], routed: Mapping[str, str],
                     message: Mapping[str, Any]) -> Refusal | None:
        """:meth:`refusal` without its shortcut for the plain case: every rule, the SDK's
        ladder among them (a test holds that the shortcut never changes the outcome)."""
        if len(routed) < len(routing):  # one sent twice: which copy would a proxy have read?
            return Refusal(HEADER_MISMATCH, f"the {find_duplicated_routing_header(routing)} "
                           "header appears more than once")
        # The header's version first: a client that asked for one we do not speak is told
        # which we do, whatever its body looks like.
        unsupported = self._unsupported(routed.get(MCP_PROTOCOL_VERSION_HEADER, ""))
        if unsupported is not None:
            return unsupported
        verdict = classify_inbound_request(message, headers=routed,
                                           supported_modern_versions=STATELESS_VERSIONS)
        if isinstance(verdict, InboundLadderRejection):
            return Refusal(verdict.code, verdict.message, data=verdict.data)
        if not isinstance(verdict.client_capabilities, dict):
            return Refusal(INVALID_PARAMS, f"params._meta['{types.CLIENT_CAPABILITIES_META_KEY}']"
                           " must be an object (the capabilities this client has)")
        if verdict.client_info is not None and not isinstance(verdict.client_info, dict):
            return Refusal(INVALID_PARAMS, f"params._meta['{types.CLIENT_INFO_META_KEY}'] must "
                           "be an object (name, version), or left out")
        return None

    def notification_refusal(self, headers: Headers) -> Refusal | None:
        return self._unsupported(headers.get(MCP_PROTOCOL_VERSION_HEADER, ""))

    def answer(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        return self.result(method, types.DiscoverResult(
            supported_versions=list(SUPPORTED_VERSIONS), capabilities=CAPABILITIES,
            instructions=INSTRUCTIONS))

    def result(self, method: str, result: BaseModel) -> dict[str, Any]:
        hint = CACHE_HINTS.get(method)
        if hint is not None and isinstance(result, types.CacheableResult):
            result = result.model_copy(update={"ttl_ms": hint[0], "cache_scope": hint[1]})
        dumped = result.model_dump(by_alias=True, exclude_none=True, mode="json")
        # Written by the revision's own schema: what 2026-07-28 does not have is left out.
        dumped = wire.serialize_server_result(method, STATELESS_VERSIONS[-1], dumped)
        dumped.setdefault("resultType", "complete")
        dumped["_meta"] = {**dumped.get("_meta", {}), **_SERVER_INFO_META}
        return dumped


def _plainly_served(headers: Headers, message: Mapping[str, Any], method: str) -> bool:
    """Whether a request is the plain, well-formed case :meth:`_Stateless.refusal` serves,
    decided in a few lookups: an envelope of objects naming the revision, and routing headers
    (none of them repeated: the caller knows) equal, character for character, to what the body
    names. Only ever true where the full check (the SDK's ladder) serves the request too, which
    a property test holds; anything else, such as a base64-wrapped ``Mcp-Name``, takes the full
    check, which decides and words every refusal."""
    params = message.get("params")  # left out: the endpoint serves it as {}
    if type(params) is not dict:
        return False
    meta = params.get("_meta")
    if type(meta) is not dict:
        return False
    version = meta.get(types.PROTOCOL_VERSION_META_KEY)
    if (version not in STATELESS_VERSIONS
            or type(meta.get(types.CLIENT_CAPABILITIES_META_KEY)) is not dict
            or type(meta.get(types.CLIENT_INFO_META_KEY, _ABSENT)) is not dict
            or headers.get(MCP_PROTOCOL_VERSION_HEADER) != version
            or headers.get(MCP_METHOD_HEADER) != method):
        return False
    name_key = NAME_BEARING_METHODS.get(method)
    if name_key is None:
        return True
    name = params.get(name_key)
    return (type(name) is str and headers.get(MCP_NAME_HEADER) == name
            and not name.startswith(_SENTINEL_START))


_ABSENT: Final[dict[str, Any]] = {}  # client info left out: allowed
_SENTINEL_START: Final = "=?base64?"  # an Mcp-Name that the SDK would decode first


HANDSHAKE: Final[Era] = _Handshake()
STATELESS: Final[Era] = _Stateless()


def era_of(headers: Headers) -> Era:
    """The era of a request, by its ``MCP-Protocol-Version`` header alone (as the SDK routes):
    none, or a handshake revision, is the handshake era; anything else the stateless one."""
    version = headers.get(MCP_PROTOCOL_VERSION_HEADER)
    if version is None or version in HANDSHAKE_PROTOCOL_VERSIONS:
        return HANDSHAKE
    return STATELESS

