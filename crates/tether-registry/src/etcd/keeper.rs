//! What an etcd registrant does next, without I/O: grant a lease, put the
//! record with it, renew it every TTL/3, and start over when it is lost.
//!
//! Instants are durations on one clock that the caller reads
//! (`CLOCK_BOOTTIME` in the shell: it counts a suspend, so a machine that
//! slept through the TTL knows its lease is gone when it wakes).
//!
//! The rules:
//! - A lease is alive until TTL has passed since the last renewal etcd
//!   *acknowledged* (the Go client's rule); after that it is lost, whatever
//!   the network says.
//! - etcd saying the lease is unknown (a renewal answered with TTL 0, a put
//!   refused with "lease not found") means lost at once: etcd restarted with
//!   its data wiped, or expired it across a stall.
//! - Lost means: grant a new lease and put the same key again. The record
//!   keeps its id, so watchers see it removed and added, or changed.
//! - Failures wait a backoff (100 ms to 1 s, ±20 %), reset by any success.
//!   A failed renewal while the lease still holds is retried before it runs
//!   out.

use std::time::Duration;

use tether_resilience::{Backoff, ExponentialBackoff, Jitter};

use crate::LeaseState;

/// The backoff between failed calls: short, because the goal is a record
/// back within 2 s of etcd accepting again, and one registrant's call a
/// second is nothing to etcd.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

/// The decision core of one registration.
#[derive(Debug)]
pub(crate) struct Keeper {
    /// The TTL asked for.
    ttl: Duration,
    phase: Phase,
    state: LeaseState,
    backoff: ExponentialBackoff,
    /// When the next step is due.
    wake: Duration,
    /// Registered at least once.
    ever: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Grant,
    /// Granted at `granted` for `ttl`; the record is not put yet.
    Put {
        id: i64,
        ttl: Duration,
        granted: Duration,
    },
    /// The record is up; etcd last acknowledged the lease at `acked`.
    Alive {
        id: i64,
        ttl: Duration,
        acked: Duration,
    },
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing until this much time has passed.
    Wait(Duration),
    /// Grant a lease of this TTL.
    Grant(Duration),
    /// Put the record with this lease.
    Put(i64),
    /// Renew this lease.
    KeepAlive(i64),
}

impl Keeper {
    pub(crate) fn new(ttl: Duration, rng: Jitter) -> Keeper {
        let policy = Backoff::try_new(BACKOFF.0, BACKOFF.1, 2.0, 0.2)
            .unwrap_or_else(|_| Backoff::reconnect());
        Keeper {
            ttl,
            phase: Phase::Grant,
            state: LeaseState::Retrying {
                cause: "registering".to_string(),
            },
            backoff: policy.start(rng),
            wake: Duration::ZERO,
            ever: false,
        }
    }

    pub(crate) fn state(&self) -> &LeaseState {
        &self.state
    }

    /// The lease etcd may hold for this record, to revoke on the way out.
    pub(crate) fn lease(&self) -> Option<i64> {
        match self.phase {
            Phase::Grant => None,
            Phase::Put { id, .. } | Phase::Alive { id, .. } => Some(id),
        }
    }

    /// What to do at `now`.
    pub(crate) fn step(&mut self, now: Duration) -> Step {
        self.expire(now);
        if now < self.wake {
            let mut wait = self.wake - now;
            // Never sleep past the lease's end: it is lost then.
            if let Phase::Alive { ttl, acked, .. }
            | Phase::Put {
                ttl,
                granted: acked,
                ..
            } = self.phase
            {
                wait = wait.min((acked + ttl).saturating_sub(now));
            }
            return Step::Wait(wait.max(Duration::from_millis(1)));
        }
        match self.phase {
            Phase::Grant => Step::Grant(self.ttl),
            Phase::Put { id, .. } => Step::Put(id),
            Phase::Alive { id, .. } => Step::KeepAlive(id),
        }
    }

    /// etcd granted lease `id` for `ttl` (it may raise a TTL to its minimum).
    pub(crate) fn granted(&mut self, id: i64, ttl: Duration, now: Duration) {
        self.phase = Phase::Put {
            id,
            ttl,
            granted: now,
        };
        self.wake = now;
    }

    /// The record was put with the lease granted last.
    pub(crate) fn put(&mut self, now: Duration) {
        if let Phase::Put { id, ttl, granted } = self.phase {
            self.phase = Phase::Alive {
                id,
                ttl,
                acked: granted,
            };
            self.registered();
            self.wake = now.max(granted + ttl / 3);
        }
    }

    /// A renewal was answered: `ttl` left, or zero if etcd does not know
    /// the lease.
    pub(crate) fn kept(&mut self, left: Duration, now: Duration) {
        let Phase::Alive { id, ttl, .. } = self.phase else {
            return;
        };
        if left.is_zero() {
            self.lose(
                format!(
                    "etcd no longer knows lease {id:x}: it expired, or etcd lost its data; granting a new one"
                ),
                now,
            );
            return;
        }
        self.phase = Phase::Alive {
            id,
            ttl,
            acked: now,
        };
        self.registered();
        self.wake = now + ttl / 3;
    }

    /// A call failed with `cause`; `lease_unknown` when etcd refused it
    /// because it does not know the lease.
    pub(crate) fn failed(&mut self, cause: String, lease_unknown: bool, now: Duration) {
        if lease_unknown && self.phase != Phase::Grant {
            self.lose(
                format!("etcd does not know the lease ({cause}); granting a new one"),
                now,
            );
            return;
        }
        let delay = self.backoff.next_delay();
        self.wake = now + delay;
        self.state = match self.phase {
            // Worded the same at every attempt, so it is said once.
            Phase::Alive { ttl, .. } => LeaseState::Retrying {
                cause: format!(
                    "renewing the lease failed (it holds for up to its {}s TTL): {cause}",
                    ttl.as_secs()
                ),
            },
            _ if self.ever => LeaseState::Lost { cause },
            _ => LeaseState::Retrying { cause },
        };
    }

    /// A sign that etcd may have lost the lease (the connection watching
    /// the record broke: etcd restarted, or the network went): renew now
    /// rather than at the next third of the TTL. Only while registered, so
    /// failures keep their backoff.
    pub(crate) fn poke(&mut self, now: Duration) {
        if self.state == LeaseState::Registered && matches!(self.phase, Phase::Alive { .. }) {
            self.wake = self.wake.min(now);
        }
    }

    /// The record was deleted from etcd while its lease holds (by hand, or
    /// by another client): put it again with the same lease.
    pub(crate) fn deleted(&mut self, now: Duration) {
        if let Phase::Alive { id, ttl, acked } = self.phase {
            self.phase = Phase::Put {
                id,
                ttl,
                granted: acked,
            };
            self.state = LeaseState::Retrying {
                cause: "the record was deleted from etcd; putting it again".to_string(),
            };
            self.wake = now;
        }
    }

    /// Registered, and nothing is due before the next renewal.
    pub(crate) fn registered_now(&self) -> bool {
        self.state == LeaseState::Registered
    }

    /// A lease whose TTL passed since its last acknowledgement is lost.
    fn expire(&mut self, now: Duration) {
        match self.phase {
            Phase::Alive { ttl, acked, .. } if now >= acked + ttl => {
                let why = match &self.state {
                    LeaseState::Retrying { cause } => format!(": {cause}"),
                    _ => String::new(),
                };
                self.lose(
                    format!(
                        "no renewal acknowledged within the lease's {}s TTL{why}",
                        ttl.as_secs()
                    ),
                    now,
                );
            }
            Phase::Put { ttl, granted, .. } if now >= granted + ttl => {
                // Granted but never put, and now expired: grant again.
                self.phase = Phase::Grant;
                self.wake = now;
            }
            _ => {}
        }
    }

    fn lose(&mut self, cause: String, now: Duration) {
        self.phase = Phase::Grant;
        self.state = LeaseState::Lost { cause };
        self.wake = now;
    }

    fn registered(&mut self) {
        self.state = LeaseState::Registered;
        self.ever = true;
        self.backoff.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(6);

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn keeper() -> Keeper {
        Keeper::new(TTL, Jitter::seeded(7))
    }

    /// Grants, puts and renews a lease at `now`; returns its id.
    fn register(k: &mut Keeper, id: i64, now: Duration) {
        assert_eq!(k.step(now), Step::Grant(TTL));
        k.granted(id, TTL, now);
        assert_eq!(k.step(now), Step::Put(id));
        k.put(now);
        assert_eq!(k.state(), &LeaseState::Registered);
    }

    #[test]
    fn renews_every_third_of_the_ttl() {
        let mut k = keeper();
        register(&mut k, 1, s(0.0));
        assert_eq!(k.step(s(1.0)), Step::Wait(s(1.0)));
        assert_eq!(k.step(s(2.0)), Step::KeepAlive(1));
        k.kept(TTL, s(2.1));
        assert_eq!(k.step(s(2.1)), Step::Wait(s(2.0)));
        assert_eq!(k.step(s(4.1)), Step::KeepAlive(1));
        assert_eq!(k.lease(), Some(1));
    }

    #[test]
    fn unreachable_at_start_retries_with_the_cause_and_a_capped_backoff() {
        let mut k = keeper();
        let mut now = s(0.0);
        for attempt in 0..20 {
            assert_eq!(k.step(now), Step::Grant(TTL), "attempt {attempt}");
            k.failed("connection refused".to_string(), false, now);
            assert_eq!(
                k.state(),
                &LeaseState::Retrying {
                    cause: "connection refused".to_string()
                }
            );
            let Step::Wait(wait) = k.step(now) else {
                panic!("waits after a failure");
            };
            assert!(wait <= BACKOFF.1, "attempt {attempt}: {wait:?}");
            now += wait;
        }
        k.granted(9, TTL, now);
        k.put(now);
        assert_eq!(k.state(), &LeaseState::Registered);
    }

    #[test]
    fn a_failed_renewal_is_retried_before_the_lease_runs_out_then_it_is_lost() {
        let mut k = keeper();
        register(&mut k, 1, s(0.0));
        assert_eq!(k.step(s(2.0)), Step::KeepAlive(1));
        let mut now = s(2.0);
        loop {
            k.failed("timed out".to_string(), false, now);
            if now < s(6.0) {
                assert_eq!(k.state().word(), "retrying", "{now:?}");
                assert!(k.state().cause().unwrap().contains("timed out"));
            }
            match k.step(now) {
                Step::Wait(w) => {
                    // Never past the end of the lease.
                    assert!(now + w <= s(6.0) || now >= s(6.0), "{now:?} + {w:?}");
                    now += w;
                }
                other => panic!("{other:?}"),
            }
            match k.step(now) {
                Step::KeepAlive(1) => continue,
                Step::Grant(_) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(now, s(6.0), "lost exactly at the TTL");
        let LeaseState::Lost { cause } = k.state() else {
            panic!("{:?}", k.state());
        };
        assert!(
            cause.contains("6s TTL") && cause.contains("timed out"),
            "{cause}"
        );
        assert_eq!(k.lease(), None);
        // Granted again: the same record goes back up.
        k.granted(2, TTL, now);
        assert_eq!(k.step(now), Step::Put(2));
        k.put(now);
        assert_eq!(k.state(), &LeaseState::Registered);
    }

    #[test]
    fn a_lease_etcd_forgot_is_granted_again_at_once() {
        let mut k = keeper();
        register(&mut k, 1, s(0.0));
        assert_eq!(k.step(s(2.0)), Step::KeepAlive(1));
        k.kept(Duration::ZERO, s(2.0));
        assert_eq!(k.state().word(), "lost");
        assert_eq!(k.step(s(2.0)), Step::Grant(TTL));

        // A put refused because the new lease is unknown already.
        k.granted(2, TTL, s(2.0));
        k.failed("lease not found".to_string(), true, s(2.0));
        assert_eq!(k.step(s(2.0)), Step::Grant(TTL));
        // Failing grants while lost stay lost, with the newest cause.
        k.failed("connection refused".to_string(), false, s(2.0));
        assert_eq!(
            k.state(),
            &LeaseState::Lost {
                cause: "connection refused".to_string()
            }
        );
    }

    #[test]
    fn a_sleep_past_the_ttl_loses_the_lease_on_waking() {
        let mut k = keeper();
        register(&mut k, 1, s(0.0));
        // The machine slept an hour: the boot clock moved on.
        assert_eq!(k.step(s(3600.0)), Step::Grant(TTL));
        assert_eq!(k.state().word(), "lost");
    }

    #[test]
    fn a_grant_that_is_never_put_expires() {
        let mut k = keeper();
        assert_eq!(k.step(s(0.0)), Step::Grant(TTL));
        k.granted(1, TTL, s(0.0));
        k.failed("timed out".to_string(), false, s(0.0));
        assert!(matches!(k.step(s(0.0)), Step::Wait(_)));
        assert_eq!(k.step(s(6.0)), Step::Grant(TTL));
        assert_eq!(k.state().word(), "retrying", "never registered");
    }

    #[test]
    fn a_broken_watch_renews_at_once_but_never_bypasses_the_backoff() {
        let mut k = keeper();
        register(&mut k, 1, s(0.0));
        k.poke(s(0.5));
        assert_eq!(k.step(s(0.5)), Step::KeepAlive(1), "renewed at once");
        k.failed("connection refused".to_string(), false, s(0.5));
        let Step::Wait(backoff) = k.step(s(0.5)) else {
            panic!("waits");
        };
        // Pokes while failing do not hurry the next attempt.
        k.poke(s(0.5));
        assert_eq!(k.step(s(0.5)), Step::Wait(backoff));
    }

    #[test]
    fn a_deleted_record_is_put_again_with_its_lease() {
        let mut k = keeper();
        register(&mut k, 1, s(0.0));
        k.deleted(s(1.0));
        assert_eq!(k.state().word(), "retrying");
        assert_eq!(k.step(s(1.0)), Step::Put(1));
        k.put(s(1.0));
        assert_eq!(k.state(), &LeaseState::Registered);
        assert_eq!(
            k.step(s(1.0)),
            Step::Wait(s(1.0)),
            "the renewal pace is kept"
        );
    }

    #[test]
    fn a_raised_ttl_sets_the_renewal_pace() {
        let mut k = Keeper::new(Duration::from_secs(1), Jitter::seeded(1));
        assert_eq!(k.step(s(0.0)), Step::Grant(Duration::from_secs(1)));
        k.granted(1, Duration::from_secs(3), s(0.0));
        k.put(s(0.0));
        assert_eq!(k.step(s(0.5)), Step::Wait(s(0.5)));
        assert_eq!(k.step(s(1.0)), Step::KeepAlive(1));
    }
}
