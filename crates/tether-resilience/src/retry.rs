//! Bounded request retries that classify before they sleep.
//!
//! A retry helps only when the failure may pass, when sending again cannot do
//! the work twice, and when there is time and load to spare. So the decision
//! is kept apart from the mechanism: [`RetryState::on_failure`] is the one
//! place that turns a [`Failure`] into "retry after this delay" or "give up,
//! and why", and the caller's loop only sleeps and sends.
//!
//! Retries are bounded three ways (Envoy, the Google SRE book):
//!
//! - a number of attempts, 3 by default, counting the first;
//! - one [`Deadline`] that includes the sleeps: a retry whose delay would end
//!   at or after the deadline is not slept at all, since the attempt after it
//!   could not run;
//! - a [`RetryBudget`] shared by every request to an upstream, so retries add
//!   at most a fraction of the load (20 %, with a floor of 3 concurrent
//!   retries). Backoff alone does not stop many clients from multiplying the
//!   load of a struggling peer; a budget does.
//!
//! Delays are full jitter ([`FullJitter`]), and a server's Retry-After hint is
//! a floor, clamped to a cap, never a ceiling: the server knows when it will
//! be ready, but must not be able to park a client for an hour.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::failure::human_duration;
use crate::{Deadline, Failure, FullJitter, InvalidPolicy, Jitter, Safety};

/// How many times to try, how long to wait between tries, and how far to
/// trust a server's Retry-After hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: FullJitter,
    retry_after_cap: Duration,
}

/// The retries of one request: made just before its first attempt, asked
/// after each failed one.
#[derive(Debug)]
pub struct RetryState {
    policy: RetryPolicy,
    deadline: Deadline,
    rng: Jitter,
    /// Attempts made so far, counting the one in progress.
    attempts: u32,
}

/// What to do after a failed attempt.
///
/// Not `Clone`: a retry may carry a budget permit, which must exist once.
#[derive(Debug)]
#[must_use = "a decision to retry or give up must be acted on"]
pub enum Decision {
    /// Sleep `after`, then send again. When a budget was given, `permit`
    /// holds one of its retries: keep it through the sleep and the attempt,
    /// and drop it when that attempt ends.
    Retry {
        after: Duration,
        source: DelaySource,
        permit: Option<RetryGuard>,
    },
    /// Stop, and report the last failure together with this reason.
    GiveUp(GiveUp),
}

/// What set the delay of a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DelaySource {
    /// The full-jitter backoff.
    Backoff,
    /// The server's Retry-After hint, which was longer than the backoff.
    RetryAfter,
}

/// Why a request is not tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GiveUp {
    /// The failure will not pass without a change (its verdict is permanent).
    Permanent,
    /// The request may already have been processed, and it is not
    /// idempotent: sending it again could do the work twice.
    Unsafe,
    /// Every allowed attempt was made.
    AttemptsExhausted { attempts: u32 },
    /// The next delay would end at or after the deadline, so the attempt
    /// after it could not run; giving up now skips a useless sleep.
    DeadlineTooClose { needed: Duration, left: Duration },
    /// The upstream's retry budget is spent: other requests are already
    /// retrying as much as it allows.
    BudgetExhausted,
}

/// A retry budget shared by every request to one upstream (Envoy's
/// `retry_budget`): concurrent retries may not exceed
/// `max(min_concurrency, ⌊ratio · active requests⌋)`.
///
/// Clones share one budget; it is `Send` and `Sync`, and its counters are
/// atomics, so tasks on any thread can use it at once.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    shared: Arc<Shared>,
}

/// One active request counted by a [`RetryBudget`]; the count drops with it.
#[derive(Debug)]
#[must_use = "the request counts only while the guard is held"]
pub struct RequestGuard {
    shared: Arc<Shared>,
}

/// One active retry counted by a [`RetryBudget`]; the count drops with it.
#[derive(Debug)]
#[must_use = "the retry counts only while the guard is held"]
pub struct RetryGuard {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    ratio: f64,
    min_concurrency: u32,
    requests: AtomicU32,
    retries: AtomicU32,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// `max_attempts` counts the first attempt and must be at least 1 (1
    /// means never retry). A `retry_after_cap` of zero ignores server hints.
    pub fn try_new(
        max_attempts: u32,
        backoff: FullJitter,
        retry_after_cap: Duration,
    ) -> Result<RetryPolicy, InvalidPolicy> {
        if max_attempts == 0 {
            return Err(InvalidPolicy::new(
                "retry policy",
                "max attempts must be at least 1",
            ));
        }
        Ok(RetryPolicy {
            max_attempts,
            backoff,
            retry_after_cap,
        })
    }

    /// tether's default for a local upstream: 3 attempts in all, full jitter
    /// from 25 ms up to 1 s, Retry-After hints honoured up to 60 s.
    pub const fn default_local() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: FullJitter::retry(),
            retry_after_cap: Duration::from_secs(60),
        }
    }

    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    pub fn backoff(&self) -> FullJitter {
        self.backoff
    }

    pub fn retry_after_cap(&self) -> Duration {
        self.retry_after_cap
    }
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy::default_local()
    }
}

// === impl RetryState ===

impl RetryState {
    /// Retries under `policy`, all of them ending by `deadline`. Make it just
    /// before the first attempt: it counts that attempt as made.
    pub fn new(policy: RetryPolicy, deadline: Deadline, rng: Jitter) -> RetryState {
        RetryState {
            policy,
            deadline,
            rng,
            attempts: 1,
        }
    }

    /// Decides what to do after the attempt in progress failed with
    /// `failure` at `now`. `idempotent` says whether the request may safely
    /// be processed twice. With a `budget`, a retry takes one of its permits.
    ///
    /// The checks run in this order, and the first that fails gives up:
    /// the verdict, retry safety, the attempt count; then the delay is
    /// computed (full jitter for this retry, raised to the clamped
    /// Retry-After hint if there is one) and checked against the deadline;
    /// last the budget, so a retry is taken from it only when it will be
    /// made. A retry counts as the next attempt.
    pub fn on_failure(
        &mut self,
        failure: &Failure,
        now: Instant,
        idempotent: bool,
        budget: Option<&RetryBudget>,
    ) -> Decision {
        if failure.is_permanent() {
            return Decision::GiveUp(GiveUp::Permanent);
        }
        if failure.safety != Safety::NotSent && !idempotent {
            return Decision::GiveUp(GiveUp::Unsafe);
        }
        if self.attempts >= self.policy.max_attempts {
            return Decision::GiveUp(GiveUp::AttemptsExhausted {
                attempts: self.attempts,
            });
        }

        let backoff = self.policy.backoff.delay(self.attempts - 1, &mut self.rng);
        // The hint is a floor, clamped by the cap: it raises the delay, and is
        // named as its source, only when it is at least the backoff.
        let hint = failure
            .retry_after
            .map(|hint| hint.min(self.policy.retry_after_cap));
        let (after, source) = match hint {
            Some(hint) if hint >= backoff => (hint, DelaySource::RetryAfter),
            _ => (backoff, DelaySource::Backoff),
        };

        let left = self.deadline.remaining(now);
        if after >= left {
            return Decision::GiveUp(GiveUp::DeadlineTooClose {
                needed: after,
                left,
            });
        }

        let permit = match budget {
            Some(budget) => match budget.try_retry() {
                Some(permit) => Some(permit),
                None => return Decision::GiveUp(GiveUp::BudgetExhausted),
            },
            None => None,
        };
        self.attempts += 1;
        Decision::Retry {
            after,
            source,
            permit,
        }
    }

    /// Attempts made so far, counting the one in progress: after a give-up,
    /// how many failed; after a success, how many it took.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

// === impl Decision ===

impl Decision {
    pub fn is_retry(&self) -> bool {
        matches!(self, Decision::Retry { .. })
    }
}

// === impl DelaySource ===

impl DelaySource {
    /// The stable lower-case name used in logs, JSON and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            DelaySource::Backoff => "backoff",
            DelaySource::RetryAfter => "retry-after",
        }
    }
}

impl fmt::Display for DelaySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl GiveUp ===

impl GiveUp {
    /// The stable lower-case name used in logs, JSON and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            GiveUp::Permanent => "permanent",
            GiveUp::Unsafe => "unsafe",
            GiveUp::AttemptsExhausted { .. } => "attempts",
            GiveUp::DeadlineTooClose { .. } => "deadline",
            GiveUp::BudgetExhausted => "budget",
        }
    }
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUp::Permanent => {
                f.write_str("not retried: the failure is permanent and needs a change to pass")
            }
            GiveUp::Unsafe => f.write_str(
                "not retried: the request may already have been processed and is not idempotent",
            ),
            GiveUp::AttemptsExhausted { attempts: 1 } => f.write_str("gave up after 1 attempt"),
            GiveUp::AttemptsExhausted { attempts } => {
                write!(f, "gave up after {attempts} attempts")
            }
            GiveUp::DeadlineTooClose { needed, left } => write!(
                f,
                "gave up: the next retry would wait {} but the deadline is {} away",
                human_duration(*needed),
                human_duration(*left),
            ),
            GiveUp::BudgetExhausted => {
                f.write_str("gave up: the retry budget is spent, too many requests are retrying")
            }
        }
    }
}

// === impl RetryBudget ===

impl RetryBudget {
    /// A budget of `ratio` retries per active request, with a floor of
    /// `min_concurrency` concurrent retries however few requests are active.
    ///
    /// `ratio` must be in `[0, 1]`.
    pub fn try_new(ratio: f64, min_concurrency: u32) -> Result<RetryBudget, InvalidPolicy> {
        if !(0.0..=1.0).contains(&ratio) {
            return Err(InvalidPolicy::new(
                "retry budget",
                "ratio must be in [0, 1]",
            ));
        }
        let shared = Shared {
            ratio,
            min_concurrency,
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
        };
        Ok(RetryBudget {
            shared: Arc::new(shared),
        })
    }

    /// Counts one active request until the guard drops. Take it once per
    /// request, for its whole life including retries.
    pub fn start_request(&self) -> RequestGuard {
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            shared: self.shared.clone(),
        }
    }

    /// Takes one retry from the budget, if active retries are below
    /// [`RetryBudget::limit`].
    pub fn try_retry(&self) -> Option<RetryGuard> {
        let limit = self.limit();
        self.shared
            .retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| RetryGuard {
                shared: self.shared.clone(),
            })
    }

    /// The most concurrent retries allowed now:
    /// `max(min_concurrency, ⌊ratio · active requests⌋)`.
    ///
    /// The counters guard no other memory, so relaxed atomics suffice. The
    /// limit is a budget, not a lock: requests that end while retries run
    /// can leave more retries active than the smaller limit allows, as in
    /// Envoy; no new retry is granted until they drop below it.
    pub fn limit(&self) -> u32 {
        let requests = self.active_requests();
        // A float to u32 cast saturates, and ratio is at most 1.
        let share = (self.shared.ratio * f64::from(requests)).floor() as u32;
        share.max(self.shared.min_concurrency)
    }

    pub fn active_requests(&self) -> u32 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    pub fn active_retries(&self) -> u32 {
        self.shared.retries.load(Ordering::Relaxed)
    }

    pub fn ratio(&self) -> f64 {
        self.shared.ratio
    }

    pub fn min_concurrency(&self) -> u32 {
        self.shared.min_concurrency
    }
}

impl Default for RetryBudget {
    /// Envoy's default: 20 % of active requests, with a floor of 3.
    fn default() -> RetryBudget {
        let shared = Shared {
            ratio: 0.2,
            min_concurrency: 3,
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
        };
        RetryBudget {
            shared: Arc::new(shared),
        }
    }
}

// === impl RequestGuard ===

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.shared.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl RetryGuard ===

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.shared.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cause, Phase};
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn refused() -> Failure {
        Failure::new(
            Phase::Connect,
            Cause::ConnectRefused,
            "connect to 127.0.0.1:1: refused",
        )
    }

    fn state(policy: RetryPolicy, now: Instant, total: Duration) -> RetryState {
        RetryState::new(policy, Deadline::after(now, total), Jitter::seeded(9))
    }

    fn give_up(d: Decision) -> GiveUp {
        match d {
            Decision::GiveUp(why) => why,
            Decision::Retry { .. } => panic!("expected to give up, got {d:?}"),
        }
    }

    fn retry(d: Decision) -> (Duration, DelaySource, Option<RetryGuard>) {
        match d {
            Decision::Retry {
                after,
                source,
                permit,
            } => (after, source, permit),
            Decision::GiveUp(why) => panic!("expected a retry, gave up: {why}"),
        }
    }

    #[test]
    fn policy_rejects_zero_attempts_and_has_local_defaults() {
        let err = RetryPolicy::try_new(0, FullJitter::retry(), secs(60)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid retry policy: max attempts must be at least 1"
        );
        let p = RetryPolicy::default();
        assert_eq!(p, RetryPolicy::default_local());
        assert_eq!(p.max_attempts(), 3);
        assert_eq!(p.backoff(), FullJitter::retry());
        assert_eq!(p.retry_after_cap(), secs(60));
        assert!(RetryBudget::try_new(1.5, 3).is_err());
        assert_eq!(
            RetryBudget::try_new(f64::NAN, 3).unwrap_err().to_string(),
            "invalid retry budget: ratio must be in [0, 1]"
        );
        let b = RetryBudget::default();
        assert_eq!((b.ratio(), b.min_concurrency()), (0.2, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn three_attempts_then_give_up_with_the_count() {
        let mut s = state(RetryPolicy::default(), Instant::now(), secs(30));
        assert_eq!(s.attempts(), 1);
        for n in 0..2 {
            let (after, source, permit) =
                retry(s.on_failure(&refused(), Instant::now(), false, None));
            assert!(after <= FullJitter::retry().ceiling(n));
            assert_eq!(source, DelaySource::Backoff);
            assert!(permit.is_none());
            tokio::time::advance(after).await;
        }
        assert_eq!(s.attempts(), 3);
        let why = give_up(s.on_failure(&refused(), Instant::now(), false, None));
        assert_eq!(why, GiveUp::AttemptsExhausted { attempts: 3 });
        assert_eq!(s.attempts(), 3);
    }

    #[test]
    fn permanent_then_unsafe_come_first() {
        let now = Instant::now();
        let policy = RetryPolicy::try_new(1, FullJitter::retry(), secs(60)).unwrap();
        let mut s = state(policy, now, secs(30));
        let denied = Failure::new(Phase::Connect, Cause::PermissionDenied, "x")
            .with_safety(Safety::Processed);
        assert_eq!(
            give_up(s.on_failure(&denied, now, false, None)),
            GiveUp::Permanent
        );
        let reset = Failure::new(Phase::FirstByte, Cause::ResetBeforeResponse, "x");
        assert_eq!(reset.safety, Safety::SentUnacked);
        assert_eq!(
            give_up(s.on_failure(&reset, now, false, None)),
            GiveUp::Unsafe
        );
        assert_eq!(
            give_up(s.on_failure(&reset, now, true, None)),
            GiveUp::AttemptsExhausted { attempts: 1 }
        );
    }

    #[test]
    fn idempotent_or_unsent_requests_may_retry() {
        let now = Instant::now();
        let reset = Failure::new(Phase::FirstByte, Cause::ResetBeforeResponse, "x");
        let mut s = state(RetryPolicy::default(), now, secs(30));
        assert!(s.on_failure(&reset, now, true, None).is_retry());
        let mut s = state(RetryPolicy::default(), now, secs(30));
        assert!(
            s.on_failure(&refused(), now, false, None).is_retry(),
            "never sent"
        );
        let processed = refused().with_safety(Safety::Processed);
        assert_eq!(
            give_up(s.on_failure(&processed, now, false, None)),
            GiveUp::Unsafe
        );
    }

    #[test]
    fn retry_after_is_a_floor_clamped_by_the_cap() {
        let now = Instant::now();
        let policy = RetryPolicy::try_new(5, FullJitter::retry(), secs(10)).unwrap();
        let busy = |hint| Failure::http_status(503, Some(hint), "GET /");

        let mut s = state(policy, now, secs(300));
        let (after, source, _) = retry(s.on_failure(&busy(secs(3)), now, false, None));
        assert_eq!((after, source), (secs(3), DelaySource::RetryAfter));

        let (after, source, _) = retry(s.on_failure(&busy(secs(3600)), now, false, None));
        assert_eq!(
            (after, source),
            (secs(10), DelaySource::RetryAfter),
            "clamped by the cap"
        );

        // A hint shorter than the backoff does not shorten it.
        let backoff = FullJitter::try_new(secs(1), secs(1)).unwrap();
        let policy = RetryPolicy::try_new(5, backoff, secs(10)).unwrap();
        let mut s = RetryState::new(policy, Deadline::after(now, secs(300)), Jitter::seeded(1));
        let expected = backoff.delay(0, &mut Jitter::seeded(1));
        assert!(expected > Duration::ZERO);
        let (after, source, _) = retry(s.on_failure(&busy(Duration::ZERO), now, false, None));
        assert_eq!((after, source), (expected, DelaySource::Backoff));
    }

    #[tokio::test(start_paused = true)]
    async fn skips_the_useless_last_sleep_when_the_deadline_is_close() {
        let start = Instant::now();
        let policy = RetryPolicy::try_new(10, FullJitter::retry(), secs(60)).unwrap();
        let mut s = state(policy, start, secs(5));
        tokio::time::advance(secs(3)).await;
        let hint = refused().with_retry_after(Some(secs(2)));
        let why = give_up(s.on_failure(&hint, Instant::now(), false, None));
        assert_eq!(
            why,
            GiveUp::DeadlineTooClose {
                needed: secs(2),
                left: secs(2)
            }
        );

        let hint = refused().with_retry_after(Some(ms(1_999)));
        let (after, _, _) = retry(s.on_failure(&hint, Instant::now(), false, None));
        assert_eq!(after, ms(1_999));

        // Past the deadline even a zero delay is too late.
        tokio::time::advance(secs(5)).await;
        let policy = RetryPolicy::try_new(10, FullJitter::retry(), secs(60)).unwrap();
        let mut late = state(policy, start, secs(5));
        assert!(matches!(
            give_up(late.on_failure(&refused(), Instant::now(), false, None)),
            GiveUp::DeadlineTooClose {
                left: Duration::ZERO,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_loop_on_paused_time_ends_within_its_deadline() {
        let start = Instant::now();
        let policy = RetryPolicy::try_new(50, FullJitter::retry(), secs(60)).unwrap();
        let mut s = state(policy, start, secs(2));
        let why = loop {
            // Each attempt takes 100 ms and fails.
            tokio::time::advance(ms(100)).await;
            match s.on_failure(&refused(), Instant::now(), false, None) {
                Decision::Retry { after, .. } => tokio::time::sleep(after).await,
                Decision::GiveUp(why) => break why,
            }
        };
        assert!(matches!(why, GiveUp::DeadlineTooClose { .. }), "{why}");
        assert!(Instant::now() - start <= secs(2));
        assert!(s.attempts() > 1 && s.attempts() < 50);
    }

    #[test]
    fn the_budget_is_taken_only_for_a_retry_that_will_happen() {
        let now = Instant::now();
        let budget = RetryBudget::try_new(0.0, 1).unwrap();
        let _request = budget.start_request();

        // Giving up for another reason leaves the budget alone.
        let mut s = state(
            RetryPolicy::try_new(1, FullJitter::retry(), secs(1)).unwrap(),
            now,
            secs(9),
        );
        give_up(s.on_failure(&refused(), now, false, Some(&budget)));
        assert_eq!(budget.active_retries(), 0);

        let mut s = state(RetryPolicy::default(), now, secs(9));
        let (_, _, permit) = retry(s.on_failure(&refused(), now, false, Some(&budget)));
        assert!(permit.is_some());
        assert_eq!(budget.active_retries(), 1);

        let mut other = state(RetryPolicy::default(), now, secs(9));
        assert_eq!(
            give_up(other.on_failure(&refused(), now, false, Some(&budget))),
            GiveUp::BudgetExhausted
        );
        assert_eq!(other.attempts(), 1, "a refused retry is not an attempt");

        drop(permit);
        assert_eq!(budget.active_retries(), 0);
        assert!(
            other
                .on_failure(&refused(), now, false, Some(&budget))
                .is_retry()
        );
    }

    #[test]
    fn budget_grows_with_active_requests() {
        let budget = RetryBudget::default();
        assert_eq!(budget.limit(), 3, "the floor");
        let requests: Vec<_> = (0..20).map(|_| budget.start_request()).collect();
        assert_eq!(budget.active_requests(), 20);
        assert_eq!(budget.limit(), 4);
        let retries: Vec<_> = std::iter::from_fn(|| budget.try_retry())
            .take(100)
            .collect();
        assert_eq!(retries.len(), 4);
        drop(requests);
        assert_eq!(budget.active_requests(), 0);
        assert_eq!(budget.limit(), 3);
        assert!(
            budget.try_retry().is_none(),
            "4 retries still run above the new limit"
        );
        drop(retries);
        assert_eq!(budget.active_retries(), 0);
        let shared = budget.clone();
        let _one = shared.try_retry().unwrap();
        assert_eq!(budget.active_retries(), 1, "clones share one budget");
    }

    #[test]
    fn budget_holds_under_threads() {
        let budget = RetryBudget::try_new(0.2, 3).unwrap();
        let _requests: Vec<_> = (0..50).map(|_| budget.start_request()).collect();
        let granted: Vec<Vec<RetryGuard>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1_000)
                            .filter_map(|_| budget.try_retry())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: usize = granted.iter().map(Vec::len).sum();
        assert_eq!(
            total, 10,
            "exactly ⌊0.2 · 50⌋ retries, however the threads race"
        );
        assert_eq!(budget.active_retries(), 10);
        drop(granted);
        assert_eq!(budget.active_retries(), 0);
    }

    #[test]
    fn words() {
        assert_eq!(
            GiveUp::Permanent.to_string(),
            "not retried: the failure is permanent and needs a change to pass"
        );
        assert_eq!(
            GiveUp::Unsafe.to_string(),
            "not retried: the request may already have been processed and is not idempotent"
        );
        assert_eq!(
            GiveUp::AttemptsExhausted { attempts: 3 }.to_string(),
            "gave up after 3 attempts"
        );
        assert_eq!(
            GiveUp::AttemptsExhausted { attempts: 1 }.to_string(),
            "gave up after 1 attempt"
        );
        assert_eq!(
            GiveUp::DeadlineTooClose {
                needed: ms(1200),
                left: ms(300)
            }
            .to_string(),
            "gave up: the next retry would wait 1.2s but the deadline is 300ms away"
        );
        assert_eq!(
            GiveUp::BudgetExhausted.to_string(),
            "gave up: the retry budget is spent, too many requests are retrying"
        );
        assert_eq!(GiveUp::BudgetExhausted.as_str(), "budget");
        assert_eq!(DelaySource::Backoff.to_string(), "backoff");
        assert_eq!(DelaySource::RetryAfter.to_string(), "retry-after");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Start,
        Finish(usize),
        Retry,
        EndRetry(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Start),
            2 => any::<usize>().prop_map(Op::Finish),
            3 => Just(Op::Retry),
            2 => any::<usize>().prop_map(Op::EndRetry),
        ]
    }

    proptest! {
        #[test]
        fn never_more_attempts_than_allowed_nor_a_sleep_past_the_deadline(
            max_attempts in 1u32..12,
            base_ms in 1u64..500,
            extra_ms in 0u64..5_000,
            total_ms in 0u64..20_000,
            seed: u64,
            work_ms in prop::collection::vec(0u64..2_000, 12),
            hints in prop::collection::vec(prop::option::of(0u64..30_000), 12),
        ) {
            let backoff = FullJitter::try_new(ms(base_ms), ms(base_ms + extra_ms)).unwrap();
            let policy = RetryPolicy::try_new(max_attempts, backoff, secs(5)).unwrap();
            let start = Instant::now();
            let deadline = Deadline::after(start, ms(total_ms));
            let mut s = RetryState::new(policy, deadline, Jitter::seeded(seed));
            let mut now = start;
            let mut made = 1;
            for (work, hint) in work_ms.iter().zip(&hints) {
                now += ms(*work);
                let failure = refused().with_retry_after(hint.map(ms));
                match s.on_failure(&failure, now, false, None) {
                    Decision::Retry { after, .. } => {
                        prop_assert!(now + after < deadline.end(), "sleep ends past the deadline");
                        now += after;
                        made += 1;
                        prop_assert!(made <= max_attempts);
                    }
                    Decision::GiveUp(why) => {
                        if let GiveUp::DeadlineTooClose { needed, left } = why {
                            prop_assert!(needed >= left);
                        }
                        break;
                    }
                }
            }
            prop_assert_eq!(s.attempts(), made);
        }

        #[test]
        fn retry_after_is_a_clamped_floor(
            cap_ms in 0u64..10_000,
            hint_ms in 0u64..100_000,
            retries in 0u32..8,
            seed: u64,
        ) {
            let policy = RetryPolicy::try_new(20, FullJitter::retry(), ms(cap_ms)).unwrap();
            let now = Instant::now();
            let deadline = Deadline::after(now, secs(3600));
            let mut s = RetryState::new(policy, deadline, Jitter::seeded(seed));
            for _ in 0..retries {
                retry(s.on_failure(&refused(), now, false, None));
            }
            let floor = ms(hint_ms.min(cap_ms));
            let ceiling = FullJitter::retry().ceiling(retries);
            let failure = refused().with_retry_after(Some(ms(hint_ms)));
            let (after, source, _) = retry(s.on_failure(&failure, now, false, None));
            prop_assert!(after >= floor, "{after:?} under the hint {floor:?}");
            prop_assert!(after <= floor.max(ceiling), "{after:?} above both hint and backoff");
            match source {
                DelaySource::RetryAfter => prop_assert_eq!(after, floor),
                DelaySource::Backoff => prop_assert!(after <= ceiling && after > floor),
            }
        }

        #[test]
        fn budget_never_grants_past_its_limit(
            ratio in 0.0f64..=1.0,
            min_concurrency in 0u32..6,
            ops in prop::collection::vec(op(), 1..400),
        ) {
            let budget = RetryBudget::try_new(ratio, min_concurrency).unwrap();
            let mut requests = Vec::new();
            let mut retries = Vec::new();
            for op in ops {
                match op {
                    Op::Start => requests.push(budget.start_request()),
                    Op::Finish(pick) if !requests.is_empty() => {
                        drop(requests.swap_remove(pick % requests.len()));
                    }
                    Op::Retry => {
                        let limit = (ratio * requests.len() as f64).floor() as u32;
                        let limit = limit.max(min_concurrency);
                        let before = retries.len() as u32;
                        match budget.try_retry() {
                            Some(guard) => {
                                prop_assert!(before < limit, "granted {} of {}", before + 1, limit);
                                retries.push(guard);
                            }
                            None => {
                                prop_assert!(before >= limit, "refused at {} of {}", before, limit)
                            }
                        }
                    }
                    Op::EndRetry(pick) if !retries.is_empty() => {
                        drop(retries.swap_remove(pick % retries.len()));
                    }
                    _ => {}
                }
                prop_assert_eq!(budget.active_requests() as usize, requests.len());
                prop_assert_eq!(budget.active_retries() as usize, retries.len());
            }
        }
    }
}
