"""``python -m bench.instructions``: instructions per request, ours vs the bare SDK.

The throughput benchmark (``python -m bench``) measures time, which on a shared or virtual
machine drifts by ±10 % between runs. This one counts what does not drift: the CPU
instructions each server executes per request, under valgrind's callgrind, for the same
requests as the ``bare-sdk``, ``ours-mcp``, ``ours-mcp-2026`` and ``ours-rest`` scenarios. Each
server runs alone under callgrind (one worker, exactly as the benchmark starts it); after a
warm-up the counters are zeroed (``callgrind_control -z``), the measured requests are sent one
at a time over a keep-alive connection, and the counters are dumped (``callgrind_control -d``).

Instructions are not time: system calls, cache misses and waiting are not in them. They show
how much work each server does per request, repeatably: the servers run with a fixed hash seed
(``PYTHONHASHSEED=0``, unless one is set), so two runs probe dicts and sets alike and agree
within about 0.3 % on a quiet machine. A busy one adds event-loop turns while the server waits
for the database, a percent or two: compare scenarios measured in the same run.
Needs ``valgrind`` (``callgrind_control`` comes with it); takes about two minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.bare_server import NOOP_TOOL
from bench.environment import BenchEnvironment, BenchSetupError

PROTOCOL_VERSION = "2025-06-18"
MODERN_VERSION = "2026-07-28"
#: The envelope a 2026-07-28 request carries (the same as the throughput benchmark's).
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1.0.0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
WARMUP = 50


@dataclass(frozen=True)
class Case:
    name: str
    server: str  # "bare" or "ours"
    path: str
    tool: str | None  # MCP tools/call of this tool; None: REST body
    arguments: dict[str, object]
    version: str = PROTOCOL_VERSION  # of MCP, for a tools/call


CASES = (
    Case("bare-sdk", "bare", "/mcp", NOOP_TOOL, {}),
    Case("ours-mcp", "ours", "/mcp", "list_devices", {"limit": 5}),
    Case("ours-mcp-2026", "ours", "/mcp", "list_devices", {"limit": 5}, MODERN_VERSION),
    Case("ours-rest", "ours", "/api/v1/tools/list_devices", None, {"limit": 5}),
)


def _body(case: Case, i: int) -> bytes:
    if case.tool is None:
        return json.dumps(case.arguments).encode()
    params: dict[str, object] = {"name": case.tool, "arguments": case.arguments}
    if case.version == MODERN_VERSION:
        params["_meta"] = MODERN_META
    return json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                       "params": params}).encode()


def _ok(case: Case, response: httpx.Response) -> bool:
    if response.status_code != 200:
        return False
    body = response.json()
    if case.tool is None:
        return isinstance(body.get("result"), dict)
    return "result" in body and not body["result"].get("isError", False)


def measure(env: BenchEnvironment, case: Case, requests: int, out_dir: Path,
            api_key: str, concurrency: int = 1) -> float:
    """Instructions per request of ``case``'s server."""
    argv = (env.bare_argv() if case.server == "bare"
            else [sys.executable, "-m", "breeze_mcp", "serve"])
    ready = env._bare_ready if case.server == "bare" else env._ours_ready
    out = out_dir / f"{case.name}.%p.callgrind"
    server = env._start(f"callgrind-{case.name}",
                        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                         "--dump-instr=no", *argv], ready=ready)
    headers = {"Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    if case.tool is not None:
        headers["MCP-Protocol-Version"] = case.version
        if case.version == MODERN_VERSION:
            headers.update({"Mcp-Method": "tools/call", "Mcp-Name": case.tool})
    if case.server == "ours":
        headers["Authorization"] = f"Bearer {api_key}"
    url = f"http://127.0.0.1:{server.port}{case.path}"
    def send(count: int, offset: int = 0) -> None:
        with httpx.Client(timeout=600) as client:
            for i in range(offset, offset + count):
                response = client.post(url, content=_body(case, i), headers=headers)
                if not _ok(case, response):
                    raise BenchSetupError(f"{case.name}: unexpected answer "
                                          f"{response.status_code} {response.text[:300]}")

    def send_concurrently(count: int) -> None:
        # ``concurrency`` keep-alive connections, each sending its share one at a time.
        shares = [count // concurrency + (n < count % concurrency) for n in range(concurrency)]
        with ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(send, share, n * count) for n, share in enumerate(shares)]:
                future.result()

    try:
        send_concurrently(max(WARMUP, 4 * concurrency))
        subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True,
                       capture_output=True)
        send_concurrently(requests)
        subprocess.run(["callgrind_control", "-d", "measured", str(server.pid)],
                       check=True, capture_output=True)
        dump = out_dir / f"{case.name}.{server.pid}.callgrind.1"
        deadline = time.monotonic() + 30
        while not dump.exists() or "summary:" not in dump.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise BenchSetupError(f"{case.name}: callgrind wrote no dump ({dump})")
            time.sleep(0.2)
        match = re.search(r"^summary: (\d+)", dump.read_text(errors="replace"), re.MULTILINE)
        assert match is not None
        return int(match.group(1)) / requests
    finally:
        env._stop_server(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300,
                        help="measured requests per scenario (default 300)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="keep-alive connections sending at once (default 1: one request "
                        "at a time); more shows what concurrent requests cost together, "
                        "such as the garbage collector's work over their live objects")
    parser.add_argument("--bare-gc-tuned", action="store_true",
                        help="give the bare SDK server breeze-mcp serve's garbage-collector "
                        "settings too")
    parser.add_argument("--scenario", action="append", choices=[c.name for c in CASES],
                        help="measure only this scenario (repeatable; default all; the "
                        "ratio column needs bare-sdk)")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="keep the callgrind dumps here (callgrind_annotate reads them)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < args.concurrency:
        parser.error("--concurrency >= 1 and --requests >= --concurrency")
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("valgrind (with callgrind_control) is needed: apt-get install valgrind",
              file=sys.stderr)
        return 2
    results: dict[str, float] = {}
    with BenchEnvironment(bare_gc_tuned=args.bare_gc_tuned) as env:
        env._env.setdefault("PYTHONHASHSEED", "0")  # the servers' (see the module's docstring)
        out_dir = args.keep or env.tmp / "callgrind"
        out_dir.mkdir(parents=True, exist_ok=True)
        for case in CASES:
            if args.scenario and case.name not in args.scenario:
                continue
            print(f"[bench] callgrind: {case.name}", file=sys.stderr, flush=True)
            results[case.name] = measure(env, case, args.requests, out_dir, env.api_key,
                                         args.concurrency)
    base = results.get("bare-sdk")
    print(f"\n{'scenario':<13}  {'requests':>8}  {'M instr/req':>11}  {'x bare-sdk':>10}")
    print(f"{'-' * 13}  {'-' * 8}  {'-' * 11}  {'-' * 10}")
    for name, per_request in results.items():
        ratio = f"{per_request / base:>10.2f}" if base else f"{'-':>10}"
        print(f"{name:<13}  {args.requests:>8}  {per_request / 1e6:>11.3f}  {ratio}")
    print("\nx bare-sdk = instructions per request / bare-sdk's (<= 1: less work per request).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
