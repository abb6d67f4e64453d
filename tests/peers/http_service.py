"""A small HTTP service for tether's supervisor tests and example stack.

    python http_service.py --port 8081 [--delay 0.5] [--notify] [--status TEXT]
                           [--crash-after SECONDS] [--hold FILE]

--delay sleeps before listening (a slow start). --notify sends READY=1 (and
STATUS=) to $NOTIFY_SOCKET once listening, as a systemd service would.
--crash-after exits with status 1 after that long. GET /health answers 200
"ok"; every other path 404. With --hold FILE, a /health request that finds
FILE renames it to FILE.held and never answers (one request is held per
FILE made), so a test knows a probe is in flight.
"""

import argparse
import http.server
import os
import socket
import sys
import threading
import time


def notify(message: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), path)


class Handler(http.server.BaseHTTPRequestHandler):
    hold = None

    def do_GET(self):
        if self.path == "/health" and self.hold:
            try:
                os.rename(self.hold, self.hold + ".held")
            except FileNotFoundError:
                pass
            else:
                while True:
                    time.sleep(3600)
        if self.path == "/health":
            body = b"ok"
            self.send_response(200)
        else:
            body = b"not found"
            self.send_response(404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--notify", action="store_true")
    p.add_argument("--status", default="")
    p.add_argument("--crash-after", type=float, default=0.0)
    p.add_argument("--hold", default=None)
    args = p.parse_args()
    Handler.hold = args.hold

    print(f"starting on port {args.port} (delay {args.delay}s)", flush=True)
    time.sleep(args.delay)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    if args.notify:
        notify("READY=1" + (f"\nSTATUS={args.status}" if args.status else ""))
    if args.crash_after > 0:
        def crash():
            time.sleep(args.crash_after)
            print("crashing on purpose", file=sys.stderr, flush=True)
            os._exit(1)
        threading.Thread(target=crash, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
