//! One overall time budget, and per-attempt timeouts clamped to what is left
//! of it.

use std::time::Duration;

use tokio::time::Instant;

use crate::InvalidPolicy;

/// An overall deadline: everything done under it (attempts, sleeps,
/// Retry-After waits) ends by [`Deadline::end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    start: Instant,
    end: Instant,
}

/// The timeout of one attempt: it starts at `initial`, grows by `factor` after
/// each attempt that timed out, up to `max`, and is always clamped to the time
/// left under a [`Deadline`].
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptTimeout {
    current: Duration,
    max: Duration,
    factor: f64,
}

// === impl Deadline ===

impl Deadline {
    /// A deadline `total` after `now`. A total too large to represent is
    /// treated as a century.
    pub fn after(now: Instant, total: Duration) -> Deadline {
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let end = now.checked_add(total).unwrap_or_else(|| now + CENTURY);
        Deadline { start: now, end }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn end(&self) -> Instant {
        self.end
    }

    /// The total budget this deadline was made with.
    pub fn total(&self) -> Duration {
        self.end - self.start
    }

    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    pub fn remaining(&self, now: Instant) -> Duration {
        self.end.saturating_duration_since(now)
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.end
    }

    /// `timeout` clamped to the time left, or `None` when no time is left.
    pub fn clamp(&self, now: Instant, timeout: Duration) -> Option<Duration> {
        let left = self.remaining(now);
        if left.is_zero() {
            None
        } else {
            Some(timeout.min(left))
        }
    }
}

// === impl AttemptTimeout ===

impl AttemptTimeout {
    /// A growing timeout. `initial` must be positive, `max` at least
    /// `initial`, and `factor` finite and at least 1.
    pub fn try_new(initial: Duration, max: Duration, factor: f64) -> Result<Self, InvalidPolicy> {
        const WHAT: &str = "attempt timeout";
        if initial.is_zero() {
            return Err(InvalidPolicy::new(WHAT, "initial timeout must be positive"));
        }
        if max < initial {
            return Err(InvalidPolicy::new(
                WHAT,
                "max must be at least the initial timeout",
            ));
        }
        if !factor.is_finite() || factor < 1.0 {
            return Err(InvalidPolicy::new(
                WHAT,
                "growth factor must be a finite number >= 1",
            ));
        }
        Ok(AttemptTimeout {
            current: initial,
            max,
            factor,
        })
    }

    /// A timeout that never grows.
    pub fn fixed(timeout: Duration) -> AttemptTimeout {
        AttemptTimeout {
            current: timeout,
            max: timeout,
            factor: 1.0,
        }
    }

    /// The timeout the next attempt would get with unlimited time left.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Lengthens the timeout after an attempt that ran out of time: a slow
    /// peer gets longer to answer next time.
    pub fn grow(&mut self) {
        self.current = self.current.mul_f64(self.factor).min(self.max);
    }

    /// The next attempt's timeout under `deadline`, or `None` if no time is
    /// left for another attempt.
    pub fn for_attempt(&self, deadline: &Deadline, now: Instant) -> Option<Duration> {
        deadline.clamp(now, self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test(start_paused = true)]
    async fn deadline_counts_down_on_paused_time() {
        let now = Instant::now();
        let d = Deadline::after(now, Duration::from_secs(10));
        assert_eq!(d.remaining(Instant::now()), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(d.remaining(Instant::now()), Duration::from_secs(6));
        assert_eq!(d.elapsed(Instant::now()), Duration::from_secs(4));
        assert_eq!(
            d.clamp(Instant::now(), Duration::from_secs(8)),
            Some(Duration::from_secs(6))
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(d.is_expired(Instant::now()));
        assert_eq!(d.clamp(Instant::now(), Duration::from_secs(1)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn huge_deadline_does_not_overflow() {
        let d = Deadline::after(Instant::now(), Duration::MAX);
        assert!(d.remaining(Instant::now()) > Duration::from_secs(3600 * 24 * 365));
    }

    #[test]
    fn attempt_timeout_rejects_nonsense() {
        let s = Duration::from_secs(1);
        assert!(AttemptTimeout::try_new(Duration::ZERO, s, 2.0).is_err());
        assert!(AttemptTimeout::try_new(s, s / 2, 2.0).is_err());
        assert!(AttemptTimeout::try_new(s, s, 0.5).is_err());
        assert!(AttemptTimeout::try_new(s, s, f64::NAN).is_err());
        assert_eq!(
            AttemptTimeout::try_new(s, s, 0.5).unwrap_err().to_string(),
            "invalid attempt timeout: growth factor must be a finite number >= 1"
        );
    }

    #[test]
    fn attempt_timeout_grows_to_its_cap() {
        let mut t =
            AttemptTimeout::try_new(Duration::from_secs(1), Duration::from_secs(5), 2.0).unwrap();
        let seen: Vec<_> = (0..5)
            .map(|_| {
                let c = t.current();
                t.grow();
                c.as_secs()
            })
            .collect();
        assert_eq!(seen, [1, 2, 4, 5, 5]);
        let mut fixed = AttemptTimeout::fixed(Duration::from_millis(300));
        fixed.grow();
        assert_eq!(fixed.current(), Duration::from_millis(300));
    }

    proptest! {
        #[test]
        fn attempt_timeout_never_exceeds_time_left_or_cap(
            initial_ms in 1u64..5_000,
            extra_ms in 0u64..60_000,
            factor in 1.0f64..4.0,
            total_ms in 0u64..120_000,
            elapsed_ms in 0u64..120_000,
            grows in 0usize..40,
        ) {
            let start = Instant::now();
            let max = Duration::from_millis(initial_ms + extra_ms);
            let mut t = AttemptTimeout::try_new(Duration::from_millis(initial_ms), max, factor).unwrap();
            for _ in 0..grows { t.grow(); }
            prop_assert!(t.current() <= max);
            prop_assert!(t.current() >= Duration::from_millis(initial_ms));
            let deadline = Deadline::after(start, Duration::from_millis(total_ms));
            let now = start + Duration::from_millis(elapsed_ms);
            match t.for_attempt(&deadline, now) {
                Some(d) => {
                    prop_assert!(d <= deadline.remaining(now));
                    prop_assert!(d <= t.current());
                    prop_assert!(!d.is_zero());
                }
                None => prop_assert!(deadline.is_expired(now)),
            }
        }
    }
}
