"""Run the official MCP conformance suite against Breeze MCP: its authorization-server
scenarios and its MCP-server scenarios of both protocol eras.

``make conformance`` runs this with the project's virtualenv after ``npm ci`` in this folder.
What it does, end to end:

1. starts ``python -m breeze_mcp serve`` on a free loopback port with a brand-new state
   directory (embedded PostgreSQL, first run: tenant ``demo`` and its owner, whose one-time
   password the server prints), its public URL that of a loopback proxy on another port;
2. creates an ``ai:execute`` API key for ``demo`` with the CLI, and starts that proxy
   (:class:`KeyProxy`): it passes every request on unchanged and adds the key to those for
   ``/mcp``, because the suite cannot send a credential;
3. registers a public client (``token_endpoint_auth_method=none``) through ``/register`` whose
   redirect URI is the suite's callback, ``http://127.0.0.1:<callback port>/callback``, and
   runs ``conformance authorization`` (every scenario the suite lists for authorization
   servers) with ``--url <issuer> --client-id <id> --resource <issuer>/mcp``, playing the human
   when the suite prints the authorization URL: signs in through the ``/login`` form as the demo
   owner, approves every scope offered on the consent form, and delivers the redirect to the
   suite's callback server;
4. runs ``conformance server --url <issuer>/mcp --requirements R`` for R = 2026-07-28 and
   2025-11-25 (each scenario at its revision's wire), with ``expected-failures.yml``: the
   scenarios that need the suite's own fixture tools, resources or prompts, each with why;
5. stops the server (SIGTERM: uvicorn's graceful shutdown, then the embedded cluster), prints
   a table of every check and exits non-zero unless every run passed: every authorization
   scenario, and every server scenario but the expected failures (a stale expected failure, one
   that now passes, fails the run too).

Results (the suite's ``checks.json`` per scenario, its output, the server log and a
``summary.md``) go to ``conformance/results/<UTC time>/``.

Options: ``--keep-state`` keeps the temporary state directory; ``--no-resource`` runs the
authorization scenarios without the RFC 8707 ``resource`` parameter (the suite then sends
none); ``--only authorization|2026-07-28|2025-11-25`` runs one of the three (repeatable).
"""

# Runs our own server and the pinned suite by absolute path, with arguments built here.
# ruff: noqa: S603

from __future__ import annotations

import argparse
import datetime as dt
import html.parser
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SUITE = HERE / "node_modules" / "@modelcontextprotocol" / "conformance"
SUITE_CLI = SUITE / "dist" / "index.js"
# The 0.2.0-alpha line imports fs.globSync, which Node.js 20 lacks: package.json pins the
# npm package "node" (22.x), whose binary lands in node_modules/.bin.
NODE = HERE / "node_modules" / ".bin" / "node"

SERVER_START_TIMEOUT = 180.0
SUITE_TIMEOUT = 420.0  # the suite itself waits at most 300 s for the callback
CALLBACK_PATH = "/callback"
#: The requirement sets whose server scenarios run, newest first.
SERVER_REQUIREMENTS = ("2026-07-28", "2025-11-25")
#: Server scenarios (or single checks) Breeze is expected to fail, each with the reason.
EXPECTED_FAILURES = HERE / "expected-failures.yml"
DEMO_OWNER = "owner@demo.example"


def log(message: str) -> None:
    print(f"[conformance] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The Breeze server ------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[str]
    issuer: str  # the public URL: the key proxy's, in front of ``direct``
    direct: str  # where Breeze itself listens
    env: dict[str, str]  # its environment, for the CLI
    log_path: Path
    password: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    lines: list[str] = field(default_factory=list)

    def pump(self) -> None:
        """Copy the server's output to its log file and pick out the first-run banner."""
        assert self.process.stdout is not None
        with self.log_path.open("w", encoding="utf-8") as out:
            for line in self.process.stdout:
                out.write(line)
                out.flush()
                self.lines.append(line)
                match = re.match(r"\s*Password:\s+(\S+)", line)
                if match:
                    self.password = match.group(1)
                if "Breeze MCP" in line and " serving " in line:
                    self.ready.set()
        self.ready.set()

    def tail(self, n: int = 30) -> str:
        return "".join(self.lines[-n:])

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log("server did not stop within 60 s of SIGTERM; sending SIGINT")
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    log("server still running; killing it")
                    self.process.kill()
                    self.process.wait(timeout=30)
        return self.process.returncode


@contextmanager
def breeze_server(state_dir: Path, log_path: Path, public_port: int) -> Iterator[Server]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BREEZE_")}
    env.update({
        "BREEZE_STATE_DIR": str(state_dir),
        "BREEZE_PUBLIC_URL": f"http://127.0.0.1:{public_port}",
        "PYTHONUNBUFFERED": "1",
    })
    cmd = [sys.executable, "-m", "breeze_mcp", "serve", "--host", "127.0.0.1",
           "--port", str(port)]
    log(f"starting Breeze: {' '.join(cmd[1:])} (BREEZE_STATE_DIR={state_dir}, "
        f"BREEZE_PUBLIC_URL={env['BREEZE_PUBLIC_URL']})")
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    server = Server(process, env["BREEZE_PUBLIC_URL"], f"http://127.0.0.1:{port}", env,
                    log_path)
    pump = threading.Thread(target=server.pump, daemon=True)
    pump.start()
    try:
        wait_until_ready(server)
        yield server
    finally:
        code = server.stop()
        pump.join(timeout=10)
        log(f"Breeze stopped (exit code {code}); log: {rel(log_path)}")


def wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    server.ready.wait(SERVER_START_TIMEOUT)
    url = f"{server.direct}/.well-known/oauth-authorization-server"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise DriverError(f"Breeze exited with code {server.process.returncode} before "
                              f"it was ready:\n{server.tail()}")
        with suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code == 200:
                break
        time.sleep(0.5)
    else:
        raise DriverError(f"Breeze did not answer {url} within {SERVER_START_TIMEOUT:.0f} s:\n"
                          f"{server.tail()}")
    if not server.password:
        raise DriverError("Breeze did not print the demo owner's password (is the state "
                          f"directory really new?):\n{server.tail()}")
    log(f"Breeze is up at {server.direct}")


def create_key(server: Server) -> str:
    """An ``ai:execute`` key of the demo tenant, made with the CLI as an operator would, with a
    limit the suite's few hundred requests stay far below."""
    done = subprocess.run(
        [sys.executable, "-m", "breeze_mcp", "api-key", "create", "--json", "--tenant", "demo",
         "--name", "conformance suite", "--scopes", "ai:read,ai:write,ai:execute",
         "--rate-limit", "100000/minute"],
        cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise DriverError(f"api-key create failed ({done.returncode}): {done.stderr.strip()}")
    key = json.loads(done.stdout)["key"]
    log(f"created API key {key[:12]}… (ai:execute) for the MCP server scenarios")
    return str(key)


class DriverError(Exception):
    """The harness could not do its part (not a conformance failure of the server)."""


# The key proxy: the suite cannot send a credential ---------------------------------------

#: Connection-level headers (RFC 9110 §7.6.1), which a proxy does not pass on; the length
#: is recomputed.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length"})


class KeyProxy:
    """A loopback reverse proxy in front of Breeze, as a TLS-terminating one would sit in
    front of a deployment (Breeze's public URL is the proxy's): every request is passed on
    unchanged (method, path, ``Host``, ``Origin`` and the other headers, body) and answered
    with what Breeze answered; one for ``/mcp`` without credentials gets ``Authorization:
    Bearer <key>``. Breeze's own checks therefore see exactly what the suite sent."""

    def __init__(self, upstream: str, key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.key = key
        self.client = httpx.AsyncClient(timeout=60, follow_redirects=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: nothing to set up
            return
        request = Request(scope, receive)
        headers = [(k, v) for k, v in request.headers.raw
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]
        path = scope["path"]
        if (path == "/mcp" or path.startswith("/mcp/")) and "authorization" not in request.headers:
            headers.append((b"authorization", f"Bearer {self.key}".encode()))
        query = f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else ""
        answer = await self.client.request(
            request.method, f"{self.upstream}{scope['raw_path'].decode('latin-1')}{query}",
            headers=headers, content=await request.body())
        response = Response(answer.content, status_code=answer.status_code)
        response.raw_headers = [
            *((k, v) for k, v in answer.headers.raw
              if k.decode("latin-1").lower() not in HOP_BY_HOP),
            (b"content-length", str(len(answer.content)).encode()),
        ]
        await response(scope, receive, send)


@contextmanager
def key_proxy(port: int, upstream: str, key: str) -> Iterator[str]:
    """Serve the proxy on ``127.0.0.1:port`` for the duration; yields its URL."""
    config = uvicorn.Config(KeyProxy(upstream, key), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="off", server_header=False,
                            date_header=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="key-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the key proxy did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)



# The human: sign-in and consent forms over HTTP -----------------------------------------


class FormParser(html.parser.HTMLParser):
    """The <input> elements of each <form> on a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._current = {"action": a.get("action", ""), "method": a.get("method", "get"),
                             "inputs": []}
            self.forms.append(self._current)
        elif tag in ("input", "button", "select") and self._current is not None:
            self._current["inputs"].append({"tag": tag, **a})

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def forms_of(page: str) -> list[dict[str, Any]]:
    parser = FormParser()
    parser.feed(page)
    return parser.forms


def hidden_fields(form: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i["name"], i.get("value", "")) for i in form["inputs"]
            if i["tag"] == "input" and i.get("type") == "hidden" and i.get("name")]


def form_data(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """httpx wants repeated fields (scope_choice) as a list under one key."""
    data: dict[str, list[str]] = {}
    for name, value in pairs:
        data.setdefault(name, []).append(value)
    return data


def describe(response: httpx.Response) -> str:
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.text))[:400]
    return (f"{response.request.method} {response.request.url} -> {response.status_code} "
            f"(Location: {response.headers.get('location')}) {text}")


def play_human(authorization_url: str, issuer: str, email: str, password: str) -> str:
    """Sign in and approve; return the Location the browser would be sent to."""
    with httpx.Client(base_url=issuer, timeout=30, follow_redirects=False) as browser:
        page = browser.get(authorization_url)
        if page.status_code == 200 and 'name="password"' in page.text:
            login = next((f for f in forms_of(page.text)
                          if any(i.get("name") == "password" for i in f["inputs"])), None)
            if login is None:
                raise DriverError(f"no sign-in form on the page: {describe(page)}")
            data = [*hidden_fields(login), ("email", email), ("password", password)]
            signed_in = browser.post(login["action"] or "/login", data=form_data(data))
            if signed_in.status_code not in (302, 303):
                raise DriverError(f"sign-in did not redirect: {describe(signed_in)}")
            page = browser.get(signed_in.headers["location"])
        if page.status_code in (302, 303):  # e.g. an error sent straight to the client
            return page.headers["location"]
        consent = next((f for f in forms_of(page.text)
                        if any(i.get("name") == "scope_choice" for i in f["inputs"])), None)
        if page.status_code != 200 or consent is None:
            raise DriverError(f"expected the consent form: {describe(page)}")
        data = hidden_fields(consent)
        for i in consent["inputs"]:
            if i.get("name") == "scope_choice" and "checked" in i and "disabled" not in i:
                data.append(("scope_choice", i.get("value", "")))
        data.append(("decision", "approve"))
        log("consent: approving " + (", ".join(v for k, v in data if k == "scope_choice")
                                     or "(nothing offered)"))
        approved = browser.post(consent["action"] or "/authorize", data=form_data(data))
        if approved.status_code not in (302, 303) or "location" not in approved.headers:
            raise DriverError(f"consent did not redirect: {describe(approved)}")
        return str(approved.headers["location"])


def deliver(location: str, callback_prefix: str) -> None:
    """Follow the redirect into the suite's callback server, as the browser would."""
    if not location.startswith(callback_prefix):
        raise DriverError(f"redirect {location!r} is not to the suite's callback "
                          f"{callback_prefix}")
    for attempt in range(20):
        try:
            httpx.get(location, timeout=10)
            return
        except httpx.TransportError:
            if attempt == 19:
                raise
            time.sleep(0.25)


# The suite ------------------------------------------------------------------------------


def suite_version() -> str:
    return str(json.loads((SUITE / "package.json").read_text())["version"])


def node_cmd(*args: str) -> list[str]:
    return [str(NODE), str(SUITE_CLI), *args]


def suite_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{NODE.parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    return env


def listed_scenarios() -> list[str]:
    out = subprocess.run(node_cmd("list", "--authorization"), cwd=HERE, env=suite_env(),
                         capture_output=True, text=True, timeout=120, check=True).stdout
    names = re.findall(r"^\s+- (\S+)", out, flags=re.MULTILINE)
    if not names:
        raise DriverError(f"the suite listed no authorization scenarios:\n{out}")
    return names


@dataclass
class SuiteRun:
    exit_code: int | None
    driver_error: str | None


def run_authorization(server: Server, client_id: str, callback_port: int,
                      out_dir: Path, log_path: Path, resource: str | None) -> SuiteRun:
    args = ["authorization", "--url", server.issuer, "--client-id", client_id,
            "--port", str(callback_port), "--output-dir", str(out_dir)]
    if resource:
        args += ["--resource", resource]
    log("running: conformance " + " ".join(args))
    process = subprocess.Popen(node_cmd(*args), cwd=HERE, env=suite_env(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    callback_prefix = f"http://127.0.0.1:{callback_port}{CALLBACK_PATH}"
    authorize_prefix = f"{server.issuer}/authorize?"
    driver_error: str | None = None
    timer = threading.Timer(SUITE_TIMEOUT, process.kill)
    timer.start()
    assert process.stdout is not None
    try:
        with log_path.open("w", encoding="utf-8") as out:
            for line in process.stdout:
                out.write(line)
                out.flush()
                print(f"  | {line}", end="", flush=True)
                if line.startswith(authorize_prefix):
                    try:
                        assert server.password is not None
                        location = play_human(line.strip(), server.issuer, DEMO_OWNER,
                                              server.password)
                        log(f"redirect to the client: {redact(location)}")
                        deliver(location, callback_prefix)
                    except Exception as exc:  # never leave the suite waiting 5 minutes
                        driver_error = f"consent step: {exc}"
                        log(f"DRIVER ERROR in the consent step: {exc}")
                        process.kill()
        process.wait(timeout=30)
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    if process.returncode is not None and process.returncode < 0 and driver_error is None:
        driver_error = f"the suite was killed after {SUITE_TIMEOUT:.0f} s"
    return SuiteRun(process.returncode, driver_error)


def redact(url: str) -> str:
    return re.sub(r"(code=)[^&]+", r"\1…", url)


def run_server(url: str, requirements: str, out_dir: Path, log_path: Path) -> SuiteRun:
    """``conformance server`` for one revision's requirement set, against ``url``."""
    args = ["server", "--url", url, "--requirements", requirements,
            "--expected-failures", str(EXPECTED_FAILURES), "--output-dir", str(out_dir)]
    log("running: conformance " + " ".join(args))
    process = subprocess.Popen(node_cmd(*args), cwd=HERE, env=suite_env(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(SUITE_TIMEOUT, process.kill)
    timer.start()
    assert process.stdout is not None
    try:
        with log_path.open("w", encoding="utf-8") as out:
            for line in process.stdout:
                out.write(line)
                out.flush()
                print(f"  | {line}", end="", flush=True)
        process.wait(timeout=30)
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    killed = process.returncode is not None and process.returncode < 0
    return SuiteRun(process.returncode,
                    f"the suite was killed after {SUITE_TIMEOUT:.0f} s" if killed else None)


# Results --------------------------------------------------------------------------------


RESULT_DIR = re.compile(r"^(?:authorization-server-|server-)?(?P<name>.+)"
                        r"-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


def collect(out_dir: Path) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out_dir.glob("*/checks.json")):
        match = RESULT_DIR.match(path.parent.name)
        name = match.group("name") if match else path.parent.name
        results[name] = json.loads(path.read_text())
    return results


def verdict(checks: list[dict[str, Any]] | None) -> str:
    """An authorization scenario's verdict: every check must have tested us and passed."""
    if not checks:
        return "MISSING"
    statuses = {c.get("status") for c in checks}
    if "FAILURE" in statuses:
        return "FAIL"
    if "SKIPPED" in statuses:  # e.g. "requires --client-id": the scenario did not test us
        return "SKIPPED"
    return "PASS"


def expected_failures(path: Path = EXPECTED_FAILURES) -> dict[str, str]:
    """The ``server`` entries of the expected-failures file (``scenario`` or
    ``scenario:check``), each with the reason written after it."""
    entries: dict[str, str] = {}
    section = None
    for line in path.read_text().splitlines():
        if re.match(r"^\w+:", line):
            section = line.split(":")[0]
        match = re.match(r"^\s+- (\S+)\s*(?:#\s*(.*))?$", line)
        if match and section == "server":
            entries[match.group(1)] = match.group(2) or ""
    return entries


#: Check statuses the suite counts against a scenario (a WARNING too, unless baselined).
FAILING = {"FAILURE", "WARNING"}


def not_scored(requirements: str) -> dict[str, str]:
    """Server scenarios the suite runs for a requirement set without scoring them (extensions,
    scenarios pending in the suite itself), each with the suite's reason: read from the set's
    own file, so they can be told apart in the report; they cannot fail the run."""
    text = (SUITE / "requirements" / f"{requirements}.yaml").read_text()
    return {m.group(1): m.group(3) for m in re.finditer(
        r"- scenario: (\S+)\n\s+leg: (\w+)\n\s+reason: (\S+)", text) if m.group(2) == "server"}


def server_verdict(name: str, checks: list[dict[str, Any]] | None,
                   expected: dict[str, str], unscored: dict[str, str]) -> str:
    """A server scenario's verdict the way the suite judges it against the baseline."""
    if not checks:
        return "MISSING"
    failing = [c for c in checks if c.get("status") in FAILING]
    if name in unscored:
        return (f"not scored ({unscored[name]}): "
                + (f"{len(failing)} check(s) fail" if failing else "passes"))
    if name in expected:
        return "EXPECTED FAIL" if failing else "STALE (now passes)"
    excused = [c for c in failing if f"{name}:{c.get('id')}" in expected]
    if len(excused) < len(failing):
        return "FAIL"
    if not excused:
        return "PASS"
    passed = sum(c.get("status") == "SUCCESS" for c in checks)
    skipped = sum(c.get("status") == "SKIPPED" for c in checks)
    return (f"EXPECTED FAIL ({len(excused)} of {len(checks)} checks; {passed} pass"
            + (f", {skipped} skipped)" if skipped else ")"))


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def rel(path: Path) -> str:
    with suppress(ValueError):
        return str(path.relative_to(ROOT))
    return str(path)


PARTS = ("authorization", *SERVER_REQUIREMENTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-state", action="store_true",
                        help="keep the temporary state directory (embedded database)")
    parser.add_argument("--no-resource", action="store_true",
                        help="do not pass --resource (no RFC 8707 resource parameter)")
    parser.add_argument("--only", action="append", choices=PARTS,
                        help="run only this part (repeatable; default all)")
    args = parser.parse_args(argv)
    parts = args.only or list(PARTS)

    if not SUITE_CLI.exists() or not NODE.exists():
        log("the suite is not installed: run `npm ci` in conformance/ (make conformance does)")
        return 2
    version = suite_version()
    started = dt.datetime.now(dt.UTC)
    results_dir = HERE / "results" / started.strftime("%Y%m%dT%H%M%SZ")
    results_dir.mkdir(parents=True, exist_ok=True)
    node_version = subprocess.run([str(NODE), "--version"], capture_output=True, text=True,
                                  check=True).stdout.strip()
    log(f"@modelcontextprotocol/conformance {version} on Node.js {node_version}")
    listed = listed_scenarios()
    log("authorization scenarios: " + ", ".join(listed))
    expected = expected_failures()

    state_dir = Path(tempfile.mkdtemp(prefix="breeze-conformance-"))
    runs: dict[str, SuiteRun] = {}
    driver_error: str | None = None
    issuer = ""
    try:
        public_port = free_port()
        with breeze_server(state_dir, results_dir / "server.log", public_port) as server, \
                key_proxy(public_port, server.direct, create_key(server)):
            issuer = server.issuer
            log(f"key proxy up at {issuer}, in front of {server.direct}")
            if "authorization" in parts:
                runs["authorization"] = authorization(server, args, results_dir)
            for requirements in SERVER_REQUIREMENTS:
                if requirements in parts:
                    runs[requirements] = run_server(
                        f"{issuer}/mcp", requirements, results_dir / f"server-{requirements}",
                        results_dir / f"server-{requirements}.log")
            driver_error = next((r.driver_error for r in runs.values() if r.driver_error),
                                None)
    except DriverError as exc:
        driver_error = str(exc)
        log(f"DRIVER ERROR: {exc}")
    except KeyboardInterrupt:
        driver_error = "interrupted"
        log("interrupted")
    finally:
        if args.keep_state:
            log(f"state directory kept: {state_dir}")
        else:
            shutil.rmtree(state_dir, ignore_errors=True)

    summary = [
        f"# MCP conformance, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- suite: @modelcontextprotocol/conformance {version} (Node.js {node_version})",
        f"- server: Breeze MCP behind the key proxy at {issuer or '(not started)'}, fresh "
        "embedded database",
        f"- authorization options: "
        f"{'no resource parameter' if args.no_resource else 'resource=<issuer>/mcp'}",
        f"- driver error: {driver_error or 'none'}",
    ]
    details: list[str] = []
    ok = driver_error is None and all(p in runs for p in parts)
    for part in parts:
        run = runs.get(part)
        if part == "authorization":
            verdicts, rows = authorization_verdicts(results_dir / "suite", listed)
            passed = run is not None and run.exit_code == 0 and all(
                v == "PASS" for v in verdicts.values())
            summary.append(f"- authorization: {'PASS' if passed else 'FAIL'} "
                           f"({sum(v == 'PASS' for v in verdicts.values())} of "
                           f"{len(verdicts)} scenarios passed; suite exit code "
                           f"{run.exit_code if run else 'not run'})")
        else:
            verdicts, rows = server_verdicts(results_dir / f"server-{part}", expected,
                                             not_scored(part))
            scored = {n: v for n, v in verdicts.items() if not v.startswith("not scored")}
            passed = run is not None and run.exit_code == 0 and all(
                v.startswith(("PASS", "EXPECTED FAIL")) for v in scored.values())
            checks = [(n, c) for n, cs in collect(results_dir / f"server-{part}").items()
                      if n in scored for c in cs if c.get("status") != "INFO"]
            excused = sum(f"{n}:{c.get('id')}" in expected for n, c in checks
                          if c.get("status") in FAILING)
            summary.append(
                f"- server, --requirements {part}: {'PASS' if passed else 'FAIL'}: "
                f"{len(scored)} scored scenarios, "
                f"{sum(v == 'PASS' for v in scored.values())} passing every check, "
                f"{sum(v.startswith('EXPECTED') for v in scored.values())} failing only checks "
                f"listed in expected-failures.yml, "
                f"{sum(not v.startswith(('PASS', 'EXPECTED')) for v in scored.values())} "
                f"failing others; checks: "
                f"{sum(c.get('status') == 'SUCCESS' for _, c in checks)} passed, {excused} "
                f"expected failures, "
                f"{sum(c.get('status') in FAILING for _, c in checks) - excused} unexpected, "
                f"{sum(c.get('status') == 'SKIPPED' for _, c in checks)} skipped; "
                f"{len(verdicts) - len(scored)} unscored scenarios run besides; suite exit code "
                f"{run.exit_code if run else 'not run'}")
        ok = ok and passed
        details += ["", f"## {part}", "",
                    table([["Scenario", "Result"], *([n, v] for n, v in verdicts.items())]),
                    "", table(rows)]
    summary += [f"- result: {'PASS' if ok else 'FAIL'}", *details, ""]
    (results_dir / "summary.md").write_text("\n".join(summary))
    print()
    print("\n".join(summary))
    log(f"results: {rel(results_dir)}")
    return 0 if ok else 1


def authorization(server: Server, args: argparse.Namespace, results_dir: Path) -> SuiteRun:
    callback_port = free_port()
    registration = httpx.post(f"{server.issuer}/register", timeout=30, json={
        "client_name": "MCP conformance suite",
        "redirect_uris": [f"http://127.0.0.1:{callback_port}{CALLBACK_PATH}"],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    })
    if registration.status_code != 201:
        raise DriverError(f"client registration failed: {registration.status_code} "
                          f"{registration.text}")
    client_id = registration.json()["client_id"]
    log(f"registered public client {client_id}")
    resource = None if args.no_resource else f"{server.issuer}/mcp"
    return run_authorization(server, client_id, callback_port, results_dir / "suite",
                             results_dir / "suite.log", resource)


def _check_rows(name: str, checks: list[dict[str, Any]] | None) -> list[list[str]]:
    if not checks:
        return [[name, "-", "MISSING", "the scenario produced no checks.json"]]
    rows = []
    for c in checks:
        detail = (c.get("errorMessage") or c.get("description") or "").replace("|", "/")
        rows.append([name, str(c.get("id")), str(c.get("status")),
                     " ".join(detail.split())[:110]])
    return rows


def authorization_verdicts(out_dir: Path, listed: list[str]
                           ) -> tuple[dict[str, str], list[list[str]]]:
    results = collect(out_dir)
    rows = [["Scenario", "Check", "Status", "Detail"]]
    verdicts: dict[str, str] = {}
    for name in [*listed, *(n for n in results if n not in listed)]:
        verdicts[name] = verdict(results.get(name))
        rows += _check_rows(name, results.get(name))
    return verdicts, rows


def server_verdicts(out_dir: Path, expected: dict[str, str], unscored: dict[str, str]
                    ) -> tuple[dict[str, str], list[list[str]]]:
    results = collect(out_dir)
    rows = [["Scenario", "Check", "Status", "Detail"]]
    verdicts: dict[str, str] = {}
    for name, checks in results.items():
        verdicts[name] = server_verdict(name, checks, expected, unscored)
        rows += _check_rows(name, checks)
    return verdicts, rows


if __name__ == "__main__":
    raise SystemExit(main())
