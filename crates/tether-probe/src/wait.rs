//! Waiting for targets: every target in parallel, under one deadline.
//!
//! Each target is checked at once, then again after a pause that starts at a
//! few milliseconds and grows with jitter to a cap (12 ms for a target on this
//! machine, so a service is seen within milliseconds of becoming ready while
//! probes stay under about 85 a second). The pause starts over when the
//! failure changes (refused, then 503: something is happening). Each attempt's
//! timeout grows after attempts that time out, and is clamped to the time
//! left. A permanent failure ends the whole wait at once; so does the
//! deadline, without a useless last sleep.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tether_resilience::{
    AttemptTimeout, Backoff, Cause, Deadline, ExponentialBackoff, Failure, Jitter,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Prober, Ready, Target};

/// One check of one target: what the wait loop drives.
pub trait Check: Send + 'static {
    /// Checks once, within `timeout`.
    fn check(&mut self, timeout: Duration) -> impl Future<Output = Result<Ready, Failure>> + Send;
}

/// How a wait is bounded and paced.
#[derive(Debug, Clone)]
pub struct WaitPolicy {
    /// The one deadline for every target, attempts and pauses included.
    pub timeout: Duration,
    /// The first pause between attempts.
    pub first_interval: Duration,
    /// The cap on pauses; `None` takes each target's default.
    pub max_interval: Option<Duration>,
    /// The first per-attempt timeout; `None` takes each target's default.
    pub attempt_timeout: Option<Duration>,
    /// Wait until the targets are *not* ready.
    pub invert: bool,
    /// Notified (`notify_waiters`), every target's pauses start over and
    /// it is tried at once: the machine woke, stalled, or its network
    /// changed, so old failures say little.
    pub restart: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// The pacing of one target: pauses between attempts, and attempt timeouts.
#[derive(Debug, Clone)]
pub struct Pacing {
    pub interval: Backoff,
    pub timeouts: AttemptTimeout,
}

/// What happened, as it happens.
#[derive(Debug, Clone)]
pub enum WaitEvent {
    /// One attempt ended.
    Attempt {
        target: usize,
        attempt: u32,
        /// Since the wait started.
        elapsed: Duration,
        /// How long this attempt took.
        took: Duration,
        outcome: Result<Ready, Failure>,
        /// The pause before the next attempt; `None` when there is none.
        next_in: Option<Duration>,
    },
    /// The target reached the wanted state.
    Ready {
        target: usize,
        attempts: u32,
        elapsed: Duration,
        detail: String,
    },
    /// The target gave up.
    Failed {
        target: usize,
        attempts: u32,
        elapsed: Duration,
        reason: GaveUp,
        last: Option<Result<Ready, Failure>>,
    },
}

/// Why a target stopped waiting without reaching the wanted state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// Its failure cannot pass (NXDOMAIN, 404, bad certificate, ...).
    Permanent,
    /// The deadline passed.
    Timeout,
    /// Another target failed permanently, or the wait was interrupted.
    Cancelled,
}

/// The result of a whole wait.
#[derive(Debug, Clone)]
pub struct WaitReport {
    pub targets: Vec<TargetReport>,
    pub elapsed: Duration,
}

/// How one target ended.
#[derive(Debug, Clone)]
pub struct TargetReport {
    pub attempts: u32,
    pub elapsed: Duration,
    pub outcome: TargetOutcome,
}

#[derive(Debug, Clone)]
pub enum TargetOutcome {
    /// The wanted state: ready, or with `invert`, not ready.
    Reached { detail: String },
    /// Gave up, with the last attempt's outcome if there was one.
    GaveUp {
        reason: GaveUp,
        last: Option<Result<Ready, Failure>>,
    },
}

// === impl WaitPolicy ===

impl PartialEq for WaitPolicy {
    /// The same pacing, and the same restart signal (not merely an equal
    /// one).
    fn eq(&self, other: &WaitPolicy) -> bool {
        self.timeout == other.timeout
            && self.first_interval == other.first_interval
            && self.max_interval == other.max_interval
            && self.attempt_timeout == other.attempt_timeout
            && self.invert == other.invert
            && match (&self.restart, &other.restart) {
                (None, None) => true,
                (Some(a), Some(b)) => std::sync::Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl WaitPolicy {
    /// A policy with tether's defaults and this overall timeout.
    pub fn new(timeout: Duration) -> WaitPolicy {
        WaitPolicy {
            timeout,
            first_interval: Duration::from_millis(5),
            max_interval: None,
            attempt_timeout: None,
            invert: false,
            restart: None,
        }
    }

    /// The pacing for one target under this policy.
    pub fn pacing(&self, target: &Target) -> Pacing {
        let cap = self
            .max_interval
            .unwrap_or_else(|| target.default_max_interval());
        let first = self.first_interval.min(cap).max(Duration::from_micros(100));
        let interval = Backoff::try_new(first, cap.max(first), 1.5, 0.2)
            .unwrap_or_else(|_| Backoff::reconnect());
        let mut timeouts = target.attempt_timeout();
        if let (Some(initial), false) = (self.attempt_timeout, is_fixed(&timeouts)) {
            let max = initial.max(timeouts.current() * 10);
            timeouts = AttemptTimeout::try_new(initial, max, 2.0)
                .unwrap_or_else(|_| AttemptTimeout::fixed(initial));
        }
        Pacing { interval, timeouts }
    }
}

fn is_fixed(t: &AttemptTimeout) -> bool {
    let mut grown = t.clone();
    grown.grow();
    grown.current() == t.current()
}

// === impl WaitReport ===

impl WaitReport {
    /// Whether every target reached the wanted state.
    pub fn all_reached(&self) -> bool {
        self.targets
            .iter()
            .all(|t| matches!(t.outcome, TargetOutcome::Reached { .. }))
    }
}

/// Waits for every target, each checked by its [`Prober`], paced by
/// `policy`. See [`wait_all`].
pub async fn wait_targets(
    targets: Vec<Target>,
    policy: &WaitPolicy,
    events: mpsc::Sender<WaitEvent>,
    shutdown: CancellationToken,
) -> WaitReport {
    let jobs = targets
        .into_iter()
        .map(|t| {
            let pacing = policy.pacing(&t);
            (Prober::new(t), pacing)
        })
        .collect();
    wait_all(jobs, policy, events, shutdown).await
}

/// Waits for every check to reach the wanted state, in parallel, under one
/// deadline, reporting each attempt on `events`. A permanent failure of one
/// target cancels the others; so does `shutdown`.
///
/// Events are sent with back-pressure: a consumer that stops reading slows
/// the probing instead of growing a queue. A closed channel is fine.
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future aborts every target's task, which closes
/// whatever its probe had open.
pub async fn wait_all<C: Check>(
    jobs: Vec<(C, Pacing)>,
    policy: &WaitPolicy,
    events: mpsc::Sender<WaitEvent>,
    shutdown: CancellationToken,
) -> WaitReport {
    let start = Instant::now();
    let deadline = Deadline::after(start, policy.timeout);
    let cancel = shutdown.child_token();
    let count = jobs.len();
    let mut set = JoinSet::new();
    let mut index_of = HashMap::new();
    for (index, (check, pacing)) in jobs.into_iter().enumerate() {
        let run = Run {
            index,
            deadline,
            invert: policy.invert,
            cancel: cancel.clone(),
            events: events.clone(),
            restart: policy.restart.clone(),
        };
        let handle = set.spawn(run.drive(check, pacing));
        index_of.insert(handle.id(), index);
    }
    drop(events);
    let mut reports: Vec<Option<TargetReport>> = vec![None; count];
    while let Some(joined) = set.join_next_with_id().await {
        let (index, report) = match joined {
            Ok((id, report)) => (index_of[&id], report),
            Err(e) => {
                // A probe that panicked is a bug; report it as a local
                // failure of that target instead of taking the wait down.
                let failure = Failure::new(
                    tether_resilience::Phase::Connect,
                    Cause::LimitReached,
                    format!("internal error in the probe: {e}"),
                )
                .with_verdict(tether_resilience::Verdict::Permanent);
                let report = TargetReport {
                    attempts: 0,
                    elapsed: start.elapsed(),
                    outcome: TargetOutcome::GaveUp {
                        reason: GaveUp::Permanent,
                        last: Some(Err(failure)),
                    },
                };
                (index_of[&e.id()], report)
            }
        };
        if matches!(
            report.outcome,
            TargetOutcome::GaveUp {
                reason: GaveUp::Permanent,
                ..
            }
        ) {
            cancel.cancel();
        }
        reports[index] = Some(report);
    }
    let targets = reports
        .into_iter()
        .map(|r| {
            r.unwrap_or(TargetReport {
                attempts: 0,
                elapsed: start.elapsed(),
                outcome: TargetOutcome::GaveUp {
                    reason: GaveUp::Cancelled,
                    last: None,
                },
            })
        })
        .collect();
    WaitReport {
        targets,
        elapsed: start.elapsed(),
    }
}

/// One target's loop.
struct Run {
    index: usize,
    deadline: Deadline,
    invert: bool,
    cancel: CancellationToken,
    events: mpsc::Sender<WaitEvent>,
    restart: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl Run {
    async fn drive<C: Check>(self, mut check: C, pacing: Pacing) -> TargetReport {
        let mut interval: ExponentialBackoff = pacing.interval.start(Jitter::new());
        let pacing_timeouts = pacing.timeouts.clone();
        let mut timeouts = pacing.timeouts;
        let mut attempts = 0u32;
        let mut last: Option<Result<Ready, Failure>> = None;
        let mut last_cause: Option<Cause> = None;
        loop {
            let Some(timeout) = timeouts.for_attempt(&self.deadline, Instant::now()) else {
                return self.gave_up(GaveUp::Timeout, attempts, last).await;
            };
            attempts += 1;
            // Cut short by the deadline: a timeout then says nothing of
            // the target.
            let cut_short = timeout < timeouts.current();
            let began = Instant::now();
            // The probe honours its timeout; the margin only guards against a
            // probe that does not.
            let checking =
                tokio::time::timeout(timeout + Duration::from_millis(250), check.check(timeout));
            let outcome = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return self.gave_up(GaveUp::Cancelled, attempts - 1, last).await,
                outcome = checking => outcome.unwrap_or_else(|_| Err(Failure::timeout(tether_resilience::Phase::FirstByte, timeout, "probe"))),
            };
            let now = Instant::now();
            let took = now - began;

            let reached = match (&outcome, self.invert) {
                (Ok(ready), false) => Some(ready.detail().to_string()),
                (Err(failure), true) => Some(format!("not ready: {failure}")),
                _ => None,
            };
            let permanent = matches!((&outcome, self.invert), (Err(f), false) if f.is_permanent());
            let next_in = if reached.is_some() || permanent {
                None
            } else {
                if let Err(failure) = &outcome {
                    if failure.cause.is_timeout() {
                        timeouts.grow();
                    }
                    if last_cause.is_some_and(|c| c != failure.cause) {
                        interval.reset();
                    }
                    last_cause = Some(failure.cause);
                }
                let pause = interval.next_delay();
                // Skip a pause that would end at or after the deadline.
                (pause < self.deadline.remaining(now)).then_some(pause)
            };
            self.emit(WaitEvent::Attempt {
                target: self.index,
                attempt: attempts,
                elapsed: self.deadline.elapsed(now),
                took,
                outcome: outcome.clone(),
                next_in,
            })
            .await;
            if let Some(detail) = reached {
                let elapsed = self.deadline.elapsed(now);
                self.emit(WaitEvent::Ready {
                    target: self.index,
                    attempts,
                    elapsed,
                    detail: detail.clone(),
                })
                .await;
                return TargetReport {
                    attempts,
                    elapsed,
                    outcome: TargetOutcome::Reached { detail },
                };
            }
            // The failure before a timeout the deadline cut short is the
            // one to report (`no instance is registered`, not `it does not
            // answer`).
            let says_nothing =
                cut_short && matches!(&outcome, Err(f) if f.cause.is_timeout()) && last.is_some();
            if !says_nothing {
                last = Some(outcome);
            }
            if permanent {
                return self.gave_up(GaveUp::Permanent, attempts, last).await;
            }
            let Some(pause) = next_in else {
                return self.gave_up(GaveUp::Timeout, attempts, last).await;
            };
            let restart = async {
                match &self.restart {
                    Some(restart) => restart.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return self.gave_up(GaveUp::Cancelled, attempts, last).await,
                () = restart => {
                    interval.reset();
                    timeouts = pacing_timeouts.clone();
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn gave_up(
        &self,
        reason: GaveUp,
        attempts: u32,
        last: Option<Result<Ready, Failure>>,
    ) -> TargetReport {
        let elapsed = self.deadline.elapsed(Instant::now());
        self.emit(WaitEvent::Failed {
            target: self.index,
            attempts,
            elapsed,
            reason,
            last: last.clone(),
        })
        .await;
        TargetReport {
            attempts,
            elapsed,
            outcome: TargetOutcome::GaveUp { reason, last },
        }
    }

    async fn emit(&self, event: WaitEvent) {
        // A consumer that went away (quiet mode) is not an error.
        let _ = self.events.send(event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tether_resilience::Phase;

    /// A scripted check: each attempt takes `took` (on the paused clock, or
    /// the whole timeout when it "hangs") and returns the next outcome; the
    /// last outcome repeats. Records what timeout each attempt was given.
    struct Script {
        steps: VecDeque<(Duration, Step)>,
        seen: Seen,
    }

    /// When each attempt started, and the timeout it was given.
    type Seen = Arc<Mutex<Vec<(Instant, Duration)>>>;

    #[derive(Clone)]
    enum Step {
        Ready,
        Fail(Failure),
        Hang,
    }

    fn refused() -> Step {
        Step::Fail(Failure::new(
            Phase::Connect,
            Cause::ConnectRefused,
            "connect to x: connection refused",
        ))
    }

    fn http(status: u16) -> Step {
        Step::Fail(Failure::http_status(status, None, "GET x"))
    }

    impl Script {
        fn new(steps: Vec<(Duration, Step)>) -> (Script, Seen) {
            let seen = Arc::new(Mutex::new(Vec::new()));
            (
                Script {
                    steps: steps.into(),
                    seen: seen.clone(),
                },
                seen,
            )
        }
    }

    impl Check for Script {
        async fn check(&mut self, timeout: Duration) -> Result<Ready, Failure> {
            self.seen.lock().unwrap().push((Instant::now(), timeout));
            let (took, step) = if self.steps.len() > 1 {
                self.steps.pop_front().unwrap()
            } else {
                self.steps.front().cloned().unwrap()
            };
            match step {
                Step::Hang => {
                    tokio::time::sleep(timeout).await;
                    Err(Failure::timeout(Phase::FirstByte, timeout, "GET x"))
                }
                Step::Ready => {
                    tokio::time::sleep(took).await;
                    Ok(Ready::new("ok"))
                }
                Step::Fail(f) => {
                    tokio::time::sleep(took).await;
                    Err(f)
                }
            }
        }
    }

    fn pacing(first_ms: u64, cap_ms: u64, timeout_ms: u64) -> Pacing {
        Pacing {
            interval: Backoff::try_new(
                Duration::from_millis(first_ms),
                Duration::from_millis(cap_ms),
                1.5,
                0.2,
            )
            .unwrap(),
            timeouts: AttemptTimeout::try_new(
                Duration::from_millis(timeout_ms),
                Duration::from_millis(timeout_ms * 8),
                2.0,
            )
            .unwrap(),
        }
    }

    async fn run(jobs: Vec<(Script, Pacing)>, policy: WaitPolicy) -> (WaitReport, Vec<WaitEvent>) {
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let report = wait_all(jobs, &policy, tx, CancellationToken::new()).await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        (report, events)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_tries_every_target_at_once_with_its_pauses_reset() {
        let (script, seen) = Script::new(vec![(Duration::ZERO, refused())]);
        let restart = Arc::new(tokio::sync::Notify::new());
        let mut policy = WaitPolicy::new(ms(60_000));
        policy.restart = Some(restart.clone());
        let waiting =
            tokio::spawn(async move { run(vec![(script, pacing(5, 10_000, 1000))], policy).await });
        // Pauses have grown to seconds after 20 s of refusals.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let before = seen.lock().unwrap().len();
        let woke = Instant::now();
        restart.notify_waiters();
        tokio::time::sleep(ms(1)).await;
        let after: Vec<Instant> = seen.lock().unwrap()[before..]
            .iter()
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(after.first(), Some(&woke), "tried at once: {after:?}");
        // And the pauses start over from the first interval.
        tokio::time::sleep(ms(20)).await;
        let again = seen.lock().unwrap().len() - before;
        assert!(again >= 3, "short pauses again: {again} attempts in 20 ms");
        waiting.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn ready_after_refusals_with_growing_capped_pauses() {
        let mut steps: Vec<_> = (0..30).map(|_| (Duration::ZERO, refused())).collect();
        steps.push((Duration::ZERO, Step::Ready));
        let (script, seen) = Script::new(steps);
        let (report, events) = run(
            vec![(script, pacing(5, 20, 1000))],
            WaitPolicy::new(ms(60_000)),
        )
        .await;
        assert!(report.all_reached());
        assert_eq!(report.targets[0].attempts, 31);
        let starts: Vec<Instant> = seen.lock().unwrap().iter().map(|(t, _)| *t).collect();
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        // The first pause is the first interval within jitter; none exceeds the cap.
        assert!(gaps[0] >= ms(4) && gaps[0] <= ms(6), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= ms(20)), "{gaps:?}");
        assert!(
            gaps.last().unwrap() >= &ms(16),
            "the pauses grew to near the cap: {gaps:?}"
        );
        // At most ~50 probes a second at the cap, never more than 100 in any second.
        let first_second = starts
            .iter()
            .filter(|t| **t - starts[0] < Duration::from_secs(1))
            .count();
        assert!(
            first_second <= 100,
            "{first_second} probes in the first second"
        );
        assert!(matches!(
            events.last(),
            Some(WaitEvent::Ready { attempts: 31, .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failure_ends_everything_at_once() {
        let (slow, _) = Script::new(vec![(Duration::ZERO, refused())]);
        let (not_found, _) = Script::new(vec![(ms(3), refused()), (ms(2), http(404))]);
        let start = Instant::now();
        let (report, _) = run(
            vec![
                (slow, pacing(5, 20, 1000)),
                (not_found, pacing(5, 20, 1000)),
            ],
            WaitPolicy::new(ms(60_000)),
        )
        .await;
        assert!(
            start.elapsed() < ms(100),
            "ended at once, not at the deadline: {:?}",
            start.elapsed()
        );
        assert!(matches!(
            report.targets[1].outcome,
            TargetOutcome::GaveUp {
                reason: GaveUp::Permanent,
                ..
            }
        ));
        assert!(matches!(
            report.targets[0].outcome,
            TargetOutcome::GaveUp {
                reason: GaveUp::Cancelled,
                ..
            }
        ));
        assert!(!report.all_reached());
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_ends_the_wait_and_clamps_the_last_attempt() {
        let (hang, seen) = Script::new(vec![(Duration::ZERO, Step::Hang)]);
        let start = Instant::now();
        let (report, _) = run(
            vec![(hang, pacing(5, 20, 1000))],
            WaitPolicy::new(ms(5_000)),
        )
        .await;
        let elapsed = start.elapsed();
        assert!(elapsed <= ms(5_000), "never past the deadline: {elapsed:?}");
        assert!(elapsed >= ms(4_900), "{elapsed:?}");
        let timeouts: Vec<Duration> = seen.lock().unwrap().iter().map(|(_, t)| *t).collect();
        // 1 s, then 2 s after a timeout, then what is left (not 4 s).
        assert_eq!(timeouts[0], ms(1000));
        assert_eq!(timeouts[1], ms(2000));
        assert!(timeouts[2] < ms(2000), "{timeouts:?}");
        let TargetOutcome::GaveUp { reason, last } = &report.targets[0].outcome else {
            panic!()
        };
        assert_eq!(*reason, GaveUp::Timeout);
        assert!(matches!(last, Some(Err(f)) if f.cause == Cause::ResponseTimeout));
    }

    /// The last attempt gets what is left of the deadline, and may time
    /// out for that alone: the failure reported is the one before it. Found
    /// by `tether wait registry:api -t 300ms` under load, which said the
    /// registry "does not answer" where no instance was registered.
    #[tokio::test(start_paused = true)]
    async fn a_last_attempt_the_deadline_cut_short_does_not_hide_the_cause() {
        let missing = Step::Fail(Failure::new(
            Phase::FirstByte,
            Cause::PathMissing,
            "no instance of 'api' is registered",
        ));
        let mut steps: Vec<_> = (0..5).map(|_| (Duration::ZERO, missing.clone())).collect();
        steps.push((Duration::ZERO, Step::Hang));
        let (script, seen) = Script::new(steps);
        let (report, _) = run(
            vec![(script, pacing(5, 20, 1000))],
            WaitPolicy::new(ms(100)),
        )
        .await;
        let timeouts: Vec<Duration> = seen.lock().unwrap().iter().map(|(_, t)| *t).collect();
        assert!(
            timeouts.last().unwrap() < &ms(100),
            "cut short: {timeouts:?}"
        );
        let TargetOutcome::GaveUp { reason, last } = &report.targets[0].outcome else {
            panic!("{report:?}")
        };
        assert_eq!(*reason, GaveUp::Timeout);
        assert!(
            matches!(last, Some(Err(f)) if f.cause == Cause::PathMissing),
            "{last:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_of_failure_starts_the_pauses_over() {
        let mut steps: Vec<_> = (0..10).map(|_| (Duration::ZERO, refused())).collect();
        steps.push((Duration::ZERO, http(503)));
        steps.push((Duration::ZERO, http(503)));
        steps.push((Duration::ZERO, Step::Ready));
        let (script, seen) = Script::new(steps);
        let (report, _) = run(
            vec![(script, pacing(5, 200, 1000))],
            WaitPolicy::new(ms(60_000)),
        )
        .await;
        assert!(report.all_reached());
        let starts: Vec<Instant> = seen.lock().unwrap().iter().map(|(t, _)| *t).collect();
        let before = starts[10] - starts[9];
        let after = starts[11] - starts[10];
        assert!(
            after < before,
            "the pause after 503 ({after:?}) is shorter than before it ({before:?})"
        );
        assert!(after <= ms(6));
    }

    #[tokio::test(start_paused = true)]
    async fn invert_waits_until_not_ready() {
        let (script, _) = Script::new(vec![
            (Duration::ZERO, Step::Ready),
            (Duration::ZERO, Step::Ready),
            (Duration::ZERO, refused()),
        ]);
        let mut policy = WaitPolicy::new(ms(10_000));
        policy.invert = true;
        let (report, _) = run(vec![(script, pacing(5, 20, 1000))], policy).await;
        let TargetOutcome::Reached { detail } = &report.targets[0].outcome else {
            panic!("{report:?}")
        };
        assert_eq!(detail, "not ready: connect to x: connection refused");
        assert_eq!(report.targets[0].attempts, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn invert_times_out_while_still_ready() {
        let (script, _) = Script::new(vec![(Duration::ZERO, Step::Ready)]);
        let mut policy = WaitPolicy::new(ms(1_000));
        policy.invert = true;
        let (report, _) = run(vec![(script, pacing(5, 20, 1000))], policy).await;
        let TargetOutcome::GaveUp { reason, last } = &report.targets[0].outcome else {
            panic!()
        };
        assert_eq!(*reason, GaveUp::Timeout);
        assert!(matches!(last, Some(Ok(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_every_target() {
        let (a, _) = Script::new(vec![(Duration::ZERO, refused())]);
        let (b, _) = Script::new(vec![(Duration::ZERO, Step::Hang)]);
        let shutdown = CancellationToken::new();
        let (tx, _rx) = mpsc::channel(1 << 16);
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(300)).await;
            trigger.cancel();
        });
        let start = Instant::now();
        let jobs = vec![(a, pacing(5, 20, 1000)), (b, pacing(5, 20, 1000))];
        let report = wait_all(jobs, &WaitPolicy::new(ms(60_000)), tx, shutdown).await;
        assert!(start.elapsed() < ms(400));
        for t in &report.targets {
            assert!(
                matches!(
                    t.outcome,
                    TargetOutcome::GaveUp {
                        reason: GaveUp::Cancelled,
                        ..
                    }
                ),
                "{t:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn events_tell_each_attempt_and_the_end() {
        let (script, _) = Script::new(vec![
            (ms(1), refused()),
            (ms(1), refused()),
            (ms(1), Step::Ready),
        ]);
        let (_, events) = run(
            vec![(script, pacing(5, 20, 1000))],
            WaitPolicy::new(ms(60_000)),
        )
        .await;
        let attempts: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                WaitEvent::Attempt {
                    attempt,
                    outcome,
                    next_in,
                    took,
                    ..
                } => Some((*attempt, outcome.is_ok(), next_in.is_some(), *took)),
                _ => None,
            })
            .collect();
        assert_eq!(
            attempts,
            [
                (1, false, true, ms(1)),
                (2, false, true, ms(1)),
                (3, true, false, ms(1))
            ]
        );
        assert!(matches!(
            events.last(),
            Some(WaitEvent::Ready { attempts: 3, .. })
        ));
    }

    #[test]
    fn policy_pacing_uses_target_defaults_and_overrides() {
        let policy = WaitPolicy::new(ms(60_000));
        let p = policy.pacing(&Target::parse("127.0.0.1:1").unwrap());
        assert_eq!(p.interval.max(), ms(12));
        assert_eq!(p.interval.initial(), ms(5));
        assert_eq!(p.timeouts.current(), ms(1000));
        let mut policy = WaitPolicy::new(ms(60_000));
        policy.max_interval = Some(ms(2));
        policy.attempt_timeout = Some(ms(300));
        let p = policy.pacing(&Target::parse("127.0.0.1:1").unwrap());
        assert_eq!((p.interval.initial(), p.interval.max()), (ms(2), ms(2)));
        assert_eq!(p.timeouts.current(), ms(300));
        // A target's own fixed timeout wins over the policy's.
        let p = policy.pacing(&Target::parse("127.0.0.1:1#timeout=7s").unwrap());
        assert_eq!(p.timeouts.current(), ms(7000));
    }
}
