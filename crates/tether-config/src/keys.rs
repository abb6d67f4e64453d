//! The one declared table of `tether.toml` keys.
//!
//! [`KEYS`] drives the unknown-key check (and its "did you mean"), the type
//! check of every value, the required-key check, and the generated reference
//! `docs/config.md` ([`reference_markdown`]). A key that is not in the table
//! does not exist; a key in the table that the reader does not handle is a
//! bug that the tests catch (every key's `example` is loaded).

use std::fmt::Write as _;

/// One key of `tether.toml`.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    /// Where the key may be written.
    pub scopes: &'static [Scope],
    pub ty: Type,
    pub default: DefaultValue,
    /// A value as written in TOML, shown in the reference and loaded by the
    /// tests; empty for the section keys (`defaults`, `services`, ...).
    pub example: &'static str,
    pub doc: &'static str,
}

/// A table of `tether.toml` that holds keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The top of the file.
    Top,
    /// `[defaults]`: defaults for every service.
    Defaults,
    /// `[services.NAME]`.
    Service,
    /// The table form of `ready` and `live`.
    Probe,
    /// The `crash_loop` table.
    CrashLoop,
    /// `[status]`.
    Status,
    /// `[[hooks]]`.
    Hook,
    /// `[proxies.NAME]`.
    Proxy,
    /// The table form of one of `sockets`.
    Socket,
    /// `[registry]`.
    Registry,
}

/// What a key's value must be. Values are checked against it before they are
/// read; the words of [`Type::expected`] appear in the errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    String,
    /// A name: letters, digits, `-`, `_` and `.`, starting with a letter or
    /// digit.
    Name,
    /// A path, relative to the config file's directory.
    Path,
    /// A positive duration (`"500ms"`, `"10s"`, `"1m30s"`).
    Duration,
    /// A duration that may be zero.
    DurationOrZero,
    /// An integer of at least 1.
    Count,
    /// A signal name or number.
    Signal,
    Restart,
    /// An argv: an array of strings, the first a program that exists.
    Command,
    /// A table of variables.
    Env,
    DependsOn,
    /// A target, `"notify"`, or a [`Scope::Probe`] table.
    Probe,
    /// A [`Scope::CrashLoop`] table.
    CrashLoop,
    /// A socket address, or `false`.
    Listen,
    /// `true` or `false`.
    Bool,
    /// An array of listen addresses or [`Scope::Socket`] tables.
    Sockets,
    /// A table of its own keys (`[defaults]`, `[status]`, `[services]`).
    Table,
    /// An array of tables (`[[hooks]]`).
    Tables,
}

/// A key's default, as the reference shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// The key must be given.
    Required,
    /// A TOML value, equal to the built-in default (a test checks it).
    Value(&'static str),
    /// Said in words: the default is not a fixed value, or there is none.
    Described(&'static str),
}

/// Where the keys of `[defaults]` and `[services.NAME]` may both be written.
const INHERITED: &[Scope] = &[Scope::Defaults, Scope::Service];

/// Every key of `tether.toml`.
pub static KEYS: &[Key] = &[
    // --- top level ---
    Key {
        name: "name",
        scopes: &[Scope::Top],
        ty: Type::Name,
        default: DefaultValue::Described(
            "the config file's directory name (other characters than letters, digits, `-`, `_` \
             and `.` become `-`)",
        ),
        example: r#""shop""#,
        doc: "Names the stack: its control socket, heartbeat directory and logs. Letters, \
              digits, `-`, `_` and `.`, starting with a letter or digit.",
    },
    Key {
        name: "defaults",
        scopes: &[Scope::Top],
        ty: Type::Table,
        default: DefaultValue::Described("tether's built-in defaults"),
        example: "",
        doc: "Defaults for every service: see [`[defaults]`](#defaults).",
    },
    Key {
        name: "services",
        scopes: &[Scope::Top],
        ty: Type::Table,
        default: DefaultValue::Described("none; at least one service is required"),
        example: "",
        doc: "The services, one table each, in the order they are listed: see \
              [`[services.NAME]`](#servicesname).",
    },
    Key {
        name: "status",
        scopes: &[Scope::Top],
        ty: Type::Table,
        default: DefaultValue::Described("a status server on 127.0.0.1:7465"),
        example: "",
        doc: "The status server: see [`[status]`](#status).",
    },
    Key {
        name: "hooks",
        scopes: &[Scope::Top],
        ty: Type::Tables,
        default: DefaultValue::Described("none"),
        example: "",
        doc: "Helper processes that follow the stack's events: see [`[[hooks]]`](#hooks).",
    },
    Key {
        name: "proxies",
        scopes: &[Scope::Top],
        ty: Type::Table,
        default: DefaultValue::Described("none"),
        example: "",
        doc: "Always-up proxies in front of services: see [`[proxies.NAME]`](#proxiesname).",
    },
    Key {
        name: "registry",
        scopes: &[Scope::Top],
        ty: Type::Table,
        default: DefaultValue::Described("no registration"),
        example: "",
        doc: "Register the services that have an `endpoint` while they are ready: see \
              [`[registry]`](#registry).",
    },
    Key {
        name: "max_proxy_connections",
        scopes: &[Scope::Top],
        ty: Type::Count,
        default: DefaultValue::Value("4096"),
        example: "10000",
        doc: "Client connections of all the stack's proxies together (relayed, connecting and \
              waiting); a client over it is refused at once, logged and counted \
              (`limit.all`). Each relayed connection holds two descriptors.",
    },
    // --- [defaults] and [services.NAME] ---
    Key {
        name: "restart",
        scopes: INHERITED,
        ty: Type::Restart,
        default: DefaultValue::Value(r#""on-failure""#),
        example: r#""always""#,
        doc: "When a service that ended is started again: `\"no\"` never; `\"on-failure\"` \
              after a non-zero exit, a signal, a failed liveness probe, a missed start \
              deadline or watchdog; `\"always\"` whenever it ends, even with status 0.",
    },
    Key {
        name: "stop_signal",
        scopes: INHERITED,
        ty: Type::Signal,
        default: DefaultValue::Value(r#""SIGTERM""#),
        example: r#""SIGINT""#,
        doc: "The signal sent to the service's whole process group to stop it: a name \
              (`\"SIGTERM\"`, `\"TERM\"`) or a number (`15`). It must be one that ends a \
              process: SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGCONT, SIGCHLD, SIGWINCH and \
              SIGURG are refused.",
    },
    Key {
        name: "stop_grace",
        scopes: INHERITED,
        ty: Type::DurationOrZero,
        default: DefaultValue::Value(r#""10s""#),
        example: r#""30s""#,
        doc: "After the stop signal, how long the service may take to exit before SIGKILL goes \
              to its whole process group. `\"0s\"` kills at once.",
    },
    Key {
        name: "start_deadline",
        scopes: INHERITED,
        ty: Type::Duration,
        default: DefaultValue::Value(r#""60s""#),
        example: r#""2m""#,
        doc: "A start that is not ready this long after the spawn has failed. Time the machine \
              stood still (a paused VM, tether stopped) is not counted; sleep is not either.",
    },
    Key {
        name: "restart_delay",
        scopes: INHERITED,
        ty: Type::Duration,
        default: DefaultValue::Value(r#""100ms""#),
        example: r#""1s""#,
        doc: "The delay before the first restart; each further restart doubles it (±20 % \
              jitter) up to `restart_delay_max`.",
    },
    Key {
        name: "restart_delay_max",
        scopes: INHERITED,
        ty: Type::Duration,
        default: DefaultValue::Value(r#""10s""#),
        example: r#""30s""#,
        doc: "The longest delay before a restart; at least `restart_delay`.",
    },
    Key {
        name: "stable_after",
        scopes: INHERITED,
        ty: Type::Duration,
        default: DefaultValue::Value(r#""10s""#),
        example: r#""1m""#,
        doc: "A run this long counts as stable: when it ends, the restart delay starts over \
              from `restart_delay`, and the crash-loop count starts over too (only exits \
              that come after short runs add up to a crash loop).",
    },
    Key {
        name: "crash_loop",
        scopes: INHERITED,
        ty: Type::CrashLoop,
        default: DefaultValue::Value(r#"{ exits = 5, window = "60s" }"#),
        example: r#"{ exits = 3, window = "30s" }"#,
        doc: "`exits` ends within `window` mark the service `failed`: it is not restarted \
              again, and the reason is shown. An exit after a stable run (see `stable_after`) \
              starts the count over, so a service that crashes now and then after running \
              fine is restarted for ever, and one that crashes at once is not. A key left \
              out of the table takes its built-in default.",
    },
    Key {
        name: "probe_interval",
        scopes: INHERITED,
        ty: Type::Duration,
        default: DefaultValue::Value(r#""2s""#),
        example: r#""5s""#,
        doc: "How often `ready` and `live` probes run once their answer is settled. While the \
              answer is in doubt (starting, or a streak under way) they run every 250 ms, or \
              every `probe_interval` if that is shorter; while a service stays down they back \
              off from `probe_interval` up to 30 s, or stay at `probe_interval` if that is \
              longer.",
    },
    Key {
        name: "probe_timeout",
        scopes: INHERITED,
        ty: Type::Duration,
        default: DefaultValue::Value(r#""1s""#),
        example: r#""3s""#,
        doc: "How long one probe may take.",
    },
    Key {
        name: "probe_rise",
        scopes: INHERITED,
        ty: Type::Count,
        default: DefaultValue::Value("2"),
        example: "1",
        doc: "Successes in a row that bring an unhealthy service back. At startup one success \
              marks a service ready.",
    },
    Key {
        name: "probe_fall",
        scopes: INHERITED,
        ty: Type::Count,
        default: DefaultValue::Value("3"),
        example: "5",
        doc: "Failures in a row that make a healthy service unhealthy; for a `live` probe, \
              that restarts it.",
    },
    Key {
        name: "log_dir",
        scopes: INHERITED,
        ty: Type::Path,
        default: DefaultValue::Described("none: output goes only to tether's own output"),
        example: r#""logs""#,
        doc: "Each service's output also goes to `LOG_DIR/NAME.log`. Relative to the config \
              file's directory. A service's `log_file` wins.",
    },
    // --- [services.NAME] (and [[hooks]]) ---
    Key {
        name: "command",
        scopes: &[Scope::Service, Scope::Hook],
        ty: Type::Command,
        default: DefaultValue::Required,
        example: r#"["python3", "app.py"]"#,
        doc: "The program and its arguments, as an array: never run through a shell. A \
              program with a `/` is relative to the config file's directory; one without is \
              looked up in `PATH`. It must exist and be executable when the file is loaded. \
              No argument may hold a NUL byte or pass 128 KiB, and `command`, `pre_start` and \
              `env` together may not pass 1 MiB: the kernel would refuse to run the program.",
    },
    Key {
        name: "env",
        scopes: &[Scope::Service, Scope::Hook],
        ty: Type::Env,
        default: DefaultValue::Described("none"),
        example: r#"{ PORT = "8081", DEBUG = true }"#,
        doc: "Variables added to tether's own environment; they win over `env_file`. Values \
              are strings; integers and booleans are taken as written. A name may not be \
              empty or hold `=`, nothing may hold a NUL byte, and each `NAME=value` (from \
              `env_file` too) is at most 128 KiB.",
    },
    Key {
        name: "env_file",
        scopes: &[Scope::Service],
        ty: Type::Path,
        default: DefaultValue::Described("none"),
        example: r#"".env""#,
        doc: "A file of `KEY=VALUE` lines added to the environment before `env`. Blank lines \
              and `#` comments are skipped, an `export ` prefix is allowed, and a value may \
              be in single quotes (taken as is) or double quotes (with `\\n`, `\\t`, `\\\"`, \
              `\\$` and `\\\\` escapes); an unquoted value ends at ` #`. Relative to the \
              config file's directory; read when the file is loaded.",
    },
    Key {
        name: "cwd",
        scopes: &[Scope::Service, Scope::Hook],
        ty: Type::Path,
        default: DefaultValue::Described("the config file's directory"),
        example: r#""db""#,
        doc: "The working directory, relative to the config file's directory. It must exist.",
    },
    Key {
        name: "pre_start",
        scopes: &[Scope::Service],
        ty: Type::Command,
        default: DefaultValue::Described("none"),
        example: r#"["rm", "-f", "/tmp/db.sock"]"#,
        doc: "A command run to completion before every start, written like `command`: for \
              example `[\"docker\", \"rm\", \"-f\", \"db\"]` before \
              `command = [\"docker\", \"run\", \"--rm\", \"--name\", \"db\", ...]`.",
    },
    Key {
        name: "depends_on",
        scopes: &[Scope::Service],
        ty: Type::DependsOn,
        default: DefaultValue::Described("none"),
        example: r#"{ db = "ready", migrate = "completed_successfully", cache = "started" }"#,
        doc: "Services that must reach a condition before this one starts: a list of names \
              (each must be ready), or a table of `NAME = CONDITION` with `\"started\"` (its \
              process was spawned), `\"ready\"` (its `ready` check passed) or \
              `\"completed_successfully\"` (it ran to completion with status 0). Only a \
              service with a `ready` check can be depended on as `\"ready\"`, and only one \
              that is not restarted `\"always\"` as `\"completed_successfully\"`. Cycles are \
              rejected.",
    },
    Key {
        name: "ready",
        scopes: &[Scope::Service],
        ty: Type::Probe,
        default: DefaultValue::Described("none: ready once spawned"),
        example: r#""http://127.0.0.1:8081/health""#,
        doc: "How the service shows it is ready: any `tether wait` target (`tcp://HOST:PORT`, \
              `http://...`, `unix:PATH`, `file:PATH`, `exec:COMMAND`, `mcp+http://...`), \
              `\"notify\"` (the service sends `READY=1` on `$NOTIFY_SOCKET`, as with systemd's \
              sd_notify), or a [table](#ready-and-live-as-tables) with its own pacing. \
              Relative paths in `file:` and `unix:` targets, and an `exec:` program with a \
              `/`, are relative to the config file's directory.",
    },
    Key {
        name: "live",
        scopes: &[Scope::Service],
        ty: Type::Probe,
        default: DefaultValue::Described("none"),
        example: r#""tcp://127.0.0.1:8081""#,
        doc: "A liveness probe: after `probe_fall` failures in a row the service is restarted. \
              A target or a table, as for `ready` (but not `\"notify\"`: use `watchdog`).",
    },
    Key {
        name: "watchdog",
        scopes: &[Scope::Service],
        ty: Type::Duration,
        default: DefaultValue::Described("none"),
        example: r#""10s""#,
        doc: "Only with `ready = \"notify\"`: the service must send `WATCHDOG=1` at least this \
              often, or it is restarted.",
    },
    Key {
        name: "log_file",
        scopes: &[Scope::Service],
        ty: Type::Path,
        default: DefaultValue::Described("`LOG_DIR/NAME.log` when `log_dir` is set, else none"),
        example: r#""db.log""#,
        doc: "Also append the service's output to this file. Relative to the config file's \
              directory.",
    },
    Key {
        name: "sockets",
        scopes: &[Scope::Service],
        ty: Type::Sockets,
        default: DefaultValue::Described("none"),
        example: r#"["tcp://127.0.0.1:8080", "unix:///run/user/1000/app.sock"]"#,
        doc: "Socket activation: listening sockets that tether binds before any service of the \
              stack starts and keeps open for the stack's whole life, so a client that \
              connects while the service restarts waits in the kernel's backlog instead of \
              being refused. Every run of `command` (not `pre_start`) gets them as descriptors \
              3, 4, ... \
              in this order, with `LISTEN_FDS` (how many), `LISTEN_PID` (its own pid) and \
              `LISTEN_FDNAMES` (their names, `:`-separated) in its environment, as with \
              systemd's `sd_listen_fds`; in Python, `socket.socket(fileno=3)`. The sockets \
              are blocking, with a backlog of 1024; the runs share them, so a flag that one run \
              sets (such as `O_NONBLOCK`) stays for the next. Each is `tcp://IP:PORT` (port 0 picks \
              one, which `tether up` and `tether ps` show), `unix:///PATH` (or `unix:PATH`, relative to the \
              config file's directory; made mode 0600 in a directory of the user's own, a \
              stale socket file of the user's replaced, removed at the end) or `unix:@NAME` \
              (abstract), or a [table](#sockets-as-tables). A TCP address beyond loopback \
              needs the table form with `public = true`. No socket may be given twice, to one \
              service or two. An address in use, or any other bind error, is reported before \
              anything starts. A `tcp://` or `unix:` readiness check of such a socket passes \
              as soon as tether has bound it: give the service a check it answers itself \
              (`http://...`, `notify`) to wait for the program.",
    },
    Key {
        name: "endpoint",
        scopes: &[Scope::Service],
        ty: Type::String,
        default: DefaultValue::Described("none: not registered"),
        example: r#""http://127.0.0.1:8080/mcp""#,
        doc: "Where others reach the service, as a URL: with a `[registry]`, the service is \
              registered there at this endpoint while it is ready.",
    },
    // --- ready = { ... } and live = { ... } ---
    Key {
        name: "target",
        scopes: &[Scope::Probe],
        ty: Type::String,
        default: DefaultValue::Required,
        example: r#""http://127.0.0.1:8081/health""#,
        doc: "What to probe: a target, as in the short form.",
    },
    Key {
        name: "interval",
        scopes: &[Scope::Probe],
        ty: Type::Duration,
        default: DefaultValue::Described("the service's `probe_interval`"),
        example: r#""500ms""#,
        doc: "This probe's `probe_interval`.",
    },
    Key {
        name: "timeout",
        scopes: &[Scope::Probe],
        ty: Type::Duration,
        default: DefaultValue::Described("the service's `probe_timeout`"),
        example: r#""2s""#,
        doc: "This probe's `probe_timeout`.",
    },
    Key {
        name: "rise",
        scopes: &[Scope::Probe],
        ty: Type::Count,
        default: DefaultValue::Described("the service's `probe_rise`"),
        example: "1",
        doc: "This probe's `probe_rise`.",
    },
    Key {
        name: "fall",
        scopes: &[Scope::Probe],
        ty: Type::Count,
        default: DefaultValue::Described("the service's `probe_fall`"),
        example: "2",
        doc: "This probe's `probe_fall`.",
    },
    // --- crash_loop = { ... } ---
    Key {
        name: "exits",
        scopes: &[Scope::CrashLoop],
        ty: Type::Count,
        default: DefaultValue::Value("5"),
        example: "3",
        doc: "How many ends of the service make a crash loop.",
    },
    Key {
        name: "window",
        scopes: &[Scope::CrashLoop],
        ty: Type::Duration,
        default: DefaultValue::Value(r#""60s""#),
        example: r#""30s""#,
        doc: "The time within which `exits` ends make a crash loop.",
    },
    // --- [status] ---
    Key {
        name: "listen",
        scopes: &[Scope::Status],
        ty: Type::Listen,
        default: DefaultValue::Value(r#""127.0.0.1:7465""#),
        example: r#""127.0.0.1:8000""#,
        doc: "Where the status server listens (`IP:PORT`); `false` turns it off.",
    },
    // --- [registry] ---
    Key {
        name: "url",
        scopes: &[Scope::Registry],
        ty: Type::String,
        default: DefaultValue::Described(
            "the file registry, `$XDG_RUNTIME_DIR/tether/registry` (else `/tmp/tether-UID/registry`)",
        ),
        example: r#""etcd://127.0.0.1:2379/tether?ttl=10s""#,
        doc: "Where to register: `file:///DIR`, or \
              `etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?ttl=DURATION]` (TTL 10 s unless given, \
              2 s to 1 h).",
    },
    Key {
        name: "meta",
        scopes: &[Scope::Registry],
        ty: Type::Env,
        default: DefaultValue::Described("none"),
        example: r#"{ team = "payments" }"#,
        doc: "Metadata added to every record, besides `stack` and `service`, which tether adds.",
    },
    // --- [proxies.NAME] ---
    Key {
        name: "listen",
        scopes: &[Scope::Proxy],
        ty: Type::String,
        default: DefaultValue::Required,
        example: r#""tcp://127.0.0.1:9080""#,
        doc: "Where clients connect: `tcp://IP:PORT` (loopback unless `public = true`), \
              `unix:///PATH` (in a directory of yours; the socket is made 0600) or \
              `unix:@NAME` (abstract). Bound before any service starts.",
    },
    Key {
        name: "upstream",
        scopes: &[Scope::Proxy],
        ty: Type::String,
        default: DefaultValue::Required,
        example: r#""service:db""#,
        doc: "Where clients are relayed: `tcp://HOST:PORT`, `unix:///PATH`, or \
              `service:NAME`, a service of this stack. With `service:`, the proxy lets \
              clients through while the supervisor says the service is ready (no polling), \
              and relays to `address`, or else to the address of the service's `ready` \
              check (`tcp://`, `unix://`, or the host and port of an `http://` check). \
              With `registry:NAME`, it relays to the newest instance of NAME registered in \
              `$TETHER_REGISTRY` (else the file registry), followed wherever it moves, and \
              lets clients through while one is registered.",
    },
    Key {
        name: "address",
        scopes: &[Scope::Proxy],
        ty: Type::String,
        default: DefaultValue::Described("the address of the service's `ready` check"),
        example: r#""tcp://127.0.0.1:8081""#,
        doc: "With `upstream = \"service:NAME\"`: the address to relay to \
              (`tcp://HOST:PORT` or `unix:///PATH`).",
    },
    Key {
        name: "ready",
        scopes: &[Scope::Proxy],
        ty: Type::String,
        default: DefaultValue::Described("a connect to `upstream`"),
        example: r#""http://127.0.0.1:8081/health""#,
        doc: "With a `tcp://` or `unix://` upstream: its readiness check, any `tether wait` \
              target. Probed fast while clients wait, every 2 s while ready.",
    },
    Key {
        name: "public",
        scopes: &[Scope::Proxy],
        ty: Type::Bool,
        default: DefaultValue::Value("false"),
        example: "true",
        doc: "Allow a TCP `listen` address beyond loopback (`0.0.0.0`, a LAN address).",
    },
    Key {
        name: "pending_timeout",
        scopes: &[Scope::Proxy],
        ty: Type::Duration,
        default: DefaultValue::Value(r#""30s""#),
        example: r#""10s""#,
        doc: "How long a client may wait for the upstream; then it is closed, and the cause \
              logged and counted (`pending.timeout`). Time the proxy stood still (a paused \
              VM, tether stopped) is not counted.",
    },
    Key {
        name: "fail_fast_after",
        scopes: &[Scope::Proxy],
        ty: Type::Duration,
        default: DefaultValue::Described("none: clients are always held"),
        example: r#""5s""#,
        doc: "Once the upstream has been down this long, new clients are refused at once \
              (`upstream.down`) until it is back.",
    },
    Key {
        name: "max_connections",
        scopes: &[Scope::Proxy],
        ty: Type::Count,
        default: DefaultValue::Value("1024"),
        example: "64",
        doc: "Clients of this proxy at once (relayed, connecting and waiting); one over it \
              is refused at once (`limit.connections`).",
    },
    Key {
        name: "max_pending",
        scopes: &[Scope::Proxy],
        ty: Type::Count,
        default: DefaultValue::Value("256"),
        example: "16",
        doc: "Clients waiting for the upstream at once; one over it is refused at once \
              (`limit.pending`).",
    },
    Key {
        name: "idle_timeout",
        scopes: &[Scope::Proxy],
        ty: Type::Duration,
        default: DefaultValue::Value(r#""1h""#),
        example: r#""5m""#,
        doc: "A connection on which nothing moved either way this long is closed \
              (`idle.timeout`). Time the proxy stood still (a paused VM, tether stopped) is \
              not counted.",
    },
    // --- sockets = [{ ... }] ---
    Key {
        name: "address",
        scopes: &[Scope::Socket],
        ty: Type::String,
        default: DefaultValue::Required,
        example: r#""tcp://0.0.0.0:8080""#,
        doc: "Where the socket listens, as in the short form.",
    },
    Key {
        name: "name",
        scopes: &[Scope::Socket],
        ty: Type::Name,
        default: DefaultValue::Described("the service's name"),
        example: r#""web""#,
        doc: "Its name in `LISTEN_FDNAMES`: letters, digits, `-`, `_` and `.`.",
    },
    Key {
        name: "public",
        scopes: &[Scope::Socket],
        ty: Type::Bool,
        default: DefaultValue::Value("false"),
        example: "true",
        doc: "Allows a TCP address beyond loopback (`0.0.0.0`, a LAN address): reachable \
              from other machines, so it must be said.",
    },
    // --- [[hooks]] ---
    Key {
        name: "name",
        scopes: &[Scope::Hook],
        ty: Type::Name,
        default: DefaultValue::Described("`hook-1`, `hook-2`, ... in file order"),
        example: r#""notifier""#,
        doc: "Names the hook in logs and events; unique among hooks.",
    },
];

/// The sections of the reference, in order.
const SECTIONS: &[(Scope, &str, &str)] = &[
    (Scope::Top, "Top level", ""),
    (
        Scope::Defaults,
        "`[defaults]`",
        "Every key here is a default for every service, and any of them may also be set in \
         one service's table, where it wins.",
    ),
    (
        Scope::Service,
        "`[services.NAME]`",
        "One table per service. `NAME` uses letters, digits, `-`, `_` and `.`, starting with a \
         letter or digit. Services start in dependency order and are listed in file order. \
         Besides every key of [`[defaults]`](#defaults):",
    ),
    (
        Scope::Probe,
        "`ready` and `live` as tables",
        "`ready = { target = \"http://127.0.0.1:8081/health\", interval = \"1s\" }`: a probe \
         with its own pacing. What is left out comes from the service (and `[defaults]`).",
    ),
    (
        Scope::CrashLoop,
        "`crash_loop`",
        "`crash_loop = { exits = 5, window = \"60s\" }`",
    ),
    (
        Scope::Socket,
        "`sockets` as tables",
        "`sockets = [{ address = \"tcp://0.0.0.0:8080\", public = true, name = \"web\" }]`: \
         a socket with its own settings; short forms and tables may be mixed in one array.",
    ),
    (Scope::Status, "`[status]`", ""),
    (
        Scope::Registry,
        "`[registry]`",
        "Announces the stack's services to others: every service with an `endpoint` is \
         registered (name: the service's, with `stack` and `service` in its metadata) each \
         time it becomes ready, and removed as soon as it is not. `tether ls` lists them; \
         `registry:NAME` finds them. An empty `[registry]` uses the file registry. The state \
         of each registration (`registered`, `retrying`, `lost`, `unregistered`) shows in \
         `tether ps`, the status server and `--json`.",
    ),
    (
        Scope::Hook,
        "`[[hooks]]`",
        "Long-running helper processes: each gets every lifecycle event as a JSON line on \
         stdin, and may answer commands (`{\"restart\":\"NAME\"}`, `stop`, `start`) as JSON \
         lines on stdout. A hook is restarted when it ends.",
    ),
    (
        Scope::Proxy,
        "`[proxies.NAME]`",
        "An always-up proxy (TCP or Unix): a client that arrives while the upstream is down \
         or restarting is accepted and held until it is ready, then relayed byte for byte \
         (spliced where the kernel allows). Bytes are never parsed. Limits refuse the \
         excess at once; TCP keepalive and a 30 s `TCP_USER_TIMEOUT` on both sides find a \
         vanished peer; a circuit breaker keeps a flapping upstream from being hammered.",
    ),
];

const INTRO: &str = "\
`tether up` reads `tether.toml` (or the file given with `-f`). Every mistake is reported \
before anything starts, as one line with the file, line, column and key:

```text
tether.toml:12:1: services.web.comand: unknown key; did you mean 'command'?
```

A small stack:

```toml
[defaults]
stop_grace = \"5s\"

[services.db]
command = [\"python3\", \"db.py\", \"--port\", \"8081\"]
ready = \"tcp://127.0.0.1:8081\"

[services.api]
command = [\"python3\", \"api.py\"]
depends_on = [\"db\"]
ready = \"http://127.0.0.1:8080/health\"
```

Durations are strings such as `\"500ms\"`, `\"10s\"` or `\"1m30s\"` (a plain `\"2.5\"` is seconds). \
Relative paths are relative to the config file's directory, never to where `tether` runs. \
Programs, working directories and env files are checked when the file is loaded.

";

// === impl Key ===

impl Key {
    pub fn applies_to(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

// === impl Scope ===

impl Scope {
    /// How the reference and the errors name the table.
    pub fn table(self) -> &'static str {
        match self {
            Scope::Top => "the top level",
            Scope::Defaults => "[defaults]",
            Scope::Service => "[services.NAME]",
            Scope::Probe => "a ready or live table",
            Scope::CrashLoop => "crash_loop",
            Scope::Status => "[status]",
            Scope::Hook => "[[hooks]]",
            Scope::Proxy => "[proxies.NAME]",
            Scope::Socket => "a sockets table",
            Scope::Registry => "[registry]",
        }
    }
}

// === impl Type ===

impl Type {
    /// The type as the reference names it.
    pub fn name(self) -> &'static str {
        match self {
            Type::String => "string",
            Type::Name => "name",
            Type::Path => "path",
            Type::Duration | Type::DurationOrZero => "duration",
            Type::Count => "integer ≥ 1",
            Type::Signal => "signal name or number",
            Type::Restart => "`\"no\"`, `\"on-failure\"` or `\"always\"`",
            Type::Command => "array of strings",
            Type::Env => "table of strings",
            Type::DependsOn => "array of names, or table of conditions",
            Type::Probe => "target, `\"notify\"` or table",
            Type::CrashLoop => "table",
            Type::Listen => "address or `false`",
            Type::Bool => "`true` or `false`",
            Type::Sockets => "array of addresses or tables",
            Type::Table => "table",
            Type::Tables => "array of tables",
        }
    }

    /// What a value of this type looks like, for errors: "expected {this},
    /// found ...".
    pub fn expected(self) -> &'static str {
        match self {
            Type::String | Type::Name => "a string",
            Type::Path => "a path (a string)",
            Type::Duration | Type::DurationOrZero => "a duration such as \"10s\"",
            Type::Count => "a positive integer such as 3",
            Type::Signal => "a signal such as \"SIGTERM\" or 15",
            Type::Restart => "one of \"no\", \"on-failure\" or \"always\"",
            Type::Command => "an array of strings",
            Type::Env => "a table of strings such as { PORT = \"8081\" }",
            Type::DependsOn => "an array of service names or a table such as { db = \"ready\" }",
            Type::Probe => {
                "a target such as \"tcp://127.0.0.1:8080\", \"notify\", or a table such as \
                 { target = \"tcp://127.0.0.1:8080\" }"
            }
            Type::CrashLoop => "a table such as { exits = 5, window = \"60s\" }",
            Type::Listen => "an address such as \"127.0.0.1:7465\", or false",
            Type::Bool => "true or false",
            Type::Sockets => {
                "an array of addresses such as [\"tcp://127.0.0.1:8080\"], or of tables such as \
                 { address = \"tcp://0.0.0.0:8080\", public = true }"
            }
            Type::Table => "a table",
            Type::Tables => "an array of tables",
        }
    }
}

/// The key `name` of `scope`.
pub(crate) fn lookup(scope: Scope, name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name && k.applies_to(scope))
}

/// The keys of `scope`.
pub(crate) fn keys_of(scope: Scope) -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(move |k| k.applies_to(scope))
}

/// The reference for `tether.toml`, generated from [`KEYS`]: the text of
/// `docs/config.md`.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    out.push_str(
        "<!-- Generated from the key table in crates/tether-config/src/keys.rs: do not edit. \
         Regenerate with `UPDATE_DOCS=1 cargo test -p tether-config`. -->\n\n",
    );
    out.push_str("# `tether.toml` reference\n\n");
    out.push_str(INTRO);
    for &(scope, title, intro) in SECTIONS {
        let _ = write!(out, "## {title}\n\n");
        if !intro.is_empty() {
            let _ = write!(out, "{intro}\n\n");
        }
        // Keys that hold tables are documented by their own sections; a
        // list names them (a heading of their own would take the anchor).
        let mut tables = keys_of(scope)
            .filter(|k| matches!(k.ty, Type::Table | Type::Tables))
            .peekable();
        if tables.peek().is_some() {
            out.push_str("The file's tables:\n\n");
            for key in tables {
                let _ = writeln!(out, "- `{}` ({}): {}", key.name, key.ty.name(), key.doc);
            }
            out.push('\n');
        }
        for key in keys_of(scope) {
            if matches!(key.ty, Type::Table | Type::Tables)
                || (scope == Scope::Service && key.applies_to(Scope::Defaults))
            {
                continue;
            }
            if scope == Scope::Hook && key.applies_to(Scope::Service) {
                let _ = write!(
                    out,
                    "### `{}`\n\nAs for a [service](#servicesname).\n\n",
                    key.name
                );
                continue;
            }
            render_key(&mut out, key);
        }
    }
    // One newline at the end, as editors leave it.
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

fn render_key(out: &mut String, key: &Key) {
    let default = match key.default {
        DefaultValue::Required => "required".to_string(),
        DefaultValue::Value(v) => format!("default `{v}`"),
        DefaultValue::Described(text) => format!("default: {text}"),
    };
    let _ = write!(
        out,
        "### `{}`\n\n{} · {default}\n\n{}\n\n",
        key.name,
        key.ty.name(),
        key.doc
    );
    if !key.example.is_empty() {
        let _ = write!(out, "```toml\n{} = {}\n```\n\n", key.name, key.example);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_declared_twice_in_one_scope() {
        for (i, a) in KEYS.iter().enumerate() {
            for b in &KEYS[i + 1..] {
                let shared = a.scopes.iter().any(|s| b.applies_to(*s));
                assert!(!(a.name == b.name && shared), "{} declared twice", a.name);
            }
        }
    }

    #[test]
    fn every_scope_has_a_section_and_every_key_a_doc() {
        for key in KEYS {
            assert!(!key.doc.is_empty(), "{} has no doc", key.name);
            for scope in key.scopes {
                assert!(SECTIONS.iter().any(|(s, _, _)| s == scope));
            }
            let is_section = matches!(key.ty, Type::Table | Type::Tables);
            assert_eq!(key.example.is_empty(), is_section, "{} example", key.name);
        }
    }

    #[test]
    fn lookup_respects_scope() {
        assert_eq!(lookup(Scope::Hook, "name").map(|k| k.ty), Some(Type::Name));
        assert!(lookup(Scope::Defaults, "command").is_none());
        assert!(lookup(Scope::Service, "stop_grace").is_some());
        assert!(lookup(Scope::Defaults, "watchdog").is_none());
    }

    #[test]
    fn reference_lists_every_key() {
        let text = reference_markdown();
        for key in KEYS {
            let shown = match key.ty {
                Type::Table | Type::Tables => format!("- `{}` (", key.name),
                _ => format!("### `{}`", key.name),
            };
            assert!(text.contains(&shown), "{}", key.name);
        }
        assert!(!text.contains("\n\n\n"));
        assert!(text.ends_with("```\n"));
    }
}
