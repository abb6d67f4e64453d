//! One debounced stream of what breaks long-lived connections: the machine
//! slept ([`Event::Resumed`]), the wall clock was set
//! ([`Event::ClockStepped`]), this process did not run
//! ([`Event::Stalled`]), the network changed ([`Event::NetworkChanged`],
//! after [`Event::NetworkSettling`]).
//!
//! The decisions are in [`core`] (clock readings and hints in, events out,
//! tested on explicit instants); [`Netmon`] drives it from the real sources
//! ([`sources`]): `CLOCK_BOOTTIME` − `CLOCK_MONOTONIC`, a `CLOCK_REALTIME`
//! timerfd with `TFD_TIMER_CANCEL_ON_SET`, a watchdog tick once a second,
//! and the route netlink socket. It is event-driven: besides the tick,
//! nothing polls.
//!
//! Nothing here acts on the events; tether's commands do (revalidate
//! upstreams, rescan registries, reset backoffs).

pub mod core;
pub mod sources;

use std::io;

use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;
use tokio_util::task::AbortOnDropHandle;

pub use core::{Clocks, Config, Event, Input, Monitor, Snapshot};

/// A running monitor; it stops when dropped.
#[derive(Debug)]
pub struct Netmon {
    events: broadcast::Sender<Event>,
    pulse: Pulse,
    _task: AbortOnDropHandle<()>,
}

/// How recently the monitor's watchdog ticked, for a command to read
/// before it acts on input or on a deadline. After a stall, the input and
/// the late tick are ready together, and the input may well be handled
/// first: the pulse says "stalled" before the monitor's `Stalled` event is
/// out, and [`Pulse::stood_still`] already counts the stall.
#[derive(Debug, Clone)]
pub struct Pulse {
    beat: std::sync::Arc<std::sync::Mutex<Beat>>,
    tick: std::time::Duration,
    late_after: std::time::Duration,
}

/// One lock for all three, so a reader never sees a stall counted twice
/// (in the total and as still in progress) or not at all.
#[derive(Debug, Default)]
struct Beat {
    /// `CLOCK_MONOTONIC` at the last tick.
    last: std::time::Duration,
    /// Ticks so far.
    count: u64,
    /// The stalls' total (their ticks' lateness).
    stood_still: std::time::Duration,
}

impl Pulse {
    fn new(config: &Config) -> Pulse {
        let pulse = Pulse {
            beat: Default::default(),
            tick: config.tick,
            late_after: config.tick + config.stall_after,
        };
        pulse.lock().last = sources::clocks().monotonic;
        pulse
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Beat> {
        self.beat
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long the tick at `now` is overdue past a stall, if it is.
    fn overdue(&self, beat: &Beat, now: std::time::Duration) -> Option<std::time::Duration> {
        let gap = now.saturating_sub(beat.last);
        (gap > self.late_after).then(|| gap - self.tick)
    }

    fn beat_now(&self) {
        let now = sources::clocks().monotonic;
        let mut beat = self.lock();
        if let Some(late) = self.overdue(&beat, now) {
            beat.stood_still += late;
        }
        beat.last = now;
        beat.count += 1;
    }

    /// Whether the tick is overdue past the stall threshold: this process
    /// did not run for a while (SIGSTOP, a frozen cgroup, a paused VM).
    pub fn stalled(&self) -> bool {
        self.overdue(&self.lock(), sources::clocks().monotonic)
            .is_some()
    }

    /// The number of ticks so far: one stall is seen at one value.
    pub fn beats(&self) -> u64 {
        self.lock().count
    }

    /// How long this process stood still so far while `CLOCK_MONOTONIC`
    /// (tokio's clock) went on: the total of every stall, the one in
    /// progress included (a tick overdue now). It only grows. Sleep is not
    /// in it: the monotonic clock stops during suspend, and so do the
    /// deadlines that run on it. A deadline that was pending across a stall
    /// is owed the growth of this value.
    pub fn stood_still(&self) -> std::time::Duration {
        let beat = self.lock();
        beat.stood_still
            + self
                .overdue(&beat, sources::clocks().monotonic)
                .unwrap_or_default()
    }
}

impl Netmon {
    /// Starts watching, on the current runtime.
    ///
    /// # Errors
    ///
    /// The timerfd cannot be made. A network that cannot be watched
    /// (no netlink) is logged, and only the clocks are watched.
    pub fn start(config: Config) -> io::Result<Netmon> {
        let clock = register(sources::ClockWatch::new()?)?;
        let hints = match sources::Hints::new().and_then(register) {
            Ok(hints) => Some(hints),
            Err(e) => {
                tracing::warn!("network changes are not watched: {e}");
                None
            }
        };
        let first = sources::snapshot().unwrap_or_default();
        let pulse = Pulse::new(&config);
        let monitor = Monitor::new(config, sources::clocks(), first);
        let (events, _) = broadcast::channel(64);
        let task = tokio::spawn(run(monitor, clock, hints, events.clone(), pulse.clone()));
        Ok(Netmon {
            events,
            pulse,
            _task: AbortOnDropHandle::new(task),
        })
    }

    /// The watchdog's pulse ([`Pulse`]).
    pub fn pulse(&self) -> Pulse {
        self.pulse.clone()
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// Registers a source with the reactor.
// `AsyncFd::new` is deprecated because a generic `T` may not keep its raw fd
// valid; both sources own their descriptor (an `OwnedFd`, a netlink
// `Socket`) for their whole life, so the call is sound without unsafe code.
#[allow(deprecated)]
fn register<T: std::os::fd::AsRawFd>(source: T) -> io::Result<AsyncFd<T>> {
    AsyncFd::new(source)
}

async fn run(
    mut monitor: Monitor,
    clock: AsyncFd<sources::ClockWatch>,
    hints: Option<AsyncFd<sources::Hints>>,
    events: broadcast::Sender<Event>,
    pulse: Pulse,
) {
    let tick = monitor.config().tick;
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let publish = |out: Vec<Event>| {
        for event in out {
            tracing::info!("netmon: {event:?}");
            let _ = events.send(event);
        }
    };
    loop {
        let deadline = monitor.deadline().map(|at| {
            let now = sources::clocks().monotonic;
            tokio::time::Instant::now() + at.saturating_sub(now)
        });
        tokio::select! {
            _ = ticks.tick() => {
                publish(monitor.handle(Input::Tick(sources::clocks())));
                pulse.beat_now();
            }
            ready = clock.readable() => {
                let Ok(mut guard) = ready else { return };
                let cancelled = guard.get_inner().cancelled();
                guard.clear_ready();
                match cancelled {
                    Ok(true) => publish(monitor.handle(Input::ClockChanged(sources::clocks()))),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("netmon: the clock watch failed: {e}");
                        tokio::time::sleep(tick).await;
                    }
                }
            }
            ready = async {
                match &hints {
                    Some(h) => h.readable().await,
                    None => std::future::pending().await,
                }
            } => {
                let Ok(mut guard) = ready else { return };
                let drained = guard.get_inner().drain();
                guard.clear_ready();
                match drained {
                    Ok(0) => {}
                    Ok(_) => publish(monitor.handle(Input::NetworkHint(sources::clocks()))),
                    Err(e) => {
                        // Paced: a socket that keeps failing cannot spin.
                        tracing::warn!("netmon: reading network changes failed: {e}");
                        tokio::time::sleep(tick).await;
                    }
                }
            }
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = sources::clocks();
                if monitor.poll(now) {
                    match sources::snapshot() {
                        Ok(s) => publish(monitor.handle(Input::Snapshot(sources::clocks(), s))),
                        Err(e) => {
                            tracing::warn!("netmon: a network snapshot failed: {e}");
                            monitor.snapshot_failed();
                            tokio::time::sleep(tick).await;
                        }
                    }
                }
            }
        }
    }
}
