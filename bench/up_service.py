#!/usr/bin/env python3
"""The service of up_restart.py: a small HTTP server (Python's http.server)
on 127.0.0.1 that says when it is listening.

    up_service.py --port PORT --report-port UDP_PORT [--delay SECONDS]
                  [--notify-fd FD] [--sd-notify]

GET /health answers 200 "ok"; anything else 404. Once the socket listens
(HTTPServer binds and listens in its constructor), it sends one UDP datagram
to 127.0.0.1:UDP_PORT: "<time.monotonic_ns()> <pid>". CLOCK_MONOTONIC is the
same clock in every process, so the harness knows to the microsecond when
this instance was up, without polling. --delay sleeps before binding (a
slower start-up); by default the start-up is Python's own plus the import of
http.server, about 30 ms. It logs nothing.

Readiness, for supervisors that are told rather than probe, right after the
datagram: --notify-fd FD writes a newline to FD and closes it (s6's
notification-fd protocol); --sd-notify sends READY=1 to $NOTIFY_SOCKET
(systemd's sd_notify, `ready = "notify"` in tether; `@` starts an abstract
name).
"""

import argparse
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok" if self.path == "/health" else b"not found"
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--report-port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--notify-fd", type=int, default=None)
    p.add_argument("--sd-notify", action="store_true")
    args = p.parse_args()
    if args.delay > 0:
        time.sleep(args.delay)
    server = HTTPServer(("127.0.0.1", args.port), Health)
    t_listen = time.monotonic_ns()
    report = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    report.sendto(f"{t_listen} {os.getpid()}".encode(), ("127.0.0.1", args.report_port))
    report.close()
    if args.notify_fd is not None:
        os.write(args.notify_fd, b"\n")
        os.close(args.notify_fd)
    if args.sd_notify and os.environ.get("NOTIFY_SOCKET"):
        path = os.environ["NOTIFY_SOCKET"]
        if path.startswith("@"):
            path = "\0" + path[1:]
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.sendto(b"READY=1", path)
        notify.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
