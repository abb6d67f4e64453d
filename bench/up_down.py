#!/usr/bin/env python3
"""Bringing a stack down: the time from the stop command to every process of
the stack being gone, under `tether up` and under supervisord, with 20
services of three kinds:

- 10 plain: `sleep 100000`;
- 5 with grandchildren: `sh -c "sleep 100000 & sleep 100000 & wait"`;
- 5 that ignore SIGTERM: `sh -c "trap '' TERM; while :; do sleep 0.1; done"`;

and a stop grace of 1 s (tether `stop_grace = "1s"`, supervisord
`stopwaitsecs=1`), so the TERM-ignoring ones are killed after 1 s.

Subjects (--runs each, interleaved run by run):
- tether: `tether down -f FILE` (it returns once the stack is down, and
  `tether up` exits);
- supervisord with stopasgroup=true, killasgroup=true, stopped with
  `supervisorctl shutdown` (supervisord stops everything and exits; the
  command returns at once) and, separately, `supervisorctl stop all` (returns
  once every program is stopped; supervisord keeps running);
- supervisord with its defaults (stopasgroup=false, killasgroup=false: the
  signals go to the program's own pid only), both commands.

Every process a run starts carries a marker in its environment; the stack
is "gone" at the first /proc scan that finds no marked process besides the
supervisor itself (zombies do not count). Each run: start the stack, wait
until all 30 long-lived processes run (supervisord: and all 20 programs are
RUNNING, after its startsecs of 1 s), wait --settle s, take t0, start the
stop command, then scan /proc without pause, noting when the command
returned, when the supervisor exited (tether up; supervisord after
`shutdown`) and when the stack was gone. A stack not gone --leftover-wait s
after the command returned and the supervisor (if it was to) exited has
left processes behind: they are counted by name, then killed.

Python 3 standard library only. Exit 0 when every run succeeded and tether
left nothing behind, 1 otherwise (processes supervisord leaves behind with
its defaults are reported, not a failure), 2 when a tool is missing.
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

PLAIN = ["sleep", "100000"]
GRANDCHILDREN = ["sh", "-c", "sleep 100000 & sleep 100000 & wait"]
IGNORES_TERM = ["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]


def services(plain, grand, ignoring):
    out = []
    out += [(f"plain{i:02d}", PLAIN) for i in range(plain)]
    out += [(f"grand{i:02d}", GRANDCHILDREN) for i in range(grand)]
    out += [(f"noterm{i:02d}", IGNORES_TERM) for i in range(ignoring)]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs per subject (default: %(default)s)")
    p.add_argument("--plain", type=int, default=10, help="plain services (default: %(default)s)")
    p.add_argument("--grand", type=int, default=5, help="services with grandchildren (default: %(default)s)")
    p.add_argument("--noterm", type=int, default=5, help="services that ignore SIGTERM (default: %(default)s)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds after all are up (default: %(default)s)")
    p.add_argument(
        "--leftover-wait",
        type=float,
        default=3.0,
        help="seconds after the stop is over before what remains counts as left behind (default: %(default)s)",
    )
    p.add_argument(
        "--supervisord-modes",
        default="group-shutdown,group-stopall,default-shutdown,default-stopall",
        help="supervisord subjects: {group,default}-{shutdown,stopall} (default: %(default)s)",
    )
    u.add_tool_args(p, (u.TETHER, u.SUPERVISORD))
    args = p.parse_args()
    if not 1 <= args.runs <= 100:
        p.error("--runs must be between 1 and 100")
    if args.plain + args.grand + args.noterm < 1:
        p.error("no services")
    modes = [m.strip() for m in args.supervisord_modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("group-shutdown", "group-stopall", "default-shutdown", "default-stopall"):
            p.error(f"unknown supervisord mode {m!r}")

    tools, missing = u.selected_tools(args, (u.TETHER, u.SUPERVISORD))
    tcp_at_start = b.tcp_sockets()
    if not b.become_subreaper():
        print("warning: could not become a child subreaper", file=sys.stderr)
    versions = u.versions(args, tools)
    svcs = services(args.plain, args.grand, args.noterm)
    # Long-lived processes of a running stack: every service's own process,
    # and two sleeps per service with grandchildren.
    expected = len(svcs) + 2 * args.grand

    subjects = []
    if u.TETHER in tools:
        subjects.append(("tether", "tether down"))
    if u.SUPERVISORD in tools:
        for m in modes:
            group, cmd = m.split("-")
            subjects.append((f"supervisord-{group}", "shutdown" if cmd == "shutdown" else "stop all"))
    runs = {s: [] for s in subjects}
    for i in range(args.runs):
        for s in subjects:
            print(f"run {i + 1}/{args.runs}: {s[0]}, {s[1]}...", file=sys.stderr)
            if s[0] == "tether":
                runs[s].append(run_tether(args, svcs, expected))
            else:
                runs[s].append(run_supervisord(args, svcs, expected, s[0].endswith("group"), s[1]))

    m = b.machine()
    m["tcp_sockets_at_start"] = tcp_at_start
    report(args, svcs, subjects, runs, missing, m, versions)
    clean = u.final_check()
    b.write_json(
        args.json,
        {
            "args": vars(args),
            "versions": versions,
            "machine": m,
            "subjects": [{"supervisor": s[0], "command": s[1], "runs": runs[s]} for s in subjects],
        },
    )
    failed = any(r["failures"] for rs in runs.values() for r in rs)
    failed |= any(r["leftover_count"] for s, rs in runs.items() if s[0] == "tether" for r in rs)
    if missing:
        return b.EXIT_TOOL_MISSING
    return b.EXIT_RUN_FAILED if failed or not clean else b.EXIT_OK


# --- One run ------------------------------------------------------------------


def new_run():
    return {"failures": [], "leftovers": {}, "leftover_count": 0}


def wait_up(run, mark, sup_pid, expected, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs = u.marked(mark, exclude=(sup_pid,))
        # The `sleep 0.1` of the TERM-ignoring loops come and go: count the
        # long-lived ones only.
        if long_lived(procs) >= expected:
            return True
        time.sleep(0.05)
    run["failures"].append(f"the stack never had its {expected} long-lived processes: {u.describe(procs)}")
    return False


def long_lived(procs):
    return sum(1 for _, comm in procs.values() if comm in ("sleep", "sh")) - count_short_sleeps(procs)


def count_short_sleeps(procs):
    short = 0
    for pid, (_, comm) in procs.items():
        if comm != "sleep":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[1:2] == [b"0.1"]:
                    short += 1
        except OSError:
            pass
    return short


def timed_stop(args, run, mark, sup, stop_argv, stop_env, sup_exits):
    """Starts the stop command at t0 and scans /proc until the stack is gone
    (or the leftover bound). Fills run with times in ms from t0."""
    scans = []
    t0 = time.monotonic_ns()
    cmd = u.Proc(stop_argv, stop_env, stderr=os.devnull)
    t_cmd = t_sup = t_gone = None
    poller = select.poll()
    poller.register(cmd.pidfd, select.POLLIN)
    sup_poller = select.poll()
    sup_poller.register(sup.pidfd, select.POLLIN)
    hard_bound = t0 + int(60e9)
    remaining = {}
    while True:
        now = time.monotonic_ns()
        if t_cmd is None and poller.poll(0):
            t_cmd = now
        if t_sup is None and sup_poller.poll(0):
            t_sup = now
        s0 = time.monotonic_ns()
        remaining = u.marked(mark, exclude=(sup.pid,))
        s1 = time.monotonic_ns()
        scans.append(s1 - s0)
        if not remaining and t_gone is None:
            t_gone = s1
        over = t_cmd is not None and (t_sup is not None or not sup_exits)
        if over and t_gone is not None:
            break
        if over and s1 > max(t_cmd, t_sup or 0) + int(args.leftover_wait * 1e9):
            break
        if s1 > hard_bound:
            run["failures"].append("the stop did not end within 60 s")
            break
    cmd.wait(5)
    run["command_exit"] = cmd.status
    if cmd.status != 0:
        run["failures"].append(f"{' '.join(stop_argv[-2:])}: exit {cmd.status}")
    run["command_returned_ms"] = (t_cmd - t0) / 1e6 if t_cmd else None
    run["supervisor_exited_ms"] = (t_sup - t0) / 1e6 if t_sup else None
    run["stack_gone_ms"] = (t_gone - t0) / 1e6 if t_gone else None
    run["scan_ms_median"] = statistics.median(scans) / 1e6
    if t_gone is None:
        counts = {}
        for _, comm in remaining.values():
            counts[comm] = counts.get(comm, 0) + 1
        run["leftovers"] = counts
        run["leftover_count"] = len(remaining)


def run_tether(args, svcs, expected):
    run = new_run()
    tmp = tempfile.mkdtemp(prefix="up-down-")
    xdg = os.path.join(tmp, "run")
    os.mkdir(xdg)
    mark = u.new_mark()
    config = os.path.join(tmp, "tether.toml")
    with open(config, "w") as f:
        f.write('name = "down"\n\n[defaults]\nstop_grace = "1s"\n')
        for name, argv in svcs:
            f.write(f"\n[services.{name}]\ncommand = {u.toml_argv(argv)}\n")
    run["config"] = open(config).read()
    sup = u.Proc(
        [args.tether, "up", "-f", config, "--no-status", "--json"],
        u.tether_env(xdg, mark),
        stdout=os.path.join(tmp, "stdout"),
        stderr=os.path.join(tmp, "stderr"),
    )
    env = u.clean_env()
    env["XDG_RUNTIME_DIR"] = xdg
    try:
        if wait_up(run, mark, sup.pid, expected):
            time.sleep(args.settle)
            if not sup.running():
                run["failures"].append("tether up exited before the stop")
            else:
                timed_stop(args, run, mark, sup, [args.tether, "down", "-f", config], env, sup_exits=True)
    finally:
        if sup.running():
            u.bounded([args.tether, "down", "-f", config], env, 30)
        if not sup.wait(15):
            run["failures"].append("tether up did not exit within 15 s of tether down")
        # What timed_stop did not already count as left behind.
        late = u.kill_marked(mark)
        if late and not run["leftover_count"]:
            run["failures"].append(f"processes still running at cleanup: {u.describe(late)}")
    return run


def run_supervisord(args, svcs, expected, group, command):
    run = new_run()
    tmp = tempfile.mkdtemp(prefix="up-down-sd-")
    mark = u.new_mark()
    keys = {"stopwaitsecs": "1"}
    if group:
        keys.update({"stopasgroup": "true", "killasgroup": "true"})
    conf = u.supervisord_conf(tmp, [(name, argv, keys) for name, argv in svcs])
    run["config"] = open(conf).read()
    env = dict(os.environ)
    env[u.MARK_VAR] = mark
    sup = u.Proc(
        [args.supervisord, "-n", "-c", conf],
        env,
        stdout=os.path.join(tmp, "stdout"),
        stderr=os.path.join(tmp, "stderr"),
    )
    try:
        if wait_up(run, mark, sup.pid, expected) and u.wait_supervisord_running(args, conf, len(svcs)):
            time.sleep(args.settle)
            if not sup.running():
                run["failures"].append("supervisord exited before the stop")
            else:
                words = command.split()
                timed_stop(
                    args,
                    run,
                    mark,
                    sup,
                    [args.supervisorctl, "-c", conf, *words],
                    u.clean_env(),
                    sup_exits=command == "shutdown",
                )
        elif not run["failures"]:
            run["failures"].append("supervisorctl never showed every program RUNNING")
    finally:
        if sup.running():
            u.supervisorctl(args, conf, "shutdown")
        if not sup.wait(20):
            run["failures"].append("supervisord did not exit within 20 s of supervisorctl shutdown")
        late = u.kill_marked(mark)
        if late and not run["leftover_count"]:
            run["failures"].append(f"processes still running at cleanup: {u.describe(late)}")
    return run


# --- Reporting ------------------------------------------------------------------


def report(args, svcs, subjects, runs, missing, m, versions):
    u.print_header(
        f"Down: {len(svcs)} services, stop grace 1 s, {args.runs} runs each",
        m,
        [
            f"Versions: {', '.join(versions.values()) or '-'}.",
            f"Services: {args.plain} × `sleep 100000`, {args.grand} × `{' '.join(GRANDCHILDREN[:2])} "
            f"\"{GRANDCHILDREN[2]}\"`, {args.noterm} × `{' '.join(IGNORES_TERM[:2])} \"{IGNORES_TERM[2]}\"`.",
        ],
    )
    rows = []
    for s in subjects:
        rs = runs[s]
        supervisor, command = s
        label = {
            "tether": 'tether (stop_grace = "1s")',
            "supervisord-group": "supervisord, stopasgroup/killasgroup=true, stopwaitsecs=1",
            "supervisord-default": "supervisord, defaults (stopasgroup/killasgroup=false), stopwaitsecs=1",
        }[supervisor]
        ret = [r["command_returned_ms"] for r in rs if r.get("command_returned_ms") is not None]
        sup = [r["supervisor_exited_ms"] for r in rs if r.get("supervisor_exited_ms") is not None]
        gone = [r["stack_gone_ms"] for r in rs if r.get("stack_gone_ms") is not None]
        left = [r["leftover_count"] for r in rs]
        kinds = {}
        for r in rs:
            for comm, n in r["leftovers"].items():
                kinds[comm] = kinds.get(comm, 0) + n
        failed = sum(1 for r in rs if r["failures"])
        rows.append(
            [
                label,
                f"`{'tether down' if supervisor == 'tether' else 'supervisorctl ' + command}`",
                len(rs),
                failed,
                med_range(ret),
                med_range(sup) if (supervisor == "tether" or command == "shutdown") else "(keeps running)",
                med_range(gone) if gone else "never",
                f"{len(gone)}/{len(rs)}",
                f"{statistics.median(left):g}" + (f" ({', '.join(f'{n // len(rs)} {c}' for c, n in sorted(kinds.items()))} per run)" if kinds else ""),
            ]
        )
    for tool, msg in missing.items():
        rows.append([tool, "-", "-", "-", "-", "-", "-", "-", "not measured: " + msg.split(":")[0]])
    print(
        b.table(
            [
                "supervisor",
                "stop command",
                "runs",
                "failed",
                "command returned, ms: median (min–max)",
                "supervisor exited, ms",
                "every process gone, ms",
                "runs with all gone",
                "left running (median per run)",
            ],
            rows,
        )
    )
    scan = [r["scan_ms_median"] for rs in runs.values() for r in rs if "scan_ms_median" in r]
    print(
        f"\nTimes from starting the stop command. \"Every process gone\": the first /proc scan that found no "
        f"process of the stack but the supervisor (one scan takes {statistics.median(scan) if scan else 0:.1f} ms "
        f"here, the precision of these times). Left running: what was still there {args.leftover_wait:g} s after "
        f"the command returned and the supervisor exited; those were then killed by the harness."
    )
    for s in subjects:
        for i, r in enumerate(runs[s]):
            for f in r["failures"]:
                print(f"\nFAILED ({s[0]}, {s[1]}, run {i + 1}): {f}")
            if s[0] == "tether" and r["leftover_count"]:
                print(f"\nFAILED (tether, run {i + 1}): left running: {r['leftovers']}")


def med_range(xs):
    if not xs:
        return "-"
    return f"{statistics.median(xs):.0f} ({min(xs):.0f}–{max(xs):.0f})"


if __name__ == "__main__":
    sys.exit(main())
