"""Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document-01).

A client may name itself by the ``https`` URL of a JSON document that describes it, instead
of registering. This module is the one owner of such a client's lifecycle::

    fetch      fetch.DocumentFetcher        hardened: https, public addresses only, 200, JSON, 5 KB
      │
    validate   parse_document (pure)        client_id = the URL; client_name, redirect_uris;
      │                                     the registration policy for every member; no secret
    cache      the client's oauth_clients   keyed by the URL; fresh until its cache headers say
      │        row (upsert, audited)        (within bounds); usable while its host is down
    use        ClientDocuments.find_client / authenticate   at /authorize, /token, /revoke

The copy lives in the database, not in the process, so every instance shares it: a client
fetched by one is fresh for all, a token request costs one indexed read and no fetch while
the copy is fresh, and the row is what grants, codes and blocks already point at (a grant is
tied to the client id). A stale copy is fetched again on its next use: changed redirect URIs
or keys take effect then, and a removed redirect URI is refused from then on. Errors and
invalid documents are never cached; a document that came back unusable also ends the use of
the old copy while its host is down. The keys of a ``private_key_jwt`` client (its document's
``jwks``, or the set at its ``jwks_uri``, fetched the same way) are kept on the same row.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from joserfc.jwk import KeySet
from sqlalchemy.dialects.postgresql import insert

from breeze_mcp import audit
from breeze_mcp.auth.oauth.assertions import (
    ALGORITHMS,
    CLIENT_ASSERTION_TYPE,
    KeyNotFound,
    key_set,
    unverified_issuer,
    use_assertion,
    verify_client_assertion,
)
from breeze_mcp.auth.oauth.clients import (
    DOCUMENT_CLIENT_ID_PREFIX,
    UNUSED_CLIENT_TTL,
    Client,
    authenticate_client,
    client_from_row,
    client_row,
    get_client,
)
from breeze_mcp.auth.oauth.errors import InvalidClient, RegistrationError
from breeze_mcp.auth.oauth.fetch import DocumentFetcher, FetchFailed
from breeze_mcp.auth.oauth.registration import https_url_problem, validate_registration
from breeze_mcp.auth.principal import RequestContext
from breeze_mcp.auth.rate_limit import RateLimiter
from breeze_mcp.config import Settings
from breeze_mcp.db import Database
from breeze_mcp.db.engine import Row
from breeze_mcp.db.models import oauth_clients

__all__ = [
    "DEFAULT_TTL",
    "ClientDocument",
    "ClientDocuments",
    "DocumentRefused",
    "PresentedClient",
    "cache_lifetime",
    "parse_document",
]

log = logging.getLogger(__name__)

#: How long a copy stays fresh when its answer carries no cache headers (within the bounds).
DEFAULT_TTL = 3600
#: Shared secrets cannot be published: a document declaring one is refused (draft §4.1).
SHARED_SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post",
                                   "client_secret_jwt"})
_SERVED_GRANTS = ("authorization_code", "refresh_token")

T = TypeVar("T")


class DocumentRefused(Exception):
    """The document was fetched but cannot describe a client; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ClientDocument:
    """A validated metadata document, as stored."""

    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    token_endpoint_auth_method: str  # "none" or "private_key_jwt"
    none_fallback: bool
    client_uri: str | None
    logo_uri: str | None
    scope: str | None
    contacts: tuple[str, ...]
    software_id: str | None
    software_version: str | None
    jwks_uri: str | None
    jwks: dict[str, Any] | None
    signing_alg: str | None  # token_endpoint_auth_signing_alg: assertions use this one only


def _string_list(body: Mapping[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DocumentRefused(f"{name} must be a list of strings")
    return cast(list[str], value)


def parse_document(client_id: str, body: Mapping[str, Any], *,
                   private_schemes: frozenset[str]) -> ClientDocument:
    """The document fetched from ``client_id``, checked; :class:`DocumentRefused` saying why
    it cannot be used. Every member a registration may carry is held to the registration
    policy (:func:`~breeze_mcp.auth.oauth.registration.validate_registration`); on top of
    that the document must name itself (``client_id`` equal to the URL, by simple string
    comparison), have a ``client_name`` and ``redirect_uris``, and carry no shared secret.
    Grant types this server does not serve (Claude lists ``jwt-bearer``) are ignored."""
    if body.get("client_id") != client_id:
        raise DocumentRefused("its client_id is not exactly the URL it was fetched from")
    method = body.get("token_endpoint_auth_method") or "none"
    if not isinstance(method, str):
        raise DocumentRefused("token_endpoint_auth_method must be a string")
    if method in SHARED_SECRET_METHODS or "client_secret" in body \
            or "client_secret_expires_at" in body:
        raise DocumentRefused("a metadata document cannot use a shared secret; use none or "
                              "private_key_jwt")
    if method not in ("none", "private_key_jwt"):
        raise DocumentRefused(f"token_endpoint_auth_method {method[:60]!r} is not supported; "
                              "use none or private_key_jwt")
    grants = _string_list(body, "grant_types")
    served = None if grants is None else [g for g in _SERVED_GRANTS if g in grants]
    if served is not None and "authorization_code" not in served:
        raise DocumentRefused("grant_types must include authorization_code")
    responses = _string_list(body, "response_types")
    if responses is not None and "code" not in responses:
        raise DocumentRefused("response_types must include code")
    try:
        reg = validate_registration(
            {**body, "token_endpoint_auth_method": "none", "grant_types": served,
             "response_types": None}, private_schemes=private_schemes)
    except RegistrationError as exc:
        raise DocumentRefused(exc.description) from None
    if reg.client_name is None:
        raise DocumentRefused("client_name is required")

    jwks_uri, jwks = body.get("jwks_uri"), body.get("jwks")
    signing_alg = body.get("token_endpoint_auth_signing_alg")
    if method == "private_key_jwt":
        if signing_alg is not None and signing_alg not in ALGORITHMS:
            raise DocumentRefused("token_endpoint_auth_signing_alg must be one of "
                                  + ", ".join(ALGORITHMS) + " (an asymmetric signature)")
        if (jwks_uri is None) == (jwks is None):
            raise DocumentRefused("private_key_jwt needs exactly one of jwks and jwks_uri")
        if jwks_uri is not None:
            problem = https_url_problem(jwks_uri) if isinstance(jwks_uri, str) \
                else "it is not a string"
            if problem:
                raise DocumentRefused(f"jwks_uri cannot be fetched: {problem}")
        else:
            try:
                key_set(jwks)
            except ValueError as exc:
                raise DocumentRefused(f"jwks: {exc}") from None
    else:
        jwks_uri = jwks = signing_alg = None  # a public client never signs an assertion
    supported = body.get("token_endpoint_auth_methods_supported")
    return ClientDocument(
        client_id=client_id, client_name=reg.client_name, redirect_uris=reg.redirect_uris,
        grant_types=reg.grant_types, response_types=reg.response_types,
        token_endpoint_auth_method=method,
        none_fallback=method == "private_key_jwt" and isinstance(supported, list)
        and "none" in supported,
        client_uri=reg.client_uri, logo_uri=reg.logo_uri, scope=reg.scope,
        contacts=reg.contacts, software_id=reg.software_id,
        software_version=reg.software_version, jwks_uri=jwks_uri,
        jwks=cast(dict[str, Any], jwks) if jwks is not None else None,
        signing_alg=cast(str | None, signing_alg),
    )


def _directives(value: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in value.split(","):
        name, _, argument = part.strip().partition("=")
        if name:
            found.setdefault(name.strip().lower(), argument.strip().strip('"'))
    return found


def _seconds(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def cache_lifetime(headers: Mapping[str, str], *, low: int, high: int,
                   default: int = DEFAULT_TTL) -> int:
    """How long a fetched copy stays fresh, in seconds, by its answer's headers (RFC 9111
    §4.2.1, as a shared cache: ``s-maxage``, else ``max-age``, less ``Age``; else ``Expires``
    less ``Date``; ``no-store`` and ``no-cache`` mean now; none of them, ``default``), held
    within ``low`` and ``high``."""
    control = _directives(headers.get("cache-control", ""))
    age = _seconds(headers.get("age")) or 0
    lifetime: int
    if "no-store" in control or "no-cache" in control:
        lifetime = 0
    elif (given := _seconds(control.get("s-maxage"))) is not None \
            or (given := _seconds(control.get("max-age"))) is not None:
        lifetime = given - age
    elif "expires" in headers:
        try:
            expires = email.utils.parsedate_to_datetime(headers["expires"])
            date = email.utils.parsedate_to_datetime(headers["date"]) if "date" in headers \
                else dt.datetime.now(dt.UTC)
            lifetime = int((expires - date).total_seconds())
        except (TypeError, ValueError):  # an invalid Expires means already expired
            lifetime = 0
    else:
        lifetime = default
    return max(low, min(high, lifetime))


@dataclass(frozen=True)
class PresentedClient:
    """How a token or revocation request identifies and authenticates its client."""

    client_id: str | None  # the form's
    basic: tuple[str, str] | None
    secret: str | None  # the form's client_secret
    assertion_type: str | None
    assertion: str | None


def _unusable(what: str, url: str, reason: str) -> InvalidClient:
    return InvalidClient(f"the client's {what} at {url} could not be used: {reason}")


class ClientDocuments:
    """Clients by id, for the authorization server's endpoints: a registered client from
    its row; a metadata-document client from its cached copy while fresh, else fetched,
    validated and stored again (one fetch per client at a time in this process). Every
    failure to resolve a document is :class:`InvalidClient` saying why."""

    def __init__(self, db: Database, settings: Settings, limiter: RateLimiter,
                 fetcher: DocumentFetcher | None = None) -> None:
        self._db = db
        self._settings = settings
        self._limiter = limiter
        self._fetcher = fetcher or DocumentFetcher(
            loopback_hosts=settings.cimd_allow_loopback_hosts,
            ca_bundle=settings.cimd_ca_bundle)
        self._private_schemes = frozenset(settings.oauth_private_schemes)
        self._running: dict[str, asyncio.Future[Any]] = {}

    # -- use ------------------------------------------------------------------------------

    async def find_client(self, client_id: str, request: RequestContext) -> Client | None:
        """The client named ``client_id``, or None when there is none (a metadata document
        that cannot be had is :class:`InvalidClient` instead). ``request``'s source pays for
        the fetch of a document never seen before."""
        found = await self._resolve(client_id, request)
        return found[0] if found else None

    async def authenticate(self, presented: PresentedClient, *, endpoint: str,
                           request: RequestContext) -> Client:
        """RFC 6749 §2.3 client authentication at ``endpoint`` (the URL called): a secret,
        a ``private_key_jwt`` assertion (RFC 7523 §2.2), or none for a public client.
        ``request`` as for :meth:`find_client`."""
        if presented.assertion is None and presented.assertion_type is None:
            client_id = presented.basic[0] if presented.basic else presented.client_id
            if not client_id:
                raise InvalidClient("client authentication is required")
            return authenticate_client(await self.find_client(client_id, request),
                                       basic=presented.basic, form_secret=presented.secret,
                                       form_client_id=presented.client_id)
        if presented.assertion_type != CLIENT_ASSERTION_TYPE:
            raise InvalidClient(f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}")
        if not presented.assertion:
            raise InvalidClient("client_assertion is required")
        if presented.basic is not None or presented.secret is not None:
            raise InvalidClient("use one client authentication method, not several")
        client_id = presented.client_id or unverified_issuer(presented.assertion)
        found = await self._resolve(client_id, request) if client_id else None
        if found is None or client_id is None:
            raise InvalidClient("unknown client_id")
        client, row = found
        if client.token_endpoint_auth_method != "private_key_jwt" or row is None:  # noqa: S105
            raise InvalidClient("this client does not authenticate with private_key_jwt")
        issuer = self._settings.issuer
        audiences = {issuer, f"{issuer}/token", endpoint}
        keys, just_fetched = await self._keys(client_id, row)
        now = dt.datetime.now(dt.UTC)
        algorithms = ((row.token_endpoint_auth_signing_alg,)
                      if row.token_endpoint_auth_signing_alg else ALGORITHMS)
        try:
            verified = verify_client_assertion(presented.assertion, keys, client_id=client_id,
                                               audiences=audiences, now=now,
                                               algorithms=algorithms)
        except KeyNotFound:
            # A key the copy does not have: the client may have rotated its keys. Fetch
            # them again, unless they were fetched within the shortest cache time.
            if just_fetched or row.jwks_uri is None or (
                    row.jwks_fetched_at is not None and row.db_now - row.jwks_fetched_at
                    < dt.timedelta(seconds=self._settings.cimd_cache_min_ttl)):
                raise
            keys = await self._once(f"keys {client_id}",
                                    lambda: self._fetch_keys(client_id, row))
            verified = verify_client_assertion(presented.assertion, keys, client_id=client_id,
                                               audiences=audiences, now=now,
                                               algorithms=algorithms)
        await use_assertion(self._db, client_id, verified)
        return client

    async def _resolve(self, client_id: str, request: RequestContext
                       ) -> tuple[Client, Row | None] | None:
        """The client, with its row when it is a metadata-document one."""
        if not client_id.startswith(DOCUMENT_CLIENT_ID_PREFIX):
            client = await get_client(self._db, client_id)
            return None if client is None else (client, None)
        problem = https_url_problem(client_id, client_id=True)
        if problem:
            raise InvalidClient(f"the client_id is not a usable metadata document URL: "
                                f"{problem}")
        row = await client_row(self._db, client_id)
        if row is not None and row.document_fresh_until > row.db_now:
            return client_from_row(row), row
        if row is None:
            # Anyone can name a new URL before signing in: each source fetches so many.
            decision = await self._limiter.hit(f"cimd-new:{request.rate_key}",
                                               self._settings.cimd_new_client_rate_limit)
            if not decision.allowed:
                raise InvalidClient(
                    "this address has named too many new client metadata documents; try "
                    f"again in {max(decision.reset_after, 1)} seconds")
        return await self._once(client_id, lambda: self._fetch_document(client_id, row))

    async def _once(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        """``work``, unless the same key's is under way: then its result (one fetch, however
        many requests want it). A waiter that gives up does not cancel it for the others."""
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(work())
            self._running[key] = running
            running.add_done_callback(lambda done: self._done(key, done))
        return cast(T, await asyncio.shield(running))

    def _done(self, key: str, done: asyncio.Future[Any]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved: nobody may be left waiting for it

    # -- fetch, validate, cache --------------------------------------------------------------

    async def _fetch_document(self, client_id: str,
                              cached: Row | None) -> tuple[Client, Row]:
        try:
            fetched = await self._fetcher.fetch_json(client_id)
            document = parse_document(client_id, fetched.document,
                                      private_schemes=self._private_schemes)
        except FetchFailed as exc:
            if exc.host_down and cached is not None and cached.document_stale_until \
                    > cached.db_now:
                log.warning("client metadata document %s: %s; using the copy fetched at %s",
                            client_id, exc.reason, cached.document_fetched_at.isoformat())
                return client_from_row(cached), cached
            if not exc.host_down and cached is not None:
                await self._end_stale_use(client_id)
            raise _unusable("metadata document", client_id, exc.reason) from None
        except DocumentRefused as exc:
            if cached is not None:
                await self._end_stale_use(client_id)
            raise _unusable("metadata document", client_id, exc.reason) from None
        settings = self._settings
        fresh = cache_lifetime(fetched.headers, low=settings.cimd_cache_min_ttl,
                               high=settings.cimd_cache_max_ttl)
        row = await self._store(document, fresh, cached)
        return client_from_row(row), row

    async def _store(self, document: ClientDocument, fresh: int, cached: Row | None) -> Row:
        """Insert or refresh the client's row from ``document``, fresh for ``fresh`` seconds;
        audited when the client is new or what it may do changed."""
        now = sa.func.now()
        values: dict[str, Any] = {
            "client_id": document.client_id, "secret_digest": None,
            "token_endpoint_auth_method": document.token_endpoint_auth_method,
            "none_fallback": document.none_fallback,
            "redirect_uris": list(document.redirect_uris),
            "grant_types": list(document.grant_types),
            "response_types": list(document.response_types),
            "client_name": document.client_name, "client_uri": document.client_uri,
            "logo_uri": document.logo_uri, "scope": document.scope,
            "contacts": list(document.contacts), "software_id": document.software_id,
            "software_version": document.software_version,
            "jwks_uri": document.jwks_uri, "jwks": document.jwks,
            "token_endpoint_auth_signing_alg": document.signing_alg,
            "jwks_fetched_at": None, "jwks_fresh_until": None,
            "document_fetched_at": now,
            "document_fresh_until": now + dt.timedelta(seconds=fresh),
            "document_stale_until": now + dt.timedelta(
                seconds=fresh + self._settings.cimd_stale_ttl),
            "expires_at": now + UNUSED_CLIENT_TTL,
        }
        statement = insert(oauth_clients).values(**values)
        new, table = statement.excluded, oauth_clients.c
        # Keys fetched from a jwks_uri the document still names are kept until they are
        # stale; an authorized client never expires.
        same_uri = new.jwks_uri.is_not(None) & (table.jwks_uri == new.jwks_uri)
        updates: dict[str, Any] = {name: new[name] for name in values if name != "client_id"}
        updates.update(
            jwks=sa.case((same_uri, table.jwks), else_=new.jwks),
            jwks_fetched_at=sa.case((same_uri, table.jwks_fetched_at), else_=None),
            jwks_fresh_until=sa.case((same_uri, table.jwks_fresh_until), else_=None),
            expires_at=sa.case((table.expires_at.is_(None), None), else_=new.expires_at),
        )
        upsert = statement.on_conflict_do_update(
            index_elements=[table.client_id], set_=updates,
        ).returning(*oauth_clients.c, sa.func.now().label("db_now"))
        async with self._db.system() as tx:
            if cached is None:  # forget pending clients nobody authorized (as /register does)
                await tx.execute(oauth_clients.delete().where(
                    table.expires_at < sa.func.now(), table.document_fetched_at.is_not(None)))
            row = (await tx.execute(upsert)).one()
            await tx.finish(_change_entry(document, cached))
        return row

    async def _end_stale_use(self, client_id: str) -> None:
        """The host answered, with nothing usable: the old copy is not used again, even if
        the host goes down later (only an unreachable host earns the stale copy's use)."""
        async with self._db.system() as tx:
            await tx.execute(
                oauth_clients.update().where(oauth_clients.c.client_id == client_id,
                                             oauth_clients.c.document_fetched_at.is_not(None))
                .values(document_fresh_until=sa.func.least(
                            oauth_clients.c.document_fresh_until, sa.func.now()),
                        document_stale_until=sa.func.least(
                            oauth_clients.c.document_stale_until, sa.func.now())))
            await tx.finish(None)

    # -- keys -----------------------------------------------------------------------------

    async def _keys(self, client_id: str, row: Row) -> tuple[KeySet, bool]:
        """The client's signing keys, and whether they were fetched just now."""
        if row.jwks_uri is None:
            if row.jwks is None:
                raise InvalidClient("the client's metadata document publishes no keys")
            return self._key_set(row.jwks, "jwks", client_id), False
        if row.jwks is not None and row.jwks_fresh_until is not None \
                and row.jwks_fresh_until > row.db_now:
            return self._key_set(row.jwks, "key set", row.jwks_uri), False
        keys = await self._once(f"keys {client_id}", lambda: self._fetch_keys(client_id, row))
        return keys, True

    @staticmethod
    def _key_set(value: object, what: str, url: str) -> KeySet:
        try:
            return key_set(value)
        except ValueError as exc:
            raise _unusable(what, url, str(exc)) from None

    async def _fetch_keys(self, client_id: str, row: Row) -> KeySet:
        uri: str = row.jwks_uri
        try:
            fetched = await self._fetcher.fetch_json(uri)
            keys = key_set(fetched.document)
        except FetchFailed as exc:
            stale_until = None if row.jwks_fresh_until is None else row.jwks_fresh_until \
                + dt.timedelta(seconds=self._settings.cimd_stale_ttl)
            if exc.host_down and row.jwks is not None and stale_until is not None \
                    and stale_until > row.db_now:
                log.warning("key set %s: %s; using the copy fetched at %s", uri, exc.reason,
                            row.jwks_fetched_at.isoformat())
                return self._key_set(row.jwks, "key set", uri)
            raise _unusable("key set", uri, exc.reason) from None
        except ValueError as exc:
            raise _unusable("key set", uri, str(exc)) from None
        settings = self._settings
        fresh = cache_lifetime(fetched.headers, low=settings.cimd_cache_min_ttl,
                               high=settings.cimd_cache_max_ttl)
        async with self._db.system() as tx:
            await tx.execute(
                oauth_clients.update().where(oauth_clients.c.client_id == client_id,
                                             oauth_clients.c.jwks_uri == uri)
                .values(jwks=fetched.document, jwks_fetched_at=sa.func.now(),
                        jwks_fresh_until=sa.func.now() + dt.timedelta(seconds=fresh)))
            await tx.finish(None)
        return keys


def _change_entry(document: ClientDocument, cached: Row | None) -> audit.AuditEntry | None:
    """The audit entry of storing ``document``: a new client, or one whose name, redirect
    URIs, authentication or key source changed; None when nothing that matters changed."""
    now: dict[str, Any] = {"client_name": document.client_name,
                           "redirect_uris": list(document.redirect_uris),
                           # Not "token_endpoint_...": the audit writer masks any key
                           # naming a token, and these are no secret.
                           "client_authentication": document.token_endpoint_auth_method,
                           "signing_alg": document.signing_alg,
                           "jwks_uri": document.jwks_uri, "jwks_kids": _kids(document.jwks)}
    if cached is None:
        action, parameters = "oauth.client_document_added", now
    else:
        before = {"client_name": cached.client_name,
                  "redirect_uris": list(cached.redirect_uris),
                  "client_authentication": cached.token_endpoint_auth_method,
                  "signing_alg": cached.token_endpoint_auth_signing_alg,
                  "jwks_uri": cached.jwks_uri,
                  "jwks_kids": _kids(cached.jwks) if cached.jwks_uri is None else None}
        changed: dict[str, Any] = {k: {"from": before[k], "to": v} for k, v in now.items()
                                   if before[k] != v}
        if not changed:
            return None
        action, parameters = "oauth.client_document_changed", changed
    return audit.AuditEntry(
        actor_type="oauth_client", actor_id=document.client_id, auth_path="oauth",
        client_id=document.client_id, action=action, decision="allowed", outcome="success",
        parameters=parameters)


def _kids(jwks: object) -> list[str] | None:
    """The key ids of a document's own key set (thumbprints where it gives none)."""
    if jwks is None:
        return None
    try:
        return [str(key.kid) for key in key_set(jwks).keys]
    except ValueError:
        return None
