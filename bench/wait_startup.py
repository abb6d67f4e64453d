#!/usr/bin/env python3
"""Start-up time of `tether wait` and wait-for-it against a loopback port that
is already accepting: the wall time of the whole process, from just before
the spawn to its exit being seen. /bin/true, run the same way, gives the
machine's process-spawn floor (and the harness's own overhead).

Python 3 standard library only. Exit 0 when every run succeeded, 1 when one
failed (non-zero exit, or no exit within 5 s), 2 when a tool is missing, 3
with --check-goals when tether's median is over the goal.
"""

import argparse
import sys

import benchlib as b

KILL_AFTER_S = 5
GOAL_MEDIAN_MS = 3.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200, help="runs of tether and /bin/true (default: %(default)s)")
    p.add_argument("--peer-runs", type=int, default=50, help="runs of wait-for-it (default: %(default)s)")
    p.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="unmeasured runs per tool first, so every tool starts with a warm page cache (default: %(default)s)",
    )
    p.add_argument("--check-goals", action="store_true", help="exit 3 when a goal is missed")
    p.add_argument("--json", metavar="FILE", help="write the raw numbers to FILE")
    b.add_tool_args(p, (b.TETHER, b.WAIT_FOR_IT, b.TRUE))
    args = p.parse_args()
    for name in ("runs", "peer_runs"):
        if not 1 <= getattr(args, name) <= 10000:
            p.error(f"--{name.replace('_', '-')} must be between 1 and 10000")
    if not 0 <= args.warmup <= 100:
        p.error("--warmup must be between 0 and 100")

    tools, missing = b.selected_tools(args, (b.TETHER, b.WAIT_FOR_IT, b.TRUE))
    tcp_at_start = b.tcp_sockets()
    b.become_subreaper()
    results = {}
    with b.Server() as server:
        server.open()

        def command(tool):
            if tool == b.TETHER:
                return b.tether_wait(args.tether, server.port, 5)
            if tool == b.WAIT_FOR_IT:
                # `-t 1` as in everyday use: with a timeout, wait-for-it
                # re-executes itself under coreutils `timeout`.
                return b.wait_for_it(args.wait_for_it, server.port, 1)
            return [b.TRUE]

        runs = {t: args.peer_runs if t == b.WAIT_FOR_IT else args.runs for t in tools}
        for tool in tools:
            for _ in range(args.warmup):
                run_once(command(tool))
        # Round-robin, so a burst of load touches every tool alike.
        results = {t: [] for t in tools}
        for i in range(max(runs.values(), default=0)):
            for tool in tools:
                if i < runs[tool]:
                    results[tool].append(run_once(command(tool)))
    accepted = server.count()

    failed = 0
    rows = []
    for tool in tools:
        rs = results[tool]
        bad = [r for r in rs if not r["ok"]]
        failed += len(bad)
        if bad:
            print(f"{tool}: {len(bad)} failed run(s), first: {bad[0]['outcome']}", file=sys.stderr)
        s = b.summary_ms([r["wall_ns"] for r in rs if r["ok"]]) or {}
        rows.append([tool, len(rs), len(bad), s.get("median"), s.get("p95"), s.get("mean"), s.get("min"), s.get("max")])
    for tool, msg in missing.items():
        rows.append([tool, 0, "-", "-", "-", "-", "-", "not measured: " + msg.split(":")[0]])

    m = b.machine()
    m["tcp_sockets_at_start"] = tcp_at_start
    print(f"## Start-up against an open port (warm-up {args.warmup} per tool)\n")
    print(b.context_line(m) + "\n")
    print(b.table(["tool", "runs", "failed", "median ms", "p95 ms", "mean ms", "min ms", "max ms"], rows))
    print(f"\n{accepted} connections accepted in all (warm-up included)")

    goal_ok = True
    if b.TETHER in tools:
        s = b.summary_ms([r["wall_ns"] for r in results[b.TETHER] if r["ok"]])
        goal_ok = s is not None and s["median"] < GOAL_MEDIAN_MS
        shown = f"{s['median']:.2f} ms" if s else "no successful run"
        print(f"\nGoal for tether:\n\n- {'met' if goal_ok else 'MISSED'}: median start-up {shown} < {GOAL_MEDIAN_MS:g} ms")

    b.write_json(
        args.json,
        {
            "benchmark": "wait_startup",
            "machine": m,
            "settings": {"runs": runs, "warmup": args.warmup, "kill_after_s": KILL_AFTER_S},
            "missing": missing,
            "runs": results,
            "summary": {t: b.summary_ms([r["wall_ns"] for r in rs if r["ok"]]) for t, rs in results.items()},
        },
    )
    if failed:
        return b.EXIT_RUN_FAILED
    if missing:
        return b.EXIT_TOOL_MISSING
    if args.check_goals and not goal_ok:
        return b.EXIT_GOAL_MISSED
    return b.EXIT_OK


def run_once(argv):
    child = b.Child(argv)
    out = child.wait(child.t_start + KILL_AFTER_S * 10**9)
    b.reap_orphans(child.pid)
    return {
        "ok": out.code == 0,
        "wall_ns": out.t_exit - child.t_start,
        "exit": out.code,
        "outcome": out.describe(),
    }


if __name__ == "__main__":
    sys.exit(main())
