"""Embedded PostgreSQL: a private cluster in the state directory, reachable by Unix socket only.

Used when ``BREEZE_DATABASE_URL`` is unset, so the first ``make run`` needs no configuration
and no system PostgreSQL. The binaries come from the ``pgserver`` wheel (which ships a full
PostgreSQL build); a system installation is the fallback (``pg_config --bindir`` or
``/usr/lib/postgresql/<version>/bin``).

Layout under ``<state_dir>/postgres``::

    data/      the cluster (PGDATA), mode 0700
    run/       the Unix socket directory (or a short /tmp path when this one is too long)
    lock       flock serialising start/stop between processes
    holders    PIDs of the processes using the cluster (server, CLI commands, tests)

The cluster is shared between processes: the server and a CLI command run while it serves use
the same cluster. Each process *acquires* it (starting it if needed) and *releases* it on exit;
the last holder to leave stops it with a fast shutdown, so data is kept and nothing is left
running. PostgreSQL refuses to run as root; when we are root (containers, CI) the cluster runs
as an unprivileged system user (``breeze-pg``, created if missing, else ``nobody``).

TCP is disabled (``listen_addresses = ''``); the socket is mode 0700, so only the cluster's
owner (and root) can connect. Authentication inside the cluster is ``trust`` for that reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "cluster_exists", "find_postgres_bindir"]

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.5432"
_PG_USER_WHEN_ROOT = "breeze-pg"


class EmbeddedPostgresError(RuntimeError):
    """The embedded cluster could not be prepared or started; the message says why."""


def cluster_exists(root: Path) -> bool:
    """Whether ``root`` (``<state_dir>/postgres``) holds an initialised cluster."""
    return (root.expanduser() / "data" / "PG_VERSION").exists()


def find_postgres_bindir() -> Path:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "pginstall" / "bin"
            if (candidate / "postgres").exists():
                return candidate
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if out and (Path(out) / "postgres").exists():
            return Path(out)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).resolve().parent / "postgres").exists():
        return Path(initdb).resolve().parent
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries found: install the 'pgserver' package "
        "(pip install pgserver) or a system PostgreSQL, or set BREEZE_DATABASE_URL"
    )


class EmbeddedPostgres:
    """A PostgreSQL cluster living in ``root`` (normally ``<state_dir>/postgres``)."""

    def __init__(self, root: Path, *, bindir: Path | None = None) -> None:
        self.root = root.expanduser().resolve()
        self.data = self.root / "data"
        self.bindir = bindir or find_postgres_bindir()
        self._lock_path = self.root / "lock"
        self._holders_path = self.root / "holders"
        self._acquired = False
        self.run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self.run_as = _unprivileged_user()
        self.socket_dir = self._choose_socket_dir()

    # Public API -----------------------------------------------------------------------------

    def url(self, user: str = SUPERUSER, database: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg driver) reaching the cluster over its Unix socket."""
        return f"postgresql+psycopg://{user}@/{database}?host={self.socket_dir}"

    def acquire(self) -> None:
        """Start the cluster if needed and register this process as a holder."""
        if self._acquired:
            return
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._locked():
            self._ensure_initialised()
            if not self._running():
                self._start()
            holders = self._read_holders()
            holders.add(os.getpid())
            self._write_holders(holders)
        self._acquired = True

    def release(self) -> None:
        """Unregister this process; the last holder stops the cluster (data is kept)."""
        if not self._acquired:
            return
        self._acquired = False
        with self._locked():
            holders = {pid for pid in self._read_holders() if pid != os.getpid()}
            self._write_holders(holders)
            if not holders and self._running():
                self._stop()

    def running(self) -> bool:
        return self._running()

    def __enter__(self) -> EmbeddedPostgres:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # Internals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read_holders(self) -> set[int]:
        try:
            pids = json.loads(self._holders_path.read_text())
        except (FileNotFoundError, ValueError):
            return set()
        return {pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)}

    def _write_holders(self, holders: set[int]) -> None:
        tmp = self._holders_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(holders)))
        tmp.replace(self._holders_path)

    def _choose_socket_dir(self) -> Path:
        preferred = self.root / "run"
        if len(str(preferred)) <= _SOCKET_PATH_MAX - 15:
            return preferred
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"breeze-pg-{digest}"

    def _pg(self, exe: str, *args: str, timeout: float = 60) -> str:
        """Run a PostgreSQL program (as the unprivileged user when we are root)."""
        cmd = [str(self.bindir / exe), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = env.get("LC_ALL") or "C.UTF-8"
        # Output goes to a temporary file, not a pipe: pg_ctl's postmaster inherits the
        # descriptors and a pipe would never reach EOF.
        with tempfile.TemporaryFile("w+") as out:
            try:
                subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=timeout,
                    env=env,
                    cwd="/",
                    user=self.run_as.pw_uid if self.run_as else None,
                    group=self.run_as.pw_gid if self.run_as else None,
                    extra_groups=[] if self.run_as else None,
                )
            except subprocess.CalledProcessError as exc:
                out.seek(0)
                raise EmbeddedPostgresError(
                    f"{exe} failed (exit {exc.returncode}): {out.read().strip()[-2000:]}"
                ) from None
            except subprocess.TimeoutExpired:
                raise EmbeddedPostgresError(f"{exe} did not finish within {timeout}s") from None
            out.seek(0)
            return out.read()

    def _own(self, path: Path) -> None:
        if self.run_as is not None:
            os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)

    def _ensure_initialised(self) -> None:
        if self.run_as is not None:
            _ensure_traversable(self.root.parent, self.bindir)
            self._own(self.root)
            self.root.chmod(0o700)
        if cluster_exists(self.root):
            return
        if self.data.exists():
            shutil.rmtree(self.data)  # a half-made cluster from an interrupted initdb
        self.data.mkdir(mode=0o700)
        self._own(self.data)
        log.info("initialising embedded PostgreSQL cluster in %s", self.data)
        self._pg(
            "initdb",
            "-D", str(self.data),
            "-U", SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
            timeout=120,
        )
        conf = self.data / "postgresql.auto.conf"
        with conf.open("a") as fh:
            fh.write(
                "\n# Breeze MCP embedded cluster: Unix socket only.\n"
                "listen_addresses = ''\n"
                "unix_socket_permissions = 0700\n"
                "max_connections = 200\n"
                "shared_buffers = 64MB\n"
                "fsync = on\n"
            )

    def _running(self) -> bool:
        pidfile = self.data / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return False
        if not lines or not lines[0].strip().isdigit():
            return False
        if not _pid_alive(int(lines[0])):
            return False
        return (self.socket_dir / ".s.PGSQL.5432").exists()

    def _start(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._own(self.socket_dir)
        info = self.socket_dir.lstat()
        expected = self.run_as.pw_uid if self.run_as else os.geteuid()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != expected:
            raise EmbeddedPostgresError(
                f"socket directory {self.socket_dir} is not a directory owned by uid "
                f"{expected}; remove it (or use a shorter BREEZE_STATE_DIR)"
            )
        self.socket_dir.chmod(0o700)
        logfile = self.root / "postgres.log"
        if not logfile.exists():
            logfile.touch(mode=0o600)
        self._own(logfile)
        log.info("starting embedded PostgreSQL (socket %s)", self.socket_dir)
        try:
            self._pg(
                "pg_ctl",
                "start",
                "-w",
                "-t", "60",
                "-D", str(self.data),
                "-l", str(logfile),
                "-o", f"-c unix_socket_directories='{self.socket_dir}' -c listen_addresses=''",
                timeout=90,
            )
        except EmbeddedPostgresError as exc:
            tail = logfile.read_text(errors="replace")[-2000:]
            raise EmbeddedPostgresError(f"{exc}\n--- {logfile} ---\n{tail}") from None
        deadline = time.monotonic() + 30
        while not self._running():
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"PostgreSQL did not come up; see {logfile}")
            time.sleep(0.05)

    def _stop(self) -> None:
        log.info("stopping embedded PostgreSQL")
        try:
            self._pg("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data), timeout=60)
        except EmbeddedPostgresError:
            if self._running():
                raise


def _pid_alive(pid: int) -> bool:
    """A live process; a zombie (killed, not yet reaped by its parent) does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): os.kill said it exists
    # "pid (comm) state ...": comm may contain spaces or parentheses; state follows the last ')'.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _unprivileged_user() -> pwd.struct_passwd:
    """The OS user the cluster runs as when we are root."""
    try:
        return pwd.getpwnam(_PG_USER_WHEN_ROOT)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd:
        subprocess.run(
            [
                useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                "--shell", "/usr/sbin/nologin", _PG_USER_WHEN_ROOT,
            ],
            capture_output=True,
            check=False,
        )
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(_PG_USER_WHEN_ROOT)
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        raise EmbeddedPostgresError(
            "running as root and no unprivileged user to run PostgreSQL as "
            f"(create '{_PG_USER_WHEN_ROOT}' or set BREEZE_DATABASE_URL)"
        ) from None


def _ensure_traversable(*paths: Path) -> None:
    """Let the cluster's user reach its files: add o+x (search, not read) on ancestors."""
    for path in paths:
        for ancestor in [path, *path.parents]:
            try:
                mode = ancestor.stat().st_mode
            except FileNotFoundError:
                continue
            if not mode & stat.S_IXOTH:
                log.info("granting search permission (o+x) on %s for the PostgreSQL user", ancestor)
                ancestor.chmod(mode | stat.S_IXOTH)
