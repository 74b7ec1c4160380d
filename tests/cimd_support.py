"""Helpers for Client ID Metadata Document tests: a test certificate authority, a real https
server publishing documents and key sets (counting every fetch), the shapes of the real
clients' documents, and a client key that signs ``private_key_jwt`` assertions.

The server is uvicorn with TLS on a port, at ``https://localhost:<port>``; Breeze trusts it
through ``BREEZE_CIMD_CA_BUNDLE`` and reaches it through
``BREEZE_CIMD_ALLOW_LOOPBACK_HOSTS=localhost``. Nothing here mocks the fetch.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support import LiveServer

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLAUDE_CODE_REDIRECTS = ["http://localhost/callback", "http://127.0.0.1/callback"]
CHATGPT_REDIRECT = "https://chatgpt.com/connector/oauth/c-4f2a9"


@dataclass(frozen=True)
class ClientCA:
    """A certificate authority made for the test run, and a certificate it issued for
    ``localhost`` and ``127.0.0.1``."""

    bundle: Path  # the authority's certificate: what Breeze is told to trust
    chain: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(directory: Path) -> ClientCA:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("Breeze test CA"))
        .issuer_name(_name("Breeze test CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca = ClientCA(directory / "ca.pem", directory / "localhost.pem", directory / "localhost.key")
    ca.bundle.write_bytes(ca_cert.public_bytes(pem))
    ca.chain.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    ca.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    return ca


@dataclass
class Served:
    """What the host answers at one path."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    endless: bool = False  # stream chunks until the reader gives up
    held: threading.Event | None = None  # answer only once this is set
    reached: threading.Event = field(default_factory=threading.Event)  # a request came


class DocumentHost:
    """A client's web server: publishes documents at paths and counts each request."""

    def __init__(self, ca: ClientCA) -> None:
        self.served: dict[str, Served] = {}
        self.hits: Counter[str] = Counter()
        self._server = LiveServer(
            Starlette(routes=[Route("/{path:path}", self._answer)]), tls=(ca.chain, ca.key))
        self.origin = self._server.url

    def url(self, path: str) -> str:
        return f"{self.origin}{path}"

    def publish(self, path: str, document: dict[str, Any], *, max_age: int | None = 3600,
                headers: dict[str, str] | None = None) -> str:
        """Serve ``document`` as JSON at ``path`` (``Cache-Control: max-age``); its URL."""
        extra = {"content-type": "application/json", **(headers or {})}
        if max_age is not None:
            extra.setdefault("cache-control", f"max-age={max_age}")
        self.served[path] = Served(json.dumps(document).encode(), headers=extra)
        return self.url(path)

    def fresh_path(self, name: str = "client") -> str:
        return f"/{name}-{secrets.token_hex(4)}/metadata.json"

    async def _answer(self, request: Request) -> Response:
        path = request.url.path
        self.hits[path] += 1
        served = self.served.get(path)
        if served is None:
            return Response(status_code=404)
        served.reached.set()
        if served.held is not None:
            await anyio.to_thread.run_sync(served.held.wait)
        if served.endless:
            async def chunks() -> AsyncIterator[bytes]:
                while True:
                    yield b" " * 1024
                    await anyio.lowlevel.checkpoint()

            return StreamingResponse(chunks(), status_code=served.status,
                                     headers=served.headers)
        return Response(served.body, status_code=served.status, headers=served.headers)

    def __enter__(self) -> DocumentHost:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        for served in self.served.values():
            if served.held is not None:
                served.held.set()
        self._server.__exit__(*exc)


@contextmanager
def document_host(ca: ClientCA) -> Iterator[DocumentHost]:
    with DocumentHost(ca) as host:
        yield host


def claude_code_document(client_id: str) -> dict[str, Any]:
    """Shaped like Claude Code's: loopback redirects without a port, a public client, and a
    grant type this server does not serve."""
    return {
        "client_id": client_id, "client_name": "Claude Code", "client_uri": "https://claude.ai",
        "redirect_uris": CLAUDE_CODE_REDIRECTS,
        "grant_types": ["authorization_code", "refresh_token",
                        "urn:ietf:params:oauth:grant-type:jwt-bearer"],
        "response_types": ["code"], "token_endpoint_auth_method": "none",
    }


def chatgpt_document(client_id: str, jwks_uri: str, *,
                     none_fallback: bool = False) -> dict[str, Any]:
    """Shaped like ChatGPT's: private_key_jwt with a jwks_uri, an https redirect; with
    ``none_fallback``, ``none`` listed beside it."""
    document: dict[str, Any] = {
        "client_id": client_id, "client_name": "ChatGPT", "client_uri": "https://chatgpt.com/",
        "redirect_uris": [CHATGPT_REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "RS256", "jwks_uri": jwks_uri,
    }
    if none_fallback:
        document["token_endpoint_auth_methods_supported"] = ["none", "private_key_jwt"]
    return document


class ClientKey:
    """A client's signing key: its public JWK Set, and RFC 7523 client assertions."""

    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or f"k-{secrets.token_hex(3)}"
        self.key = RSAKey.generate_key(2048, parameters={"kid": self.kid}, private=True)

    def jwks(self, *others: ClientKey) -> dict[str, Any]:
        return {"keys": [k.key.as_dict(private=False) for k in (self, *others)]}

    def assertion(self, client_id: str, audience: str, *, lifetime: int = 60,
                  header: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": client_id, "sub": client_id, "aud": audience, "iat": now,
                "exp": now + lifetime, "jti": secrets.token_urlsafe(16), **claims}
        head = {"alg": "RS256", "kid": self.kid, **(header or {})}
        return jwt.encode(head, body, self.key, algorithms=[head["alg"]])
