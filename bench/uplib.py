"""Shared pieces of the `tether up` benchmarks (up_restart.py, up_idle.py,
up_down.py, up_floods.py, up_setsid.py): running tether, supervisord, s6 and
pm2 as bounded children, reading tether's NDJSON events as they arrive,
finding every process of a stack by a marker in its environment, and reading
a process's CPU time and memory.

Builds on benchlib.py (session kill, subreaper, statistics, tables, machine
context). Python 3 standard library only, Linux only (pidfd, /proc). Nothing
here talks to anything but 127.0.0.1, and every wait has a bound.
"""

import json
import os
import queue
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import benchlib as b

TETHER = "tether"
SUPERVISORD = "supervisord"
S6 = "s6"
PM2 = "pm2"

# pm2 is installed by run_up.sh into a folder of the project's own, never
# globally (and never in the tests' .tools/npm).
DEFAULT_PM2 = b.REPO_ROOT / ".tools" / "bench-up-npm" / "node_modules" / ".bin" / "pm2"

# Every process a benchmark starts (the supervisor, its services and their
# children) carries this variable in its environment, with a value unique to
# the run. Children inherit it from tether and supervisord alike, so a scan
# of /proc/*/environ finds the whole stack, grandchildren included, and
# nothing else on the machine.
MARK_VAR = "TETHER_BENCH_MARK"

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- Tools ------------------------------------------------------------------


def add_tool_args(parser, tools):
    parser.add_argument(
        "--tether",
        default=os.environ.get("TETHER_BIN", str(b.DEFAULT_TETHER)),
        help="path of the tether binary (default: $TETHER_BIN or %(default)s)",
    )
    parser.add_argument(
        "--supervisord",
        default=shutil.which("supervisord") or "/usr/bin/supervisord",
        help="path of supervisord (default: %(default)s)",
    )
    parser.add_argument(
        "--supervisorctl",
        default=shutil.which("supervisorctl") or "/usr/bin/supervisorctl",
        help="path of supervisorctl (default: %(default)s)",
    )
    parser.add_argument(
        "--s6-svscan",
        dest="s6_svscan",
        default=shutil.which("s6-svscan") or "/usr/bin/s6-svscan",
        help="path of s6-svscan; s6-svc and s6-svscanctl are taken from its directory (default: %(default)s)",
    )
    parser.add_argument(
        "--pm2",
        default=os.environ.get("PM2_BIN", str(DEFAULT_PM2)),
        help="path of the pm2 command (default: $PM2_BIN or %(default)s)",
    )
    parser.add_argument(
        "--tools",
        default=",".join(tools),
        help="comma-separated tools to measure (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the raw numbers to FILE")


def s6_tool(args, name):
    """An s6 program beside s6-svscan."""
    return os.path.join(os.path.dirname(args.s6_svscan), name)


def selected_tools(args, known):
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    for tool in wanted:
        if tool not in known:
            sys.exit(f"unknown tool {tool!r}; known: {', '.join(known)}")
    present, missing = [], {}
    for tool in wanted:
        if tool == TETHER:
            if os.access(args.tether, os.X_OK):
                present.append(tool)
            else:
                missing[tool] = (
                    f"tether binary not found at {args.tether}: build it with "
                    f"`cargo build --release -p tether-cli` in {b.REPO_ROOT}, or pass --tether PATH"
                )
        elif tool == SUPERVISORD:
            if os.access(args.supervisord, os.X_OK) and os.access(args.supervisorctl, os.X_OK):
                present.append(tool)
            else:
                missing[tool] = (
                    f"supervisord/supervisorctl not found at {args.supervisord}, {args.supervisorctl}: "
                    "install them with `apt-get update && apt-get install -y supervisor`"
                )
        elif tool == S6:
            needed = [args.s6_svscan] + [s6_tool(args, n) for n in ("s6-svc", "s6-svscanctl", "s6-svstat")]
            if all(os.access(x, os.X_OK) for x in needed):
                present.append(tool)
            else:
                missing[tool] = (
                    f"s6 not found at {os.path.dirname(args.s6_svscan)}: "
                    "install it with `apt-get update && apt-get install -y s6`"
                )
        elif tool == PM2:
            if os.access(args.pm2, os.X_OK) and shutil.which("node"):
                present.append(tool)
            else:
                missing[tool] = (
                    f"pm2 not found at {args.pm2} (or no node on PATH): bench/run_up.sh installs it "
                    "into .tools/bench-up-npm, or pass --pm2 PATH"
                )
    for msg in missing.values():
        print(f"warning: {msg}", file=sys.stderr)
    return present, missing


def versions(args, tools):
    out = {}
    if TETHER in tools:
        out[TETHER] = run_bounded([args.tether, "--version"], 5).strip() or "?"
    if SUPERVISORD in tools:
        out[SUPERVISORD] = "supervisord " + (run_bounded([args.supervisord, "--version"], 10).strip() or "?")
    if S6 in tools:
        # s6's programs have no --version; the Debian package says it.
        out[S6] = "s6 " + (run_bounded(["dpkg-query", "-W", "-f", "${Version}", "s6"], 10).strip() or "?")
    if PM2 in tools:
        out[PM2] = f"pm2 {pm2_version(args)} (node {run_bounded(['node', '--version'], 10).strip() or '?'})"
    return out


def pm2_version(args):
    """From its package.json: `pm2 --version` would start a daemon in
    ~/.pm2."""
    path = os.path.join(os.path.dirname(os.path.realpath(args.pm2)), "..", "package.json")
    try:
        with open(path) as f:
            return json.load(f).get("version", "?")
    except (OSError, ValueError):
        return "?"


def run_bounded(argv, timeout, env=None):
    """stdout of a short command, or "" if it failed or timed out."""
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def command_line():
    """The command that produced a table, as typed."""
    script = os.path.relpath(sys.argv[0], b.REPO_ROOT) if os.path.isabs(sys.argv[0]) else sys.argv[0]
    return shlex.join(["python3", script, *sys.argv[1:]])


MARKS = []


def new_mark():
    """A marker value for one stack; remembered for final_check()."""
    mark = "up-bench-" + uuid.uuid4().hex[:16]
    MARKS.append(mark)
    return mark


def final_check():
    """The last /proc scan of a benchmark: every marker it handed out, every
    process on the machine. Prints one line; True when nothing is left."""
    needles = [f"{MARK_VAR}={m}".encode() for m in MARKS]
    left = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if not any(n in env for n in needles):
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0].decode()
        if state in ("Z", "X"):
            continue
        left[int(entry)] = (state, stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode("utf-8", "replace"))
    reap_adopted()
    if left:
        print(
            f"\nFAILED: final /proc scan: {len(left)} processes of this benchmark still running: "
            + ", ".join(f"{pid} {comm}" for pid, (_, comm) in sorted(left.items()))
        )
        for mark in MARKS:
            kill_marked(mark)
        return False
    print(f"\nFinal /proc scan: no process of this benchmark's {len(MARKS)} stacks is left running.")
    return True


def free_port():
    """A loopback port nothing listens on now (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- A bounded child with an environment and, optionally, a line reader ---


class Proc:
    """A child in a session of its own, its exit watched through a pidfd
    (as benchlib.Child), with its own environment. With `lines=True` its
    stdout is a pipe read by a thread that stamps each line with
    time.monotonic_ns() on arrival; the lines wait in `self.lines` (a
    queue of (t_arrival_ns, text)). With `stdout_fd` stdout is that
    descriptor of ours. Otherwise stdout goes to the file `stdout`."""

    def __init__(self, argv, env, stdout=os.devnull, stderr=os.devnull, lines=False, stdout_fd=None):
        self.argv = argv
        self.lines = queue.Queue() if lines else None
        rfd = None
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        if lines:
            rfd, wfd = os.pipe()
            actions.append((os.POSIX_SPAWN_DUP2, wfd, 1))
            actions.append((os.POSIX_SPAWN_CLOSE, rfd))
        elif stdout_fd is not None:
            # A descriptor of the caller's (the write end of a pipe it
            # never reads, for one).
            actions.append((os.POSIX_SPAWN_DUP2, stdout_fd, 1))
        else:
            actions.append((os.POSIX_SPAWN_OPEN, 1, stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        actions.append((os.POSIX_SPAWN_OPEN, 2, stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        self.t_start = time.monotonic_ns()
        self.pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
        self._pidfd = os.pidfd_open(self.pid)
        self._poller = select.poll()
        self._poller.register(self._pidfd, select.POLLIN)
        self.status = None
        self.t_exit = None
        self._reader = None
        if lines:
            os.close(wfd)
            self._reader = threading.Thread(target=self._read, args=(rfd,), daemon=True)
            self._reader.start()

    def _read(self, fd):
        buf = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            t = time.monotonic_ns()
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.lines.put((t, line.decode("utf-8", "replace")))
        os.close(fd)
        self.lines.put((time.monotonic_ns(), None))

    def running(self):
        return self.status is None and not self._poller.poll(0)

    def wait(self, timeout_s):
        """Waits up to timeout_s for the exit; at the bound SIGKILLs the
        child's whole session. Reaps the child. Returns True if it exited by
        itself."""
        if self.status is not None:
            return self.status != "killed"
        deadline = time.monotonic_ns() + int(timeout_s * 1e9)
        killed = False
        while True:
            left_ms = (deadline - time.monotonic_ns()) / 1e6
            if left_ms <= 0:
                killed = True
                b.kill_session(self.pid)
                self._poller.poll(5000)
                break
            if self._poller.poll(max(1, int(left_ms + 0.999))):
                break
        self.t_exit = time.monotonic_ns()
        os.close(self._pidfd)
        try:
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = "reaped elsewhere"
        self.status = "killed" if killed else code
        return not killed

    @property
    def pidfd(self):
        return self._pidfd


def bounded(argv, env, timeout_s):
    """Runs a short command to completion (its session killed at the bound);
    returns (start_ns, end_ns, exit code or "killed")."""
    p = Proc(argv, env)
    p.wait(timeout_s)
    return p.t_start, p.t_exit, p.status


# --- Events from `tether up --json` -------------------------------------------


class Events:
    """Reads the NDJSON lines of a Proc started with lines=True. Each event
    gets "_t" (monotonic ns of the line's arrival) and "_mono" (its own
    time_ms, wall clock, turned into monotonic ns with the offset taken at
    start: ±1 ms, the event's own precision)."""

    def __init__(self, proc):
        self.proc = proc
        self.seen = []
        self.ended = False
        self.offset_ns = time.time_ns() - time.monotonic_ns()

    def next(self, deadline_ns):
        """The next event, or None at the deadline or the end of output."""
        while not self.ended:
            left = (deadline_ns - time.monotonic_ns()) / 1e9
            try:
                if left <= 0:
                    t, line = self.proc.lines.get_nowait()
                else:
                    t, line = self.proc.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self.ended = True
                return None
            try:
                event = json.loads(line)
            except ValueError:
                continue
            event["_t"] = t
            if "time_ms" in event:
                event["_mono"] = event["time_ms"] * 1_000_000 - self.offset_ns
            self.seen.append(event)
            return event
        return None

    def until(self, pred, timeout_s):
        """Reads events until one matches; returns it, or None at the bound."""
        deadline = time.monotonic_ns() + int(timeout_s * 1e9)
        while True:
            event = self.next(deadline)
            if event is None or pred(event):
                return event

    def drain(self):
        """Reads every event that has arrived, without waiting."""
        while self.next(0) is not None:
            pass


def tether_env(xdg, mark):
    env = dict(os.environ)
    env["XDG_RUNTIME_DIR"] = xdg
    env[MARK_VAR] = mark
    env.pop("TETHER_LOG", None)
    env["NO_COLOR"] = "1"
    return env


def clean_env():
    """The environment of helper commands (tether down, supervisorctl): no
    marker, so they never count as part of the stack."""
    env = dict(os.environ)
    env.pop(MARK_VAR, None)
    return env


def toml_str(s):
    return json.dumps(s)


def toml_argv(argv):
    return "[" + ", ".join(toml_str(a) for a in argv) + "]"


# --- supervisord ----------------------------------------------------------------


def supervisord_conf(tmp, programs, extra_supervisord=""):
    """A supervisord.conf in `tmp`: a unix control socket there, logs there,
    and one [program:NAME] per (name, argv, {key: value}) of `programs`.
    Returns its path."""
    sock = os.path.join(tmp, "supervisor.sock")
    lines = [
        "[unix_http_server]",
        f"file={sock}",
        "",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={os.path.join(tmp, 'supervisord.log')}",
        f"pidfile={os.path.join(tmp, 'supervisord.pid')}",
        f"childlogdir={tmp}",
        extra_supervisord,
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{sock}",
        "",
    ]
    for name, argv, keys in programs:
        lines.append(f"[program:{name}]")
        lines.append("command=" + " ".join(supervisor_quote(a) for a in argv))
        for k, v in keys.items():
            lines.append(f"{k}={v}")
        lines.append("")
    path = os.path.join(tmp, "supervisord.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def supervisor_quote(arg):
    """supervisord splits `command` with shlex; '%' starts its own
    expansions and must be doubled."""
    return shlex.quote(arg).replace("%", "%%")


def supervisorctl(args, conf, *words, timeout_s=30):
    return run_bounded([args.supervisorctl, "-c", conf, *words], timeout_s, env=clean_env())


def wait_supervisord_running(args, conf, count, timeout_s=30):
    """Polls `supervisorctl status` until `count` programs are RUNNING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = supervisorctl(args, conf, "status", timeout_s=10)
        if sum(1 for line in out.splitlines() if " RUNNING " in line) >= count:
            return True
        time.sleep(0.2)
    return False


# --- s6 -------------------------------------------------------------------------


class S6Stack:
    """An s6 supervision tree of our own: `s6-svscan SCANDIR` (a bounded
    child in a session of its own, the marker in its environment, which
    s6-supervise and every service inherit) over one service directory per
    (name, argv, {file: content}) of `services`. Each directory gets a `run`
    script (`#!/bin/sh` then `exec` the argv) and the extra files (s6's own
    knobs: notification-fd, timeout-kill, down, ...). s6-svscan is started
    without -t, so it never rescans on a timer."""

    def __init__(self, args, tmp, services, mark):
        self.args = args
        self.scandir = os.path.join(tmp, "scan")
        self.mark = mark
        self.tmp = tmp
        self.names = []
        os.mkdir(self.scandir)
        for name, argv, files in services:
            d = os.path.join(self.scandir, name)
            os.mkdir(d)
            with open(os.path.join(d, "run"), "w") as f:
                f.write("#!/bin/sh\nexec " + shlex.join(argv) + "\n")
            os.chmod(os.path.join(d, "run"), 0o755)
            for fname, content in files.items():
                with open(os.path.join(d, fname), "w") as f:
                    f.write(content)
            self.names.append(name)
        self.argv = [args.s6_svscan, self.scandir]
        self.proc = None

    def config(self):
        """The service directories as text, for the JSON record."""
        out = {}
        for name in self.names:
            d = os.path.join(self.scandir, name)
            out[name] = {f: open(os.path.join(d, f)).read() for f in sorted(os.listdir(d)) if os.path.isfile(os.path.join(d, f))}
        return out

    def start(self):
        env = dict(os.environ)
        env[MARK_VAR] = self.mark
        self.proc = Proc(
            self.argv, env, stdout=os.path.join(self.tmp, "stdout"), stderr=os.path.join(self.tmp, "stderr")
        )
        return self.proc

    def dir(self, name):
        return os.path.join(self.scandir, name)

    def svc(self, name, *flags, timeout_s=10):
        """`s6-svc FLAGS SERVICEDIR`; returns its exit code (or "killed")."""
        return bounded([s6_tool(self.args, "s6-svc"), *flags, self.dir(name)], clean_env(), timeout_s)[2]

    def pid(self, name):
        """The service's pid as s6-svstat says it, or None."""
        out = run_bounded([s6_tool(self.args, "s6-svstat"), "-p", self.dir(name)], 5, env=clean_env()).strip()
        try:
            pid = int(out)
        except ValueError:
            return None
        return pid if pid > 0 else None

    def supervisor_pids(self):
        """s6-svscan and every s6-supervise of this tree."""
        return {pid for pid, (_, comm) in marked(self.mark).items() if comm.startswith("s6-")}

    def stop(self, timeout_s=20):
        """s6-svscanctl -t (every service down, every s6-supervise out,
        s6-svscan exits); the session killed at the bound. Returns whether
        s6-svscan exited by itself."""
        if self.proc is None:
            return True
        if self.proc.running():
            bounded([s6_tool(self.args, "s6-svscanctl"), "-t", self.scandir], clean_env(), 10)
        return self.proc.wait(timeout_s)


# --- pm2 ------------------------------------------------------------------------


class Pm2Stack:
    """pm2 with a PM2_HOME of its own in `tmp` (never ~/.pm2): its daemon
    (the "God" process) is started by the first `pm2 start` and detaches
    into a session of its own, so it is found through PM2_HOME/pm2.pid and
    the marker, and `stop()` ends it with `pm2 kill`, then by the marker.
    `apps` are pm2 app declarations (dicts: name, script, args, ...), written
    to one process file."""

    def __init__(self, args, tmp, apps, mark):
        self.args = args
        self.home = os.path.join(tmp, "pm2-home")
        os.mkdir(self.home)
        self.mark = mark
        self.file = os.path.join(tmp, "apps.json")
        with open(self.file, "w") as f:
            json.dump({"apps": apps}, f, indent=2)
        self.env = dict(os.environ)
        self.env["PM2_HOME"] = self.home
        self.env[MARK_VAR] = self.mark
        self.started = False

    def config(self):
        return open(self.file).read()

    def cli(self, *words, timeout_s=60, marked_env=False):
        """A pm2 command against this PM2_HOME; returns (start, end, code).
        Only the command that starts the daemon carries the marker."""
        env = self.env if marked_env else self.cli_env()
        return bounded([self.args.pm2, *words], env, timeout_s)

    def cli_env(self):
        env = clean_env()
        env["PM2_HOME"] = self.home
        return env

    def start(self):
        """`pm2 start FILE`: the daemon starts and runs every app."""
        self.started = True
        return self.cli("start", self.file, marked_env=True)

    def daemon_pid(self):
        try:
            with open(os.path.join(self.home, "pm2.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def jlist(self):
        """`pm2 jlist`, parsed ([] when it fails)."""
        out = run_bounded([self.args.pm2, "jlist"], 30, env=self.cli_env())
        try:
            start = out.index("[")
            return json.loads(out[start:])
        except ValueError:
            return []

    def supervisor_pids(self):
        pid = self.daemon_pid()
        return {pid} if pid else set()

    def stop(self):
        """`pm2 kill` (its apps and its daemon), then whatever still carries
        the daemon's pid. Returns whether the daemon is gone."""
        if not self.started:
            return True
        pid = self.daemon_pid()
        self.cli("kill", timeout_s=30)
        if not pid:
            return True
        # `pm2 kill` may return a moment before its daemon is gone: give it
        # 5 s, seen through a pidfd.
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return True
        try:
            gone = bool(select.select([fd], [], [], 5)[0])
        finally:
            os.close(fd)
        if gone or not pid_alive(pid):
            return True
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return False


def pid_alive(pid):
    """Running (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


# --- Processes of a stack -------------------------------------------------------


def marked(mark, exclude=()):
    """The running processes (not zombies) whose environment holds
    MARK_VAR=mark, as {pid: (state, comm)}."""
    needle = f"{MARK_VAR}={mark}".encode()
    found = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == me or pid in exclude:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle not in env:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0].decode()
        if state in ("Z", "X"):
            continue
        comm = stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode("utf-8", "replace")
        found[pid] = (state, comm)
    return found


def describe(procs):
    """"3 sleep, 1 sh" for a marked() result."""
    counts = {}
    for _, comm in procs.values():
        counts[comm] = counts.get(comm, 0) + 1
    return ", ".join(f"{n} {c}" for c, n in sorted(counts.items())) or "none"


def reap_adopted():
    """Reaps every child that has exited (orphans adopted by this subreaper
    included); never blocks."""
    n = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return n
        if not pid:
            return n
        n += 1


def kill_marked(mark, bound_s=5.0):
    """SIGKILLs every process carrying the mark until none is left (bounded);
    reaps what this process adopted. Returns what was found the first time
    (empty: nothing was left behind)."""
    first = marked(mark)
    deadline = time.monotonic() + bound_s
    left = first
    while left and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
        reap_adopted()
        left = marked(mark)
    reap_adopted()
    if left:
        print(f"warning: could not kill marked processes: {sorted(left)}", file=sys.stderr)
    return first


# --- CPU and memory of one process ----------------------------------------------


def cpu_ticks(pid):
    """utime + stime of the whole process (live and exited threads), in
    clock ticks, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def cpu_ns_threads(pid):
    """Time on CPU of the live threads, in ns, from /proc/PID/task/*/schedstat
    (exact, but misses threads that have exited)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def status_kb(pid, key):
    """A kB field of /proc/PID/status (VmRSS, VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def thread_counters(pid):
    """{tid: (run time ns from schedstat, voluntary + involuntary context
    switches)} of every live thread of `pid`. Threads come and go (a
    runtime's idle blocking threads exit), so a window's change is taken
    per thread: see counters_delta()."""
    out = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            ctx = 0
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        ctx += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[f"{pid}/{tid}"] = (ns, ctx)
    return out


def counters_delta(samples):
    """The change over a list of thread_counters() samples, per thread: from
    its first sample (or from 0 if it was born after the first) to its last.
    What a thread did between its last sample and its exit is missed, so
    sample often. Returns (ns, context switches)."""
    if not samples:
        return 0, 0
    first, last = {}, {}
    for sample in samples:
        for tid, v in sample.items():
            first.setdefault(tid, v)
            last[tid] = v
    born_before = samples[0]
    ns = ctx = 0
    for tid, (lns, lctx) in last.items():
        fns, fctx = born_before.get(tid, (0, 0))
        ns += lns - fns
        ctx += lctx - fctx
    return ns, ctx


def pss_kb(pid):
    """Proportional set size (shared pages split among their users) from
    /proc/PID/smaps_rollup, or None."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def ctx_switches(pid):
    """Voluntary + involuntary context switches of every live thread: how
    often the process was woken (or preempted)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def threads(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def print_header(title, m, extra=()):
    print(f"## {title}\n")
    print(f"Command: `{command_line()}`\n")
    print(b.context_line(m))
    for line in extra:
        print(line)
    print()
