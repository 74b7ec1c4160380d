"""The CLI as a user runs it: a new process, real database, one-line errors, --json."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg.errors import IntegrityError
from sqlalchemy.engine import make_url

from breeze_mcp.auth.accounts import Tenant, create_user
from breeze_mcp.db import Database
from breeze_mcp.db.engine import sqlalchemy_url
from breeze_mcp.db.setup import describe_url
from tests.support import REPO, ProvisionedDatabase, free_port, run_cli

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
    # Any member may hold a key, within their role: a read-only member's reaches Tier 1 only.
    one_error_line(run_cli("api-key", "create", "--tenant", slug, "--name", "x", "--scopes",
                           "ai:read,ai:write", "--created-by", viewer, env=env),
                   "role readonly cannot grant ai:write")
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


def new_tenant_with_owner(env: dict[str, str], label: str) -> str:
    """A fresh tenant and its owner, through the CLI; returns the slug."""
    slug = f"{label}-{uuid.uuid4().hex[:6]}"
    assert run_cli("tenant", "create", label, "--slug", slug, env=env).returncode == 0
    assert run_cli("user", "create", "--tenant", slug, "--email", f"o-{slug}@example.com",
                   "--role", "owner", "--password-stdin", env=env,
                   stdin=PASSWORD).returncode == 0
    return slug


def run_at_once(commands: list[list[str]], env: dict[str, str]) -> list[Any]:
    """Start every command as its own process at the same moment; wait for all."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda command: run_cli(*command, env=env, timeout=240),
                             commands))


@pytest.mark.req("FH-CLI-DATABASE")
def test_cli_names_the_database_on_stderr(env: dict[str, str],
                                          test_db: ProvisionedDatabase) -> None:
    proc = run_cli("tenant", "list", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "tenants" in json.loads(proc.stdout)  # stdout stays pure JSON
    url = make_url(test_db.runtime_url)
    assert proc.stderr.splitlines() == [f"breeze-mcp: using {describe_url(test_db.runtime_url)}"]
    assert url.username and url.username in proc.stderr
    assert str(url.database) in proc.stderr
    assert url.password and url.password not in proc.stderr


@pytest.mark.req("FH-CLI-KEYS")
def test_api_key_states_limits_and_second_revoke(
    env: dict[str, str], test_db: ProvisionedDatabase
) -> None:
    slug = new_tenant_with_owner(env, "states")
    for bad in ("0/minute", "0/second", "-1/minute", "0 per hour", "lots", "/minute"):
        proc = run_cli("api-key", "create", "--tenant", slug, "--name", "x", "--scopes",
                       "ai:read", f"--rate-limit={bad}", env=env)
        one_error_line(proc, "positive number of calls per period")
    assert json.loads(run_cli("api-key", "list", "--tenant", slug, "--json",
                              env=env).stdout) == {"api_keys": []}

    def create(name: str) -> dict[str, Any]:
        proc = run_cli("api-key", "create", "--tenant", slug, "--name", name, "--scopes",
                       "ai:read", "--expires-in", "1", "--rate-limit", "1/minute", "--json",
                       env=env)
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    active, expired, revoked = create("active"), create("expired"), create("revoked")
    engine = sa.create_engine(sqlalchemy_url(test_db.owner_url))
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT set_config('breeze.tenant_id', :t, true)"),
                     {"t": expired["tenant_id"]})
        conn.execute(sa.text("UPDATE api_keys SET expires_at = now() - interval '1 minute'"
                             " WHERE id = :i"), {"i": expired["id"]})
    engine.dispose()

    first = run_cli("api-key", "revoke", revoked["id"], "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["already_revoked"] is False
    again = run_cli("api-key", "revoke", revoked["id"], env=env)
    assert again.returncode == 0, again.stderr
    assert "already revoked" in again.stdout and "nothing changed" in again.stdout
    again_json = json.loads(run_cli("api-key", "revoke", revoked["id"], "--json",
                                    env=env).stdout)
    assert again_json["already_revoked"] is True
    assert again_json["revoked_at"] == json.loads(first.stdout)["revoked_at"]  # kept

    listed = json.loads(run_cli("api-key", "list", "--tenant", slug, "--json",
                                env=env).stdout)["api_keys"]
    assert {k["name"]: k["status"] for k in listed} == {
        "active": "active", "expired": "expired", "revoked": "revoked"}
    text = run_cli("api-key", "list", "--tenant", slug, env=env).stdout
    states = {line.split()[0]: line.split()[1] for line in text.splitlines()}
    assert states == {active["id"]: "active", expired["id"]: "expired",
                      revoked["id"]: "revoked"}


@pytest.mark.req("FH-BROKEN-PIPE")
@pytest.mark.parametrize(("args", "status"), [
    (("tenant", "list", "--json"), 141),
    (("tenant", "list"), 141),
    (("--help",), 0),  # argparse itself ignores a failed write of its help
])
def test_output_into_a_closed_pipe_exits_quietly(env: dict[str, str], args: tuple[str, ...],
                                                 status: int) -> None:
    assert run_cli("tenant", "create", "Pipe", "--slug", f"pipe-{uuid.uuid4().hex[:6]}",
                   env=env).returncode == 0
    # The reader has already gone (as `head` has after its first bytes): every write fails.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "breeze_mcp", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                              timeout=120, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert "Exception ignored" not in proc.stderr

    # And the pipeline a user types.
    shell = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m breeze_mcp {' '.join(args)} | head -c1 >/dev/null;"
         " echo ${PIPESTATUS[0]} >&2"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)
    assert shell.stderr.strip().splitlines()[-1] in ("0", "141"), shell.stderr
    assert "Traceback" not in shell.stderr and "Exception ignored" not in shell.stderr


@pytest.mark.req("FH-SERVE-BIND")
def test_serve_on_a_taken_port_is_one_clear_line(env: dict[str, str]) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = run_cli("serve", "--port", str(port), env=env, timeout=60)
        one_error_line(proc, f"port {port} on 127.0.0.1 is already in use")
        assert "--port or BREEZE_PORT" in proc.stderr
        assert "serving" not in proc.stdout
        from_env = run_cli("serve", env={**env, "BREEZE_PORT": str(port)}, timeout=60)
        one_error_line(from_env, "--port or BREEZE_PORT")


@pytest.mark.req("FH-SERVE-BIND")
def test_serve_announces_only_once_it_accepts_connections(env: dict[str, str]) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "breeze_mcp", "serve", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env, cwd=REPO)
    try:
        assert server.stdout is not None
        seen = []
        for line in server.stdout:
            seen.append(line)
            if " serving " in line:
                break
        else:
            raise AssertionError("".join(seen))
        # At the moment the line is printed, the port answers and the application is up.
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        health = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                 f"http://127.0.0.1:{port}/healthz"],
                                capture_output=True, text=True, timeout=10, check=False)
        assert health.stdout == "200"
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    assert server.returncode == 0


@pytest.mark.req("FH-CLI-CONCURRENT")
def test_commands_at_once_against_one_database(env: dict[str, str]) -> None:
    slug = new_tenant_with_owner(env, "burst")
    commands = [["migrate", "--json"]] * 3 + [
        ["api-key", "create", "--tenant", slug, "--name", f"script-{i}", "--scopes", "ai:read",
         "--json"] for i in range(3)
    ] + [["tenant", "list", "--json"]] * 3
    for command, proc in zip(commands, run_at_once(commands, env), strict=True):
        assert proc.returncode == 0, (command, proc.stderr)
        json.loads(proc.stdout)
    listed = json.loads(run_cli("api-key", "list", "--tenant", slug, "--json",
                                env=env).stdout)["api_keys"]
    assert sorted(k["name"] for k in listed) == ["script-0", "script-1", "script-2"]


@pytest.mark.anyio
@pytest.mark.req("FH-SERVE-BIND")
async def test_the_bound_socket_serves_connections_with_nagle_off() -> None:
    """serve binds its socket itself; asyncio must still turn Nagle off on what it accepts
    (it does so only for sockets whose protocol says TCP), or each response waits on a
    delayed ACK."""
    import asyncio

    from breeze_mcp.cli import _listen

    seen: dict[str, int] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted = writer.get_extra_info("socket")
        seen["nodelay"] = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        writer.close()

    listener = _listen("127.0.0.1", 0)
    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        port = listener.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.read()
        writer.close()
    assert seen["nodelay"] != 0
