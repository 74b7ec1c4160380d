"""Minting and hashing of the secrets we issue.

Every secret is high-entropy (256 bits), carries a short typed prefix so a leaked one is
recognisable (``bzk_`` API key, ``bza_`` access token, ``bzr_`` refresh token, ``bzc_``
authorization code, ``bzs_`` session, ``bzv_`` verification link), and is stored only as its
SHA-256 digest. Tenant-bound secrets embed the tenant id (not secret) after the prefix, so the
lookup can run inside that tenant's row-level-security transaction.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid

__all__ = ["digest", "mint", "mint_tenant_bound", "tenant_of"]

_TENANT_BOUND = re.compile(r"^(bz[a-z])_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def mint(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def mint_tenant_bound(prefix: str, tenant_id: uuid.UUID) -> str:
    """``<prefix>_<tenant hex>_<43 url-safe chars of randomness>``."""
    return f"{prefix}_{tenant_id.hex}_{secrets.token_urlsafe(32)}"


def tenant_of(secret: str, prefix: str) -> uuid.UUID | None:
    """The tenant a well-formed tenant-bound secret names, else None."""
    match = _TENANT_BOUND.match(secret)
    if match is None or match.group(1) != prefix:
        return None
    return uuid.UUID(hex=match.group(2))
