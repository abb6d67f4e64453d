#!/usr/bin/env python3
"""CPU time that `tether wait` and wait-for-it use while waiting 10 s for a
loopback port that refuses every connection, until their own deadline.

What is counted: the delta of getrusage(RUSAGE_CHILDREN) around each run,
user + system. That covers the child and every descendant that was reaped,
by its parent or by us: this process makes itself a child subreaper, so
orphans (the `sleep 1` left running when `timeout` kills wait-for-it's inner
bash) are adopted and reaped here before the delta is taken. The wait4()
rusage of the direct child is reported beside it; it misses descendants
that were never reaped by the child itself.

Python 3 standard library only. Exit 0 when every run ended by the tool's own
deadline (any exit code, none expected to be 0) within the bound, 1 otherwise,
2 when a tool is missing.
"""

import argparse
import resource
import sys

import benchlib as b

# Beyond the tools' own deadline, the time we give them to exit before we
# kill them.
GRACE_S = 5


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=10, help="the tools' deadline (default: %(default)s)")
    p.add_argument("--runs", type=int, default=1, help="runs per tool (default: %(default)s)")
    p.add_argument("--json", metavar="FILE", help="write the raw numbers to FILE")
    b.add_tool_args(p)
    args = p.parse_args()
    if not 1 <= args.seconds <= 120:
        p.error("--seconds must be between 1 and 120")
    if not 1 <= args.runs <= 20:
        p.error("--runs must be between 1 and 20")

    tools, missing = b.selected_tools(args, (b.TETHER, b.WAIT_FOR_IT))
    tcp_at_start = b.tcp_sockets()
    subreaper = b.become_subreaper()
    if not subreaper:
        print("warning: could not become a child subreaper; orphans' CPU is not counted", file=sys.stderr)

    results = {t: [] for t in tools}
    for _ in range(args.runs):
        for tool in tools:
            results[tool].append(run_once(args, tool))

    failed = 0
    rows = []
    for tool in tools:
        for i, r in enumerate(results[tool]):
            failed += not r["ok"]
            rows.append(
                [
                    tool,
                    i,
                    r["outcome"],
                    r["wall_ms"],
                    r["cpu_ms"],
                    r["user_ms"],
                    r["sys_ms"],
                    r["direct_cpu_ms"],
                    r["orphans_reaped"],
                ]
            )
    for tool, msg in missing.items():
        rows.append([tool, "-", "not measured: " + msg.split(":")[0], "-", "-", "-", "-", "-", "-"])

    m = b.machine()
    m["tcp_sockets_at_start"] = tcp_at_start
    print(f"## CPU over a {args.seconds} s wait on a refused port\n")
    print(b.context_line(m) + "\n")
    print(
        b.table(
            [
                "tool",
                "run",
                "outcome",
                "wall ms",
                "CPU ms (all descendants)",
                "user ms",
                "sys ms",
                "CPU ms (wait4, direct child)",
                "orphans reaped",
            ],
            rows,
        )
    )
    print(
        "\nCPU = user + system time from getrusage(RUSAGE_CHILDREN) deltas: the tool and every "
        "descendant process"
        + (" (orphans adopted as child subreaper)." if subreaper else " reaped by its parent.")
    )
    b.write_json(
        args.json,
        {
            "benchmark": "wait_cpu",
            "machine": m,
            "settings": {"seconds": args.seconds, "runs": args.runs, "subreaper": subreaper},
            "missing": missing,
            "runs": results,
        },
    )
    if failed:
        print(f"\n{failed} run(s) failed", file=sys.stderr)
        return b.EXIT_RUN_FAILED
    if missing:
        return b.EXIT_TOOL_MISSING
    return b.EXIT_OK


def run_once(args, tool):
    with b.Server() as server:  # never opened: every connect is refused
        if tool == b.TETHER:
            argv = b.tether_wait(args.tether, server.port, args.seconds)
        else:
            argv = b.wait_for_it(args.wait_for_it, server.port, args.seconds)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        child = b.Child(argv)
        out = child.wait(child.t_start + (args.seconds + GRACE_S) * 10**9)
        orphans = b.reap_orphans(child.pid)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user = (after.ru_utime - before.ru_utime) * 1e3
    sys_ = (after.ru_stime - before.ru_stime) * 1e3
    wall_ms = (out.t_exit - child.t_start) / 1e6
    # Success is the tool giving up by its own deadline: a non-zero exit (124
    # for wait-for-it), not before the deadline, and not killed by us.
    ok = not out.killed and out.code not in (0, None) and wall_ms >= args.seconds * 1e3 * 0.95
    return {
        "ok": ok,
        "exit": out.code,
        "outcome": out.describe(),
        "wall_ms": wall_ms,
        "cpu_ms": user + sys_,
        "user_ms": user,
        "sys_ms": sys_,
        "direct_cpu_ms": (out.rusage.ru_utime + out.rusage.ru_stime) * 1e3,
        "orphans_reaped": orphans,
    }


if __name__ == "__main__":
    sys.exit(main())
