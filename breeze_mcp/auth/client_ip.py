"""The trusted client IP, from the socket peer and a configured trusted-proxy chain.

If the socket peer is not a trusted proxy, the peer is the client, whatever the headers say.
Otherwise the one header the proxies are configured to write (``X-Forwarded-For`` or RFC 7239
``Forwarded``, never both: a client could add the other one itself) is walked from the right,
skipping addresses inside the trusted networks; the first untrusted address is the client.
The leftmost entry is whatever the client wrote and is never trusted by position. A malformed
entry stops the walk, and so does a chain longer than any real proxy path: the last good hop
is the answer. An IPv6 zone (``fe80::1%eth0``) names an interface of the proxy's host, not
part of the address, so it is dropped; what is returned always fits a PostgreSQL ``inet``.
The one resolved address feeds the audit entry and every rate limiter.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

__all__ = ["ForwardedHeader", "IPNetwork", "parse_networks", "rate_limit_key",
           "resolve_client_ip"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]

# Hops examined from the right; real chains have a handful of proxies.
MAX_HOPS = 32
# Longer than any address with brackets, port and zone: junk, refused before parsing.
_MAX_HOP_CHARS = 64

# RFC 6874 zone ids: unreserved characters, or %-encoded ones.
_ZONE = re.compile(r"[A-Za-z0-9._~%-]+")
_FORWARDED_FOR = re.compile(r'(?i)(?:^|[;,\s])for=("?)([^";,]+)\1')


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@lru_cache(maxsize=4096)  # pure; the same few peers (proxies, clients) come back all the time
def _parse_ip(value: str) -> IPAddress | None:
    value = value.strip()
    if not value or len(value) > _MAX_HOP_CHARS:
        return None
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end == -1:
            return None
        value = value[1:end]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped:
            return addr.ipv4_mapped
        if addr.scope_id is not None:
            if not _ZONE.fullmatch(addr.scope_id):
                return None
            return ipaddress.IPv6Address(addr.packed)  # the same address, without the zone
    return addr


def _trusted(addr: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(addr in net for net in networks)


def _hops(header: ForwardedHeader, values: Sequence[str]) -> list[str]:
    if header == "x-forwarded-for":
        return [part for value in values for part in value.split(",")]
    hops: list[str] = []
    for value in values:
        for element in value.split(","):
            match = _FORWARDED_FOR.search(element)
            hops.append(match.group(2) if match else "")
    return hops


def resolve_client_ip(
    peer: str | None,
    *,
    header: ForwardedHeader = "x-forwarded-for",
    values: Sequence[str] = (),
    trusted: Sequence[IPNetwork] = (),
) -> str | None:
    """The client's address as a string; None when the peer is not an IP address at all.

    ``values`` are the occurrences of ``header``, the one header the trusted proxies write.
    """
    peer_addr = _parse_ip(peer) if peer else None
    if peer_addr is None:
        return None
    if not trusted or not _trusted(peer_addr, trusted):
        return _text(peer_addr)
    client = peer_addr
    for raw in reversed(_hops(header, values)[-MAX_HOPS:]):
        hop = _parse_ip(raw)
        if hop is None:
            break  # malformed: the last good hop stands
        client = hop
        if not _trusted(hop, trusted):
            break
    return _text(client)


@lru_cache(maxsize=4096)
def _text(addr: IPAddress) -> str:
    return str(addr)


def rate_limit_key(ip: str) -> str:
    """IPv6 addresses fold to their /64 (one subscriber); IPv4 stays whole."""
    addr = _parse_ip(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr) if addr else ip
