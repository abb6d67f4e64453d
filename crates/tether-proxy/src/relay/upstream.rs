//! Whether the upstream is ready, by probing it, paced by demand.
//!
//! - While clients wait (`demand`), it is probed fast: 5 ms growing ×1.5 to
//!   the target's cap (12 ms on this machine), so a held client goes
//!   through within milliseconds of the upstream being back.
//! - While nobody waits and it is down, slowly: 100 ms doubling to 10 s.
//! - While it is ready, every 2 s if the check is one of its own (`steady`:
//!   an HTTP health URL, say); three failures in a row make it down
//!   (HAProxy's `fall 3`), one success makes it ready again. When the check
//!   is only a connect to the upstream, nothing is probed while it is
//!   ready: the clients' own connects are the check, and the upstream sees
//!   no connection but theirs (a server that takes one client at a time,
//!   such as iperf3's, would take a probe for one).
//! - A failed connect by a real client asks for a look now (`check`): the
//!   answer of that look is said even if it did not change (the driver has
//!   put its clients on hold meanwhile and waits for it), and a failure
//!   then makes a ready upstream down at once (the client's failure was the
//!   first of the `FALL`).
//!
//! Where the upstream is a service of the stack, the supervisor's view says
//! when it is ready and none of this runs.

use std::sync::Arc;
use std::time::Duration;

use tether_probe::Prober;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// How often a ready upstream is looked at.
const STEADY: Duration = Duration::from_secs(2);
/// Failures in a row that make a ready upstream down.
const FALL: u32 = 3;
/// The first pause while clients wait.
const FAST: Duration = Duration::from_millis(5);
/// The slowest pause while nobody waits.
const IDLE_CAP: Duration = Duration::from_secs(10);

/// Probes the upstream until `stop`, publishing its readiness on `ready`
/// (`Err` with the words of the last failure while it is not).
///
/// # Cancel safety
///
/// Cancel-safe: it only probes and publishes.
pub async fn watch(
    mut prober: Prober,
    steady: bool,
    mut demand: watch::Receiver<bool>,
    check: Arc<Notify>,
    ready: watch::Sender<Result<(), String>>,
    stop: CancellationToken,
) {
    let cap = prober.target().default_max_interval();
    let timeouts = prober.target().attempt_timeout();
    let mut pause = FAST;
    let mut failures = 0u32;
    let mut asked = false;
    loop {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = prober.check(timeouts.current()) => outcome,
        };
        let was_ready = ready.borrow().is_ok();
        match outcome {
            Ok(_) => {
                failures = 0;
                if !was_ready || asked {
                    let _ = ready.send_replace(Ok(()));
                }
            }
            Err(failure) => {
                failures += 1;
                if was_ready && (failures >= FALL || asked) {
                    // A ready upstream gets `FALL` chances.
                    let _ = ready.send_replace(Err(failure.detail));
                } else if !was_ready {
                    // One that is down only changes its words: kept for
                    // whoever looks, without waking anyone.
                    ready.send_if_modified(|now| {
                        *now = Err(failure.detail);
                        false
                    });
                }
            }
        }
        asked = false;
        let is_ready = ready.borrow().is_ok();
        let wanted = *demand.borrow();
        let wait = if is_ready {
            pause = FAST;
            if steady {
                STEADY
            } else {
                // Until a client's connect fails.
                Duration::MAX
            }
        } else if wanted {
            let now = pause.min(cap);
            pause = (pause.mul_f64(1.5)).min(cap);
            now
        } else {
            let now = pause.max(Duration::from_millis(100)).min(IDLE_CAP);
            pause = (now * 2).min(IDLE_CAP);
            now
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = sleep_for(wait) => {}
            () = check.notified() => {
                pause = FAST;
                asked = true;
            }
            changed = demand.changed() => {
                if changed.is_err() {
                    return;
                }
                if *demand.borrow() {
                    pause = FAST;
                }
            }
        }
    }
}

/// Follows a readiness that someone else decides (the supervisor's state of
/// a service), publishing it on `ready`, until `stop`.
///
/// Nothing is probed while `states` says ready, except when a client's
/// connect failed meanwhile (`check`): then the address is tried fast (5 ms
/// growing ×1.5 to the target's cap) until it answers, which is said even
/// though `ready` did not change (the driver holds its clients until it
/// hears it), or until `states` changes.
///
/// # Cancel safety
///
/// Cancel-safe: it only probes and publishes.
pub async fn follow(
    mut states: watch::Receiver<Result<(), String>>,
    mut prober: Prober,
    check: Arc<Notify>,
    ready: watch::Sender<Result<(), String>>,
    stop: CancellationToken,
) {
    let cap = prober.target().default_max_interval();
    let timeouts = prober.target().attempt_timeout();
    loop {
        let state = states.borrow_and_update().clone();
        let _ = ready.send_replace(state.clone());
        tokio::select! {
            () = stop.cancelled() => return,
            changed = states.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = check.notified(), if state.is_ok() => {}
        }
        // A client could not connect although the service is ready.
        let mut pause = FAST;
        loop {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                changed = states.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                outcome = prober.check(timeouts.current()) => outcome,
            };
            if outcome.is_ok() {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = states.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                () = tokio::time::sleep(pause) => {}
            }
            pause = pause.mul_f64(1.5).min(cap);
        }
    }
}

/// Sleeps `wait`; `Duration::MAX` never ends.
async fn sleep_for(wait: Duration) {
    if wait == Duration::MAX {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(wait).await;
}
