"""Registered clients: RFC 7591 storage and RFC 6749 §2.3 client authentication.

What a registration may contain is decided by :mod:`.registration` (pure policy); this module
stores the result, forgets registrations that never completed an authorization, and
authenticates a client at the token and revocation endpoints.
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from breeze_mcp import audit
from breeze_mcp.auth.oauth.errors import InvalidClient, TemporarilyUnavailable
from breeze_mcp.auth.oauth.registration import ClientRegistration
from breeze_mcp.auth.tokens import digest, mint
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row
from breeze_mcp.db.models import oauth_clients
from breeze_mcp.db.statements import prepared

__all__ = [
    "CLIENT_ID_PREFIX",
    "CLIENT_SECRET_PREFIX",
    "DOCUMENT_CLIENT_ID_PREFIX",
    "MAX_CLIENT_ID",
    "UNUSED_CLIENT_TTL",
    "Client",
    "authenticate_client",
    "client_from_row",
    "client_row",
    "get_client",
    "plausible_client_id",
    "register_client",
]

CLIENT_ID_PREFIX = "bzi"
CLIENT_SECRET_PREFIX = "bzx"  # noqa: S105 - a prefix, not a secret
#: Registrations that never complete an authorization are forgotten after this long.
UNUSED_CLIENT_TTL = dt.timedelta(hours=24)


#: A client id of this shape names the client's metadata document (CIMD) rather than a
#: registration: registered clients get ``bzi_`` ids, which never start so.
DOCUMENT_CLIENT_ID_PREFIX = "https://"


@dataclass(frozen=True)
class Client:
    client_id: str
    token_endpoint_auth_method: str
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    client_name: str | None
    client_uri: str | None
    scope: str | None
    secret_digest: bytes | None
    #: A ``private_key_jwt`` client whose document also lists ``none``: it may also come
    #: without authenticating, as a public client.
    none_fallback: bool = False

    @property
    def display_name(self) -> str:
        return self.client_name or self.client_id

    @property
    def verified_domain(self) -> str | None:
        """For a client identified by its metadata document, the host (and port) that
        serves it: the one thing about it Breeze has verified. None for a registered client,
        whose every detail is its own claim."""
        if not self.client_id.startswith(DOCUMENT_CLIENT_ID_PREFIX):
            return None
        return urlsplit(self.client_id).netloc


def client_from_row(row: Any) -> Client:
    """A :class:`Client` from an ``oauth_clients`` row (or the lookup's columns)."""
    return Client(
        client_id=row.client_id,
        token_endpoint_auth_method=row.token_endpoint_auth_method,
        redirect_uris=tuple(row.redirect_uris),
        grant_types=tuple(row.grant_types),
        client_name=row.client_name,
        client_uri=row.client_uri,
        scope=row.scope,
        secret_digest=bytes(row.secret_digest) if row.secret_digest is not None else None,
        none_fallback=row.none_fallback,
    )


async def register_client(
    db: Database, reg: ClientRegistration, *, client_ip: str | None, request_id: str | None,
    max_pending: int,
) -> tuple[dict[str, Any], Client]:
    """Store a validated registration; returns the RFC 7591 response body and the client."""
    client_id = mint(CLIENT_ID_PREFIX)
    secret = mint(CLIENT_SECRET_PREFIX) if reg.token_endpoint_auth_method != "none" else None  # noqa: S105
    async with db.system() as conn:
        # Forget registrations that never completed an authorization, then apply the cap
        # (serialised, so concurrent registrations cannot overshoot it).
        await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x6272_6565_7a65)))
        await conn.execute(
            oauth_clients.delete().where(oauth_clients.c.expires_at < sa.func.now())
        )
        pending = (await conn.execute(
            sa.select(sa.func.count()).select_from(oauth_clients)
            .where(oauth_clients.c.expires_at.is_not(None),
                   oauth_clients.c.document_fetched_at.is_(None))
        )).scalar_one()
        if pending >= max_pending:
            raise TemporarilyUnavailable(
                "too many pending client registrations; try again later",
                headers={"Retry-After": "60"})
        row = (await conn.execute(
            oauth_clients.insert().values(
                client_id=client_id,
                secret_digest=digest(secret) if secret else None,
                token_endpoint_auth_method=reg.token_endpoint_auth_method,
                redirect_uris=list(reg.redirect_uris),
                grant_types=list(reg.grant_types),
                response_types=list(reg.response_types),
                client_name=reg.client_name,
                client_uri=reg.client_uri,
                logo_uri=reg.logo_uri,
                scope=reg.scope,
                contacts=list(reg.contacts),
                software_id=reg.software_id,
                software_version=reg.software_version,
                registered_ip=client_ip,
                expires_at=sa.func.now() + UNUSED_CLIENT_TTL,
            ).returning(oauth_clients)
        )).one()
        await conn.finish(audit.AuditEntry(
            actor_type="oauth_client", actor_id=client_id, auth_path="oauth",
            client_id=client_id, action="oauth.client_registered", decision="allowed",
            outcome="success", request_id=request_id, client_ip=client_ip,
            parameters={"client_name": reg.client_name, "redirect_uris": list(reg.redirect_uris),
                        "token_endpoint_auth_method": reg.token_endpoint_auth_method},
        ))
    body: dict[str, Any] = {
        "client_id": client_id,
        "client_id_issued_at": int(row.created_at.timestamp()),
        "redirect_uris": list(reg.redirect_uris),
        "token_endpoint_auth_method": reg.token_endpoint_auth_method,
        "grant_types": list(reg.grant_types),
        "response_types": list(reg.response_types),
    }
    if secret:
        body["client_secret"] = secret
        body["client_secret_expires_at"] = 0
    for name in ("client_name", "client_uri", "logo_uri", "scope", "software_id",
                 "software_version"):
        if (value := getattr(reg, name)) is not None:
            body[name] = value
    if reg.contacts:
        body["contacts"] = list(reg.contacts)
    return body, client_from_row(row)


#: Longest client id worth looking up (ours are short; room for a metadata document URL).
MAX_CLIENT_ID = 2048


def plausible_client_id(client_id: str) -> bool:
    """Whether ``client_id`` could name a client at all: printable ASCII of a sane length.
    Anything else (a NUL from a Basic header, junk in a path) is unknown before it reaches
    the database driver."""
    return 0 < len(client_id) <= MAX_CLIENT_ID and client_id.isascii() \
        and client_id.isprintable()


# A client with, for one identified by its metadata document, the state of the cached copy
# and of its keys, judged against the database's clock (db_now), the one every instance shares.
_CLIENT_LOOKUP = prepared(
    "SELECT client_id, token_endpoint_auth_method, redirect_uris, grant_types, client_name,"
    " client_uri, scope, secret_digest, none_fallback, document_fetched_at,"
    " document_fresh_until, document_stale_until, jwks_uri, jwks, jwks_fetched_at,"
    " jwks_fresh_until, token_endpoint_auth_signing_alg, now() AS db_now FROM oauth_clients"
    " WHERE client_id = %s AND (expires_at IS NULL OR expires_at > now())"
)


async def client_row(db: Database, client_id: str) -> Row | None:
    """The client's row as :data:`_CLIENT_LOOKUP` reads it; an unused registration past its
    expiry is unknown. One round trip, outside any transaction (the table has no tenant)."""
    if not plausible_client_id(client_id):
        return None
    rows = await db.read(_CLIENT_LOOKUP, (client_id,))
    return rows[0] if rows else None


async def get_client(db: Database, client_id: str) -> Client | None:
    """A client as stored: a registered one, or the cached copy of a metadata-document one
    however old (:class:`~breeze_mcp.auth.oauth.client_documents.ClientDocuments` decides
    when that copy needs fetching again)."""
    row = await client_row(db, client_id)
    return client_from_row(row) if row else None



def authenticate_client(
    client: Client | None, *, form_secret: str | None, basic: tuple[str, str] | None,
    form_client_id: str | None,
) -> Client:
    """RFC 6749 §2.3 client authentication; :class:`InvalidClient` on any failure."""
    if client is None:
        raise InvalidClient("unknown client_id; register again")
    if basic is not None and basic[0] != client.client_id:
        raise InvalidClient("client_id mismatch")
    if form_client_id is not None and form_client_id != client.client_id:
        raise InvalidClient("client_id mismatch")
    if client.token_endpoint_auth_method == "none" or (  # noqa: S105
            client.none_fallback and basic is None and form_secret is None):
        return client
    if client.token_endpoint_auth_method == "private_key_jwt":  # noqa: S105
        raise InvalidClient("this client authenticates with private_key_jwt: send a "
                            "client_assertion")
    presented = basic[1] if basic is not None else form_secret
    if not presented or client.secret_digest is None or not hmac.compare_digest(
        digest(presented), client.secret_digest
    ):
        raise InvalidClient("client authentication failed")
    return client

