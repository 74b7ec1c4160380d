"""The hardened fetch of the documents clients publish: Client ID Metadata Documents and
their JSON Web Key Sets (draft-ietf-oauth-client-id-metadata-document-01 §4 and §6.5-6.6).

The URL comes from whoever sends a request, so the fetch trusts nothing about it:

* ``https`` only, to a named port or 443; no proxy, whatever the environment says;
* the host name is resolved once and **every** address it resolves to is checked against the
  special-use ranges (:func:`address_refusal`); the connection then goes to a checked address
  (with the certificate checked for the name), so a DNS answer that changes between the check
  and the connection cannot move it;
* redirects are not followed, and only ``200`` counts;
* the body must be JSON (``application/json`` or ``+json``), at most :data:`MAX_BYTES`:
  reading stops as soon as it is longer;
* one deadline for the whole fetch (resolution, connection, TLS, request, body) and a bounded
  number of fetches at once in the process.

A failure is :class:`FetchFailed` with a reason a client's developer can act on, and whether
the host looked down (no answer, a timeout, a 5xx) rather than answering something unusable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpcore

__all__ = [
    "MAX_BYTES",
    "DocumentFetcher",
    "FetchFailed",
    "Fetched",
    "address_refusal",
]

#: The draft's recommended limit on a metadata document (and ours on a key set).
MAX_BYTES = 5 * 1024
#: The whole fetch, from resolving the name to the last byte.
DEADLINE = 5.0
#: Fetches under way at once in one process; more wait for a place within their deadline.
MAX_CONCURRENT = 8

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[ipaddress.IPv4Network
                                                  | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(net), why) for net, why in pairs)


# RFC 6890 and the IANA special-purpose address registries: nothing a client's public
# document can live at.
_SPECIAL_V4 = _nets(
    ("0.0.0.0/8", "'this network'"), ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"), ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"), ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"), ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "AS112"), ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "6to4 relay anycast"), ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "AS112"), ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"), ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
)
_SPECIAL_V6 = _nets(
    ("::1/128", "loopback"), ("::/96", "unspecified or IPv4-compatible"),
    ("::ffff:0:0/96", "IPv4-mapped"), ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"), ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"), ("2002::/16", "6to4"), ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing"), ("fc00::/7", "unique-local"), ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"), ("ff00::/8", "multicast"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_refusal(address: IPAddress, *, loopback_allowed: bool = False) -> str | None:
    """Why a fetch must not connect to ``address``, or None when it may: the address is in a
    special-use range (loopback unless ``loopback_allowed``, private, link-local, CGNAT,
    multicast, documentation, IPv4-mapped, ...) or is not globally reachable. An address in
    the well-known NAT64 prefix is judged by the IPv4 address it carries."""
    if loopback_allowed and address.is_loopback:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64:
            return address_refusal(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
        table: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = \
            _SPECIAL_V6
    else:
        table = _SPECIAL_V4
    for net, why in table:
        if address in net:
            return why
    if not address.is_global:
        return "not globally reachable"
    return None


class FetchFailed(Exception):
    """A document could not be had. ``reason`` is safe to show the client; ``host_down`` says
    the host did not answer usably (no connection, a timeout, a 5xx), as opposed to answering
    something that is not a usable document."""

    def __init__(self, reason: str, *, host_down: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.host_down = host_down


@dataclass(frozen=True)
class Fetched:
    """A JSON object fetched with ``200``, and the response's headers (lower-case names)."""

    document: dict[str, Any]
    headers: Mapping[str, str]


class _Refused(Exception):
    """Raised inside the connection step: no address of the host may be connected to."""


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host once, refuses it unless every address passes
    :func:`address_refusal`, then connects to a checked address (the TLS layer above still
    checks the certificate for the host name)."""

    def __init__(self, loopback_hosts: frozenset[str]) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._loopback_hosts = loopback_hosts

    async def connect_tcp(
        self, host: str, port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"{host} does not resolve") from exc
        addresses: list[str] = []
        loopback_allowed = host.lower() in self._loopback_hosts
        for info in infos:
            text = str(info[4][0])
            address = ipaddress.ip_address(text.partition("%")[0])
            why = address_refusal(address, loopback_allowed=loopback_allowed)
            if why is not None:
                literal = host.strip("[]").lower() == str(address)
                raise _Refused(f"{address} is a special-use address ({why})" if literal
                               else f"{host} resolves to {address} ({why}), which is never "
                               "fetched")
            if text not in addresses:
                addresses.append(text)
        if not addresses:
            raise httpcore.ConnectError(f"{host} does not resolve")
        failure: Exception | None = None
        for address_text in addresses:
            try:
                return await self._inner.connect_tcp(address_text, port, timeout,
                                                     local_address, socket_options)
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise _Refused("not a network address")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").partition(";")[0].strip().lower()


class DocumentFetcher:
    """Fetches JSON documents from client-chosen ``https`` URLs, hardened as the module says.

    ``loopback_hosts`` (host names whose loopback addresses may be fetched) and ``ca_bundle``
    (a PEM trusted besides the system's) exist for development and tests only; the settings
    refuse both in production.
    """

    def __init__(self, *, loopback_hosts: Iterable[str] = (), ca_bundle: Path | None = None,
                 max_concurrent: int = MAX_CONCURRENT, deadline: float = DEADLINE,
                 wait: float | None = None) -> None:
        """``deadline`` bounds a whole fetch, its wait for a place among the
        ``max_concurrent`` included; ``wait`` (at most the deadline) bounds that wait alone."""
        self._ssl = ssl.create_default_context()
        if ca_bundle is not None:
            self._ssl.load_verify_locations(cafile=str(ca_bundle))
        self._backend = _CheckedBackend(frozenset(h.lower() for h in loopback_hosts))
        self._places = asyncio.Semaphore(max_concurrent)
        self._deadline = deadline
        self._wait = deadline if wait is None else min(wait, deadline)

    async def fetch_json(self, url: str) -> Fetched:
        """The JSON object at ``url``; :class:`FetchFailed` saying why not."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise FetchFailed("only https URLs are fetched")
        placed = False
        try:
            async with asyncio.timeout(self._deadline):
                async with asyncio.timeout(self._wait):
                    await self._places.acquire()
                placed = True
                return await self._get(url)
        except TimeoutError:
            if not placed:
                raise FetchFailed("too many documents are being fetched; try again",
                                  host_down=True) from None
            raise FetchFailed(f"no complete answer within {self._deadline:g} seconds",
                              host_down=True) from None
        finally:
            if placed:
                self._places.release()

    async def _get(self, url: str) -> Fetched:
        budget = {"connect": self._deadline, "read": self._deadline,
                  "write": self._deadline, "pool": self._deadline}
        async with httpcore.AsyncConnectionPool(
                ssl_context=self._ssl, network_backend=self._backend, max_connections=1,
                retries=0, http1=True, http2=False) as pool:
            try:
                async with pool.stream("GET", url, headers=[
                        (b"Accept", b"application/json"), (b"Accept-Encoding", b"identity"),
                        (b"User-Agent", b"breeze-mcp (client metadata fetch)"),
                ], extensions={"timeout": budget}) as response:
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                               for k, v in response.headers}
                    _check_status(response.status, headers)
                    if _media_type(headers) != "application/json" \
                            and not _media_type(headers).endswith("+json"):
                        raise FetchFailed(
                            f"the answer is {_media_type(headers) or 'untyped'}, "
                            "not application/json")
                    body = await _read_limited(response, headers)
            except _Refused as exc:
                raise FetchFailed(str(exc)) from None
            except ssl.SSLError as exc:
                raise FetchFailed(f"TLS failed ({exc.reason or exc})", host_down=True) \
                    from None
            except httpcore.ConnectError as exc:
                cause = exc.__cause__
                if isinstance(cause, ssl.SSLError) or "CERTIFICATE" in str(exc).upper():
                    raise FetchFailed("TLS failed: the certificate is not trusted for this "
                                      "host", host_down=True) from None
                raise FetchFailed(f"could not connect ({exc or 'refused'})",
                                  host_down=True) from None
            except httpcore.TimeoutException:
                raise FetchFailed("timed out", host_down=True) from None
            except (httpcore.ProtocolError, httpcore.NetworkError) as exc:
                raise FetchFailed(f"the connection failed ({type(exc).__name__})",
                                  host_down=True) from None
            except httpcore.UnsupportedProtocol:
                raise FetchFailed("only https URLs are fetched") from None
        return Fetched(_json_object(body), headers)


def _check_status(status: int, headers: Mapping[str, str]) -> None:
    if status == 200:
        return
    if 300 <= status < 400:
        where = headers.get("location", "")[:200]
        raise FetchFailed(f"HTTP {status}: redirects are not followed"
                          + (f" (to {where})" if where else ""))
    if status >= 500 or status == 429:
        raise FetchFailed(f"HTTP {status}", host_down=True)
    raise FetchFailed(f"HTTP {status}; only 200 is accepted")


async def _read_limited(response: httpcore.Response, headers: Mapping[str, str]) -> bytes:
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BYTES:
        raise FetchFailed(f"the document is larger than {MAX_BYTES} bytes")
    body = bytearray()
    async for chunk in cast(Any, response).aiter_stream():
        body += chunk
        if len(body) > MAX_BYTES:
            raise FetchFailed(f"the document is larger than {MAX_BYTES} bytes")
    return bytes(body)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FetchFailed("the document is not valid JSON") from None
    if not isinstance(value, dict):
        raise FetchFailed("the document is not a JSON object")
    return cast(dict[str, Any], value)
