"""The zero-configuration path: embedded PostgreSQL in the state directory, as `make run` uses it.

These tests start real server processes and real clusters, exactly as a new user would.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from breeze_mcp.auth.passwords import verify_password
from breeze_mcp.db.embedded import EmbeddedPostgres
from breeze_mcp.db.engine import sqlalchemy_url
from tests.support import REPO, free_port, run_cli, wait_for
from tests.test_cli import PASSWORD, run_at_once


def embedded_env(state: Path, port: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BREEZE_")}
    env["BREEZE_STATE_DIR"] = str(state)
    if port:
        env["BREEZE_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    return env


class ServeProcess:
    def __init__(self, state: Path) -> None:
        self.port = free_port()
        self.log = state.parent / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "breeze_mcp", "serve", "--port", str(self.port)],
            env=embedded_env(state, self.port),
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited:\n{self.output()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=90, interval=0.2)

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    cluster_dir = path / "postgres"
    if cluster_dir.exists():  # never leave a cluster running after a failed test
        cluster = EmbeddedPostgres(cluster_dir)
        if cluster.running():
            cluster._stop()


def superuser_query(state: Path, sql: str) -> list[tuple[object, ...]]:
    cluster = EmbeddedPostgres(state / "postgres")
    engine = sa.create_engine(sqlalchemy_url(cluster.url(database="breeze")))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()


@pytest.mark.req("DB-EMBEDDED", "DB-EMBEDDED-LIFECYCLE", "DB-EMBEDDED-SHARED", "RUN-FIRST-DEMO",
                 "FH-README-CLI", "FH-CLI-DATABASE")
def test_first_run_restart_and_shared_cli(state: Path) -> None:
    server = ServeProcess(state)
    try:
        server.wait_ready()
        out = server.output()
        assert "First run: created the demo tenant 'demo'" in out
        password = re.search(r"Password:\s+(\S+)", out)
        assert password, out
        assert len(password.group(1)) >= 20
        assert f"{server.url}/console" in out  # where the owner signs in
        assert f"breeze-mcp: using a new embedded PostgreSQL at {state / 'postgres' / 'data'}" \
            in out

        # The banner's next step works as printed: the key command, then the tool call.
        create = re.search(r"^ +(\S+ api-key create --tenant demo .*)$", out, re.MULTILINE)
        curl = re.search(r"^ +(curl .*)$", out, re.MULTILINE)
        assert create and curl, out
        made = subprocess.run(["bash", "-c", create.group(1)], capture_output=True, text=True,
                              env=embedded_env(state), cwd=REPO, timeout=120, check=False)
        assert made.returncode == 0, made.stderr
        key = re.search(r"bzk_\S+", made.stdout)
        assert key, made.stdout
        called = subprocess.run(
            ["bash", "-c", curl.group(1).replace("<the bzk_ key>", key.group(0))],
            capture_output=True, text=True, timeout=60, check=False)
        assert called.returncode == 0, called.stderr
        result = json.loads(called.stdout)
        assert "error" not in result and "online" in called.stdout, result

        # The printed password is the owner's real password, and only its hash is stored.
        rows = superuser_query(
            state, "SELECT password_hash FROM users WHERE email = 'owner@demo.example'")
        assert len(rows) == 1 and verify_password(str(rows[0][0]), password.group(1))
        assert password.group(1) not in str(rows[0][0])
        # Sample RMM data exists (seen as the superuser, which bypasses RLS).
        (devices,), = superuser_query(state, "SELECT count(*) FROM devices")
        (alerts,), = superuser_query(state, "SELECT count(*) FROM alerts")
        assert devices == 10 and alerts == 8

        # Socket only, owner-only socket permissions.
        assert superuser_query(state, "SHOW listen_addresses") == [("",)]
        assert superuser_query(state, "SHOW unix_socket_permissions") == [("0700",)]
        socket_dir = EmbeddedPostgres(state / "postgres").socket_dir
        assert (socket_dir / ".s.PGSQL.5432").exists()

        # The CLI joins the running cluster, and leaving does not stop it.
        proc = run_cli("tenant", "create", "Second MSP", "--json",
                       env=embedded_env(state))
        assert proc.returncode == 0, proc.stderr
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        assert EmbeddedPostgres(state / "postgres").running()
    finally:
        code = server.stop()
    assert code == 0, server.output()
    # The last holder left: the cluster is stopped cleanly, data kept.
    assert not EmbeddedPostgres(state / "postgres").running()
    assert not (state / "postgres" / "data" / "postmaster.pid").exists()

    again = ServeProcess(state)
    try:
        again.wait_ready()
        assert "First run" not in again.output()
        listed = run_cli("tenant", "list", env=embedded_env(state))
        assert "demo" in listed.stdout and "second-msp" in listed.stdout
    finally:
        # SIGTERM (what process managers send) stops the cluster just like Ctrl+C.
        assert again.stop(signal.SIGTERM) == 0
    assert not EmbeddedPostgres(state / "postgres").running()

    # A CLI command on its own starts the cluster, and stops it when done.
    alone = run_cli("tenant", "list", "--json", env=embedded_env(state))
    assert alone.returncode == 0 and "second-msp" in alone.stdout
    assert not EmbeddedPostgres(state / "postgres").running()


@pytest.mark.req("RUN-FIRST-DEMO")
def test_demo_password_differs_between_installations(tmp_path: Path) -> None:
    passwords = []
    for name in ("one", "two"):
        state = tmp_path / name
        server = ServeProcess(state)
        try:
            server.wait_ready()
            match = re.search(r"Password:\s+(\S+)", server.output())
            assert match
            passwords.append(match.group(1))
        finally:
            server.stop()
    assert passwords[0] != passwords[1]


def as_user(name: str) -> dict[str, Any]:
    """subprocess arguments running a program as ``name`` with that user's own groups only:
    with root's groups still attached, the group bits of a private (0700) checkout would
    apply instead of the "other" bits the embedded cluster's user relies on."""
    account = pwd.getpwnam(name)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _interpreter_for(user: str) -> str | None:
    """A Python of our version that ``user`` may execute (ours may sit under /root)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version), f"/usr/bin/{version}",
                      f"/usr/local/bin/{version}"):
        if not candidate:
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True, text=True, check=False, cwd="/", **as_user(user),
            )
        except PermissionError:
            continue
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return candidate
    return None


@pytest.mark.req("DB-EMBEDDED-USERS", "FH-TEST-PRIVATE-DIR")
def test_cluster_runs_as_unprivileged_user(state: Path, tmp_path: Path) -> None:
    """As root, the cluster runs as 'breeze-pg'; run by an ordinary user, as that user."""
    server = ServeProcess(state)
    try:
        server.wait_ready()
        data = state / "postgres" / "data"
        owner = pwd.getpwuid(data.stat().st_uid).pw_name
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        proc_uid = os.stat(f"/proc/{pid}").st_uid
        if os.geteuid() == 0:
            assert owner in ("breeze-pg", "nobody")
            assert proc_uid == data.stat().st_uid != 0
        else:
            assert data.stat().st_uid == os.geteuid() == proc_uid
    finally:
        server.stop()

    if os.geteuid() != 0:
        pytest.skip("the root path (cluster run as a system user) can only be exercised as root")
    # And the whole CLI run by an ordinary user (nobody), with its own state directory.
    interpreter = _interpreter_for("nobody")
    if interpreter is None:
        pytest.skip("no Python interpreter of this version is executable by 'nobody'")
    nobody = pwd.getpwnam("nobody")
    # The home sits in a root-owned 0701 folder, as a private (0700) checkout is once the
    # embedded cluster has made it searchable: only the "other" bits let nobody through.
    private = Path(tempfile.mkdtemp(prefix="breeze-private-"))
    private.chmod(0o701)
    home = private / "nobody"
    try:
        home.mkdir()
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        site = next(p for p in sys.path if p.endswith("site-packages"))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home),
               "BREEZE_STATE_DIR": str(home / "state")}
        # addsitedir processes the .pth files of the (possibly editable) installation.
        launcher = (f"import site, sys; site.addsitedir({site!r}); "
                    "from breeze_mcp.cli import main; sys.exit(main(sys.argv[1:]))")
        # A new state directory: `migrate` creates the cluster, then the command uses it.
        for command in (["migrate"], ["tenant", "create", "Nobody MSP", "--json"]):
            proc = subprocess.run(
                [interpreter, "-c", launcher, *command],
                env=env, capture_output=True, text=True, cwd=str(home),
                timeout=180, check=False, **as_user("nobody"),
            )
            assert proc.returncode == 0, proc.stderr
        data = home / "state" / "postgres" / "data"
        assert data.stat().st_uid == nobody.pw_uid
        assert not EmbeddedPostgres(home / "state" / "postgres").running()
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.req("DB-EMBEDDED-LIFECYCLE")
def test_a_zombie_holder_does_not_keep_the_cluster(tmp_path: Path) -> None:
    """A holder that was killed but not yet reaped must not keep the cluster running."""
    from breeze_mcp.db.embedded import _pid_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _pid_alive(child.pid)
        child.kill()
        wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text()
                 .rsplit(")", 1)[-1].split()[0] == "Z", timeout=10)
        assert not _pid_alive(child.pid)  # killed, not reaped: a zombie
    finally:
        child.wait()
    assert not _pid_alive(child.pid)


@pytest.mark.req("FH-CLI-DATABASE", "FH-CLI-CONCURRENT")
def test_new_state_dir_is_refused_then_commands_run_at_once(state: Path) -> None:
    env = embedded_env(state)
    data = state.resolve() / "postgres" / "data"
    for args in (("tenant", "list"), ("api-key", "list", "--tenant", "demo", "--json")):
        refused = run_cli(*args, env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert f"no database in {state.resolve()} (BREEZE_STATE_DIR)" in refused.stderr
        assert "`breeze-mcp migrate`" in refused.stderr and "`breeze-mcp serve`" in refused.stderr
        assert not data.exists()  # nothing was initialised
    assert "error" in json.loads(refused.stdout)

    created = run_cli("migrate", "--json", env=env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["done"]  # stdout is pure JSON; the note is on stderr
    assert created.stderr.splitlines()[0] == (
        f"breeze-mcp: using a new embedded PostgreSQL at {data} (initialising it)")
    assert run_cli("tenant", "create", "Burst", "--slug", "burst", env=env).returncode == 0
    assert run_cli("user", "create", "--tenant", "burst", "--email", "o@burst.example",
                   "--role", "owner", "--password-stdin", env=env,
                   stdin=PASSWORD).returncode == 0

    commands = [["api-key", "create", "--tenant", "burst", "--name", f"script-{i}",
                 "--scopes", "ai:read", "--json"] for i in range(3)]
    commands += [["tenant", "list", "--json"]] * 3
    for command, proc in zip(commands, run_at_once(commands, env), strict=True):
        assert proc.returncode == 0, (command, proc.stderr)
        json.loads(proc.stdout)
        assert proc.stderr.splitlines()[0] == f"breeze-mcp: using embedded PostgreSQL at {data}"
    assert not EmbeddedPostgres(state / "postgres").running()  # the last one out stopped it
