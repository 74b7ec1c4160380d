"""The CLI as a user runs it: a new process, real database, one-line errors, --json."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from breeze_mcp.accounts import Tenant, create_user
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from tests.support import ProvisionedDatabase, run_cli

PASSWORD = "a-Strong-passphrase-42\n"


@pytest.fixture
def env(test_db: ProvisionedDatabase, tmp_path: Path) -> dict[str, str]:
    return test_db.env(tmp_path / "state")


def one_error_line(proc, needle: str) -> None:
    """Exit 1 and one error line on stderr (after, at most, the line naming the database)."""
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    if lines and lines[0].startswith("breeze-mcp: using "):
        lines = lines[1:]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("breeze-mcp: error: ") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def users_with_email(test_db: ProvisionedDatabase, email: str) -> int:
    """How many users have this email (case-insensitively), as seen by the owner."""
    engine = sa.create_engine(sqlalchemy_url(test_db.owner_url))
    with engine.connect() as conn:
        users = conn.execute(sa.text("SELECT count(*) FROM users WHERE lower(email) = lower(:e)"),
                             {"e": email}).scalar_one()
    engine.dispose()
    return int(users)


@pytest.mark.req("CLI-COMMANDS")
def test_help_lists_commands(env: dict[str, str]) -> None:
    proc = run_cli("--help", env=env)
    assert proc.returncode == 0
    for cmd in ("serve", "migrate", "tenant", "user", "demo-data"):
        assert cmd in proc.stdout
    sub = run_cli("tenant", "--help", env=env)
    assert "create" in sub.stdout and "list" in sub.stdout
    user = run_cli("user", "create", "--help", env=env)
    for opt in ("--tenant", "--email", "--role", "--password-stdin", "--json"):
        assert opt in user.stdout
    mig = run_cli("migrate", "--help", env=env)
    assert "BREEZE_MIGRATE_DATABASE_URL" in mig.stdout and "runtime role" in mig.stdout


@pytest.mark.req("CLI-COMMANDS")
def test_tenant_user_demo_flow_with_json(env: dict[str, str], test_db: ProvisionedDatabase) -> None:
    slug = f"cli-{uuid.uuid4().hex[:6]}"
    proc = run_cli("tenant", "create", "CLI Test MSP", "--slug", slug, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    tenant = json.loads(proc.stdout)
    assert tenant["slug"] == slug and tenant["status"] == "active"
    uuid.UUID(tenant["id"])

    email = f"{slug}@example.com"
    proc = run_cli("user", "create", "--tenant", slug, "--email", email, "--role", "admin",
                   "--password-stdin", "--json", env=env, stdin=PASSWORD)
    assert proc.returncode == 0, proc.stderr
    user = json.loads(proc.stdout)
    assert user["email"] == email and user["role"] == "admin"
    assert user["tenant_id"] == tenant["id"]

    proc = run_cli("demo-data", "--tenant", tenant["id"], "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"devices_created": 10, "alerts_created": 8}
    again = run_cli("demo-data", "--tenant", slug, "--json", env=env)
    assert json.loads(again.stdout) == {"devices_created": 0, "alerts_created": 0}

    listed = json.loads(run_cli("tenant", "list", "--json", env=env).stdout)
    assert any(t["slug"] == slug for t in listed["tenants"])

    proc = run_cli("migrate", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["done"][0].startswith("schema at revision")


@pytest.mark.req("CLI-BAD-INPUT")
def test_bad_input_is_one_line_and_writes_nothing(
    env: dict[str, str], test_db: ProvisionedDatabase
) -> None:
    slug = f"bad-{uuid.uuid4().hex[:6]}"
    assert run_cli("tenant", "create", "Bad Input", "--slug", slug, env=env).returncode == 0
    one_error_line(run_cli("tenant", "create", "Again", "--slug", slug, env=env),
                   "already exists")

    email = f"{slug}@example.com"
    one_error_line(
        run_cli("user", "create", "--tenant", "no-such-tenant", "--email", email,
                "--role", "owner", "--password-stdin", env=env, stdin=PASSWORD),
        "unknown tenant 'no-such-tenant'",
    )
    one_error_line(
        run_cli("user", "create", "--tenant", slug, "--email", email, "--role", "owner",
                "--password-stdin", env=env, stdin="short\n"),
        "at least 12 characters",
    )
    one_error_line(
        run_cli("user", "create", "--tenant", slug, "--email", "not-an-email", "--role",
                "owner", "--password-stdin", env=env, stdin=PASSWORD),
        "not a valid email",
    )
    one_error_line(
        run_cli("user", "create", "--tenant", slug, "--email", email, "--role", "owner",
                env=env, stdin=""),
        "--password-stdin",
    )
    assert users_with_email(test_db, email) == 0

    ok = run_cli("user", "create", "--tenant", slug, "--email", email, "--role", "owner",
                 "--password-stdin", env=env, stdin=PASSWORD)
    assert ok.returncode == 0, ok.stderr
    dup = run_cli("user", "create", "--tenant", slug, "--email", email.upper(), "--role",
                  "owner", "--password-stdin", "--json", env=env, stdin=PASSWORD)
    one_error_line(dup, "already exists")
    assert json.loads(dup.stdout) == {"error": dup.stderr.strip().splitlines()[-1].removeprefix(
        "breeze-mcp: error: ")}
    assert users_with_email(test_db, email) == 1

    one_error_line(run_cli("demo-data", "--tenant", "nope", env=env), "unknown tenant")
    usage = run_cli("user", "create", "--tenant", slug, "--email", email, "--role", "god",
                    env=env)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


@pytest.mark.req("CLI-BAD-INPUT")
@pytest.mark.anyio
async def test_failure_after_first_insert_leaves_nothing(
    db: Database, test_db: ProvisionedDatabase
) -> None:
    phantom = Tenant(id=uuid.uuid4(), slug="phantom", name="Phantom", status="active")
    email = f"phantom-{uuid.uuid4().hex[:6]}@example.com"
    # The user row is inserted first; the membership then fails (no such tenant): the whole
    # transaction rolls back.
    with pytest.raises(IntegrityError):
        await create_user(db, phantom, email=email, password="a-Strong-passphrase-42",
                          role="owner")
    assert users_with_email(test_db, email) == 0


@pytest.mark.req("CLI-COMMANDS")
def test_set_password(env: dict[str, str]) -> None:
    slug = f"pw-{uuid.uuid4().hex[:6]}"
    assert run_cli("tenant", "create", "PW", "--slug", slug, env=env).returncode == 0
    email = f"{slug}@example.com"
    assert run_cli("user", "create", "--tenant", slug, "--email", email, "--role", "readonly",
                   "--password-stdin", env=env, stdin=PASSWORD).returncode == 0
    proc = run_cli("user", "set-password", "--email", email, "--password-stdin", env=env,
                   stdin="another-Strong-pass-7\n")
    assert proc.returncode == 0, proc.stderr
    one_error_line(run_cli("user", "set-password", "--email", "ghost@example.com",
                           "--password-stdin", env=env, stdin="another-Strong-pass-7\n"),
                   "no user")


@pytest.mark.req("KEYS-SCOPES", "KEYS-LIFECYCLE", "CLI-COMMANDS")
def test_api_key_cli(env: dict[str, str]) -> None:
    slug = f"keys-{uuid.uuid4().hex[:6]}"
    assert run_cli("tenant", "create", "Keys", "--slug", slug, env=env).returncode == 0
    owner = f"owner-{slug}@example.com"
    viewer = f"viewer-{slug}@example.com"
    for email, role in ((owner, "owner"), (viewer, "readonly")):
        assert run_cli("user", "create", "--tenant", slug, "--email", email, "--role", role,
                       "--password-stdin", env=env, stdin=PASSWORD).returncode == 0

    for bad, message in (("*", "unknown scope '*'"), ("ai:admin", "unknown scope"),
                         ("ai:read,openid", "unknown scope 'openid'"), ("", "at least one")):
        one_error_line(run_cli("api-key", "create", "--tenant", slug, "--name", "x",
                               "--scopes", bad, env=env), message)
    one_error_line(run_cli("api-key", "create", "--tenant", slug, "--name", "x", "--scopes",
                           "ai:read", "--created-by", viewer, env=env),
                   "only owners and admins")
    one_error_line(run_cli("api-key", "create", "--tenant", slug, "--name", "x", "--scopes",
                           "ai:read", "--expires-in", "0", env=env), "--expires-in")
    one_error_line(run_cli("api-key", "create", "--tenant", slug, "--name", "x", "--scopes",
                           "ai:read", "--rate-limit", "lots", env=env), "invalid rate limit")
    assert json.loads(run_cli("api-key", "list", "--tenant", slug, "--json",
                              env=env).stdout) == {"api_keys": []}

    proc = run_cli("api-key", "create", "--tenant", slug, "--name", "ci", "--scopes",
                   "ai:write,ai:read,ai:read", "--expires-in", "30", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    created = json.loads(proc.stdout)
    key = created["key"]
    assert key.startswith("bzk_") and len(key) > 70
    assert created["scopes"] == ["ai:read", "ai:write"]
    assert created["expires_at"] is not None and created["revoked_at"] is None
    assert created["prefix"].startswith("bzk_") and key not in json.dumps(created["prefix"])

    listed = json.loads(run_cli("api-key", "list", "--tenant", slug, "--json",
                                env=env).stdout)["api_keys"]
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0] and key not in json.dumps(listed)

    revoked = run_cli("api-key", "revoke", created["id"], "--json", env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at"] is not None
    one_error_line(run_cli("api-key", "revoke", str(uuid.uuid4()), env=env), "no API key")
    one_error_line(run_cli("api-key", "revoke", "nope", env=env), "not an API key id")


@pytest.mark.req("KEYS-LIFECYCLE")
def test_api_key_is_stored_only_as_digest(
    env: dict[str, str], test_db: ProvisionedDatabase
) -> None:
    import hashlib

    slug = f"dig-{uuid.uuid4().hex[:6]}"
    assert run_cli("tenant", "create", "Digest", "--slug", slug, env=env).returncode == 0
    assert run_cli("user", "create", "--tenant", slug, "--email", f"o-{slug}@example.com",
                   "--role", "owner", "--password-stdin", env=env, stdin=PASSWORD).returncode == 0
    created = json.loads(run_cli("api-key", "create", "--tenant", slug, "--name", "d",
                                 "--scopes", "ai:read", "--json", env=env).stdout)
    engine = sa.create_engine(sqlalchemy_url(test_db.owner_url))
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT set_config('breeze.tenant_id', :t, true)"),
                     {"t": created["tenant_id"]})
        row = conn.execute(sa.text("SELECT * FROM api_keys WHERE id = :i"),
                           {"i": created["id"]}).one()
        audit_rows = conn.execute(sa.text(
            "SELECT parameters::text FROM audit_log WHERE credential_id = :i"),
            {"i": created["id"]}).all()
    engine.dispose()
    assert bytes(row.digest) == hashlib.sha256(created["key"].encode()).digest()
    assert created["key"] not in " ".join(str(v) for v in row)
    assert audit_rows and all(created["key"] not in r[0] for r in audit_rows)
