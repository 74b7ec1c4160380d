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
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["ConfigError", "Settings", "default_state_dir", "load_settings"]


class ConfigError(Exception):
    """The configuration cannot be used; the message says which setting and why."""


def default_state_dir() -> Path:
    """Per-user state folder: ``$XDG_STATE_HOME/breeze-mcp`` or ``~/.local/state/breeze-mcp``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "breeze-mcp"


_FORBIDDEN_PROXY_NETS = {"*", "0.0.0.0/0", "::/0"}


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
    smtp_host: str | None = Field(None, description="SMTP server for verification mail.")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port.")
    smtp_username: str | None = Field(None, description="SMTP login (optional).")
    smtp_password: SecretStr | None = Field(None, description="SMTP password (optional).")
    smtp_starttls: bool = Field(True, description="Use STARTTLS when the server offers it.")
    smtp_from: str = Field("Breeze MCP <no-reply@localhost>", description="From address.")
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
    session_ttl: int = Field(
        12 * 3600, ge=300, description="Web-session lifetime, seconds."
    )
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

    @field_validator("oauth_private_schemes", mode="before")
    @classmethod
    def _split_schemes(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().lower() for item in value.split(",") if item.strip()]
        return value

    @field_validator("api_key_rate_limit", "grant_rate_limit", "dcr_rate_limit",
                     "dcr_global_rate_limit", "auth_failure_rate_limit")
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
        checked: list[str] = []
        for item in value:
            if item in _FORBIDDEN_PROXY_NETS:
                raise ValueError(f"{item!r} would trust every address; list your proxies' CIDRs")
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address or CIDR") from exc
            if net.prefixlen == 0:
                raise ValueError(f"{item!r} would trust every address; list your proxies' CIDRs")
            checked.append(str(net))
        return checked

    @model_validator(mode="after")
    def _check_keys(self) -> Settings:
        if self.mfa_encryption_key is not None:
            _decode_aes_key(self.mfa_encryption_key.get_secret_value())
        if (
            self.mfa_encryption_key is not None
            and self.session_key is not None
            and self.mfa_encryption_key.get_secret_value() == self.session_key.get_secret_value()
        ):
            raise ValueError(
                "BREEZE_MFA_ENCRYPTION_KEY must differ from BREEZE_SESSION_KEY "
                "(TOTP secrets are encrypted under a key used for nothing else)"
            )
        if self.mode == "production":
            missing = [
                f"BREEZE_{name.upper()}"
                for name in ("session_key", "mfa_encryption_key", "billing_webhook_secret")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    "production mode needs these secrets set: " + ", ".join(missing)
                )
            if self.database_url is None:
                raise ValueError("production mode needs BREEZE_DATABASE_URL")
        return self

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
        raise ValueError("BREEZE_MFA_ENCRYPTION_KEY must be urlsafe base64") from exc
    if len(raw) != 32:
        raise ValueError("BREEZE_MFA_ENCRYPTION_KEY must decode to exactly 32 bytes")
    return raw


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
    from pydantic import ValidationError

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


def _format_validation_error(exc: Exception) -> str:
    from pydantic import ValidationError

    assert isinstance(exc, ValidationError)
    lines = []
    for err in exc.errors():
        loc = "".join(str(part) for part in err["loc"])
        name = f"BREEZE_{loc.upper()}" if loc else "configuration"
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {msg}")
    return "; ".join(lines)
