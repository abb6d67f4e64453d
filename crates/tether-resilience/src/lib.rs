//! Resilience primitives for tether, with no I/O.
//!
//! This crate decides; it never acts. It holds the policies every other tether
//! crate uses to decide *when* to try again and *whether* to give up:
//!
//! - [`Failure`]: every failure as a classified value (phase, cause, origin,
//!   safety, verdict, retry-after), built from `io::Error`s, DNS errors, TLS
//!   errors and HTTP statuses by the constructors in [`failure`];
//! - [`backoff`]: proportional jitter with a reset for reconnect and readiness
//!   loops, full jitter for request retries;
//! - [`Deadline`] and [`AttemptTimeout`]: one overall budget that clamps each
//!   attempt's timeout to the time left;
//! - [`retry`]: bounded retries (attempts, deadline, budget, Retry-After as a
//!   clamped floor) that classify before they sleep;
//! - [`breaker`]: a circuit breaker (consecutive failures or a windowed success
//!   rate, doubling open penalty with jitter, one probe, a rise threshold);
//! - [`health`]: rise/fall hysteresis with state-dependent probe intervals;
//! - [`milestone`]: which of many repeated events are worth a log line;
//! - [`failure::scrub_passwords`]: `scheme://user:password@` to
//!   `scheme://user:***@` in any text; every `Failure` detail passes through
//!   it.
//!
//! # Invariants
//!
//! - No I/O, no serde, no configuration files, no other tether crate.
//! - Time comes only from `tokio::time::Instant`, passed in as `now`, so every
//!   state transition can be tested on paused time.
//! - Randomness comes only from [`Jitter`], which can be seeded.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod breaker;
mod deadline;
pub mod failure;
pub mod health;
mod jitter;
mod milestone;
pub mod retry;
mod scrub;

pub use backoff::{Backoff, ExponentialBackoff, FullJitter, Reconnect};
pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use deadline::{AttemptTimeout, Deadline};
pub use failure::{Cause, Failure, Origin, Phase, Safety, Verdict};
pub use health::{Health, HealthConfig, HealthTracker, Transition};
pub use jitter::Jitter;
pub use milestone::milestone;
pub use retry::{Decision, DelaySource, GiveUp, RetryBudget, RetryPolicy, RetryState};

/// A policy value that failed validation when it was built.
///
/// Returned by the `try_new` constructors of this crate's policies; it names
/// the field and the rule it broke, for example
/// `invalid backoff: multiplier must be at least 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPolicy {
    what: &'static str,
    rule: &'static str,
}

impl InvalidPolicy {
    pub(crate) const fn new(what: &'static str, rule: &'static str) -> Self {
        Self { what, rule }
    }
}

impl std::fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}: {}", self.what, self.rule)
    }
}

impl std::error::Error for InvalidPolicy {}
