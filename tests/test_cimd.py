"""Client ID Metadata Documents at the authorization server, end to end (issue 13, items 3
and 5): real documents served over https by a client's own server (a test CA), a real Breeze
server, a real database.

Clients shaped like Claude Code's (a public client with loopback redirects) and ChatGPT's
(``private_key_jwt`` with a ``jwks_uri``) complete the flow, call tools, refresh and are
revoked; a document is fetched once while it is fresh, again when it is stale, and used
while its host is down; what a document may not be is refused as ``invalid_client`` (an
error page in the browser), never a 5xx.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from breeze_mcp.app import create_app
from breeze_mcp.auth.oauth.fetch import DocumentFetcher, FetchFailed
from breeze_mcp.db.engine import sqlalchemy_url
from tests.cimd_support import (
    CHATGPT_REDIRECT,
    JWT_BEARER,
    ClientCA,
    ClientKey,
    DocumentHost,
    Served,
    chatgpt_document,
    claude_code_document,
    make_ca,
)
from tests.oauth_support import (
    HumanAgent,
    OAuthWorld,
    authorize_url,
    code_from,
    exchange,
    mcp_call,
    module_world,
    oauth_error,
    pkce_pair,
    refresh,
    register,
)
from tests.support import LiveServer, ProvisionedDatabase

LOOPBACK_CALLBACK = "http://127.0.0.1:53117/callback"  # Claude Code's, on its own port


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ClientCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def host(ca: ClientCA) -> Iterator[DocumentHost]:
    with DocumentHost(ca) as served:
        yield served


def cimd_settings(ca: ClientCA, **overrides: Any) -> dict[str, Any]:
    # Every test here names new documents from one address: no per-source limit on them
    # but where a test sets one.
    return {"cimd_allow_loopback_hosts": "localhost", "cimd_ca_bundle": str(ca.bundle),
            "cimd_cache_min_ttl": 0, "cimd_new_client_rate_limit": "100000/minute",
            **overrides}


@pytest.fixture(scope="module")
def world(test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory,
          ca: ClientCA) -> Iterator[OAuthWorld]:
    yield from module_world(test_db, tmp_path_factory, **cimd_settings(ca))


# Helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def human(world: OAuthWorld) -> Iterator[HumanAgent]:
    """A technician in a browser, signed in once for the module (sign-in is rate limited)."""
    agent = HumanAgent(world, world.tech_email)
    yield agent
    agent.close()


def consent_page(human: HumanAgent, client_id: str, redirect_uri: str,
                 **params: str | None) -> str:
    """The consent page the person sees for this client."""
    _, challenge = pkce_pair()
    r = human.http.get(authorize_url(human.world, client_id, challenge,
                                     redirect_uri=redirect_uri, **params))
    if 'name="password"' in r.text:
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                                 r.text))
        r = human.http.post("/login", data={**{k: html.unescape(v) for k, v in fields.items()},
                                            "email": human.email, "password": human.password})
        r = human.http.get(r.headers["location"])
    assert r.status_code == 200 and "scope_choice" in r.text, r.text
    return r.text


def authorized_code(human: HumanAgent, client_id: str, redirect_uri: str,
                    **params: str | None) -> tuple[str, str]:
    """The person approves the client; returns (code, verifier)."""
    verifier, challenge = pkce_pair()
    r = human.authorize(authorize_url(human.world, client_id, challenge,
                                      redirect_uri=redirect_uri, **params))
    return code_from(r), verifier


def assertion_fields(key: ClientKey, client_id: str, audience: str) -> dict[str, str]:
    return {"client_assertion_type": JWT_BEARER,
            "client_assertion": key.assertion(client_id, audience)}


def client_entries(world: OAuthWorld, client_id: str) -> list[tuple[str, Any]]:
    """The audit entries about the client itself (no tenant's: read past row-level security
    as the superuser), oldest first: (action, parameters)."""
    url = make_url(sqlalchemy_url(world.test_db.admin_url)).set(database=world.test_db.name)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [(r.action, r.parameters) for r in conn.execute(sa.text(
                "SELECT action, parameters FROM audit_log WHERE client_id = :c"
                " AND tenant_id IS NULL ORDER BY id"), {"c": client_id})]
    finally:
        engine.dispose()


def revoke(world: OAuthWorld, client_id: str, token: str, **extra: str) -> httpx.Response:
    return httpx.post(f"{world.url}/revoke", timeout=30,
                      data={"token": token, "client_id": client_id, **extra})


def chatgpt_client(host: DocumentHost, *, none_fallback: bool = False,
                   max_age: int = 3600) -> tuple[str, str, ClientKey]:
    """A ChatGPT-shaped client published on ``host``: (client_id, jwks path, its key)."""
    key = ClientKey()
    jwks_path = host.fresh_path("jwks")
    jwks_uri = host.publish(jwks_path, key.jwks(), max_age=max_age)
    path = host.fresh_path("chatgpt")
    client_id = host.url(path)
    host.publish(path, chatgpt_document(client_id, jwks_uri, none_fallback=none_fallback),
                 max_age=max_age)
    return client_id, jwks_path, key


# Discovery ----------------------------------------------------------------------------------


@pytest.mark.req("CIMD-METADATA")
def test_metadata_advertises_metadata_documents_and_keeps_none(world: OAuthWorld) -> None:
    meta = httpx.get(f"{world.url}/.well-known/oauth-authorization-server", timeout=30).json()
    assert meta["client_id_metadata_document_supported"] is True
    methods = meta["token_endpoint_auth_methods_supported"]
    assert "none" in methods and "private_key_jwt" in methods
    assert "RS256" in meta["token_endpoint_auth_signing_alg_values_supported"]
    assert "HS256" not in meta["token_endpoint_auth_signing_alg_values_supported"]
    assert meta["registration_endpoint"] == f"{world.url}/register"  # DCR stays


# Claude Code: a public client with loopback redirects -----------------------------------------


@pytest.mark.req("CIMD-FLOW", "CIMD-REDIRECTS")
def test_claude_code_document_client_connects_refreshes_and_is_revoked(
    world: OAuthWorld, host: DocumentHost, human: HumanAgent,
) -> None:
    path = host.fresh_path("claude-code")
    client_id = host.publish(path, claude_code_document(host.url(path)))
    code, verifier = authorized_code(human, client_id, LOOPBACK_CALLBACK)
    r = exchange(world, client_id, code, verifier, redirect_uri=LOOPBACK_CALLBACK)
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert "refresh_token" in tokens  # refresh_token listed; jwt-bearer ignored, not refused
    assert mcp_call(world, tokens["access_token"], "tools/list").status_code == 200

    r = refresh(world, client_id, tokens["refresh_token"])
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert mcp_call(world, rotated["access_token"], "tools/list").status_code == 200

    assert revoke(world, client_id, rotated["refresh_token"]).status_code == 200
    assert mcp_call(world, rotated["access_token"], "tools/list").status_code == 401
    oauth_error(refresh(world, client_id, rotated["refresh_token"]), 400, "invalid_grant")
    grant = world.owner_sql("SELECT client_id, revoked_at FROM oauth_grants"
                            " WHERE client_id = :c", c=client_id)
    assert len(grant) == 1 and grant[0].revoked_at is not None  # the grant names the URL


@pytest.mark.req("CIMD-REDIRECTS")
def test_redirect_uris_match_the_document_exactly_loopback_on_any_port(
    world: OAuthWorld, host: DocumentHost, human: HumanAgent,
) -> None:
    path = host.fresh_path("claude-code")
    client_id = host.publish(path, claude_code_document(host.url(path)))
    for refused in ("http://127.0.0.1:53117/callback/", "http://localhost:1/other",
                    "https://127.0.0.1/callback", "http://evil.example/callback"):
        _, challenge = pkce_pair()
        r = human.open_authorize(authorize_url(world, client_id, challenge,
                                               redirect_uri=refused))
        assert r.status_code == 400 and "Invalid redirect" in r.text, refused
        assert "location" not in r.headers
    for accepted in ("http://127.0.0.1:1/callback", "http://localhost:65000/callback",
                     "http://127.0.0.1/callback"):
        assert "scope_choice" in consent_page(human, client_id, accepted), accepted


# ChatGPT: private_key_jwt with a jwks_uri ------------------------------------------------------


@pytest.mark.req("CIMD-FLOW", "CIMD-PRIVATE-KEY-JWT")
def test_chatgpt_document_client_authenticates_with_private_key_jwt(
    world: OAuthWorld, host: DocumentHost, human: HumanAgent,
) -> None:
    client_id, _, key = chatgpt_client(host)
    token_endpoint = f"{world.url}/token"
    code, verifier = authorized_code(human, client_id, CHATGPT_REDIRECT,
                                     resource=world.mcp_url)
    # Without an assertion (and no "none" in its document) the client is not authenticated.
    oauth_error(exchange(world, client_id, code, verifier, redirect_uri=CHATGPT_REDIRECT),
                401, "invalid_client")
    first = key.assertion(client_id, token_endpoint)
    r = exchange(world, client_id, code, verifier, redirect_uri=CHATGPT_REDIRECT,
                 resource=world.mcp_url, client_assertion_type=JWT_BEARER,
                 client_assertion=first)
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert mcp_call(world, tokens["access_token"], "tools/list").status_code == 200

    # The same assertion again: single use.
    body = oauth_error(refresh(world, client_id, tokens["refresh_token"],
                               client_assertion_type=JWT_BEARER, client_assertion=first),
                       401, "invalid_client")
    assert "already used" in body["error_description"]
    # The issuer as audience does as well as the token endpoint; client_id may be left out.
    r = httpx.post(token_endpoint, timeout=30, data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_assertion_type": JWT_BEARER,
        "client_assertion": key.assertion(client_id, world.url)})
    assert r.status_code == 200, r.text
    rotated = r.json()

    # Revocation authenticates the same way.
    oauth_error(revoke(world, client_id, rotated["refresh_token"]), 401, "invalid_client")
    r = revoke(world, client_id, rotated["refresh_token"],
               **assertion_fields(key, client_id, f"{world.url}/revoke"))
    assert r.status_code == 200, r.text
    assert mcp_call(world, rotated["access_token"], "tools/list").status_code == 401


@pytest.mark.req("CIMD-PRIVATE-KEY-JWT")
@pytest.mark.parametrize("case", ["wrong-audience", "other-issuer", "expired", "far-future",
                                  "no-jti", "other-key", "client-secret-too", "bad-type",
                                  "other-algorithm"])
def test_bad_client_assertions_are_invalid_client(world: OAuthWorld, host: DocumentHost,
                                                  case: str) -> None:
    client_id, _, key = chatgpt_client(host)
    token_endpoint = f"{world.url}/token"
    fields: dict[str, str] = {"client_assertion_type": JWT_BEARER}
    if case == "wrong-audience":
        fields["client_assertion"] = key.assertion(client_id, "https://elsewhere.example/token")
    elif case == "other-issuer":
        fields["client_assertion"] = key.assertion(client_id, token_endpoint,
                                                   iss="https://elsewhere.example/client")
    elif case == "expired":
        fields["client_assertion"] = key.assertion(client_id, token_endpoint, lifetime=-300)
    elif case == "far-future":
        fields["client_assertion"] = key.assertion(client_id, token_endpoint,
                                                   lifetime=30 * 86400)
    elif case == "no-jti":
        fields["client_assertion"] = key.assertion(client_id, token_endpoint, jti=None)
    elif case == "other-key":
        fields["client_assertion"] = ClientKey(key.kid).assertion(client_id, token_endpoint)
    elif case == "client-secret-too":
        fields.update(client_assertion=key.assertion(client_id, token_endpoint),
                      client_secret="bzx_guess")
    elif case == "other-algorithm":  # the document says RS256; PS256 by the same key
        fields["client_assertion"] = key.assertion(client_id, token_endpoint,
                                                   header={"alg": "PS256"})
    else:
        fields.update(client_assertion_type="urn:example:other",
                      client_assertion=key.assertion(client_id, token_endpoint))
    r = refresh(world, client_id, "bzr_00000000000000000000000000000000_unknown", **fields)
    oauth_error(r, 401, "invalid_client")
    if case == "other-algorithm":
        assert "must be signed with RS256" in r.json()["error_description"]


@pytest.mark.req("CIMD-PRIVATE-KEY-JWT")
def test_a_document_that_also_lists_none_may_come_without_an_assertion(
    world: OAuthWorld, host: DocumentHost, human: HumanAgent,
) -> None:
    client_id, _, key = chatgpt_client(host, none_fallback=True)
    code, verifier = authorized_code(human, client_id, CHATGPT_REDIRECT)
    r = exchange(world, client_id, code, verifier, redirect_uri=CHATGPT_REDIRECT)
    assert r.status_code == 200, r.text
    r = refresh(world, client_id, r.json()["refresh_token"],
                **assertion_fields(key, client_id, f"{world.url}/token"))
    assert r.status_code == 200, r.text  # and an assertion still works


@pytest.mark.req("CIMD-PRIVATE-KEY-JWT")
def test_an_assertion_is_single_use_across_instances(world: OAuthWorld,
                                                     host: DocumentHost, human: HumanAgent) -> None:
    client_id, _, key = chatgpt_client(host)
    code, verifier = authorized_code(human, client_id, CHATGPT_REDIRECT)
    r = exchange(world, client_id, code, verifier, redirect_uri=CHATGPT_REDIRECT,
                 **assertion_fields(key, client_id, f"{world.url}/token"))
    refresh_token = r.json()["refresh_token"]
    assertion = key.assertion(client_id, f"{world.url}/token")
    with LiveServer(create_app(world.settings, world.test_db.runtime_url)) as other:
        r = httpx.post(f"{other.url}/token", timeout=30, data={
            "grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": client_id, "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion})
        assert r.status_code == 200, r.text
    body = oauth_error(refresh(world, client_id, r.json()["refresh_token"],
                               client_assertion_type=JWT_BEARER, client_assertion=assertion),
                       401, "invalid_client")
    assert "already used" in body["error_description"]


# The cache ----------------------------------------------------------------------------------


@pytest.mark.req("CIMD-CACHE")
def test_a_fresh_document_costs_no_fetch(world: OAuthWorld, host: DocumentHost,
                                         human: HumanAgent) -> None:
    """Consent, code exchange and three refreshes of a private_key_jwt client: its document
    and its key set are each fetched once."""
    client_id, jwks_path, key = chatgpt_client(host, max_age=3600)
    path = urllib.parse.urlsplit(client_id).path
    code, verifier = authorized_code(human, client_id, CHATGPT_REDIRECT)
    token = f"{world.url}/token"
    r = exchange(world, client_id, code, verifier, redirect_uri=CHATGPT_REDIRECT,
                 **assertion_fields(key, client_id, token))
    assert r.status_code == 200, r.text
    refresh_token = r.json()["refresh_token"]
    for _ in range(3):
        r = refresh(world, client_id, refresh_token, **assertion_fields(key, client_id, token))
        assert r.status_code == 200, r.text
        refresh_token = r.json()["refresh_token"]
    assert host.hits[path] == 1
    assert host.hits[jwks_path] == 1


@pytest.mark.req("CIMD-PRIVATE-KEY-JWT", "CIMD-CACHE")
def test_a_changed_signing_algorithm_takes_effect_at_the_next_fetch_and_is_audited(
        world: OAuthWorld, host: DocumentHost) -> None:
    key = ClientKey()
    jwks_uri = host.publish(host.fresh_path("jwks"), key.jwks(), max_age=0)
    path = host.fresh_path("chatgpt")
    client_id = host.url(path)
    document = chatgpt_document(client_id, jwks_uri)  # RS256
    host.publish(path, document, max_age=0)
    token_endpoint = f"{world.url}/token"

    def authenticated(alg: str) -> bool:
        r = refresh(world, client_id, "bzr_00000000000000000000000000000000_unknown",
                    client_assertion_type=JWT_BEARER,
                    client_assertion=key.assertion(client_id, token_endpoint,
                                                   header={"alg": alg}))
        assert r.json()["error"] in ("invalid_grant", "invalid_client"), r.text
        return bool(r.json()["error"] == "invalid_grant")  # past client authentication

    assert authenticated("RS256") and not authenticated("PS256")
    host.publish(path, {**document, "token_endpoint_auth_signing_alg": "PS256"}, max_age=0)
    assert authenticated("PS256") and not authenticated("RS256")
    changes = [p for a, p in client_entries(world, client_id)
               if a == "oauth.client_document_changed"]
    assert changes == [{"signing_alg": {"from": "RS256", "to": "PS256"}}]
    added = next(p for a, p in client_entries(world, client_id)
                 if a == "oauth.client_document_added")
    assert (added["client_authentication"], added["signing_alg"]) == ("private_key_jwt", "RS256")


@pytest.mark.req("CIMD-CACHE", "CIMD-REDIRECTS")
def test_a_changed_document_takes_effect_at_the_next_fetch(
    world: OAuthWorld, host: DocumentHost, human: HumanAgent,
) -> None:
    """Served with ``max-age=0`` (and the shortest cache time 0 here), every use fetches it
    again: a removed redirect URI is refused from then on, also for a code issued to it."""
    path = host.fresh_path("claude-code")
    client_id = host.url(path)
    document = claude_code_document(client_id)
    host.publish(path, document, max_age=0)
    code, verifier = authorized_code(human, client_id, LOOPBACK_CALLBACK)
    before = host.hits[path]

    host.publish(path, {**document, "redirect_uris": ["http://localhost/callback"]}, max_age=0)
    body = oauth_error(exchange(world, client_id, code, verifier,
                                redirect_uri=LOOPBACK_CALLBACK), 400, "invalid_grant")
    assert "no longer registered" in body["error_description"]
    assert host.hits[path] == before + 1
    _, challenge = pkce_pair()
    r = httpx.get(authorize_url(world, client_id, challenge, redirect_uri=LOOPBACK_CALLBACK),
                  timeout=30)
    assert r.status_code == 400 and "Invalid redirect" in r.text
    assert [a for a, _ in client_entries(world, client_id)] == [
        "oauth.client_document_added", "oauth.client_document_changed"]
    changed = client_entries(world, client_id)[1][1]
    assert changed == {"redirect_uris": {"from": document["redirect_uris"],
                                         "to": ["http://localhost/callback"]}}


@pytest.mark.req("CIMD-CACHE", "CIMD-PRIVATE-KEY-JWT")
def test_rotated_keys_are_fetched_again_for_an_unknown_key(
    world: OAuthWorld, host: DocumentHost, human: HumanAgent,
) -> None:
    client_id, jwks_path, key = chatgpt_client(host, max_age=3600)
    token = f"{world.url}/token"
    code, verifier = authorized_code(human, client_id, CHATGPT_REDIRECT)
    r = exchange(world, client_id, code, verifier, redirect_uri=CHATGPT_REDIRECT,
                 **assertion_fields(key, client_id, token))
    refresh_token = r.json()["refresh_token"]
    assert host.hits[jwks_path] == 1

    new_key = ClientKey()
    host.publish(jwks_path, new_key.jwks(), max_age=3600)  # the old key is withdrawn
    r = refresh(world, client_id, refresh_token, **assertion_fields(new_key, client_id, token))
    assert r.status_code == 200, r.text
    assert host.hits[jwks_path] == 2  # a key it did not have: fetched again, at once
    oauth_error(refresh(world, client_id, r.json()["refresh_token"],
                        **assertion_fields(key, client_id, token)), 401, "invalid_client")


@pytest.mark.req("CIMD-CACHE")
def test_a_stale_copy_serves_while_the_host_is_down_but_errors_are_never_cached(
    world: OAuthWorld, ca: ClientCA, human: HumanAgent) -> None:
    with DocumentHost(ca) as down_later:
        path = down_later.fresh_path("claude-code")
        client_id = down_later.url(path)
        down_later.publish(path, claude_code_document(client_id), max_age=0)
        code, verifier = authorized_code(human, client_id, LOOPBACK_CALLBACK)
    # The host is gone: the copy (fresh for 0 s) is used while it may be (24 h by default).
    r = exchange(world, client_id, code, verifier, redirect_uri=LOOPBACK_CALLBACK)
    assert r.status_code == 200, r.text

    with DocumentHost(ca) as flaky:
        path = flaky.fresh_path("claude-code")
        client_id = flaky.url(path)
        flaky.publish(path, claude_code_document(client_id), max_age=0)
        code, verifier = authorized_code(human, client_id, LOOPBACK_CALLBACK)
        flaky.served[path] = Served(b"gone", status=404)
        before = flaky.hits[path]
        for _ in range(2):  # the refusal is not cached: each request fetches again
            body = oauth_error(exchange(world, client_id, code, verifier,
                                        redirect_uri=LOOPBACK_CALLBACK), 401, "invalid_client")
            assert "HTTP 404" in body["error_description"]
        assert flaky.hits[path] == before + 2
    # Its host answered "not found": the old copy is not used now that it is down.
    oauth_error(exchange(world, client_id, code, verifier, redirect_uri=LOOPBACK_CALLBACK),
                401, "invalid_client")


# Documents and fetches that are refused ------------------------------------------------------


def _refused_document(client_id: str, case: str) -> Served:
    good = claude_code_document(client_id)
    documents: dict[str, dict[str, Any]] = {
        "other-client-id": {**good, "client_id": client_id + "x"},
        "no-client-name": {k: v for k, v in good.items() if k != "client_name"},
        "no-redirect-uris": {k: v for k, v in good.items() if k != "redirect_uris"},
        "shared-secret": {**good, "token_endpoint_auth_method": "client_secret_post"},
        "client-secret": {**good, "client_secret": "s3cret"},
        "javascript-redirect": {**good, "redirect_uris": ["javascript:alert(1)"]},
        "private-key-jwt-without-keys": {**good, "token_endpoint_auth_method":
                                         "private_key_jwt"},
    }
    json_headers = {"content-type": "application/json"}
    if case in documents:
        return Served(json.dumps(documents[case]).encode(), headers=json_headers)
    return {
        "html": Served(b"<html></html>", headers={"content-type": "text/html"}),
        "not-json": Served(b"{nope", headers=json_headers),
        "array": Served(b"[]", headers=json_headers),
        "too-large": Served(b'{"pad": "' + b"x" * 6000 + b'"}', headers=json_headers),
        "endless": Served(b"", headers=json_headers, endless=True),
        "redirect": Served(b"", status=302, headers={"location": client_id + "-elsewhere"}),
        "no-content": Served(b"", status=204),
        "server-error": Served(b"oops", status=500),
    }[case]


REFUSED = {
    "other-client-id": "client_id is not exactly the URL",
    "no-client-name": "client_name is required",
    "no-redirect-uris": "redirect_uris is required",
    "shared-secret": "shared secret",
    "client-secret": "shared secret",
    "javascript-redirect": "redirect_uris[0]",
    "private-key-jwt-without-keys": "jwks",
    "html": "not application/json",
    "not-json": "not valid JSON",
    "array": "not a JSON object",
    "too-large": "larger than 5120 bytes",
    "endless": "larger than 5120 bytes",
    "redirect": "redirects are not followed",
    "no-content": "only 200",
    "server-error": "HTTP 500",
}


@pytest.mark.req("CIMD-FETCH-HARDENED", "CIMD-DOCUMENT-RULES")
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unusable_documents_are_invalid_client_never_5xx(world: OAuthWorld,
                                                         host: DocumentHost, case: str) -> None:
    path = host.fresh_path(case)
    client_id = host.url(path)
    host.served[path] = _refused_document(client_id, case)
    body = oauth_error(refresh(world, client_id, "bzr_unknown"), 401, "invalid_client")
    assert REFUSED[case] in body["error_description"], body
    assert client_id in body["error_description"]
    _, challenge = pkce_pair()
    r = httpx.get(authorize_url(world, client_id, challenge, redirect_uri=LOOPBACK_CALLBACK),
                  timeout=30)
    assert r.status_code == 400 and "could not verify this application" in r.text
    assert REFUSED[case] in html.unescape(r.text)
    if case == "redirect":
        assert host.hits[path + "-elsewhere"] == 0


BAD_CLIENT_IDS = {
    "plain http": "http://localhost:{port}/client.json",
    "no path": "https://localhost:{port}",
    "fragment": "https://localhost:{port}/client.json#x",
    "userinfo": "https://user@localhost:{port}/client.json",
    "dot segment": "https://localhost:{port}/a/../client.json",
    "encoded dot segment": "https://localhost:{port}/a/%2e%2E/client.json",
    "loopback address not allowed": "https://127.0.0.1:{port}/client.json",
    "private address": "https://10.0.0.1/client.json",
    "link-local address": "https://[fe80::1]/client.json",
    "metadata service": "https://169.254.169.254/latest/meta-data",
}


@pytest.mark.req("CIMD-FETCH-HARDENED")
@pytest.mark.parametrize("case", sorted(BAD_CLIENT_IDS))
def test_client_ids_that_must_not_be_fetched_are_refused(world: OAuthWorld,
                                                         host: DocumentHost, case: str) -> None:
    port = urllib.parse.urlsplit(host.origin).port
    client_id = BAD_CLIENT_IDS[case].format(port=port)
    before = sum(host.hits.values())
    r = refresh(world, client_id, "bzr_unknown")
    if case == "plain http":  # not a metadata document URL at all: an unknown client
        oauth_error(r, 401, "invalid_client")
    else:
        body = oauth_error(r, 401, "invalid_client")
        assert "could not be used" in body["error_description"] \
            or "not a usable metadata document URL" in body["error_description"], body
    assert sum(host.hits.values()) == before


@pytest.mark.req("CIMD-FETCH-HARDENED")
def test_without_the_development_setting_loopback_documents_are_refused(
    test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory, ca: ClientCA,
    host: DocumentHost,
) -> None:
    path = host.fresh_path("claude-code")
    client_id = host.publish(path, claude_code_document(host.url(path)))
    for strict in module_world(test_db, tmp_path_factory, cimd_ca_bundle=str(ca.bundle)):
        body = oauth_error(refresh(strict, client_id, "bzr_unknown"), 401, "invalid_client")
        assert "(loopback)" in body["error_description"], body
    assert host.hits[path] == 0


@pytest.mark.req("CIMD-FETCH-HARDENED")
def test_a_source_fetches_only_so_many_new_documents(
    test_db: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory, ca: ClientCA,
    host: DocumentHost,
) -> None:
    # Anyone can name a new document URL before signing in, and each makes Breeze fetch it:
    # a source gets a few such fetches a minute. Known documents are not counted.
    paths = [host.fresh_path("claude-code") for _ in range(3)]
    ids = [host.publish(p, claude_code_document(host.url(p))) for p in paths]
    for limited in module_world(test_db, tmp_path_factory,
                                **cimd_settings(ca, cimd_new_client_rate_limit="2/minute")):
        _, challenge = pkce_pair()
        for client_id in ids[:2]:
            r = httpx.get(authorize_url(limited, client_id, challenge,
                                        redirect_uri=LOOPBACK_CALLBACK), timeout=30)
            assert r.status_code == 200 and "Claude Code" in r.text, r.text[:300]
        r = httpx.get(authorize_url(limited, ids[2], challenge, redirect_uri=LOOPBACK_CALLBACK),
                      timeout=30)
        assert r.status_code == 400 and "too many new client metadata documents" in r.text
        body = oauth_error(refresh(limited, ids[2], "bzr_unknown"), 401, "invalid_client")
        assert "try again in" in body["error_description"]
        assert host.hits[paths[2]] == 0  # refused before any fetch
        # A document already known is still served: its copy is fresh.
        r = httpx.get(authorize_url(limited, ids[0], challenge, redirect_uri=LOOPBACK_CALLBACK),
                      timeout=30)
        assert r.status_code == 200
    assert host.hits[paths[0]] == 1


# Consent ------------------------------------------------------------------------------------


@pytest.mark.req("CIMD-CONSENT-DOMAIN")
def test_consent_names_the_verified_domain_apart_from_the_claimed_name(
    world: OAuthWorld, host: DocumentHost, human: HumanAgent,
) -> None:
    client_id, _, _ = chatgpt_client(host)
    page = consent_page(human, client_id, CHATGPT_REDIRECT)
    domain = urllib.parse.urlsplit(client_id).netloc
    assert re.search(r'id="client-name">ChatGPT<', page)
    assert re.search(rf'id="verified-domain">{re.escape(domain)}<', page)
    assert 'id="loopback-warning"' not in page
    assert re.search(r'id="redirect-host">chatgpt.com<', page)

    path = host.fresh_path("claude-code")
    claude = host.publish(path, claude_code_document(host.url(path)))
    page = consent_page(human, claude, LOOPBACK_CALLBACK)
    assert 'id="loopback-warning"' in page  # every redirect URI is loopback
    assert re.search(rf'id="verified-domain">{re.escape(domain)}<', page)

    registered = register(world, client_name="ChatGPT",
                          redirect_uris=["https://chatgpt.com/connector/oauth/x"])
    page = consent_page(human, registered["client_id"], "https://chatgpt.com/connector/oauth/x")
    assert "Unverified application" in page and 'id="verified-domain"' not in page


@pytest.mark.req("CIMD-CLIENT-BLOCK")
def test_a_block_of_a_document_client_holds_at_consent(
    world: OAuthWorld, host: DocumentHost, human: HumanAgent,
) -> None:
    path = host.fresh_path("claude-code")
    client_id = host.publish(path, claude_code_document(host.url(path)))
    code, verifier = authorized_code(human, client_id, LOOPBACK_CALLBACK)
    tokens = exchange(world, client_id, code, verifier, redirect_uri=LOOPBACK_CALLBACK).json()
    quoted = urllib.parse.quote(client_id, safe="")
    r = httpx.post(f"{world.url}/api/v1/oauth/clients/{quoted}/block", json={"days": 1},
                   headers={"Authorization": f"Bearer {world.admin_key}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["client_id"] == client_id
    assert mcp_call(world, tokens["access_token"], "tools/list").status_code == 401
    _, challenge = pkce_pair()
    r = human.authorize(authorize_url(world, client_id, challenge,
                                      redirect_uri=LOOPBACK_CALLBACK))
    assert r.status_code == 403 and "Application blocked" in r.text
    r = httpx.delete(f"{world.url}/api/v1/oauth/clients/{quoted}/block",
                     headers={"Authorization": f"Bearer {world.admin_key}"}, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.req("OAUTH-DEFAULT-SCOPES")
def test_a_consent_request_without_scope_gets_the_resources_default_scopes(
    world: OAuthWorld, host: DocumentHost, human: HumanAgent,
) -> None:
    """ChatGPT reconnects without ``scope``: the consent offers what the protected resource
    advertises, and the grant gets it (within the person's role)."""
    advertised = httpx.get(f"{world.url}/.well-known/oauth-protected-resource/mcp",
                           timeout=30).json()["scopes_supported"]
    client_id, _, _ = chatgpt_client(host, none_fallback=True)
    page = consent_page(human, client_id, CHATGPT_REDIRECT, scope=None)
    assert re.findall(r'name="scope_choice" value="([^"]+)"', page) == advertised
    code, verifier = authorized_code(human, client_id, CHATGPT_REDIRECT, scope=None)
    r = exchange(world, client_id, code, verifier, redirect_uri=CHATGPT_REDIRECT)
    assert r.status_code == 200, r.text
    assert r.json()["scope"].split() == advertised  # a technician may hold all three


# The fetch's bound on concurrency, against the real host ----------------------------------


@pytest.mark.req("CIMD-FETCH-HARDENED")
@pytest.mark.anyio
async def test_fetches_beyond_the_bound_wait_then_give_up(ca: ClientCA,
                                                          host: DocumentHost) -> None:
    held, path = threading.Event(), host.fresh_path("held")
    served = host.served[path] = Served(b"{}", headers={"content-type": "application/json"},
                                        held=held)
    other = host.publish(host.fresh_path("other"), {"ok": True})
    fetcher = DocumentFetcher(loopback_hosts=["localhost"], ca_bundle=ca.bundle,
                              max_concurrent=1, deadline=60, wait=0.2)
    try:
        first = asyncio.ensure_future(fetcher.fetch_json(host.url(path)))
        assert await asyncio.to_thread(served.reached.wait, 30)
        with pytest.raises(FetchFailed, match="too many documents"):
            await fetcher.fetch_json(other)
        assert host.hits[urllib.parse.urlsplit(other).path] == 0
    finally:
        held.set()
    assert (await first).document == {}
    assert (await fetcher.fetch_json(other)).document == {"ok": True}


@pytest.mark.req("CIMD-FETCH-HARDENED")
@pytest.mark.anyio
async def test_a_host_whose_certificate_is_not_trusted_is_not_fetched(
    host: DocumentHost,
) -> None:
    """The test authority is trusted only through BREEZE_CIMD_CA_BUNDLE."""
    url = host.publish(host.fresh_path("untrusted"), {"ok": True})
    fetcher = DocumentFetcher(loopback_hosts=["localhost"])
    with pytest.raises(FetchFailed, match="certificate"):
        await fetcher.fetch_json(url)
