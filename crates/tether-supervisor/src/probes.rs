//! A probe run again and again for one process lifetime, reporting every
//! result to the service's runner.
//!
//! A readiness probe starts fast until the first success, then goes steady
//! with rise/fall hysteresis. While starting, the pause between probes is 5 %
//! of the time since the process started, between 1 ms and the target's cap
//! (12 ms on this machine): a service that starts in 80 ms is seen about 2 ms
//! after it is up, and one that takes a minute is not probed more than about
//! 85 times a second. A liveness probe starts healthy (it runs once the
//! service is ready) and turns unhealthy after `fall` failures in a row.

use std::time::Duration;

use tether_probe::{Prober, Ready};
use tether_resilience::AttemptTimeout;
use tether_resilience::{Failure, Health, HealthConfig, HealthTracker, Jitter, Transition};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One probe result.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) took: Duration,
    pub(crate) outcome: Result<Ready, Failure>,
    /// A change of health this result caused.
    pub(crate) transition: Option<Transition>,
}

/// How the loop begins.
#[derive(Debug)]
pub(crate) enum Start {
    /// Fast until the first success (readiness while starting): pauses of
    /// 5 % of the time since the start, up to `cap`.
    Fast {
        cap: Duration,
        timeouts: AttemptTimeout,
    },
    /// Steady, counted as healthy already (liveness).
    Healthy,
}

/// Runs until `stop` is cancelled or the receiver is gone. Every report
/// goes out with `tag` (the lifetime and the kind of probe), so a late one
/// of an old lifetime is told apart.
pub(crate) async fn run<T: Copy>(
    mut prober: Prober,
    health: HealthConfig,
    start: Start,
    tag: T,
    reports: mpsc::Sender<(T, Report)>,
    stop: CancellationToken,
) {
    let mut tracker = HealthTracker::new(health, Jitter::new());
    if let Start::Fast { cap, mut timeouts } = start {
        let started = Instant::now();
        loop {
            let began = Instant::now();
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = prober.check(timeouts.current()) => outcome,
            };
            let ok = outcome.is_ok();
            if let Err(f) = &outcome
                && f.cause.is_timeout()
            {
                timeouts.grow();
            }
            // One success at startup marks it healthy (Envoy, HAProxy).
            let transition = if ok { tracker.record(true) } else { None };
            let report = Report {
                took: began.elapsed(),
                outcome,
                transition,
            };
            if reports.send((tag, report)).await.is_err() {
                return;
            }
            if ok {
                break;
            }
            let pause = started
                .elapsed()
                .mul_f64(0.05)
                .clamp(Duration::from_millis(1), cap);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    } else {
        tracker.record(true);
    }
    debug_assert_eq!(tracker.health(), Health::Healthy);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(tracker.next_interval()) => {}
        }
        let began = Instant::now();
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = prober.check(health.timeout()) => outcome,
        };
        let transition = tracker.record(outcome.is_ok());
        let report = Report {
            took: began.elapsed(),
            outcome,
            transition,
        };
        if reports.send((tag, report)).await.is_err() {
            return;
        }
    }
}
