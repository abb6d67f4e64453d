"""A real MCP server on the Python SDK (`mcp` on PyPI), for tether's tests.

    python mcp_server.py --port 8765 [--host 127.0.0.1]
                         [--transport streamable-http|sse|stdio]
                         [--json-response] [--stateless] [--startup-delay 1.5]
                         [--session-idle-timeout SECONDS]

--startup-delay sleeps before the server binds its port, like a server that
loads a model or runs migrations first. --session-idle-timeout ends a
streamable-HTTP session that had no request in flight for that long (the
SDK's default is 30 minutes).
"""

import argparse
import asyncio
import time

from mcp.server import MCPServer
from mcp.server.mcpserver import Context


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--session-idle-timeout", type=float, default=None)
    parser.add_argument("--transport", default="streamable-http", choices=["streamable-http", "sse", "stdio"])
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--stateless", action="store_true")
    parser.add_argument("--startup-delay", type=float, default=0.0)
    args = parser.parse_args()

    server = MCPServer("tether-test-peer")

    @server.tool()
    def echo(message: str) -> str:
        """Echoes the message back."""
        return message

    @server.tool()
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool()
    async def slow(seconds: float, ctx: Context) -> str:
        """Sleeps, reporting progress every 100 ms, then answers."""
        steps = max(1, int(seconds * 10))
        for step in range(steps):
            await ctx.report_progress(step + 1, steps)
            await asyncio.sleep(seconds / steps)
        return f"slept {seconds}"

    if args.startup_delay > 0:
        time.sleep(args.startup_delay)

    if args.transport == "stdio":
        server.run()
    elif args.transport == "sse":
        server.run(transport="sse", host=args.host, port=args.port)
    else:
        server.run(
            transport="streamable-http",
            host=args.host,
            port=args.port,
            json_response=args.json_response,
            stateless_http=args.stateless,
            **({"session_idle_timeout": args.session_idle_timeout}
               if args.session_idle_timeout else {}),
        )


if __name__ == "__main__":
    main()
