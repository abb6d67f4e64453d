#!/usr/bin/env python3
"""Detection latency of `tether wait` and wait-for-it: the time from a
loopback port starting to accept connections to the waiter exiting.

Each run: reserve a port (bound, not listening, so connects are refused),
start the waiter, sleep a random delay, listen() and take t_open, start the
accept thread, wait for the waiter's exit and take t_exit. The latency is
t_exit - t_open. Tools are interleaved run by run and share each run's delay,
so load and the delay's phase against the waiter's polling affect both alike.

Then, for tether only, the probe rate against a refused port: it runs
`tether wait --json --timeout 3s` and counts the NDJSON `attempt` events.

Python 3 standard library only. Exit 0 when every run succeeded, 1 when one
failed (non-zero exit, or no exit within 10 s of the port opening), 2 when a
tool is missing, 3 with --check-goals when a goal is missed.
"""

import argparse
import json
import os
import random
import shlex
import sys
import tempfile
import time

import benchlib as b

# The waiter's own deadline, far beyond any delay: it must never be what ends
# a run. Our bound (KILL_AFTER_OPEN_S) ends it first.
WAITER_TIMEOUT_S = 30
KILL_AFTER_OPEN_S = 10

GOAL_MEDIAN_MS = 10.0
GOAL_P95_MS = 25.0
GOAL_PROBES_PER_S = 100.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=40, help="runs per tool (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the delays (default: %(default)s)")
    p.add_argument("--min-delay", type=float, default=0.3, help="seconds (default: %(default)s)")
    p.add_argument("--max-delay", type=float, default=1.5, help="seconds (default: %(default)s)")
    p.add_argument(
        "--server",
        choices=("hold", "close"),
        default="hold",
        help="what the server does with an accepted connection: keep it until "
        "the client closes it, or close it at once (default: %(default)s)",
    )
    p.add_argument(
        "--tether-args",
        default="",
        help="extra arguments for `tether wait`, e.g. '--max-interval 10ms'",
    )
    p.add_argument(
        "--probe-seconds",
        type=int,
        default=3,
        help="length of the probe-rate run against a refused port (default: %(default)s)",
    )
    p.add_argument("--no-probe-rate", action="store_true", help="skip the probe-rate run")
    p.add_argument("--check-goals", action="store_true", help="exit 3 when a goal is missed")
    p.add_argument("--json", metavar="FILE", help="write the raw numbers to FILE")
    p.add_argument("-v", "--verbose", action="store_true", help="print every run")
    b.add_tool_args(p)
    args = p.parse_args()
    if not 1 <= args.runs <= 1000:
        p.error("--runs must be between 1 and 1000")
    if not 0 < args.min_delay <= args.max_delay <= 5:
        p.error("need 0 < --min-delay <= --max-delay <= 5")
    if not 1 <= args.probe_seconds <= 30:
        p.error("--probe-seconds must be between 1 and 30")

    tools, missing = b.selected_tools(args, (b.TETHER, b.WAIT_FOR_IT))
    tcp_at_start = b.tcp_sockets()
    b.become_subreaper()
    extra = shlex.split(args.tether_args)
    rng = random.Random(args.seed)
    results = {tool: [] for tool in tools}

    def command(tool, port):
        if tool == b.TETHER:
            return b.tether_wait(args.tether, port, WAITER_TIMEOUT_S, extra)
        return b.wait_for_it(args.wait_for_it, port, WAITER_TIMEOUT_S)

    for i in range(args.runs):
        # One delay per run, shared by the tools: a paired comparison.
        delay = rng.uniform(args.min_delay, args.max_delay)
        for tool in tools:
            r = run_once(command, tool, delay, args.server)
            r["run"] = i
            results[tool].append(r)
            if args.verbose or not r["ok"]:
                print(
                    f"{tool} run {i}: delay {delay * 1e3:.0f} ms, "
                    f"latency {fmt_ms(r['latency_ns'])} ms, {r['outcome']}, "
                    f"{r['accepted']} accepted",
                    file=sys.stderr,
                )

    rate = None
    if b.TETHER in tools and not args.no_probe_rate:
        rate = probe_rate(args.tether, args.probe_seconds, extra)

    m = b.machine()
    m["tcp_sockets_at_start"] = tcp_at_start
    print(report(args, m, tools, missing, results, rate))
    failed = sum(not r["ok"] for rs in results.values() for r in rs)
    goals = goal_lines(results.get(b.TETHER), rate) if b.TETHER in tools else []
    if goals:
        print("\nGoals for tether:\n")
        print("\n".join(f"- {line}" for _, line in goals))
    b.write_json(
        args.json,
        {
            "benchmark": "wait_latency",
            "machine": m,
            "settings": {
                "runs": args.runs,
                "seed": args.seed,
                "delay_s": [args.min_delay, args.max_delay],
                "server": args.server,
                "tether_args": extra,
                "kill_after_open_s": KILL_AFTER_OPEN_S,
            },
            "missing": missing,
            "runs": results,
            "summary": {t: b.summary_ms([r["latency_ns"] for r in rs if r["ok"]]) for t, rs in results.items()},
            "tether_probe_rate": rate,
        },
    )
    if failed:
        print(f"\n{failed} run(s) failed", file=sys.stderr)
        return b.EXIT_RUN_FAILED
    if missing:
        return b.EXIT_TOOL_MISSING
    if args.check_goals and any(ok is False for ok, _ in goals):
        return b.EXIT_GOAL_MISSED
    return b.EXIT_OK


def run_once(command, tool, delay, server_mode):
    with b.Server(server_mode) as server:
        child = b.Child(command(tool, server.port))
        time.sleep(delay)
        early = not child.running()
        t_open = server.open()
        out = child.wait(t_open + KILL_AFTER_OPEN_S * 10**9)
        latency = out.t_exit - t_open
    accepted = server.count()
    b.reap_orphans(child.pid)
    ok = out.code == 0 and not early and not out.killed
    outcome = out.describe() + (" before the port opened" if early else "")
    first = server.t_first_accept
    return {
        "ok": ok,
        "delay_ns": int(delay * 1e9),
        "latency_ns": latency,
        # Splits the latency: until our accept() returned the first
        # connection (the waiter's polling, plus our accept thread's wake-up),
        # and from there to the exit (the waiter noticing, and exiting).
        # wait-for-it does not wait for accept(), so its second part can be
        # negative.
        "open_to_accept_ns": None if first is None else first - t_open,
        "accept_to_exit_ns": None if first is None else out.t_exit - first,
        "exit": out.code,
        "outcome": outcome,
        "accepted": accepted,
    }


def probe_rate(tether, seconds, extra=()):
    """Counts tether's attempts against a refused port over `seconds`, from its
    NDJSON events, with the same extra arguments as the latency runs. Gives
    the average rate and, when the events carry `elapsed_ms`, the most
    attempts in any one-second window (the fast start included). The flag's
    place is tried after `wait` and then before it."""
    result = {"seconds": seconds, "attempts": None, "per_s": None, "max_in_1s": None, "argv": None, "note": None}
    extra = [a for a in extra if a not in ("-q", "--quiet")]  # -q conflicts with --json
    tried = []
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        for placement in ("after", "before"):
            with b.Server() as server:  # never opened: every connect is refused
                target = f"tcp://127.0.0.1:{server.port}"
                rest = ["--timeout", f"{seconds}s", *extra, target]
                argv = [tether, *(["wait", "--json", *rest] if placement == "after" else ["--json", "wait", *rest])]
                out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
                child = b.Child(argv, stdout=out_path, stderr=err_path)
                out = child.wait(child.t_start + (seconds + 7) * 10**9)
            b.reap_orphans(child.pid)
            lines = read_lines(out_path) + read_lines(err_path)
            events = [ev for ev in parse_ndjson(lines) if ev.get("event") == "attempt"]
            tried.append(f"`{shlex.join(argv[1:])}`: {out.describe()}, {len(lines)} line(s), {len(events)} attempt event(s)")
            if events:
                result.update(
                    attempts=len(events),
                    per_s=len(events) / seconds,
                    max_in_1s=max_in_window([ev.get("elapsed_ms") for ev in events], 1000.0),
                    wall_ms=(out.t_exit - child.t_start) / 1e6,
                    argv=argv[1:],
                    exit=out.code,
                )
                return result
            if lines and placement == "after" and out.code not in (2, 64):
                # It ran and printed something that is not attempt events:
                # trying the other placement would not help.
                break
    result["note"] = "tether printed no attempt events: " + "; ".join(tried)
    print(f"warning: probe rate could not be measured: {result['note']}", file=sys.stderr)
    return result


def max_in_window(times_ms, width_ms):
    """The most timestamps in any window [t, t + width); None if any is missing."""
    if any(not isinstance(t, (int, float)) for t in times_ms):
        return None
    ts = sorted(times_ms)
    best, lo = 0, 0
    for hi, t in enumerate(ts):
        while ts[lo] <= t - width_ms:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def read_lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def parse_ndjson(lines):
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            yield ev


def fmt_ms(ns):
    return f"{ns / 1e6:.2f}"


def report(args, m, tools, missing, results, rate):
    out = [
        f"## Detection latency (`--runs {args.runs} --seed {args.seed}`, delay "
        f"{args.min_delay}-{args.max_delay} s, server mode `{args.server}`)",
        "",
        b.context_line(m),
        "",
    ]
    rows = []
    for tool in tools:
        rs = results[tool]
        s = b.summary_ms([r["latency_ns"] for r in rs if r["ok"]]) or {}
        acc = [r["accepted"] for r in rs]
        split = [
            (b.summary_ms([r[k] for r in rs if r["ok"] and r[k] is not None]) or {}).get("median")
            for k in ("open_to_accept_ns", "accept_to_exit_ns")
        ]
        rows.append(
            [
                tool,
                len(rs),
                sum(not r["ok"] for r in rs),
                s.get("median"),
                s.get("p95"),
                s.get("mean"),
                s.get("min"),
                s.get("max"),
                f"{sum(acc) / len(acc):.2f} / {max(acc)}",
                *split,
            ]
        )
    for tool, msg in missing.items():
        rows.append([tool, 0, "-", "-", "-", "-", "-", "-", "not measured: " + msg.split(":")[0], "-", "-"])
    out.append(
        b.table(
            [
                "tool",
                "runs",
                "failed",
                "median ms",
                "p95 ms",
                "mean ms",
                "min ms",
                "max ms",
                "accepted per run (mean / max)",
                "median open→accept ms",
                "median accept→exit ms",
            ],
            rows,
        )
    )
    out.append("")
    if rate is None:
        if b.TETHER in tools:
            out.append("tether probe rate: not measured (--no-probe-rate)")
    elif rate["per_s"] is None:
        out.append(f"tether probe rate: could not be measured ({rate['note']})")
    else:
        peak = "" if rate["max_in_1s"] is None else f", at most {rate['max_in_1s']} in any 1 s"
        out.append(
            f"tether probe rate against a refused port: {rate['attempts']} attempts in "
            f"{rate['seconds']} s = {rate['per_s']:.1f} probes/s{peak} (`{shlex.join(rate['argv'])}`)"
        )
    if b.WAIT_FOR_IT in tools:
        out.append("wait-for-it probe rate: 1 probe/s by construction (`sleep 1` between bash /dev/tcp connects)")
    return "\n".join(out)


def goal_lines(rs, rate):
    if not rs:
        return []
    s = b.summary_ms([r["latency_ns"] for r in rs if r["ok"]])
    if s is None:
        return [(False, "MISSED: no successful run")]
    lines = [
        (s["median"] <= GOAL_MEDIAN_MS, f"median {s['median']:.2f} ms <= {GOAL_MEDIAN_MS:g} ms"),
        (s["p95"] <= GOAL_P95_MS, f"p95 {s['p95']:.2f} ms <= {GOAL_P95_MS:g} ms"),
    ]
    if rate and rate.get("max_in_1s") is not None:
        lines.append(
            (rate["max_in_1s"] <= GOAL_PROBES_PER_S, f"at most {rate['max_in_1s']} probes in any 1 s <= {GOAL_PROBES_PER_S:g}")
        )
    elif rate and rate.get("per_s") is not None:
        lines.append((rate["per_s"] <= GOAL_PROBES_PER_S, f"{rate['per_s']:.1f} probes/s on average <= {GOAL_PROBES_PER_S:g}"))
    elif rate is None:
        # Not asked for (--no-probe-rate): neither met nor missed.
        lines.append((None, f"probes/s <= {GOAL_PROBES_PER_S:g}: not measured in this run"))
    else:
        lines.append((False, f"probes/s <= {GOAL_PROBES_PER_S:g}: could not be measured"))
    words = {True: "met: ", False: "MISSED: ", None: "skipped: "}
    return [(ok, words[ok] + text) for ok, text in lines]


if __name__ == "__main__":
    sys.exit(main())
