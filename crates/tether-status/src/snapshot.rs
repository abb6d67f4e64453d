//! The plain values the status server shows, and the overall health derived
//! from them.

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

/// The upper bounds (`le`, in seconds) of the probe duration histogram, the
/// Prometheus client defaults: loopback probes land in the first buckets,
/// slow starts and timeouts in the last ones.
pub const PROBE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Everything the status server knows about a stack at one moment.
///
/// The wiring code builds it from the supervisor's events and publishes it on
/// a `tokio::sync::watch` channel; every request reads the latest one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// The stack's name (from its file, or its folder).
    pub stack: String,
    /// When the stack started, in milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
    /// Every service, in stack order (dependencies first).
    pub services: Vec<ServiceStatus>,
    /// Every proxy of the stack (`[proxies.NAME]`), in file order.
    #[serde(default)]
    pub proxies: Vec<ProxyStatus>,
    /// What happened to the machine since the stack started, by kind
    /// (`resumed`, `stalled`, `network_changed`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub system_events: BTreeMap<String, u64>,
}

/// One proxy of the stack: where it listens, where it relays, and its
/// counters since the stack started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProxyStatus {
    pub name: String,
    /// `tcp://127.0.0.1:9080`, `unix:///run/...`.
    pub listen: String,
    /// Where clients are relayed, and what says it is ready
    /// (`tcp://127.0.0.1:8081 (service:db)`).
    pub upstream: String,
    /// Whether clients are let through now.
    pub ready: bool,
    /// Connections relayed now.
    pub relaying: usize,
    /// Clients waiting for the upstream now.
    pub pending: usize,
    pub accepted: u64,
    pub relayed: u64,
    /// Clients held a moment before they were relayed.
    pub held: u64,
    pub connect_failures: u64,
    /// Clients not served, by cause (`limit.pending`, `pending.timeout`, ...).
    pub refused: BTreeMap<String, u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// One service of the stack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    /// The service's name in the stack file.
    pub name: String,
    /// Its lifecycle state.
    pub state: State,
    /// The pid of its current process, while one runs.
    pub pid: Option<u32>,
    /// When it entered `state`, in milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// When its current process started, in milliseconds since the Unix
    /// epoch; `None` while no process runs. Uptime is now minus this.
    pub up_since_unix_ms: Option<u64>,
    /// How often it was restarted since the stack started.
    pub restarts: u64,
    /// How its last process ended, in words: `exited with status 1`,
    /// `was killed by SIGKILL`.
    pub last_exit: Option<String>,
    /// The diagnosis of its last failure, in words: `connect to
    /// 127.0.0.1:8081: connection refused`.
    pub last_error: Option<String>,
    /// A one-shot job that exited with status 0 and is not restarted. In
    /// state [`State::Exited`] it counts as healthy.
    pub one_shot_done: bool,
    /// Its readiness and liveness probe statistics.
    pub probe: ProbeStats,
    /// Its registration, if the stack registers it (`[registry]` and an
    /// `endpoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<RegistrationStatus>,
}

/// Where a service's registration stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegistrationStatus {
    /// One of [`RegistrationStatus::STATES`].
    pub state: String,
    /// Why it is not registered, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The record's id while there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub endpoint: String,
    /// The registry's URL.
    pub registry: String,
}

impl RegistrationStatus {
    /// Every state: registered; retrying (not yet, or a renewal failed);
    /// lost (the backend dropped it; registering again); unregistered (the
    /// service is not ready, so it is not announced).
    pub const STATES: [&'static str; 4] = ["registered", "retrying", "lost", "unregistered"];
}

/// The lifecycle of a service, as the supervisor reports it.
///
/// - `pending` -> `starting`: its dependencies are met and its process runs;
/// - `starting` -> `ready`: its readiness probe passed (or it sent READY=1);
/// - `ready` <-> `unready`: its probe fails, then passes again;
/// - `starting` | `ready` | `unready` -> `stopping`: it was told to stop;
/// - any running state -> `exited`: its process ended;
/// - `exited` -> `starting`: its restart policy started it again;
/// - any state -> `failed`: a crash loop, a spawn error, a start deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its dependencies; no process yet.
    Pending,
    /// Its process runs; readiness not yet confirmed.
    Starting,
    /// Its process runs and its readiness probe passes.
    Ready,
    /// It was ready, and its probe now fails (the process still runs).
    Unready,
    /// It was told to stop and its process group is ending.
    Stopping,
    /// Its process ended; it may be restarted (see `restarts`), or it is a
    /// completed one-shot (see `one_shot_done`).
    Exited,
    /// It will not run again without a human: a crash loop, a spawn error,
    /// a start deadline passed.
    Failed,
}

/// Probe statistics of one service: a Prometheus histogram of durations and
/// failure counts by cause.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProbeStats {
    /// How many probes finished (passed or failed).
    pub count: u64,
    /// The sum of their durations, in seconds.
    pub sum_seconds: f64,
    /// Cumulative histogram buckets as `(le, count)`, ascending by `le`,
    /// without the `+Inf` bucket (which is `count`). [`ProbeStats::default`]
    /// has one bucket per bound of [`PROBE_BUCKETS`].
    pub buckets: Vec<(f64, u64)>,
    /// Failed probes by their dotted cause: `connect.refused` -> 12.
    pub failures: BTreeMap<String, u64>,
    /// Of those, the ones not counted toward `fall` (they timed out across
    /// a stall, or the network was settling), by why: `stall` -> 1.
    #[serde(default)]
    pub held: BTreeMap<String, u64>,
}

/// One thing that happened in the stack, streamed by `/api/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// The service it is about; `None` for the stack as a whole.
    pub service: Option<String>,
    /// What happened: `state`, `exit`, `restart`, `hook.dropped`, ... It is
    /// the server-sent event's name, so clients can listen for one kind.
    pub kind: String,
    /// The details, free-form JSON.
    pub data: serde_json::Value,
}

/// The stack's health as `/health` reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Health {
    /// The overall status (see [`Snapshot::health`] for the rules).
    pub status: OverallStatus,
    /// The stack's name.
    pub stack: String,
    /// How many services are healthy, of how many.
    pub services: ServiceCounts,
    /// Restarts of all services since the stack started.
    pub restarts: u64,
    /// Each service's state, in stack order (a JSON object).
    #[serde(serialize_with = "ordered_map")]
    pub states: Vec<(String, State)>,
}

/// Healthy services out of all, for [`Health`].
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ServiceCounts {
    /// Services that are ready, or completed one-shots.
    pub ready: usize,
    /// All services.
    pub total: usize,
}

/// The stack's overall status, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OverallStatus {
    /// Every service is ready or a completed one-shot.
    Ok,
    /// Nothing is wrong, and some services are still pending or starting.
    Starting,
    /// Some service was up and is not now: unready, stopping, or exited
    /// without being a completed one-shot.
    Degraded,
    /// Some service failed for good.
    Failed,
}

impl Snapshot {
    /// The overall health of the stack.
    ///
    /// The first rule that matches wins:
    ///
    /// 1. `failed` if any service is [`State::Failed`];
    /// 2. `degraded` if any service is [`State::Unready`], [`State::Stopping`],
    ///    or [`State::Exited`] without `one_shot_done` (it crashed or was
    ///    stopped, and may be waiting for its restart);
    /// 3. `starting` if any service is [`State::Pending`] or
    ///    [`State::Starting`];
    /// 4. `ok`: every service is [`State::Ready`] or an exited completed
    ///    one-shot. An empty stack is `ok`: there is nothing to wait for.
    ///
    /// `services.ready` counts the services that rule 4 accepts.
    pub fn health(&self) -> Health {
        let mut status = OverallStatus::Ok;
        for service in &self.services {
            let this = match service.state {
                State::Failed => OverallStatus::Failed,
                State::Unready | State::Stopping => OverallStatus::Degraded,
                State::Exited if !service.one_shot_done => OverallStatus::Degraded,
                State::Pending | State::Starting => OverallStatus::Starting,
                State::Ready | State::Exited => OverallStatus::Ok,
            };
            status = status.max(this);
        }
        Health {
            status,
            stack: self.stack.clone(),
            services: ServiceCounts {
                ready: self.services.iter().filter(|s| s.is_healthy()).count(),
                total: self.services.len(),
            },
            restarts: self.services.iter().map(|s| s.restarts).sum(),
            states: self
                .services
                .iter()
                .map(|s| (s.name.clone(), s.state))
                .collect(),
        }
    }
}

impl ServiceStatus {
    /// A service in [`State::Pending`] with no history, for the wiring code
    /// to fill in.
    pub fn new(name: impl Into<String>, since_unix_ms: u64) -> Self {
        Self {
            name: name.into(),
            state: State::Pending,
            pid: None,
            since_unix_ms,
            up_since_unix_ms: None,
            restarts: 0,
            last_exit: None,
            last_error: None,
            one_shot_done: false,
            probe: ProbeStats::default(),
            registration: None,
        }
    }

    /// Ready, or an exited completed one-shot.
    pub fn is_healthy(&self) -> bool {
        match self.state {
            State::Ready => true,
            State::Exited => self.one_shot_done,
            _ => false,
        }
    }
}

impl State {
    /// Every state, in lifecycle order.
    pub const ALL: [State; 7] = [
        State::Pending,
        State::Starting,
        State::Ready,
        State::Unready,
        State::Stopping,
        State::Exited,
        State::Failed,
    ];

    /// The lower-case name, as JSON and metrics show it.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Unready => "unready",
            State::Stopping => "stopping",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl OverallStatus {
    /// The lower-case name, as `/health` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            OverallStatus::Ok => "ok",
            OverallStatus::Starting => "starting",
            OverallStatus::Degraded => "degraded",
            OverallStatus::Failed => "failed",
        }
    }

    /// Whether the stack is fully up (`/health` answers 200).
    pub fn is_ok(self) -> bool {
        self == OverallStatus::Ok
    }

    // Worse statuses rank higher, so the overall status is the maximum.
    fn rank(self) -> u8 {
        match self {
            OverallStatus::Ok => 0,
            OverallStatus::Starting => 1,
            OverallStatus::Degraded => 2,
            OverallStatus::Failed => 3,
        }
    }

    fn max(self, other: Self) -> Self {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for OverallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for ProbeStats {
    /// No probes yet, with one empty bucket per bound of [`PROBE_BUCKETS`].
    fn default() -> Self {
        Self {
            count: 0,
            sum_seconds: 0.0,
            buckets: PROBE_BUCKETS.iter().map(|&le| (le, 0)).collect(),
            failures: BTreeMap::new(),
            held: BTreeMap::new(),
        }
    }
}

impl ProbeStats {
    /// Records one finished probe that took `secs` seconds. A negative or
    /// non-finite duration (a clock step) is recorded as 0, so the sum stays
    /// a number.
    pub fn observe(&mut self, secs: f64) {
        let secs = if secs.is_finite() && secs > 0.0 {
            secs
        } else {
            0.0
        };
        self.count += 1;
        self.sum_seconds += secs;
        for (le, count) in &mut self.buckets {
            if secs <= *le {
                *count += 1;
            }
        }
    }

    /// Counts one failed probe by its dotted cause (`connect.refused`).
    pub fn record_failure(&mut self, cause: &str) {
        *self.failures.entry(cause.to_owned()).or_insert(0) += 1;
    }
}

// Serializes pairs as a JSON object that keeps their order (serde_json's own
// map would sort the keys).
fn ordered_map<S: Serializer>(pairs: &[(String, State)], serializer: S) -> Result<S::Ok, S::Error> {
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (name, state) in pairs {
        map.serialize_entry(name, state)?;
    }
    map.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, state: State) -> ServiceStatus {
        ServiceStatus {
            state,
            ..ServiceStatus::new(name, 0)
        }
    }

    fn status_of(services: Vec<ServiceStatus>) -> OverallStatus {
        Snapshot {
            stack: "s".into(),
            started_at_unix_ms: 0,
            services,
            proxies: Vec::new(),
            system_events: BTreeMap::new(),
        }
        .health()
        .status
    }

    #[test]
    fn failed_wins_over_every_other_state() {
        for other in State::ALL {
            let services = vec![service("a", other), service("b", State::Failed)];
            assert_eq!(status_of(services), OverallStatus::Failed, "with {other}");
        }
    }

    #[test]
    fn degraded_wins_over_starting() {
        for bad in [State::Unready, State::Stopping, State::Exited] {
            let services = vec![service("a", State::Starting), service("b", bad)];
            assert_eq!(status_of(services), OverallStatus::Degraded, "with {bad}");
        }
    }

    #[test]
    fn starting_while_pending_or_starting() {
        for state in [State::Pending, State::Starting] {
            let services = vec![service("a", State::Ready), service("b", state)];
            assert_eq!(status_of(services), OverallStatus::Starting, "with {state}");
        }
    }

    #[test]
    fn a_completed_one_shot_counts_as_healthy() {
        let mut job = service("migrate", State::Exited);
        job.one_shot_done = true;
        let snapshot = Snapshot {
            stack: "s".into(),
            started_at_unix_ms: 0,
            services: vec![job, service("api", State::Ready)],
            proxies: Vec::new(),
            system_events: BTreeMap::new(),
        };
        let health = snapshot.health();
        assert_eq!(health.status, OverallStatus::Ok);
        assert_eq!(health.services, ServiceCounts { ready: 2, total: 2 });
    }

    #[test]
    fn one_shot_done_counts_only_once_exited() {
        let mut job = service("migrate", State::Failed);
        job.one_shot_done = true;
        assert!(!job.is_healthy());
    }

    #[test]
    fn an_empty_stack_is_ok() {
        assert_eq!(status_of(Vec::new()), OverallStatus::Ok);
    }

    #[test]
    fn health_states_keep_stack_order() {
        let snapshot = Snapshot {
            stack: "s".into(),
            started_at_unix_ms: 0,
            services: vec![
                service("zeta", State::Ready),
                service("alpha", State::Pending),
            ],
            proxies: Vec::new(),
            system_events: BTreeMap::new(),
        };
        let json = serde_json::to_string(&snapshot.health()).unwrap();
        assert!(
            json.contains(r#""states":{"zeta":"ready","alpha":"pending"}"#),
            "{json}"
        );
    }

    #[test]
    fn observe_fills_cumulative_buckets() {
        let mut stats = ProbeStats::default();
        stats.observe(0.003);
        stats.observe(0.5);
        stats.observe(30.0);
        stats.observe(f64::NAN);
        assert_eq!(stats.count, 4);
        assert!((stats.sum_seconds - 30.503).abs() < 1e-9);
        let at = |le: f64| stats.buckets.iter().find(|b| b.0 == le).unwrap().1;
        assert_eq!(at(0.001), 1, "the NaN, recorded as 0");
        assert_eq!(at(0.005), 2);
        assert_eq!(at(0.25), 2);
        assert_eq!(at(0.5), 3, "le is inclusive");
        assert_eq!(at(10.0), 3, "30 s lands only in +Inf");
    }

    #[test]
    fn record_failure_counts_by_cause() {
        let mut stats = ProbeStats::default();
        stats.record_failure("connect.refused");
        stats.record_failure("connect.refused");
        stats.record_failure("http.503");
        assert_eq!(stats.failures["connect.refused"], 2);
        assert_eq!(stats.failures["http.503"], 1);
    }
}
