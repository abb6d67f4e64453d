//! The server's own limits: how many connections and event streams it holds,
//! which idle connection makes room for a newcomer, and the counters that
//! `/metrics` shows.
//!
//! Every connection has a slot from [`Limits::arrive`] until its task ends.
//! A slot is idle while no request is in flight on it: before its first
//! request (a client that sent nothing, or only part of a request head, is
//! idle), and between requests. A request is in flight from the moment its
//! head is parsed until hyper drops its response body: an event stream stays
//! in flight for as long as it streams, and since bodies go to hyper in
//! 64 KiB chunks, a large response to a client that reads slowly stays in
//! flight until hyper has taken its last chunk (what hyper still buffers
//! after that is lost if the connection is then closed to make room).
//!
//! At the limit, a newcomer takes the slot of the connection idle the
//! longest, which is told to close; when none is idle, the newcomer is
//! refused. A closing connection keeps its slot until its descriptor is
//! closed, and the accept loop stops accepting while [`EVICTION_HEADROOM`]
//! of them are still closing, so the server never holds more than
//! `max_connections + EVICTION_HEADROOM` sockets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many connections beyond the limit may still be closing (told to make
/// room, not yet gone) before the accept loop waits for them.
pub(crate) const EVICTION_HEADROOM: usize = 8;

/// The connection and event stream limits of one server, with its counters.
#[derive(Debug)]
pub(crate) struct Limits {
    max_connections: usize,
    max_event_streams: usize,
    inner: Mutex<Registry>,
}

/// What the counters say at one moment, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Connections open now, those still closing included.
    pub(crate) connections: usize,
    /// Newcomers answered 503 because every slot was busy.
    pub(crate) connections_refused: u64,
    /// Idle connections closed to make room for a newcomer.
    pub(crate) connections_evicted: u64,
    /// Event streams open now.
    pub(crate) event_streams: usize,
    /// `/api/events` requests answered 503 because the streams were at
    /// their limit.
    pub(crate) event_streams_refused: u64,
}

/// What happened to a connection that arrived.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// It has a slot; `evicted` says whether an idle connection was told to
    /// close to make room, and `pressure` counts the arrivals that found the
    /// server full (for the milestone warnings).
    Admitted {
        slot: Slot,
        evicted: bool,
        pressure: u64,
    },
    /// Every slot is busy: answer 503 and close it.
    Refused { pressure: u64 },
}

/// A connection's slot: freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<Limits>,
    id: u64,
    evict: CancellationToken,
}

/// A request in flight on one connection: the connection is busy until it
/// is dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    limits: Arc<Limits>,
    id: u64,
}

/// One of the event streams the server allows: freed when dropped.
#[derive(Debug)]
pub(crate) struct StreamPermit {
    limits: Arc<Limits>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    slots: HashMap<u64, SlotState>,
    event_streams: usize,
    /// Arrivals that found every slot taken, evicting or refused.
    pressure: u64,
    refused: u64,
    evicted: u64,
    event_streams_refused: u64,
}

#[derive(Debug)]
struct SlotState {
    in_flight: u32,
    /// Since when no request is in flight (the arrival, or the end of the
    /// last response).
    idle_since: Instant,
    /// Told to close to make room; no longer a candidate.
    evicting: bool,
    evict: CancellationToken,
}

impl Limits {
    /// Limits of `max_connections` (at least 1) and `max_event_streams`.
    pub(crate) fn new(max_connections: usize, max_event_streams: usize) -> Arc<Self> {
        Arc::new(Self {
            max_connections: max_connections.max(1),
            max_event_streams,
            inner: Mutex::new(Registry::default()),
        })
    }

    pub(crate) fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub(crate) fn max_event_streams(&self) -> usize {
        self.max_event_streams
    }

    /// Whether the accept loop may take another connection: not while
    /// [`EVICTION_HEADROOM`] connections beyond the limit are still closing.
    pub(crate) fn can_accept(&self) -> bool {
        self.lock().slots.len() < self.max_connections + EVICTION_HEADROOM
    }

    /// A connection arrived: give it a slot, making room by telling the
    /// connection idle the longest to close if the server is full, or refuse
    /// it when none is idle.
    pub(crate) fn arrive(self: &Arc<Self>, now: Instant) -> Arrival {
        let mut registry = self.lock();
        let mut evicted = false;
        let mut pressure = 0;
        // Slots already told to close do not count: their sockets go away
        // at once, and `can_accept` bounds how many may be on their way.
        let taken = registry.slots.values().filter(|s| !s.evicting).count();
        if taken >= self.max_connections {
            registry.pressure += 1;
            pressure = registry.pressure;
            let victim = registry
                .slots
                .iter_mut()
                .filter(|(_, s)| s.in_flight == 0 && !s.evicting)
                .min_by_key(|(id, s)| (s.idle_since, **id));
            match victim {
                Some((_, state)) => {
                    state.evicting = true;
                    state.evict.cancel();
                    registry.evicted += 1;
                    evicted = true;
                }
                None => {
                    registry.refused += 1;
                    return Arrival::Refused { pressure };
                }
            }
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let evict = CancellationToken::new();
        registry.slots.insert(
            id,
            SlotState {
                in_flight: 0,
                idle_since: now,
                evicting: false,
                evict: evict.clone(),
            },
        );
        Arrival::Admitted {
            slot: Slot {
                limits: Arc::clone(self),
                id,
                evict,
            },
            evicted,
            pressure,
        }
    }

    /// Takes one of the event streams, or `None` (and counts the refusal,
    /// returning how many there were so far) when all are open.
    pub(crate) fn open_event_stream(self: &Arc<Self>) -> Result<StreamPermit, u64> {
        let mut registry = self.lock();
        if registry.event_streams >= self.max_event_streams {
            registry.event_streams_refused += 1;
            return Err(registry.event_streams_refused);
        }
        registry.event_streams += 1;
        Ok(StreamPermit {
            limits: Arc::clone(self),
        })
    }

    pub(crate) fn stats(&self) -> Stats {
        let registry = self.lock();
        Stats {
            connections: registry.slots.len(),
            connections_refused: registry.refused,
            connections_evicted: registry.evicted,
            event_streams: registry.event_streams,
            event_streams_refused: registry.event_streams_refused,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is consistent after every statement: a panic while
        // it is held leaves nothing half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Slot {
    /// Cancelled when the connection is to close to make room.
    pub(crate) fn evict_token(&self) -> &CancellationToken {
        &self.evict
    }

    /// A handle that marks requests in flight on this slot, for the service.
    pub(crate) fn requests(&self) -> Requests {
        Requests {
            limits: Arc::clone(&self.limits),
            id: self.id,
        }
    }

    /// Whether no request is in flight now.
    pub(crate) fn is_idle(&self) -> bool {
        self.limits
            .lock()
            .slots
            .get(&self.id)
            .is_some_and(|s| s.in_flight == 0)
    }
}

/// Marks requests in flight on one connection; what the service holds.
#[derive(Debug, Clone)]
pub(crate) struct Requests {
    limits: Arc<Limits>,
    id: u64,
}

impl Requests {
    /// Marks a request in flight until the returned guard is dropped.
    pub(crate) fn begin(&self) -> InFlight {
        if let Some(state) = self.limits.lock().slots.get_mut(&self.id) {
            state.in_flight += 1;
        }
        InFlight {
            limits: Arc::clone(&self.limits),
            id: self.id,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.lock().slots.remove(&self.id);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = Instant::now();
        if let Some(state) = self.limits.lock().slots.get_mut(&self.id) {
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.idle_since = now;
            }
        }
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut registry = self.limits.lock();
        registry.event_streams = registry.event_streams.saturating_sub(1);
    }
}

/// Whether the `n`th occurrence of a repeated warning is logged (see
/// [`tether_resilience::milestone`]).
pub(crate) fn is_milestone(n: u64) -> bool {
    tether_resilience::milestone(n)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn admitted(arrival: Arrival) -> (Slot, bool) {
        match arrival {
            Arrival::Admitted { slot, evicted, .. } => (slot, evicted),
            Arrival::Refused { .. } => panic!("refused"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_server_evicts_the_connection_idle_the_longest() {
        let limits = Limits::new(3, 1);
        let (old, _) = admitted(limits.arrive(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        let (middle, _) = admitted(limits.arrive(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        let (young, _) = admitted(limits.arrive(Instant::now()));
        // The oldest one served a request just now: it is the youngest idle.
        drop(old.requests().begin());
        tokio::time::advance(Duration::from_secs(1)).await;

        let (_new, evicted) = admitted(limits.arrive(Instant::now()));

        assert!(evicted);
        assert!(middle.evict_token().is_cancelled());
        assert!(!old.evict_token().is_cancelled());
        assert!(!young.evict_token().is_cancelled());
        let stats = limits.stats();
        assert_eq!((stats.connections, stats.connections_evicted), (4, 1));
        drop(middle);
        assert_eq!(limits.stats().connections, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_server_with_every_request_in_flight_refuses() {
        let limits = Limits::new(2, 1);
        let (a, _) = admitted(limits.arrive(Instant::now()));
        let (b, _) = admitted(limits.arrive(Instant::now()));
        let _a = a.requests().begin();
        let b_request = b.requests().begin();

        assert!(matches!(
            limits.arrive(Instant::now()),
            Arrival::Refused { pressure: 1 }
        ));
        assert!(!a.is_idle());

        drop(b_request);
        assert!(b.is_idle());
        let (_c, evicted) = admitted(limits.arrive(Instant::now()));
        assert!(evicted);
        assert!(b.evict_token().is_cancelled());
        let stats = limits.stats();
        assert_eq!(
            (stats.connections_refused, stats.connections_evicted),
            (1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn closing_connections_beyond_the_limit_stop_the_accept_loop() {
        let limits = Limits::new(1, 1);
        let mut slots = vec![admitted(limits.arrive(Instant::now())).0];
        for _ in 0..EVICTION_HEADROOM {
            assert!(limits.can_accept());
            slots.push(admitted(limits.arrive(Instant::now())).0);
        }
        assert!(!limits.can_accept(), "{:?}", limits.stats());
        slots.remove(0);
        assert!(limits.can_accept());
    }

    #[test]
    fn event_streams_stop_at_their_limit_and_come_back() {
        let limits = Limits::new(8, 2);
        let first = limits.open_event_stream().unwrap();
        let _second = limits.open_event_stream().unwrap();
        assert_eq!(limits.open_event_stream().unwrap_err(), 1);
        assert_eq!(limits.open_event_stream().unwrap_err(), 2);
        drop(first);
        let _third = limits.open_event_stream().unwrap();
        let stats = limits.stats();
        assert_eq!((stats.event_streams, stats.event_streams_refused), (2, 2));
    }

    #[test]
    fn milestones_are_1_5_20_50_then_every_100th() {
        let logged: Vec<u64> = (0..=450).filter(|&n| is_milestone(n)).collect();
        assert_eq!(logged, [1, 5, 20, 50, 100, 200, 300, 400]);
    }
}
