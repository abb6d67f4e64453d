#!/usr/bin/env python3
"""The flooding clients of up_floods.py, in a process of their own (so the
harness's own timing, its /health requests, never waits for them):

    up_flood_client.py control PATH --seconds S [--huge 40] [--idle 40] [--rate 500]
    up_flood_client.py status HOST PORT --seconds S [--connections 1000] [--rate 500]

control: clients of a stack's control socket (a Unix stream socket). --huge
of them send a request line that never ends (64 KiB writes of "a", no
newline, as fast as the socket takes them); --idle of them connect and send
nothing. A connection the other side closes (or refuses with an error line)
is opened again, at most --rate connects per second in all.

status: --connections TCP connections to HOST:PORT, held open and silent;
each one the server closes is opened again, at most --rate connects per
second in all.

Single-threaded (selectors), non-blocking. Ends after --seconds: closes
everything and prints one JSON line of counts on stdout. An alarm ends it
5 s later whatever happens. Python 3 standard library only; loopback and a
Unix socket only.
"""

import argparse
import errno
import json
import resource
import selectors
import signal
import socket
import sys
import time

CHUNK = b"a" * 65536


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("control")
    c.add_argument("path")
    c.add_argument("--huge", type=int, default=40)
    c.add_argument("--idle", type=int, default=40)
    s = sub.add_parser("status")
    s.add_argument("host")
    s.add_argument("port", type=int)
    s.add_argument("--connections", type=int, default=1000)
    for q in (c, s):
        q.add_argument("--seconds", type=float, required=True)
        q.add_argument("--rate", type=float, default=500.0, help="connects per second at most, in all")
    args = p.parse_args()
    if not 0.5 <= args.seconds <= 600:
        p.error("--seconds must be between 0.5 and 600")
    if args.mode == "status" and args.host not in ("127.0.0.1", "::1", "localhost"):
        p.error("loopback only")
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(3))
    signal.alarm(int(args.seconds) + 5)
    # One descriptor per connection, and some to spare.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 4096)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    Flood(args).run()


class Flood:
    def __init__(self, args):
        self.args = args
        self.sel = selectors.DefaultSelector()
        # Slots: the kind of each client ("huge", "idle" or "hold").
        if args.mode == "control":
            self.slots = ["huge"] * args.huge + ["idle"] * args.idle
        else:
            self.slots = ["hold"] * args.connections
        self.socks = [None] * len(self.slots)
        self.counts = {
            "connects": 0,
            "connect_errors": 0,
            "closed_by_peer": 0,
            "error_lines": 0,
            "bytes_sent": 0,
            "max_open": 0,
        }
        self.tokens = 0.0
        self.last = time.monotonic()
        self.next_slot = 0

    def run(self):
        deadline = time.monotonic() + self.args.seconds
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            self.refill(now)
            self.open_missing()
            for key, events in self.sel.select(timeout=min(0.01, deadline - now)):
                self.ready(key.data, events)
        for i, sock in enumerate(self.socks):
            if sock is not None:
                self.close(i)
        print(json.dumps({"mode": self.args.mode, "seconds": self.args.seconds, **self.counts}), flush=True)

    def refill(self, now):
        self.tokens = min(self.args.rate, self.tokens + (now - self.last) * self.args.rate)
        self.last = now

    def open_missing(self):
        """Opens closed slots while the rate allows, starting after the
        last one opened: every kind of client gets its turn."""
        n = len(self.socks)
        for k in range(n):
            if self.tokens < 1:
                return
            i = (self.next_slot + k) % n
            if self.socks[i] is not None:
                continue
            self.tokens -= 1
            self.open(i)
            self.next_slot = (i + 1) % n

    def open(self, i):
        if self.args.mode == "control":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target = self.args.path
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            target = (self.args.host, self.args.port)
        sock.setblocking(False)
        try:
            sock.connect(target)
        except BlockingIOError:
            pass
        except OSError as e:
            if e.errno != errno.EINPROGRESS:
                self.counts["connect_errors"] += 1
                sock.close()
                return
        self.counts["connects"] += 1
        self.socks[i] = sock
        mask = selectors.EVENT_READ
        if self.slots[i] == "huge":
            mask |= selectors.EVENT_WRITE
        self.sel.register(sock, mask, i)
        self.counts["max_open"] = max(self.counts["max_open"], sum(1 for s in self.socks if s is not None))

    def close(self, i):
        sock = self.socks[i]
        self.socks[i] = None
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def ready(self, i, events):
        sock = self.socks[i]
        if sock is None:
            return
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self.counts["closed_by_peer"] += 1
                self.close(i)
                return
            if data:
                self.counts["error_lines"] += data.count(b"\n")
        if events & selectors.EVENT_WRITE:
            try:
                self.counts["bytes_sent"] += sock.send(CHUNK)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.counts["closed_by_peer"] += 1
                self.close(i)


if __name__ == "__main__":
    main()
