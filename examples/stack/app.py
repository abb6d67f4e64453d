"""A tiny service for the example stack (standard library only).

    python3 app.py NAME [--port P] [--delay S] [--upstream URL] [--notify]
                        [--crash-after S]

With --port it serves GET /health: "ok", or 503 while --upstream (another
health URL) does not answer 200. --delay sleeps before listening (a slow
start). --notify sends READY=1 to $NOTIFY_SOCKET once up. --crash-after exits
with status 1 after that long.
"""

import argparse
import http.server
import os
import socket
import sys
import threading
import time
import urllib.request


def notify(message):
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), path)


def upstream_ok(url):
    if not url:
        return True
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return r.status == 200
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("name")
    p.add_argument("--port", type=int)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--upstream", default="")
    p.add_argument("--notify", action="store_true")
    p.add_argument("--crash-after", type=float, default=0.0)
    args = p.parse_args()

    print(f"{args.name}: starting", flush=True)
    time.sleep(args.delay)

    if args.port:
        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                ok = self.path == "/health" and upstream_ok(args.upstream)
                body = b"ok" if ok else b"upstream not ready"
                self.send_response(200 if ok else 503)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Health)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(f"{args.name}: listening on 127.0.0.1:{args.port}", flush=True)

    if args.notify:
        notify(f"READY=1\nSTATUS={args.name} working")
        print(f"{args.name}: ready", flush=True)

    started = time.monotonic()
    while True:
        time.sleep(0.2)
        if args.crash_after and time.monotonic() - started > args.crash_after:
            print(f"{args.name}: something went wrong, exiting", file=sys.stderr, flush=True)
            sys.exit(1)


if __name__ == "__main__":
    main()
