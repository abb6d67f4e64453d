#!/usr/bin/env python3
"""`down` of a service that left 200 setsid'd children: how long until every
process is gone, and how many are left, under `tether up` (with cgroups, the
default as root, and with TETHER_CGROUPS=off, which walks the process tree),
supervisord, s6 and pm2. Stop grace 1 s everywhere.

Two variants of the service (one service per stack):
- keeps: `sh -c 'for i in $(seq 200); do setsid sleep 100000 & done; exec
  sleep 100000'` (the main process keeps running: the 200 are its children,
  each in a session of its own);
- exits: the same with `exec sleep 1` at the end: the main process exits
  1 s after forking, and the 200 are orphans (tether: restart = "no";
  supervisord: autorestart=false, startsecs=0; s6: a finish script that
  exits 125, "do not restart"; pm2: autorestart false).

Subjects (--runs each, interleaved run by run), each stopped by the command
that brings its whole stack down:
- tether: `tether down -f FILE`, stop_grace = "1s"; with cgroups and with
  TETHER_CGROUPS=off;
- supervisord, its defaults (signals to the program's pid) and
  stopasgroup/killasgroup=true (to its process group), stopwaitsecs=1:
  `supervisorctl shutdown`;
- s6: s6-svscan over the service directory (timeout-kill 1000):
  `s6-svscanctl -t` (every s6-supervise brings its service down and exits,
  then s6-svscan exits);
- pm2 (kill_timeout 1000, its default treekill): `pm2 delete all`, and
  separately `pm2 kill` (the daemon goes too); PM2_HOME in a temporary
  directory, its daemon killed at the end of every run whatever happens.

Each run: start the stack; wait until the 200 children and the main process
run; open a pidfd on each of them (their exits are seen through pidfds:
exact, and never fooled by a reused pid). keeps: wait 0.5 s, take t0, run
the stop command. exits: wait for the main process's exit (t_exit), watch
grace + 2 s (how long until the 200 are gone without any command, and how
many are left), then take t0 and run the stop command. From t0: when the
command returned, when every watched process was gone (and a scan for the
stack's marker found no other process but the supervisor's own), and how
many were still running --leftover-wait s (2) after the command returned;
those are then killed by the harness.

Goal (tether): every process gone within grace + 100 ms of the stop
command, 0 left. What each peer leaves is reported.

Python 3 standard library only. Exit 0 when every run ran and tether left
nothing, 1 otherwise (what peers leave is reported, not a failure), 2 when
a tool is missing, 3 with --check-goals when a goal is missed.
"""

import argparse
import os
import select
import statistics
import sys
import tempfile
import time

import benchlib as b
import uplib as u

CHILDREN = 200
GRACE_S = 1.0
GOAL_SLACK_MS = 100.0
TOOLS = (u.TETHER, u.SUPERVISORD, u.S6, u.PM2)
VARIANTS = ("keeps", "exits")
SUBJECTS = (
    "tether",
    "tether-nocgroups",
    "supervisord-default",
    "supervisord-group",
    "s6",
    "pm2-delete",
    "pm2-kill",
)


def service_argv(variant, children):
    last = "exec sleep 100000" if variant == "keeps" else "exec sleep 1"
    return ["sh", "-c", f"for i in $(seq {children}); do setsid sleep 100000 & done; {last}"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per subject and variant (default: %(default)s)")
    p.add_argument("--children", type=int, default=CHILDREN, help="setsid'd children (default: %(default)s)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="keeps,exits (default: %(default)s)")
    p.add_argument("--subjects", default=",".join(SUBJECTS), help="(default: %(default)s)")
    p.add_argument(
        "--leftover-wait",
        type=float,
        default=2.0,
        help="seconds after the stop command returned before what runs counts as left (default: %(default)s)",
    )
    p.add_argument("--check-goals", action="store_true", help="exit 3 when a goal is missed")
    u.add_tool_args(p, TOOLS)
    args = p.parse_args()
    if not 1 <= args.runs <= 20:
        p.error("--runs must be between 1 and 20")
    if not 1 <= args.children <= 500:
        p.error("--children must be between 1 and 500")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}")
    for s in subjects:
        if s not in SUBJECTS:
            p.error(f"unknown subject {s!r}")

    tools, missing = u.selected_tools(args, TOOLS)
    subjects = [s for s in subjects if s.split("-")[0] in tools]
    tcp_at_start = b.tcp_sockets()
    if not b.become_subreaper():
        print("warning: could not become a child subreaper", file=sys.stderr)
    versions = u.versions(args, tools)
    runs = {(s, v): [] for v in variants for s in subjects}
    for i in range(args.runs):
        for v in variants:
            for s in subjects:
                print(f"run {i + 1}/{args.runs}: {s}, main process {v}...", file=sys.stderr)
                runs[(s, v)].append(one_run(args, s, v))

    m = b.machine()
    m["tcp_sockets_at_start"] = tcp_at_start
    goals_ok = report(args, subjects, variants, runs, missing, m, versions)
    clean = u.final_check()
    b.write_json(
        args.json,
        {
            "args": vars(args),
            "versions": versions,
            "machine": m,
            "runs": [{"subject": s, "variant": v, "runs": rs} for (s, v), rs in runs.items()],
        },
    )
    failed = any(r["failures"] for rs in runs.values() for r in rs)
    failed |= any(r.get("left", 0) for (s, _), rs in runs.items() if s.startswith("tether") for r in rs)
    if missing:
        return b.EXIT_TOOL_MISSING
    if failed or not clean:
        return b.EXIT_RUN_FAILED
    if args.check_goals and not goals_ok:
        return b.EXIT_GOAL_MISSED
    return b.EXIT_OK


# --- The stacks ---------------------------------------------------------------------


class Stack:
    """One stack of one subject: start(), stop_argv(), supervisor_pids(),
    cleanup()."""

    def __init__(self, args, subject, variant):
        self.args = args
        self.subject = subject
        self.variant = variant
        self.tmp = tempfile.mkdtemp(prefix=f"up-setsid-{subject}-")
        self.mark = u.new_mark()
        self.argv = service_argv(variant, args.children)
        self.proc = None
        self.config = None
        tool = subject.split("-")[0]
        if tool == u.TETHER:
            self.xdg = os.path.join(self.tmp, "run")
            os.mkdir(self.xdg)
            self.file = os.path.join(self.tmp, "tether.toml")
            with open(self.file, "w") as f:
                f.write(
                    'name = "setsid"\n\n[services.forker]\n'
                    f"command = {u.toml_argv(self.argv)}\n"
                    f'stop_grace = "{GRACE_S:g}s"\n' + ('restart = "no"\n' if variant == "exits" else "")
                )
            self.config = open(self.file).read()
            self.ctl_env = u.clean_env()
            self.ctl_env["XDG_RUNTIME_DIR"] = self.xdg
        elif tool == u.SUPERVISORD:
            keys = {"stopwaitsecs": f"{GRACE_S:g}"}
            if subject.endswith("group"):
                keys.update({"stopasgroup": "true", "killasgroup": "true"})
            if variant == "exits":
                keys.update({"autorestart": "false", "startsecs": "0"})
            self.file = u.supervisord_conf(self.tmp, [("forker", self.argv, keys)])
            self.config = open(self.file).read()
        elif tool == u.S6:
            files = {"timeout-kill": f"{int(GRACE_S * 1000)}\n"}
            if variant == "exits":
                files["finish"] = "#!/bin/sh\nexit 125\n"
            self.s6 = u.S6Stack(args, self.tmp, [("forker", self.argv, files)], self.mark)
            if variant == "exits":
                os.chmod(os.path.join(self.s6.dir("forker"), "finish"), 0o755)
            self.config = self.s6.config()
        else:
            app = {
                "name": "forker",
                "script": self.argv[0],
                "args": self.argv[1:],
                "interpreter": "none",
                "exec_mode": "fork",
                "autorestart": variant == "keeps",
                "kill_timeout": int(GRACE_S * 1000),
            }
            self.pm2 = u.Pm2Stack(args, self.tmp, [app], self.mark)
            self.config = self.pm2.config()

    @property
    def tool(self):
        return self.subject.split("-")[0]

    def start(self):
        """Starts the stack; returns an error text or None."""
        if self.tool == u.TETHER:
            env = u.tether_env(self.xdg, self.mark)
            if self.subject == "tether-nocgroups":
                env["TETHER_CGROUPS"] = "off"
            self.proc = u.Proc(
                [self.args.tether, "up", "-f", self.file, "--no-status", "--json"],
                env,
                stdout=os.path.join(self.tmp, "stdout"),
                stderr=os.path.join(self.tmp, "stderr"),
            )
        elif self.tool == u.SUPERVISORD:
            env = dict(os.environ)
            env[u.MARK_VAR] = self.mark
            self.proc = u.Proc(
                [self.args.supervisord, "-n", "-c", self.file],
                env,
                stdout=os.path.join(self.tmp, "stdout"),
                stderr=os.path.join(self.tmp, "stderr"),
            )
        elif self.tool == u.S6:
            self.proc = self.s6.start()
        else:
            _, _, code = self.pm2.start()
            if code != 0:
                return f"pm2 start: exit {code}"
        return None

    def stop_argv(self):
        if self.tool == u.TETHER:
            return [self.args.tether, "down", "-f", self.file], self.ctl_env
        if self.tool == u.SUPERVISORD:
            return [self.args.supervisorctl, "-c", self.file, "shutdown"], u.clean_env()
        if self.tool == u.S6:
            return [u.s6_tool(self.args, "s6-svscanctl"), "-t", self.s6.scandir], u.clean_env()
        words = ["delete", "all"] if self.subject == "pm2-delete" else ["kill"]
        return [self.args.pm2, *words], self.pm2.cli_env()

    def command_label(self):
        argv, _ = self.stop_argv()
        words = {u.TETHER: "tether down", u.SUPERVISORD: "supervisorctl shutdown", u.S6: "s6-svscanctl -t"}
        return words.get(self.tool) or "pm2 " + " ".join(argv[1:])

    def supervisor_pids(self):
        if self.tool == u.S6:
            return self.s6.supervisor_pids()
        if self.tool == u.PM2:
            return self.pm2.supervisor_pids()
        return {self.proc.pid} if self.proc else set()

    def cleanup(self, run):
        """Brings down whatever is still up, bounded; the harness kills the
        rest by marker."""
        if self.tool == u.TETHER:
            if self.proc.running():
                u.bounded([self.args.tether, "down", "-f", self.file], self.ctl_env, 30)
            if not self.proc.wait(15):
                run["failures"].append("tether up did not exit within 15 s of tether down")
        elif self.tool == u.SUPERVISORD:
            if self.proc.running():
                u.supervisorctl(self.args, self.file, "shutdown")
            if not self.proc.wait(20):
                run["failures"].append("supervisord did not exit within 20 s of supervisorctl shutdown")
        elif self.tool == u.S6:
            if not self.s6.stop():
                run["failures"].append("s6-svscan did not exit within 20 s of s6-svscanctl -t")
        else:
            self.pm2.stop()
        u.kill_marked(self.mark)


# --- One run ----------------------------------------------------------------------


def parent(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def find_processes(stack, timeout_s=30):
    """Waits until the main process runs `sleep` (after its exec) with the
    children as its own children; returns ({pid: pidfd} of all of them,
    the main's pid), or (None, None)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs = u.marked(stack.mark, exclude=stack.supervisor_pids())
        sleeps = [pid for pid, (_, comm) in procs.items() if comm == "sleep"]
        by_parent = {}
        for pid in sleeps:
            by_parent.setdefault(parent(pid), []).append(pid)
        for main in sleeps:
            children = by_parent.get(main, [])
            if len(children) >= stack.args.children:
                fds = {}
                for pid in children + [main]:
                    try:
                        fds[pid] = os.pidfd_open(pid)
                    except OSError:
                        pass
                return fds, main
        time.sleep(0.01)
    return None, None


def alive(fds):
    """The pids whose pidfd is not readable yet (still running)."""
    poller = select.poll()
    for fd in fds.values():
        poller.register(fd, select.POLLIN)
    done = {fd for fd, _ in poller.poll(0)}
    return [pid for pid, fd in fds.items() if fd not in done]


def watch(fds, stack, until_ns):
    """Polls the pidfds until all are readable and a marker scan finds no
    other process of the stack (besides its supervisor), or the deadline.
    Returns the time all were gone, or None."""
    while True:
        now = time.monotonic_ns()
        if not alive(fds):
            others = u.marked(stack.mark, exclude=stack.supervisor_pids() | set(fds))
            if not others:
                return time.monotonic_ns()
            for pid in others:
                try:
                    fds[pid] = os.pidfd_open(pid)
                except OSError:
                    pass
        if now >= until_ns:
            return None
        poller = select.poll()
        for fd in fds.values():
            poller.register(fd, select.POLLIN)
        # Wake on any exit, or every 5 ms (new processes, the deadline).
        poller.poll(5)


def count_left(stack):
    left = u.marked(stack.mark, exclude=stack.supervisor_pids())
    return len(left), u.describe(left)


def one_run(args, subject, variant):
    stack = Stack(args, subject, variant)
    run = {"config": stack.config, "command": stack.command_label(), "failures": []}
    fds = {}
    try:
        err = stack.start()
        if err:
            run["failures"].append(err)
            return run
        fds, main = find_processes(stack)
        if fds is None:
            run["failures"].append(f"the main process and its {args.children} children were not all seen within 30 s")
            return run
        run["watched"] = len(fds)
        if variant == "keeps":
            time.sleep(0.5)
        else:
            main_fd = fds[main]
            if not select.select([main_fd], [], [], 10)[0]:
                run["failures"].append("the main process did not exit within 10 s")
                return run
            t_exit = time.monotonic_ns()
            bound = t_exit + int((GRACE_S + 2) * 1e9)
            t_gone = watch(fds, stack, bound)
            run["exit_to_gone_ms"] = (t_gone - t_exit) / 1e6 if t_gone else None
            run["left_after_exit"], run["left_after_exit_kinds"] = count_left(stack)
        argv, env = stack.stop_argv()
        t0 = time.monotonic_ns()
        cmd = u.Proc(argv, env)
        cmd_poll = select.poll()
        cmd_poll.register(cmd.pidfd, select.POLLIN)
        # Until every watched process is gone, or the command is over and
        # --leftover-wait more has passed.
        t_cmd = None
        t_gone = None
        hard = t0 + int(60e9)
        while True:
            if t_cmd is None and cmd_poll.poll(0):
                t_cmd = time.monotonic_ns()
            until = min(hard, (t_cmd or time.monotonic_ns()) + int(args.leftover_wait * 1e9))
            if t_cmd is None:
                until = min(until, time.monotonic_ns() + int(0.05e9))
            t_gone = watch(fds, stack, until)
            if t_gone is not None:
                break
            if t_cmd is not None and time.monotonic_ns() >= t_cmd + int(args.leftover_wait * 1e9):
                break
            if time.monotonic_ns() >= hard:
                run["failures"].append("the stop did not end within 60 s")
                break
        if t_cmd is None:
            cmd.wait(30)
            t_cmd = cmd.t_exit
        else:
            cmd.wait(5)
        run["command_exit"] = cmd.status
        if cmd.status != 0:
            run["failures"].append(f"{stack.command_label()}: exit {cmd.status}")
        run["command_returned_ms"] = (t_cmd - t0) / 1e6
        run["gone_ms"] = (t_gone - t0) / 1e6 if t_gone else None
        if t_gone is None:
            wait_until = t_cmd + int(args.leftover_wait * 1e9)
            delay = (wait_until - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            run["left"], run["left_kinds"] = count_left(stack)
        else:
            run["left"], run["left_kinds"] = 0, ""
    finally:
        for fd in fds.values():
            os.close(fd)
        stack.cleanup(run)
        late = u.kill_marked(stack.mark)
        if late:
            run["failures"].append(f"still running after the cleanup: {u.describe(late)}")
    return run


# --- Reporting ------------------------------------------------------------------


LABELS = {
    "tether": "tether (cgroups)",
    "tether-nocgroups": "tether, TETHER_CGROUPS=off (process tree)",
    "supervisord-default": "supervisord, its defaults",
    "supervisord-group": "supervisord, stopasgroup/killasgroup=true",
    "s6": "s6 (s6-svscan, timeout-kill 1000)",
    "pm2-delete": "pm2 (treekill, kill_timeout 1000)",
    "pm2-kill": "pm2 (treekill, kill_timeout 1000)",
}


def report(args, subjects, variants, runs, missing, m, versions):
    u.print_header(
        f"`down` of a service that left {args.children} setsid'd children: stop grace 1 s, {args.runs} runs each",
        m,
        [f"Versions: {', '.join(versions.values()) or '-'}."],
    )
    goals_ok = True
    bound = GRACE_S * 1000 + GOAL_SLACK_MS
    for v in variants:
        argv = service_argv(v, args.children)
        if v == "keeps":
            print(f"### The main process keeps running: `{argv[0]} {argv[1]} \"{argv[2]}\"`\n")
        else:
            print(
                f"\n### The main process exits 1 s after forking: `{argv[0]} {argv[1]} \"{argv[2]}\"`\n\n"
                f"\"After the exit\": from the main process's exit, without any command, for {GRACE_S + 2:g} s; "
                "then the stop command.\n"
            )
        header = ["subject", "stop command", "runs", "failed"]
        if v == "exits":
            header += ["after the exit: all gone, ms", "left after the exit"]
        header += [
            "command returned, ms",
            "every process gone, ms: median (min–max)",
            f"left {args.leftover_wait:g} s after",
            "goal",
        ]
        rows = []
        for s in subjects:
            rs = runs[(s, v)]
            failed = sum(1 for r in rs if r["failures"])
            gone = [r["gone_ms"] for r in rs if r.get("gone_ms") is not None]
            ret = [r["command_returned_ms"] for r in rs if r.get("command_returned_ms") is not None]
            left = [r["left"] for r in rs if "left" in r]
            kinds = sorted({r.get("left_kinds") for r in rs if r.get("left_kinds")})
            row = [LABELS[s], f"`{Stack.command_label_of(s)}`", len(rs), failed]
            if v == "exits":
                eg = [r["exit_to_gone_ms"] for r in rs if r.get("exit_to_gone_ms") is not None]
                la = [r["left_after_exit"] for r in rs if "left_after_exit" in r]
                row += [med_range(eg) if eg else "never", f"{statistics.median(la):g}" if la else "-"]
            verdict = "-"
            if s.startswith("tether"):
                if v == "keeps":
                    ok = bool(gone) and len(gone) == len(rs) and max(gone) <= bound and not any(left) and not failed
                else:
                    # Already gone before the command: the goal is on the
                    # exit (grace + 100 ms from the main's exit), and 0 left.
                    eg = [r.get("exit_to_gone_ms") for r in rs]
                    ok = all(x is not None and x <= bound for x in eg) and not any(left) and not failed
                goals_ok &= ok
                verdict = "met" if ok else "MISSED"
            row += [
                med_range(ret),
                med_range(gone) if gone else "never",
                (f"{statistics.median(left):g}" if left else "-") + (f" ({'; '.join(kinds)})" if kinds else ""),
                verdict,
            ]
            rows.append(row)
        for tool, msg in missing.items():
            rows.append([tool, "-", "-", "-"] + ["-"] * (len(header) - 5) + ["not measured: " + msg.split(":")[0]])
        print(b.table(header, rows))
    print(
        f"\nTimes from starting the stop command. Every process's exit is seen through a pidfd; \"gone\" also "
        f"needs a scan for the stack's marker to find nothing but the supervisor's own processes. Left: what still "
        f"ran {args.leftover_wait:g} s after the stop command returned, then killed by the harness. Goal for tether: "
        f"every process gone within the grace + {GOAL_SLACK_MS:g} ms ({bound:g} ms), 0 left."
    )
    for (s, v), rs in runs.items():
        for i, r in enumerate(rs):
            for f in r["failures"]:
                print(f"\nFAILED ({s}, {v}, run {i + 1}): {f}")
    return goals_ok


def _command_label_of(subject):
    return {
        "tether": "tether down",
        "tether-nocgroups": "tether down",
        "supervisord-default": "supervisorctl shutdown",
        "supervisord-group": "supervisorctl shutdown",
        "s6": "s6-svscanctl -t",
        "pm2-delete": "pm2 delete all",
        "pm2-kill": "pm2 kill",
    }[subject]


Stack.command_label_of = staticmethod(_command_label_of)


def med_range(xs):
    if not xs:
        return "-"
    return f"{statistics.median(xs):.0f} ({min(xs):.0f}–{max(xs):.0f})"


if __name__ == "__main__":
    sys.exit(main())
