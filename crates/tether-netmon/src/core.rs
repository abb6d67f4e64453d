//! What happened to the machine, decided without I/O: clock readings and
//! network hints in, events and snapshot requests out.
//!
//! The rules:
//! - **Sleep.** δ = BOOTTIME − MONOTONIC grows only while the machine is
//!   suspended (MONOTONIC stops, BOOTTIME does not). Growth by more than
//!   [`Config::slept_min`] is [`Event::Resumed`], whichever input sees it
//!   first; only changes of δ count, since a time namespace adds a fixed
//!   offset.
//! - **Clock step.** The realtime timerfd fires (cancelled) on a step *and*
//!   on resume: without δ growth it is [`Event::ClockStepped`].
//! - **Stall.** The watchdog ticks every [`Config::tick`] on MONOTONIC. A
//!   tick later than `tick + stall_after` with δ unchanged means this
//!   process did not run (SIGSTOP, a frozen cgroup, a paused VM, a starved
//!   host): [`Event::Stalled`].
//! - **Network.** Netlink messages are hints (netlink drops them on
//!   overrun). The first hint of a burst is [`Event::NetworkSettling`];
//!   once no hint came for [`Config::settle`] (or [`Config::settle_max`]
//!   passed since the first), a snapshot is asked for, and its difference
//!   from the last one is [`Event::NetworkChanged`], or
//!   [`Event::NetworkSettled`] if nothing that matters changed. After a
//!   resume, a snapshot is asked for too: the network may have changed
//!   while the machine slept.

use std::collections::BTreeSet;
use std::time::Duration;

/// The pace and thresholds of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The watchdog's interval.
    pub tick: Duration,
    /// How much later than `tick` a tick may come before it is a stall.
    pub stall_after: Duration,
    /// The least δ growth that is a sleep.
    pub slept_min: Duration,
    /// The quiet after the last hint before the snapshot.
    pub settle: Duration,
    /// The longest a burst of hints may put the snapshot off.
    pub settle_max: Duration,
}

impl Default for Config {
    /// A tick a second (no faster: the monitor costs nothing measurable),
    /// a stall past 2 s late, a sleep of 1 s, a 250 ms debounce bounded at
    /// 2 s (Tailscale's netmon settles similarly).
    fn default() -> Config {
        Config {
            tick: Duration::from_secs(1),
            stall_after: Duration::from_secs(2),
            slept_min: Duration::from_secs(1),
            settle: Duration::from_millis(250),
            settle_max: Duration::from_secs(2),
        }
    }
}

/// One reading of the two clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clocks {
    pub monotonic: Duration,
    pub boottime: Duration,
}

impl Clocks {
    /// δ: the time spent suspended since boot (plus a fixed offset).
    fn delta(self) -> Duration {
        self.boottime.saturating_sub(self.monotonic)
    }
}

/// The network as far as connections care: links up, addresses that are
/// not link-local, default routes; one line each (`addr eth0
/// 192.0.2.7/24`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot(pub BTreeSet<String>);

/// What the sources saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The watchdog ticked.
    Tick(Clocks),
    /// The realtime timerfd was cancelled: the clock changed, or resumed.
    ClockChanged(Clocks),
    /// A netlink message (or an overrun) arrived.
    NetworkHint(Clocks),
    /// A snapshot that was asked for.
    Snapshot(Clocks, Snapshot),
}

/// What the monitor says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The machine slept this long.
    Resumed { slept: Duration },
    /// The wall clock was set (by hand, NTP): wall-clock deadlines moved.
    ClockStepped,
    /// This process did not run for about this long.
    Stalled { stalled: Duration },
    /// The network is changing: hold judgements until it settles.
    NetworkSettling,
    /// It settled, and this changed.
    NetworkChanged {
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// It settled, and nothing that matters changed.
    NetworkSettled,
}

impl Event {
    /// The IP addresses a [`Event::NetworkChanged`] says left the machine:
    /// connections bound to one of them are dead.
    pub fn addresses_gone(&self) -> Vec<std::net::IpAddr> {
        let Event::NetworkChanged { removed, .. } = self else {
            return Vec::new();
        };
        removed
            .iter()
            .filter_map(|line| {
                let mut words = line.split(' ');
                (words.next() == Some("addr")).then_some(())?;
                let ip = words.nth(1)?.split('/').next()?;
                ip.parse().ok()
            })
            .collect()
    }
}

/// The decision core.
#[derive(Debug)]
pub struct Monitor {
    config: Config,
    delta: Duration,
    last_tick: Duration,
    snapshot: Snapshot,
    /// When the current burst of hints began, and its last hint.
    burst: Option<(Duration, Duration)>,
    /// A snapshot is wanted now (after a resume).
    wanted: bool,
    /// A snapshot was asked for at this instant and has not come.
    asked: Option<Duration>,
}

impl Monitor {
    /// Starts from a reading of the clocks and a first snapshot.
    pub fn new(config: Config, now: Clocks, snapshot: Snapshot) -> Monitor {
        Monitor {
            config,
            delta: now.delta(),
            last_tick: now.monotonic,
            snapshot,
            burst: None,
            wanted: false,
            asked: None,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The network is settling: a burst of hints has not been judged yet.
    pub fn settling(&self) -> bool {
        self.burst.is_some()
    }

    /// The last snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Takes one input; returns what it means.
    pub fn handle(&mut self, input: Input) -> Vec<Event> {
        let mut out = Vec::new();
        match input {
            Input::Tick(now) => {
                let resumed = self.resumed(now, &mut out);
                let gap = now.monotonic.saturating_sub(self.last_tick);
                self.last_tick = now.monotonic;
                if !resumed && gap > self.config.tick + self.config.stall_after {
                    out.push(Event::Stalled {
                        stalled: gap - self.config.tick,
                    });
                }
            }
            Input::ClockChanged(now) => {
                if !self.resumed(now, &mut out) {
                    out.push(Event::ClockStepped);
                }
            }
            Input::NetworkHint(now) => {
                self.resumed(now, &mut out);
                match &mut self.burst {
                    Some((_, last)) => *last = now.monotonic,
                    None => {
                        self.burst = Some((now.monotonic, now.monotonic));
                        out.push(Event::NetworkSettling);
                    }
                }
            }
            Input::Snapshot(now, snapshot) => {
                self.resumed(now, &mut out);
                let asked = self.asked.take();
                let (added, removed) = diff(&self.snapshot, &snapshot);
                self.snapshot = snapshot;
                // Hints after the request may not be in this snapshot:
                // the burst goes on, judged by another one.
                let more = match (self.burst, asked) {
                    (Some((_, last)), Some(asked)) => last > asked,
                    _ => false,
                };
                if !more {
                    self.burst = None;
                }
                if !added.is_empty() || !removed.is_empty() {
                    out.push(Event::NetworkChanged { added, removed });
                } else if !more {
                    out.push(Event::NetworkSettled);
                }
            }
        }
        out
    }

    /// When [`poll`](Monitor::poll) has something to do, on MONOTONIC.
    pub fn deadline(&self) -> Option<Duration> {
        if self.asked.is_some() {
            return None;
        }
        if self.wanted {
            return Some(Duration::ZERO);
        }
        self.burst
            .map(|(first, last)| (last + self.config.settle).min(first + self.config.settle_max))
    }

    /// Whether to take a snapshot now (then feed it as
    /// [`Input::Snapshot`]).
    pub fn poll(&mut self, now: Clocks) -> bool {
        match self.deadline() {
            Some(at) if at <= now.monotonic => {
                self.wanted = false;
                self.asked = Some(now.monotonic);
                true
            }
            _ => false,
        }
    }

    /// A snapshot that was asked for could not be taken: ask again at the
    /// next deadline.
    pub fn snapshot_failed(&mut self) {
        self.asked = None;
    }

    /// Says `Resumed` if δ grew past the threshold; true if it did.
    fn resumed(&mut self, now: Clocks, out: &mut Vec<Event>) -> bool {
        let delta = now.delta();
        let grew = delta.saturating_sub(self.delta);
        self.delta = self.delta.max(delta);
        if grew > self.config.slept_min {
            // The watchdog's gap is the awake part only; start it over.
            self.last_tick = now.monotonic;
            self.wanted = true;
            out.push(Event::Resumed { slept: grew });
            return true;
        }
        false
    }
}

/// What `new` has that `old` has not, and the other way round.
fn diff(old: &Snapshot, new: &Snapshot) -> (Vec<String>, Vec<String>) {
    (
        new.0.difference(&old.0).cloned().collect(),
        old.0.difference(&new.0).cloned().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(monotonic: f64, boottime: f64) -> Clocks {
        Clocks {
            monotonic: Duration::from_secs_f64(monotonic),
            boottime: Duration::from_secs_f64(boottime),
        }
    }

    fn snap(lines: &[&str]) -> Snapshot {
        Snapshot(lines.iter().map(|l| l.to_string()).collect())
    }

    fn monitor() -> Monitor {
        // Booted an hour ago, slept 10 minutes of it: δ = 600 s.
        Monitor::new(
            Config::default(),
            at(3000.0, 3600.0),
            snap(&["addr eth0 192.0.2.7/24"]),
        )
    }

    #[test]
    fn regular_ticks_say_nothing() {
        let mut m = monitor();
        for i in 1..=10 {
            let t = 3000.0 + f64::from(i);
            assert!(
                m.handle(Input::Tick(at(t, t + 600.0))).is_empty(),
                "tick {i}"
            );
        }
    }

    #[test]
    fn a_sleep_is_resumed_once_whoever_sees_it_first() {
        let mut m = monitor();
        // Slept an hour: MONOTONIC moved 1 s, BOOTTIME an hour and 1 s.
        let woke = at(3001.0, 3601.0 + 3600.0);
        assert_eq!(
            m.handle(Input::ClockChanged(woke)),
            vec![Event::Resumed {
                slept: Duration::from_secs(3600)
            }]
        );
        // The watchdog's tick after it sees no second sleep, and no stall.
        assert!(m.handle(Input::Tick(at(3002.0, 7202.0))).is_empty());
        // A snapshot is wanted at once.
        assert_eq!(m.deadline(), Some(Duration::ZERO));
        assert!(m.poll(at(3002.0, 7202.0)));
        assert_eq!(
            m.handle(Input::Snapshot(
                at(3002.0, 7202.0),
                snap(&["addr eth0 192.0.2.7/24"])
            )),
            vec![Event::NetworkSettled]
        );
    }

    #[test]
    fn a_clock_step_is_not_a_sleep() {
        let mut m = monitor();
        // δ unchanged: someone set the wall clock.
        assert_eq!(
            m.handle(Input::ClockChanged(at(3001.0, 3601.0))),
            vec![Event::ClockStepped]
        );
    }

    #[test]
    fn a_late_tick_without_sleep_is_a_stall() {
        let mut m = monitor();
        // SIGSTOP for 60 s: MONOTONIC and BOOTTIME both moved on.
        assert_eq!(
            m.handle(Input::Tick(at(3061.0, 3661.0))),
            vec![Event::Stalled {
                stalled: Duration::from_secs(60)
            }]
        );
        // A tick just a little late is not.
        assert!(m.handle(Input::Tick(at(3063.5, 3663.5))).is_empty());
    }

    #[test]
    fn a_fixed_offset_between_the_clocks_is_not_a_sleep() {
        // A time namespace: BOOTTIME a day ahead from the start.
        let mut m = Monitor::new(Config::default(), at(10.0, 86410.0), Snapshot::default());
        assert!(m.handle(Input::Tick(at(11.0, 86411.0))).is_empty());
        assert_eq!(
            m.handle(Input::ClockChanged(at(11.5, 86411.5))),
            vec![Event::ClockStepped]
        );
    }

    #[test]
    fn a_burst_of_hints_is_judged_once_it_settles() {
        let mut m = monitor();
        let mut t = 3000.0;
        assert_eq!(
            m.handle(Input::NetworkHint(at(t, t + 600.0))),
            vec![Event::NetworkSettling]
        );
        assert!(m.settling());
        // More hints, 100 ms apart: each puts the snapshot off.
        for _ in 0..5 {
            t += 0.1;
            assert!(m.handle(Input::NetworkHint(at(t, t + 600.0))).is_empty());
            assert!(!m.poll(at(t, t + 600.0)));
        }
        assert_eq!(m.deadline(), Some(Duration::from_secs_f64(t + 0.25)));
        t += 0.25;
        assert!(m.poll(at(t, t + 600.0)));
        assert!(!m.poll(at(t, t + 600.0)), "asked once");
        let events = m.handle(Input::Snapshot(
            at(t, t + 600.0),
            snap(&[
                "addr eth0 192.0.2.7/24",
                "addr wg0 10.8.0.2/32",
                "route default dev wg0",
            ]),
        ));
        assert_eq!(
            events,
            vec![Event::NetworkChanged {
                added: vec![
                    "addr wg0 10.8.0.2/32".into(),
                    "route default dev wg0".into()
                ],
                removed: vec![],
            }]
        );
        assert!(!m.settling());
    }

    #[test]
    fn an_endless_burst_is_judged_at_settle_max() {
        let mut m = monitor();
        let mut t = 3000.0;
        m.handle(Input::NetworkHint(at(t, t + 600.0)));
        let mut asked_at = None;
        for _ in 0..100 {
            t += 0.05;
            m.handle(Input::NetworkHint(at(t, t + 600.0)));
            if m.poll(at(t, t + 600.0)) {
                asked_at = Some(t);
                break;
            }
        }
        let asked_at = asked_at.expect("a snapshot within settle_max");
        assert!((asked_at - 3002.0).abs() < 0.06, "{asked_at}");
    }

    #[test]
    fn hints_during_a_snapshot_keep_the_burst_going() {
        let mut m = monitor();
        m.handle(Input::NetworkHint(at(3000.0, 3600.0)));
        assert!(m.poll(at(3000.3, 3600.3)));
        m.handle(Input::NetworkHint(at(3000.35, 3600.35)));
        // Nothing changed yet in this snapshot, but the burst is not over.
        assert!(
            m.handle(Input::Snapshot(
                at(3000.4, 3600.4),
                snap(&["addr eth0 192.0.2.7/24"])
            ))
            .is_empty()
        );
        assert!(m.settling());
        assert!(m.poll(at(3000.6, 3600.6)));
        assert_eq!(
            m.handle(Input::Snapshot(at(3000.7, 3600.7), Snapshot::default())),
            vec![Event::NetworkChanged {
                added: vec![],
                removed: vec!["addr eth0 192.0.2.7/24".into()]
            }]
        );
        assert!(!m.settling());
    }

    #[test]
    fn the_addresses_gone_are_read_from_a_change() {
        let event = Event::NetworkChanged {
            added: vec!["addr eth0 192.0.2.8/24".into()],
            removed: vec![
                "addr eth0 192.0.2.7/24".into(),
                "addr wg0 fd00::2/64".into(),
                "route default via 192.0.2.1 dev eth0".into(),
            ],
        };
        assert_eq!(
            event.addresses_gone(),
            vec![
                "192.0.2.7".parse::<std::net::IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
        assert!(Event::NetworkSettled.addresses_gone().is_empty());
    }

    #[test]
    fn a_failed_snapshot_is_asked_for_again() {
        let mut m = monitor();
        m.handle(Input::NetworkHint(at(3000.0, 3600.0)));
        assert!(m.poll(at(3000.3, 3600.3)));
        m.snapshot_failed();
        assert!(m.poll(at(3000.3, 3600.3)));
    }
}
