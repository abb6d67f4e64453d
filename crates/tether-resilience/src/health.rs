//! Rise/fall hysteresis for active health checks, with probe intervals that
//! depend on the state (HAProxy's `inter`, `fastinter` and `downinter`;
//! Envoy's thresholds and interval jitter).
//!
//! One failed probe should not take a service out, nor one good probe bring a
//! flapping one back: an upstream turns unhealthy after `fall` failures in a
//! row and healthy again after `rise` successes in a row. The one exception is
//! startup, where a single success marks the service ready (as in Envoy):
//! nothing was healthy before, so there is no flapping to guard against, and
//! waiting for more only delays readiness.
//!
//! Probes run often while the answer is in doubt (starting, or a streak under
//! way), at the steady interval while healthy, and back off while the upstream
//! stays down, so a dead service is not polled hard for ever. Every interval
//! carries proportional jitter so that many checks do not run in step.
//!
//! The tracker only decides; it never probes and never sleeps.

use std::fmt;
use std::time::Duration;

use crate::{InvalidPolicy, Jitter};

/// The name policy errors of this module give the thing they reject.
const WHAT: &str = "health check";

/// The thresholds and intervals of a [`HealthTracker`].
///
/// Start from [`HealthConfig::default_local`] and change one group of
/// settings at a time with the `with_*` methods, which validate what they set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
    fast_interval: Duration,
    down_max: Duration,
    jitter: f64,
}

/// What the health checks say about an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Never healthy yet: the service is starting, or has not come up.
    Starting,
    /// Answering its probes; stays so until `fall` probes in a row fail.
    Healthy,
    /// Was healthy, then failed `fall` probes in a row; stays so until `rise`
    /// probes in a row succeed.
    Unhealthy,
}

/// A change of [`Health`], returned by [`HealthTracker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
}

/// Turns probe results into a [`Health`] with hysteresis, and says when to
/// probe next.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    config: HealthConfig,
    health: Health,
    /// Results in a row that disagree with `health`: failures while starting
    /// or healthy, successes while unhealthy.
    streak: u32,
    /// The down interval before jitter: `interval` on turning unhealthy,
    /// doubled after each failed probe while unhealthy, up to `down_max`.
    down: Duration,
    rng: Jitter,
}

// === impl HealthConfig ===

impl HealthConfig {
    /// tether's default for a local upstream (HAProxy's defaults with Envoy's
    /// jitter): probe every 2 s with a 1 s timeout, every 250 ms while the
    /// answer is in doubt, backing off to 30 s while down; healthy after 2
    /// successes in a row, unhealthy after 3 failures in a row; ±10 % jitter.
    pub const fn default_local() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            fast_interval: Duration::from_millis(250),
            down_max: Duration::from_secs(30),
            jitter: 0.1,
        }
    }

    /// Probe every `interval` while healthy, every `fast_interval` while the
    /// answer is in doubt, and back off from `interval` up to `down_max`
    /// while down.
    ///
    /// All must be positive, with `fast_interval <= interval <= down_max`.
    pub fn with_intervals(
        self,
        interval: Duration,
        fast_interval: Duration,
        down_max: Duration,
    ) -> Result<HealthConfig, InvalidPolicy> {
        if fast_interval.is_zero() {
            return Err(InvalidPolicy::new(WHAT, "fast interval must be positive"));
        }
        if interval < fast_interval {
            return Err(InvalidPolicy::new(
                WHAT,
                "interval must be at least the fast interval",
            ));
        }
        if down_max < interval {
            return Err(InvalidPolicy::new(
                WHAT,
                "max down interval must be at least the interval",
            ));
        }
        Ok(HealthConfig {
            interval,
            fast_interval,
            down_max,
            ..self
        })
    }

    /// How long one probe may take. The tracker does not use it; it travels
    /// with the intervals so the prober has one config. Must be positive.
    pub fn with_timeout(self, timeout: Duration) -> Result<HealthConfig, InvalidPolicy> {
        if timeout.is_zero() {
            return Err(InvalidPolicy::new(WHAT, "timeout must be positive"));
        }
        Ok(HealthConfig { timeout, ..self })
    }

    /// Healthy again after `rise` successes in a row, unhealthy after `fall`
    /// failures in a row; both at least 1.
    pub fn with_thresholds(self, rise: u32, fall: u32) -> Result<HealthConfig, InvalidPolicy> {
        if rise == 0 {
            return Err(InvalidPolicy::new(WHAT, "rise must be at least 1"));
        }
        if fall == 0 {
            return Err(InvalidPolicy::new(WHAT, "fall must be at least 1"));
        }
        Ok(HealthConfig { rise, fall, ..self })
    }

    /// Moves every interval by up to `jitter` of itself; in `[0, 1)`.
    pub fn with_jitter(self, jitter: f64) -> Result<HealthConfig, InvalidPolicy> {
        if !(0.0..1.0).contains(&jitter) {
            return Err(InvalidPolicy::new(WHAT, "jitter must be in [0, 1)"));
        }
        Ok(HealthConfig { jitter, ..self })
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }

    pub fn fast_interval(&self) -> Duration {
        self.fast_interval
    }

    pub fn down_max(&self) -> Duration {
        self.down_max
    }

    pub fn jitter(&self) -> f64 {
        self.jitter
    }
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig::default_local()
    }
}

// === impl Health ===

impl Health {
    /// The stable lower-case name used in logs, JSON and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Transition ===

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.from, self.to)
    }
}

// === impl HealthTracker ===

impl HealthTracker {
    /// A tracker for an upstream that has not been healthy yet.
    pub fn new(config: HealthConfig, rng: Jitter) -> HealthTracker {
        HealthTracker {
            config,
            health: Health::Starting,
            streak: 0,
            down: config.interval,
            rng,
        }
    }

    /// Records one probe result; returns the change of health it caused.
    pub fn record(&mut self, ok: bool) -> Option<Transition> {
        let c = &self.config;
        let to = match (self.health, ok) {
            // Starting → Healthy: one success at startup marks the service
            // ready.
            (Health::Starting, true) => Health::Healthy,
            (Health::Healthy, true) => {
                self.streak = 0;
                return None;
            }
            (Health::Starting | Health::Healthy, false) => {
                self.streak = self.streak.saturating_add(1);
                if self.health == Health::Starting || self.streak < c.fall {
                    return None;
                }
                // Healthy → Unhealthy: `fall` failures in a row.
                Health::Unhealthy
            }
            (Health::Unhealthy, true) => {
                self.streak = self.streak.saturating_add(1);
                if self.streak < c.rise {
                    return None;
                }
                // Unhealthy → Healthy: `rise` successes in a row.
                Health::Healthy
            }
            (Health::Unhealthy, false) => {
                // Still down: any success streak is over, and the next down
                // probe waits twice as long.
                self.streak = 0;
                self.down = self.down.saturating_mul(2).min(c.down_max);
                return None;
            }
        };
        let from = self.health;
        self.health = to;
        self.streak = 0;
        self.down = c.interval;
        Some(Transition { from, to })
    }

    /// How long to wait before the next probe.
    ///
    /// The base interval is `fast_interval` while the answer is in doubt
    /// (starting, a failure streak while healthy, a success streak while
    /// unhealthy), `interval` while steadily healthy, and the growing down
    /// interval while unhealthy with no success streak.
    ///
    /// The result lies within `jitter` of its base, and never above a bound:
    /// `down_max` for a down interval, `interval·(1 + jitter)` for all others.
    pub fn next_interval(&mut self) -> Duration {
        let c = &self.config;
        let (base, bound) = match self.health {
            Health::Unhealthy if self.streak == 0 => (self.down, c.down_max),
            Health::Healthy if self.streak == 0 => (c.interval, c.interval.mul_f64(1.0 + c.jitter)),
            _ => (c.fast_interval, c.interval.mul_f64(1.0 + c.jitter)),
        };
        // The bound holds the jitter to its promise despite float rounding.
        self.rng.spread(base, c.jitter).min(bound)
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Probe results in a row that disagree with the current health: failures
    /// while starting or healthy, successes while unhealthy.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The default tracker without jitter, so intervals are exact.
    fn exact() -> HealthTracker {
        let config = HealthConfig::default_local().with_jitter(0.0).unwrap();
        HealthTracker::new(config, Jitter::seeded(1))
    }

    fn transition(from: Health, to: Health) -> Option<Transition> {
        Some(Transition { from, to })
    }

    #[test]
    fn rejects_nonsense_configs() {
        let c = HealthConfig::default_local();
        let err = |r: Result<HealthConfig, InvalidPolicy>| r.unwrap_err().to_string();
        assert_eq!(
            err(c.with_intervals(secs(2), Duration::ZERO, secs(30))),
            "invalid health check: fast interval must be positive"
        );
        assert_eq!(
            err(c.with_intervals(ms(100), ms(250), secs(30))),
            "invalid health check: interval must be at least the fast interval"
        );
        assert_eq!(
            err(c.with_intervals(secs(2), ms(250), secs(1))),
            "invalid health check: max down interval must be at least the interval"
        );
        assert!(c.with_intervals(secs(1), secs(1), secs(1)).is_ok());
        assert_eq!(
            err(c.with_timeout(Duration::ZERO)),
            "invalid health check: timeout must be positive"
        );
        assert_eq!(
            err(c.with_thresholds(0, 3)),
            "invalid health check: rise must be at least 1"
        );
        assert_eq!(
            err(c.with_thresholds(2, 0)),
            "invalid health check: fall must be at least 1"
        );
        for jitter in [1.0, -0.01, f64::NAN] {
            assert_eq!(
                err(c.with_jitter(jitter)),
                "invalid health check: jitter must be in [0, 1)"
            );
        }
    }

    #[test]
    fn defaults_follow_haproxy() {
        let c = HealthConfig::default();
        assert_eq!(c, HealthConfig::default_local());
        assert_eq!(
            (c.interval(), c.timeout(), c.fast_interval()),
            (secs(2), secs(1), ms(250))
        );
        assert_eq!((c.rise(), c.fall()), (2, 3));
        assert_eq!((c.down_max(), c.jitter()), (secs(30), 0.1));
    }

    #[test]
    fn one_success_at_startup_marks_healthy() {
        let mut t = exact();
        assert_eq!(t.health(), Health::Starting);
        for _ in 0..10 {
            assert_eq!(t.record(false), None, "failures at startup are not a fall");
            assert_eq!(t.next_interval(), ms(250));
        }
        assert_eq!(
            t.record(true),
            transition(Health::Starting, Health::Healthy)
        );
        assert_eq!(t.next_interval(), secs(2));
    }

    #[test]
    fn falls_after_three_failures_in_a_row_probing_fast_meanwhile() {
        let mut t = exact();
        t.record(true);
        assert_eq!(t.record(false), None);
        assert_eq!(t.next_interval(), ms(250));
        assert_eq!(t.record(false), None);
        assert_eq!(t.streak(), 2);
        assert_eq!(t.record(true), None, "a success resets the failure streak");
        assert_eq!(t.next_interval(), secs(2));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(
            t.record(false),
            transition(Health::Healthy, Health::Unhealthy)
        );
        assert_eq!(t.streak(), 0);
    }

    #[test]
    fn rises_after_two_successes_in_a_row_and_backs_off_while_down() {
        let mut t = exact();
        t.record(true);
        for _ in 0..3 {
            t.record(false);
        }
        assert_eq!(t.health(), Health::Unhealthy);
        let mut down = Vec::new();
        for _ in 0..7 {
            down.push(t.next_interval().as_secs());
            assert_eq!(t.record(false), None);
        }
        assert_eq!(down, [2, 4, 8, 16, 30, 30, 30]);

        assert_eq!(t.record(true), None);
        assert_eq!(
            t.next_interval(),
            ms(250),
            "a success streak is probed fast"
        );
        assert_eq!(t.record(false), None, "a failure resets the success streak");
        assert_eq!(t.next_interval(), secs(30));
        assert_eq!(t.record(true), None);
        assert_eq!(
            t.record(true),
            transition(Health::Unhealthy, Health::Healthy)
        );
        assert_eq!(t.next_interval(), secs(2));

        // The down interval starts over on the next fall.
        for _ in 0..3 {
            t.record(false);
        }
        assert_eq!(t.next_interval(), secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_loop_on_paused_time() {
        // The service is up from 1 s to 20 s, then down until 100 s.
        let up = |at: Duration| (secs(1)..secs(20)).contains(&at) || at >= secs(100);
        let mut t = exact();
        let start = Instant::now();
        let mut changes = Vec::new();
        let mut down_gaps = Vec::new();
        while Instant::now() - start < secs(120) {
            let wait = t.next_interval();
            if t.health() == Health::Unhealthy && t.streak() == 0 {
                down_gaps.push(wait.as_millis());
            }
            tokio::time::sleep(wait).await;
            let at = Instant::now() - start;
            if let Some(change) = t.record(up(at)) {
                changes.push((at.as_millis(), change.to));
            }
        }
        assert_eq!(
            changes,
            [
                // Probed every 250 ms while starting: ready on the first
                // probe after 1 s.
                (1_000, Health::Healthy),
                // Steady probes at 3, 5, ..., 19 s; the one at 21 s fails,
                // then two fast ones fail too.
                (21_500, Health::Unhealthy),
                // Down probes at 23.5, 27.5, 35.5, 51.5 and 81.5 s fail; the
                // one at 111.5 s succeeds, and a fast one confirms.
                (111_750, Health::Healthy),
            ]
        );
        assert_eq!(down_gaps, [2_000, 4_000, 8_000, 16_000, 30_000, 30_000]);
    }

    #[test]
    fn words() {
        assert_eq!(Health::Starting.to_string(), "starting");
        assert_eq!(Health::Healthy.to_string(), "healthy");
        assert_eq!(Health::Unhealthy.to_string(), "unhealthy");
        let change = Transition {
            from: Health::Healthy,
            to: Health::Unhealthy,
        };
        assert_eq!(change.to_string(), "healthy -> unhealthy");
    }

    fn config() -> impl Strategy<Value = HealthConfig> {
        (
            1u32..6,
            1u32..6,
            1u64..1_000,
            0u64..5_000,
            0u64..60_000,
            0.0f64..0.99,
        )
            .prop_map(|(rise, fall, fast, extra, down_extra, jitter)| {
                let interval = ms(fast + extra);
                HealthConfig::default_local()
                    .with_thresholds(rise, fall)
                    .and_then(|c| c.with_intervals(interval, ms(fast), interval + ms(down_extra)))
                    .and_then(|c| c.with_jitter(jitter))
                    .unwrap()
            })
    }

    proptest! {
        #[test]
        fn hysteresis_holds_and_intervals_stay_in_bounds(
            config in config(),
            seed: u64,
            results in prop::collection::vec(any::<bool>(), 0..400),
        ) {
            let mut t = HealthTracker::new(config, Jitter::seeded(seed));
            let (mut successes, mut failures) = (0u32, 0u32);
            let j = config.jitter();
            let slack = Duration::from_nanos(1);
            for ok in results {
                let before = (t.health(), t.streak());
                let d = t.next_interval();
                let down = before.0 == Health::Unhealthy && before.1 == 0;
                if down {
                    prop_assert!(d <= config.down_max());
                    prop_assert!(d + slack >= config.interval().mul_f64(1.0 - j));
                } else {
                    prop_assert!(d <= config.interval().mul_f64(1.0 + j));
                    prop_assert!(d + slack >= config.fast_interval().mul_f64(1.0 - j));
                }

                if ok { successes += 1; failures = 0 } else { failures += 1; successes = 0 }
                match t.record(ok) {
                    Some(Transition { from: Health::Healthy, to }) => {
                        prop_assert_eq!(to, Health::Unhealthy);
                        prop_assert!(failures >= config.fall(), "fell after {}", failures);
                    }
                    Some(Transition { from: Health::Unhealthy, to }) => {
                        prop_assert_eq!(to, Health::Healthy);
                        prop_assert!(successes >= config.rise(), "rose after {}", successes);
                    }
                    Some(Transition { from: Health::Starting, to }) => {
                        prop_assert_eq!(to, Health::Healthy);
                        prop_assert!(ok);
                    }
                    None => {}
                }
                // The streak never reaches the threshold that ends it.
                let threshold = match t.health() {
                    Health::Starting => u32::MAX,
                    Health::Healthy => config.fall(),
                    Health::Unhealthy => config.rise(),
                };
                prop_assert!(t.streak() < threshold);
            }
        }
    }
}
