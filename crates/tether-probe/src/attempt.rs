//! One attempt's time budget, shared by the phases of a probe.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tether_resilience::{Failure, Phase};
use tokio::time::Instant;

/// The deadline of one probe attempt. Each phase runs under what is left of
/// it, and a phase that runs out becomes a timeout failure of that phase.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    deadline: Instant,
    timeout: Duration,
}

impl Attempt {
    pub fn new(timeout: Duration) -> Attempt {
        Attempt {
            deadline: Instant::now() + timeout,
            timeout,
        }
    }

    /// The attempt's whole time budget.
    pub fn budget(&self) -> Duration {
        self.timeout
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Runs one phase of the attempt; if the attempt's time runs out first,
    /// the phase fails with a timeout naming `what`.
    pub async fn phase<T>(
        &self,
        phase: Phase,
        what: impl Display,
        fut: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(result) => result,
            Err(_) => Err(Failure::timeout(phase, self.timeout, what)),
        }
    }
}
