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
//!
//! The machine can pull the ground from under a probe (tether-netmon's
//! events, given to every loop through [`System`]): after a resume, a stall
//! or a network change, each probe runs at once; a probe that timed out
//! across a stall (its timeout fired more than [`LATE`] late, or a
//! revalidation came while it ran) is not counted and runs again at once;
//! and while the network settles, failures are held, not counted, so the
//! hysteresis does not flap a service because of the churn itself.

use std::time::Duration;

use tether_probe::{Prober, Ready};
use tether_resilience::AttemptTimeout;
use tether_resilience::{Failure, Health, HealthConfig, HealthTracker, Jitter, Transition};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One probe result.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) took: Duration,
    pub(crate) outcome: Result<Ready, Failure>,
    /// A change of health this result caused.
    pub(crate) transition: Option<Transition>,
    /// Why a failure was not counted, when it was not.
    pub(crate) held: Option<Held>,
}

/// What the machine's events say to the probes of a stack (set through
/// [`crate::Handle::revalidate`] and [`crate::Handle::set_settling`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct System {
    /// Bumped on every resume, stall or network change.
    pub(crate) revalidations: u64,
    /// The network is changing; it has not settled yet.
    pub(crate) settling: bool,
}

/// Why a failed probe is not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// It timed out across a stall or a sleep: the time passed while
    /// nothing ran, so the timeout says nothing about the service.
    Stall,
    /// The network is changing; it is judged once it settles.
    Settling,
}

/// How late a timeout must fire to have spanned a stall: a timeout fired
/// on time takes its own length plus scheduling noise, far below this.
pub(crate) const LATE: Duration = Duration::from_secs(1);

/// Failures are held for at most this long in a row (from the first one
/// held); after it they count, so a host starved for good, or a network
/// that never stops changing, cannot keep a dead service ready. Above the
/// network monitor's longest settling (2 s) and its stall tick (1 s).
pub(crate) const HOLD_MAX: Duration = Duration::from_secs(5);

/// Whether the steady loop counts `failure`: not when it timed out across a
/// stall (`took` beyond `timeout` + [`LATE`], or `revalidated` while it
/// ran), nor while the network is `settling`.
pub(crate) fn held(
    failure: &Failure,
    timeout: Duration,
    took: Duration,
    revalidated: bool,
    settling: bool,
) -> Option<Held> {
    if failure.cause.is_timeout() && (revalidated || took > timeout + LATE) {
        Some(Held::Stall)
    } else if settling {
        Some(Held::Settling)
    } else {
        None
    }
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
    mut system: watch::Receiver<System>,
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
                && began.elapsed() <= timeouts.current() + LATE
            {
                timeouts.grow();
            }
            // One success at startup marks it healthy (Envoy, HAProxy).
            let transition = if ok { tracker.record(true) } else { None };
            let report = Report {
                took: began.elapsed(),
                outcome,
                transition,
                held: None,
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
    let mut again = false;
    // When the first of the failures held in a row was.
    let mut holding_since: Option<Instant> = None;
    loop {
        if !again {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(tracker.next_interval()) => {}
                () = look_again(&mut system) => {}
            }
        }
        let at = *system.borrow_and_update();
        let began = Instant::now();
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = prober.check(health.timeout()) => outcome,
        };
        let took = began.elapsed();
        let now = *system.borrow();
        let held = outcome
            .as_ref()
            .err()
            .and_then(|f| {
                held(
                    f,
                    health.timeout(),
                    took,
                    now.revalidations != at.revalidations,
                    now.settling || at.settling,
                )
            })
            .filter(|_| holding_since.is_none_or(|t| t.elapsed() < HOLD_MAX));
        holding_since = match held {
            Some(_) => holding_since.or(Some(Instant::now())),
            None => None,
        };
        // A timeout across a stall is asked again at once: its answer
        // decides; so is a probe a revalidation came during, which may
        // have been answered before the change. A failure while the
        // network settles waits for the settling to end (or the next
        // interval).
        again = held == Some(Held::Stall) || now.revalidations != at.revalidations;
        let transition = if held.is_some() {
            None
        } else {
            tracker.record(outcome.is_ok())
        };
        let report = Report {
            took,
            outcome,
            transition,
            held,
        };
        if reports.send((tag, report)).await.is_err() {
            return;
        }
    }
}

/// Returns when the probe should run before its interval is up: a
/// revalidation, or the network settled. Pending forever once the sender
/// is gone.
async fn look_again(system: &mut watch::Receiver<System>) {
    let mut last = *system.borrow_and_update();
    loop {
        if system.changed().await.is_err() {
            return std::future::pending().await;
        }
        let now = *system.borrow_and_update();
        if now.revalidations != last.revalidations || (last.settling && !now.settling) {
            return;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use tether_probe::target::Target;
    use tether_resilience::failure::{Cause, Phase};

    use super::*;

    fn timeout() -> Failure {
        Failure::new(Phase::FirstByte, Cause::ResponseTimeout, "no answer")
    }

    fn refused() -> Failure {
        Failure::new(Phase::Connect, Cause::ConnectRefused, "refused")
    }

    #[test]
    fn what_is_held() {
        let s = Duration::from_secs;
        // On time: counted.
        assert_eq!(held(&timeout(), s(3), s(3), false, false), None);
        assert_eq!(
            held(&timeout(), s(3), s(3) + LATE / 2, false, false),
            None,
            "scheduling noise is not a stall"
        );
        // Fired late, or a revalidation came meanwhile: a stall.
        assert_eq!(
            held(&timeout(), s(3), s(10), false, false),
            Some(Held::Stall)
        );
        assert_eq!(held(&timeout(), s(3), s(3), true, false), Some(Held::Stall));
        // A refusal is an answer, whenever it comes.
        assert_eq!(held(&refused(), s(3), s(10), true, false), None);
        // While the network settles, any failure waits.
        assert_eq!(
            held(&refused(), s(3), s(0), false, true),
            Some(Held::Settling)
        );
    }

    fn steady(fall: u32) -> HealthConfig {
        HealthConfig::default_local()
            .with_thresholds(1, fall)
            .unwrap()
            .with_timeout(Duration::from_secs(3))
            .unwrap()
    }

    type Reports = mpsc::Receiver<((), Report)>;

    fn start(
        target: &str,
        health: HealthConfig,
    ) -> (Reports, watch::Sender<System>, CancellationToken) {
        let (tx, rx) = mpsc::channel(16);
        let (system, system_rx) = watch::channel(System::default());
        let stop = CancellationToken::new();
        tokio::spawn(run(
            Prober::new(Target::parse(target).unwrap()),
            health,
            Start::Healthy,
            (),
            tx,
            system_rx,
            stop.clone(),
        ));
        (rx, system, stop)
    }

    /// Failures while the network settles are held; once it settled, the
    /// probe runs at once and its failure counts.
    #[tokio::test(start_paused = true)]
    async fn failures_wait_while_the_network_settles() {
        let port = tether_test::peers::free_port();
        let (mut reports, system, _stop) = start(&format!("tcp://127.0.0.1:{port}"), steady(1));
        system.send_modify(|s| s.settling = true);
        let ((), first) = reports.recv().await.unwrap();
        assert_eq!(first.held, Some(Held::Settling));
        assert!(first.transition.is_none());
        // Settled: probed now, not after the 5 s interval.
        let settled = Instant::now();
        system.send_modify(|s| s.settling = false);
        let ((), second) = reports.recv().await.unwrap();
        assert!(settled.elapsed() < Duration::from_secs(1));
        assert_eq!(second.held, None);
        assert_eq!(second.transition.map(|t| t.to), Some(Health::Unhealthy));
    }

    /// A timeout a revalidation came during is not counted and asked again
    /// at once; the second one counts.
    #[tokio::test(start_paused = true)]
    async fn a_timeout_across_a_revalidation_is_asked_again() {
        // Accepts and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut reports, system, _stop) =
            start(&format!("http://127.0.0.1:{port}/health"), steady(1));
        let (_first_conn, _) = listener.accept().await.unwrap();
        system.send_modify(|s| s.revalidations += 1);
        let ((), first) = reports.recv().await.unwrap();
        assert!(first.outcome.as_ref().unwrap_err().cause.is_timeout());
        assert_eq!(first.held, Some(Held::Stall));
        let asked = Instant::now();
        let (_second_conn, _) = listener.accept().await.unwrap();
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "asked again at once"
        );
        let ((), second) = reports.recv().await.unwrap();
        assert_eq!(second.held, None);
        assert_eq!(second.transition.map(|t| t.to), Some(Health::Unhealthy));
    }

    /// A revalidation wakes a probe waiting out its interval.
    #[tokio::test(start_paused = true)]
    async fn a_revalidation_probes_now() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts (a TCP probe waits for its connection to be accepted).
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let (mut reports, system, _stop) = start(&format!("tcp://127.0.0.1:{port}"), steady(3));
        let ((), first) = reports.recv().await.unwrap();
        assert!(first.outcome.is_ok());
        let asked = Instant::now();
        system.send_modify(|s| s.revalidations += 1);
        let ((), second) = reports.recv().await.unwrap();
        assert!(second.outcome.is_ok());
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "not after the interval"
        );
    }

    /// Holding is bounded: a failure HOLD_MAX after the first held one
    /// counts, even while the network is still said to be settling.
    #[tokio::test(start_paused = true)]
    async fn holding_is_bounded() {
        let port = tether_test::peers::free_port();
        let (mut reports, system, _stop) = start(&format!("tcp://127.0.0.1:{port}"), steady(1));
        system.send_modify(|s| s.settling = true);
        let ((), r) = reports.recv().await.unwrap();
        assert_eq!(r.held, Some(Held::Settling));
        let first = Instant::now();
        loop {
            let ((), r) = reports.recv().await.unwrap();
            if r.held.is_none() {
                assert!(first.elapsed() >= HOLD_MAX);
                assert_eq!(r.transition.map(|t| t.to), Some(Health::Unhealthy));
                break;
            }
            assert!(first.elapsed() < HOLD_MAX);
        }
    }
}
