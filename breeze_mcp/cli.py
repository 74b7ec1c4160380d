"""``breeze-mcp``: serve, migrate and administer tenants and users.

Every command uses the same database as the server (the embedded cluster too, while a server
is running) and names it in one line on stderr. Only ``serve`` and ``migrate`` create a new
embedded cluster; the other commands refuse to start on an empty state directory, which is
almost always a wrong ``BREEZE_STATE_DIR``. Bad input prints one line on stderr and exits 1;
usage errors exit 2. With ``--json`` results are printed as one JSON object on stdout (errors
as ``{"error": ...}``). A reader that leaves early (``| head``) ends the command quietly with
status 141, as for other Unix tools.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import errno
import getpass
import json
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from breeze_mcp import __version__, gc_tuning
from breeze_mcp.config import ConfigError, Settings, load_settings
from breeze_mcp.db import Database
from breeze_mcp.db.embedded import EmbeddedPostgresError, cluster_exists
from breeze_mcp.db.setup import (
    DatabaseSetupError,
    DatabaseTarget,
    database_target,
    describe_url,
    ensure_current,
    migrate,
)

if TYPE_CHECKING:
    import uvicorn

__all__ = ["main"]

T = TypeVar("T")

DEMO_TENANT = "demo"
DEMO_OWNER = "owner@demo.example"


class CliError(Exception):
    """A one-line error for the user."""


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        print(text)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise CliError("no password on stdin")
        return password
    if not sys.stdin.isatty():
        raise CliError("no terminal to prompt for a password: use --password-stdin")
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Repeat password: ")
    if first != second:
        raise CliError("passwords do not match")
    return first


@contextlib.contextmanager
def _database(settings: Settings, *, create: bool) -> Iterator[DatabaseTarget]:
    """The database every command uses, named on stderr; ``create`` allows initialising a new
    embedded cluster (only ``serve`` and ``migrate`` do)."""
    if settings.database_url is None:
        root = Path(settings.state_dir).expanduser().resolve() / "postgres"
        exists = cluster_exists(root)
        if not create and not exists:
            raise CliError(
                f"no database in {root.parent} (BREEZE_STATE_DIR): if your data is elsewhere, "
                "set BREEZE_STATE_DIR (or BREEZE_DATABASE_URL); to start here, run "
                "`breeze-mcp serve` (creates the demo tenant) or `breeze-mcp migrate` (empty)"
            )
        what = (f"embedded PostgreSQL at {root / 'data'}" if exists
                else f"a new embedded PostgreSQL at {root / 'data'} (initialising it)")
    else:
        what = describe_url(settings.database_url.get_secret_value())
    print(f"breeze-mcp: using {what}", file=sys.stderr, flush=True)
    with database_target(settings) as target:
        yield target


def _with_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    with _database(settings, create=False) as target:
        if target.embedded is not None:
            # Keep the embedded schema current: no write at all when it already is.
            assert target.owner_url is not None
            ensure_current(target.owner_url, target.runtime_url)

        async def run() -> T:
            db = Database(target.runtime_url, pool_size=2)
            try:
                return await work(db)
            finally:
                await db.dispose()

        return asyncio.run(run())


def _cli_command() -> str:
    """How to run this CLI again from here: the venv's script, else ``python -m``."""
    script = Path(sys.executable).parent / "breeze-mcp"
    if not script.exists():
        return f"{sys.executable} -m breeze_mcp"
    with contextlib.suppress(ValueError):
        relative = script.relative_to(Path.cwd())
        return str(relative) if relative.parent != Path() else f"./{relative}"
    return str(script)


# Commands ------------------------------------------------------------------------------------


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    with _database(settings, create=True) as target:
        if target.owner_url is None:
            raise CliError(
                "set BREEZE_MIGRATE_DATABASE_URL to a role that owns the schema (it runs the "
                "migrations and creates/grants the runtime role named in BREEZE_DATABASE_URL)"
            )
        if args.downgrade:
            from breeze_mcp.db.setup import downgrade

            downgrade(target.owner_url, args.downgrade)
            _emit(args, {"downgraded_to": args.downgrade}, f"downgraded to {args.downgrade}")
            return
        lines = migrate(target.owner_url, target.runtime_url)
    _emit(args, {"done": lines}, "\n".join(lines))


def cmd_tenant_create(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.auth.accounts import create_tenant

    tenant = _with_db(settings, lambda db: create_tenant(db, args.name, slug=args.slug))
    _emit(
        args,
        {"id": str(tenant.id), "slug": tenant.slug, "name": tenant.name, "status": tenant.status},
        f"created tenant {tenant.slug} ({tenant.id})",
    )


def cmd_tenant_list(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.auth.accounts import list_tenants

    async def work(db: Database) -> list[dict[str, str]]:
        return [{"id": str(t.id), "slug": t.slug, "name": t.name, "status": t.status}
                for t in await list_tenants(db)]

    rows = _with_db(settings, work)
    _emit(
        args,
        {"tenants": rows},
        "\n".join(f"{r['slug']:<24} {r['status']:<22} {r['id']}  {r['name']}" for r in rows)
        or "no tenants",
    )


def cmd_user_create(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.auth.accounts import create_user, find_tenant

    password = _read_password(args)

    async def work(db: Database) -> Any:
        tenant = await find_tenant(db, args.tenant)
        return await create_user(
            db, tenant, email=args.email, password=password, role=args.role,
            display_name=args.name,
        )

    user = _with_db(settings, work)
    _emit(
        args,
        {"id": str(user.id), "email": user.email, "tenant_id": str(user.tenant_id),
         "role": user.role},
        f"created user {user.email} ({user.role}) in tenant {args.tenant}",
    )


def cmd_user_set_password(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.auth.accounts import set_password

    password = _read_password(args)
    user_id, cut = _with_db(settings, lambda db: set_password(db, args.email, password))
    _emit(args, {"id": str(user_id), "email": args.email, "sessions_ended": cut.sessions,
                 "grants_revoked": cut.grants},
          f"password set for {args.email}; {_cut_words(cut)}")


def _cut_words(cut: Any) -> str:
    return (f"{cut.sessions} web session(s) ended and {cut.grants} OAuth grant(s) revoked "
            "(API keys follow their creator)")


def cmd_user_suspend(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.auth.accounts import set_suspended

    suspended = args.user_command == "suspend"
    user_id, cut = _with_db(settings, lambda db: set_suspended(db, args.email, suspended))
    if cut is None:
        _emit(args, {"id": str(user_id), "email": args.email, "suspended": False},
              f"{args.email} may sign in again (grants and sessions ended by the suspension "
              "do not come back)")
        return
    _emit(args, {"id": str(user_id), "email": args.email, "suspended": True,
                 "sessions_ended": cut.sessions, "grants_revoked": cut.grants},
          f"suspended {args.email}; {_cut_words(cut)}")


def cmd_member_remove(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.auth.accounts import find_tenant, remove_member

    async def work(db: Database) -> Any:
        return await remove_member(db, await find_tenant(db, args.tenant), args.email)

    user_id, cut = _with_db(settings, work)
    _emit(args, {"id": str(user_id), "email": args.email, "tenant": args.tenant,
                 "sessions_ended": cut.sessions, "grants_revoked": cut.grants},
          f"removed {args.email} from {args.tenant}; {_cut_words(cut)}")


def cmd_tenant_require_mfa(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.auth.accounts import find_tenant
    from breeze_mcp.auth.mfa import require_for_roles

    roles = [r.strip() for r in args.roles.split(",") if r.strip()] if args.roles else []
    unknown = [r for r in roles if r not in ("owner", "admin", "technician", "readonly")]
    if unknown:
        raise CliError(f"unknown role {unknown[0]!r}: use owner, admin, technician, readonly")

    async def work(db: Database) -> None:
        tenant = await find_tenant(db, args.tenant)
        await require_for_roles(db, tenant.id, roles)

    _with_db(settings, work)
    _emit(args, {"tenant": args.tenant, "mfa_required_roles": sorted(set(roles))},
          f"two-factor sign-in required in {args.tenant} for: "
          + (", ".join(sorted(set(roles))) or "no role"))


def cmd_demo_data(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.auth.accounts import find_tenant
    from breeze_mcp.tools.demo import seed_demo_data

    async def work(db: Database) -> Any:
        tenant = await find_tenant(db, args.tenant)
        return await seed_demo_data(db, tenant.id)

    result = _with_db(settings, work)
    _emit(
        args,
        {"devices_created": result.devices_created, "alerts_created": result.alerts_created},
        f"added {result.devices_created} devices and {result.alerts_created} alerts",
    )


def cmd_api_key_create(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.auth.accounts import find_tenant
    from breeze_mcp.auth.api_keys import MAX_EXPIRY_DAYS, check_rate_limit, create_api_key

    if args.rate_limit is not None:
        check_rate_limit(args.rate_limit)  # before touching the database
    if args.expires_in is not None and not 1 <= args.expires_in <= MAX_EXPIRY_DAYS:
        raise CliError(f"--expires-in must be between 1 and {MAX_EXPIRY_DAYS} days")

    async def work(db: Database) -> Any:
        tenant = await find_tenant(db, args.tenant)
        return await create_api_key(
            db, tenant, name=args.name, scopes=args.scopes, creator_email=args.created_by,
            expires_in_days=args.expires_in, rate_limit=args.rate_limit,
        )

    info, plaintext = _with_db(settings, work)
    _emit(
        args,
        {**info.as_json(), "key": plaintext},
        "\n".join([
            f"created API key {info.id} ({info.name}) with scopes {', '.join(info.scopes)}",
            f"  {plaintext}",
            "Store it now: it is shown only this once (only its SHA-256 digest is kept).",
        ]),
    )


def cmd_api_key_list(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.auth.accounts import find_tenant
    from breeze_mcp.auth.api_keys import list_api_keys

    async def work(db: Database) -> Any:
        return await list_api_keys(db, await find_tenant(db, args.tenant))

    keys = _with_db(settings, work)
    now = dt.datetime.now(dt.UTC)
    _emit(
        args,
        {"api_keys": [{**k.as_json(), "status": k.status(now)} for k in keys]},
        "\n".join(
            f"{k.id}  {k.status(now):<8} {k.prefix:<14} {','.join(k.scopes):<30} {k.name}"
            for k in keys
        ) or "no API keys",
    )


def cmd_api_key_revoke(settings: Settings, args: argparse.Namespace) -> None:
    import uuid

    from breeze_mcp.auth.accounts import find_tenant
    from breeze_mcp.auth.api_keys import revoke_api_key

    try:
        key_id = uuid.UUID(args.id)
    except ValueError:
        raise CliError(f"not an API key id: {args.id!r}") from None

    async def work(db: Database) -> Any:
        tenant = await find_tenant(db, args.tenant) if args.tenant else None
        return await revoke_api_key(db, key_id, tenant=tenant)

    info, newly = _with_db(settings, work)
    assert info.revoked_at is not None
    _emit(
        args,
        {**info.as_json(), "already_revoked": not newly},
        f"revoked API key {info.id} ({info.name})" if newly else
        f"API key {info.id} ({info.name}) was already revoked at "
        f"{info.revoked_at.isoformat(timespec='seconds')}; nothing changed",
    )


def cmd_audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    from breeze_mcp.audit_chain import ChainReport, verify
    from breeze_mcp.auth.accounts import Tenant, find_tenant, list_tenants

    async def work(db: Database) -> list[tuple[Tenant, ChainReport]]:
        tenants = [await find_tenant(db, args.tenant)] if args.tenant else \
            await list_tenants(db)
        return [(tenant, await verify(db, tenant.id)) for tenant in tenants]

    results = _with_db(settings, work)
    lines, payload = [], []
    for tenant, report in results:
        head = report.head
        broken = report.broken
        payload.append({
            "tenant": tenant.slug, "tenant_id": str(tenant.id), "checked": report.checked,
            "unsealed": report.unsealed,
            "head": None if head is None else {"seq": head.seq, "entry_id": head.entry_id,
                                               "digest": head.digest.hex()},
            "broken": None if broken is None else {
                "seq": broken.seq, "entry_id": broken.entry_id, "reason": broken.reason,
                "detail": broken.detail},
        })
        status = "BROKEN" if broken else "ok"
        text = f"{tenant.slug:<24} {status:<7} {report.checked} links hold"
        text += f", {report.unsealed} entries not sealed yet" if report.unsealed else ""
        if broken is not None:
            text += f"; first broken link: seq {broken.seq}, entry {broken.entry_id}: " \
                f"{broken.detail}"
        elif head is not None:
            text += f"; head seq {head.seq} {head.digest.hex()}"
        lines.append(text)
    broken_ones = [(t, r.broken) for t, r in results if r.broken is not None]
    _emit(args, {"ok": not broken_ones, "tenants": payload}, "\n".join(lines) or "no tenants")
    if not broken_ones:
        return 0
    tenant, first = broken_ones[0]
    assert first is not None
    print(f"breeze-mcp: error: the audit chain of {tenant.slug} is broken at seq {first.seq} "
          f"(entry {first.entry_id}): {first.detail}", file=sys.stderr)
    return 1


def cmd_audit_seal(settings: Settings, args: argparse.Namespace) -> None:
    from breeze_mcp.audit_chain import Sealer

    sealed = _with_db(settings, lambda db: Sealer(db).seal())
    _emit(args, {"sealed": sealed}, f"sealed {sealed} audit entries")


async def _first_run_demo(db: Database, settings: Settings) -> list[str] | None:
    """On an empty embedded database, create the demo tenant, its owner and sample data."""
    from breeze_mcp.auth.accounts import create_tenant, create_user, list_tenants
    from breeze_mcp.tools.demo import seed_demo_data

    if await list_tenants(db):
        return None
    tenant = await create_tenant(db, "Demo MSP", slug=DEMO_TENANT, actor="system:serve")
    password = secrets.token_urlsafe(15)
    await create_user(
        db, tenant, email=DEMO_OWNER, password=password, role="owner",
        display_name="Demo Owner", actor="system:serve",
    )
    result = await seed_demo_data(db, tenant.id)
    cli = _cli_command()
    return [
        "First run: created the demo tenant 'demo' with "
        f"{result.devices_created} devices and {result.alerts_created} alerts.",
        f"  Console:    {settings.public_url}/console   (sign in with:)",
        f"  Email:      {DEMO_OWNER}",
        f"  Password:   {password}   (shown once; not stored anywhere)",
        "  Lost it? Set a new one with:",
        f"    {cli} user set-password --email {DEMO_OWNER}",
        "Next, in another terminal: an API key for 'demo', then a first tool call with it:",
        f"    {cli} api-key create --tenant {DEMO_TENANT} --name first-key --scopes ai:read",
        f"    curl -s -X POST {settings.public_url}/api/v1/tools/list_devices "
        "-H 'Authorization: Bearer <the bzk_ key>' -H 'Content-Type: application/json' "
        "-d '{}'",
    ]


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _listen(host: str, port: int) -> socket.socket:
    """Bind the server's socket before anything else, so a taken port is one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio turns Nagle off (TCP_NODELAY) only on accepted sockets
    # whose protocol says TCP, and without it every response waits on a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise CliError(
                f"port {port} on {host} is already in use: choose another with --port or "
                "BREEZE_PORT (or stop the program using it)"
            ) from None
        raise CliError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): check --host / "
            "BREEZE_HOST and --port / BREEZE_PORT"
        ) from None
    sock.set_inheritable(True)
    return sock


def cmd_serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from breeze_mcp.app import create_app, verify_database
    from breeze_mcp.http_protocol import BoundedHttpToolsProtocol

    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        force=True,
    )
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
    if "public_url" not in settings.model_fields_set and port != 8000:
        # No public URL configured: the default follows the port actually served.
        settings = settings.model_copy(update={"public_url": f"http://127.0.0.1:{port}"})
    listener = _listen(host, port)
    # uvicorn re-raises SIGTERM / SIGINT after its graceful shutdown; turn them into SystemExit
    # so the embedded cluster is still released (and stopped) on the way out, quietly.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _exit_on_signal)
    with listener, _database(settings, create=True) as target:
        if target.embedded is not None or args.migrate:
            if target.owner_url is None:
                raise CliError("--migrate needs BREEZE_MIGRATE_DATABASE_URL")
            for line in migrate(target.owner_url, target.runtime_url):
                logging.getLogger("breeze_mcp").info("%s", line)
        if target.embedded is not None:

            async def seed() -> list[str] | None:
                db = Database(target.runtime_url, pool_size=1)
                try:
                    return await _first_run_demo(db, settings)
                finally:
                    await db.dispose()

            banner = asyncio.run(seed())
        else:
            banner = None

        asyncio.run(verify_database(target.runtime_url))
        if target.embedded is not None:
            if banner:
                print("\n".join(banner), flush=True)
            print(
                f"Embedded PostgreSQL: {target.embedded.data} (socket only)", flush=True
            )
        app = create_app(settings, target.runtime_url)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=settings.log_level,
            http=BoundedHttpToolsProtocol,  # httptools' C parser, with h11's bound on a head
            proxy_headers=False,  # client IPs come from BREEZE_TRUSTED_PROXIES, not uvicorn
            server_header=False,
        )
        server = _announcing_server(
            config,
            f"Breeze MCP {__version__} serving {settings.public_url} "
            f"(listening on {host}:{port})",
        )
        gc_tuning.tune()  # start-up objects frozen, fewer young collections (see module)
        server.run(sockets=[listener])
        if not server.started:
            raise CliError("the server did not start; see the log above")


def _announcing_server(config: uvicorn.Config, announce: str) -> uvicorn.Server:
    """uvicorn's server, printing ``announce`` once it accepts connections (port bound and
    application start-up finished), never before."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(announce, flush=True)

    return Server(config)


# Parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # --json is accepted before or after the command; SUPPRESS keeps a subcommand's default
    # from overwriting a --json given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print results as JSON")

    parser = argparse.ArgumentParser(
        prog="breeze-mcp",
        description="Breeze MCP: MCP server with built-in authentication and authorization.",
    )
    parser.add_argument("--json", action="store_true", default=False,
                        help="print results as JSON")
    parser.add_argument("--version", action="version", version=f"breeze-mcp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the HTTP server")
    serve.add_argument("--host", help="bind address (default BREEZE_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default BREEZE_PORT, 8000)")
    serve.add_argument(
        "--migrate", action="store_true",
        help="run migrations first (always done for the embedded database)",
    )
    serve.set_defaults(func=cmd_serve)

    mig = sub.add_parser(
        "migrate",
        parents=[common],
        help="upgrade the schema and create/grant the runtime role",
        description=(
            "Runs the migrations as the schema owner (BREEZE_MIGRATE_DATABASE_URL; for the "
            "embedded database, its own owner role), then creates the runtime role named by "
            "BREEZE_DATABASE_URL if missing (NOSUPERUSER NOBYPASSRLS, needs CREATEROLE) and "
            "grants it exactly the privileges it needs. The server connects as the runtime "
            "role and refuses to start as a superuser, a BYPASSRLS role or a table owner."
        ),
    )
    mig.add_argument("--downgrade", metavar="REVISION",
                     help="reverse migrations down to REVISION ('base' removes everything)")
    mig.set_defaults(func=cmd_migrate)

    tenant = sub.add_parser("tenant", parents=[common], help="manage tenants")
    tsub = tenant.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")
    tc = tsub.add_parser("create", parents=[common], help="create an (active) tenant")
    tc.add_argument("name")
    tc.add_argument("--slug", help="short identifier (default: derived from NAME)")
    tc.set_defaults(func=cmd_tenant_create)
    tl = tsub.add_parser("list", parents=[common], help="list tenants")
    tl.set_defaults(func=cmd_tenant_list)
    tm = tsub.add_parser("require-mfa", parents=[common],
                         help="require two-factor sign-in of some roles (taken to set-up at "
                         "sign-in)")
    tm.add_argument("--tenant", required=True, help="tenant slug or id")
    tm.add_argument("--roles", default="", help="comma-separated roles, e.g. owner,admin; "
                    "empty: none")
    tm.set_defaults(func=cmd_tenant_require_mfa)

    user = sub.add_parser("user", parents=[common], help="manage users")
    usub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    uc = usub.add_parser("create", parents=[common], help="create a user in a tenant")
    uc.add_argument("--tenant", required=True, help="tenant slug or id")
    uc.add_argument("--email", required=True)
    uc.add_argument("--role", required=True, choices=["owner", "admin", "technician", "readonly"])
    uc.add_argument("--name", help="display name")
    uc.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of stdin")
    uc.set_defaults(func=cmd_user_create)
    up = usub.add_parser("set-password", parents=[common], help="set a user's password")
    up.add_argument("--email", required=True)
    up.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of stdin")
    up.set_defaults(func=cmd_user_set_password)
    for action, words in (("suspend", "suspend a user: no sign-in; sessions end, OAuth grants "
                           "are revoked and API keys they created stop working"),
                          ("resume", "lift a user's suspension")):
        us = usub.add_parser(action, parents=[common], help=words)
        us.add_argument("--email", required=True)
        us.set_defaults(func=cmd_user_suspend)

    member = sub.add_parser("member", parents=[common], help="manage memberships")
    msub = member.add_subparsers(dest="member_command", required=True, metavar="ACTION")
    mr = msub.add_parser("remove", parents=[common],
                         help="remove a person from a tenant: their grants there are revoked, "
                         "their sessions end, the API keys they created stop working")
    mr.add_argument("--tenant", required=True, help="tenant slug or id")
    mr.add_argument("--email", required=True)
    mr.set_defaults(func=cmd_member_remove)

    key = sub.add_parser("api-key", parents=[common], help="manage API keys")
    ksub = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    kc = ksub.add_parser(
        "create", parents=[common], help="create a scoped API key (shown once)",
        description="Scopes are exactly ai:read (Tier 1), ai:write (Tiers 1-2) and ai:execute "
        "(Tiers 1-3); Tier 4 is never reachable. The key never exceeds its creator's role, "
        "re-checked on every request.",
    )
    kc.add_argument("--tenant", required=True, help="tenant slug or id")
    kc.add_argument("--name", required=True)
    kc.add_argument("--scopes", required=True, help="comma-separated, e.g. ai:read,ai:write")
    kc.add_argument("--expires-in", type=int, metavar="DAYS", help="expire after DAYS days")
    kc.add_argument("--created-by", metavar="EMAIL",
                    help="owner/admin creating the key (default: the tenant's first owner)")
    kc.add_argument("--rate-limit", metavar="LIMIT",
                    help="e.g. 60/minute (default BREEZE_API_KEY_RATE_LIMIT)")
    kc.set_defaults(func=cmd_api_key_create)
    kl = ksub.add_parser("list", parents=[common], help="list a tenant's API keys")
    kl.add_argument("--tenant", required=True, help="tenant slug or id")
    kl.set_defaults(func=cmd_api_key_list)
    kr = ksub.add_parser("revoke", parents=[common], help="revoke an API key at once")
    kr.add_argument("id", help="the key's id (from `api-key list`)")
    kr.add_argument("--tenant", help="tenant slug or id (default: search every tenant)")
    kr.set_defaults(func=cmd_api_key_revoke)

    audit = sub.add_parser("audit", parents=[common], help="the audit log's hash chains")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    av = asub.add_parser(
        "verify", parents=[common], help="recompute every tenant's audit hash chain",
        description="Recomputes each tenant's chain from the stored audit entries (sealing "
        "nothing) and reports the links that hold, the entries not sealed yet and the head "
        "(seq and digest: keep it elsewhere to detect a later rewrite of the chain). Exits 1 "
        "naming the first broken link (a changed or deleted entry, a changed digest, missing "
        "links) by tenant, seq and audit entry id.",
    )
    av.add_argument("--tenant", help="tenant slug or id (default: every tenant)")
    av.set_defaults(func=cmd_audit_verify)
    aseal = asub.add_parser("seal", parents=[common],
                            help="chain every committed audit entry not sealed yet (the server "
                            "does this every BREEZE_AUDIT_SEAL_INTERVAL seconds)")
    aseal.set_defaults(func=cmd_audit_seal)

    demo = sub.add_parser("demo-data", parents=[common], help="add sample devices and alerts")
    demo.add_argument("--tenant", required=True, help="tenant slug or id")
    demo.set_defaults(func=cmd_demo_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        sys.stdout.flush()  # a reader that already left is noticed here, not at exit
    except BrokenPipeError:
        # The reader (`| head`) has what it wanted: leave quietly, with the status a process
        # killed by SIGPIPE has, and keep the interpreter's final flush from complaining.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
        code = args.func(settings, args)
    except KeyboardInterrupt:
        return 130
    except (CliError, ConfigError, DatabaseSetupError, EmbeddedPostgresError) as exc:
        return _fail(args, str(exc))
    except ValueError as exc:  # AccountError and friends: bad input, one line
        return _fail(args, str(exc))
    return int(code or 0)  # a command that found something wrong returns its status


def _fail(args: argparse.Namespace, message: str) -> int:
    message = " ".join(message.split()) if "\n" not in message.strip() else message.strip()
    if getattr(args, "json", False):
        print(json.dumps({"error": message}))
    print(f"breeze-mcp: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
