#!/usr/bin/env python3
"""`tether proxy` beside haproxy and socat, on loopback TCP only.

Five measurements (issue 10's list), peers in the same run:

1. bulk throughput with iperf3 (server `iperf3 -s -p UP`, client
   `iperf3 -c 127.0.0.1 -p LISTEN -t 5 -J`), 3 runs each, interleaved:
   direct, tether (spliced, the default), tether `--pipes 0` (copied),
   haproxy (mode tcp), haproxy with `option splice-auto`, socat; then one
   run each with `-P 4` and one with `-l 128` (small writes);
2. added round-trip latency: 64-byte ping-pong (TCP_NODELAY on the client)
   against one echo server, every path up at once and measured in
   interleaved chunks; p50 and p99, and their excess over direct;
3. RSS per idle proxied connection at 8,000 connections: 8,000 clients
   through each proxy (one at a time) to an upstream that accepts, echoes
   and holds them; one small message through each, then the proxy's RSS
   (all its processes) minus its RSS before any connection, over 8,000;
4. clients arriving during a 1.5 s outage: the upstream echo server is
   SIGKILLed, 5 clients connect 0.3 s apart, each sends a line and waits up
   to 10 s for the echo; after 1.5 s the upstream starts again and prints
   time.monotonic_ns() right after listen(); served/5 and the time from
   that listen() to the first client's echo;
5. a constant connect loop (connect, send a line, read the echo, close)
   while the upstream is killed and started again 20 times (down ~200 ms
   each): served, refused and failed attempts per path. tether's socket
   activation variant (`tether up` holding the listening socket itself)
   has a slot in the table, not measured here.

Every helper process (echo server, holding server, connect loop) is this
file run again with a role as its first argument; all are children in a
session of their own, carry a marker in their environment, and are killed
at the end even on error. Python 3 standard library only, Linux only.

Exit codes: 0 every run succeeded; 1 a run failed or a process was left;
2 a tool is missing; 3 a goal was missed (only with --check-goals).
"""

import argparse
import errno
import json
import os
import resource
import select
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

LINGER0 = struct.pack("ii", 1, 0)


def close_hard(sock):
    """Close with a reset (SO_LINGER 0): no TIME_WAIT row is left behind,
    so tens of thousands of connections do not fill the port range."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# --- Helper roles (this file run as a child) ------------------------------------


def role_echo(port):
    """A threaded blocking echo server on 127.0.0.1:PORT. Prints
    `listening <time.monotonic_ns()>` right after listen() returns. With a
    third argument `signal` it starts, prints `waiting`, and binds only when
    SIGUSR1 comes: a restart then costs no interpreter start-up, and an
    outage lasts as long as the harness says, not as long as Python takes
    to start on a loaded machine."""
    if len(sys.argv) > 3 and sys.argv[3] == "signal":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        print("waiting", flush=True)
        signal.sigwait({signal.SIGUSR1})
    if port == 0 and os.environ.get("LISTEN_FDS") == "1":
        # Socket activation: the listener is tether's, handed over as fd 3.
        srv = socket.socket(fileno=3)
    else:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(4096)
    print(f"listening {time.monotonic_ns()}", flush=True)

    def serve(conn):
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        close_hard(conn)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def role_hold(port):
    """Accepts every connection on 127.0.0.1:PORT, echoes what arrives and
    holds the connection until the peer closes it. Commands on stdin:
    `count` answers `<accepted> <open> <bytes echoed>`."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(65535)  # capped by net.core.somaxconn
    srv.setblocking(False)
    state = {"accepted": 0, "open": 0, "echoed": 0}
    lock = threading.Lock()
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)

    def loop():
        while True:
            for key, _ in sel.select(timeout=0.5):
                if key.fileobj is srv:
                    while True:
                        try:
                            conn, _ = srv.accept()
                        except (BlockingIOError, InterruptedError):
                            break
                        except OSError:
                            break
                        conn.setblocking(False)
                        sel.register(conn, selectors.EVENT_READ)
                        with lock:
                            state["accepted"] += 1
                            state["open"] += 1
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(4096)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    try:
                        conn.send(data)
                        with lock:
                            state["echoed"] += len(data)
                    except OSError:
                        pass
                    continue
                sel.unregister(conn)
                close_hard(conn)
                with lock:
                    state["open"] -= 1

    threading.Thread(target=loop, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            with lock:
                print(state["accepted"], state["open"], state["echoed"], flush=True)
        elif line.strip() == "stop":
            break


def role_loop(port):
    """Connect, send a line, read its echo, close (a reset), again and
    again until stdin closes; then writes one JSON object with the counts
    to the file named by the third argument.
    Every step has a bound of 5 s."""
    counts = {"served": 0, "refused": 0, "closed": 0, "reset": 0, "timeout": 0, "other": 0}
    served_ms = []
    failures = []  # (t_ns, kind)
    stop = threading.Event()

    def watch_stdin():
        try:
            sys.stdin.read()
        finally:
            stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print("ready", flush=True)
    line = b"ping\n"
    while not stop.is_set():
        t0 = time.monotonic_ns()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)
        kind = None
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(line)
            got = b""
            while len(got) < len(line):
                chunk = s.recv(64)
                if not chunk:
                    kind = "closed"
                    break
                got += chunk
            if kind is None:
                kind = "served"
        except ConnectionRefusedError:
            kind = "refused"
        except (ConnectionResetError, BrokenPipeError):
            kind = "reset"
        except socket.timeout:
            kind = "timeout"
        except OSError as e:
            kind = "reset" if e.errno in (errno.ECONNRESET, errno.EPIPE) else "other"
        close_hard(s)
        counts[kind] += 1
        if kind == "served":
            served_ms.append((time.monotonic_ns() - t0) / 1e6)
        else:
            failures.append((t0, kind))
            if kind == "refused":
                # A refused connect returns at once; without a pause the
                # loop would spin thousands of times in a 200 ms outage.
                time.sleep(0.001)
    served_ms.sort()
    out = {
        "counts": counts,
        "served_ms_max": served_ms[-1] if served_ms else None,
        "served_ms_p99": served_ms[int(0.99 * (len(served_ms) - 1))] if served_ms else None,
        "served_ms_p50": served_ms[len(served_ms) // 2] if served_ms else None,
        "failures": failures[:2000],
    }
    with open(sys.argv[3], "w") as f:
        json.dump(out, f)


ROLES = {"_echo": role_echo, "_hold": role_hold, "_loop": role_loop}

if __name__ == "__main__" and len(sys.argv) >= 3 and sys.argv[1] in ROLES:
    ROLES[sys.argv[1]](int(sys.argv[2]))
    sys.exit(0)


# --- The harness ----------------------------------------------------------------

import benchlib as b  # noqa: E402
import uplib as u  # noqa: E402

FD_LIMIT = 20000
HAPROXY_FD_LIMIT = 65536
GOAL_FIRST_SERVED_MS = 50.0

# Every child of this run; killed at the end, whatever happened.
CHILDREN = []
MARK = u.new_mark()
ENV = dict(os.environ)
ENV[u.MARK_VAR] = MARK


def spawn(argv, tmp, name, lines=False):
    p = u.Proc(
        argv,
        ENV,
        stdout=os.path.join(tmp, f"{name}.out"),
        stderr=os.path.join(tmp, f"{name}.err"),
        lines=lines,
    )
    p.name = name
    CHILDREN.append(p)
    return p


def stop(p, grace_s=2.0):
    """SIGTERM, then SIGKILL to the whole session after `grace_s`; reaped."""
    if p.status is None:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        p.wait(grace_s)
    b.kill_session(p.pid)
    u.reap_adopted()


def kill_now(p):
    b.kill_session(p.pid)
    p.wait(5)


def cleanup():
    for p in CHILDREN:
        try:
            b.kill_session(p.pid)
            if p.status is None:
                p.wait(5)
        except Exception:  # noqa: BLE001 (cleanup must go on)
            pass
    u.reap_adopted()


def listening(port):
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp, so
    without connecting through a proxy)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def wait_listening(port, p, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if listening(port):
            return True
        if p is not None and not p.running():
            return False
        time.sleep(0.005)
    return False


def next_line(p, timeout_s):
    """The next stdout line of a Proc started with lines=True: (t_ns, text)
    or (None, None) at the bound or its end."""
    try:
        t, text = p.lines.get(timeout=timeout_s)
    except Exception:  # queue.Empty
        return None, None
    return t, text


def start_echo(tmp, port, name):
    """The echo server; returns (proc, t_listen_ns) once it listens."""
    p = spawn([sys.executable, os.path.abspath(__file__), "_echo", str(port)], tmp, name, lines=True)
    t, text = next_line(p, 10)
    if not text or not text.startswith("listening "):
        raise RuntimeError(f"echo server on {port} did not start: {text!r}")
    return p, int(text.split()[1])


def prepare_echo(tmp, port, name):
    """An echo server started but not yet bound (see role_echo): it binds
    and listens on open_echo()."""
    p = spawn([sys.executable, os.path.abspath(__file__), "_echo", str(port), "signal"], tmp, name, lines=True)
    _, text = next_line(p, 10)
    if text != "waiting":
        raise RuntimeError(f"echo server for {port} did not start: {text!r}")
    return p


def open_echo(p):
    """Makes a prepared echo server listen; returns t_listen_ns."""
    os.kill(p.pid, signal.SIGUSR1)
    _, text = next_line(p, 10)
    if not text or not text.startswith("listening "):
        raise RuntimeError(f"echo server did not listen: {text!r}")
    return int(text.split()[1])


# --- The subjects ---------------------------------------------------------------


# maxconn: haproxy sets its descriptor limit to about 2 × maxconn and
# refuses to start when it cannot; under a hard limit of 20,000 (a container
# without CAP_SYS_RESOURCE) maxconn 20000 cannot start, so it is whatever
# the limit allows (9000 under 20,000), still above the 8,000 measured.
# maxpipes (default maxconn / 4, two descriptors each) is set to 500 for
# the same reason; a stream needs one pipe per direction.
HAPROXY_BASE = """global
    maxconn {maxconn}
    maxpipes 500
defaults
    mode tcp
    maxconn {maxconn}
    timeout connect {connect}
    timeout client 1m
    timeout server 1m
{extra}
frontend f
    bind 127.0.0.1:{listen}
    default_backend b
backend b
    server s 127.0.0.1:{upstream}
"""


def haproxy_maxconn():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= 2 * 20000 + 100:
        return 20000
    return max(1000, (hard - 100) // 2 // 1000 * 1000)


class Subject:
    """One path from a client to the upstream: `start()` runs the proxy (or
    nothing, for direct) and returns the port clients connect to."""

    def __init__(self, key, label, kind, extra=None, haproxy=None):
        self.key = key
        self.label = label
        self.kind = kind  # direct, tether, haproxy, socat
        self.extra = extra or []
        self.haproxy = haproxy or {}
        self.proc = None
        self.listen = None
        self.config = None

    def argv(self, args, tmp, listen, upstream):
        if self.kind == "tether":
            return [
                args.tether, "proxy", "--json", "--max-connections", "10000", *self.extra,
                f"tcp://127.0.0.1:{listen}", f"tcp://127.0.0.1:{upstream}",
            ]
        if self.kind == "haproxy":
            extra = "".join(f"    {line}\n" for line in self.haproxy.get("lines", []))
            self.config = HAPROXY_BASE.format(
                connect=self.haproxy.get("connect", "100ms"), extra=extra.rstrip("\n"), maxconn=haproxy_maxconn(),
                listen=listen, upstream=upstream,
            )
            path = os.path.join(tmp, f"{self.key}.cfg")
            with open(path, "w") as f:
                f.write(self.config)
            return [args.haproxy, "-db", "-f", path]
        if self.kind == "socat":
            return [
                args.socat, f"TCP-LISTEN:{listen},bind=127.0.0.1,reuseaddr,fork,backlog=4096",
                f"TCP:127.0.0.1:{upstream}",
            ]
        raise ValueError(self.kind)

    def start(self, args, tmp, upstream, tag=""):
        if self.kind == "direct":
            self.listen = upstream
            return upstream
        self.listen = u.free_port()
        argv = self.argv(args, tmp, self.listen, upstream)
        self.proc = spawn(argv, tmp, f"{self.key}{tag}", lines=(self.kind == "tether"))
        if not wait_listening(self.listen, self.proc):
            err = ""
            try:
                err = open(os.path.join(tmp, f"{self.key}{tag}.err")).read()[-500:]
            except OSError:
                pass
            raise RuntimeError(f"{self.label} did not listen on {self.listen}: {err}")
        return self.listen

    def stop(self):
        """Stops the proxy and waits (up to 30 s) until every process of its
        session is gone: 8,000 socat processes take a while to die, and the
        next measurement should not run beside their exit."""
        if self.proc is not None:
            stop(self.proc)
            deadline = time.monotonic() + 30
            while self.pids() and time.monotonic() < deadline:
                b.kill_session(self.proc.pid)
                u.reap_adopted()
                time.sleep(0.05)
            u.reap_adopted()
            self.proc = None

    def pids(self):
        """The proxy's processes: its session (socat forks into it)."""
        if self.proc is None:
            return []
        sid = self.proc.pid
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 3 and int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
                found.append(int(entry))
        return found

    def drain_events(self):
        """tether's NDJSON events so far, parsed."""
        out = []
        if self.proc is None or self.proc.lines is None:
            return out
        while True:
            try:
                _, text = self.proc.lines.get_nowait()
            except Exception:  # queue.Empty
                return out
            if text is None:
                return out
            try:
                out.append(json.loads(text))
            except ValueError:
                pass


def subjects(names):
    known = {
        "direct": Subject("direct", "direct (no proxy)", "direct"),
        "tether": Subject("tether", "**tether** (spliced, default)", "tether"),
        "tether-copy": Subject("tether-copy", "tether `--pipes 0` (copied)", "tether", ["--pipes", "0"]),
        "haproxy": Subject("haproxy", "haproxy", "haproxy", haproxy={"connect": "100ms"}),
        "haproxy-splice": Subject(
            "haproxy-splice", "haproxy `option splice-auto`", "haproxy",
            haproxy={"connect": "100ms", "lines": ["option splice-auto"]},
        ),
        "haproxy-retry": Subject(
            "haproxy-retry", "haproxy `retries 3`, `timeout connect 1s`", "haproxy",
            haproxy={"connect": "1s", "lines": ["retries 3"]},
        ),
        "haproxy-tuned": Subject(
            "haproxy-tuned", "haproxy `retries 20`, `timeout connect 100ms`", "haproxy",
            haproxy={"connect": "100ms", "lines": ["retries 20"]},
        ),
        "socat": Subject("socat", "socat", "socat"),
    }
    return [known[n] for n in names if n not in WITHOUT]


# Subjects left out with --without (to check the harness without a tether
# binary, for one).
WITHOUT = set()


# --- 1. Throughput ---------------------------------------------------------------


def iperf_once(args, port, seconds, extra):
    argv = [args.iperf3, "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J", *extra]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 20, env=ENV)
    except subprocess.TimeoutExpired:
        return {"error": "iperf3 client did not finish in time"}
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        return {"error": f"no JSON from iperf3 (exit {r.returncode}): {r.stderr.strip()[:200]}"}
    if doc.get("error"):
        return {"error": doc["error"]}
    end = doc.get("end", {})
    try:
        return {
            "sender": end["sum_sent"]["bits_per_second"],
            "receiver": end["sum_received"]["bits_per_second"],
            "retransmits": end["sum_sent"].get("retransmits"),
            "cpu_host": end.get("cpu_utilization_percent", {}).get("host_total"),
            "cpu_remote": end.get("cpu_utilization_percent", {}).get("remote_total"),
        }
    except KeyError as e:
        return {"error": f"iperf3 JSON without {e}"}


def proc_cpu_ticks(pids):
    """utime + stime of each process, plus cutime + cstime: the children it
    reaped (socat forks one per connection, and reaps it when it ends)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rfind(b")") + 2 :].split()
            total += sum(int(x) for x in fields[11:15])
        except (OSError, ValueError, IndexError):
            pass
    return total


def bench_throughput(args, tmp, results):
    upstream = u.free_port()
    # -B 127.0.0.1: loopback only (by default iperf3 listens on every
    # address, IPv6 included).
    server = spawn([args.iperf3, "-s", "-B", "127.0.0.1", "-p", str(upstream)], tmp, "iperf3-server")
    if not wait_listening(upstream, server):
        raise RuntimeError("iperf3 -s did not listen")
    subs = subjects(["direct", "tether", "tether-copy", "haproxy", "haproxy-splice", "socat"])
    for s in subs:
        s.start(args, tmp, upstream, tag="-iperf")
    plan = []
    for r in range(args.iperf_runs):
        order = subs[r % len(subs) :] + subs[: r % len(subs)]
        plan += [(s, "1 stream", args.iperf_seconds, []) for s in order]
    extras = [m.strip() for m in args.iperf_extra.split(";") if m.strip()]
    for mode in extras:
        plan += [(s, mode, args.iperf_extra_seconds, mode.split()) for s in subs]
    runs = []
    for s, mode, seconds, extra in plan:
        pids = s.pids() if s.proc else []
        cpu0 = proc_cpu_ticks(pids)
        res = iperf_once(args, s.listen, seconds, extra)
        pids = s.pids() if s.proc else []
        res["proxy_cpu_s"] = (proc_cpu_ticks(pids) - cpu0) / u.CLK_TCK if s.proc else None
        res.update({"subject": s.key, "mode": mode, "seconds": seconds})
        runs.append(res)
        shown = f"{res['receiver'] / 1e9:.2f} Gbit/s" if "receiver" in res else res["error"]
        print(f"  iperf3 {mode} {s.key}: {shown}", file=sys.stderr)
        if "error" in res and not server.running():
            server = spawn([args.iperf3, "-s", "-B", "127.0.0.1", "-p", str(upstream)], tmp, "iperf3-server2")
            wait_listening(upstream, server)
        time.sleep(0.3)
    for s in subs:
        s.stop()
    stop(server)
    results["throughput"] = {"runs": runs, "configs": {s.key: s.config for s in subs if s.config}}

    def med(key, mode, field):
        xs = [r[field] for r in runs if r["subject"] == key and r["mode"] == mode and field in r]
        return statistics.median(xs) if xs else None

    def fails(key, mode):
        return sum(1 for r in runs if r["subject"] == key and r["mode"] == mode and "error" in r)

    def cpu(key, mode):
        xs = [r["proxy_cpu_s"] / r["seconds"] * 100 for r in runs
              if r["subject"] == key and r["mode"] == mode and r.get("proxy_cpu_s") is not None and "error" not in r]
        return f"{statistics.median(xs):.0f} %" if xs else ""

    def g(x):
        return None if x is None else x / 1e9

    rows = []
    m = "1 stream"
    for s in subs:
        xs = [r["receiver"] / 1e9 for r in runs if r["subject"] == s.key and r["mode"] == m and "receiver" in r]
        rows.append([
            s.label, g(med(s.key, m, "sender")), g(med(s.key, m, "receiver")),
            f"{min(xs):.2f}–{max(xs):.2f}" if xs else "-", cpu(s.key, m), fails(s.key, m),
        ])
    print("### Bulk throughput (iperf3)\n")
    print(
        f"Gbit/s, one stream: the median of {args.iperf_runs} runs of {args.iperf_seconds} s each, "
        "interleaved (every path once per round, the order rotating). Proxy CPU: utime + stime of the "
        "proxy's processes over the run (with the children socat forked and reaped), in % of one core "
        "(the median of the runs).\n"
    )
    print(b.table(["path", "sender", "receiver", "receiver, all runs", "proxy CPU", "failed runs"], rows))
    if extras:
        print(
            f"\nOne run of {args.iperf_extra_seconds} s each with other iperf3 options: `-P 4` four "
            "streams at once; `-l 1K`, `-l 128` the sender writes 1 KiB or 128 bytes at a time. Receiver "
            "Gbit/s (proxy CPU in % of one core).\n"
        )
        rows = []
        for s in subs:
            row = [s.label]
            for mode in extras:
                x = med(s.key, mode, "receiver")
                row.append(f"{x / 1e9:.2f} ({cpu(s.key, mode) or '-'})" if x is not None else
                           f"failed: {next((r['error'] for r in runs if r['subject'] == s.key and r['mode'] == mode), '')}")
            rows.append(row)
        print(b.table(["path", *[f"`{m}`" for m in extras]], rows))
    t = med("tether", "1 stream", "receiver")
    h = med("haproxy-splice", "1 stream", "receiver")
    if t is None or h is None:
        print("\nGoal: tether (spliced) ≥ haproxy splice-auto: not measured.\n")
        return {}
    met = t >= h
    print(f"\nGoal: tether (spliced) ≥ haproxy splice-auto (1 stream, receiver median): "
          f"{t / 1e9:.2f} vs {h / 1e9:.2f} Gbit/s: {'met' if met else 'NOT met'}.\n")
    return {"throughput": met}


# --- 2. Latency --------------------------------------------------------------------


def pingpong(sock, n, msg):
    out = []
    need = len(msg)
    for _ in range(n):
        t0 = time.perf_counter_ns()
        sock.sendall(msg)
        got = 0
        while got < need:
            chunk = sock.recv(need - got)
            if not chunk:
                raise ConnectionError("closed during ping-pong")
            got += len(chunk)
        out.append(time.perf_counter_ns() - t0)
    return out


def bench_latency(args, tmp, results):
    upstream = u.free_port()
    echo, _ = start_echo(tmp, upstream, "echo-latency")
    subs = subjects(["direct", "tether", "tether-copy", "haproxy", "haproxy-splice", "socat"])
    conns = {}
    for s in subs:
        port = s.start(args, tmp, upstream, tag="-latency")
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns[s.key] = c
    msg = b"x" * 64
    samples = {s.key: [] for s in subs}
    failed = {}
    for s in subs:
        try:
            pingpong(conns[s.key], args.warmup, msg)
        except OSError as e:
            failed[s.key] = str(e)
    chunk = max(1, args.round_trips // args.chunks)
    for r in range(args.chunks):
        order = subs[r % len(subs) :] + subs[: r % len(subs)]
        for s in order:
            if s.key in failed:
                continue
            try:
                samples[s.key] += pingpong(conns[s.key], chunk, msg)
            except OSError as e:
                failed[s.key] = str(e)
    for c in conns.values():
        close_hard(c)
    for s in subs:
        s.stop()
    stop(echo)

    def us(xs, p):
        return b.percentile(xs, p) / 1e3 if xs else None

    d50, d99 = us(samples["direct"], 50), us(samples["direct"], 99)
    rows = []
    summary = {}
    for s in subs:
        xs = samples[s.key]
        p50, p99 = us(xs, 50), us(xs, 99)
        summary[s.key] = {"n": len(xs), "p50_us": p50, "p99_us": p99, "mean_us": statistics.fmean(xs) / 1e3 if xs else None,
                          "failed": failed.get(s.key)}
        added = s.kind != "direct" and p50 is not None and d50 is not None
        rows.append([
            s.label, len(xs), p50, p99,
            (p50 - d50) if added else "", (p99 - d99) if added else "",
            failed.get(s.key, ""),
        ])
    results["latency"] = summary
    print("### Added round-trip latency (64-byte ping-pong)\n")
    print(
        f"One connection per path (client TCP_NODELAY), {args.warmup} warm-up round trips, then "
        f"{chunk * args.chunks} measured in {args.chunks} interleaved chunks; the same threaded "
        "Python echo server behind every path. µs.\n"
    )
    print(b.table(["path", "round trips", "p50", "p99", "added p50", "added p99", "error"], rows))
    t, h = summary.get("tether", {}), summary.get("haproxy", {})
    if t.get("p50_us") is None or h.get("p50_us") is None:
        print("\nGoal: tether not worse than haproxy: not measured.\n")
        return {}
    met = t["p50_us"] <= h["p50_us"] and t["p99_us"] <= h["p99_us"]
    print(f"\nGoal: tether's p50 and p99 not worse than haproxy's (the plain one): p50 {t['p50_us']:.2f} vs "
          f"{h['p50_us']:.2f} µs, p99 {t['p99_us']:.2f} vs {h['p99_us']:.2f} µs: {'met' if met else 'NOT met'}.\n")
    return {"latency": met}


# --- 3. RSS per idle connection ---------------------------------------------------------


def rss_of(pids):
    rss = pss = 0
    for pid in pids:
        rss += u.status_kb(pid, "VmRSS") or 0
        pss += u.pss_kb(pid) or 0
    return rss, pss


def hold_server(tmp, port):
    """The holding server with a command pipe: returns (popen, count())."""
    p = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "_hold", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=ENV,
        start_new_session=True,
    )
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError("holding server did not start")

    def count():
        p.stdin.write("count\n")
        p.stdin.flush()
        a, o, e = p.stdout.readline().split()
        return int(a), int(o), int(e)

    return p, count


def open_batch(port, n, socks):
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        socks.append(s)


def bench_rss(args, tmp, results):
    N = args.connections
    names = [n for n in ["tether", "tether-copy", "haproxy", "socat"] if n in args.rss_subjects.split(",")]
    subs = subjects(names)
    rows = []
    summary = {}
    for s in subs:
        upstream = u.free_port()
        hp, count = hold_server(tmp, upstream)
        CHILDREN_POPEN.append(hp)
        socks = []
        rec = {}
        try:
            port = s.start(args, tmp, upstream, tag="-rss")
            time.sleep(0.5)
            pids0 = s.pids()
            rss0, pss0 = rss_of(pids0)
            t0 = time.monotonic()
            batch = 250
            while len(socks) < N:
                open_batch(port, min(batch, N - len(socks)), socks)
                deadline = time.monotonic() + 30
                while count()[0] < len(socks) and time.monotonic() < deadline:
                    time.sleep(0.005)
                if count()[0] < len(socks):
                    raise RuntimeError(f"upstream accepted only {count()[0]} of {len(socks)}")
            t_open = time.monotonic() - t0
            for c in socks:
                c.sendall(b"x")
            bad = 0
            for c in socks:
                try:
                    if c.recv(1) != b"x":
                        bad += 1
                except OSError:
                    bad += 1
            time.sleep(1.0)
            pids = s.pids()
            rss1, pss1 = rss_of(pids)
            main_pid = s.proc.pid
            rec = {
                "connections": len(socks), "echo_failed": bad, "open_s": t_open,
                "rss0_kb": rss0, "rss1_kb": rss1, "pss0_kb": pss0, "pss1_kb": pss1,
                "processes": len(pids), "processes_before": len(pids0),
                "per_conn_rss_kib": (rss1 - rss0) / len(socks), "per_conn_pss_kib": (pss1 - pss0) / len(socks),
                "main_rss_kb": u.status_kb(main_pid, "VmRSS"), "main_hwm_kb": u.status_kb(main_pid, "VmHWM"),
                "main_threads": u.threads(main_pid),
                "main_fds": len(os.listdir(f"/proc/{main_pid}/fd")),
                "upstream_count": count(),
            }
            if s.kind == "tether":
                ev = s.drain_events()
                rec["relayed_events"] = sum(1 for e in ev if e.get("event") == "relayed")
                rec["refused_events"] = sum(1 for e in ev if e.get("event") == "refused")
        except Exception as e:  # noqa: BLE001 (reported in the table)
            rec = {"error": f"{type(e).__name__}: {e}", "connections": len(socks)}
        finally:
            for c in socks:
                close_hard(c)
            s.stop()
            hp.stdin.close()
            try:
                hp.wait(5)
            except subprocess.TimeoutExpired:
                hp.kill()
                hp.wait()
        summary[s.key] = rec
        print(f"  rss {s.key}: {rec}", file=sys.stderr)
        if "error" in rec:
            rows.append([s.label, rec["connections"], "-", "-", "-", "-", "-", rec["error"]])
        else:
            rows.append([
                s.label, rec["connections"], f"{rec['rss0_kb'] / 1024:.1f}", f"{rec['rss1_kb'] / 1024:.1f}",
                f"**{rec['per_conn_rss_kib']:.2f}**" if s.key == "tether" else f"{rec['per_conn_rss_kib']:.2f}",
                f"{rec['per_conn_pss_kib']:.2f}", f"{rec['processes']}", f"{rec['open_s']:.1f} s",
            ])
        time.sleep(0.5)
    results["rss"] = summary
    print("### RSS per idle proxied connection\n")
    print(
        f"{N} client connections through each proxy (one proxy at a time), opened in batches of 250 "
        "(each batch waited for until the upstream had accepted it), one byte through each and its "
        "echo back, 1 s of quiet, then the proxy's memory: VmRSS summed over every process of its "
        "session, before any connection and after; per connection = (after − before) / N. PSS "
        "(shared pages split among their users) beside it: for socat, which forks a process per "
        "connection, the RSS sum counts the shared libraries once per process.\n"
    )
    print(b.table(
        ["proxy", "connections", "RSS before (MiB)", "RSS after (MiB)", "KiB / connection (RSS)",
         "KiB / connection (PSS)", "processes", "time to open all"],
        rows,
    ))
    t, h = summary.get("tether", {}), summary.get("haproxy", {})
    if "per_conn_rss_kib" not in t or "per_conn_rss_kib" not in h:
        print("\nGoal: tether ≤ haproxy per connection: not measured.\n")
        return {}
    met = t["per_conn_rss_kib"] <= h["per_conn_rss_kib"]
    print(f"\nGoal: tether ≤ haproxy per connection: {t['per_conn_rss_kib']:.2f} vs {h['per_conn_rss_kib']:.2f} KiB: "
          f"{'met' if met else 'NOT met'}.\n")
    return {"rss": met}


CHILDREN_POPEN = []


# --- 4. Clients during an outage ---------------------------------------------------


def outage_client(port, i, out):
    rec = {"i": i, "t_connect": time.monotonic_ns()}
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    line = f"hello {i}\n".encode()
    try:
        s.connect(("127.0.0.1", port))
        s.sendall(line)
        deadline = time.monotonic() + 10
        got = b""
        while len(got) < len(line):
            s.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = s.recv(64)
            if not chunk:
                rec["outcome"] = "closed"
                break
            got += chunk
        else:
            rec["outcome"] = "echo"
            rec["t_echo"] = time.monotonic_ns()
    except ConnectionRefusedError:
        rec["outcome"] = "refused"
    except socket.timeout:
        rec["outcome"] = "timeout"
    except OSError as e:
        rec["outcome"] = "reset" if e.errno in (errno.ECONNRESET, errno.EPIPE) else f"error {e.errno}"
    rec["t_end"] = time.monotonic_ns()
    close_hard(s)
    out.append(rec)


def echo_through(port, timeout_s=5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as c:
            c.sendall(b"warm\n")
            got = b""
            while len(got) < 5:
                chunk = c.recv(64)
                if not chunk:
                    return False
                got += chunk
            return True
    except OSError:
        return False


def bench_outage(args, tmp, results):
    subs = subjects(args.outage_subjects.split(","))
    state = {}
    for s in subs:
        up = u.free_port()
        echo, _ = start_echo(tmp, up, f"echo-outage-{s.key}")
        s.start(args, tmp, up, tag="-outage")
        state[s.key] = {"upstream": up, "echo": echo, "rounds": []}
    gap = args.outage_seconds / args.outage_clients
    for r in range(args.outage_rounds):
        order = subs[r % len(subs) :] + subs[: r % len(subs)]
        for s in order:
            st = state[s.key]
            if not echo_through(s.listen):
                print(f"  outage {s.key}: warm-up echo failed before round {r}", file=sys.stderr)
            nxt = prepare_echo(tmp, st["upstream"], f"echo-outage-{s.key}-{r}")
            time.sleep(args.outage_dwell)
            s.drain_events()
            t0 = time.monotonic_ns()
            kill_now(st["echo"])
            out = []
            threads = []
            for i in range(args.outage_clients):
                at = t0 + int((0.05 + i * gap) * 1e9)
                while time.monotonic_ns() < at:
                    time.sleep(0.001)
                th = threading.Thread(target=outage_client, args=(s.listen, i, out), daemon=True)
                th.start()
                threads.append(th)
            at = t0 + int(args.outage_seconds * 1e9)
            while time.monotonic_ns() < at:
                time.sleep(0.001)
            st["echo"], t_listen = nxt, open_echo(nxt)
            for th in threads:
                th.join(timeout=15)
            served = [c for c in out if c["outcome"] == "echo"]
            first = min((c["t_echo"] for c in served), default=None)
            rec = {
                "round": r, "t_kill": t0, "t_listen": t_listen, "down_ms": (t_listen - t0) / 1e6,
                "served": len(served), "clients": len(out),
                "outcomes": sorted(c["outcome"] for c in out),
                "first_served_ms": (first - t_listen) / 1e6 if first else None,
                "client_ms": {c["i"]: ((c.get("t_echo") or c["t_end"]) - c["t_connect"]) / 1e6 for c in out},
            }
            if s.kind == "tether":
                ev = s.drain_events()
                rec["events"] = [e for e in ev if e.get("event") in ("refused", "upstream", "relayed")][:40]
            st["rounds"].append(rec)
            print(f"  outage {s.key} round {r}: served {rec['served']}/{len(out)}, "
                  f"first {rec['first_served_ms']}, {rec['outcomes']}", file=sys.stderr)
    for s in subs:
        s.stop()
        stop(state[s.key]["echo"])
    rows = []
    summary = {}
    for s in subs:
        rounds = state[s.key]["rounds"]
        served = sum(x["served"] for x in rounds)
        total = sum(x["clients"] for x in rounds)
        firsts = [x["first_served_ms"] for x in rounds if x["first_served_ms"] is not None]
        outcomes = {}
        for x in rounds:
            for o in x["outcomes"]:
                outcomes[o] = outcomes.get(o, 0) + 1
        per_round = " ".join(str(x["served"]) for x in rounds)
        summary[s.key] = {"rounds": rounds, "served": served, "clients": total}
        rows.append([
            s.label, f"{served} / {total}", per_round,
            statistics.median(firsts) if firsts else None, max(firsts) if firsts else None,
            ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
        ])
    results["outage"] = summary
    down = [x["down_ms"] for s in subs for x in state[s.key]["rounds"]]
    print("### Clients arriving during a 1.5 s outage\n")
    print(
        f"{args.outage_rounds} rounds per proxy, interleaved; each proxy has its own upstream echo "
        f"server. In each round: the upstream is SIGKILLed, {args.outage_clients} clients connect "
        f"{gap:.1f} s apart (the first 50 ms after the kill), each sends a line and waits up to 10 s "
        f"for its echo; {args.outage_seconds} s after the kill a new upstream (started beforehand, "
        "waiting for a signal to bind) listens "
        f"(kill → listening: median {statistics.median(down):.0f} ms). First served: from the new "
        "upstream's listen() returning (its own CLOCK_MONOTONIC stamp) to the first echo a client "
        "got, ms.\n"
    )
    print(b.table(["proxy", "served", "served per round", "first served, median", "first served, max", "outcomes"], rows))
    t = summary.get("tether")
    if not t:
        print("\nGoal for tether: not measured.\n")
        return {}
    firsts = [x["first_served_ms"] for x in t["rounds"] if x["first_served_ms"] is not None]
    met = t["served"] == t["clients"] and len(firsts) == len(t["rounds"]) and max(firsts) <= GOAL_FIRST_SERVED_MS
    print(f"\nGoal: tether serves every client, the first ≤ {GOAL_FIRST_SERVED_MS:.0f} ms after the upstream "
          f"listens again (every round): {'met' if met else 'NOT met'}.\n")
    return {"outage": met}


# --- 5. Restarts under a connect loop --------------------------------------------------


def bench_restarts(args, tmp, results):
    subs = subjects(args.restart_subjects.split(","))
    rows = []
    summary = {}
    for s in subs:
        up = u.free_port()
        echo, _ = start_echo(tmp, up, f"echo-restarts-{s.key}")
        rec = {}
        try:
            port = s.start(args, tmp, up, tag="-restarts")
            echo_through(port)
            loop = start_loop(tmp, port, f"loop-{s.key}.json")
            downs = []
            marks = []  # (t_kill_ns, t_listen_ns) of each restart
            t_up = time.monotonic()
            t_start = t_up
            for i in range(args.restarts):
                nxt = prepare_echo(tmp, up, f"echo-restarts-{s.key}-{i}")
                time.sleep(max(0.0, args.restart_up - (time.monotonic() - t_up)))
                t0 = time.monotonic_ns()
                kill_now(echo)
                time.sleep(args.restart_down)
                echo, t_listen = nxt, open_echo(nxt)
                t_up = time.monotonic()
                downs.append((t_listen - t0) / 1e6)
                marks.append((t0, t_listen))
            time.sleep(args.restart_up)
            took = time.monotonic() - t_start
            doc = finish_loop(loop)
            rec = {"downs_ms": downs, "seconds": took, **doc}
            # Each failure placed against the restarts: ms after the last
            # kill before it (negative: before the first kill).
            rec["failures_vs_kill"] = []
            for t, kind in doc.get("failures", []):
                before = [k for k, _ in marks if k <= t]
                after_ms = (t - before[-1]) / 1e6 if before else (t - marks[0][0]) / 1e6 if marks else None
                rec["failures_vs_kill"].append((kind, after_ms))
            if s.kind == "tether":
                ev = s.drain_events()
                causes = {}
                for e in ev:
                    if e.get("event") == "refused":
                        causes[e.get("cause")] = causes.get(e.get("cause"), 0) + 1
                rec["tether_refused"] = causes
                rec["tether_closed_endings"] = {}
                for e in ev:
                    if e.get("event") == "closed":
                        k = e.get("ending")
                        rec["tether_closed_endings"][k] = rec["tether_closed_endings"].get(k, 0) + 1
        except Exception as e:  # noqa: BLE001
            rec = {"error": f"{type(e).__name__}: {e}"}
        finally:
            s.stop()
            stop(echo)
        summary[s.key] = {k: v for k, v in rec.items() if k != "failures"}
        summary[s.key]["failures_head"] = rec.get("failures", [])[:50]
        print(f"  restarts {s.key}: {rec.get('counts', rec.get('error'))}", file=sys.stderr)
        if "error" in rec:
            rows.append([s.label, "-", "-", "-", "-", "-", "-", "-", "-", rec["error"]])
            continue
        c = rec["counts"]
        failed = c["refused"] + c["closed"] + c["reset"] + c["timeout"] + c["other"]
        rows.append([
            s.label, c["served"], failed, c["refused"], c["closed"] + c["reset"], c["timeout"] + c["other"],
            rec["served_ms_p50"], rec["served_ms_max"], f"{rec['seconds']:.1f} s",
            f"{statistics.median(rec['downs_ms']):.0f} ms",
        ])
    if "tether-sa" not in args.without.split(","):
        rec = socket_activation_loop(args, tmp)
        summary["tether-sa"] = {k: v for k, v in rec.items() if k != "failures"}
        print(f"  restarts tether-sa: {rec.get('counts', rec.get('error'))}", file=sys.stderr)
        label = "**tether up**, socket activation (tether holds the listener; no proxy)"
        if "error" in rec:
            rows.append([label, "-", "-", "-", "-", "-", "-", "-", "-", rec["error"]])
        else:
            c = rec["counts"]
            failed = c["refused"] + c["closed"] + c["reset"] + c["timeout"] + c["other"]
            rows.append([
                label, c["served"], failed, c["refused"], c["closed"] + c["reset"],
                c["timeout"] + c["other"], rec["served_ms_p50"], rec["served_ms_max"],
                f"{rec['seconds']:.1f} s", f"{statistics.median(rec['downs_ms']):.0f} ms (to running again)",
            ])
    results["restarts"] = summary
    print(f"### Connect loop through {args.restarts} restarts\n")
    print(
        f"One client process loops: connect, send a line, read its echo, close (5 s bound on each "
        f"step; 1 ms pause after a refused connect). Meanwhile the upstream echo server is SIGKILLed "
        f"and started again {args.restarts} times (the next one started beforehand and told to bind "
        f"{args.restart_down * 1000:.0f} ms after the kill; then up {args.restart_up * 1000:.0f} ms). "
        "One path at a time. Refused: the connect failed; "
        "closed/reset: connected, then closed or reset before the echo (a relayed connection cut by "
        "the kill counts here too); timed out: no echo within 5 s.\n"
    )
    print(b.table(
        ["path", "served", "failed", "refused", "closed / reset", "timed out / other",
         "served: median (ms)", "slowest served (ms)", "loop ran", "kill → listening (median)"],
        rows,
    ))
    print()
    return {}


def start_loop(tmp, port, name):
    """The connect loop (`_loop`) against `port`, started and ready."""
    out = os.path.join(tmp, name)
    loop = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "_loop", str(port), out],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV, start_new_session=True,
    )
    loop.out = out
    CHILDREN_POPEN.append(loop)
    if loop.stdout.readline().strip() != "ready":
        raise RuntimeError("connect loop did not start")
    return loop


def finish_loop(loop):
    """Stops the connect loop (15 s bound) and returns its counts."""
    loop.stdin.close()
    try:
        loop.wait(timeout=15)
    except subprocess.TimeoutExpired:
        loop.kill()
        loop.wait()
        raise RuntimeError("the connect loop did not stop within 15 s")
    with open(loop.out) as f:
        return json.load(f)


def socket_activation_loop(args, tmp):
    """The same connect loop against a service of `tether up` that gets its
    listener from tether (sockets = [...], fd 3): the echo process is
    SIGKILLed `args.restarts` times and tether starts it again after its
    restart delay (`args.restart_down`), handing it the same socket. The
    listener never closes, so no client can be refused."""
    port = u.free_port()
    xdg = os.path.join(tmp, "xdg-sa")
    os.makedirs(xdg, mode=0o700, exist_ok=True)
    conf = os.path.join(tmp, "sa.toml")
    delay = f"{int(args.restart_down * 1000)}ms"
    with open(conf, "w") as f:
        f.write(
            'name = "bench-sa"\n'
            "[services.echo]\n"
            f"command = {u.toml_argv([sys.executable, os.path.abspath(__file__), '_echo', '0'])}\n"
            f'sockets = ["tcp://127.0.0.1:{port}"]\n'
            'restart = "always"\n'
            f'restart_delay = "{delay}"\n'
            f'restart_delay_max = "{delay}"\n'
            'crash_loop = { exits = 1000, window = "60s" }\n'
        )
    env = u.tether_env(xdg, MARK)
    up = subprocess.Popen(
        [args.tether, "up", "--no-status", "-q", "-f", conf],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, start_new_session=True,
    )
    CHILDREN_POPEN.append(up)

    def echo_pid():
        r = subprocess.run([args.tether, "ps", "--json", "-f", conf], capture_output=True,
                           text=True, env=u.clean_env() | {"XDG_RUNTIME_DIR": xdg}, timeout=10)
        if r.returncode != 0:
            return None
        svc = json.loads(r.stdout)["services"][0]
        return svc.get("pid") if svc.get("state") in ("starting", "ready") else None

    rec = {}
    try:
        deadline = time.monotonic() + 15
        while echo_pid() is None:
            if time.monotonic() > deadline or up.poll() is not None:
                raise RuntimeError(f"tether up did not start the echo service: {up.stderr.read() if up.poll() is not None else ''}")
            time.sleep(0.05)
        echo_through(port)
        loop = start_loop(tmp, port, "loop-tether-sa.json")
        downs = []
        t_start = time.monotonic()
        for _ in range(args.restarts):
            time.sleep(args.restart_up)
            pid = echo_pid()
            if pid is None:
                raise RuntimeError("the echo service is not running")
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            deadline = t0 + 10
            while True:
                now = echo_pid()
                if now is not None and now != pid:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("tether did not start the echo service again within 10 s")
                time.sleep(0.005)
            downs.append((time.monotonic() - t0) * 1000)
        time.sleep(args.restart_up)
        took = time.monotonic() - t_start
        doc = finish_loop(loop)
        rec = {"downs_ms": downs, "seconds": took, **doc}
    except Exception as e:  # noqa: BLE001
        rec = {"error": f"{type(e).__name__}: {e}"}
    finally:
        subprocess.run([args.tether, "down", "-f", conf], capture_output=True,
                       env=u.clean_env() | {"XDG_RUNTIME_DIR": xdg}, timeout=30)
        try:
            up.wait(timeout=15)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    return rec


# --- Main ----------------------------------------------------------------------------


def versions(args):
    out = {}
    for name, argv in (
        ("tether", [args.tether, "--version"]),
        ("haproxy", [args.haproxy, "-v"]),
        ("socat", [args.socat, "-V"]),
        ("iperf3", [args.iperf3, "--version"]),
    ):
        text = u.run_bounded(argv, 5)
        lines = [line for line in text.splitlines() if line.strip()]
        if name == "socat":
            lines = [line for line in lines if line.startswith("socat version")]
        out[name] = lines[0] if lines else "not found"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tether", default=os.environ.get("TETHER_BIN", str(b.DEFAULT_TETHER)))
    ap.add_argument("--haproxy", default=shutil.which("haproxy") or "/usr/sbin/haproxy")
    ap.add_argument("--socat", default=shutil.which("socat") or "/usr/bin/socat")
    ap.add_argument("--iperf3", default=shutil.which("iperf3") or "/usr/bin/iperf3")
    ap.add_argument("--only", default="throughput,latency,rss,outage,restarts",
                    help="comma-separated measurements (default: %(default)s)")
    ap.add_argument("--iperf-runs", type=int, default=3)
    ap.add_argument("--iperf-seconds", type=int, default=5)
    ap.add_argument("--iperf-extra-seconds", type=int, default=3, help="length of the --iperf-extra runs")
    ap.add_argument("--iperf-extra", default="-P 4;-l 1K;-l 128",
                    help="semicolon-separated iperf3 options, one run each (default: %(default)s)")
    ap.add_argument("--round-trips", type=int, default=20000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=200, help="interleaved chunks the round trips are split into (default: 200, of 100 each)")
    ap.add_argument("--connections", type=int, default=8000)
    ap.add_argument("--rss-subjects", default="tether,tether-copy,haproxy,socat")
    ap.add_argument("--outage-subjects", default="tether,haproxy-retry,haproxy-tuned,socat")
    ap.add_argument("--outage-rounds", type=int, default=5)
    ap.add_argument("--outage-clients", type=int, default=5)
    ap.add_argument("--outage-seconds", type=float, default=1.5)
    ap.add_argument("--outage-dwell", type=float, default=0.5)
    ap.add_argument("--restart-subjects", default="direct,tether,haproxy-retry,haproxy-tuned,socat")
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--restart-down", type=float, default=0.2)
    ap.add_argument("--restart-up", type=float, default=0.3)
    ap.add_argument("--without", default="", help="comma-separated subjects to leave out (e.g. tether,tether-copy)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--check-goals", action="store_true")
    args = ap.parse_args()

    WITHOUT.update(x.strip() for x in args.without.split(",") if x.strip())
    need = ["haproxy", "socat", "iperf3"] + ([] if {"tether", "tether-copy"} <= WITHOUT else ["tether"])
    missing = [n for n in need if not os.access(getattr(args, n), os.X_OK)]
    if missing:
        for n in missing:
            print(f"error: {n} not found at {getattr(args, n)}", file=sys.stderr)
        return b.EXIT_TOOL_MISSING
    # 20,000 descriptors for us and every child (8,000 clients here, 16,000
    # in a proxy); haproxy with maxconn 20000 raises its own soft limit to
    # about 40,000, so the hard limit goes higher where we may (root).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, FD_LIMIT), max(hard, HAPROXY_FD_LIMIT)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, FD_LIMIT), max(hard, FD_LIMIT)))

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(1))
    b.become_subreaper()
    m0 = b.machine()
    vers = versions(args)
    results = {"versions": vers, "args": vars(args)}
    goals = {}
    status = b.EXIT_OK
    tmp = tempfile.mkdtemp(prefix="bench-proxy-")
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    benches = {
        "throughput": bench_throughput, "latency": bench_latency, "rss": bench_rss,
        "outage": bench_outage, "restarts": bench_restarts,
    }
    print("## `tether proxy` beside haproxy and socat\n")
    print(f"Command: `{u.command_line()}`\n")
    print(f"Date: {m0['date']}; {m0['nproc']} CPUs, {m0['cpu']}, kernel {m0['kernel']}, "
          f"load {m0['loadavg'][0]:.2f} at start.")
    print("Versions: " + "; ".join(f"{k}: {v}" for k, v in vers.items()) + "\n")
    try:
        for name in only:
            t = time.monotonic()
            print(f"== {name}", file=sys.stderr)
            try:
                goals.update(benches[name](args, tmp, results))
            except Exception as e:  # noqa: BLE001 (one failure leaves the others' numbers)
                status = b.EXIT_RUN_FAILED
                print(f"### {name}: FAILED: {type(e).__name__}: {e}\n")
                results[name] = {"error": str(e)}
                cleanup()
            print(f"({name}: {time.monotonic() - t:.0f} s, load {os.getloadavg()[0]:.2f} after)\n")
    finally:
        cleanup()
        for p in CHILDREN_POPEN:
            if p.poll() is None:
                b.kill_session(p.pid)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        if args.keep or status != b.EXIT_OK:
            print(f"(configs and logs kept in {tmp})", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not u.final_check():
        status = b.EXIT_RUN_FAILED
    results["goals"] = goals
    b.write_json(args.json, results)
    if args.check_goals and status == b.EXIT_OK and not all(goals.values()):
        return b.EXIT_GOAL_MISSED
    return status


if __name__ == "__main__":
    sys.exit(main())
