"""A real MCP server on the Python SDK (`mcp` on PyPI), for tether's tests.

    python mcp_server.py --port 8765 [--transport streamable-http|sse|stdio]
                         [--json-response] [--stateless] [--startup-delay 1.5]

--startup-delay sleeps before the server binds its port, like a server that
loads a model or runs migrations first.
"""

import argparse
import asyncio
import time

from mcp.server import MCPServer
from mcp.server.mcpserver import Context


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8765)
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
        server.run(transport="sse", host="127.0.0.1", port=args.port)
    else:
        server.run(
            transport="streamable-http",
            host="127.0.0.1",
            port=args.port,
            json_response=args.json_response,
            stateless_http=args.stateless,
        )


if __name__ == "__main__":
    main()
