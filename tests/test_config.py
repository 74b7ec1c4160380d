"""Settings: generated local secrets, production refusals, key separation, proxy CIDRs."""

from __future__ import annotations

import base64
import ipaddress
import os
import stat
from pathlib import Path

import pytest

from breeze_mcp.config import (
    ConfigError,
    Settings,
    load_settings,
    proxy_range_problem,
    takes_in_public_addresses,
)
from tests.support import run_cli

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


@pytest.mark.req("HARD-PROXY-RANGES")
@pytest.mark.parametrize(
    "cidr",
    [
        # Private, loopback, link-local, carrier-grade NAT and unique-local: any size.
        "10.0.0.0/8", "10.1.2.3", "172.16.0.0/12", "172.20.0.0/14", "192.168.0.0/16",
        "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "::1", "fc00::/7", "fd00::/8",
        "fe80::/10",
        # Public, but one provider's block at most.
        "203.0.113.0/24", "198.18.0.0/16", "2001:db8::/32", "2606:4700::/32", "8.8.8.8",
    ],
)
def test_trusted_proxy_ranges_allowed(tmp_path: Path, cidr: str) -> None:
    assert proxy_range_problem(cidr) is None
    assert load_settings(state_dir=tmp_path, trusted_proxies=cidr).trusted_proxies


@pytest.mark.req("HARD-PROXY-RANGES")
@pytest.mark.parametrize(
    "cidr",
    [
        "0.0.0.0/1", "128.0.0.0/1",  # together, every IPv4 address
        "10.0.0.0/7",  # starts private, but holds all of 11.0.0.0/8
        "172.16.0.0/11",  # normalised to 172.0.0.0/11: 172.0-15 are public
        "192.168.0.0/15",  # holds 192.169.0.0/16
        "100.0.0.0/9",  # next to carrier-grade NAT, public
        "8.0.0.0/8", "203.0.0.0/15",
        "::/1", "fc00::/6",  # wider than unique-local: takes in fe00::/9 and ff00::/8
        "2000::/3", "2001:db8::/31",
    ],
)
def test_trusted_proxy_ranges_taking_in_public_space_refused(tmp_path: Path, cidr: str) -> None:
    assert "takes in public addresses" in (proxy_range_problem(cidr) or "")
    with pytest.raises(ConfigError, match=r"BREEZE_TRUSTED_PROXIES: .*public addresses"):
        load_settings(state_dir=tmp_path, trusted_proxies=f"10.0.0.0/8,{cidr}")


@pytest.mark.req("HARD-PROXY-RANGES")
@pytest.mark.parametrize("cidr", ["::ffff:0:0/96", "::ffff:10.0.0.1"])
def test_ipv4_mapped_proxy_ranges_refused(tmp_path: Path, cidr: str) -> None:
    # Peers are compared as IPv4, so a mapped range would silently never match.
    with pytest.raises(ConfigError, match=r"BREEZE_TRUSTED_PROXIES: .*write it as IPv4"):
        load_settings(state_dir=tmp_path, trusted_proxies=cidr)


@pytest.mark.req("HARD-PROXY-RANGES")
def test_takes_in_public_addresses_over_the_whole_range() -> None:
    assert not takes_in_public_addresses(ipaddress.ip_network("10.0.0.0/8"))
    assert takes_in_public_addresses(ipaddress.ip_network("10.0.0.0/7"))
    assert not takes_in_public_addresses(ipaddress.ip_network("fd12:3456::/32"))
    assert takes_in_public_addresses(ipaddress.ip_network("fc00::/6"))


BROKEN_PRODUCTION = {
    "BREEZE_MODE": "production",
    "BREEZE_TRUSTED_PROXIES": "0.0.0.0/1,128.0.0.0/1",
    "BREEZE_PORT": "99999",
    "BREEZE_SESSION_KEY": "s" * 48,
}
# Every one of them, in one message: field errors and whole-configuration problems alike.
EXPECTED_PROBLEMS = (
    "BREEZE_TRUSTED_PROXIES: '0.0.0.0/1' takes in public addresses",
    "'128.0.0.0/1' takes in public addresses",
    "BREEZE_PORT: ",
    "production mode needs these secrets set: BREEZE_MFA_ENCRYPTION_KEY, "
    "BREEZE_BILLING_WEBHOOK_SECRET",
    "production mode needs BREEZE_DATABASE_URL",
)


@pytest.mark.req("FH-CONFIG-ALL")
def test_production_errors_reported_all_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in BROKEN_PRODUCTION.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings(state_dir=tmp_path)
    message = str(err.value)
    assert message.startswith("the configuration has 4 problems:")
    for expected in EXPECTED_PROBLEMS:
        assert expected in message
    # A secret that is set but malformed is reported as malformed, not as missing.
    with pytest.raises(ConfigError) as err:
        load_settings(state_dir=tmp_path, mfa_encryption_key="short")
    assert "BREEZE_MFA_ENCRYPTION_KEY: must be urlsafe base64" in str(err.value)
    assert "secrets set: BREEZE_BILLING_WEBHOOK_SECRET\n" in str(err.value)
    # Only whole-configuration problems: still all of them.
    monkeypatch.delenv("BREEZE_TRUSTED_PROXIES")
    monkeypatch.delenv("BREEZE_PORT")
    with pytest.raises(ConfigError) as err:
        load_settings(state_dir=tmp_path, mfa_encryption_key="s" * 48)
    assert str(err.value).splitlines()[1:] == [
        "  - BREEZE_MFA_ENCRYPTION_KEY: must decode to exactly 32 bytes",
        "  - production mode needs these secrets set: BREEZE_BILLING_WEBHOOK_SECRET",
        "  - production mode needs BREEZE_DATABASE_URL",
    ]


@pytest.mark.req("FH-CONFIG-ALL")
def test_cli_reports_every_configuration_error_at_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BREEZE_")}
    env.update(BROKEN_PRODUCTION, BREEZE_STATE_DIR=str(tmp_path))
    result = run_cli("api-key", "list", "--tenant", "demo", env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("breeze-mcp: error: the configuration has 4 problems:\n")
    for expected in EXPECTED_PROBLEMS:
        assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "keys").exists()
