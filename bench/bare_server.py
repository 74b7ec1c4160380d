"""The comparison server: a bare ``mcp`` SDK server with one no-op tool.

Stateless Streamable HTTP, JSON responses, no auth: the SDK's ``MCPServer`` served by its own
``streamable_http_app`` under uvicorn with the same settings ``breeze-mcp serve`` uses (one
worker, log level warning, no proxy headers, no server header). Run as
``python -m bench.bare_server --port P``.
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
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    uvicorn.run(
        build_app(),
        host=args.host,
        port=args.port,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
