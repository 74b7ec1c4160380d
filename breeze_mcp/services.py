"""Everything a request handler needs, built once per application from Settings."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from breeze_mcp.auth.client_ip import IPNetwork, parse_networks
from breeze_mcp.auth.oauth.client_documents import ClientDocuments
from breeze_mcp.auth.rate_limit import RateLimiter
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.mail import Mailer
from breeze_mcp.tools.registry import Registry

__all__ = ["Services", "allowed_hosts", "build_services"]


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    registry: Registry
    limiter: RateLimiter
    trusted_proxies: tuple[IPNetwork, ...]
    mailer: Mailer
    #: OAuth clients by id, registered or identified by their metadata document.
    client_documents: ClientDocuments
    #: ``Host`` values ``/mcp`` accepts, and browser ``Origin`` values (lower-case), both
    #: derived from the settings once (see :func:`allowed_hosts`).
    allowed_hosts: frozenset[str] = frozenset()
    allowed_origins: frozenset[str] = frozenset()


_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


def allowed_hosts(public_url: str) -> frozenset[str]:
    """The public URL's host with its port, and without it when the port is the scheme's
    default; for a loopback public URL, any loopback spelling of the same port."""
    public = urlsplit(public_url)
    default_port = 443 if public.scheme == "https" else 80
    port = public.port or default_port
    names = {public.hostname or ""}
    if names & _LOOPBACK_NAMES:  # local use: any loopback spelling of the same port
        names |= _LOOPBACK_NAMES
    expected = {f"{name}:{port}" for name in names}
    if port == default_port:
        expected |= names
    return frozenset(expected)


def build_services(settings: Settings, db: Database, registry: Registry | None = None) -> Services:
    from breeze_mcp.tools import default_registry

    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    limiter = RateLimiter(redis_url)
    return Services(
        settings=settings,
        db=db,
        registry=registry if registry is not None else default_registry(),
        limiter=limiter,
        trusted_proxies=parse_networks(settings.trusted_proxies),
        mailer=Mailer(settings, settings.state_dir / "outbox"),
        client_documents=ClientDocuments(db, settings, limiter),
        allowed_hosts=allowed_hosts(settings.public_url),
        allowed_origins=frozenset(
            o.rstrip("/").lower() for o in (settings.public_url, *settings.allowed_origins)),
    )
