"""Settings: generated local secrets, production refusals, key separation, proxy CIDRs."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from breeze_mcp.config import ConfigError, Settings, load_settings

KEY_A = base64.urlsafe_b64encode(b"a" * 32).decode()
KEY_B = base64.urlsafe_b64encode(b"b" * 32).decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BREEZE_"):
            monkeypatch.delenv(name)


@pytest.mark.req("CFG-SECRETS")
def test_development_generates_and_persists_secrets(tmp_path: Path) -> None:
    first = load_settings(state_dir=tmp_path)
    second = load_settings(state_dir=tmp_path)
    for name in ("session_key", "mfa_encryption_key", "billing_webhook_secret"):
        assert first.secret(name) == second.secret(name)
        path = tmp_path / "keys" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.mfa_key_bytes()) == 32
    assert first.secret("session_key") != first.secret("mfa_encryption_key")
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700


@pytest.mark.req("CFG-SECRETS")
def test_environment_overrides_and_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BREEZE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("BREEZE_PUBLIC_URL", "https://MCP.Example.com/")
    monkeypatch.setenv("BREEZE_ACCESS_TOKEN_TTL", "900")
    monkeypatch.setenv("BREEZE_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1")
    s = load_settings()
    assert s.public_url == "https://mcp.example.com"
    assert s.mcp_url == "https://mcp.example.com/mcp"
    assert s.access_token_ttl == 900
    assert s.trusted_proxies == ["10.0.0.0/8", "192.168.1.1/32"]
    assert s.state_dir == tmp_path


@pytest.mark.req("CFG-SECRETS")
def test_production_refuses_missing_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(mode="production", state_dir=tmp_path)
    message = str(err.value)
    for name in ("BREEZE_SESSION_KEY", "BREEZE_MFA_ENCRYPTION_KEY",
                 "BREEZE_BILLING_WEBHOOK_SECRET"):
        assert name in message
    assert not (tmp_path / "keys").exists(), "production must not generate keys"


@pytest.mark.req("CFG-SECRETS")
def test_production_with_everything_set(tmp_path: Path) -> None:
    s = load_settings(
        mode="production", state_dir=tmp_path, session_key="s" * 48,
        mfa_encryption_key=KEY_A, billing_webhook_secret="w" * 32,
        database_url="postgresql://app@db/breeze",
    )
    assert s.mfa_key_bytes() == b"a" * 32
    with pytest.raises(ConfigError, match="BREEZE_DATABASE_URL"):
        load_settings(mode="production", state_dir=tmp_path, session_key="s" * 48,
                      mfa_encryption_key=KEY_A, billing_webhook_secret="w" * 32)


@pytest.mark.req("CFG-KEYS-DISTINCT", "SEED-MFA-KEY")
def test_mfa_key_must_differ_from_session_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must differ"):
        load_settings(state_dir=tmp_path, session_key=KEY_A, mfa_encryption_key=KEY_A)
    ok = load_settings(state_dir=tmp_path, session_key=KEY_B, mfa_encryption_key=KEY_A)
    assert ok.mfa_key_bytes() == b"a" * 32


@pytest.mark.req("SEED-MFA-KEY")
@pytest.mark.parametrize("bad", ["short", base64.urlsafe_b64encode(b"x" * 16).decode(), "!!!"])
def test_mfa_key_must_be_32_bytes(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="MFA_ENCRYPTION_KEY"):
        load_settings(state_dir=tmp_path, mfa_encryption_key=bad)


@pytest.mark.req("CFG-PROXIES")
@pytest.mark.parametrize("bad", ["*", "0.0.0.0/0", "::/0", "not-an-ip", "10.0.0.0/8,*"])
def test_trusted_proxies_refuse_wildcards(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="BREEZE_TRUSTED_PROXIES"):
        load_settings(state_dir=tmp_path, trusted_proxies=bad)


@pytest.mark.parametrize("bad", ["ftp://x", "https://x/mcp", "not a url", "https://x?a=1"])
def test_public_url_must_be_an_origin(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="BREEZE_PUBLIC_URL"):
        load_settings(state_dir=tmp_path, public_url=bad)


def test_settings_fields_are_documented_in_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [f"BREEZE_{name.upper()}" for name in Settings.model_fields
               if f"BREEZE_{name.upper()}" not in readme]
    assert not missing, f"settings missing from the README's configuration table: {missing}"
