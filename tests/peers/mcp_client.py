"""A real MCP client on the Python SDK (`mcp` on PyPI), driven line by line,
for tether's tests: it launches `tether mcp ...` as its stdio server, the way
an IDE does, and runs the operations a test sends it.

    python mcp_client.py [--stderr FILE] -- tether mcp ARGS...

Each stdin line is one JSON operation; each result is one JSON line on
stdout, tagged like the operation:

    {"op": "init", "timeout": 30}                 -> {"tag", "ok", "server"}
    {"op": "call", "tool": "echo", "args": {...}, "tag": "c1",
     "timeout": 10, "progress": true}             -> {"tag", "ok", "result" | "error", "elapsed"}
    {"op": "list_tools"}                          -> {"tag", "ok", "tools"}
    {"op": "ping"}                                -> {"tag", "ok"}
    {"op": "exit"}                                -> closes the session (tether sees EOF)

A call with "progress": true also emits {"tag", "event": "progress"} at its
first progress notification, so a test knows the call is running.

Calls run concurrently: a call's answer comes when it is done, so a test can
start a long call, break the server, and read the outcome.
"""

import argparse
import asyncio
import json
import os
import sys
import threading
import time

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError


def emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def error_of(e: BaseException) -> dict:
    if isinstance(e, MCPError):
        return {"code": e.code, "message": e.message, "data": e.data}
    return {"code": None, "message": f"{type(e).__name__}: {e}", "data": None}


async def run_op(session: ClientSession, op: dict) -> None:
    tag = op.get("tag", op["op"])
    started = time.monotonic()
    progress = []

    async def on_progress(value, total, message):
        if not progress:
            emit({"tag": tag, "event": "progress", "value": value})
        progress.append(value)

    try:
        kind = op["op"]
        if kind == "call":
            result = await session.call_tool(
                op["tool"],
                op.get("args", {}),
                read_timeout_seconds=op.get("timeout", 30),
                progress_callback=on_progress if op.get("progress") else None,
            )
            emit({
                "tag": tag,
                "ok": not result.is_error,
                "result": result.model_dump(mode="json", by_alias=True, exclude_none=True),
                "progress": len(progress),
                "elapsed": time.monotonic() - started,
            })
        elif kind == "list_tools":
            result = await session.list_tools()
            emit({"tag": tag, "ok": True, "tools": [t.name for t in result.tools],
                  "elapsed": time.monotonic() - started})
        elif kind == "ping":
            await session.send_ping()
            emit({"tag": tag, "ok": True, "elapsed": time.monotonic() - started})
        else:
            emit({"tag": tag, "ok": False, "error": {"message": f"unknown op {kind}"}})
    except Exception as e:  # every failure is a result the test reads
        emit({"tag": tag, "ok": False, "error": error_of(e),
              "elapsed": time.monotonic() - started})


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stderr", help="where tether's stderr goes")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    errlog = open(args.stderr, "a") if args.stderr else sys.stderr
    # The SDK passes only a few variables on by default; tether's tests set
    # TETHER_LOG and the like.
    params = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    lines = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read_stdin():
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    # A daemon thread: asyncio.run would wait for an executor's blocked read.
    threading.Thread(target=read_stdin, daemon=True).start()
    async with stdio_client(params, errlog=errlog) as (read, write):
        async with ClientSession(read, write, read_timeout_seconds=60) as session:
            async with anyio.create_task_group() as tasks:
                while True:
                    line = await lines.get()
                    if line is None:
                        break
                    line = line.strip()
                    if not line:
                        continue
                    op = json.loads(line)
                    if op["op"] == "exit":
                        break
                    if op["op"] == "init":
                        started = time.monotonic()
                        try:
                            with anyio.fail_after(op.get("timeout", 30)):
                                result = await session.initialize()
                            emit({"tag": op.get("tag", "init"), "ok": True,
                                  "server": result.server_info.name,
                                  "protocol": result.protocol_version,
                                  "elapsed": time.monotonic() - started})
                        except Exception as e:
                            emit({"tag": op.get("tag", "init"), "ok": False, "error": error_of(e),
                                  "elapsed": time.monotonic() - started})
                        continue
                    tasks.start_soon(run_op, session, op)
                tasks.cancel_scope.cancel()
    emit({"tag": "exit", "ok": True})


if __name__ == "__main__":
    asyncio.run(main())
