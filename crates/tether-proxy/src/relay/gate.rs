//! Who gets through, and when: the decisions of one proxy, without I/O.
//!
//! [`Gate`] takes what happens (a client arrived, the upstream became ready
//! or not, a connect to it succeeded or failed, a relayed connection ended,
//! time passed) with the instant it happened, and answers with actions:
//! connect this client now, refuse that one (and why), give up on one that
//! waited too long. It holds clients while the upstream is down or
//! restarting, up to a limit and a timeout, and lets them through in the
//! order they came once it is ready; a circuit breaker keeps a flapping
//! upstream from being hammered.
//!
//! ```text
//!   arrived ──▶ over a limit?          ── yes ──▶ Refuse
//!                 │ no
//!                 ▼
//!            upstream ready and the breaker lets it through?
//!                 │ yes                        │ no
//!                 ▼                            ▼
//!              Connect ──fails──▶ pending ◀── (fail-fast: Refuse)
//!                 │ ok               │ ready ──▶ Connect
//!                 ▼                  │ pending timeout ──▶ GiveUp
//!              relaying ──ended──▶ gone
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

use tether_resilience::breaker::Permit;
use tether_resilience::failure::human_duration;
use tether_resilience::{Breaker, BreakerConfig, Failure, Jitter};
use tokio::time::Instant;

/// One client of the proxy.
pub type ClientId = u64;

/// The gate's limits.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Clients at once, relayed, connecting and waiting together.
    pub max_connections: usize,
    /// Clients waiting for the upstream.
    pub max_pending: usize,
    /// How long a client may wait for the upstream.
    pub pending_timeout: Duration,
    /// Once the upstream has been down this long, new clients are refused
    /// at once instead of held (`None`: always held).
    pub fail_fast_after: Option<Duration>,
    pub breaker: BreakerConfig,
}

/// Something that happened.
#[derive(Debug)]
pub enum Input {
    /// A client connected to the proxy.
    Arrived(ClientId),
    /// The upstream is ready (or, with the words why, it is not).
    Upstream(Result<(), String>),
    /// The connect for this client succeeded: it is relayed now.
    Connected(ClientId),
    /// The connect for this client failed.
    ConnectFailed(ClientId, Failure),
    /// This client's connection ended (relayed, or closed while waiting).
    Closed(ClientId),
    /// The proxy stood still this long since the last input (a stall:
    /// SIGSTOP, a paused VM), while the monotonic clock went on: the
    /// clients waiting meanwhile are owed that time, since nothing could
    /// connect them.
    StoodStill(Duration),
    /// Time passed.
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Connect to the upstream for this client.
    Connect(ClientId),
    /// Close this client: it is not served.
    Refuse(ClientId, Refusal),
    /// The upstream should be looked at now (a connect failed, or clients
    /// wait for it).
    CheckUpstream,
}

/// Why a client is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` clients are connected already.
    TooManyConnections(usize),
    /// `max_pending` clients are waiting already.
    TooManyPending(usize),
    /// The upstream has been down longer than the fail-fast threshold.
    UpstreamDown { down_for: Duration, cause: String },
    /// It waited `pending_timeout` and the upstream never came.
    PendingTimeout { waited: Duration, cause: String },
}

impl Refusal {
    /// The dotted cause, for counting.
    pub fn cause(&self) -> &'static str {
        match self {
            Refusal::TooManyConnections(_) => "limit.connections",
            Refusal::TooManyPending(_) => "limit.pending",
            Refusal::UpstreamDown { .. } => "upstream.down",
            Refusal::PendingTimeout { .. } => "pending.timeout",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooManyConnections(n) => {
                write!(f, "refused: {n} connections at once is this proxy's limit")
            }
            Refusal::TooManyPending(n) => {
                write!(f, "refused: {n} clients already wait for the upstream")
            }
            Refusal::UpstreamDown { down_for, cause } => write!(
                f,
                "refused at once: the upstream has been down for {} ({cause})",
                human_duration(*down_for)
            ),
            Refusal::PendingTimeout { waited, cause } => write!(
                f,
                "closed after waiting {} for the upstream ({cause})",
                human_duration(*waited)
            ),
        }
    }
}

/// What the gate has counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub accepted: u64,
    /// Clients that were relayed (connected to the upstream).
    pub relayed: u64,
    /// Clients held at least a moment before they were relayed.
    pub held: u64,
    pub connect_failures: u64,
    /// Refusals and give-ups, by [`Refusal::cause`].
    pub refused: std::collections::BTreeMap<&'static str, u64>,
}

/// Where the upstream is, as far as the gate knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Ready,
    Down { since: Instant, cause: String },
}

/// One proxy's decisions.
#[derive(Debug)]
pub struct Gate {
    config: GateConfig,
    upstream: Upstream,
    breaker: Breaker,
    /// Waiting clients, oldest first, with when they came.
    pending: VecDeque<(ClientId, Instant)>,
    /// Connecting, with the breaker's permit and when they came.
    connecting: HashMap<ClientId, (Permit, Instant)>,
    relaying: usize,
    counters: Counters,
    actions: Vec<Action>,
    /// When a client was last refused because the upstream is down
    /// (fail-fast): clients still want it, so it is looked at often for
    /// [`DEMAND_AFTER_REFUSAL`] after.
    refused_down_at: Option<Instant>,
}

/// How long a fail-fast refusal keeps the upstream in demand: without it,
/// nobody would wait, the upstream would be looked at at the slow pace of
/// an idle proxy (up to 10 s), and clients would be refused long after it
/// is back.
pub const DEMAND_AFTER_REFUSAL: Duration = Duration::from_secs(1);

impl Gate {
    /// A gate whose upstream is not known to be ready yet.
    pub fn new(config: GateConfig, jitter: Jitter, now: Instant) -> Gate {
        Gate {
            breaker: Breaker::new(config.breaker, jitter),
            config,
            upstream: Upstream::Down {
                since: now,
                cause: "not checked yet".into(),
            },
            pending: VecDeque::new(),
            connecting: HashMap::new(),
            relaying: 0,
            counters: Counters::default(),
            actions: Vec::new(),
            refused_down_at: None,
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Clients relayed now.
    pub fn relaying(&self) -> usize {
        self.relaying
    }

    /// Clients waiting for the upstream now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether clients wait, or were refused a moment ago because it was
    /// down: then the upstream is worth looking at often.
    pub fn in_demand(&self, now: Instant) -> bool {
        !self.pending.is_empty()
            || self
                .refused_down_at
                .is_some_and(|at| now < at + DEMAND_AFTER_REFUSAL)
    }

    /// The actions decided since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// The next instant at which time alone changes something: the oldest
    /// waiting client's timeout, or the end of the breaker's penalty while
    /// clients wait for it.
    pub fn deadline(&self) -> Option<Instant> {
        let timeout = self
            .pending
            .front()
            .map(|(_, came)| *came + self.config.pending_timeout);
        let breaker = match (self.upstream == Upstream::Ready, self.pending.is_empty()) {
            (true, false) => match self.breaker.state() {
                tether_resilience::BreakerState::Open { until } => Some(until),
                _ => None,
            },
            _ => None,
        };
        let demand_ends = self.refused_down_at.map(|at| at + DEMAND_AFTER_REFUSAL);
        [timeout, breaker, demand_ends].into_iter().flatten().min()
    }

    /// Takes one input.
    pub fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Arrived(id) => self.arrived(now, id),
            Input::Upstream(Ok(())) => {
                self.upstream = Upstream::Ready;
                self.refused_down_at = None;
                self.dispatch(now);
            }
            Input::Upstream(Err(cause)) => self.down(now, cause),
            Input::Connected(id) => {
                if let Some((permit, came)) = self.connecting.remove(&id) {
                    self.breaker.record(now, permit, true);
                    self.relaying += 1;
                    self.counters.relayed += 1;
                    if now > came {
                        self.counters.held += u64::from(now - came > Duration::from_millis(1));
                    }
                }
            }
            Input::ConnectFailed(id, failure) => {
                let Some((permit, came)) = self.connecting.remove(&id) else {
                    return;
                };
                self.counters.connect_failures += 1;
                let upstream_fault = failure.origin == tether_resilience::Origin::Upstream;
                if upstream_fault {
                    self.breaker.record(now, permit, false);
                } else {
                    self.breaker.release(permit);
                }
                // The upstream is not there after all: wait for it again,
                // first in line, and have it looked at now.
                self.down(now, failure.detail.clone());
                self.pending.push_front((id, came));
                self.actions.push(Action::CheckUpstream);
                self.expire(now);
            }
            Input::Closed(id) => {
                if let Some(at) = self.pending.iter().position(|(c, _)| *c == id) {
                    self.pending.remove(at);
                } else if let Some((permit, _)) = self.connecting.remove(&id) {
                    self.breaker.release(permit);
                } else {
                    self.relaying = self.relaying.saturating_sub(1);
                }
            }
            Input::StoodStill(still) => {
                for (_, came) in &mut self.pending {
                    *came += still;
                }
            }
            Input::Tick => {
                self.expire(now);
                if self.upstream == Upstream::Ready {
                    self.dispatch(now);
                }
            }
        }
    }

    fn arrived(&mut self, now: Instant, id: ClientId) {
        self.counters.accepted += 1;
        let total = self.pending.len() + self.connecting.len() + self.relaying;
        if total >= self.config.max_connections {
            return self.refuse(id, Refusal::TooManyConnections(self.config.max_connections));
        }
        if let Upstream::Down { since, cause } = &self.upstream {
            let down_for = now - *since;
            if self.config.fail_fast_after.is_some_and(|t| down_for >= t) {
                let cause = cause.clone();
                if self.refused_down_at.is_none() {
                    // Wanted again: have it looked at now.
                    self.actions.push(Action::CheckUpstream);
                }
                self.refused_down_at = Some(now);
                return self.refuse(id, Refusal::UpstreamDown { down_for, cause });
            }
        }
        if self.pending.len() >= self.config.max_pending {
            return self.refuse(id, Refusal::TooManyPending(self.config.max_pending));
        }
        self.pending.push_back((id, now));
        if self.upstream == Upstream::Ready {
            self.dispatch(now);
        } else if self.pending.len() == 1 {
            // The first to wait: the upstream is wanted now.
            self.actions.push(Action::CheckUpstream);
        }
    }

    /// Lets waiting clients through, oldest first, as far as the breaker
    /// allows.
    fn dispatch(&mut self, now: Instant) {
        while let Some(&(id, came)) = self.pending.front() {
            match self.breaker.acquire(now) {
                Ok(permit) => {
                    self.pending.pop_front();
                    self.connecting.insert(id, (permit, came));
                    self.actions.push(Action::Connect(id));
                }
                Err(_) => break,
            }
        }
    }

    fn down(&mut self, now: Instant, cause: String) {
        match &mut self.upstream {
            Upstream::Down { cause: old, .. } => *old = cause,
            Upstream::Ready => self.upstream = Upstream::Down { since: now, cause },
        }
    }

    /// Gives up on clients that waited their whole timeout.
    fn expire(&mut self, now: Instant) {
        while let Some(&(id, came)) = self.pending.front() {
            let waited = now - came;
            if waited < self.config.pending_timeout {
                break;
            }
            self.pending.pop_front();
            let cause = match &self.upstream {
                Upstream::Down { cause, .. } => cause.clone(),
                Upstream::Ready => "the circuit breaker held it back".to_string(),
            };
            self.refuse(id, Refusal::PendingTimeout { waited, cause });
        }
    }

    fn refuse(&mut self, id: ClientId, why: Refusal) {
        *self.counters.refused.entry(why.cause()).or_insert(0) += 1;
        self.actions.push(Action::Refuse(id, why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_resilience::{Cause, Phase};

    fn config() -> GateConfig {
        GateConfig {
            max_connections: 4,
            max_pending: 2,
            pending_timeout: Duration::from_secs(30),
            fail_fast_after: None,
            breaker: BreakerConfig::default_local(),
        }
    }

    fn refused() -> Failure {
        Failure::new(Phase::Connect, Cause::ConnectRefused, "connect: refused")
    }

    struct T {
        gate: Gate,
        at: Instant,
    }

    impl T {
        fn new(config: GateConfig) -> T {
            let at = Instant::now();
            T {
                gate: Gate::new(config, Jitter::seeded(1), at),
                at,
            }
        }
        fn on(&mut self, input: Input) -> Vec<Action> {
            self.gate.handle(self.at, input);
            self.gate.take_actions()
        }
        fn after(&mut self, d: Duration) -> Vec<Action> {
            self.at += d;
            self.on(Input::Tick)
        }
    }

    #[test]
    fn clients_wait_for_the_upstream_and_go_through_in_order() {
        let mut t = T::new(config());
        assert_eq!(t.on(Input::Arrived(1)), [Action::CheckUpstream]);
        assert!(t.on(Input::Arrived(2)).is_empty());
        assert!(t.gate.in_demand(t.at));
        assert_eq!(t.gate.pending(), 2);
        assert_eq!(
            t.on(Input::Upstream(Ok(()))),
            [Action::Connect(1), Action::Connect(2)]
        );
        t.on(Input::Connected(1));
        t.on(Input::Connected(2));
        assert_eq!(t.gate.relaying(), 2);
        assert_eq!(
            t.on(Input::Arrived(3)),
            [Action::Connect(3)],
            "ready: at once"
        );
        assert_eq!(t.gate.counters().relayed, 2);
    }

    #[test]
    fn limits_refuse_at_once_and_are_counted() {
        let mut t = T::new(config());
        t.on(Input::Arrived(1));
        t.on(Input::Arrived(2));
        let third = t.on(Input::Arrived(3));
        assert_eq!(third, [Action::Refuse(3, Refusal::TooManyPending(2))]);
        t.on(Input::Upstream(Ok(())));
        t.on(Input::Connected(1));
        t.on(Input::Connected(2));
        t.on(Input::Arrived(4));
        t.on(Input::Connected(4));
        t.on(Input::Arrived(5));
        t.on(Input::Connected(5));
        let sixth = t.on(Input::Arrived(6));
        assert_eq!(sixth, [Action::Refuse(6, Refusal::TooManyConnections(4))]);
        assert_eq!(t.gate.counters().refused["limit.pending"], 1);
        assert_eq!(t.gate.counters().refused["limit.connections"], 1);
        t.on(Input::Closed(4));
        assert_eq!(t.on(Input::Arrived(7)), [Action::Connect(7)], "room again");
    }

    #[test]
    fn a_client_that_waits_too_long_is_closed_with_the_cause() {
        let mut t = T::new(config());
        t.on(Input::Upstream(Err(
            "connect to 127.0.0.1:9: connection refused".into(),
        )));
        t.on(Input::Arrived(1));
        assert_eq!(t.gate.deadline(), Some(t.at + Duration::from_secs(30)));
        assert!(t.after(Duration::from_secs(29)).is_empty());
        let actions = t.after(Duration::from_secs(1));
        let [Action::Refuse(1, why)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(
            why.to_string(),
            "closed after waiting 30.0s for the upstream (connect to 127.0.0.1:9: connection refused)"
        );
        assert_eq!(t.gate.counters().refused["pending.timeout"], 1);
        assert_eq!(t.gate.deadline(), None);
    }

    /// The proxy stood still for a minute while a client waited (a paused
    /// VM): the minute is not counted against the client's 30 s, and the
    /// upstream that came meanwhile is connected to.
    #[test]
    fn a_stall_is_not_counted_against_a_waiting_client() {
        let mut t = T::new(config());
        t.on(Input::Upstream(Err("connection refused".into())));
        t.on(Input::Arrived(1));
        t.at += Duration::from_secs(70);
        assert!(t.on(Input::StoodStill(Duration::from_secs(60))).is_empty());
        assert!(t.on(Input::Tick).is_empty(), "10 s of the 30 s were used");
        assert_eq!(t.on(Input::Upstream(Ok(()))), [Action::Connect(1)]);
        // Without the stall, the same wait is a timeout.
        t.on(Input::Connected(1));
        t.on(Input::Upstream(Err("connection refused".into())));
        t.on(Input::Arrived(2));
        let actions = t.after(Duration::from_secs(70));
        assert!(
            matches!(&actions[..], [Action::Refuse(2, _)]),
            "{actions:?}"
        );
    }

    #[test]
    fn a_failed_connect_puts_the_client_back_first_in_line() {
        let mut t = T::new(config());
        t.on(Input::Upstream(Ok(())));
        assert_eq!(t.on(Input::Arrived(1)), [Action::Connect(1)]);
        t.on(Input::Arrived(2));
        let actions = t.on(Input::ConnectFailed(1, refused()));
        assert_eq!(actions, [Action::CheckUpstream]);
        assert!(matches!(t.gate.upstream(), Upstream::Down { .. }));
        assert_eq!(t.gate.pending(), 1, "1 waits again; 2 was connecting");
        t.at += Duration::from_millis(50);
        let actions = t.on(Input::Upstream(Ok(())));
        assert_eq!(actions, [Action::Connect(1)], "the first client first");
    }

    #[test]
    fn fail_fast_refuses_once_the_upstream_has_been_down_long_enough() {
        let mut c = config();
        c.fail_fast_after = Some(Duration::from_secs(5));
        let mut t = T::new(c);
        t.on(Input::Upstream(Err("refused".into())));
        assert_eq!(
            t.on(Input::Arrived(1)),
            [Action::CheckUpstream],
            "held at first"
        );
        t.at += Duration::from_secs(5);
        let actions = t.on(Input::Arrived(2));
        assert!(
            matches!(
                &actions[..],
                [
                    Action::CheckUpstream,
                    Action::Refuse(2, Refusal::UpstreamDown { .. })
                ]
            ),
            "{actions:?}"
        );
        // Refused clients still want it (the held one aside): it is looked
        // at often for a while.
        t.on(Input::Closed(1));
        assert!(t.gate.in_demand(t.at));
        assert!(t.gate.in_demand(t.at + DEMAND_AFTER_REFUSAL / 2));
        assert!(!t.gate.in_demand(t.at + DEMAND_AFTER_REFUSAL));
        assert_eq!(t.gate.deadline(), Some(t.at + DEMAND_AFTER_REFUSAL));
        t.on(Input::Upstream(Ok(())));
        assert!(!t.gate.in_demand(t.at));
        t.on(Input::Upstream(Err("refused again".into())));
        assert!(
            !matches!(&t.on(Input::Arrived(3))[..], [Action::Refuse(..)]),
            "just down again: held"
        );
    }

    #[test]
    fn a_flapping_upstream_trips_the_breaker_and_clients_wait_for_it() {
        let mut c = config();
        c.max_pending = 100;
        c.max_connections = 100;
        let mut t = T::new(c);
        let mut id = 0;
        // Ready, says the probe, but every connect fails.
        let mut failed = 0;
        for _ in 0..20 {
            t.on(Input::Upstream(Ok(())));
            id += 1;
            let actions = t.on(Input::Arrived(id));
            for action in actions {
                if let Action::Connect(c) = action {
                    t.on(Input::ConnectFailed(c, refused()));
                    failed += 1;
                }
            }
        }
        assert!(failed < 20, "the breaker opened: {failed} connects tried");
        assert!(t.gate.pending() > 0);
        assert!(t.gate.deadline().is_some());
    }

    #[test]
    fn a_client_that_leaves_while_waiting_is_forgotten() {
        let mut t = T::new(config());
        t.on(Input::Arrived(1));
        t.on(Input::Closed(1));
        assert_eq!(t.gate.pending(), 0);
        assert!(t.on(Input::Upstream(Ok(()))).is_empty());
    }
}
