"""Everything the benchmark stands up, and tears down again whatever happens.

* a temporary directory (state dir, server logs);
* a database: the embedded PostgreSQL cluster in that state dir, or — when
  ``BREEZE_BENCH_DATABASE_URL`` is set to a superuser (or CREATEROLE + CREATEDB) URL — a fresh
  database with its own owner and runtime roles on that server, dropped afterwards;
* the schema, a tenant with the demo data, an owner, and an API key with a very high rate
  limit, all made with the ``breeze-mcp`` CLI exactly as an operator would;
* our server (``python -m breeze_mcp serve``) and the bare SDK server
  (``python -m bench.bare_server``), each in its own process and session, one uvicorn worker,
  on free ports.

:class:`BenchEnvironment` is a context manager over an :class:`contextlib.ExitStack`: servers
are stopped first (SIGTERM, then SIGKILL), then the cluster is released (the last holder
stops it), then the external database is dropped and the temporary directory removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.oauth_setup import OAuthFixtures, mint

__all__ = ["BenchEnvironment", "BenchSetupError", "ServerProcess"]

REPO = Path(__file__).resolve().parent.parent
TENANT = "bench"
OWNER_EMAIL = "owner@bench.example"

#: BREEZE_ variables the benchmark sets itself; every other BREEZE_ variable of the caller's
#: environment (pool size, Redis, ...) is passed through to our server and reported.
_CONTROLLED = {
    "BREEZE_STATE_DIR", "BREEZE_DATABASE_URL", "BREEZE_MIGRATE_DATABASE_URL",
    "BREEZE_LOG_LEVEL", "BREEZE_PUBLIC_URL", "BREEZE_HOST", "BREEZE_PORT",
    "BREEZE_API_KEY_RATE_LIMIT", "BREEZE_GRANT_RATE_LIMIT", "BREEZE_MODE",
    "BREEZE_BENCH_DATABASE_URL",
}


class BenchSetupError(RuntimeError):
    """Something the benchmark needs could not be set up; the message says what."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


@dataclass
class ServerProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@dataclass
class BenchEnvironment:
    rate_limit: str = "1000000/minute"
    keep_logs: Path | None = None  # copy the servers' logs here before cleaning up
    bare_gc_tuned: bool = False  # give the bare SDK server breeze-mcp serve's GC settings
    verbose: bool = False

    tmp: Path = field(init=False)
    state_dir: Path = field(init=False)
    admin_url: str = field(init=False)  # superuser on the benchmark database (audit counts)
    database: str = field(init=False)  # "embedded" or the external server's host
    api_key: str = field(init=False)
    tenant_id: str = field(init=False)
    owner_id: str = field(init=False)
    oauth: OAuthFixtures | None = field(init=False, default=None)
    oauth_codes: int = 0  # how many single-use codes the code-exchange scenario may spend
    oauth_lineages: int = 0  # refresh-token lineages (one per connection)
    oauth_document_lineages: int = 0  # the same, of the metadata-document client
    ours: ServerProcess = field(init=False)
    bare: ServerProcess = field(init=False)
    postmaster_pid: int | None = field(init=False, default=None)
    passed_through: dict[str, str] = field(init=False, default_factory=dict)
    _env: dict[str, str] = field(init=False, default_factory=dict)
    _stack: contextlib.ExitStack = field(init=False, default_factory=contextlib.ExitStack)

    # Context manager --------------------------------------------------------------------------

    def __enter__(self) -> BenchEnvironment:
        try:
            self._setup()
        except BaseException:
            self._clean_up()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._clean_up()

    def _clean_up(self) -> None:
        """Undo everything; a second Ctrl+C must not cut this short (each step has a timeout)."""
        previous = {sig: signal.signal(sig, signal.SIG_IGN)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._stack.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # Set-up ----------------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def _setup(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="breeze-bench-"))
        self._stack.callback(shutil.rmtree, self.tmp, ignore_errors=True)
        self.state_dir = self.tmp / "state"
        self.state_dir.mkdir()
        self._env = {k: v for k, v in os.environ.items() if k not in _CONTROLLED}
        self.passed_through = {k: v for k, v in self._env.items() if k.startswith("BREEZE_")}
        self._env.update(
            BREEZE_STATE_DIR=str(self.state_dir),
            BREEZE_LOG_LEVEL="warning",
            BREEZE_API_KEY_RATE_LIMIT=self.rate_limit,
            BREEZE_GRANT_RATE_LIMIT=self.rate_limit,
            PYTHONUNBUFFERED="1",
        )
        external = os.environ.get("BREEZE_BENCH_DATABASE_URL", "").strip()
        if external:
            self._external_database(external)
        else:
            self._embedded_database()
        self._provision()
        self.bare = self._start("bare", self.bare_argv(), ready=self._bare_ready)
        self.ours = self._start(
            "ours", [sys.executable, "-m", "breeze_mcp", "serve"], ready=self._ours_ready
        )
        if self.oauth_codes or self.oauth_lineages or self.oauth_document_lineages:
            import uuid

            self._say(f"minting {self.oauth_codes} authorization codes and "
                      f"{self.oauth_lineages} refresh-token lineages")
            self.oauth = mint(
                self.admin_url, tenant_id=uuid.UUID(self.tenant_id),
                user_id=uuid.UUID(self.owner_id),
                resource=f"http://127.0.0.1:{self.ours.port}/mcp",
                codes=self.oauth_codes, lineages=self.oauth_lineages,
                document_lineages=self.oauth_document_lineages,
            )

    def bare_argv(self) -> list[str]:
        """The command line of the comparison server."""
        return [sys.executable, "-m", "bench.bare_server",
                *(["--tune-gc"] if self.bare_gc_tuned else [])]

    def _embedded_database(self) -> None:
        from breeze_mcp.db.embedded import EmbeddedPostgres
        from breeze_mcp.db.setup import EMBEDDED_DATABASE

        self._say("starting a fresh embedded PostgreSQL cluster")
        cluster = EmbeddedPostgres(self.state_dir / "postgres")
        # This process holds the cluster for the whole run: CLI commands and the server join
        # it, and the last one to leave (this process, at clean-up) stops it.
        cluster.acquire()
        self._stack.callback(cluster.release)
        self.admin_url = cluster.url(database=EMBEDDED_DATABASE)
        self.database = "embedded PostgreSQL (Unix socket)"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pidfile = cluster.data / "postmaster.pid"
            self.postmaster_pid = int(pidfile.read_text().splitlines()[0])

    def _external_database(self, admin_url: str) -> None:
        from breeze_mcp.db.engine import sqlalchemy_url
        from breeze_mcp.db.setup import bootstrap_cluster

        tag = secrets.token_hex(4)
        name, owner, runtime = f"breeze_bench_{tag}", f"bzb_{tag}_owner", f"bzb_{tag}_app"
        owner_pw, runtime_pw = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        self._say(f"creating database {name} on the BREEZE_BENCH_DATABASE_URL server")
        try:
            base = make_url(sqlalchemy_url(admin_url))
            self._stack.callback(self._drop_external, admin_url, name, (runtime, owner))
            bootstrap_cluster(admin_url, database=name, owner=owner, runtime=runtime,
                              owner_password=owner_pw, runtime_password=runtime_pw)
        except (sa.exc.SQLAlchemyError, ValueError) as exc:
            raise BenchSetupError(
                "cannot create a database with BREEZE_BENCH_DATABASE_URL (it needs a "
                f"superuser, or CREATEROLE and CREATEDB): {getattr(exc, 'orig', None) or exc}"
            ) from None

        def as_user(user: str, password: str) -> str:
            url = base.set(username=user, password=password, database=name)
            return url.render_as_string(hide_password=False)

        self._env["BREEZE_DATABASE_URL"] = as_user(runtime, runtime_pw)
        self._env["BREEZE_MIGRATE_DATABASE_URL"] = as_user(owner, owner_pw)
        self.admin_url = base.set(database=name).render_as_string(hide_password=False)
        self.database = f"external PostgreSQL at {base.host or 'local socket'}"

    def _drop_external(self, admin_url: str, name: str, roles: tuple[str, ...]) -> None:
        from breeze_mcp.db.engine import sqlalchemy_url

        engine = sa.create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                for role in roles:
                    conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
        except sa.exc.SQLAlchemyError as exc:
            self._say(f"could not drop database {name} and roles {', '.join(roles)}: "
                      f"{getattr(exc, 'orig', None) or exc}")
        finally:
            engine.dispose()

    def cli(self, *args: str, stdin: str | None = None) -> dict[str, object]:
        """Run ``breeze-mcp --json ARGS`` as an operator would; its JSON output."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "breeze_mcp", "--json", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=self._env, cwd=REPO,
        )
        try:
            stdout, stderr = proc.communicate(stdin, timeout=300)
        except BaseException:
            # Kill *and reap* it (subprocess.run does not wait on Ctrl+C): a zombie still
            # counts as a holder of the embedded cluster, which would then never be stopped.
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            raise BenchSetupError(
                f"breeze-mcp {' '.join(args)} failed ({proc.returncode}):\n"
                f"{stdout.strip()}\n{stderr.strip()}"
            )
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}

    def _provision(self) -> None:
        self._say("migrating and creating the tenant, its demo data and an API key")
        self.cli("migrate")
        tenant = self.cli("tenant", "create", "Bench MSP", "--slug", TENANT)
        self.tenant_id = str(tenant["id"])
        password = secrets.token_urlsafe(24)
        owner = self.cli("user", "create", "--tenant", TENANT, "--email", OWNER_EMAIL,
                         "--role", "owner", "--password-stdin", stdin=password + "\n")
        self.owner_id = str(owner["id"])
        self.cli("demo-data", "--tenant", TENANT)
        created = self.cli("api-key", "create", "--tenant", TENANT, "--name", "bench",
                           "--scopes", "ai:read", "--rate-limit", self.rate_limit)
        key = created.get("key")
        if not isinstance(key, str):
            raise BenchSetupError(f"api-key create printed no key: {created}")
        self.api_key = key

    # Servers ---------------------------------------------------------------------------------

    def _start(
        self, name: str, argv: list[str], *, ready: Callable[[int], bool]
    ) -> ServerProcess:
        port = free_port()
        log = self.tmp / f"{name}.log"
        self._say(f"starting the {name} server on port {port}")
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*argv, "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self._env, cwd=REPO,
                start_new_session=True,  # Ctrl+C reaches the benchmark only; it stops them
            )
        server = ServerProcess(name, port, process, log)
        self._stack.callback(self._stop_server, server)
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise BenchSetupError(
                    f"the {name} server exited with {process.returncode}:\n{_log_tail(log)}"
                )
            if ready(port):
                return server
            if time.monotonic() > deadline:
                raise BenchSetupError(f"the {name} server did not come up:\n{_log_tail(log)}")
            time.sleep(0.1)

    def _stop_server(self, server: ServerProcess) -> None:
        code = server.stop()
        if self.keep_logs is not None:
            self.keep_logs.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(server.log, self.keep_logs / server.log.name)
        if code not in (0, None, -signal.SIGTERM):
            self._say(f"the {server.name} server exited with {code}")

    @staticmethod
    def _ours_ready(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    @staticmethod
    def _bare_ready(port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        return False

    # Observations ----------------------------------------------------------------------------

    def count_audit_rows(self, action: str) -> int | None:
        """Audit entries of ``action`` (read as a superuser, so row-level security is moot)."""
        from breeze_mcp.db.engine import sqlalchemy_url

        try:
            engine = sa.create_engine(sqlalchemy_url(self.admin_url))
            try:
                with engine.connect() as conn:
                    return int(conn.execute(
                        sa.text("SELECT count(*) FROM audit_log WHERE action = :a"),
                        {"a": action},
                    ).scalar_one())
            finally:
                engine.dispose()
        except sa.exc.SQLAlchemyError as exc:
            self._say(f"could not count audit rows: {exc}")
            return None

    def count_unsealed(self) -> int | None:
        """Tenant audit entries that no link of the audit hash chains names yet (superuser)."""
        from breeze_mcp.db.engine import sqlalchemy_url

        try:
            engine = sa.create_engine(sqlalchemy_url(self.admin_url))
            try:
                with engine.connect() as conn:
                    return int(conn.execute(sa.text(
                        "SELECT count(*) FROM audit_log a WHERE tenant_id IS NOT NULL"
                        " AND NOT EXISTS (SELECT FROM audit_chain c WHERE c.entry_id = a.id)"
                    )).scalar_one())
            finally:
                engine.dispose()
        except sa.exc.SQLAlchemyError as exc:
            self._say(f"could not count unsealed audit entries: {exc}")
            return None

    def server_log_problems(self, server: ServerProcess) -> list[str]:
        """Lines of a server's log that report errors (tracebacks, ERROR, CRITICAL)."""
        try:
            lines = server.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        markers = ("Traceback", " ERROR ", " CRITICAL ", "ERROR:", "Exception")
        return [line for line in lines if any(m in line for m in markers)]


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, from /proc (None when it is gone or /proc is absent)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu_seconds(root_pid: int) -> float | None:
    """CPU seconds of a process and its direct children (PostgreSQL's postmaster + backends)."""
    total = proc_cpu_seconds(root_pid)
    if total is None:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == root_pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_busy_cpu_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (/proc/stat: everything but idle and
    iowait), to tell how much of the machine something else used during a measurement."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")

