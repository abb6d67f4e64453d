"""After a long stall or a long network outage: tether mcp beside
supergateway and mcp-remote, each a stdio proxy in front of the Python MCP
SDK's server over streamable HTTP, driven by the SDK's client.

    python mcp_resume.py [--cut stop|link] [--stall 60] [--rounds 3]
                         [--fault restart|expire|none] [--session-idle 20]
                         [--logs DIR] [--json]

Each round, every proxy is cut off for `--stall` seconds:

- `--cut stop` (the default): the proxy, with its whole process tree, is
  stopped with SIGSTOP, as a laptop lid, a debugger or a paused VM does.
  The proxies are stopped together and resumed one after another, so every
  one stalls at least `--stall` seconds; each one's call is made as soon
  as it gets SIGCONT.
- `--cut link`: the proxies run in a network namespace of their own, the
  servers in another, joined by a veth pair; the proxies' end of the link
  is taken down (its routes go with it, as when a cable is pulled or Wi-Fi
  drops) and brought up again, and every proxy's call is made at once,
  together, as soon as the link is up.

Meanwhile, each proxy's server (one per proxy) restarts on the same port
(`--fault restart`: the session and every connection are gone), or is left
to end idle sessions after `--session-idle` seconds (`--fault expire`:
whether a session expires depends on what the proxy keeps open; the SDK's
server keeps a session whose GET stream is open, so this may measure no
fault at all), or is left alone (`--fault none`). The time from SIGCONT,
or from the link coming up, to the call's answer or error is recorded.
The call has a 30 s limit. Needs root and iproute2 for `--cut link`.

Goal: tether answers within 1 s.
"""

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
import mcp_proxies
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
TETHER = os.environ.get("TETHER_BIN", str(ROOT / "target/release/tether"))
SERVER = ROOT / "tests/peers/mcp_server.py"
PYTHON = TOOLS / "venv/bin/python"
CALL_LIMIT = 30.0


NET = "10.231.0"  # the veth pair's /24, in namespaces of the benchmark's own


def proxies(url: str) -> dict:
    """The proxies the issue names, beside tether."""
    found = {name: cmd for name, cmd in mcp_proxies.proxies(url).items()
             if not name.startswith("mcp-proxy")}
    for name, cmd in found.items():
        # mcp-remote refuses plain HTTP to an address other than localhost.
        if name.startswith("mcp-remote") and "//127.0.0.1:" not in url:
            cmd.append("--allow-http")
    return found


class Net:
    """Where the servers listen and the proxies run: this network
    namespace (`--cut stop`), or two of the benchmark's own joined by a
    veth pair whose proxy end can be taken down (`--cut link`)."""

    def __init__(self, cut: str):
        self.cut = cut
        self.host = "127.0.0.1"
        self.client = self.server = None
        if cut == "link":
            tag = os.getpid()
            self.client, self.server = f"tbench-c{tag}", f"tbench-s{tag}"
            for ns in (self.client, self.server):
                ip("netns", "add", ns)
                ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", self.client, "link", "add", "va", "type", "veth", "peer", "name", "vb",
               "netns", self.server)
            ip("-n", self.client, "addr", "add", f"{NET}.1/24", "dev", "va")
            ip("-n", self.server, "addr", "add", f"{NET}.2/24", "dev", "vb")
            ip("-n", self.client, "link", "set", "va", "up")
            ip("-n", self.server, "link", "set", "vb", "up")
            self.host = f"{NET}.2"

    def in_client(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.client, *cmd] if self.client else cmd

    def in_server(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.server, *cmd] if self.server else cmd

    def link(self, up: bool) -> None:
        ip("-n", self.client, "link", "set", "va", "up" if up else "down")

    def wait_accepts(self, port: int, limit: float = 30) -> None:
        """Until `port` accepts on the server's host (seen from the
        server's side: the proxies' link may be down)."""
        if not self.client:
            deadline = time.monotonic() + limit
            while not mcp_proxies.accepts(port, self.host):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start in {limit:.0f} s")
                time.sleep(0.01)
            return
        probe = ("import socket,sys,time\n"
                 f"d=time.monotonic()+{limit}\n"
                 "while time.monotonic()<d:\n"
                 "    try:\n"
                 f"        socket.create_connection(('{self.host}',{port}),timeout=0.05).close(); sys.exit(0)\n"
                 "    except OSError: time.sleep(0.01)\n"
                 "sys.exit(1)\n")
        if subprocess.run(self.in_server([sys.executable, "-c", probe])).returncode != 0:
            raise RuntimeError(f"the server did not start in {limit:.0f} s")

    def close(self) -> None:
        for ns in (self.client, self.server):
            if ns:
                subprocess.run(["ip", "netns", "del", ns], check=False)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


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
    def __init__(self, name: str, net: Net, server_port: int):
        self.name = name
        self.server_port = server_port
        self.url = f"http://{net.host}:{server_port}/mcp"
        self.cmd = net.in_client(proxies(self.url)[name])
        self.pid = None
        self.session = None


async def echo(session, message: str) -> None:
    with anyio.fail_after(CALL_LIMIT):
        result = await session.call_tool("echo", {"message": message})
    text = result.content[0].text if result.content else ""
    if result.is_error or text != message:
        raise RuntimeError(f"a wrong answer: {text[:120]}")


async def timed_echo(proxy: Proxy, since: float, message: str) -> dict:
    """The call's answer or error, timed from `since`."""
    try:
        await echo(proxy.session, message)
        return {"ms": (time.monotonic() - since) * 1000}
    except BaseException as e:  # noqa: BLE001 - a failed call is data
        return {"ms": (time.monotonic() - since) * 1000,
                "error": f"{type(e).__name__}: {str(e)[:160]}"}


async def run(args) -> dict:
    names = list(proxies("http://x/mcp"))
    servers, results = {}, {name: [] for name in names}
    stack = []
    net = Net(args.cut)

    def start_server(port: int) -> None:
        servers[port] = subprocess.Popen(
            net.in_server([str(PYTHON), str(SERVER), "--host", net.host, "--port", str(port),
                           "--session-idle-timeout", str(args.session_idle)]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        net.wait_accepts(port)

    def kill_server(port: int) -> None:
        server = servers.pop(port)
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(timeout=10)

    def record(proxy: Proxy, n: int, result: dict) -> None:
        results[proxy.name].append(result)
        print(f"round {n + 1} {proxy.name}: {result}", file=sys.stderr)

    try:
        for name in names:
            port = mcp_proxies.free_port()
            start_server(port)
            stack.append(Proxy(name, net, port))
        async with contextlib.AsyncExitStack() as exits:
            for proxy in stack:
                before = set(children(os.getpid()))
                params = StdioServerParameters(command=proxy.cmd[0], args=proxy.cmd[1:], env=dict(os.environ))
                log = (open(f"{args.logs}/{proxy.name.split()[0]}.log", "w") if args.logs
                       else open(os.devnull, "w"))
                read, write = await exits.enter_async_context(stdio_client(params, errlog=log))
                new = [p for p in children(os.getpid()) if p not in before]
                # The proxy is the direct child the SDK started (`ip netns
                # exec` execs it).
                direct = [p for p in new if _ppid(p) == os.getpid()]
                proxy.pid = direct[0]
                proxy.session = await exits.enter_async_context(ClientSession(read, write))
                with anyio.fail_after(30):
                    await proxy.session.initialize()
                await echo(proxy.session, "warm")
            for n in range(args.rounds):
                cut = time.monotonic()
                if args.cut == "stop":
                    for proxy in stack:
                        tree_signal(proxy.pid, signal.SIGSTOP)
                else:
                    net.link(up=False)
                if args.fault == "restart":
                    for proxy in stack:
                        kill_server(proxy.server_port)
                        start_server(proxy.server_port)
                await anyio.sleep(max(0.0, args.stall - (time.monotonic() - cut)))
                if args.cut == "stop":
                    for proxy in stack:
                        t = time.monotonic()
                        tree_signal(proxy.pid, signal.SIGCONT)
                        record(proxy, n, await timed_echo(proxy, t, f"after{n}"))
                else:
                    net.link(up=True)
                    t = time.monotonic()
                    answers = {}

                    async def call(proxy: Proxy) -> None:
                        answers[proxy.name] = await timed_echo(proxy, t, f"after{n}")

                    async with anyio.create_task_group() as calls:
                        for proxy in stack:
                            calls.start_soon(call, proxy)
                    for proxy in stack:
                        record(proxy, n, answers[proxy.name])
    finally:
        for proxy in stack:
            if proxy.pid:
                tree_signal(proxy.pid, signal.SIGCONT)
        for port in list(servers):
            kill_server(port)
        net.close()
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
    ap.add_argument("--cut", choices=["stop", "link"], default="stop")
    ap.add_argument("--fault", choices=["restart", "expire", "none"], default="restart")
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
    fault = {"restart": "the server restarted during it",
             "expire": f"server session idle timeout {args.session_idle:.0f} s",
             "none": "the server left alone"}[args.fault]
    cut = ("stall (SIGSTOP)" if args.cut == "stop"
           else "network outage (the proxies' veth down)")
    since = "SIGCONT" if args.cut == "stop" else "link up"
    print(f"# First call after a {args.stall:.0f} s {cut}, {fault}\n\n- date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
          f"\n- load: {os.getloadavg()[0]:.2f}\n- rounds: {args.rounds}\n")
    print(f"| proxy | answered | {since} → answer, median | max | errors |\n|---|---|---|---|---|")
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
