#!/usr/bin/env python3
"""The network monitor's idle cost: CPU time of an idle `tether proxy`
(which runs the monitor: a watchdog tick a second, a timerfd, a netlink
socket) over a minute, against the same proxy with nothing to do.

    python3 bench/netmon.py [--tether PATH] [--seconds 60]

Reads utime + stime from /proc/PID/stat (clock ticks) at the start and the
end. Loopback only; the proxy is killed at the end.
"""

import argparse
import os
import socket
import subprocess
import sys
import time


def cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tether", default=os.environ.get("TETHER_BIN", "target/release/tether"))
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    listen, upstream = free_port(), free_port()
    p = subprocess.Popen([args.tether, "proxy", "-q", f"tcp://127.0.0.1:{listen}", f"tcp://127.0.0.1:{upstream}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)  # start-up, first snapshot, first probes
        a = cpu_ms(p.pid)
        time.sleep(args.seconds)
        b = cpu_ms(p.pid)
    finally:
        p.kill()
        p.wait()
    print(f"# Idle cost of the network monitor\n\n- date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
          f"\n- load: {os.getloadavg()[0]:.2f}\n")
    print("| process | idle for | CPU time | per second |\n|---|---|---|---|")
    print(f"| `tether proxy` (monitor on, upstream down, no clients) | {args.seconds} s | {b - a:.0f} ms | {(b - a) / args.seconds:.2f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
