//! The supervisor's configuration: plain, validated values. Reading
//! `tether.toml` (and reporting its mistakes) is `tether-config`'s job; this
//! crate takes the result and never reads files or the environment for it.

use std::path::PathBuf;
use std::time::Duration;

pub use tether_probe::listen::Listen;

use tether_probe::Target;
use tether_resilience::{Backoff, HealthConfig};

/// A whole stack.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// Names the stack: its control socket, heartbeat directory and logs.
    pub name: String,
    /// Services in the order the file lists them.
    pub services: Vec<ServiceConfig>,
    /// Helper processes that follow the stack's events.
    pub hooks: Vec<HookConfig>,
}

/// One supervised service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    /// argv; never run through a shell. Not empty.
    pub command: Vec<String>,
    /// Variables added to tether's own environment: `env_file` first, then
    /// `env` (which wins).
    pub env: Vec<(String, String)>,
    /// The working directory, absolute (relative paths in the file are
    /// resolved against the file's directory). `None`: the file's directory.
    pub cwd: Option<PathBuf>,
    /// A command run to completion before every start (argv).
    pub pre_start: Option<Vec<String>>,
    pub depends_on: Vec<Dependency>,
    pub ready: Readiness,
    /// Restarts the service when it fails `fall` times in a row.
    pub live: Option<ProbeConfig>,
    pub restart: RestartPolicy,
    /// The delay before a restart grows along this curve.
    pub restart_backoff: Backoff,
    /// After this long up, the restart delay starts over.
    pub stable_after: Duration,
    pub crash_loop: CrashLoop,
    /// A start that is not ready this long after the spawn fails.
    pub start_deadline: Duration,
    /// The signal (a number, `libc::SIGTERM` by default) sent to the whole
    /// process group to stop the service.
    pub stop_signal: i32,
    /// After the stop signal, this long until SIGKILL.
    pub stop_grace: Duration,
    /// With `ready = notify`: the service must send `WATCHDOG=1` at least this
    /// often, or it is restarted.
    pub watchdog: Option<Duration>,
    /// Also append the service's output to this file.
    pub log_file: Option<PathBuf>,
    /// Listening sockets tether binds before anything starts, keeps open
    /// for the stack's whole life and hands to each of the service's
    /// processes as descriptors 3, 4, ... in this order (socket activation,
    /// as systemd's `sd_listen_fds`).
    pub sockets: Vec<SocketConfig>,
}

/// One listening socket of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    /// Where it listens (checked: a TCP address beyond loopback was
    /// allowed by the file).
    pub listen: Listen,
    /// Its name in `LISTEN_FDNAMES` (a name: letters, digits, `-`, `_`,
    /// `.`); the service's name unless given.
    pub name: String,
}

/// "Start me once `service` is in `condition`."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Its process has been spawned.
    Started,
    /// Its readiness check passed.
    Ready,
    /// It ran to completion with exit status 0 (a one-shot job, such as a
    /// migration).
    CompletedSuccessfully,
}

/// How a service says it is ready.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// No check: ready once spawned. Others may not depend on it being
    /// `ready` (a load-time error), only `started`.
    None,
    /// A probe (any `tether wait` target), fast while starting, steady after.
    Probe(Box<ProbeConfig>),
    /// The service sends `READY=1` on `$NOTIFY_SOCKET` (systemd's sd_notify).
    Notify,
}

/// A probe and its pacing.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub target: Target,
    /// Interval, timeout, rise and fall (steady interval 2 s, timeout 1 s,
    /// rise 2, fall 3 by default).
    pub health: HealthConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Restart when the service fails: a non-zero exit, a signal, a failed
    /// liveness probe, a missed start deadline or watchdog.
    OnFailure,
    /// Restart whenever it ends, even with status 0.
    Always,
}

/// `exits` ends within `window` mark a service `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    pub exits: u32,
    pub window: Duration,
}

/// A long-running helper: gets every lifecycle event as a JSON line on
/// stdin, may answer commands (`{"restart":"NAME"}`, `stop`, `start`) as JSON
/// lines on stdout. Supervised like a service (restarted when it ends).
#[derive(Debug, Clone)]
pub struct HookConfig {
    pub name: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

impl ServiceConfig {
    /// A service with tether's defaults for everything but its name and
    /// command.
    pub fn new(name: impl Into<String>, command: Vec<String>) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            command,
            env: Vec::new(),
            cwd: None,
            pre_start: None,
            depends_on: Vec::new(),
            ready: Readiness::None,
            live: None,
            restart: RestartPolicy::OnFailure,
            restart_backoff: defaults::restart_backoff(),
            stable_after: defaults::STABLE_AFTER,
            crash_loop: defaults::CRASH_LOOP,
            start_deadline: defaults::START_DEADLINE,
            stop_signal: libc::SIGTERM,
            stop_grace: defaults::STOP_GRACE,
            watchdog: None,
            log_file: None,
            sockets: Vec::new(),
        }
    }
}

/// tether's defaults (DESIGN.md "Defaults").
pub mod defaults {
    use super::*;

    /// 5 exits in 60 s.
    pub const CRASH_LOOP: CrashLoop = CrashLoop {
        exits: 5,
        window: Duration::from_secs(60),
    };
    pub const START_DEADLINE: Duration = Duration::from_secs(60);
    pub const STOP_GRACE: Duration = Duration::from_secs(10);
    /// Up this long: the restart delay starts over.
    pub const STABLE_AFTER: Duration = Duration::from_secs(10);

    /// Restart delays: 100 ms doubling to 10 s, ±20 %.
    pub fn restart_backoff() -> Backoff {
        Backoff::try_new(
            Duration::from_millis(100),
            Duration::from_secs(10),
            2.0,
            0.2,
        )
        .unwrap_or_else(|_| Backoff::reconnect())
    }
}
