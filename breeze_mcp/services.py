"""Everything a request handler needs, built once per application from Settings."""

from __future__ import annotations

from dataclasses import dataclass

from breeze_mcp.auth.client_ip import IPNetwork, parse_networks
from breeze_mcp.auth.rate_limit import RateLimiter
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.tools.registry import Registry

__all__ = ["Services", "build_services"]


@dataclass(frozen=True)
class Services:
    settings: Settings
    db: Database
    registry: Registry
    limiter: RateLimiter
    trusted_proxies: tuple[IPNetwork, ...]


def build_services(settings: Settings, db: Database, registry: Registry | None = None) -> Services:
    from breeze_mcp.tools import default_registry

    redis_url = settings.redis_url.get_secret_value() if settings.redis_url else None
    return Services(
        settings=settings,
        db=db,
        registry=registry if registry is not None else default_registry(),
        limiter=RateLimiter(redis_url),
        trusted_proxies=parse_networks(settings.trusted_proxies),
    )
