"""The comparison server: a bare ``mcp`` SDK server with one no-op tool.

Stateless Streamable HTTP, JSON responses, no auth: the SDK's ``MCPServer`` served by its own
``streamable_http_app`` under uvicorn with the same settings ``breeze-mcp serve`` uses (one
worker, log level warning, no proxy headers, no server header). Run as
``python -m bench.bare_server --port P``. The SDK is run as it ships, with CPython's default
garbage-collector settings; ``--tune-gc`` gives it ``breeze-mcp serve``'s instead
(``breeze_mcp.gc_tuning``), to compare like with like on that count too.
"""

from __future__ import annotations

import argparse
import signal

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette

NOOP_TOOL = "noop"


def build_app() -> Starlette:
    server = MCPServer("bench-bare", log_level="WARNING")

    @server.tool(name=NOOP_TOOL, description="Does nothing and returns 'ok'.")
    def noop() -> str:
        return "ok"

    # host="127.0.0.1" keeps the SDK's default DNS-rebinding protection (Host/Origin checks),
    # the counterpart of our own Host/Origin checks on /mcp.
    return server.streamable_http_app(
        stateless_http=True, json_response=True, host="127.0.0.1"
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tune-gc", action="store_true",
                        help="apply breeze-mcp serve's garbage-collector settings too")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    app = build_app()
    if args.tune_gc:
        from breeze_mcp import gc_tuning

        gc_tuning.tune()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
