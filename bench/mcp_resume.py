"""After a long stall: tether mcp beside supergateway and mcp-remote, each a
stdio proxy in front of the Python MCP SDK's server over streamable HTTP,
driven by the SDK's client.

    python mcp_resume.py [--stall 60] [--rounds 3] [--fault restart|expire]
                         [--session-idle 20] [--json]

Each round, every proxy (with its whole process tree) is stopped with
SIGSTOP for `--stall` seconds, as a laptop lid, a debugger or a paused VM
does. Meanwhile its server (one per proxy) restarts on the same port
(`--fault restart`: the session and every connection are gone), or is left
to end idle sessions after `--session-idle` seconds (`--fault expire`:
whether a session expires depends on what the proxy keeps open, so this
one may measure no fault at all). Then the proxy gets SIGCONT and
one echo call is made at once: the time from SIGCONT to the answer, or
the error, is recorded. The call has a 30 s limit. The proxies are
stopped together and resumed one after another, so every one stalls at
least `--stall` seconds.

Goal: tether answers within 1 s of SIGCONT.
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
TETHER = os.environ.get("TETHER_BIN", str(ROOT / "target/release/tether"))
SERVER = ROOT / "tests/peers/mcp_server.py"
PYTHON = TOOLS / "venv/bin/python"
CALL_LIMIT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.05):
            return True
    except OSError:
        return False


def proxies(url: str) -> dict:
    found = {"tether": [TETHER, "mcp", url]}
    peers = {
        "supergateway 4.0.0": (TOOLS / "bench-npm/node_modules/.bin/supergateway", ["--streamableHttp", url]),
        "mcp-remote 0.15.1": (TOOLS / "bench-npm/node_modules/.bin/mcp-remote", [url, "--transport", "http-only"]),
    }
    for name, (path, args) in peers.items():
        if path.exists():
            found[name] = [str(path), *args]
    return found


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_signal(root: int, sig: int) -> None:
    for pid in [root, *children(root)]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Proxy:
    def __init__(self, name: str, server_port: int):
        self.name = name
        self.server_port = server_port
        self.url = f"http://127.0.0.1:{server_port}/mcp"
        self.cmd = proxies(self.url)[name]
        self.pid = None
        self.session = None


async def echo(session, message: str) -> None:
    with anyio.fail_after(CALL_LIMIT):
        result = await session.call_tool("echo", {"message": message})
    text = result.content[0].text if result.content else ""
    if result.is_error or text != message:
        raise RuntimeError(f"a wrong answer: {text[:120]}")


async def run(args) -> dict:
    names = list(proxies("http://x/mcp"))
    servers, results = {}, {name: [] for name in names}
    stack = []

    def start_server(port: int) -> None:
        servers[port] = subprocess.Popen(
            [str(PYTHON), str(SERVER), "--port", str(port),
             "--session-idle-timeout", str(args.session_idle)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 30
        while not accepts(port):
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in 30 s")
            time.sleep(0.01)

    def kill_server(port: int) -> None:
        server = servers.pop(port)
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(timeout=10)

    try:
        for name in names:
            port = free_port()
            start_server(port)
            stack.append(Proxy(name, port))
        async with contextlib.AsyncExitStack() as exits:
            for proxy in stack:
                before = set(children(os.getpid()))
                params = StdioServerParameters(command=proxy.cmd[0], args=proxy.cmd[1:], env=dict(os.environ))
                log = (open(f"{args.logs}/{proxy.name.split()[0]}.log", "w") if args.logs
                       else open(os.devnull, "w"))
                read, write = await exits.enter_async_context(stdio_client(params, errlog=log))
                new = [p for p in children(os.getpid()) if p not in before]
                # The proxy is the direct child the SDK started.
                direct = [p for p in new if _ppid(p) == os.getpid()]
                proxy.pid = direct[0]
                proxy.session = await exits.enter_async_context(ClientSession(read, write))
                with anyio.fail_after(30):
                    await proxy.session.initialize()
                await echo(proxy.session, "warm")
            for n in range(args.rounds):
                stopped = time.monotonic()
                for proxy in stack:
                    tree_signal(proxy.pid, signal.SIGSTOP)
                if args.fault == "restart":
                    for proxy in stack:
                        kill_server(proxy.server_port)
                        start_server(proxy.server_port)
                await anyio.sleep(max(0.0, args.stall - (time.monotonic() - stopped)))
                for proxy in stack:
                    t = time.monotonic()
                    tree_signal(proxy.pid, signal.SIGCONT)
                    try:
                        await echo(proxy.session, f"after{n}")
                        results[proxy.name].append({"ms": (time.monotonic() - t) * 1000})
                    except BaseException as e:  # noqa: BLE001 - a failed call is data
                        results[proxy.name].append({
                            "ms": (time.monotonic() - t) * 1000,
                            "error": f"{type(e).__name__}: {str(e)[:160]}"})
                    print(f"round {n + 1} {proxy.name}: {results[proxy.name][-1]}", file=sys.stderr)
    finally:
        for proxy in stack:
            if proxy.pid:
                tree_signal(proxy.pid, signal.SIGCONT)
        for port in list(servers):
            kill_server(port)
    return results


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stall", type=float, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--session-idle", type=float, default=20)
    ap.add_argument("--fault", choices=["restart", "expire"], default="restart")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--logs", help="a directory for each proxy's stderr (tether's at info)")
    args = ap.parse_args()
    if args.logs:
        os.makedirs(args.logs, exist_ok=True)
        os.environ.setdefault("TETHER_LOG", "info")
    results = anyio.run(run, args)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    fault = ("the server restarted during it" if args.fault == "restart"
             else f"server session idle timeout {args.session_idle:.0f} s")
    print(f"# First call after a {args.stall:.0f} s stall ({fault})\n\n- date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
          f"\n- load: {os.getloadavg()[0]:.2f}\n- rounds: {args.rounds}\n")
    print("| proxy | answered | SIGCONT → answer, median | max | errors |\n|---|---|---|---|---|")
    met = True
    for name, rounds in results.items():
        good = [r["ms"] for r in rounds if "error" not in r]
        errors = [r["error"] for r in rounds if "error" in r]
        median = f"{statistics.median(good):.0f} ms" if good else "—"
        worst = f"{max(good):.0f} ms" if good else "—"
        first = errors[0] if errors else ""
        print(f"| {name} | {len(good)}/{len(rounds)} | {median} | {worst} | {first} |")
        if name == "tether":
            met = len(good) == len(rounds) and max(good) <= 1000
    print(f"\ngoal (tether answers every round within 1 s): {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
