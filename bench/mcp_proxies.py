"""tether mcp beside mcp-proxy, supergateway and mcp-remote, driven by the
Python MCP SDK's client against server-everything over streamable HTTP.

    python mcp_proxies.py [--quick] [--json]

1. Restart survival: 20 sequential echo calls; the server is killed and
   started again (same port) before calls 6, 11 and 16. Counts the calls
   answered correctly.
2. Reconnect gap (tether): the server is killed, a call is made, the server
   starts again; from the moment its port accepts (seen by a 1 ms connect
   loop) to the call's answer.
   Beside it, the floor any client pays: a freshly started server's own
   time from accepting to answering initialize and a first call (plain HTTP).
3. Per-call latency: sequential echo calls, direct and through each proxy.

Every call has a 10 s limit and every wait is bounded; a proxy that hangs
or exits just fails its calls.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
EVERYTHING = TOOLS / "npm/node_modules/.bin/mcp-server-everything"
TETHER = os.environ.get("TETHER_BIN", str(ROOT / "target/release/tether"))
CALL_LIMIT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.05):
            return True
    except OSError:
        return False


class Server:
    """server-everything over streamable HTTP, killed and started again on
    one port."""

    def __init__(self, port: int):
        self.port = port
        self.proc = None

    def start(self, wait: bool = True) -> None:
        env = dict(os.environ, PORT=str(self.port))
        self.proc = subprocess.Popen(
            [str(EVERYTHING), "streamableHttp"], env=env, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            deadline = time.monotonic() + 30
            while not accepts(self.port):
                if time.monotonic() > deadline:
                    raise RuntimeError("server-everything did not start in 30 s")
                time.sleep(0.005)

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.proc = None
        deadline = time.monotonic() + 10
        while accepts(self.port) and time.monotonic() < deadline:
            time.sleep(0.005)

    def restart(self) -> None:
        self.kill()
        self.start()


def proxies(url: str) -> dict:
    found = {"tether": [TETHER, "mcp", url]}
    peers = {
        "mcp-proxy 0.13.0": (TOOLS / "bench-venv/bin/mcp-proxy", ["--transport", "streamablehttp", url]),
        "supergateway 4.0.0": (TOOLS / "bench-npm/node_modules/.bin/supergateway", ["--streamableHttp", url]),
        "mcp-remote 0.15.1": (TOOLS / "bench-npm/node_modules/.bin/mcp-remote", [url, "--transport", "http-only"]),
    }
    for name, (path, args) in peers.items():
        if path.exists():
            found[name] = [str(path), *args]
    return found


def text_of(result) -> str:
    return result.content[0].text if result.content else ""


async def echo(session, message: str) -> bool:
    with anyio.fail_after(CALL_LIMIT):
        result = await session.call_tool("echo", {"message": message})
    return not result.is_error and text_of(result) == f"Echo: {message}"


def stdio(cmd: list[str]):
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=dict(os.environ))
    return stdio_client(params, errlog=open(os.devnull, "w"))


async def survival(cmd: list[str], server: Server, calls: int = 20, restarts=(5, 10, 15)) -> dict:
    ok, errors = 0, []
    try:
        async with stdio(cmd) as (read, write):
            async with ClientSession(read, write) as session:
                with anyio.fail_after(30):
                    await session.initialize()
                for i in range(calls):
                    if i in restarts:
                        server.restart()
                    try:
                        if await echo(session, f"m{i}"):
                            ok += 1
                        else:
                            errors.append(f"call {i + 1}: wrong answer")
                    except BaseException as e:  # noqa: BLE001 - a failed call is data
                        errors.append(f"call {i + 1}: {type(e).__name__}: {str(e)[:120]}")
    except BaseException as e:  # noqa: BLE001
        errors.append(f"session: {type(e).__name__}: {str(e)[:120]}")
    return {"answered": ok, "calls": calls, "first_errors": errors[:3]}


async def reconnect_gap(cmd: list[str], server: Server, rounds: int) -> list[float]:
    gaps = []
    async with stdio(cmd) as (read, write):
        async with ClientSession(read, write) as session:
            with anyio.fail_after(30):
                await session.initialize()
            await echo(session, "warm")
            for n in range(rounds):
                server.kill()
                accepted = {}

                def start_and_watch():
                    time.sleep(0.2)  # the call is waiting by now
                    server.start(wait=False)
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        if accepts(server.port):
                            accepted["t"] = time.monotonic()
                            return
                        time.sleep(0.001)

                watcher = threading.Thread(target=start_and_watch)
                watcher.start()
                good = await echo(session, f"gap{n}")
                answered = time.monotonic()
                watcher.join()
                if good and "t" in accepted:
                    gaps.append((answered - accepted["t"]) * 1000)
    return gaps


def cold_floor(server: Server, rounds: int) -> list[float]:
    """What any client waits for a freshly started server: from its port
    accepting to the answers of initialize and a first echo, over plain
    HTTP."""
    import urllib.request

    floors = []
    init = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}}).encode()
    url = f"http://127.0.0.1:{server.port}/mcp"
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    for _ in range(rounds):
        server.kill()
        server.start(wait=False)
        deadline = time.monotonic() + 30
        while not accepts(server.port) and time.monotonic() < deadline:
            time.sleep(0.001)
        t = time.monotonic()
        with urllib.request.urlopen(urllib.request.Request(url, data=init, headers=base), timeout=10) as r:
            session = r.headers.get("mcp-session-id")
            r.read()
        call = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                           "params": {"name": "echo", "arguments": {"message": "x"}}}).encode()
        headers = dict(base, **{"mcp-session-id": session, "mcp-protocol-version": "2025-06-18"})
        with urllib.request.urlopen(urllib.request.Request(url, data=call, headers=headers), timeout=10) as r:
            r.read()
        floors.append((time.monotonic() - t) * 1000)
    return floors


async def latency_stdio(cmd: list[str], calls: int) -> list[float]:
    async with stdio(cmd) as (read, write):
        async with ClientSession(read, write) as session:
            with anyio.fail_after(30):
                await session.initialize()
            return await timed_calls(session, calls)


async def latency_direct(url: str, calls: int) -> list[float]:
    async with streamable_http_client(url) as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await timed_calls(session, calls)


async def timed_calls(session, calls: int) -> list[float]:
    for i in range(20):  # warm-up
        await echo(session, f"w{i}")
    times = []
    for i in range(calls):
        t = time.perf_counter()
        if not await echo(session, f"l{i}"):
            raise RuntimeError("a wrong answer")
        times.append((time.perf_counter() - t) * 1000)
    return times


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    calls = 200 if args.quick else 1000
    rounds = 5 if args.quick else 20
    report = {"survival": {}, "latency_ms": {}, "reconnect_gap_ms": None}

    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    server = Server(port)
    server.start()
    try:
        for name, cmd in proxies(url).items():
            report["survival"][name] = await survival(cmd, server)
            print(f"survival {name}: {report['survival'][name]}", file=sys.stderr)
        gaps = await reconnect_gap(proxies(url)["tether"], server, rounds)
        report["reconnect_gap_ms"] = {
            "rounds": len(gaps), "median": statistics.median(gaps), "p95": pct(gaps, 95),
            "max": max(gaps)} if gaps else None
        print(f"reconnect gap: {report['reconnect_gap_ms']}", file=sys.stderr)
        floors = cold_floor(server, rounds)
        report["cold_server_floor_ms"] = {"rounds": len(floors), "median": statistics.median(floors)}
        print(f"cold server floor: {report['cold_server_floor_ms']}", file=sys.stderr)
        direct = await latency_direct(url, calls)
        report["latency_ms"]["direct"] = {"p50": pct(direct, 50), "p99": pct(direct, 99), "calls": calls}
        for name, cmd in proxies(url).items():
            try:
                times = await latency_stdio(cmd, calls)
                report["latency_ms"][name] = {"p50": pct(times, 50), "p99": pct(times, 99), "calls": calls}
            except BaseException as e:  # noqa: BLE001
                report["latency_ms"][name] = {"error": f"{type(e).__name__}: {str(e)[:120]}"}
            print(f"latency {name}: {report['latency_ms'][name]}", file=sys.stderr)
    finally:
        server.kill()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    anyio.run(main)
