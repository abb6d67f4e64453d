"""A socket-activated service for the example stack (standard library only).

tether binds its port before the stack starts and hands it over as
descriptor 3, with LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES set as systemd's
sd_listen_fds protocol says. This program never binds anything: it accepts
on what it was given, and answers every request with a greeting. Clients
that connect before it runs, or while it restarts, wait in the kernel's
backlog and are answered by the next run.
"""

import os
import socket
import sys


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        sys.exit("greet: no socket from tether (LISTEN_FDS, LISTEN_PID)")
    server = socket.socket(fileno=3)
    host, port = server.getsockname()[:2]
    name = os.environ.get("LISTEN_FDNAMES", "")
    print(f"greet: accepting on {host}:{port} (fd 3, {name}, from tether)", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)
                body = f"hello from greet (pid {os.getpid()})\n".encode()
                conn.sendall(
                    b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            except OSError:
                pass


if __name__ == "__main__":
    main()
