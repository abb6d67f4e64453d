#!/usr/bin/env python3
"""`tether up` under floods: its peak memory, whether its status server
still answers /health within 100 ms, and what the flood costs it in CPU,
with one flood at a time against a small stack (`sleep 100000` as `svc`):

- none: no flood (the baseline);
- hook-commands: a hook that floods commands,
  `[[hooks]] command = ["sh", "-c", "yes '{\\"restart\\":\\"svc\\"}'"]`;
- hook-no-newline: a hook whose output never ends a line,
  `["sh", "-c", "tr '\\\\0' a </dev/zero"]`;
- stdout-unread: a service that floods its output (`yes`) while tether's own
  stdout is a pipe nobody reads (`tether up | sleep 60`: the harness holds
  the read end and never reads it);
- control: clients on the stack's control socket
  ($XDG_RUNTIME_DIR/tether/STACK/control.sock): --control-huge of them send
  a request line that never ends (64 KiB writes, no newline), --control-idle
  connect and send nothing; each one closed is opened again
  (up_flood_client.py, at most 500 connects/s);
- status: --status-connections TCP connections to the status server, held
  open and silent, each one closed opened again (up_flood_client.py).

Each flood: `tether up -f FILE --json --status 127.0.0.1:PORT` in a
temporary directory (its own XDG_RUNTIME_DIR), its stdout to a file (or the
unread pipe); once /health answers and the service runs, a window of
--seconds in which the harness
- sends GET /health every --get-every seconds (a new connection each; the
  time from connect() to the whole answer, 200 and 503 both count as
  answered; 2 s at most);
- runs `tether ps` every second (5 s at most each) in a thread: does the
  control socket still serve a real client?
- watches tether's VmRSS every 20 ms in a thread: past --cap-mib (1 GiB)
  it SIGKILLs tether's session (the memory watchdog: no flood can take the
  machine down), and the flood fails;
then reads tether's VmHWM (its peak RSS since start: from /proc/PID/status)
and its CPU over the window (utime + stime, schedstat beside it), stops the
flood, and times `tether down`. A scan for the stack's marker must find
nothing left.

Goals (tether): VmHWM at most 64 MiB in every flood; every /health answered
within 100 ms. CPU is reported, not judged.

Python 3 standard library only; loopback and Unix sockets only; every child
bounded in time and killed by session at its bound. Exit 0 when every flood
ran and left nothing, 1 otherwise, 2 when tether is missing, 3 with
--check-goals when a goal is missed.
"""

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time

import benchlib as b
import uplib as u

CLIENT = str(b.BENCH_DIR / "up_flood_client.py")
FLOODS = ("none", "hook-commands", "hook-no-newline", "stdout-unread", "control", "status")
GOAL_HWM_MIB = 64.0
GOAL_HEALTH_MS = 100.0
WATCH_EVERY_S = 0.02
STACK = "flood"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--floods", default=",".join(FLOODS), help="comma-separated floods (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="the window of each flood (default: %(default)s)")
    p.add_argument(
        "--get-every", type=float, default=0.2, help="seconds between two GET /health (default: %(default)s)"
    )
    p.add_argument("--cap-mib", type=float, default=1024.0, help="the memory watchdog's cap (default: %(default)s)")
    p.add_argument("--control-huge", type=int, default=40, help="control clients with endless lines (default: %(default)s)")
    p.add_argument("--control-idle", type=int, default=40, help="idle control clients (default: %(default)s)")
    p.add_argument(
        "--status-connections", type=int, default=1000, help="connections to the status server (default: %(default)s)"
    )
    p.add_argument("--python", default=sys.executable, help="the interpreter of the flood clients (default: %(default)s)")
    p.add_argument("--check-goals", action="store_true", help="exit 3 when a goal is missed")
    u.add_tool_args(p, (u.TETHER,))
    args = p.parse_args()
    floods = [f.strip() for f in args.floods.split(",") if f.strip()]
    for f in floods:
        if f not in FLOODS:
            p.error(f"unknown flood {f!r}; known: {', '.join(FLOODS)}")
    if not 1 <= args.seconds <= 300:
        p.error("--seconds must be between 1 and 300")
    if not 0.05 <= args.get_every <= 5:
        p.error("--get-every must be between 0.05 and 5 seconds")
    if not 64 <= args.cap_mib <= 4096:
        p.error("--cap-mib must be between 64 and 4096")
    if not 1 <= args.status_connections <= 3000:
        p.error("--status-connections must be between 1 and 3000")

    tools, missing = u.selected_tools(args, (u.TETHER,))
    tcp_at_start = b.tcp_sockets()
    if not b.become_subreaper():
        print("warning: could not become a child subreaper", file=sys.stderr)
    versions = u.versions(args, tools)
    runs = []
    if u.TETHER in tools:
        for f in floods:
            print(f"flood {f}: {args.seconds:g} s window...", file=sys.stderr)
            runs.append(run_flood(args, f))
    m = b.machine()
    m["tcp_sockets_at_start"] = tcp_at_start
    goals_ok = report(args, runs, missing, m, versions)
    clean = u.final_check()
    b.write_json(args.json, {"args": vars(args), "versions": versions, "machine": m, "runs": runs})
    if missing:
        return b.EXIT_TOOL_MISSING
    if not clean or any(r["failures"] or r["leftovers"] for r in runs):
        return b.EXIT_RUN_FAILED
    if args.check_goals and not goals_ok:
        return b.EXIT_GOAL_MISSED
    return b.EXIT_OK


# --- The stacks -------------------------------------------------------------------


def config_for(flood):
    text = f'name = "{STACK}"\n\n[services.svc]\ncommand = {u.toml_argv(["sleep", "100000"])}\n'
    if flood == "hook-commands":
        text += '\n[[hooks]]\nname = "flood"\ncommand = ' + u.toml_argv(["sh", "-c", "yes '{\"restart\":\"svc\"}'"]) + "\n"
    elif flood == "hook-no-newline":
        text += '\n[[hooks]]\nname = "zeros"\ncommand = ' + u.toml_argv(["sh", "-c", "tr '\\0' a </dev/zero"]) + "\n"
    elif flood == "stdout-unread":
        text += "\n[services.noisy]\ncommand = " + u.toml_argv(["sh", "-c", "yes 'a line of output nobody reads'"]) + "\n"
    return text


def what_floods(args, flood):
    return {
        "none": "nothing (baseline)",
        "hook-commands": "a hook: `yes '{\"restart\":\"svc\"}'`",
        "hook-no-newline": "a hook: `tr '\\0' a </dev/zero`",
        "stdout-unread": "a service: `yes '…'`; tether's stdout a pipe nobody reads",
        "control": f"{args.control_huge} control clients with an endless line, {args.control_idle} idle",
        "status": f"{args.status_connections} connections to the status server, held",
    }[flood]


def client_argv(args, flood, xdg, port):
    if flood == "control":
        path = os.path.join(xdg, "tether", STACK, "control.sock")
        return [
            args.python, CLIENT, "control", path, "--seconds", f"{args.seconds:g}",
            "--huge", str(args.control_huge), "--idle", str(args.control_idle),
        ]
    if flood == "status":
        return [
            args.python, CLIENT, "status", "127.0.0.1", str(port), "--seconds", f"{args.seconds:g}",
            "--connections", str(args.status_connections),
        ]
    return None


# --- One flood ----------------------------------------------------------------------


class Watchdog(threading.Thread):
    """Reads VmRSS of `pid` every WATCH_EVERY_S; past the cap, SIGKILLs the
    session of `pid` (tether's: its services and hooks die with it through
    PR_SET_PDEATHSIG, and the harness kills by marker after)."""

    def __init__(self, pid, cap_kb):
        super().__init__(daemon=True)
        self.pid = pid
        self.cap_kb = cap_kb
        self.max_kb = 0
        self.fired = False
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(WATCH_EVERY_S):
            kb = u.status_kb(self.pid, "VmRSS")
            if kb is None:
                return
            self.max_kb = max(self.max_kb, kb)
            if kb > self.cap_kb:
                self.fired = True
                b.kill_session(self.pid)
                return


class PsLoop(threading.Thread):
    """`tether ps` every second until stopped: (latency ms, exit code)."""

    def __init__(self, argv, env):
        super().__init__(daemon=True)
        self.argv = argv
        self.env = env
        self.results = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            start, end, code = u.bounded(self.argv, self.env, 5)
            self.results.append(((end - start) / 1e6, code))
            self.stop.wait(max(0.0, 1.0 - (end - start) / 1e9))


def get_health(port, timeout_s=2.0):
    """GET /health on a new connection: (latency ns, status code or the
    error's name). The latency runs from connect() to the whole answer."""
    t0 = time.monotonic_ns()
    deadline = t0 + int(timeout_s * 1e9)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                left = (deadline - time.monotonic_ns()) / 1e9
                if left <= 0:
                    return time.monotonic_ns() - t0, "timeout"
                s.settimeout(left)
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if complete(data) or len(data) > 1 << 20:
                    break
    except socket.timeout:
        return time.monotonic_ns() - t0, "timeout"
    except OSError as e:
        return time.monotonic_ns() - t0, type(e).__name__
    t = time.monotonic_ns() - t0
    try:
        return t, int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return t, "bad answer"


def complete(data):
    """Whether an HTTP answer is whole (headers, and Content-Length bytes)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(body) >= int(value.strip())
            except ValueError:
                return False
    return False


def run_flood(args, flood):
    tmp = tempfile.mkdtemp(prefix=f"up-flood-{flood}-")
    xdg = os.path.join(tmp, "run")
    os.mkdir(xdg)
    mark = u.new_mark()
    config = os.path.join(tmp, "tether.toml")
    with open(config, "w") as f:
        f.write(config_for(flood))
    port = u.free_port()
    argv = [args.tether, "up", "-f", config, "--json", "--status", f"127.0.0.1:{port}"]
    run = {
        "flood": flood,
        "what": what_floods(args, flood),
        "argv": argv,
        "config": open(config).read(),
        "failures": [],
        "leftovers": [],
        "gets": [],
        "ps": [],
    }
    env = u.tether_env(xdg, mark)
    ctl_env = u.clean_env()
    ctl_env["XDG_RUNTIME_DIR"] = xdg
    stdout_path = os.path.join(tmp, "stdout")
    pipe = None
    if flood == "stdout-unread":
        pipe = os.pipe()
        proc = u.Proc(argv, env, stderr=os.path.join(tmp, "stderr"), stdout_fd=pipe[1])
        os.close(pipe[1])
    else:
        proc = u.Proc(argv, env, stdout=stdout_path, stderr=os.path.join(tmp, "stderr"))
    dog = Watchdog(proc.pid, int(args.cap_mib * 1024))
    dog.start()
    client = None
    ps = None
    try:
        if not wait_ready(run, proc, port, mark):
            return run
        ps = PsLoop([args.tether, "ps", "-f", config], ctl_env)
        c_argv = client_argv(args, flood, xdg, port)
        t_ticks0, t_ns0 = u.cpu_ticks(proc.pid), u.cpu_ns_threads(proc.pid)
        t0 = time.monotonic()
        if c_argv:
            client = u.Proc(c_argv, u.clean_env(), stdout=os.path.join(tmp, "client.json"), stderr=os.path.join(tmp, "client.err"))
        ps.start()
        n = int(args.seconds / args.get_every)
        for i in range(n):
            target = t0 + (i + 1) * args.get_every
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not proc.running():
                run["failures"].append("tether up exited during the flood" + (" (killed by the memory watchdog)" if dog.fired else ""))
                break
            latency, code = get_health(port)
            run["gets"].append({"t_s": time.monotonic() - t0, "ms": latency / 1e6, "answer": code})
        window = time.monotonic() - t0
        if proc.running():
            run["cpu_ms"] = (u.cpu_ticks(proc.pid) - t_ticks0) * 1000 / u.CLK_TCK
            ns1 = u.cpu_ns_threads(proc.pid)
            run["cpu_ms_live_threads"] = (ns1 - t_ns0) / 1e6 if None not in (ns1, t_ns0) else None
            run["window_s"] = window
            run["hwm_kb"] = u.status_kb(proc.pid, "VmHWM")
            run["rss_end_kb"] = u.status_kb(proc.pid, "VmRSS")
            run["threads"] = u.threads(proc.pid)
            if pipe is not None:
                run["pipe_bytes_unread"] = unread(pipe[0])
    except OSError as e:
        run["failures"].append(f"tether up went away during the flood: {e}")
    finally:
        if ps is not None:
            ps.stop.set()
            ps.join(10)
            run["ps"] = [{"ms": ms, "exit": code} for ms, code in ps.results]
        if client is not None:
            client.wait(args.seconds + 10)
            run["client"] = read_json_line(os.path.join(tmp, "client.json"))
            if client.status != 0:
                run["failures"].append(f"the flood client: exit {client.status}")
        dog.stop.set()
        dog.join(5)
        run["rss_max_sampled_kb"] = dog.max_kb
        run["watchdog_fired"] = dog.fired
        if dog.fired:
            run["failures"].append(f"the memory watchdog killed tether up past {args.cap_mib:g} MiB")
        if proc.running():
            start, end, code = u.bounded([args.tether, "down", "-f", config], ctl_env, 30)
            run["down_ms"] = (end - start) / 1e6
            run["down_exit"] = code
            if code != 0:
                run["failures"].append(f"tether down: exit {code}")
        if not proc.wait(15):
            run["failures"].append("tether up did not exit within 15 s of tether down")
        run["up_exit"] = proc.status
        if pipe is not None:
            os.close(pipe[0])
        else:
            run["drops"] = drops(stdout_path)
        run["leftovers"] = [f"{pid} {comm} ({state})" for pid, (state, comm) in sorted(u.kill_marked(mark).items())]
    return run


def wait_ready(run, proc, port, mark, timeout_s=20):
    """Until /health answers (200 or 503) and `svc` runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.running():
            run["failures"].append(f"tether up exited before the flood window (exit {proc.status if proc.wait(1) else '?'})")
            return False
        _, code = get_health(port, 1.0)
        procs = u.marked(mark, exclude=(proc.pid,))
        if code in (200, 503) and any(comm == "sleep" for _, comm in procs.values()):
            return True
        time.sleep(0.05)
    run["failures"].append(f"/health did not answer within {timeout_s} s of the start")
    return False


def unread(fd):
    """Bytes waiting in a pipe (FIONREAD)."""
    import fcntl
    import struct
    import termios

    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return None


def read_json_line(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None


def drops(path, limit=64 << 20):
    """From tether's --json output: for every event that counts drops, the
    highest count it gave (how big the flood was), and the number of lines."""
    out = {"lines": 0}
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        return out
    for line in data.splitlines():
        out["lines"] += 1
        if b"dropped" not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        name = event.get("event")
        if isinstance(event.get("dropped"), int):
            out[name] = max(out.get(name, 0), event["dropped"])
    return out


# --- Reporting ------------------------------------------------------------------


def report(args, runs, missing, m, versions):
    u.print_header(
        f"`tether up` under floods: {args.seconds:g} s each",
        m,
        [
            f"Versions: {', '.join(versions.values()) or '-'}.",
            f"The stack: `svc` = `sleep 100000`, status server on 127.0.0.1; GET /health every {args.get_every:g} s "
            f"(a new connection each), `tether ps` every 1 s; memory watchdog at {args.cap_mib:g} MiB.",
        ],
    )
    rows = []
    goals_ok = True
    for r in runs:
        ms = [g["ms"] for g in r["gets"] if isinstance(g["answer"], int)]
        failed = [g for g in r["gets"] if not isinstance(g["answer"], int)]
        over = sum(1 for g in r["gets"] if g["ms"] > GOAL_HEALTH_MS or not isinstance(g["answer"], int))
        hwm = r.get("hwm_kb")
        cpu = r.get("cpu_ms")
        window = r.get("window_s")
        ps_ok = [p["ms"] for p in r["ps"] if p["exit"] == 0]
        ok = (
            hwm is not None
            and hwm / 1024 <= GOAL_HWM_MIB
            and over == 0
            and bool(r["gets"])
            and not r["failures"]
            and not r["leftovers"]
        )
        goals_ok &= ok
        r["goal"] = {"met": ok, "over_100ms": over, "hwm_mib": hwm / 1024 if hwm else None}
        rows.append(
            [
                f"{r['flood']}: {r['what']}",
                f"{hwm / 1024:.1f}" if hwm else "-",
                f"{r['rss_max_sampled_kb'] / 1024:.1f}" if r.get("rss_max_sampled_kb") else "-",
                f"{len(ms)}/{len(r['gets'])}",
                f"{statistics.median(ms):.2f}" if ms else "-",
                f"{max(ms):.2f}" if ms else "-",
                f"{over}" + (f" ({len(failed)} failed)" if failed else ""),
                f"{cpu:.0f} ms ({100 * cpu / (window * 1000):.1f} %)" if cpu is not None and window else "-",
                f"{len(ps_ok)}/{len(r['ps'])}" + (f", median {statistics.median(ps_ok):.0f} ms" if ps_ok else ""),
                f"{r['down_ms']:.0f}" if r.get("down_ms") is not None else "-",
                "met" if ok else "MISSED",
            ]
        )
    for tool, msg in missing.items():
        rows.append([tool, "-", "-", "-", "-", "-", "-", "-", "-", "-", "not measured: " + msg.split(":")[0]])
    print(
        b.table(
            [
                "flood",
                "tether VmHWM MiB",
                "RSS max MiB (every 20 ms)",
                "/health answered",
                "median ms",
                "max ms",
                "over 100 ms",
                "tether CPU over the window (of one core)",
                "`tether ps` answered",
                "`tether down` ms",
                "goal",
            ],
            rows,
        )
    )
    print(
        f"\nVmHWM is tether's peak RSS since its start (start-up included). /health: 200 and 503 both count as an "
        f"answer. Goal: VmHWM ≤ {GOAL_HWM_MIB:g} MiB and every GET /health answered within {GOAL_HEALTH_MS:g} ms. "
        f"CPU: utime + stime of tether's process over the window (10 ms ticks), reported, not judged."
    )
    print("\n### How big each flood was\n")
    rows = []
    for r in runs:
        words = []
        d = r.get("drops") or {}
        for k, v in sorted(d.items()):
            if k != "lines":
                words.append(f"{k}: {v} dropped")
        if d.get("lines"):
            words.append(f"{d['lines']} lines of --json output")
        if r.get("pipe_bytes_unread") is not None:
            words.append(f"{r['pipe_bytes_unread']} bytes waiting unread in tether's stdout pipe")
        c = r.get("client")
        if c:
            words.append(
                f"client: {c['connects']} connects, {c['closed_by_peer']} closed by tether, {c['error_lines']} error lines, "
                f"{c['bytes_sent'] / 1e6:.1f} MB sent, at most {c['max_open']} open at once"
            )
        rows.append([r["flood"], "; ".join(words) or "-"])
    print(b.table(["flood", "evidence"], rows))
    for r in runs:
        for f in r["failures"]:
            print(f"\nFAILED ({r['flood']}): {f}")
        if r["leftovers"]:
            print(f"\nFAILED ({r['flood']}): processes left running: {', '.join(r['leftovers'])}")
    return goals_ok


if __name__ == "__main__":
    sys.exit(main())
