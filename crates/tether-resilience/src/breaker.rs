//! A circuit breaker for one failure domain: one upstream, not one call.
//!
//! While an upstream is down, every request still sent to it waits for a
//! refusal or a timeout, and adds load to a peer that is trying to recover. A
//! breaker fails those requests at once, locally, and lets a single probe
//! through now and then to learn when the upstream is back.
//!
//! The design is linkerd's "unified" failure accrual with one addition:
//!
//! - It trips on `consecutive_failures` failures in a row, *or* when a
//!   time-bucketed window holds at least `min_requests` outcomes whose success
//!   rate is below `min_success_rate`. The count catches a dead upstream at any
//!   traffic level; the rate catches a flaky one. Breakers that use only a
//!   ratio over a minimum of 100 calls (resilience4j, Polly) almost never trip
//!   on a low-traffic local link.
//! - It stays open for a penalty that doubles on each re-open, from 1 s to
//!   60 s, moved by proportional jitter so that breakers opened together do
//!   not probe together.
//! - Once the penalty is over, one probe at a time goes through. Unlike
//!   linkerd, one good probe does not close the breaker: `close_after` good
//!   probes in a row do (the rise threshold of health checks), so a flapping
//!   upstream does not get full traffic back on a single lucky answer.
//!
//! The breaker is a plain value driven by [`Breaker::acquire`] and
//! [`Breaker::record`]. Time is the `now` its caller passes in, so every
//! transition can be tested on paused time.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::failure::human_duration;
use crate::{Cause, Deadline, Failure, InvalidPolicy, Jitter, Phase};

/// The name policy errors of this module give the thing they reject.
const WHAT: &str = "breaker";

/// How a [`Breaker`] trips, how long it stays open and when it closes again.
///
/// Start from [`BreakerConfig::default_local`] and change one group of
/// settings at a time with the `with_*` methods, which validate what they set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    consecutive_failures: u32,
    window: Duration,
    buckets: u32,
    min_requests: u32,
    min_success_rate: f64,
    penalty_initial: Duration,
    penalty_max: Duration,
    jitter: f64,
    close_after: u32,
}

/// Where a [`Breaker`] is in its cycle.
///
/// ```text
///            trip                    penalty over
///   Closed ───────▶ Open { until } ───────────────▶ HalfOpen
///     ▲                   ▲                            │
///     │                   └──── probe failed ──────────┤
///     └──────────── close_after probes succeeded ──────┘
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Requests flow, and their outcomes count toward tripping.
    Closed,
    /// Every request is rejected at once until `until`; the first acquire at
    /// or after `until` turns the breaker half-open.
    Open { until: Instant },
    /// One request at a time goes through as a probe. `successes` probes in a
    /// row have succeeded so far; `probe_in_flight` while one is out, and
    /// every other request is rejected meanwhile.
    HalfOpen {
        probe_in_flight: bool,
        successes: u32,
    },
}

/// A circuit breaker for one upstream.
///
/// Ask [`Breaker::acquire`] before each request; hand the [`Permit`] back
/// with [`Breaker::record`] when the outcome is known, or with
/// [`Breaker::release`] when the request ended without one (cancelled).
/// Record only outcomes that say something about the upstream: failures of
/// [`Origin::Upstream`](crate::Origin::Upstream), and successes.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Failures in a row while closed.
    consecutive: u32,
    window: Window,
    /// The next open penalty before jitter: the initial one, doubled on each
    /// re-open up to the max, back to the initial one on close.
    penalty: Duration,
    rng: Jitter,
    /// Bumped on every change of state kind. A permit carries the epoch it
    /// was granted in, so its outcome counts only toward that state.
    epoch: u64,
    /// When the probe in flight was granted, so a probe that never reports
    /// back can expire.
    probe_since: Option<Instant>,
}

/// Leave to send one request, from [`Breaker::acquire`].
///
/// Hand it back with [`Breaker::record`] or [`Breaker::release`]. A probe
/// permit that is dropped instead keeps the breaker half-open until it
/// expires, after the max penalty, and then counts as a failed probe.
#[derive(Debug)]
#[must_use = "hand the permit back with `record` or `release`"]
pub struct Permit {
    epoch: u64,
    probe: bool,
}

/// A request refused by the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    retry_in: Duration,
    probing: bool,
}

/// The success-rate window: a ring of `buckets` counters, each covering
/// `window / buckets` of time. It holds the outcomes of the current, partial
/// bucket and of the `buckets − 1` before it, so between `window − width` and
/// `window` of history; moving to a later bucket clears the expired ones.
#[derive(Debug, Clone)]
struct Window {
    buckets: Box<[Bucket]>,
    width: Duration,
    /// The start of slot 0, set by the first outcome after a clear.
    origin: Option<Instant>,
    /// The newest slot (counted from `origin` in widths) seen so far.
    newest: u64,
}

/// The outcomes of one bucket of the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    successes: u32,
    failures: u32,
}

// === impl BreakerConfig ===

impl BreakerConfig {
    /// tether's default for a local upstream (linkerd's failure accrual with
    /// Envoy's consecutive count):
    ///
    /// - trip on 5 failures in a row, or on a success rate below 80 % over
    ///   at least 20 requests in a 10 s window of 10 buckets;
    /// - stay open 1 s, doubling per re-open up to 60 s, with ±50 % jitter;
    /// - close after 2 good probes in a row.
    pub const fn default_local() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 5,
            window: Duration::from_secs(10),
            buckets: 10,
            min_requests: 20,
            min_success_rate: 0.8,
            penalty_initial: Duration::from_secs(1),
            penalty_max: Duration::from_secs(60),
            jitter: 0.5,
            close_after: 2,
        }
    }

    /// Trip after `failures` failures in a row; at least 1.
    pub fn with_consecutive_failures(self, failures: u32) -> Result<BreakerConfig, InvalidPolicy> {
        if failures == 0 {
            return Err(InvalidPolicy::new(
                WHAT,
                "consecutive failures must be at least 1",
            ));
        }
        Ok(BreakerConfig {
            consecutive_failures: failures,
            ..self
        })
    }

    /// Trip when a window of `window`, kept in `buckets` buckets, holds at
    /// least `min_requests` outcomes and their success rate is below
    /// `min_success_rate`.
    ///
    /// `window` must be positive and at least one nanosecond per bucket,
    /// `buckets` and `min_requests` at least 1, and `min_success_rate` in
    /// `(0, 1]`.
    pub fn with_success_rate(
        self,
        window: Duration,
        buckets: u32,
        min_requests: u32,
        min_success_rate: f64,
    ) -> Result<BreakerConfig, InvalidPolicy> {
        if window.is_zero() {
            return Err(InvalidPolicy::new(
                WHAT,
                "success-rate window must be positive",
            ));
        }
        if buckets == 0 {
            return Err(InvalidPolicy::new(
                WHAT,
                "success-rate buckets must be at least 1",
            ));
        }
        if window.as_nanos() < u128::from(buckets) {
            return Err(InvalidPolicy::new(
                WHAT,
                "success-rate window is shorter than its buckets",
            ));
        }
        if min_requests == 0 {
            return Err(InvalidPolicy::new(WHAT, "min requests must be at least 1"));
        }
        // Written so that NaN fails too.
        if !(min_success_rate > 0.0 && min_success_rate <= 1.0) {
            return Err(InvalidPolicy::new(
                WHAT,
                "min success rate must be in (0, 1]",
            ));
        }
        Ok(BreakerConfig {
            window,
            buckets,
            min_requests,
            min_success_rate,
            ..self
        })
    }

    /// Stay open `initial` after the first trip, doubling per re-open up to
    /// `max`, each penalty moved by up to `jitter` of itself and never above
    /// `max`.
    ///
    /// `initial` must be positive and at most `max`; `jitter` in `[0, 1)`.
    pub fn with_penalty(
        self,
        initial: Duration,
        max: Duration,
        jitter: f64,
    ) -> Result<BreakerConfig, InvalidPolicy> {
        if initial.is_zero() {
            return Err(InvalidPolicy::new(WHAT, "initial penalty must be positive"));
        }
        if max < initial {
            return Err(InvalidPolicy::new(
                WHAT,
                "max penalty must be at least the initial penalty",
            ));
        }
        if !(0.0..1.0).contains(&jitter) {
            return Err(InvalidPolicy::new(WHAT, "jitter must be in [0, 1)"));
        }
        Ok(BreakerConfig {
            penalty_initial: initial,
            penalty_max: max,
            jitter,
            ..self
        })
    }

    /// Close after `probes` good probes in a row; at least 1.
    pub fn with_close_after(self, probes: u32) -> Result<BreakerConfig, InvalidPolicy> {
        if probes == 0 {
            return Err(InvalidPolicy::new(
                WHAT,
                "close-after must be at least 1 probe",
            ));
        }
        Ok(BreakerConfig {
            close_after: probes,
            ..self
        })
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    pub fn min_requests(&self) -> u32 {
        self.min_requests
    }

    pub fn min_success_rate(&self) -> f64 {
        self.min_success_rate
    }

    pub fn penalty_initial(&self) -> Duration {
        self.penalty_initial
    }

    /// The longest the breaker stays open; also how long a probe may stay
    /// out before it counts as failed.
    pub fn penalty_max(&self) -> Duration {
        self.penalty_max
    }

    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    pub fn close_after(&self) -> u32 {
        self.close_after
    }
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig::default_local()
    }
}

// === impl Breaker ===

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig, rng: Jitter) -> Breaker {
        Breaker {
            config,
            state: BreakerState::Closed,
            consecutive: 0,
            window: Window::new(config.window, config.buckets),
            penalty: config.penalty_initial,
            rng,
            epoch: 0,
            probe_since: None,
        }
    }

    /// Asks to send one request at `now`.
    ///
    /// Closed: granted. Open: rejected until the penalty is over; the first
    /// acquire after it turns the breaker half-open and is granted as the
    /// probe. Half-open: granted as the next probe if none is in flight,
    /// rejected otherwise.
    pub fn acquire(&mut self, now: Instant) -> Result<Permit, Rejected> {
        match self.state {
            BreakerState::Closed => Ok(Permit {
                epoch: self.epoch,
                probe: false,
            }),
            BreakerState::Open { until } if now < until => Err(self.rejected(now)),
            BreakerState::Open { .. } => {
                // Open → HalfOpen: the penalty is over, and this request goes
                // through as the first probe.
                self.enter(BreakerState::HalfOpen {
                    probe_in_flight: false,
                    successes: 0,
                });
                Ok(self.grant_probe(now))
            }
            BreakerState::HalfOpen {
                probe_in_flight: false,
                ..
            } => Ok(self.grant_probe(now)),
            BreakerState::HalfOpen {
                probe_in_flight: true,
                ..
            } => {
                if self.probe_lost(now) {
                    // HalfOpen → Open: a probe that has not reported back
                    // within the max penalty is as good as a hung request;
                    // it counts as failed, so a dropped permit cannot hold
                    // the breaker half-open for ever.
                    self.open(now);
                }
                Err(self.rejected(now))
            }
        }
    }

    /// Records the outcome of the request `permit` let through.
    ///
    /// An outcome counts only toward the state that granted its permit. A
    /// slow request let through while closed that ends after the breaker
    /// opened, or after it closed again, is ignored: it says nothing about
    /// the probes, and counting it could close or re-open the breaker on old
    /// news.
    pub fn record(&mut self, now: Instant, permit: Permit, success: bool) {
        if permit.epoch != self.epoch {
            return;
        }
        match self.state {
            BreakerState::Closed => self.record_closed(now, success),
            BreakerState::HalfOpen {
                probe_in_flight: true,
                successes,
            } if permit.probe => {
                self.probe_since = None;
                let successes = successes.saturating_add(1);
                if !success {
                    // HalfOpen → Open: the probe failed; the penalty, already
                    // doubled by the last open, applies.
                    self.open(now);
                } else if successes >= self.config.close_after {
                    // HalfOpen → Closed: enough good probes in a row.
                    self.close();
                } else {
                    // HalfOpen → HalfOpen: one more good probe; the next
                    // acquire sends the next one.
                    self.state = BreakerState::HalfOpen {
                        probe_in_flight: false,
                        successes,
                    };
                }
            }
            // Only closed and half-open states grant permits, and any change
            // of state kind bumps the epoch, so nothing else can match it.
            _ => {}
        }
    }

    /// Hands back a permit whose request ended without an outcome, such as a
    /// request its caller cancelled. A probe permit frees the probe slot, so
    /// the next acquire probes at once; a normal permit is simply dropped.
    pub fn release(&mut self, permit: Permit) {
        if !permit.probe || permit.epoch != self.epoch {
            return;
        }
        if let BreakerState::HalfOpen {
            probe_in_flight: true,
            successes,
        } = self.state
        {
            self.state = BreakerState::HalfOpen {
                probe_in_flight: false,
                successes,
            };
            self.probe_since = None;
        }
    }

    /// The state as of the last call. An `Open` state whose `until` has
    /// passed turns half-open on the next [`Breaker::acquire`].
    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn record_closed(&mut self, now: Instant, success: bool) {
        self.window.record(now, success);
        if success {
            self.consecutive = 0;
            return;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        // Trip only on a failure: a breaker that opened on a success would be
        // hard to explain, and if the rate is still too low the next failure
        // trips it.
        let c = &self.config;
        if self.consecutive >= c.consecutive_failures
            || self.window.rate_below(c.min_requests, c.min_success_rate)
        {
            // Closed → Open: too many failures in a row, or too low a rate.
            self.open(now);
        }
    }

    fn grant_probe(&mut self, now: Instant) -> Permit {
        if let BreakerState::HalfOpen { successes, .. } = self.state {
            self.state = BreakerState::HalfOpen {
                probe_in_flight: true,
                successes,
            };
        }
        self.probe_since = Some(now);
        Permit {
            epoch: self.epoch,
            probe: true,
        }
    }

    fn probe_lost(&self, now: Instant) -> bool {
        self.probe_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.config.penalty_max)
    }

    fn rejected(&self, now: Instant) -> Rejected {
        match self.state {
            BreakerState::Open { until } => Rejected {
                retry_in: until.saturating_duration_since(now),
                probing: false,
            },
            // A probe is out: its answer decides what comes next, and it
            // normally arrives well within the shortest penalty, so that is
            // the hint. It is only a hint: the probe may take longer, or fail
            // and re-open the breaker for longer.
            _ => Rejected {
                retry_in: self.config.penalty_initial,
                probing: true,
            },
        }
    }

    fn open(&mut self, now: Instant) {
        let c = &self.config;
        let penalty = self.rng.spread(self.penalty, c.jitter).min(c.penalty_max);
        self.penalty = self.penalty.saturating_mul(2).min(c.penalty_max);
        // Deadline::after saturates a sum too large for an Instant.
        let until = Deadline::after(now, penalty).end();
        self.probe_since = None;
        self.enter(BreakerState::Open { until });
    }

    fn close(&mut self) {
        self.consecutive = 0;
        self.window.clear();
        self.penalty = self.config.penalty_initial;
        self.probe_since = None;
        self.enter(BreakerState::Closed);
    }

    fn enter(&mut self, state: BreakerState) {
        self.state = state;
        self.epoch = self.epoch.wrapping_add(1);
    }
}

// === impl Permit ===

impl Permit {
    /// Whether this permit is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

// === impl Rejected ===

impl Rejected {
    /// How long until the breaker may let a request through: the rest of the
    /// open penalty, or, while a probe is in flight, a hint of the shortest
    /// penalty.
    pub fn retry_in(&self) -> Duration {
        self.retry_in
    }

    /// Whether the rejection is because a half-open probe is in flight,
    /// rather than because the breaker is open.
    pub fn is_probing(&self) -> bool {
        self.probing
    }

    /// Turns the rejection into a classified failure of `what` (the action
    /// and its object, such as `connect to 127.0.0.1:8051`): cause
    /// `breaker.open`, phase `connect`, local origin, with the time until the
    /// next try as its retry-after hint.
    pub fn into_failure(self, what: impl fmt::Display) -> Failure {
        Failure::new(
            Phase::Connect,
            Cause::BreakerOpen,
            format!("{what}: {self}"),
        )
        .with_retry_after(Some(self.retry_in))
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let next = human_duration(self.retry_in);
        if self.probing {
            write!(
                f,
                "circuit breaker half-open, waiting for a probe, next try in {next}"
            )
        } else {
            write!(
                f,
                "circuit breaker open after repeated failures, next try in {next}"
            )
        }
    }
}

impl std::error::Error for Rejected {}

// === impl Window ===

impl Window {
    fn new(span: Duration, buckets: u32) -> Window {
        // The config guarantees at least one bucket and one nanosecond per
        // bucket; the max(1) keeps this total even if it did not.
        let buckets = buckets.max(1);
        let width = (span / buckets).max(Duration::from_nanos(1));
        Window {
            buckets: vec![Bucket::default(); buckets as usize].into_boxed_slice(),
            width,
            origin: None,
            newest: 0,
        }
    }

    fn record(&mut self, now: Instant, success: bool) {
        let at = self.advance(now);
        let bucket = &mut self.buckets[at];
        if success {
            bucket.successes = bucket.successes.saturating_add(1);
        } else {
            bucket.failures = bucket.failures.saturating_add(1);
        }
    }

    /// Whether the window holds at least `min_requests` outcomes and their
    /// success rate is below `min_rate`.
    fn rate_below(&self, min_requests: u32, min_rate: f64) -> bool {
        let (successes, failures) = self.buckets.iter().fold((0u64, 0u64), |(s, f), b| {
            (s + u64::from(b.successes), f + u64::from(b.failures))
        });
        let total = successes + failures;
        total >= u64::from(min_requests) && (successes as f64) < min_rate * total as f64
    }

    fn clear(&mut self) {
        self.buckets.fill(Bucket::default());
        self.origin = None;
        self.newest = 0;
    }

    /// Moves the window to `now`, clearing the buckets whose time has passed,
    /// and returns the index of the bucket `now` falls in. A `now` earlier
    /// than one already seen counts in the newest bucket.
    fn advance(&mut self, now: Instant) -> usize {
        let n = self.buckets.len() as u64;
        let origin = *self.origin.get_or_insert(now);
        let widths = now.saturating_duration_since(origin).as_nanos() / self.width.as_nanos();
        let slot = u64::try_from(widths).unwrap_or(u64::MAX).max(self.newest);
        // Every slot between the newest seen and this one reuses a bucket
        // that still holds outcomes from a whole window ago.
        let expired = (slot - self.newest).min(n);
        for k in 1..=expired {
            let at = (self.newest.wrapping_add(k) % n) as usize;
            self.buckets[at] = Bucket::default();
        }
        self.newest = slot;
        (slot % n) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Origin, Verdict};
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The default breaker without jitter, so penalties are exact.
    fn exact() -> BreakerConfig {
        BreakerConfig::default_local()
            .with_penalty(secs(1), secs(60), 0.0)
            .unwrap()
    }

    fn outcome(b: &mut Breaker, now: Instant, success: bool) {
        let permit = b.acquire(now).unwrap();
        b.record(now, permit, success);
    }

    fn open_until(b: &Breaker) -> Instant {
        match b.state() {
            BreakerState::Open { until } => until,
            other => panic!("expected open, got {other:?}"),
        }
    }

    #[test]
    fn rejects_nonsense_configs() {
        let c = BreakerConfig::default_local();
        let err = |r: Result<BreakerConfig, InvalidPolicy>| r.unwrap_err().to_string();
        assert_eq!(
            err(c.with_consecutive_failures(0)),
            "invalid breaker: consecutive failures must be at least 1"
        );
        assert_eq!(
            err(c.with_success_rate(Duration::ZERO, 10, 20, 0.8)),
            "invalid breaker: success-rate window must be positive"
        );
        assert_eq!(
            err(c.with_success_rate(secs(10), 0, 20, 0.8)),
            "invalid breaker: success-rate buckets must be at least 1"
        );
        assert_eq!(
            err(c.with_success_rate(Duration::from_nanos(5), 10, 20, 0.8)),
            "invalid breaker: success-rate window is shorter than its buckets"
        );
        assert_eq!(
            err(c.with_success_rate(secs(10), 10, 0, 0.8)),
            "invalid breaker: min requests must be at least 1"
        );
        for rate in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
            assert_eq!(
                err(c.with_success_rate(secs(10), 10, 20, rate)),
                "invalid breaker: min success rate must be in (0, 1]",
                "{rate}"
            );
        }
        assert!(c.with_success_rate(secs(10), 10, 20, 1.0).is_ok());
        assert_eq!(
            err(c.with_penalty(Duration::ZERO, secs(60), 0.5)),
            "invalid breaker: initial penalty must be positive"
        );
        assert_eq!(
            err(c.with_penalty(secs(2), secs(1), 0.5)),
            "invalid breaker: max penalty must be at least the initial penalty"
        );
        for jitter in [1.0, -0.1, f64::NAN] {
            assert_eq!(
                err(c.with_penalty(secs(1), secs(60), jitter)),
                "invalid breaker: jitter must be in [0, 1)"
            );
        }
        assert_eq!(
            err(c.with_close_after(0)),
            "invalid breaker: close-after must be at least 1 probe"
        );
    }

    #[test]
    fn defaults_follow_the_research() {
        let c = BreakerConfig::default();
        assert_eq!(c, BreakerConfig::default_local());
        assert_eq!(c.consecutive_failures(), 5);
        assert_eq!(
            (c.window(), c.buckets(), c.min_requests()),
            (secs(10), 10, 20)
        );
        assert_eq!(c.min_success_rate(), 0.8);
        assert_eq!(
            (c.penalty_initial(), c.penalty_max(), c.jitter()),
            (secs(1), secs(60), 0.5)
        );
        assert_eq!(c.close_after(), 2);
        let c = c
            .with_consecutive_failures(7)
            .unwrap()
            .with_close_after(3)
            .unwrap();
        assert_eq!((c.consecutive_failures(), c.close_after()), (7, 3));
        assert_eq!(c.window(), secs(10), "other settings are kept");
    }

    #[tokio::test(start_paused = true)]
    async fn trips_then_probes_one_at_a_time_and_closes_after_two_good_probes() {
        let mut b = Breaker::new(exact(), Jitter::seeded(1));
        for _ in 0..4 {
            outcome(&mut b, Instant::now(), false);
            assert_eq!(b.state(), BreakerState::Closed);
        }
        outcome(&mut b, Instant::now(), false);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Instant::now() + secs(1)
            }
        );

        let rejected = b.acquire(Instant::now()).unwrap_err();
        assert_eq!(rejected.retry_in(), secs(1));
        assert!(!rejected.is_probing());
        tokio::time::advance(ms(999)).await;
        assert_eq!(b.acquire(Instant::now()).unwrap_err().retry_in(), ms(1));

        // The penalty is over: one probe, and nothing else while it is out.
        tokio::time::advance(ms(1)).await;
        let probe = b.acquire(Instant::now()).unwrap();
        assert!(probe.is_probe());
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probe_in_flight: true,
                successes: 0
            }
        );
        let rejected = b.acquire(Instant::now()).unwrap_err();
        assert!(rejected.is_probing());
        assert_eq!(
            rejected.retry_in(),
            secs(1),
            "the hint is the shortest penalty"
        );

        // One good probe is not enough to close.
        tokio::time::advance(ms(20)).await;
        b.record(Instant::now(), probe, true);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probe_in_flight: false,
                successes: 1
            }
        );
        let second = b.acquire(Instant::now()).unwrap();
        assert!(second.is_probe());
        assert!(b.acquire(Instant::now()).is_err());
        b.record(Instant::now(), second, true);
        assert_eq!(b.state(), BreakerState::Closed);

        let normal = b.acquire(Instant::now()).unwrap();
        assert!(!normal.is_probe());
        assert!(
            b.acquire(Instant::now()).is_ok(),
            "closed grants many permits at once"
        );
        b.record(Instant::now(), normal, true);
    }

    #[tokio::test(start_paused = true)]
    async fn each_reopen_doubles_the_penalty_up_to_the_cap_and_closing_resets_it() {
        let mut b = Breaker::new(exact(), Jitter::seeded(2));
        for _ in 0..5 {
            outcome(&mut b, Instant::now(), false);
        }
        let mut penalties = Vec::new();
        for _ in 0..8 {
            let until = open_until(&b);
            penalties.push((until - Instant::now()).as_secs());
            tokio::time::advance(until - Instant::now()).await;
            let probe = b.acquire(Instant::now()).unwrap();
            b.record(Instant::now(), probe, false);
        }
        assert_eq!(penalties, [1, 2, 4, 8, 16, 32, 60, 60]);

        tokio::time::advance(open_until(&b) - Instant::now()).await;
        outcome(&mut b, Instant::now(), true);
        outcome(&mut b, Instant::now(), true);
        assert_eq!(b.state(), BreakerState::Closed);
        for _ in 0..5 {
            outcome(&mut b, Instant::now(), false);
        }
        assert_eq!(
            open_until(&b) - Instant::now(),
            secs(1),
            "closing resets the penalty"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_after_a_good_one_reopens() {
        let mut b = Breaker::new(exact(), Jitter::seeded(3));
        for _ in 0..5 {
            outcome(&mut b, Instant::now(), false);
        }
        tokio::time::advance(secs(1)).await;
        outcome(&mut b, Instant::now(), true);
        outcome(&mut b, Instant::now(), false);
        assert_eq!(open_until(&b) - Instant::now(), secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn low_traffic_trips_on_the_success_rate_not_the_count() {
        let mut b = Breaker::new(exact(), Jitter::seeded(4));
        // 20 requests over 7.6 s, every fourth one failing: never two failures
        // in a row, but a success rate of 75 %, below the 80 % floor.
        for i in 1..=20 {
            assert_eq!(b.state(), BreakerState::Closed, "request {i}");
            outcome(&mut b, Instant::now(), i % 4 != 0);
            assert!(b.consecutive <= 1);
            if i < 20 {
                tokio::time::advance(ms(400)).await;
            }
        }
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Instant::now() + secs(1)
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_forgets_old_outcomes() {
        let mut b = Breaker::new(exact(), Jitter::seeded(5));
        // The same pattern spread over 38 s: the window never holds 20.
        for i in 1..=40 {
            outcome(&mut b, Instant::now(), i % 4 != 0);
            assert_eq!(b.state(), BreakerState::Closed, "request {i}");
            tokio::time::advance(secs(2)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_from_an_earlier_state_are_ignored() {
        let mut b = Breaker::new(exact(), Jitter::seeded(6));
        let slow_failure = b.acquire(Instant::now()).unwrap();
        let slow_success = b.acquire(Instant::now()).unwrap();
        let after_close = b.acquire(Instant::now()).unwrap();
        for _ in 0..5 {
            outcome(&mut b, Instant::now(), false);
        }
        let open = b.state();

        // A request let through while closed ends while open: no change.
        b.record(Instant::now(), slow_failure, false);
        assert_eq!(b.state(), open);

        // Nor may it pass for the probe's answer while half-open.
        tokio::time::advance(secs(1)).await;
        let probe = b.acquire(Instant::now()).unwrap();
        b.record(Instant::now(), slow_success, true);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probe_in_flight: true,
                successes: 0
            }
        );
        b.record(Instant::now(), probe, true);
        outcome(&mut b, Instant::now(), true);
        assert_eq!(b.state(), BreakerState::Closed);

        // Nor does it count toward the next closed period.
        for _ in 0..4 {
            outcome(&mut b, Instant::now(), false);
        }
        b.record(Instant::now(), after_close, false);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a stale failure is not the fifth"
        );
        outcome(&mut b, Instant::now(), false);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_probe_frees_the_slot_and_a_lost_one_expires_as_failed() {
        let mut b = Breaker::new(exact(), Jitter::seeded(7));
        for _ in 0..5 {
            outcome(&mut b, Instant::now(), false);
        }
        tokio::time::advance(secs(1)).await;
        let probe = b.acquire(Instant::now()).unwrap();
        b.release(probe);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probe_in_flight: false,
                successes: 0
            }
        );

        // This probe is never handed back.
        let lost = b.acquire(Instant::now()).unwrap();
        tokio::time::advance(secs(59)).await;
        assert!(b.acquire(Instant::now()).unwrap_err().is_probing());
        tokio::time::advance(secs(1)).await;
        let rejected = b.acquire(Instant::now()).unwrap_err();
        assert!(!rejected.is_probing());
        assert_eq!(
            rejected.retry_in(),
            secs(2),
            "the lost probe counted as a failed one"
        );

        // Its answer, when it comes at last, changes nothing.
        let open = b.state();
        b.record(Instant::now(), lost, true);
        assert_eq!(b.state(), open);
    }

    #[test]
    fn rejection_words_and_failure() {
        let open = Rejected {
            retry_in: ms(1200),
            probing: false,
        };
        assert_eq!(
            open.to_string(),
            "circuit breaker open after repeated failures, next try in 1.2s"
        );
        let probing = Rejected {
            retry_in: secs(1),
            probing: true,
        };
        assert_eq!(
            probing.to_string(),
            "circuit breaker half-open, waiting for a probe, next try in 1.0s"
        );

        let f = open.into_failure("connect to 127.0.0.1:8051");
        assert_eq!(f.cause, Cause::BreakerOpen);
        assert_eq!(f.phase, Phase::Connect);
        assert_eq!(f.origin, Origin::Local);
        assert_eq!(f.verdict, Verdict::Transient);
        assert_eq!(f.retry_after, Some(ms(1200)));
        assert_eq!(
            f.detail,
            "connect to 127.0.0.1:8051: circuit breaker open after repeated failures, next try in 1.2s"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        Record { pick: usize, success: bool },
        Release { pick: usize },
        Advance { ms: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Acquire),
            3 => (any::<usize>(), any::<bool>())
                .prop_map(|(pick, success)| Op::Record { pick, success }),
            1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
            2 => (0u64..3_000).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    fn config() -> impl Strategy<Value = BreakerConfig> {
        (
            1u32..6,
            1u32..4,
            1u64..500,
            0u64..3_000,
            0.0f64..0.99,
            1u32..30,
        )
            .prop_map(
                |(failures, close_after, initial, extra, jitter, min_requests)| {
                    BreakerConfig::default_local()
                        .with_consecutive_failures(failures)
                        .and_then(|c| c.with_close_after(close_after))
                        .and_then(|c| c.with_penalty(ms(initial), ms(initial + extra), jitter))
                        .and_then(|c| c.with_success_rate(secs(10), 10, min_requests, 0.8))
                        .unwrap()
                },
            )
    }

    proptest! {
        #[test]
        fn never_two_probes_at_once(
            config in config(),
            seed: u64,
            ops in prop::collection::vec(op(), 1..300),
        ) {
            let mut b = Breaker::new(config, Jitter::seeded(seed));
            let mut now = Instant::now();
            let mut out: Vec<(Permit, Instant)> = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire => {
                        if let Ok(permit) = b.acquire(now) {
                            if permit.is_probe() {
                                // Any other probe still out must have expired.
                                for (other, since) in &out {
                                    if other.is_probe() {
                                        prop_assert!(now - *since >= config.penalty_max());
                                    }
                                }
                                let probing = matches!(
                                    b.state(),
                                    BreakerState::HalfOpen { probe_in_flight: true, .. }
                                );
                                prop_assert!(probing, "granted a probe in {:?}", b.state());
                            } else {
                                prop_assert_eq!(b.state(), BreakerState::Closed);
                            }
                            out.push((permit, now));
                        }
                    }
                    Op::Record { pick, success } if !out.is_empty() => {
                        let (permit, _) = out.swap_remove(pick % out.len());
                        b.record(now, permit, success);
                    }
                    Op::Release { pick } if !out.is_empty() => {
                        let (permit, _) = out.swap_remove(pick % out.len());
                        b.release(permit);
                    }
                    Op::Advance { ms: n } => now += ms(n),
                    _ => {}
                }
            }
        }

        #[test]
        fn open_penalty_stays_in_bounds_and_its_base_never_shrinks(
            config in config(),
            seed: u64,
            reopens in 1usize..40,
        ) {
            let mut b = Breaker::new(config, Jitter::seeded(seed));
            let mut now = Instant::now();
            while b.state() == BreakerState::Closed {
                outcome(&mut b, now, false);
            }
            let low = config.penalty_initial().mul_f64(1.0 - config.jitter());
            let mut last_base = Duration::ZERO;
            for _ in 0..reopens {
                let until = open_until(&b);
                let penalty = until - now;
                prop_assert!(penalty + Duration::from_nanos(1) >= low, "{penalty:?} < {low:?}");
                prop_assert!(penalty <= config.penalty_max());
                prop_assert!(b.penalty >= last_base);
                prop_assert!(b.penalty <= config.penalty_max());
                last_base = b.penalty;
                now = until;
                let probe = b.acquire(now).unwrap();
                b.record(now, probe, false);
            }
            // Closing starts the penalty over.
            now = open_until(&b);
            for _ in 0..config.close_after() {
                outcome(&mut b, now, true);
            }
            prop_assert_eq!(b.state(), BreakerState::Closed);
            prop_assert_eq!(b.penalty, config.penalty_initial());
        }

        #[test]
        fn closed_trips_only_on_enough_failures_in_a_row_below_min_requests(
            failures in 1u32..10,
            outcomes in prop::collection::vec((any::<bool>(), 0u64..2_000), 0..40),
        ) {
            let config = BreakerConfig::default_local()
                .with_consecutive_failures(failures)
                .and_then(|c| c.with_success_rate(secs(10), 10, 41, 0.99))
                .unwrap();
            let mut b = Breaker::new(config, Jitter::seeded(0));
            let mut now = Instant::now();
            let mut run = 0;
            for (success, gap) in outcomes {
                now += ms(gap);
                outcome(&mut b, now, success);
                run = if success { 0 } else { run + 1 };
                let open = matches!(b.state(), BreakerState::Open { .. });
                prop_assert_eq!(open, run >= failures, "run {}", run);
                if open {
                    break;
                }
            }
        }
    }
}
