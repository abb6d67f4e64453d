//! Shared helpers: probe once, or wait with events and act on the first
//! attempt (so "late" means "after tether has looked", never a sleep).

use std::time::Duration;

use tether_probe::wait::{TargetOutcome, WaitEvent, WaitPolicy, WaitReport, wait_targets};
use tether_probe::{Prober, Ready, Target};
use tether_resilience::Failure;
use tether_test::within;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub(crate) fn target(text: &str) -> Target {
    Target::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

/// One attempt with `timeout`.
pub(crate) async fn probe(text: &str, timeout: Duration) -> Result<Ready, Failure> {
    within(text, Prober::new(target(text)).check(timeout)).await
}

pub(crate) async fn fails(text: &str, timeout: Duration) -> Failure {
    match probe(text, timeout).await {
        Ok(r) => panic!("{text} was ready: {r}"),
        Err(f) => f,
    }
}

/// Starts waiting for `texts`, runs `after_first_attempt` once tether has
/// made its first attempt on every target, and returns the report.
pub(crate) async fn wait_then<F, Fut>(
    texts: &[&str],
    timeout: Duration,
    after_first_attempt: F,
) -> (WaitReport, Vec<WaitEvent>)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let targets: Vec<Target> = texts.iter().map(|t| target(t)).collect();
    let (tx, mut rx) = mpsc::channel(1 << 16);
    let policy = WaitPolicy::new(timeout);
    let waiting =
        tokio::spawn(
            async move { wait_targets(targets, &policy, tx, CancellationToken::new()).await },
        );
    let mut events = Vec::new();
    let mut seen = vec![false; texts.len()];
    while !seen.iter().all(|s| *s) {
        let Some(event) = within("first attempts", rx.recv()).await else {
            break;
        };
        if let WaitEvent::Attempt { target, .. } = &event {
            seen[*target] = true;
        }
        events.push(event);
    }
    after_first_attempt().await;
    let report = within("the wait", waiting).await.unwrap();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    (report, events)
}

pub(crate) fn reached(report: &WaitReport, index: usize) -> &str {
    match &report.targets[index].outcome {
        TargetOutcome::Reached { detail } => detail,
        other => panic!("target {index} did not reach its state: {other:?}"),
    }
}

pub(crate) const SHORT: Duration = Duration::from_millis(500);
pub(crate) const LONG: Duration = Duration::from_secs(30);
