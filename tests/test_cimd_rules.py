"""The pure rules behind Client ID Metadata Documents, as tables of cases: which addresses
the fetch refuses, which URLs may name a document, what a document may say, how long a copy
stays fresh, what a client assertion must be, and which settings production refuses."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey

from breeze_mcp.auth.oauth.assertions import (
    KeyNotFound,
    key_set,
    unverified_issuer,
    verify_client_assertion,
)
from breeze_mcp.auth.oauth.client_documents import (
    DocumentRefused,
    cache_lifetime,
    parse_document,
)
from breeze_mcp.auth.oauth.errors import InvalidClient
from breeze_mcp.auth.oauth.fetch import address_refusal
from breeze_mcp.auth.oauth.registration import DEFAULT_PRIVATE_SCHEMES, https_url_problem
from breeze_mcp.config import ConfigError, load_settings
from tests.cimd_support import ClientKey, chatgpt_document, claude_code_document, make_ca

# The fetch's address check ------------------------------------------------------------------

REFUSED_ADDRESSES = {
    "127.0.0.1": "loopback", "127.8.9.10": "loopback", "::1": "loopback",
    "10.1.2.3": "private", "172.16.0.1": "private", "192.168.1.1": "private",
    "169.254.169.254": "link-local", "fe80::1": "link-local",
    "100.64.0.1": "CGNAT", "0.0.0.0": "'this network'", "224.0.0.1": "multicast",
    "ff02::1": "multicast", "255.255.255.255": "reserved", "240.0.0.1": "reserved",
    "192.0.2.1": "documentation", "198.51.100.1": "documentation",
    "203.0.113.9": "documentation", "2001:db8::1": "documentation",
    "198.18.0.1": "benchmarking", "192.0.0.8": "IETF", "fc00::1": "unique-local",
    "fd12:3456::1": "unique-local", "::ffff:8.8.8.8": "IPv4-mapped",
    "::ffff:127.0.0.1": "IPv4-mapped", "::": "unspecified", "2002:a00:1::": "6to4",
    "2001::1": "IETF", "64:ff9b::a00:1": "private",  # NAT64 of 10.0.0.1
    "64:ff9b:1::1": "NAT64", "fec0::1": "site-local", "100::1": "discard",
}
PUBLIC_ADDRESSES = ["8.8.8.8", "1.1.1.1", "160.79.104.10", "2606:4700::1111",
                    "64:ff9b::808:808"]  # NAT64 of 8.8.8.8


@pytest.mark.req("CIMD-FETCH-HARDENED")
@pytest.mark.parametrize("address", sorted(REFUSED_ADDRESSES))
def test_special_use_addresses_are_refused(address: str) -> None:
    why = address_refusal(ipaddress.ip_address(address))
    assert why is not None and REFUSED_ADDRESSES[address] in why, why


@pytest.mark.req("CIMD-FETCH-HARDENED")
@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_public_addresses_are_fetched(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.req("CIMD-FETCH-HARDENED")
def test_the_development_allowance_opens_loopback_only() -> None:
    for address in ("127.0.0.1", "::1"):
        assert address_refusal(ipaddress.ip_address(address), loopback_allowed=True) is None
    for address in ("10.0.0.1", "169.254.169.254", "::ffff:127.0.0.1"):
        assert address_refusal(ipaddress.ip_address(address), loopback_allowed=True)


# Which URLs may name a document -------------------------------------------------------------

CLIENT_ID_URLS = {
    "https://claude.ai/oauth/claude-code-client-metadata": None,
    "https://chatgpt.com/oauth/tU1UVEq8rRTK/client.json": None,
    "https://client.example:8443/meta?v=1": None,
    "https://client.example/": None,
    "http://client.example/meta": "https URL",
    "HTTPS://client.example/meta": "https URL",
    "https://client.example": "needs a path",
    "https://client.example/meta#top": "fragments",
    "https://user:pw@client.example/meta": "userinfo",
    "https://client.example/a/./meta": ". or ..",
    "https://client.example/a/../meta": ". or ..",
    "https://client.example/a/%2E%2e/meta": ". or ..",
    "https://client.example/me ta": "whitespace",
    "https://client.example\\@evil.example/meta": "not allowed",
    "https://*.example/meta": "wildcards",
    "https:///meta": "missing host",
}


@pytest.mark.req("CIMD-FETCH-HARDENED")
@pytest.mark.parametrize("url", sorted(CLIENT_ID_URLS))
def test_which_urls_may_name_a_metadata_document(url: str) -> None:
    problem = https_url_problem(url, client_id=True)
    expected = CLIENT_ID_URLS[url]
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem, problem


# What a document may say --------------------------------------------------------------------

URL = "https://client.example/oauth/metadata.json"


def parsed(body: dict[str, Any]) -> Any:
    return parse_document(URL, body, private_schemes=DEFAULT_PRIVATE_SCHEMES)


@pytest.mark.req("CIMD-DOCUMENT-RULES")
def test_the_real_clients_documents_are_accepted() -> None:
    claude_code = parsed(claude_code_document(URL))
    assert claude_code.client_name == "Claude Code"
    assert claude_code.grant_types == ("authorization_code", "refresh_token")  # jwt-bearer
    assert claude_code.token_endpoint_auth_method == "none"

    chatgpt = parsed(chatgpt_document(URL, "https://chatgpt.com/oauth/jwks.json",
                                      none_fallback=True))
    assert chatgpt.token_endpoint_auth_method == "private_key_jwt"
    assert chatgpt.none_fallback and chatgpt.jwks_uri == "https://chatgpt.com/oauth/jwks.json"
    assert chatgpt.signing_alg == "RS256"  # token_endpoint_auth_signing_alg, kept
    assert parsed({**chatgpt_document(URL, "https://k.example/jwks"),
                   "token_endpoint_auth_signing_alg": None}
                  ).signing_alg is None  # any asymmetric algorithm then

    claude = parsed({"client_id": URL, "client_name": "Claude",
                     "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
                     "grant_types": ["authorization_code", "refresh_token",
                                     "urn:ietf:params:oauth:grant-type:jwt-bearer"],
                     "token_endpoint_auth_method": "none", "scope": "claudeai"})
    assert claude.scope is None  # unknown scopes dropped, as at registration

    vscode = parsed({"client_id": URL, "client_name": "Visual Studio Code",
                     "redirect_uris": ["http://127.0.0.1:33418/", "https://vscode.dev/redirect"]})
    assert vscode.grant_types == ("authorization_code",)  # RFC 7591's default
    assert vscode.token_endpoint_auth_method == "none"

    inline = parsed({**chatgpt_document(URL, "x"), "jwks_uri": None,
                     "jwks": ClientKey().jwks()})
    assert inline.jwks is not None and inline.jwks_uri is None


GOOD = claude_code_document(URL)
REFUSED_DOCUMENTS: dict[str, tuple[dict[str, Any], str]] = {
    "no client_id": ({k: v for k, v in GOOD.items() if k != "client_id"}, "client_id"),
    "client_id with a slash more": ({**GOOD, "client_id": URL + "/"}, "client_id"),
    "client_id case differs": ({**GOOD, "client_id": URL.replace("client", "Client")},
                               "client_id"),
    "no client_name": ({**GOOD, "client_name": None}, "client_name is required"),
    "blank client_name": ({**GOOD, "client_name": " \u200b "}, "client_name is required"),
    "no redirect_uris": ({**GOOD, "redirect_uris": []}, "redirect_uris"),
    "http redirect": ({**GOOD, "redirect_uris": ["http://evil.example/cb"]}, "plain http"),
    "client_secret_basic": ({**GOOD, "token_endpoint_auth_method": "client_secret_basic"},
                            "shared secret"),
    "client_secret_jwt": ({**GOOD, "token_endpoint_auth_method": "client_secret_jwt"},
                          "shared secret"),
    "a secret": ({**GOOD, "client_secret": "x"}, "shared secret"),
    "tls_client_auth": ({**GOOD, "token_endpoint_auth_method": "tls_client_auth"},
                        "not supported"),
    "only jwt-bearer": ({**GOOD, "grant_types": ["urn:ietf:params:oauth:grant-type:jwt-bearer"]},
                        "authorization_code"),
    "token response only": ({**GOOD, "response_types": ["token"]}, "code"),
    "private_key_jwt without keys": ({**GOOD, "token_endpoint_auth_method": "private_key_jwt"},
                                     "exactly one of jwks and jwks_uri"),
    "both jwks and jwks_uri": ({**chatgpt_document(URL, "https://k.example/jwks"),
                               "jwks": ClientKey().jwks()}, "exactly one"),
    "http jwks_uri": (chatgpt_document(URL, "http://k.example/jwks"), "https URL"),
    "private jwks": ({**chatgpt_document(URL, "x"), "jwks_uri": None,
                      "jwks": {"keys": [ClientKey().key.as_dict(private=True)]}}, "private"),
    "HMAC signing alg": ({**chatgpt_document(URL, "https://k.example/jwks"),
                          "token_endpoint_auth_signing_alg": "HS256"},
                         "token_endpoint_auth_signing_alg"),
    "signing alg none": ({**chatgpt_document(URL, "https://k.example/jwks"),
                          "token_endpoint_auth_signing_alg": "none"},
                         "token_endpoint_auth_signing_alg"),
    "signing alg not a string": ({**chatgpt_document(URL, "https://k.example/jwks"),
                                  "token_endpoint_auth_signing_alg": ["RS256"]},
                                 "token_endpoint_auth_signing_alg"),
    "symmetric jwks": ({**chatgpt_document(URL, "x"), "jwks_uri": None,
                        "jwks": {"keys": [OctKey.generate_key(256).as_dict()]}}, "symmetric"),
}


@pytest.mark.req("CIMD-DOCUMENT-RULES")
@pytest.mark.parametrize("case", sorted(REFUSED_DOCUMENTS))
def test_documents_that_cannot_describe_a_client_are_refused(case: str) -> None:
    body, reason = REFUSED_DOCUMENTS[case]
    with pytest.raises(DocumentRefused) as refused:
        parsed(body)
    assert reason in refused.value.reason


# How long a copy stays fresh ----------------------------------------------------------------

LIFETIMES: list[tuple[dict[str, str], int]] = [
    ({"cache-control": "max-age=600"}, 600),
    ({"cache-control": "public, max-age=600", "age": "100"}, 500),
    ({"cache-control": "max-age=600, s-maxage=1200"}, 1200),
    ({"cache-control": "max-age=10"}, 60),  # the shortest bound
    ({"cache-control": "max-age=9999999"}, 86400),  # the longest
    ({"cache-control": "no-store"}, 60),
    ({"cache-control": "no-cache, max-age=600"}, 60),
    ({"cache-control": "max-age=banana"}, 3600),
    ({"expires": "Thu, 01 Jan 2026 01:00:00 GMT", "date": "Thu, 01 Jan 2026 00:00:00 GMT"},
     3600),
    ({"expires": "Thu, 01 Jan 2026 00:10:00 GMT", "date": "Thu, 01 Jan 2026 00:00:00 GMT"},
     600),
    ({"expires": "0", "date": "Thu, 01 Jan 2026 00:00:00 GMT"}, 60),  # invalid: expired
    ({}, 3600),  # no cache headers: an hour
]


@pytest.mark.req("CIMD-CACHE")
@pytest.mark.parametrize(("headers", "seconds"), LIFETIMES)
def test_a_copy_is_fresh_as_its_cache_headers_say_within_bounds(headers: dict[str, str],
                                                                 seconds: int) -> None:
    assert cache_lifetime(headers, low=60, high=86400) == seconds


# What a client assertion must be ------------------------------------------------------------

CLIENT = "https://chatgpt.example/oauth/client.json"
TOKEN = "https://mcp.example.com/token"
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def signed(key: ClientKey, *, header: dict[str, Any] | None = None, **claims: Any) -> str:
    stamp = int(NOW.timestamp())
    body = {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN, "exp": stamp + 60, "iat": stamp,
            "jti": "j-1", **claims}
    body = {k: v for k, v in body.items() if v is not None}
    head = {"alg": "RS256", "kid": key.kid, **(header or {})}
    return jwt.encode(head, body, key.key, algorithms=[head["alg"]])


def verify(assertion: str, jwks: dict[str, Any]) -> Any:
    return verify_client_assertion(assertion, key_set(jwks), client_id=CLIENT,
                                   audiences={TOKEN, "https://mcp.example.com"}, now=NOW)


@pytest.mark.req("CIMD-PRIVATE-KEY-JWT")
def test_a_good_assertion_is_verified() -> None:
    key = ClientKey()
    verified = verify(signed(key), key.jwks())
    assert verified.jti == "j-1"
    assert verified.expires_at > NOW + dt.timedelta(seconds=60)  # kept past exp (leeway)
    assert verify(signed(key, aud=["https://mcp.example.com"]), key.jwks()).jti == "j-1"
    assert unverified_issuer(signed(key)) == CLIENT
    # Without a kid, each key of the set is tried.
    assert verify(_without_kid(key), ClientKey().jwks(key)).jti == "j-1"


def _without_kid(key: ClientKey) -> str:
    stamp = int(NOW.timestamp())
    return jwt.encode({"alg": "RS256"}, {"iss": CLIENT, "sub": CLIENT, "aud": TOKEN,
                                         "exp": stamp + 60, "jti": "j-1"}, key.key)


BAD_ASSERTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "other iss": ({"iss": "https://evil.example/c"}, "iss and sub"),
    "other sub": ({"sub": "https://evil.example/c"}, "iss and sub"),
    "other aud": ({"aud": "https://evil.example/token"}, "aud"),
    "no aud": ({"aud": None}, "aud"),
    "expired": ({"exp": int(NOW.timestamp()) - 120}, "expired"),
    "no exp": ({"exp": None}, "exp must be a number"),
    "exp too far": ({"exp": int(NOW.timestamp()) + 2 * 3600}, "more than an hour"),
    "nbf ahead": ({"nbf": int(NOW.timestamp()) + 600}, "nbf is in the future"),
    "iat ahead": ({"iat": int(NOW.timestamp()) + 600}, "iat is in the future"),
    "no jti": ({"jti": None}, "jti"),
    "empty jti": ({"jti": ""}, "jti"),
    "long jti": ({"jti": "j" * 257}, "jti"),
}


@pytest.mark.req("CIMD-PRIVATE-KEY-JWT")
@pytest.mark.parametrize("case", sorted(BAD_ASSERTIONS))
def test_assertions_with_wrong_claims_are_refused(case: str) -> None:
    key = ClientKey()
    claims, reason = BAD_ASSERTIONS[case]
    with pytest.raises(InvalidClient) as refused:
        verify(signed(key, **claims), key.jwks())
    assert reason in refused.value.description


@pytest.mark.req("CIMD-PRIVATE-KEY-JWT")
def test_an_assertion_is_signed_with_the_documents_algorithm_only() -> None:
    key = ClientKey()
    pss = signed(key, header={"alg": "PS256"})  # the same RSA key, another algorithm
    assert verify(pss, key.jwks()).jti == "j-1"  # the document names none: any asymmetric
    with pytest.raises(InvalidClient, match="must be signed with RS256, not 'PS256'"):
        verify_client_assertion(pss, key_set(key.jwks()), client_id=CLIENT,
                                audiences={TOKEN}, now=NOW, algorithms=("RS256",))
    verify_client_assertion(signed(key), key_set(key.jwks()), client_id=CLIENT,
                            audiences={TOKEN}, now=NOW, algorithms=("RS256",))


@pytest.mark.req("CIMD-PRIVATE-KEY-JWT")
def test_assertions_not_signed_by_the_clients_keys_are_refused() -> None:
    key, other = ClientKey(), ClientKey()
    with pytest.raises(KeyNotFound):  # a kid the set lacks: maybe rotated, fetch again
        verify(signed(other), key.jwks())
    with pytest.raises(InvalidClient, match="bad_signature"):
        verify(signed(ClientKey(key.kid)), key.jwks())  # same kid, another key
    # An HMAC and an unsigned token prove nothing, whatever they claim.
    hmac = jwt.encode({"alg": "HS256", "kid": key.kid}, {"iss": CLIENT},
                      OctKey.generate_key(256), algorithms=["HS256"])
    with pytest.raises(InvalidClient):
        verify(hmac, key.jwks())
    _, payload, _ = signed(key).split(".")
    with pytest.raises(InvalidClient):
        verify(f"{_b64({'alg': 'none', 'kid': key.kid})}.{payload}.", key.jwks())
    with pytest.raises(InvalidClient, match="compact JWS"):
        verify("not-a-jwt", key.jwks())
    ec = ECKey.generate_key("P-256", parameters={"kid": key.kid})
    with pytest.raises(InvalidClient):  # an ES256 assertion against the RSA key of its kid
        verify(jwt.encode({"alg": "ES256", "kid": key.kid}, {"iss": CLIENT}, ec), key.jwks())


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.mark.req("CIMD-PRIVATE-KEY-JWT")
@pytest.mark.parametrize("value", [None, [], {"keys": []}, {"keys": "x"}, {"keys": [1]},
                                   {"keys": [{"kty": "RSA"}]}])
def test_malformed_key_sets_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        key_set(value)


# Development-only settings ------------------------------------------------------------------


@pytest.mark.req("CIMD-DEV-SETTINGS")
def test_production_refuses_the_development_only_settings(tmp_path: Path) -> None:
    bundle = make_ca(tmp_path).bundle
    production = {"mode": "production", "state_dir": tmp_path,
                  "database_url": "postgresql://u:p@db/breeze", "session_key": "s" * 40,
                  "mfa_encryption_key": "A" * 43 + "=", "billing_webhook_secret": "w" * 32}
    load_settings(**production)  # fine without them
    for name, value in (("cimd_allow_loopback_hosts", "localhost"),
                        ("cimd_ca_bundle", str(bundle))):
        with pytest.raises(ConfigError, match=f"BREEZE_{name.upper()} is for development"):
            load_settings(**production, **{name: value})
    dev = load_settings(state_dir=tmp_path, cimd_allow_loopback_hosts=" LocalHost , ",
                        cimd_ca_bundle=str(bundle))
    assert dev.cimd_allow_loopback_hosts == ["localhost"]
    with pytest.raises(ConfigError, match=r"BREEZE_CIMD_CA_BUNDLE: .* is not a file"):
        load_settings(state_dir=tmp_path, cimd_ca_bundle=str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    with pytest.raises(ConfigError, match="not a PEM file of certificates"):
        load_settings(state_dir=tmp_path, cimd_ca_bundle=str(tmp_path / "junk.pem"))
    with pytest.raises(ConfigError, match="MIN_TTL must not exceed"):
        load_settings(state_dir=tmp_path, cimd_cache_min_ttl=3600, cimd_cache_max_ttl=60)
