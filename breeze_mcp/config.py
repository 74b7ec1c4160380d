"""One Settings object for the whole service.

This is the only module that reads the environment. Every setting has the ``BREEZE_`` prefix
and is documented in the README's configuration table. The application, the CLI and the tests
build everything else from a :class:`Settings` value; nothing reads ``os.environ`` later.

Secrets (session key, MFA encryption key, billing webhook secret) are generated and persisted
in the state directory on first use in ``development`` mode. In ``production`` mode a missing
secret is a start-up error, and in every mode the MFA encryption key must differ from the
session key.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "ConfigError",
    "Settings",
    "default_state_dir",
    "load_settings",
    "proxy_range_problem",
    "takes_in_public_addresses",
]


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


def default_state_dir() -> Path:
    """Per-user state folder: ``$XDG_STATE_HOME/breeze-mcp`` or ``~/.local/state/breeze-mcp``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "breeze-mcp"


_FORBIDDEN_PROXY_NETS = {"*", "0.0.0.0/0", "::/0"}

# Ranges a proxy may sit in whatever their size: nobody outside the operator's own networks
# can send from them. Anything else is public address space.
_NON_PUBLIC_NETS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(n) for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",  # RFC 1918
        "100.64.0.0/10",  # RFC 6598 carrier-grade NAT
        "127.0.0.0/8", "169.254.0.0/16",  # loopback, link-local
        "::1/128", "fc00::/7", "fe80::/10",  # loopback, unique-local, link-local
    )
)
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
# The widest public range trusted as proxies: one provider's block, not a slice of the internet.
_MAX_PUBLIC_PROXY_PREFIX = {4: 16, 6: 32}


def takes_in_public_addresses(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether any address of ``net`` lies outside the private, loopback and link-local ranges.

    Checked over the whole range, not its first address: ``10.0.0.0/7`` starts private but
    also holds all of ``11.0.0.0/8``.
    """
    left = [net]
    for private in _NON_PUBLIC_NETS:
        if private.version != net.version:
            continue
        rest: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for part in left:
            if part.subnet_of(private):  # type: ignore[arg-type]
                continue
            if private.subnet_of(part):  # type: ignore[arg-type]
                rest.extend(part.address_exclude(private))  # type: ignore[arg-type]
            else:
                rest.append(part)
        left = rest
    return bool(left)


def proxy_range_problem(item: str) -> str | None:
    """Why ``item`` cannot be a trusted-proxy range, or None when it can."""
    if item in _FORBIDDEN_PROXY_NETS:
        return f"{item!r} would trust every address"
    try:
        net = ipaddress.ip_network(item, strict=False)
    except ValueError:
        return f"{item!r} is not an IP address or CIDR"
    if net.prefixlen == 0:
        return f"{item!r} would trust every address"
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_IPV4_MAPPED):
        # Mapped peers are compared as IPv4, so such a range would never match.
        return f"{item!r} is an IPv4-mapped range; write it as IPv4"
    widest = _MAX_PUBLIC_PROXY_PREFIX[net.version]
    if net.prefixlen < widest and takes_in_public_addresses(net):
        return f"{item!r} takes in public addresses and is wider than /{widest}"
    return None


class Settings(BaseSettings):
    """Service configuration. Field docs are the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="BREEZE_",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    mode: Literal["development", "production"] = Field(
        "development",
        description="`production` makes every missing secret a start-up error.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="Origin users and AI clients reach us at; the OAuth issuer and the only "
        "allowed Host/Origin.",
    )
    host: str = Field("127.0.0.1", description="Address `serve` binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port `serve` binds to.")
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Where generated keys and the embedded PostgreSQL cluster live.",
    )
    database_url: SecretStr | None = Field(
        None,
        description="Runtime connection (the non-owner role). Unset: embedded PostgreSQL in "
        "the state directory.",
    )
    migrate_database_url: SecretStr | None = Field(
        None,
        description="Connection of the role that owns the schema; used only by "
        "`breeze-mcp migrate` / `serve --migrate`, which need it with an external database.",
    )
    db_pool_size: int = Field(10, ge=1, le=200, description="Connections per process.")
    db_pool_timeout: float = Field(
        10.0, gt=0, le=300,
        description="Seconds a request waits for a free pooled connection before a 503.",
    )
    redis_url: SecretStr | None = Field(
        None, description="Rate-limit storage shared by all instances. Unset: in-process."
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated CIDRs of reverse proxies whose X-Forwarded-For we trust. "
        "Default: none.",
    )
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = Field(
        "x-forwarded-for",
        description="The one header trusted proxies write the client address into; the other "
        "is ignored, never merged.",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated extra browser origins allowed to call /mcp (the public "
        "URL's origin is always allowed).",
    )
    api_key_rate_limit: str = Field(
        "120/minute", description="Default per-API-key limit (`limits` notation)."
    )
    grant_rate_limit: str = Field(
        "300/minute", description="Per-OAuth-grant limit (`limits` notation)."
    )
    console_rate_limit: str = Field(
        "300/minute", description="Per-person limit on the web console's tool calls and "
        "page requests, in each organization (`limits` notation).")
    dcr_rate_limit: str = Field(
        "60/minute",
        description="Dynamic Client Registrations per source address (IPv6 folded to /64); "
        "generous, since AI platforms share a few egress addresses.",
    )
    dcr_global_rate_limit: str = Field(
        "600/minute", description="Dynamic Client Registrations per minute, all sources."
    )
    dcr_max_pending: int = Field(
        10000, ge=10,
        description="Most registrations that have not completed an authorization yet (they "
        "expire after 24 hours).",
    )
    oauth_private_schemes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["cursor", "vscode", "vscode-insiders", "windsurf"],
        description="Private-use redirect URI schemes clients may register (RFC 8252 §7.1).",
    )
    cimd_cache_min_ttl: int = Field(
        60, ge=0, le=3600,
        description="Shortest time a client's metadata document (CIMD) is used without "
        "fetching it again, whatever its cache headers say, seconds.")
    cimd_cache_max_ttl: int = Field(
        86400, ge=60, le=7 * 86400,
        description="Longest time a client's metadata document (and its key set) is used "
        "without fetching it again, seconds; without cache headers, an hour within the bounds.")
    cimd_new_client_rate_limit: str = Field(
        "30/minute",
        description="Metadata documents of clients Breeze has not seen fetched per source "
        "address (IPv6 folded to /64): a request naming a new document URL makes Breeze fetch "
        "it before anyone signs in.")
    cimd_stale_ttl: int = Field(
        86400, ge=0, le=7 * 86400,
        description="How long after it stops being fresh a client's metadata document is "
        "still used while its host cannot be reached, seconds.")
    cimd_allow_loopback_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Development and tests only (refused in production): comma-separated "
        "host names whose loopback addresses the metadata-document fetch may reach, such as "
        "`localhost`.")
    cimd_ca_bundle: Path | None = Field(
        None,
        description="Development and tests only (refused in production): a PEM file of "
        "certificate authorities trusted, besides the system's, by the metadata-document "
        "fetch.")
    max_form_bytes: int = Field(
        16 * 1024, ge=1024, le=1024 * 1024,
        description="Largest urlencoded form body (sign-in, consent, /token, /revoke, ...).",
    )
    max_form_fields: int = Field(
        32, ge=8, le=1000, description="Most fields one urlencoded form may carry."
    )
    auth_failure_rate_limit: str = Field(
        "30/minute",
        description="Failed bearer authentications per source address (IPv6 folded to /64).",
    )
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024,
        description="Largest request body accepted by /mcp and the REST API.",
    )
    session_key: SecretStr | None = Field(
        None, description="Signs CSRF tokens and derives the refresh-grace sealing key (32+ chars)."
    )
    mfa_encryption_key: SecretStr | None = Field(
        None,
        description="AES-256-GCM key for TOTP secrets: 32 bytes, urlsafe base64. Must differ "
        "from the session key.",
    )
    billing_webhook_secret: SecretStr | None = Field(
        None, description="HMAC secret of the billing provider's webhooks."
    )
    smtp_host: str | None = Field(None, description="SMTP server for the mail Breeze sends.")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port.")
    smtp_username: str | None = Field(None, description="SMTP login (optional).")
    smtp_password: SecretStr | None = Field(None, description="SMTP password (optional).")
    smtp_starttls: bool = Field(
        True, description="Require STARTTLS on the SMTP connection (port 465: implicit TLS). "
        "Turn off only for a server on the same host.")
    smtp_from: str = Field("Breeze MCP <no-reply@localhost>", description="From address.")
    email_verification_ttl: int = Field(
        24 * 3600, ge=600, le=30 * 86400,
        description="Lifetime of an email verification link, seconds.")
    password_reset_ttl: int = Field(
        3600, ge=300, le=86400,
        description="Lifetime of a password reset link, seconds.")
    invitation_ttl: int = Field(
        7 * 86400, ge=3600, le=30 * 86400,
        description="Lifetime of an invitation to join an organization, seconds.")
    signup_rate_limit: str = Field(
        "10/hour", description="Sign-ups, verification resends and password-reset requests "
        "per source address (limits notation).")
    access_token_ttl: int = Field(
        1800, ge=60, le=86400, description="OAuth access-token lifetime, seconds."
    )
    refresh_token_ttl: int = Field(
        30 * 86400, ge=3600, description="OAuth refresh-token lifetime, seconds."
    )
    refresh_grace: int = Field(
        30, ge=0, le=60, description="Seconds a just-rotated refresh token may be retried."
    )
    auth_code_ttl: int = Field(
        300, ge=30, le=600, description="Authorization-code lifetime, seconds."
    )
    session_idle_timeout: int = Field(
        7200, ge=300, le=30 * 86400,
        description="A web session unused for this many seconds ends (the session's absolute "
        "lifetime is BREEZE_SESSION_TTL).")
    session_ttl: int = Field(
        12 * 3600, ge=300, description="Web-session lifetime, seconds."
    )
    audit_seal_interval: float = Field(
        1.0, gt=0, le=300,
        description="Seconds between two passes of the audit chain's sealer (each committed "
        "audit entry of a tenant is chained within about this long).")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log verbosity."
    )

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL such as https://mcp.example.com")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be an origin (scheme, host, port) without a path")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not contain user information")
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError("has an invalid port") from exc
        # The default port is dropped, so the issuer, the resource and browsers' Origin
        # headers all spell the origin the same way.
        if port is None or (parts.scheme, port) in (("https", 443), ("http", 80)):
            return f"{parts.scheme}://{host}"
        return f"{parts.scheme}://{host}:{port}"

    @field_validator(
        "database_url", "migrate_database_url", "redis_url", "session_key",
        "mfa_encryption_key", "billing_webhook_secret", "smtp_host", "smtp_password",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("session_key")
    @classmethod
    def _check_session_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters of random data")
        return value

    @field_validator("cimd_allow_loopback_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().lower() for item in value.split(",") if item.strip()]
        return value

    @field_validator("cimd_ca_bundle", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cimd_ca_bundle")
    @classmethod
    def _check_ca_bundle(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        if not value.is_file():
            raise ValueError(f"{value} is not a file")
        try:
            ssl.create_default_context(cafile=str(value))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"{value} is not a PEM file of certificates ({exc})") from None
        return value

    @field_validator("oauth_private_schemes", mode="before")
    @classmethod
    def _split_schemes(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().lower() for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_key_rate_limit", "grant_rate_limit", "console_rate_limit",
                     "dcr_rate_limit", "cimd_new_client_rate_limit",
                     "dcr_global_rate_limit", "auth_failure_rate_limit", "signup_rate_limit")
    @classmethod
    def _check_limit(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate limit such as '120/minute'") from exc
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().rstrip("/") for item in value.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        problems = [p for p in map(proxy_range_problem, value) if p]
        if problems:
            # A client inside a trusted range could write its own address into the header.
            raise ValueError(
                "; ".join(problems) + ": list your proxies' own CIDRs (private, loopback and "
                "unique-local ranges of any size are fine; public ones up to /16 or /32)")
        return [str(ipaddress.ip_network(item, strict=False)) for item in value]

    @field_validator("mfa_encryption_key")
    @classmethod
    def _check_mfa_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _decode_aes_key(value.get_secret_value())
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _report_everything(
        cls, data: Any, handler: ModelWrapValidatorHandler[Settings]
    ) -> Settings:
        """Field errors and whole-configuration problems in one error, so an operator fixes
        them all in one go rather than one per start-up."""
        try:
            settings = handler(data)
        except ValidationError as exc:
            errors = exc.errors()
            failed = {str(err["loc"][0]) for err in errors if err["loc"]}
            raw = {k: _INVALID if k in failed else v for k, v in data.items()} if isinstance(
                data, Mapping) else {}
            problems = _whole_config_problems(raw)
            if not problems:
                raise
            details = [InitErrorDetails(type=err["type"], loc=err["loc"], input=err["input"],
                                        ctx=err.get("ctx", {})) for err in errors]
            raise ValidationError.from_exception_data(
                cls.__name__, details + _problem_details(problems, data)) from None
        problems = _whole_config_problems(
            {name: getattr(settings, name) for name in type(settings).model_fields})
        if problems:
            raise ValidationError.from_exception_data(
                cls.__name__, _problem_details(problems, data))
        return settings

    # Derived values -------------------------------------------------------------------------

    @property
    def mcp_url(self) -> str:
        """The protected resource: ``<public origin>/mcp``."""
        return f"{self.public_url}/mcp"

    @property
    def issuer(self) -> str:
        """OAuth issuer: the public origin, no trailing slash."""
        return self.public_url

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    def secret(
        self, name: Literal["session_key", "mfa_encryption_key", "billing_webhook_secret"]
    ) -> str:
        value: SecretStr | None = getattr(self, name)
        if value is None:  # pragma: no cover - load_settings always fills them
            raise ConfigError(f"BREEZE_{name.upper()} is not set")
        return value.get_secret_value()

    def mfa_key_bytes(self) -> bytes:
        return _decode_aes_key(self.secret("mfa_encryption_key"))


def _decode_aes_key(value: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("must be urlsafe base64") from exc
    if len(raw) != 32:
        raise ValueError("must decode to exactly 32 bytes")
    return raw


#: Settings that let the metadata-document fetch reach this machine or trust a private CA.
_DEVELOPMENT_ONLY = ("cimd_allow_loopback_hosts", "cimd_ca_bundle")
_PRODUCTION_SECRETS = ("session_key", "mfa_encryption_key", "billing_webhook_secret")
_INVALID = object()  # set, but refused by its own validator (reported there)


def _given(value: object) -> str | None:
    """A configured text value, raw (from the environment) or validated; blank is unset."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        return value.strip() or None
    return None


def _is_set(values: Mapping[str, object], name: str) -> bool:
    return values.get(name) is _INVALID or _given(values.get(name)) is not None


def _whole_config_problems(values: Mapping[str, object]) -> list[str]:
    """Problems no single setting shows. ``values`` may be raw: only the valid ones are given."""
    problems = []
    session, mfa = _given(values.get("session_key")), _given(values.get("mfa_encryption_key"))
    if mfa is not None and mfa == session:
        problems.append("BREEZE_MFA_ENCRYPTION_KEY must differ from BREEZE_SESSION_KEY "
                        "(TOTP secrets are encrypted under a key used for nothing else)")
    if _given(values.get("mode")) == "production":
        missing = [f"BREEZE_{name.upper()}" for name in _PRODUCTION_SECRETS
                   if not _is_set(values, name)]
        if missing:
            problems.append("production mode needs these secrets set: " + ", ".join(missing))
        if not _is_set(values, "database_url"):
            problems.append("production mode needs BREEZE_DATABASE_URL")
        for name in _DEVELOPMENT_ONLY:
            if values.get(name):
                problems.append(f"BREEZE_{name.upper()} is for development and tests only; "
                                "production mode refuses it")
    low, high = values.get("cimd_cache_min_ttl"), values.get("cimd_cache_max_ttl")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        problems.append("BREEZE_CIMD_CACHE_MIN_TTL must not exceed BREEZE_CIMD_CACHE_MAX_TTL")
    return problems


def _problem_details(problems: list[str], data: object) -> list[InitErrorDetails]:
    return [InitErrorDetails(type=PydanticCustomError("config", "{problem}", {"problem": p}),
                             loc=(), input=data) for p in problems]


_GENERATED = {
    "session_key": lambda: secrets.token_urlsafe(48),
    "mfa_encryption_key": lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    "billing_webhook_secret": lambda: secrets.token_urlsafe(32),
}


def _persisted_secret(state_dir: Path, name: str) -> str:
    """Read ``<state_dir>/keys/<name>``, creating it (mode 0600) on first use."""
    keys = state_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = keys / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = _GENERATED[name]()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    return value


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and ``overrides``), with local secrets filled in.

    In development mode, any secret not configured is read from (or generated into) the state
    directory. In production mode nothing is generated: the validator has already refused a
    missing secret.
    """
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
    if settings.mode == "production":
        return settings
    filled: dict[str, object] = {}
    for name in _GENERATED:
        if getattr(settings, name) is None:
            filled[name] = _persisted_secret(settings.state_dir, name)
    if not filled:
        return settings
    try:
        return Settings(**{**overrides, **filled})  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = "".join(str(part) for part in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"BREEZE_{loc.upper()}: {msg}" if loc else msg)
    if len(lines) == 1:
        return lines[0]
    return f"the configuration has {len(lines)} problems:\n" + "\n".join(
        f"  - {line}" for line in lines)
