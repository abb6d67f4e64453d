//! Two backoff curves, for two jobs.
//!
//! - Reconnect and readiness loops use [`ExponentialBackoff`]: the delay grows
//!   geometrically from `initial` to `max`, and each delay is moved up or down
//!   by a proportional jitter (gRPC connection backoff, linkerd). [`Reconnect`]
//!   adds the reset rule: start over only after a connection proved stable.
//! - Request retries use [`FullJitter`]: a uniform delay between zero and an
//!   exponentially growing ceiling (AWS "Exponential Backoff And Jitter",
//!   Envoy), which spreads a burst of retries the most.

use std::time::Duration;

use tokio::time::Instant;

use crate::{InvalidPolicy, Jitter};

/// The shape of an exponential backoff with proportional jitter.
///
/// Every delay it yields lies in `[initial·(1−jitter), max]`: the jitter never
/// pushes a delay above the cap, so `max` is a promise a user can rely on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
}

/// A running [`Backoff`]: yields one delay per call and can start over.
#[derive(Debug, Clone)]
pub struct ExponentialBackoff {
    policy: Backoff,
    /// The delay before jitter; grows by `multiplier` up to `max`.
    base: Duration,
    rng: Jitter,
}

/// Full-jitter delays for request retries: retry `n` (from 0) waits a uniform
/// time in `[0, min(max, base·2ⁿ)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullJitter {
    base: Duration,
    max: Duration,
}

/// Reconnect pacing for a long-lived connection.
///
/// Failed attempts back off; a connection that drops starts the backoff over
/// only if it had been stable, meaning it stayed up for at least the backoff's
/// cap *and* served one good exchange (gRPC, linkerd). A connection that comes
/// up and drops at once keeps backing off, so a flapping peer is not hammered.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: ExponentialBackoff,
    link: Link,
}

/// The state of the connection a [`Reconnect`] paces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No connection; attempts are failing or not yet made.
    Down,
    /// A connection is up since `since`; `exchanged` once it served a good
    /// exchange.
    Up { since: Instant, exchanged: bool },
}

// === impl Backoff ===

impl Backoff {
    /// Validates and builds a backoff shape.
    ///
    /// `initial` must be positive and at most `max`; `multiplier` finite and at
    /// least 1; `jitter` in `[0, 1)`.
    pub fn try_new(
        initial: Duration,
        max: Duration,
        multiplier: f64,
        jitter: f64,
    ) -> Result<Backoff, InvalidPolicy> {
        const WHAT: &str = "backoff";
        if initial.is_zero() {
            return Err(InvalidPolicy::new(WHAT, "initial delay must be positive"));
        }
        if max < initial {
            return Err(InvalidPolicy::new(
                WHAT,
                "max delay must be at least the initial delay",
            ));
        }
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(InvalidPolicy::new(
                WHAT,
                "multiplier must be a finite number >= 1",
            ));
        }
        if !(0.0..1.0).contains(&jitter) {
            return Err(InvalidPolicy::new(WHAT, "jitter must be in [0, 1)"));
        }
        Ok(Backoff {
            initial,
            max,
            multiplier,
            jitter,
        })
    }

    /// tether's reconnect default for local upstreams: 100 ms, ×1.6, ±20 %,
    /// capped at 10 s (gRPC's curve with linkerd's local cap).
    pub const fn reconnect() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 1.6,
            jitter: 0.2,
        }
    }

    pub fn initial(&self) -> Duration {
        self.initial
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Starts a running backoff with this shape.
    pub fn start(self, rng: Jitter) -> ExponentialBackoff {
        ExponentialBackoff {
            policy: self,
            base: self.initial,
            rng,
        }
    }
}

// === impl ExponentialBackoff ===

impl ExponentialBackoff {
    /// The next delay, then the base grows for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self
            .rng
            .spread(self.base, self.policy.jitter)
            .min(self.policy.max);
        self.base = self
            .base
            .mul_f64(self.policy.multiplier)
            .min(self.policy.max);
        delay
    }

    /// Starts over from the initial delay.
    pub fn reset(&mut self) {
        self.base = self.policy.initial;
    }

    /// The delay, before jitter, that the next call would be based on.
    pub fn base(&self) -> Duration {
        self.base
    }

    pub fn policy(&self) -> &Backoff {
        &self.policy
    }
}

// === impl FullJitter ===

impl FullJitter {
    /// `base` must be positive and at most `max`.
    pub fn try_new(base: Duration, max: Duration) -> Result<FullJitter, InvalidPolicy> {
        const WHAT: &str = "retry backoff";
        if base.is_zero() {
            return Err(InvalidPolicy::new(WHAT, "base delay must be positive"));
        }
        if max < base {
            return Err(InvalidPolicy::new(
                WHAT,
                "max delay must be at least the base delay",
            ));
        }
        Ok(FullJitter { base, max })
    }

    /// tether's request-retry default for local upstreams: 25 ms base, 1 s cap.
    pub const fn retry() -> FullJitter {
        FullJitter {
            base: Duration::from_millis(25),
            max: Duration::from_secs(1),
        }
    }

    /// The ceiling of retry `n` (counting from 0): `min(max, base·2ⁿ)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << retry.min(31))
            .min(self.max)
    }

    /// The delay before retry `n` (counting from 0).
    pub fn delay(&self, retry: u32, rng: &mut Jitter) -> Duration {
        rng.upto(self.ceiling(retry))
    }
}

// === impl Reconnect ===

impl Reconnect {
    pub fn new(policy: Backoff, rng: Jitter) -> Reconnect {
        Reconnect {
            backoff: policy.start(rng),
            link: Link::Down,
        }
    }

    /// An attempt to connect failed: the delay before the next one.
    pub fn failed(&mut self) -> Duration {
        self.link = Link::Down;
        self.backoff.next_delay()
    }

    /// A connection came up at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.link = Link::Up {
            since: now,
            exchanged: false,
        };
    }

    /// The connection served a good exchange (a request answered, a ping
    /// returned).
    pub fn exchanged(&mut self) {
        if let Link::Up { since, .. } = self.link {
            self.link = Link::Up {
                since,
                exchanged: true,
            };
        }
    }

    /// The connection dropped at `now`: the delay before reconnecting. If the
    /// connection had been stable, the backoff starts over first.
    pub fn disconnected(&mut self, now: Instant) -> Duration {
        if self.is_stable(now) {
            self.backoff.reset();
        }
        self.failed()
    }

    /// Starts over at once, for events that make old failures irrelevant (the
    /// machine woke up, the network changed, the upstream reported ready).
    pub fn reset(&mut self) {
        self.backoff.reset();
    }

    /// Whether the current connection counts as stable at `now`.
    pub fn is_stable(&self, now: Instant) -> bool {
        match self.link {
            Link::Up { since, exchanged } => {
                exchanged && now.saturating_duration_since(since) >= self.backoff.policy.max
            }
            Link::Down => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rejects_nonsense_shapes() {
        assert!(Backoff::try_new(Duration::ZERO, ms(10), 2.0, 0.1).is_err());
        assert!(Backoff::try_new(ms(10), ms(5), 2.0, 0.1).is_err());
        assert!(Backoff::try_new(ms(10), ms(50), 0.9, 0.1).is_err());
        assert!(Backoff::try_new(ms(10), ms(50), f64::INFINITY, 0.1).is_err());
        assert!(Backoff::try_new(ms(10), ms(50), 2.0, 1.0).is_err());
        assert!(Backoff::try_new(ms(10), ms(50), 2.0, -0.1).is_err());
        assert!(FullJitter::try_new(Duration::ZERO, ms(1)).is_err());
        assert!(FullJitter::try_new(ms(2), ms(1)).is_err());
        assert_eq!(
            Backoff::try_new(ms(10), ms(5), 2.0, 0.1)
                .unwrap_err()
                .to_string(),
            "invalid backoff: max delay must be at least the initial delay"
        );
    }

    #[test]
    fn without_jitter_the_curve_is_exact() {
        let mut b = Backoff::try_new(ms(100), ms(1000), 2.0, 0.0)
            .unwrap()
            .start(Jitter::seeded(1));
        let seen: Vec<_> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seen, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
    }

    #[test]
    fn seeded_jitter_is_reproducible() {
        let run = |seed| {
            let mut b = Backoff::reconnect().start(Jitter::seeded(seed));
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn full_jitter_ceiling_doubles_to_cap() {
        let f = FullJitter::retry();
        let ceilings: Vec<_> = (0..8).map(|n| f.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(f.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_resets_only_after_a_stable_connection() {
        let policy = Backoff::try_new(ms(100), ms(1000), 2.0, 0.0).unwrap();
        let mut r = Reconnect::new(policy, Jitter::seeded(3));
        assert_eq!(r.failed(), ms(100));
        assert_eq!(r.failed(), ms(200));

        // Up, then down at once: not stable, the backoff keeps growing.
        r.connected(Instant::now());
        r.exchanged();
        tokio::time::advance(ms(10)).await;
        assert!(!r.is_stable(Instant::now()));
        assert_eq!(r.disconnected(Instant::now()), ms(400));

        // Up long enough but never served anything: still not stable.
        r.connected(Instant::now());
        tokio::time::advance(ms(1500)).await;
        assert!(!r.is_stable(Instant::now()));
        assert_eq!(r.disconnected(Instant::now()), ms(800));

        // Up for the cap and served an exchange: the backoff starts over.
        r.connected(Instant::now());
        r.exchanged();
        tokio::time::advance(ms(1000)).await;
        assert!(r.is_stable(Instant::now()));
        assert_eq!(r.disconnected(Instant::now()), ms(100));
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(
            initial_ms in 1u64..2_000,
            extra_ms in 0u64..60_000,
            multiplier in 1.0f64..3.0,
            jitter in 0.0f64..0.99,
            seed: u64,
            n in 1usize..60,
        ) {
            let initial = ms(initial_ms);
            let max = ms(initial_ms + extra_ms);
            let mut b = Backoff::try_new(initial, max, multiplier, jitter).unwrap().start(Jitter::seeded(seed));
            let mut last_base = Duration::ZERO;
            for _ in 0..n {
                let base = b.base();
                prop_assert!(base >= last_base, "the base never shrinks without a reset");
                prop_assert!(base <= max);
                last_base = base;
                let d = b.next_delay();
                prop_assert!(d <= max, "delay {d:?} above cap {max:?}");
                prop_assert!(d >= initial.mul_f64(1.0 - jitter).saturating_sub(Duration::from_nanos(1)));
                prop_assert!(d >= base.mul_f64(1.0 - jitter).saturating_sub(Duration::from_nanos(1)));
            }
            b.reset();
            prop_assert_eq!(b.base(), initial);
        }

        #[test]
        fn first_delay_is_the_initial_one_within_jitter(
            initial_ms in 1u64..10_000,
            jitter in 0.0f64..0.99,
            seed: u64,
        ) {
            let initial = ms(initial_ms);
            let mut b = Backoff::try_new(initial, initial * 10, 2.0, jitter).unwrap().start(Jitter::seeded(seed));
            let d = b.next_delay();
            prop_assert!(d <= initial.mul_f64(1.0 + jitter) + Duration::from_nanos(1));
            prop_assert!(d + Duration::from_nanos(1) >= initial.mul_f64(1.0 - jitter));
        }

        #[test]
        fn full_jitter_stays_under_its_ceiling(
            base_ms in 1u64..1_000,
            extra_ms in 0u64..10_000,
            retry in 0u32..64,
            seed: u64,
        ) {
            let f = FullJitter::try_new(ms(base_ms), ms(base_ms + extra_ms)).unwrap();
            let mut rng = Jitter::seeded(seed);
            let d = f.delay(retry, &mut rng);
            prop_assert!(d <= f.ceiling(retry));
            prop_assert!(f.ceiling(retry) <= ms(base_ms + extra_ms));
            prop_assert!(f.ceiling(retry) >= ms(base_ms));
        }
    }
}
