"""The trusted client IP, from the socket peer and a configured trusted-proxy chain.

If the socket peer is not a trusted proxy, the peer is the client, whatever the headers say.
Otherwise ``X-Forwarded-For`` (or RFC 7239 ``Forwarded``) is walked from the right, skipping
addresses inside the trusted networks; the first untrusted address is the client. The
leftmost entry is whatever the client wrote and is never trusted by position. A malformed
entry stops the walk: the last good hop is the answer. The one resolved address feeds the
audit entry and every rate limiter.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from functools import lru_cache

__all__ = ["IPNetwork", "parse_networks", "rate_limit_key", "resolve_client_ip"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_FORWARDED_FOR = re.compile(r'(?i)(?:^|[;,\s])for=("?)([^";,]+)\1')


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


@lru_cache(maxsize=4096)  # pure; the same few peers (proxies, clients) come back all the time
def _parse_ip(value: str) -> IPAddress | None:
    value = value.strip()
    if not value:
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
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(addr in net for net in networks)


def _hops(x_forwarded_for: Sequence[str], forwarded: Sequence[str]) -> list[str]:
    if x_forwarded_for:
        return [part for header in x_forwarded_for for part in header.split(",")]
    hops: list[str] = []
    for header in forwarded:
        for element in header.split(","):
            match = _FORWARDED_FOR.search(element)
            hops.append(match.group(2) if match else "")
    return hops


def resolve_client_ip(
    peer: str | None,
    *,
    x_forwarded_for: Sequence[str] = (),
    forwarded: Sequence[str] = (),
    trusted: Sequence[IPNetwork] = (),
) -> str | None:
    """The client's address as a string (None only when there is no peer at all)."""
    peer_addr = _parse_ip(peer) if peer else None
    if peer_addr is None:
        return peer
    if not trusted or not _trusted(peer_addr, trusted):
        return _text(peer_addr)
    client = peer_addr
    for raw in reversed(_hops(x_forwarded_for, forwarded)):
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
