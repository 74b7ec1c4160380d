"""``private_key_jwt`` client authentication: RFC 7523 §2.2 and §3 client assertions.

A client whose metadata document declares ``private_key_jwt`` proves itself at ``/token`` and
``/revoke`` with a JWT signed by one of the keys its document publishes (``jwks`` or
``jwks_uri``). :func:`verify_client_assertion` checks it (pure): an asymmetric signature by a
key of the set, ``iss`` = ``sub`` = the client id, ``aud`` naming this authorization server,
``exp`` ahead (and not too far), ``nbf`` and ``iat`` not ahead, a ``jti``.
:func:`use_assertion` then makes it single use: the database remembers every ``jti`` until
its assertion expires, so a replay is refused on whichever instance it lands.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, cast

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from breeze_mcp.auth.oauth.errors import InvalidClient
from breeze_mcp.db import Database
from breeze_mcp.db.statements import prepared

__all__ = [
    "ALGORITHMS",
    "CLIENT_ASSERTION_TYPE",
    "KeyNotFound",
    "VerifiedAssertion",
    "key_set",
    "unverified_issuer",
    "use_assertion",
    "verify_client_assertion",
]

#: RFC 7523 §2.2: the only ``client_assertion_type``.
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Asymmetric signatures only: an HMAC "signed" with a public key, or ``none``, proves nothing.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
              "ES512", "EdDSA")
MAX_ASSERTION_BYTES = 8 * 1024
#: How far ahead an assertion's ``exp`` may be: its ``jti`` is remembered until then.
MAX_LIFETIME = dt.timedelta(hours=1)
#: Clock difference tolerated between the client and us.
LEEWAY = dt.timedelta(seconds=60)
MAX_JTI = 256
_PUBLIC_KEY_TYPES = (RSAKey, ECKey, OKPKey)


class KeyNotFound(InvalidClient):
    """The assertion names a key (``kid``) the client's key set does not have: its keys may
    have changed since they were fetched."""


@dataclass(frozen=True)
class VerifiedAssertion:
    jti: str
    expires_at: dt.datetime


def key_set(value: object) -> KeySet:
    """A JWK Set (RFC 7517 §5) of public signing keys; ValueError saying what is wrong."""
    if not isinstance(value, Mapping) or not isinstance(value.get("keys"), list):
        raise ValueError("a JWK Set is an object with a keys list")
    keys = cast(list[Any], value["keys"])
    if not keys or len(keys) > 20:
        raise ValueError("a JWK Set needs 1 to 20 keys")
    for key in keys:
        if not isinstance(key, Mapping):
            raise ValueError("every key is an object")
        if "d" in key or key.get("kty") == "oct":
            raise ValueError("the key set holds private or symmetric key material")
    try:
        imported = KeySet.import_key_set(cast(Any, {"keys": keys}))
    except (JoseError, ValueError, TypeError) as exc:
        raise ValueError(f"a key cannot be read ({type(exc).__name__})") from None
    if not all(isinstance(key, _PUBLIC_KEY_TYPES) for key in imported.keys):
        raise ValueError("only RSA, EC and OKP public keys are accepted")
    return imported


def _segments(assertion: str) -> list[str]:
    if len(assertion) > MAX_ASSERTION_BYTES or not assertion.isascii():
        raise InvalidClient("the client_assertion is not a compact JWS")
    parts = assertion.split(".")
    if len(parts) != 3:
        raise InvalidClient("the client_assertion is not a compact JWS")
    return parts


def _unverified(segment: str) -> dict[str, Any]:
    """A JWS header or payload segment as JSON, read before any verification ({} if it is
    not a JSON object)."""
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return cast(dict[str, Any], value) if isinstance(value, dict) else {}


def unverified_issuer(assertion: str) -> str | None:
    """The assertion's ``iss``, read before verification: only to know which client's keys
    to verify it with (RFC 7523 §3: the client may leave ``client_id`` out)."""
    issuer = _unverified(_segments(assertion)[1]).get("iss")
    return issuer if isinstance(issuer, str) else None


def _number(claims: Mapping[str, Any], name: str, *, required: bool = False) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidClient(f"the client assertion's {name} must be a number")
    return float(value)


def verify_client_assertion(assertion: str, keys: KeySet, *, client_id: str,
                            audiences: Collection[str], now: dt.datetime,
                            algorithms: Collection[str] = ALGORITHMS) -> VerifiedAssertion:
    """The assertion checked against ``keys`` and the claims RFC 7523 §3 requires;
    :class:`InvalidClient` (:class:`KeyNotFound` for an unknown ``kid``) saying what failed.
    ``algorithms``: those the client may sign with (its document's
    ``token_endpoint_auth_signing_alg``, when it names one)."""
    header = _unverified(_segments(assertion)[0])
    alg = header.get("alg")
    if alg not in algorithms:
        raise InvalidClient("the client assertion must be signed with "
                            + " or ".join(sorted(algorithms)) + f", not {str(alg)[:40]!r}")
    # With a kid, the set finds the key; without one, each key is tried (RFC 7523 does not
    # require a kid).
    candidates: list[Any] = [keys] if "kid" in header or len(keys.keys) == 1 \
        else list(keys.keys)
    failure: InvalidClient | None = None
    for candidate in candidates:
        try:
            token = jwt.decode(assertion, candidate, algorithms=list(algorithms))
            break
        except JoseError as exc:
            if exc.error == "invalid_key_id":
                failure = KeyNotFound("the client assertion is signed with a key the "
                                      "client's key set does not have")
            else:
                failure = InvalidClient(f"the client assertion is not valid ({exc.error})")
        except (ValueError, TypeError):  # a header or key that does not fit the algorithm
            failure = InvalidClient("the client assertion is not valid")
    else:
        assert failure is not None
        raise failure
    claims = token.claims
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise InvalidClient("the client assertion's iss and sub must both be the client_id")
    aud = claims.get("aud")
    named = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in audiences for a in named):
        raise InvalidClient("the client assertion's aud must name this authorization server "
                            f"({' or '.join(sorted(audiences))})")
    stamp = now.timestamp()
    exp = _number(claims, "exp", required=True)
    assert exp is not None
    if exp <= stamp - LEEWAY.total_seconds():
        raise InvalidClient("the client assertion has expired")
    if exp > stamp + (MAX_LIFETIME + LEEWAY).total_seconds():
        raise InvalidClient("the client assertion's exp is more than an hour ahead")
    for name in ("nbf", "iat"):
        moment = _number(claims, name)
        if moment is not None and moment > stamp + LEEWAY.total_seconds():
            raise InvalidClient(f"the client assertion's {name} is in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI:
        raise InvalidClient("the client assertion needs a jti (at most 256 characters)")
    return VerifiedAssertion(jti, dt.datetime.fromtimestamp(exp, dt.UTC) + LEEWAY)


# Remember the jti until its assertion expires; a row whose assertion has expired may be
# taken again. A row comes back only when this assertion is the first use.
_USE_JTI = prepared(
    "INSERT INTO oauth_client_assertions (client_id, jti_digest, expires_at)"
    " VALUES ($1, $2, $3) ON CONFLICT (client_id, jti_digest) DO UPDATE"
    " SET expires_at = excluded.expires_at"
    " WHERE oauth_client_assertions.expires_at < now() RETURNING 1 AS first"
)
_FORGET_EXPIRED = prepared(
    "DELETE FROM oauth_client_assertions WHERE client_id = $1 AND expires_at < now()"
)


async def use_assertion(db: Database, client_id: str, verified: VerifiedAssertion) -> None:
    """Record the assertion's ``jti``; :class:`InvalidClient` when it was used already.
    The client's expired ``jti`` rows go in the same transaction."""
    key = hashlib.sha256(verified.jti.encode()).digest()
    async with db.system() as tx:
        first = await tx.finish(None, (_USE_JTI, (client_id, key, verified.expires_at)),
                                then=[(_FORGET_EXPIRED, (client_id,))])
    if not first:
        raise InvalidClient("the client assertion was already used (its jti is single use)")
