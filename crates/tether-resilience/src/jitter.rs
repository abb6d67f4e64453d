//! The one source of randomness in tether's timing decisions.

use std::time::Duration;

/// Random numbers for jitter. Seed it in tests to make every delay
/// reproducible; use [`Jitter::new`] in production.
#[derive(Debug, Clone)]
pub struct Jitter {
    rng: fastrand::Rng,
}

impl Jitter {
    /// A generator seeded from the process's own entropy.
    pub fn new() -> Jitter {
        Jitter {
            rng: fastrand::Rng::new(),
        }
    }

    /// A generator that yields the same sequence for the same seed.
    pub fn seeded(seed: u64) -> Jitter {
        Jitter {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// A uniform number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.rng.f64()
    }

    /// `d` moved up or down by at most `ratio` of itself, uniformly:
    /// a value in `[d·(1−ratio), d·(1+ratio)]`.
    pub fn spread(&mut self, d: Duration, ratio: f64) -> Duration {
        let factor = 1.0 + ratio * (2.0 * self.unit() - 1.0);
        d.mul_f64(factor.max(0.0))
    }

    /// A uniform duration in `[0, max]` ("full jitter").
    pub fn upto(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }
}

impl Default for Jitter {
    fn default() -> Jitter {
        Jitter::new()
    }
}
