#!/usr/bin/env python3
"""Crash to ready again: how long a crashed service is away under
`tether up` (restart = "always", ready = its /health or its READY=1), under
supervisord (autorestart=true), s6 (s6-supervise, plain and with
notification-fd) and pm2 (autorestart, restart_delay 0), beside the
service's own start-up and a restart by the harness itself.

The service (up_service.py) is Python's http.server on 127.0.0.1; once it
listens it sends one UDP datagram, "<time.monotonic_ns()> <pid>", to this
harness, so each instance's start is known to the microsecond without polling
(CLOCK_MONOTONIC is one clock for every process).

Subjects, each with its own copy of the service (own port, own report
socket), all running at once:
- direct: the harness itself spawns the service; its "restart" is a spawn
  right after the kill, so crash -> listening - (kill -> spawn) is the
  service's own start-up (spawn -> listening), taken under the same
  conditions as the restarts;
- tether, once per --stacks entry DELAY/READY[/cgroups-off]: restart_delay
  DELAY (1ns is the smallest it takes: it must be more than zero), the
  readiness check READY (http: its /health; tcp: its port; notify: the
  service's READY=1 on $NOTIFY_SOCKET; none), TETHER_CGROUPS=off with
  cgroups-off; stable_after = --stable-after (under the dwell, so every crash
  is a first restart and its pause is restart_delay +/- 20 % jitter) and a
  crash-loop limit far above --crashes;
- supervisord, startsecs = --supervisord-startsecs (0, the lowest it allows),
  startretries = 1000;
- s6: s6-svscan over one service directory (`run` execs the service); and
  the same with notification-fd 3 (the service writes a newline to fd 3
  once it listens). s6-supervise waits until 1 s after the previous start
  before it respawns (without readiness notification, 1 s after any death);
- pm2: one app (interpreter none, autorestart, restart_delay 0,
  min_uptime 100 ms, max_restarts 100000), PM2_HOME in a temporary
  directory.

--crashes rounds; in each, every subject in turn (the order rotates each
round, so load drifts hit all alike): wait --dwell seconds with the instance
up, take t0, SIGKILL the instance's pid, take t1 from the next instance's
datagram. crash -> listening = t1 - t0. For tether also, from its --json
events: the backoff it chose (`restarting` in_ms), when it saw the exit,
spawned the new process and declared it ready (the ready event's line
arriving at this harness, on its monotonic clock; the event's own time_ms,
wall clock with ms precision, converted, beside it). The next kill waits
until tether has declared the instance ready.

Goals: tether's crash -> ready at most the service's own start-up (median)
+ 10 ms + the backoff it chose, judged on the median of (crash -> ready -
backoff); and, for stacks with no backoff (a restart_delay under 1 ms),
crash -> ready at most the direct restart's crash -> listening (median)
+ 5 ms.

Python 3 standard library only. Exit 0 when every crash was followed by a
restart and nothing was left running, 1 otherwise, 2 when a tool is missing,
3 with --check-goals when a goal is missed.
"""

import argparse
import os
import signal
import socket
import statistics
import sys
import tempfile
import time

import benchlib as b
import uplib as u

SERVICE = str(b.BENCH_DIR / "up_service.py")
GOAL_SLACK_MS = 10.0
# With no backoff: crash -> ready at most the direct restart + this.
GOAL_DIRECT_SLACK_MS = 5.0
TOOLS = (u.TETHER, u.SUPERVISORD, u.S6, u.PM2)
DEFAULT_STACKS = "100ms/http,1ns/http,1ns/notify,1ns/http/cgroups-off"
# Per crash: how long the next instance may take to be up (and ready).
BOUND_S = 15.0
DIRECT = "direct"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crashes", type=int, default=30, help="crashes per subject (default: %(default)s)")
    p.add_argument(
        "--stacks",
        default=DEFAULT_STACKS,
        help="tether stacks, comma-separated DELAY/READY[/cgroups-off]: restart_delay, readiness check "
        "(http, tcp, notify, none), and TETHER_CGROUPS=off (default: %(default)s)",
    )
    p.add_argument(
        "--delays",
        default=None,
        help="tether restart_delay values: with --ready, replaces --stacks by every DELAY/READY pair",
    )
    p.add_argument(
        "--stable-after",
        default="250ms",
        help="tether stable_after: under the dwell, so the backoff starts over each time (default: %(default)s)",
    )
    p.add_argument(
        "--dwell",
        type=float,
        default=0.5,
        help="seconds an instance stays up (after it is up, and ready for tether) before its kill (default: %(default)s)",
    )
    p.add_argument(
        "--ready",
        default=None,
        help="comma-separated readiness checks for the tether stacks (with --delays: replaces --stacks): "
        "http (the service's /health), tcp (its port), notify (READY=1), none (ready once spawned; "
        "crash -> ready is then meaningless, but it shows what the probe costs the service's start-up)",
    )
    p.add_argument(
        "--supervisord-startsecs",
        type=int,
        default=0,
        help="supervisord startsecs (default: %(default)s, the lowest allowed)",
    )
    p.add_argument(
        "--python",
        default="/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable,
        help="the interpreter of the service (default: %(default)s)",
    )
    p.add_argument("--check-goals", action="store_true", help="exit 3 when a goal is missed")
    u.add_tool_args(p, TOOLS)
    args = p.parse_args()
    if not 1 <= args.crashes <= 1000:
        p.error("--crashes must be between 1 and 1000")
    if not 0.3 <= args.dwell <= 30:
        p.error("--dwell must be between 0.3 and 30 seconds")
    if args.delays is not None or args.ready is not None:
        delays = [d.strip() for d in (args.delays or "100ms").split(",") if d.strip()]
        readies = [r.strip() for r in (args.ready or "http").split(",") if r.strip()]
        stacks = [(d, r, True) for r in readies for d in delays]
    else:
        stacks = []
        for item in args.stacks.split(","):
            parts = [x.strip() for x in item.split("/") if x.strip()]
            if not parts:
                continue
            if len(parts) > 3 or (len(parts) == 3 and parts[2] != "cgroups-off"):
                p.error(f"--stacks: {item!r} is not DELAY/READY[/cgroups-off]")
            stacks.append((parts[0], parts[1] if len(parts) > 1 else "http", len(parts) < 3))
    for _, r, _ in stacks:
        if r not in ("http", "tcp", "notify", "none"):
            p.error(f"unknown readiness check {r!r}")

    tools, missing = u.selected_tools(args, TOOLS)
    tcp_at_start = b.tcp_sockets()
    if not b.become_subreaper():
        print("warning: could not become a child subreaper", file=sys.stderr)
    versions = u.versions(args, tools)

    subjects = [Direct(args)]
    if u.TETHER in tools:
        subjects += [Tether(args, delay, ready, cgroups) for delay, ready, cgroups in stacks]
    if u.SUPERVISORD in tools:
        subjects.append(Supervisord(args))
    if u.S6 in tools:
        subjects += [S6(args, notify=False), S6(args, notify=True)]
    if u.PM2 in tools:
        subjects.append(Pm2(args))
    try:
        for s in subjects:
            print(f"starting {s.label}...", file=sys.stderr)
            s.start()
        live = [s for s in subjects if not s.run["failures"]]
        print(f"{args.crashes} rounds of crashes: {', '.join(s.label for s in live)}...", file=sys.stderr)
        for i in range(args.crashes):
            k = i % len(live) if live else 0
            for s in live[k:] + live[:k]:
                if s.run["failures"]:
                    continue
                time.sleep(args.dwell)
                s.crash(i)
            if (i + 1) % 10 == 0:
                print(f"  {i + 1} rounds done", file=sys.stderr)
    finally:
        for s in subjects:
            s.stop()

    runs = [s.run for s in subjects]
    failed = any(r["failures"] or r["leftovers"] for r in runs)
    m = b.machine()
    m["tcp_sockets_at_start"] = tcp_at_start
    results = {"args": vars(args), "versions": versions, "machine": m, "runs": runs}
    goals_ok = report(args, runs, missing, m, versions)
    clean = u.final_check()
    b.write_json(args.json, results)
    if missing:
        return b.EXIT_TOOL_MISSING
    if failed or not clean:
        return b.EXIT_RUN_FAILED
    if args.check_goals and not goals_ok:
        return b.EXIT_GOAL_MISSED
    return b.EXIT_OK


# --- Measuring ------------------------------------------------------------------


def recv_up(sock, deadline_ns, not_pid=None):
    """The next instance's datagram: (t_listen_ns, pid), or None at the
    deadline. Datagrams from `not_pid` (the instance just killed) are
    skipped."""
    while True:
        left = (deadline_ns - time.monotonic_ns()) / 1e9
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(256)
        except socket.timeout:
            return None
        try:
            t, pid = (int(x) for x in data.split())
        except ValueError:
            continue
        if pid != not_pid:
            return t, pid


def deadline(seconds=BOUND_S):
    return time.monotonic_ns() + int(seconds * 1e9)


class Subject:
    """One copy of the service under one supervisor (or none)."""

    def __init__(self, args, tool, label):
        self.args = args
        self.mark = u.new_mark()
        self.port = u.free_port()
        self.reporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.reporter.bind(("127.0.0.1", 0))
        self.tmp = tempfile.mkdtemp(prefix="up-restart-")
        self.pid = None
        self.proc = None
        self.run = {"tool": tool, "label": label, "crashes": [], "failures": [], "leftovers": []}

    @property
    def label(self):
        return self.run["label"]

    def service_argv(self):
        return [
            self.args.python,
            SERVICE,
            "--port",
            str(self.port),
            "--report-port",
            str(self.reporter.getsockname()[1]),
        ]

    def env(self):
        env = dict(os.environ)
        env[u.MARK_VAR] = self.mark
        return env

    def fail(self, why):
        self.run["failures"].append(why)

    def first_up(self):
        got = recv_up(self.reporter, deadline())
        if got is None:
            self.fail(f"the service was not up within {BOUND_S:g} s of the start")
        else:
            self.pid = got[1]
        return got

    def stop(self):
        self.reporter.close()
        self.run["leftovers"] = [
            f"{pid} {comm} ({state})" for pid, (state, comm) in sorted(u.kill_marked(self.mark).items())
        ]


class Direct(Subject):
    def __init__(self, args):
        super().__init__(args, DIRECT, "direct spawn (no supervisor)")
        self.run["argv"] = self.service_argv()

    def start(self):
        self.proc = u.Proc(self.service_argv(), self.env())
        self.first_up()

    def crash(self, i):
        t0 = time.monotonic_ns()
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(5)
        self.proc = u.Proc(self.service_argv(), self.env())
        got = recv_up(self.reporter, deadline())
        if got is None or got[1] != self.proc.pid:
            self.fail(f"crash {i}: the new instance was not up within {BOUND_S:g} s")
            return
        t1, self.pid = got
        self.run["crashes"].append(
            {
                "crash_to_listening_ns": t1 - t0,
                "crash_to_spawn_ns": self.proc.t_start - t0,
                "spawn_to_listening_ns": t1 - self.proc.t_start,
            }
        )

    def stop(self):
        if self.proc is not None and self.proc.running():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        super().stop()


class Tether(Subject):
    def __init__(self, args, delay, ready="http", cgroups=True):
        label = f"tether, restart_delay {delay}"
        if ready != "http":
            label += f", ready = {ready}"
        if not cgroups:
            label += ", TETHER_CGROUPS=off"
        super().__init__(args, u.TETHER, label)
        self.ready = ready
        self.cgroups = cgroups
        ready_line = {
            "http": f'ready = "http://127.0.0.1:{self.port}/health"\n',
            "tcp": f'ready = "tcp://127.0.0.1:{self.port}"\n',
            "notify": 'ready = "notify"\n',
            "none": "",
        }[ready]
        self.xdg = os.path.join(self.tmp, "run")
        os.mkdir(self.xdg)
        self.config = os.path.join(self.tmp, "tether.toml")
        with open(self.config, "w") as f:
            f.write(
                f"""name = "restart"

[defaults]
restart = "always"
restart_delay = {u.toml_str(delay)}
stable_after = {u.toml_str(args.stable_after)}
crash_loop = {{ exits = {args.crashes * 10 + 100}, window = "60s" }}

[services.svc]
command = {u.toml_argv(self.service_argv() + (["--sd-notify"] if ready == "notify" else []))}
{ready_line}"""
            )
        self.run["restart_delay"] = delay
        self.run["ready"] = ready
        self.run["cgroups"] = cgroups
        self.run["config"] = open(self.config).read()
        self.run["argv"] = [args.tether, "up", "-f", self.config, "--no-status", "--json"]
        self.events = None

    def start(self):
        env = u.tether_env(self.xdg, self.mark)
        if not self.cgroups:
            env["TETHER_CGROUPS"] = "off"
        self.proc = u.Proc(self.run["argv"], env, stderr=os.path.join(self.tmp, "stderr"), lines=True)
        self.events = u.Events(self.proc)
        got = self.first_up()
        if got and not self.events.until(lambda e: is_ready(e, got[1]), BOUND_S):
            self.fail(f"the service was not ready within {BOUND_S:g} s of the start")

    def crash(self, i):
        self.events.drain()
        since = len(self.events.seen)
        old = self.pid
        t0 = time.monotonic_ns()
        os.kill(old, signal.SIGKILL)
        got = recv_up(self.reporter, t0 + int(BOUND_S * 1e9), not_pid=old)
        if got is None:
            self.fail(f"crash {i}: no new instance within {BOUND_S:g} s")
            return
        t1, new = got
        self.pid = new
        ready = self.events.until(lambda e: is_ready(e, new), BOUND_S)
        if ready is None:
            self.fail(f"crash {i}: new instance {new} listening, but not ready within {BOUND_S:g} s")
            return
        window = self.events.seen[since:]
        exit_ev = first(window, lambda e: e.get("event") == "exit" and e.get("pid") == old)
        restarting = first(window, lambda e: e.get("event") == "restarting")
        starting = first(
            window, lambda e: e.get("event") == "state" and e.get("to") == "starting" and e.get("pid") == new
        )
        self.run["crashes"].append(
            {
                "crash_to_listening_ns": t1 - t0,
                "crash_to_ready_ns": ready["_t"] - t0,
                "crash_to_ready_event_ns": ready["_mono"] - t0,
                "listening_to_ready_ns": ready["_t"] - t1,
                "backoff_ms": restarting["in_ms"] if restarting else None,
                "crash_to_exit_seen_ns": exit_ev["_mono"] - t0 if exit_ev else None,
                "crash_to_spawn_ns": starting["_mono"] - t0 if starting else None,
                "spawn_to_listening_ns": t1 - starting["_mono"] if starting else None,
                "old_pid": old,
                "new_pid": new,
            }
        )

    def stop(self):
        if self.proc is not None:
            env = u.clean_env()
            env["XDG_RUNTIME_DIR"] = self.xdg
            if self.proc.running():
                _, _, code = u.bounded([self.args.tether, "down", "-f", self.config], env, 30)
                if code != 0:
                    self.fail(f"tether down: exit {code}")
            if not self.proc.wait(15):
                self.fail("tether up did not exit within 15 s of tether down")
        super().stop()


class Peer(Subject):
    """A peer supervisor: the harness kills the instance and waits for the
    next one's datagram; the peer has no readiness of its own to report."""

    def crash(self, i):
        old = self.pid
        t0 = time.monotonic_ns()
        os.kill(old, signal.SIGKILL)
        got = recv_up(self.reporter, t0 + int(BOUND_S * 1e9), not_pid=old)
        if got is None:
            self.fail(f"crash {i}: no new instance within {BOUND_S:g} s")
            return
        t1, self.pid = got
        self.run["crashes"].append({"crash_to_listening_ns": t1 - t0, "old_pid": old, "new_pid": self.pid})


class Supervisord(Peer):
    def __init__(self, args):
        super().__init__(args, u.SUPERVISORD, f"supervisord, startsecs={args.supervisord_startsecs}")
        keys = {
            "autorestart": "true",
            "startsecs": str(args.supervisord_startsecs),
            "startretries": "1000",
            "stopwaitsecs": "5",
            "stopasgroup": "true",
            "killasgroup": "true",
        }
        self.conf = u.supervisord_conf(self.tmp, [("svc", self.service_argv(), keys)])
        self.run["config"] = open(self.conf).read()
        self.run["argv"] = [args.supervisord, "-n", "-c", self.conf]

    def start(self):
        self.proc = u.Proc(
            self.run["argv"],
            self.env(),
            stdout=os.path.join(self.tmp, "stdout"),
            stderr=os.path.join(self.tmp, "stderr"),
        )
        self.first_up()

    def stop(self):
        if self.proc is not None:
            if self.proc.running():
                u.supervisorctl(self.args, self.conf, "shutdown")
            if not self.proc.wait(20):
                self.fail("supervisord did not exit within 20 s of supervisorctl shutdown")
        super().stop()


class S6(Peer):
    def __init__(self, args, notify):
        label = "s6, notification-fd 3" if notify else "s6 (no readiness notification)"
        super().__init__(args, u.S6, label)
        argv = self.service_argv() + (["--notify-fd", "3"] if notify else [])
        files = {"notification-fd": "3\n"} if notify else {}
        self.stack = u.S6Stack(args, self.tmp, [("svc", argv, files)], self.mark)
        self.run["config"] = self.stack.config()
        self.run["argv"] = self.stack.argv

    def start(self):
        self.proc = self.stack.start()
        self.first_up()

    def stop(self):
        if not self.stack.stop():
            self.fail("s6-svscan did not exit within 20 s of s6-svscanctl -t")
        super().stop()


class Pm2(Peer):
    def __init__(self, args):
        super().__init__(args, u.PM2, "pm2 (autorestart, restart_delay 0)")
        app = {
            "name": "svc",
            "script": self.service_argv()[0],
            "args": self.service_argv()[1:],
            "interpreter": "none",
            "exec_mode": "fork",
            "autorestart": True,
            "restart_delay": 0,
            "min_uptime": 100,
            "max_restarts": 100000,
            "kill_timeout": 1000,
        }
        self.stack = u.Pm2Stack(args, self.tmp, [app], self.mark)
        self.run["config"] = self.stack.config()
        self.run["argv"] = [args.pm2, "start", self.stack.file]

    def start(self):
        _, _, code = self.stack.start()
        if code != 0:
            self.fail(f"pm2 start: exit {code}")
            return
        self.first_up()

    def stop(self):
        if not self.stack.stop():
            self.fail("the pm2 daemon was still running after pm2 kill (killed)")
        super().stop()


def is_ready(event, pid):
    return event.get("event") == "state" and event.get("to") == "ready" and event.get("pid") == pid


def first(events, pred):
    for e in events:
        if pred(e):
            return e
    return None


# --- Reporting ------------------------------------------------------------------


def col(run, key):
    return [c[key] for c in run["crashes"] if c.get(key) is not None]


def med_ms(values_ns):
    return statistics.median(values_ns) / 1e6 if values_ns else None


def report(args, runs, missing, m, versions):
    direct = next(r for r in runs if r["tool"] == DIRECT)
    s = b.summary_ms(col(direct, "spawn_to_listening_ns"))
    u.print_header(
        "Crash → ready again",
        m,
        [
            f"Versions: {', '.join(versions.values()) or '-'}. "
            f"Service: `{' '.join(direct['argv'])}` (each subject has its own port)."
        ],
    )
    print(
        f"{args.crashes} rounds; in each, every subject's instance is SIGKILLed once, after it has been up "
        f"{args.dwell:g} s (order rotating per round).\n"
    )
    print("### The service's own start-up (spawned directly by the harness right after the kill)\n")
    print(
        b.table(
            ["", "runs", "failed", "median ms", "p95 ms", "mean ms", "min ms", "max ms"],
            [["spawn → listening", len(direct["crashes"]), len(direct["failures"]), *summary_cells(s)]],
        )
    )
    print()

    print("### Crash → listening again\n")
    rows = []
    for r in runs:
        sm = b.summary_ms(col(r, "crash_to_listening_ns"))
        rows.append([r["label"], len(r["crashes"]), len(r["failures"]), *summary_cells(sm), len(r["leftovers"])])
    for tool, msg in missing.items():
        rows.append([tool, "-", "-", "not measured: " + msg.split(":")[0], "-", "-", "-", "-", "-"])
    print(
        b.table(
            ["subject", "crashes", "failed", "median ms", "p95 ms", "mean ms", "min ms", "max ms", "left running"],
            rows,
        )
    )
    print(
        "\nSIGKILL to the next instance's datagram (it listens). For `direct`, the harness spawns the next "
        "instance itself as soon as it has reaped the old one."
    )
    print()

    goals_ok = True
    tether_runs = [r for r in runs if r["tool"] == u.TETHER]
    if tether_runs:
        print("### tether: crash → ready, and where the time goes (medians, ms)\n")
        rows = [
            [
                direct["label"],
                "-",
                "-",
                med_ms(col(direct, "crash_to_spawn_ns")),
                "-",
                med_ms(col(direct, "spawn_to_listening_ns")),
                "-",
                "-",
                "-",
            ]
        ]
        for r in tether_runs:
            own = [
                c["crash_to_spawn_ns"] - c["crash_to_exit_seen_ns"] - c["backoff_ms"] * 1_000_000
                for c in r["crashes"]
                if None not in (c.get("crash_to_spawn_ns"), c.get("crash_to_exit_seen_ns"), c.get("backoff_ms"))
            ]
            ready_none = r.get("ready") == "none"
            rows.append(
                [
                    r["label"],
                    statistics.median(col(r, "backoff_ms")) if col(r, "backoff_ms") else None,
                    med_ms(col(r, "crash_to_exit_seen_ns")),
                    med_ms(col(r, "crash_to_spawn_ns")),
                    med_ms(own),
                    med_ms(col(r, "spawn_to_listening_ns")),
                    "-" if ready_none else med_ms(col(r, "listening_to_ready_ns")),
                    "-" if ready_none else med_ms(col(r, "crash_to_ready_ns")),
                    "-" if ready_none else med_ms(col(r, "crash_to_ready_event_ns")),
                ]
            )
        print(
            b.table(
                [
                    "run",
                    "backoff (in_ms)",
                    "crash → exit seen",
                    "crash → respawn",
                    "respawn − exit seen − backoff",
                    "respawn → listening",
                    "listening → ready",
                    "crash → ready (line arrival)",
                    "crash → ready (event time_ms)",
                ],
                rows,
            )
        )
        print(
            "\nEvent times (time_ms, tether's exit, starting and ready events) are wall-clock milliseconds "
            "turned into the monotonic clock: ±1 ms. crash → ready (line arrival) is when the ready event's "
            "line reached this harness; listening → ready is from the service's datagram to that arrival "
            "(the readiness probe's pacing, its request, and the event's way out). For the direct row, "
            "crash → respawn is SIGKILL → reaped → posix_spawn returning in the harness."
        )
        print("\n### tether: crash → ready minus its backoff, against the goal\n")
        startup_med = s["median"] if s else None
        rows = []
        for r in [r for r in tether_runs if r.get("ready") != "none"]:
            net = [
                c["crash_to_ready_ns"] - c["backoff_ms"] * 1_000_000
                for c in r["crashes"]
                if c.get("backoff_ms") is not None
            ]
            sm = b.summary_ms(net)
            over = None
            if startup_med is not None:
                over = sum(1 for v in net if v / 1e6 > startup_med + GOAL_SLACK_MS)
            ok = sm is not None and startup_med is not None and sm["median"] <= startup_med + GOAL_SLACK_MS
            ok = ok and not r["failures"]
            goals_ok &= ok
            r["goal"] = {
                "bound_ms": None if startup_med is None else startup_med + GOAL_SLACK_MS,
                "net_median_ms": sm and sm["median"],
                "met": ok,
            }
            rows.append(
                [
                    r["label"],
                    *(summary_cells(sm)[:2]),
                    sm and sm["max"],
                    None if startup_med is None else startup_med + GOAL_SLACK_MS,
                    f"{over}/{len(net)}" if over is not None else "-",
                    "met" if ok else "MISSED",
                ]
            )
        print(
            b.table(
                [
                    "run",
                    "median ms",
                    "p95 ms",
                    "max ms",
                    "bound: start-up median + 10 ms",
                    "crashes over the bound",
                    "goal (median)",
                ],
                rows,
            )
        )
        print(
            f"\nGoal: crash → ready ≤ the service's own start-up ({fmt_ms(startup_med)} median) "
            f"+ {GOAL_SLACK_MS:g} ms + the backoff tether chose."
        )
        direct_med = med_ms(col(direct, "crash_to_listening_ns"))
        no_backoff = [
            r
            for r in tether_runs
            if r.get("ready") != "none" and col(r, "backoff_ms") and max(col(r, "backoff_ms")) < 1
        ]
        if no_backoff and direct_med is not None:
            print(f"\n### tether with no backoff: crash → ready against the direct restart + {GOAL_DIRECT_SLACK_MS:g} ms\n")
            rows = []
            bound = direct_med + GOAL_DIRECT_SLACK_MS
            for r in no_backoff:
                sm = b.summary_ms(col(r, "crash_to_ready_ns"))
                over = sum(1 for v in col(r, "crash_to_ready_ns") if v / 1e6 > bound)
                ok = sm is not None and sm["median"] <= bound and not r["failures"]
                goals_ok &= ok
                r["goal_direct"] = {"bound_ms": bound, "median_ms": sm and sm["median"], "met": ok}
                rows.append(
                    [
                        r["label"],
                        sm and sm["median"],
                        sm and sm["p95"],
                        sm and sm["median"] - direct_med,
                        bound,
                        f"{over}/{len(col(r, 'crash_to_ready_ns'))}",
                        "met" if ok else f"MISSED by {sm['median'] - bound:.2f} ms" if sm else "MISSED",
                    ]
                )
            print(
                b.table(
                    [
                        "run",
                        "crash → ready median ms",
                        "p95 ms",
                        "over direct (median) ms",
                        f"bound: direct crash → listening median + {GOAL_DIRECT_SLACK_MS:g} ms",
                        "crashes over the bound",
                        "goal (median)",
                    ],
                    rows,
                )
            )
            print(
                f"\nThe direct restart's crash → listening: {fmt_ms(direct_med)} median (SIGKILL, the harness sees "
                "the exit through a pidfd, reaps, spawns at once). A restart_delay under 1 ms is as good as none "
                "(the smallest tether takes is 1ns: it must be more than zero)."
            )
    for r in runs:
        for f in r["failures"]:
            print(f"\nFAILED ({r['label']}): {f}")
        if r["leftovers"]:
            print(f"\nFAILED ({r['label']}): processes left running: {', '.join(r['leftovers'])}")
    return goals_ok


def summary_cells(sm):
    if not sm:
        return ["-"] * 5
    return [sm["median"], sm["p95"], sm["mean"], sm["min"], sm["max"]]


def fmt_ms(x):
    return "-" if x is None else f"{x:.2f} ms"


if __name__ == "__main__":
    sys.exit(main())
