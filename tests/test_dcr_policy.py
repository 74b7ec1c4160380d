"""Dynamic Client Registration policy (pure functions): the real clients' bodies are accepted,
the dangerous shapes are refused, and redirect URIs match exactly (loopback: any port)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from breeze_mcp.auth.oauth.registration import (
    DEFAULT_PRIVATE_SCHEMES,
    MAX_BODY_BYTES,
    ClientRegistration,
    RegistrationError,
    is_loopback_redirect,
    parse_registration_body,
    redirect_uri_matches,
    validate_redirect_uri,
    validate_registration,
)

CLAUDE_CALLBACK = "https://claude.ai/api/mcp/auth_callback"
CURSOR_URIS = [
    "cursor://anysphere.cursor-mcp/oauth/callback",
    "http://localhost:8787/callback",
    "https://www.cursor.com/agents/mcp/oauth/callback",
]
BOTH_GRANTS = ("authorization_code", "refresh_token")


def registration(**fields: Any) -> ClientRegistration:
    """The expected result: RFC 7591 defaults, overridden by ``fields``."""
    values: dict[str, Any] = {
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ("authorization_code",),
        "response_types": ("code",),
        "client_name": None,
        "client_uri": None,
        "logo_uri": None,
        "scope": None,
        "contacts": (),
        "software_id": None,
        "software_version": None,
    }
    values.update(fields)
    return ClientRegistration(**values)


# --------------------------------------------------------------------------------------------
# Accepted: the bodies the real clients send, byte for byte through the JSON parser.

ACCEPTED: list[Any] = [
    pytest.param(
        {
            "client_name": "Claude",
            "redirect_uris": [CLAUDE_CALLBACK],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "scope": "claudeai",
        },
        registration(
            redirect_uris=(CLAUDE_CALLBACK,),
            token_endpoint_auth_method="none",
            grant_types=BOTH_GRANTS,
            client_name="Claude",
            scope=None,  # "claudeai" is unknown: dropped, not fatal
        ),
        id="claude-ai-old-public",
    ),
    pytest.param(
        {
            "client_name": "Claude",
            "redirect_uris": ["https://claude.com/api/mcp/auth_callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_post",
        },
        registration(
            redirect_uris=("https://claude.com/api/mcp/auth_callback",),
            token_endpoint_auth_method="client_secret_post",
            grant_types=BOTH_GRANTS,
            client_name="Claude",
        ),
        id="claude-ai-new-client-secret-post",
    ),
    pytest.param(
        {
            "client_name": "ChatGPT",
            "redirect_uris": ["https://chatgpt.com/connector/oauth/abc123"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "scope": "ai:read ai:write openid",
        },
        registration(
            redirect_uris=("https://chatgpt.com/connector/oauth/abc123",),
            token_endpoint_auth_method="none",
            grant_types=BOTH_GRANTS,
            client_name="ChatGPT",
            scope="ai:read ai:write",  # "openid" dropped
        ),
        id="chatgpt",
    ),
    pytest.param(
        {
            "client_name": "ChatGPT",
            "redirect_uris": ["https://chatgpt.com/connector_platform_oauth_redirect"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        },
        registration(
            redirect_uris=("https://chatgpt.com/connector_platform_oauth_redirect",),
            token_endpoint_auth_method="none",
            grant_types=BOTH_GRANTS,
            client_name="ChatGPT",
        ),
        id="chatgpt-legacy-redirect",
    ),
    pytest.param(
        {
            "client_name": "Cursor",
            "redirect_uris": CURSOR_URIS,
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        },
        registration(
            redirect_uris=tuple(CURSOR_URIS),
            token_endpoint_auth_method="none",
            grant_types=BOTH_GRANTS,
            client_name="Cursor",
        ),
        id="cursor-three-uris",
    ),
    pytest.param(
        # The MCP SDK's OAuthClientProvider: model_dump(exclude_none=True), with the
        # SEP-837 application_type that this server does not use (ignored).
        {
            "redirect_uris": ["http://localhost:53682/callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": "ai:read ai:write ai:execute offline_access",
            "client_name": "Claude Code (breeze)",
            "application_type": "native",
        },
        registration(
            redirect_uris=("http://localhost:53682/callback",),
            token_endpoint_auth_method="none",
            grant_types=BOTH_GRANTS,
            client_name="Claude Code (breeze)",
            scope="ai:read ai:write ai:execute offline_access",
        ),
        id="claude-code-localhost",
    ),
    pytest.param(
        {
            "redirect_uris": ["http://127.0.0.1:9999/callback"],
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "scope": "offline_access ai:read",
            "client_name": "MCP SDK client",
            "application_type": "native",
        },
        registration(
            redirect_uris=("http://127.0.0.1:9999/callback",),
            token_endpoint_auth_method="client_secret_post",
            grant_types=BOTH_GRANTS,
            client_name="MCP SDK client",
            scope="ai:read offline_access",  # canonical order
        ),
        id="mcp-sdk-127.0.0.1",
    ),
    pytest.param(
        {"redirect_uris": ["https://app.example.com/cb"]},
        registration(redirect_uris=("https://app.example.com/cb",)),
        id="minimal-defaults",
    ),
    pytest.param(
        {
            "redirect_uris": ["http://[::1]/cb", "https://app.example.com/cb"],
            "client_name": " My\tApp\u202e\x00 ",
            "client_uri": "https://app.example.com/#about",
            "logo_uri": "https://cdn.example.com/logo.png",
            "contacts": ["ops@example.com", ""],
            "software_id": "4NRB1-0XZABZI9E6-5SM3R",
            "software_version": "2.1",
            "scope": "ai:execute ai:execute openid",
            "jwks_uri": "https://whatever.example/jwks",
            "tos_uri": None,
        },
        registration(
            redirect_uris=("http://[::1]/cb", "https://app.example.com/cb"),
            client_name="My App",  # control / bidi characters stripped
            client_uri="https://app.example.com/#about",
            logo_uri="https://cdn.example.com/logo.png",
            contacts=("ops@example.com",),
            software_id="4NRB1-0XZABZI9E6-5SM3R",
            software_version="2.1",
            scope="ai:execute",
        ),
        id="all-metadata-unknown-ignored",
    ),
    pytest.param(
        # null and "" placeholders read as absent; duplicate URIs collapse.
        {
            "redirect_uris": [CLAUDE_CALLBACK, CLAUDE_CALLBACK],
            "grant_types": None,
            "token_endpoint_auth_method": None,
            "client_uri": "",
            "logo_uri": None,
            "scope": "",
        },
        registration(redirect_uris=(CLAUDE_CALLBACK,)),
        id="null-placeholders",
    ),
    pytest.param(
        {"redirect_uris": [f"https://app.example.com/cb/{i}" for i in range(10)]},
        registration(redirect_uris=tuple(f"https://app.example.com/cb/{i}" for i in range(10))),
        id="ten-uris",
    ),
    pytest.param(
        {"redirect_uris": ["https://app.example.com/" + "a" * (2048 - 24)]},
        registration(redirect_uris=("https://app.example.com/" + "a" * (2048 - 24),)),
        id="2048-char-uri",
    ),
]


@pytest.mark.req("OAUTH-DCR-ACCEPT")
@pytest.mark.parametrize(("body", "expected"), ACCEPTED)
def test_real_client_bodies_are_accepted(
    body: dict[str, Any], expected: ClientRegistration
) -> None:
    parsed = parse_registration_body(json.dumps(body).encode())
    assert validate_registration(parsed) == expected
    assert all(len(uri) <= 2048 for uri in expected.redirect_uris)


@pytest.mark.req("OAUTH-DCR-ACCEPT")
def test_body_of_exactly_64_kib_is_accepted() -> None:
    body = {"redirect_uris": [CLAUDE_CALLBACK], "padding": ""}
    size = len(json.dumps(body).encode())
    body["padding"] = "x" * (MAX_BODY_BYTES - size)
    raw = json.dumps(body).encode()
    assert len(raw) == MAX_BODY_BYTES
    assert validate_registration(parse_registration_body(raw)).redirect_uris == (CLAUDE_CALLBACK,)


@pytest.mark.req("OAUTH-DCR-ACCEPT")
def test_private_scheme_allowlist_is_configurable() -> None:
    body = {"redirect_uris": ["com.example.app:/oauth2redirect/provider"]}
    accepted = validate_registration(body, private_schemes=frozenset({"com.example.app"}))
    assert accepted.redirect_uris == ("com.example.app:/oauth2redirect/provider",)
    with pytest.raises(RegistrationError):
        validate_registration(body)  # not on the default allowlist
    with pytest.raises(RegistrationError):  # cursor is not on this allowlist
        validate_registration(
            {"redirect_uris": CURSOR_URIS}, private_schemes=frozenset({"com.example.app"})
        )


@pytest.mark.req("OAUTH-DCR-ACCEPT")
@pytest.mark.parametrize("uri", [*CURSOR_URIS, CLAUDE_CALLBACK, "http://[::1]:1/x?y=z"])
def test_validate_redirect_uri_returns_it_unchanged(uri: str) -> None:
    assert validate_redirect_uri(uri, private_schemes=DEFAULT_PRIVATE_SCHEMES) is uri


# --------------------------------------------------------------------------------------------
# Refused redirect URIs: one per body, then the same URI directly.

DANGEROUS_URIS: list[Any] = [
    pytest.param("javascript:alert(1)", id="javascript"),
    pytest.param("JaVaScRiPt:alert(1)", id="javascript-mixed-case"),
    pytest.param(" javascript:alert(1)", id="javascript-leading-space"),
    pytest.param("\x00javascript:alert(1)", id="javascript-leading-nul"),
    pytest.param("\x01\x1fjavascript:alert(1)", id="javascript-leading-controls"),
    pytest.param("java\tscript:alert(1)", id="javascript-embedded-tab"),
    pytest.param("java\nscript:alert(1)", id="javascript-embedded-newline"),
    pytest.param("\ufeffjavascript:alert(1)", id="javascript-leading-bom"),
    pytest.param("javascript://claude.ai/%0aalert(1)", id="javascript-with-authority"),
    pytest.param("data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", id="data"),
    pytest.param("DATA:text/html,x", id="data-upper"),
    pytest.param("file:///etc/passwd", id="file"),
    pytest.param("vbscript:msgbox(1)", id="vbscript"),
    pytest.param("VBScript:msgbox(1)", id="vbscript-mixed-case"),
    pytest.param(CLAUDE_CALLBACK + "#fragment", id="fragment"),
    pytest.param(CLAUDE_CALLBACK + "#", id="empty-fragment"),
    pytest.param("http://localhost:8787/callback#x", id="loopback-fragment"),
    pytest.param("cursor://anysphere.cursor-mcp/oauth/callback#x", id="private-fragment"),
    pytest.param("https://attacker@claude.ai/api/mcp/auth_callback", id="userinfo"),
    pytest.param("https://claude.ai:443@evil.example/cb", id="userinfo-port-lookalike"),
    pytest.param("http://localhost:8787@evil.example/callback", id="loopback-userinfo"),
    pytest.param("cursor://me@anysphere.cursor-mcp/oauth/callback", id="private-userinfo"),
    pytest.param("https:///cb", id="https-empty-host"),
    pytest.param("https:claude.ai/cb", id="https-no-authority"),
    pytest.param("https://:443/cb", id="https-port-no-host"),
    pytest.param("http:///callback", id="http-empty-host"),
    pytest.param("http://example.com/cb", id="http-non-loopback"),
    pytest.param("http://localhost.evil.com/callback", id="http-localhost-suffix"),
    pytest.param("http://127.0.0.1.nip.io/callback", id="http-loopback-ip-suffix"),
    pytest.param("http://127.0.0.2/callback", id="http-other-127"),
    pytest.param("http://[::ffff:127.0.0.1]/callback", id="http-v4-mapped"),
    pytest.param("http://0x7f.0.0.1/callback", id="http-hex-ip"),
    pytest.param("http://2130706433/callback", id="http-integer-ip"),
    pytest.param("http://0.0.0.0:8787/callback", id="http-any-address"),
    pytest.param("https://claude.ai/api/mcp/auth callback", id="embedded-space"),
    pytest.param(CLAUDE_CALLBACK + "\n", id="trailing-newline"),
    pytest.param(CLAUDE_CALLBACK + "\r\nSet-Cookie:x=1", id="crlf"),
    pytest.param("https://claude.ai/\u202ecb", id="bidi-override"),
    pytest.param("https://cl\u0430ude.ai/cb", id="non-ascii-homograph"),
    pytest.param("https://*.example.com/cb", id="wildcard-subdomain"),
    pytest.param("https://*/cb", id="wildcard-host"),
    pytest.param("https://evil.example\\@claude.ai/cb", id="backslash-userinfo"),
    pytest.param("https://claude.ai\\.evil.example/cb", id="backslash-host"),
    pytest.param("https://claude.ai/<script>", id="angle-brackets"),
    pytest.param("https://cl%61ude.ai/cb", id="percent-encoded-host"),
    pytest.param("https://claude.ai/%zz", id="bad-percent-escape"),
    pytest.param("https://claude.ai:99999/cb", id="port-out-of-range"),
    pytest.param("https://claude.ai:0/cb", id="port-zero"),
    pytest.param("https://claude.ai:https/cb", id="port-not-numeric"),
    pytest.param("http://localhost:/callback", id="empty-port"),
    pytest.param("https://[fe80::1%25eth0]/cb", id="ipv6-zone-id"),
    pytest.param("https://[not-ip]/cb", id="ipv6-garbage"),
    pytest.param("mycorp://callback", id="private-scheme-not-allowed"),
    pytest.param("com.evil.app:/oauth2redirect", id="reverse-dns-not-allowed"),
    pytest.param("cursor:///oauth/callback", id="private-empty-host"),
    pytest.param("cursor:", id="private-empty"),
    pytest.param("//claude.ai/cb", id="scheme-relative"),
    pytest.param("/api/mcp/auth_callback", id="relative"),
    pytest.param("", id="empty"),
    pytest.param("https://app.example.com/" + "a" * (2049 - 24), id="2049-chars"),
]


@pytest.mark.req("OAUTH-DCR-REFUSE")
@pytest.mark.parametrize("uri", DANGEROUS_URIS)
def test_dangerous_redirect_uris_are_refused(uri: str) -> None:
    with pytest.raises(RegistrationError) as raised:
        validate_registration({"redirect_uris": [uri], "token_endpoint_auth_method": "none"})
    assert raised.value.error == "invalid_redirect_uri"
    assert raised.value.description.startswith("redirect_uris[0] ")
    assert raised.value.as_dict()["error"] == "invalid_redirect_uri"

    with pytest.raises(RegistrationError) as direct:
        validate_redirect_uri(uri, private_schemes=DEFAULT_PRIVATE_SCHEMES)
    assert direct.value.error == "invalid_redirect_uri"


@pytest.mark.req("OAUTH-DCR-REFUSE")
def test_allowlist_never_enables_a_dangerous_scheme() -> None:
    unsafe = frozenset({"javascript", "data", "file", "vbscript"})
    for uri in ("javascript:alert(1)", "data:,x", "file:///etc/passwd", "vbscript:x"):
        with pytest.raises(RegistrationError):
            validate_redirect_uri(uri, private_schemes=unsafe)


@pytest.mark.req("OAUTH-DCR-REFUSE")
@pytest.mark.parametrize("bad_index", [0, 1, 2])
def test_one_bad_uri_fails_the_whole_cursor_registration(bad_index: int) -> None:
    uris = list(CURSOR_URIS)
    uris[bad_index] = "http://evil.example/callback"
    body = {
        "client_name": "Cursor",
        "redirect_uris": uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    with pytest.raises(RegistrationError) as raised:
        validate_registration(body)
    assert raised.value.error == "invalid_redirect_uri"
    assert raised.value.description.startswith(f"redirect_uris[{bad_index}] ")
    assert "http://evil.example/callback" in raised.value.description


@pytest.mark.req("OAUTH-DCR-REFUSE")
def test_refused_uri_is_truncated_and_escaped_in_the_description() -> None:
    uri = "http://evil.example/\u202e" + "b" * 3000
    with pytest.raises(RegistrationError) as raised:
        validate_registration({"redirect_uris": [CLAUDE_CALLBACK, uri]})
    description = raised.value.description
    assert description.startswith("redirect_uris[1] ")
    assert "b" * 170 in description and "b" * 200 not in description
    assert "\u202e" not in description and description.isascii()
    assert "\\u202e" in description  # escaped, not dropped
    assert len(description) < 400


# --------------------------------------------------------------------------------------------
# Refused bodies and metadata.

REFUSED: list[Any] = [
    # redirect_uris itself
    pytest.param({}, "invalid_redirect_uri", id="redirect-uris-missing"),
    pytest.param({"redirect_uris": None}, "invalid_redirect_uri", id="redirect-uris-null"),
    pytest.param({"redirect_uris": []}, "invalid_redirect_uri", id="redirect-uris-empty"),
    pytest.param(
        {"redirect_uris": CLAUDE_CALLBACK}, "invalid_redirect_uri", id="redirect-uris-string"
    ),
    pytest.param({"redirect_uris": [123]}, "invalid_redirect_uri", id="redirect-uri-number"),
    pytest.param({"redirect_uris": [None]}, "invalid_redirect_uri", id="redirect-uri-null"),
    pytest.param(
        {"redirect_uris": [[CLAUDE_CALLBACK]]}, "invalid_redirect_uri", id="redirect-uri-nested"
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK, {"uri": CLAUDE_CALLBACK}]},
        "invalid_redirect_uri",
        id="redirect-uri-object",
    ),
    pytest.param(
        {"redirect_uris": [f"https://app.example.com/cb/{i}" for i in range(11)]},
        "invalid_redirect_uri",
        id="eleven-uris",
    ),
    # grant and response types
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "grant_types": ["implicit"]},
        "invalid_client_metadata",
        id="implicit-grant",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "grant_types": ["authorization_code", "implicit"]},
        "invalid_client_metadata",
        id="code-plus-implicit",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "grant_types": ["authorization_code", "password"]},
        "invalid_client_metadata",
        id="password-grant",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "grant_types": ["client_credentials"]},
        "invalid_client_metadata",
        id="client-credentials-grant",
    ),
    pytest.param(
        {
            "redirect_uris": [CLAUDE_CALLBACK],
            "grant_types": [
                "authorization_code",
                "urn:ietf:params:oauth:grant-type:jwt-bearer",
            ],
        },
        "invalid_client_metadata",
        id="jwt-bearer-grant",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "grant_types": ["refresh_token"]},
        "invalid_client_metadata",
        id="no-authorization-code",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "grant_types": []},
        "invalid_client_metadata",
        id="grant-types-empty",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "grant_types": "authorization_code"},
        "invalid_client_metadata",
        id="grant-types-string",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "response_types": ["token"]},
        "invalid_client_metadata",
        id="response-type-token",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "response_types": ["code", "id_token"]},
        "invalid_client_metadata",
        id="response-type-id-token",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "response_types": []},
        "invalid_client_metadata",
        id="response-types-empty",
    ),
    # token endpoint authentication
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "token_endpoint_auth_method": "private_key_jwt"},
        "invalid_client_metadata",
        id="auth-private-key-jwt",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "token_endpoint_auth_method": "tls_client_auth"},
        "invalid_client_metadata",
        id="auth-tls-client-auth",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "token_endpoint_auth_method": "client_secret_jwt"},
        "invalid_client_metadata",
        id="auth-client-secret-jwt",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "token_endpoint_auth_method": "NONE"},
        "invalid_client_metadata",
        id="auth-wrong-case",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "token_endpoint_auth_method": ["none"]},
        "invalid_client_metadata",
        id="auth-list",
    ),
    # descriptive metadata
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "client_name": 42},
        "invalid_client_metadata",
        id="client-name-number",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "client_name": "x" * 201},
        "invalid_client_metadata",
        id="client-name-too-long",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "client_uri": "javascript:alert(1)"},
        "invalid_client_metadata",
        id="client-uri-javascript",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "client_uri": "http://example.com/"},
        "invalid_client_metadata",
        id="client-uri-plain-http",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "client_uri": "https://a.example/" + "a" * 2040},
        "invalid_client_metadata",
        id="client-uri-too-long",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "logo_uri": "https://a@b.example/logo.png"},
        "invalid_client_metadata",
        id="logo-uri-userinfo",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "logo_uri": "data:image/png;base64,AAAA"},
        "invalid_client_metadata",
        id="logo-uri-data",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "logo_uri": ["https://a.example/l.png"]},
        "invalid_client_metadata",
        id="logo-uri-list",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "contacts": "ops@example.com"},
        "invalid_client_metadata",
        id="contacts-string",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "contacts": [f"c{i}@example.com" for i in range(11)]},
        "invalid_client_metadata",
        id="contacts-eleven",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "contacts": ["x" * 255]},
        "invalid_client_metadata",
        id="contact-too-long",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "contacts": [1]},
        "invalid_client_metadata",
        id="contact-number",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "software_id": "x" * 201},
        "invalid_client_metadata",
        id="software-id-too-long",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "software_version": 2},
        "invalid_client_metadata",
        id="software-version-number",
    ),
    pytest.param(
        {"redirect_uris": [CLAUDE_CALLBACK], "scope": ["ai:read"]},
        "invalid_client_metadata",
        id="scope-list",
    ),
]


@pytest.mark.req("OAUTH-DCR-REFUSE")
@pytest.mark.parametrize(("body", "error"), REFUSED)
def test_bad_metadata_is_refused(body: dict[str, Any], error: str) -> None:
    with pytest.raises(RegistrationError) as raised:
        validate_registration(parse_registration_body(json.dumps(body).encode()))
    assert raised.value.error == error
    assert raised.value.description
    assert raised.value.as_dict() == {"error": error, "error_description": raised.value.description}


BAD_BODIES: list[Any] = [
    pytest.param(
        json.dumps({"redirect_uris": [CLAUDE_CALLBACK], "padding": "x" * MAX_BODY_BYTES}).encode(),
        id="over-64-kib",
    ),
    pytest.param(b" " * (MAX_BODY_BYTES + 1), id="over-64-kib-whitespace"),
    pytest.param(b"[]", id="array"),
    pytest.param(json.dumps([{"redirect_uris": [CLAUDE_CALLBACK]}]).encode(), id="array-of-object"),
    pytest.param(b'"https://claude.ai/api/mcp/auth_callback"', id="string"),
    pytest.param(b"42", id="number"),
    pytest.param(b"null", id="null"),
    pytest.param(b"true", id="boolean"),
    pytest.param(b"", id="empty"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b"{'redirect_uris': []}", id="single-quotes"),
    pytest.param(b'{"redirect_uris": ["https://a.example/cb"],}', id="trailing-comma"),
    pytest.param(b"redirect_uris=https%3A%2F%2Fa.example%2Fcb", id="form-encoded"),
    pytest.param(b'{"redirect_uris": ["https://a.example/cb"], "x": NaN}', id="nan"),
    pytest.param(b'{"client_name": "\xff"}', id="not-utf-8"),
    pytest.param(b"[" * 20000 + b"]" * 20000, id="deep-nesting"),
]


@pytest.mark.req("OAUTH-DCR-REFUSE")
@pytest.mark.parametrize("raw", BAD_BODIES)
def test_bad_bodies_are_refused(raw: bytes) -> None:
    with pytest.raises(RegistrationError) as raised:
        parse_registration_body(raw)
    assert raised.value.error == "invalid_client_metadata"


# --------------------------------------------------------------------------------------------
# Redirect URI matching at /authorize.

MATCHES: list[Any] = [
    # exact
    pytest.param([CLAUDE_CALLBACK], CLAUDE_CALLBACK, True, id="exact"),
    pytest.param(CURSOR_URIS, CURSOR_URIS[0], True, id="exact-private-scheme"),
    pytest.param(CURSOR_URIS, CURSOR_URIS[2], True, id="exact-second-of-three"),
    pytest.param([], CLAUDE_CALLBACK, False, id="nothing-registered"),
    pytest.param([CLAUDE_CALLBACK], "https://claude.com/api/mcp/auth_callback", False, id="host"),
    pytest.param(
        [CLAUDE_CALLBACK], "https://claude.ai/api/mcp/auth_callback/", False, id="trailing-slash"
    ),
    pytest.param(
        ["https://app.example.com/cb/"], "https://app.example.com/cb", False, id="slash-removed"
    ),
    pytest.param([CLAUDE_CALLBACK], "https://claude.ai/api/mcp/Auth_Callback", False, id="case"),
    pytest.param([CLAUDE_CALLBACK], "https://CLAUDE.AI/api/mcp/auth_callback", False, id="hcase"),
    pytest.param(
        [CLAUDE_CALLBACK], "https://claude.ai:443/api/mcp/auth_callback", False, id="https-443"
    ),
    pytest.param(
        ["https://app.example.com:8443/cb"],
        "https://app.example.com:9443/cb",
        False,
        id="https-port",
    ),
    pytest.param(
        ["https://app.example.com/cb"], "https://app.example.com/cb?x=1", False, id="https-query"
    ),
    pytest.param(
        [CLAUDE_CALLBACK], CLAUDE_CALLBACK + "/../../evil", False, id="https-path-traversal"
    ),
    pytest.param(
        ["cursor://anysphere.cursor-mcp/oauth/callback"],
        "cursor://anysphere.cursor-mcp/oauth/other",
        False,
        id="private-path",
    ),
    # loopback: any port, everything else exact
    pytest.param(CURSOR_URIS, "http://localhost:51234/callback", True, id="loopback-other-port"),
    pytest.param(CURSOR_URIS, "http://localhost/callback", True, id="loopback-presented-no-port"),
    pytest.param(
        ["http://127.0.0.1/callback"],
        "http://127.0.0.1:9999/callback",
        True,
        id="registered-no-port",
    ),
    pytest.param(["http://[::1]:1/cb"], "http://[::1]:65535/cb", True, id="loopback-ipv6"),
    pytest.param(
        ["http://localhost:53682/callback"],
        "http://127.0.0.1:53682/callback",
        False,
        id="localhost-vs-127",
    ),
    pytest.param(
        ["http://127.0.0.1:9999/callback"], "http://[::1]:9999/callback", False, id="127-vs-ipv6"
    ),
    pytest.param(
        ["http://localhost/callback"], "http://LOCALHOST:1/callback", False, id="loopback-hcase"
    ),
    pytest.param(CURSOR_URIS, "http://localhost:8787/other", False, id="loopback-path"),
    pytest.param(CURSOR_URIS, "http://localhost:1234/callback/", False, id="loopback-slash"),
    pytest.param(CURSOR_URIS, "http://localhost:1234/Callback", False, id="loopback-path-case"),
    pytest.param(CURSOR_URIS, "https://localhost:8787/callback", False, id="loopback-https"),
    pytest.param(
        ["http://localhost/cb?x=1"], "http://localhost:5/cb?x=1", True, id="loopback-same-query"
    ),
    pytest.param(
        ["http://localhost/cb?x=1"], "http://localhost:5/cb?x=2", False, id="loopback-other-query"
    ),
    pytest.param(["http://localhost/cb?x=1"], "http://localhost:5/cb", False, id="query-dropped"),
    pytest.param(["http://localhost/cb"], "http://localhost:5/cb?x=1", False, id="query-added"),
    pytest.param(["http://localhost/cb"], "http://localhost:5/cb?", False, id="empty-query"),
    pytest.param(CURSOR_URIS, "http://localhost:1234/callback#x", False, id="loopback-fragment"),
    pytest.param(
        CURSOR_URIS, "http://localhost:1234@evil.example/callback", False, id="loopback-userinfo"
    ),
    pytest.param(
        CURSOR_URIS, "http://localhost.evil.example:8787/callback", False, id="loopback-suffix"
    ),
    pytest.param(CURSOR_URIS, "http://localhost:99999/callback", False, id="loopback-bad-port"),
    pytest.param(CURSOR_URIS, "http://localhost:1234/callback\n", False, id="loopback-newline"),
    pytest.param(
        ["https://app.example.com/callback"],
        "http://localhost:1/callback",
        False,
        id="not-loopback",
    ),
]


@pytest.mark.req("OAUTH-REDIRECT-MATCH")
@pytest.mark.parametrize(("registered", "presented", "expected"), MATCHES)
def test_redirect_uri_matching(registered: list[str], presented: str, expected: bool) -> None:
    assert redirect_uri_matches(registered, presented) is expected
    assert redirect_uri_matches(tuple(registered), presented) is expected


@pytest.mark.req("OAUTH-REDIRECT-MATCH")
@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://localhost/callback", True),
        ("http://localhost:8787/callback", True),
        ("http://127.0.0.1:9999/callback", True),
        ("http://[::1]:1/", True),
        ("http://localhost", True),
        ("https://localhost:8787/callback", False),
        ("http://localhost.evil.example/callback", False),
        ("http://127.0.0.1.nip.io/callback", False),
        ("http://127.0.0.2/callback", False),
        ("http://localhost:8787/callback#x", False),
        ("http://user@localhost/callback", False),
        ("http://localhost:0/callback", False),
        (" http://localhost/callback", False),
        ("cursor://anysphere.cursor-mcp/oauth/callback", False),
        ("", False),
    ],
)
def test_is_loopback_redirect(uri: str, expected: bool) -> None:
    assert is_loopback_redirect(uri) is expected
