"""Shared pieces of the `tether wait` benchmarks: a loopback server, a bounded
child runner, the waiters' command lines, statistics and Markdown tables.

Python 3 standard library only, Linux only (pidfd, /proc). Nothing here talks
to anything but 127.0.0.1, and every wait has a bound.
"""

import ctypes
import json
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_TETHER = REPO_ROOT / "target" / "release" / "tether"

TETHER = "tether"
WAIT_FOR_IT = "wait-for-it"
TRUE = "/bin/true"

# Exit codes of the scripts.
EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_TOOL_MISSING = 2
EXIT_GOAL_MISSED = 3


# --- Tools ------------------------------------------------------------------


def add_tool_args(parser, tools=(TETHER, WAIT_FOR_IT)):
    parser.add_argument(
        "--tether",
        default=os.environ.get("TETHER_BIN", str(DEFAULT_TETHER)),
        help="path of the tether binary (default: $TETHER_BIN or %(default)s)",
    )
    parser.add_argument(
        "--wait-for-it",
        dest="wait_for_it",
        default=shutil.which("wait-for-it") or "/usr/bin/wait-for-it",
        help="path of wait-for-it (default: %(default)s)",
    )
    parser.add_argument(
        "--tools",
        default=",".join(tools),
        help="comma-separated tools to measure (default: %(default)s)",
    )


def selected_tools(args, known):
    """The tools asked for that exist, and the ones that are missing, each with
    a message that says how to get it."""
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    for tool in wanted:
        if tool not in known:
            sys.exit(f"unknown tool {tool!r}; known: {', '.join(known)}")
    present, missing = [], {}
    for tool in wanted:
        path = tool_path(args, tool)
        if path and os.access(path, os.X_OK):
            present.append(tool)
        elif tool == TETHER:
            missing[tool] = (
                f"tether binary not found at {path}: build it with "
                f"`cargo build --release -p tether-cli` in {REPO_ROOT}, "
                "or pass --tether PATH (or measure only the peer with --tools wait-for-it)"
            )
        elif tool == WAIT_FOR_IT:
            missing[tool] = (
                f"wait-for-it not found at {path}: install it with "
                "`apt-get update && apt-get install -y wait-for-it`"
            )
        else:
            missing[tool] = f"{tool} not found at {path}"
    for msg in missing.values():
        print(f"warning: {msg}", file=sys.stderr)
    return present, missing


def tool_path(args, tool):
    return {TETHER: args.tether, WAIT_FOR_IT: args.wait_for_it, TRUE: TRUE}[tool]


def tether_wait(path, port, timeout, extra=()):
    """`tether wait` on one loopback TCP port. `timeout` is whole seconds."""
    return [path, "wait", "-q", "--timeout", f"{timeout}s", *extra, f"tcp://127.0.0.1:{port}"]


def wait_for_it(path, port, timeout):
    """wait-for-it on one loopback port. With `-t N > 0` it re-executes itself
    under coreutils `timeout`, so the process tree is wait-for-it -> timeout ->
    wait-for-it --child -> one bash subshell per probe, and `sleep 1`."""
    return [path, "-q", "-t", str(timeout), f"127.0.0.1:{port}"]


# --- The server ---------------------------------------------------------------


# Children the harness keeps on purpose (server processes): reap_orphans()
# leaves them alone.
KEEP = set()


class Server:
    """A loopback TCP port that refuses connections until `open()` and then
    accepts them, like a real server, from a process of its own.

    The accept loop runs in a separate Python process (see SERVER_CODE), so
    it never waits for this harness's GIL: connections are accepted within
    microseconds of arriving, as a Go, Node or nginx server accepts them.

    Before `open()` the socket is bound but not listening: the port stays
    reserved and every connect is refused (RST). `open()` tells the server
    process to listen(); it answers with time.monotonic_ns() taken right after
    listen() returned (CLOCK_MONOTONIC is the same clock in every process).

    `mode` says what the server does with an accepted connection:
    - "hold" (default): keep it until the client closes it (reads and drops
      anything sent), as most servers do;
    - "close": close it at once, as a server that turns clients away does.
    """

    def __init__(self, mode="hold"):
        if mode not in ("hold", "close"):
            raise ValueError(f"unknown server mode {mode!r}")
        self.mode = mode
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE, str(sock.fileno()), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(sock.fileno(),),
            text=True,
            bufsize=1,
        )
        # The child holds the socket now; ours would keep the port alive
        # after the child is gone.
        sock.close()
        self._final = None
        KEEP.add(self._proc.pid)

    def _ask(self, word):
        self._proc.stdin.write(word + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the server process died")
        return line.split()

    def open(self):
        """Makes the server listen; returns time.monotonic_ns() taken right
        after listen() returned."""
        return int(self._ask("open")[0])

    def count(self):
        """Connections accepted so far; after close(), all that arrived."""
        if self._final is not None:
            return self._final[0]
        return int(self._ask("count")[0])

    @property
    def t_first_accept(self):
        """time.monotonic_ns() when accept() first returned, or None."""
        if self._final is not None:
            return self._final[1]
        value = int(self._ask("count")[1])
        return value if value >= 0 else None

    def close(self):
        if self._final is None and self._proc.poll() is None:
            try:
                accepted, first = self._ask("stop")
                self._final = (int(accepted), int(first) if int(first) >= 0 else None)
            except (RuntimeError, BrokenPipeError, ValueError):
                self._final = (0, None)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        KEEP.discard(self._proc.pid)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The server process: commands on stdin, one answer line each.
#   open  -> listen(); answers t_open
#   count -> answers "<accepted> <t_first_accept or -1>"
#   stop  -> accepts what waits, closes everything, answers like count, exits
SERVER_CODE = r"""
import os, selectors, socket, struct, sys, threading, time
fd, mode = int(sys.argv[1]), sys.argv[2]
sock = socket.socket(fileno=fd)
state = {"accepted": 0, "first": -1}
lock = threading.Lock()
stop = threading.Event()
held = set()

def close_hard(conn):
    # A reset (SO_LINGER 0): no socket lingers in TIME_WAIT between runs.
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()

def accept_all(sel):
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with lock:
            if state["first"] < 0:
                state["first"] = time.monotonic_ns()
            state["accepted"] += 1
        if mode == "close":
            conn.close()
            continue
        conn.setblocking(False)
        held.add(conn)
        sel.register(conn, selectors.EVENT_READ)

def serve():
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.05):
            if key.fileobj is sock:
                accept_all(sel)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn)
                held.discard(conn)
                close_hard(conn)
    accept_all(sel)
    for conn in held:
        close_hard(conn)

thread = None
for line in sys.stdin:
    word = line.strip()
    if word == "open":
        sock.listen(128)
        t_open = time.monotonic_ns()
        sock.setblocking(False)
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        print(t_open, flush=True)
    elif word in ("count", "stop"):
        if word == "stop":
            stop.set()
            if thread is not None:
                thread.join(timeout=5)
            else:
                # Never opened: nothing can have been accepted.
                pass
        with lock:
            print(state["accepted"], state["first"], flush=True)
        if word == "stop":
            break
"""


# --- Running a child with a bound -------------------------------------------


class Outcome:
    """How a child ended: exit code (None if a signal ended it), whether we
    killed it at the time bound, the monotonic time its exit was seen, and its
    rusage from wait4 (the child plus the descendants it reaped itself)."""

    def __init__(self, code, t_exit, rusage, killed, signal_no=None):
        self.code = code
        self.t_exit = t_exit
        self.rusage = rusage
        self.killed = killed
        self.signal = signal_no

    def describe(self):
        if self.killed:
            return "killed at the time bound"
        if self.signal is not None:
            return f"died of signal {self.signal}"
        return f"exit {self.code}"


class Child:
    """A child process in a session of its own, watched through a pidfd so
    its exit is seen within microseconds (Popen.wait(timeout=...) polls with
    sleeps of up to 50 ms, too coarse for a latency benchmark)."""

    def __init__(self, argv, stdout=os.devnull, stderr=os.devnull):
        # os.posix_spawn is what subprocess uses on Linux when it can (a
        # vfork-like clone), minus subprocess's per-spawn work in Python, so
        # the spawn cost is small and the same for every tool; the /bin/true
        # row of wait_startup.py shows it. stdin is /dev/null.
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
            (os.POSIX_SPAWN_OPEN, 2, stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
        ]
        self.argv = argv
        self.t_start = time.monotonic_ns()
        self.pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsid=True)
        self._pidfd = os.pidfd_open(self.pid)
        self._poller = select.poll()
        self._poller.register(self._pidfd, select.POLLIN)

    def running(self):
        return not self._poller.poll(0)

    def wait(self, deadline_ns):
        """Waits for the exit until the monotonic deadline, then kills the
        child's whole session; reaps the child either way."""
        killed = False
        try:
            while True:
                left_ms = (deadline_ns - time.monotonic_ns()) / 1e6
                if left_ms <= 0:
                    killed = True
                    kill_session(self.pid)
                    break
                if self._poller.poll(max(1, int(left_ms + 0.999))):
                    break
            t_exit = time.monotonic_ns()
        finally:
            os.close(self._pidfd)
        _, status, rusage = os.wait4(self.pid, 0)
        if os.WIFSIGNALED(status):
            return Outcome(None, t_exit, rusage, killed, os.WTERMSIG(status))
        return Outcome(os.waitstatus_to_exitcode(status), t_exit, rusage, killed)


def kill_session(sid):
    """SIGKILLs every process in session `sid`. A process group is not enough:
    coreutils `timeout` (used by wait-for-it) moves itself into a group of its
    own, but it stays in the session."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may contain spaces: split after its ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


def become_subreaper():
    """Makes orphaned descendants (a `sleep 1` left behind when `timeout` kills
    wait-for-it's child) our children, so they are reaped here and their CPU
    time shows in RUSAGE_CHILDREN. Returns whether it worked."""
    PR_SET_CHILD_SUBREAPER = 36
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans(sid, bound_s=3.0):
    """Reaps adopted orphans until none is left (children in KEEP do not
    count), killing session `sid` if some are still running after `bound_s`.
    Returns how many were reaped."""
    reaped = 0
    deadline = time.monotonic() + bound_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
            continue
        if not [c for c in _children() if c not in KEEP]:
            return reaped
        if time.monotonic() > deadline:
            kill_session(sid)
            deadline = time.monotonic() + bound_s
        time.sleep(0.01)


def _children():
    """The pids whose parent is this process."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry))
    return found


# --- Numbers and tables -----------------------------------------------------


def percentile(values, p):
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary_ms(values_ns):
    ms = [v / 1e6 for v in values_ns]
    if not ms:
        return None
    return {
        "n": len(ms),
        "median": statistics.median(ms),
        "p95": percentile(ms, 95),
        "mean": statistics.fmean(ms),
        "min": min(ms),
        "max": max(ms),
    }


def fmt(x, digits=2):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        out.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(out)


def write_json(path, data):
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        print(f"\nraw numbers written to {path}")


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "tcp_sockets": tcp_sockets(),
        "nproc": os.cpu_count(),
        "kernel": os.uname().release,
        "cpu": model,
        "loadavg": os.getloadavg(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def tcp_sockets():
    """Rows in the kernel's TCP tables: tether reads them on every TCP probe,
    so the count is part of the context of its numbers."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                n += max(0, sum(1 for _ in f) - 1)
        except OSError:
            pass
    return n


def context_line(m):
    """One line of context for a table; `m` comes from machine(), taken after
    the runs, with "tcp_sockets_at_start" added."""
    return (
        f"{m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, load {m['loadavg'][0]:.2f}, "
        f"TCP sockets on the machine: {m.get('tcp_sockets_at_start', '?')} at start, "
        f"{m['tcp_sockets']} at end"
    )
