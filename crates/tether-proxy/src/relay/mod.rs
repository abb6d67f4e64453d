//! The byte proxy of `tether proxy` (TCP and Unix sockets): clients keep
//! their connection while the service behind it restarts.
//!
//! - [`gate`]: the decisions, without I/O: who is connected now, who waits
//!   for the upstream (and how long), who is refused and why, the circuit
//!   breaker;
//! - [`pipe`]: moving the bytes, spliced where it can be, with half-close,
//!   resets and an idle timeout carried through;
//! - [`upstream`]: the upstream's readiness, probed at a pace set by demand;
//! - [`serve`]: the driver that owns the listener, the connections and the
//!   clock, feeding the gate and carrying out what it says.

pub mod gate;
pub mod pipe;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tether_probe::Target;
use tether_probe::attempt::Attempt;
use tether_probe::dial::{Stream, dial};
use tether_resilience::{Failure, Jitter};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use gate::{Action, ClientId, Gate, GateConfig, Input, Refusal, Upstream};
use pipe::{Conn, Ending, Moved, Pipes};
use tether_probe::listen::Listener;

/// How a proxy behaves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub gate: GateConfig,
    /// A connection on which nothing moves this long is closed.
    pub idle_timeout: Duration,
    /// Each connect to the upstream must succeed within this.
    pub connect_timeout: Duration,
    /// Pipes for splicing, at most (two descriptors each; 0: always copy).
    pub pipes: usize,
    /// Shared by every proxy of a stack: connections in all, and the limit.
    pub in_all: Option<(Arc<AtomicUsize>, usize)>,
}

/// What the proxy tells the world, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum RelayEvent {
    /// The upstream became ready, or not (with the words why).
    Upstream(Result<(), String>),
    /// A client is relayed; it waited `held` first.
    Relayed { client: ClientId, held: Duration },
    /// A client was not served.
    Refused {
        client: ClientId,
        cause: &'static str,
        reason: String,
    },
    /// A relayed connection ended.
    Closed {
        client: ClientId,
        moved: Moved,
        took: Duration,
    },
}

/// The proxy's counters and state, published after every change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RelayStats {
    pub counters: gate::Counters,
    pub relaying: usize,
    pub pending: usize,
    pub ready: bool,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Events that could not be handed on (nobody read them fast enough).
    pub events_dropped: u64,
}

impl RelayEvent {
    /// The event as one JSON object (for NDJSON and the status server).
    pub fn to_json(&self) -> Value {
        match self {
            RelayEvent::Upstream(Ok(())) => json!({"event": "upstream", "ready": true}),
            RelayEvent::Upstream(Err(why)) => {
                json!({"event": "upstream", "ready": false, "reason": why})
            }
            RelayEvent::Relayed { client, held } => {
                json!({"event": "relayed", "client": client, "held_ms": held.as_millis() as u64})
            }
            RelayEvent::Refused {
                client,
                cause,
                reason,
            } => json!({"event": "refused", "client": client, "cause": cause, "reason": reason}),
            RelayEvent::Closed {
                client,
                moved,
                took,
            } => json!({
                "event": "closed", "client": client, "bytes_up": moved.up, "bytes_down": moved.down,
                "ending": ending_name(moved.ending), "took_ms": took.as_millis() as u64,
            }),
        }
    }
}

/// `done`, `client.reset`, `upstream.reset`, `idle.timeout`,
/// `address.gone`.
pub fn ending_name(ending: Ending) -> &'static str {
    match ending {
        Ending::Done => "done",
        Ending::ClientReset => "client.reset",
        Ending::UpstreamReset => "upstream.reset",
        Ending::Idle => "idle.timeout",
        Ending::AddressGone => "address.gone",
    }
}

/// What a driver needs from around it.
#[derive(Debug)]
pub struct Wiring {
    /// The upstream's readiness: `Err` with the words why while it is not.
    pub ready: watch::Receiver<Result<(), String>>,
    /// Notified when the upstream should be looked at now.
    pub check: Arc<Notify>,
    /// Whether clients wait for the upstream (the watcher probes fast then).
    pub demand: watch::Sender<bool>,
    pub events: mpsc::Sender<RelayEvent>,
    pub stats: watch::Sender<RelayStats>,
    /// The addresses that left the machine at its last network change
    /// (tether-netmon): relayed connections on one of them are reset.
    pub gone: Option<watch::Receiver<Vec<std::net::IpAddr>>>,
    /// The network monitor's pulse: a stall is told to the gate before the
    /// next input, so clients waiting across it are not timed out for it.
    pub pulse: Option<tether_netmon::Pulse>,
}

/// Serves clients on `listener`, relaying them to `upstream` (the address
/// now: it may change, for an upstream found in a registry), until `stop`;
/// then it stops accepting and closes what it holds.
///
/// # Cancel safety
///
/// Not cancel-safe, but safe to drop: every connection it holds closes.
pub async fn serve(
    listener: Listener,
    upstream: watch::Receiver<Target>,
    config: RelayConfig,
    wiring: Wiring,
    stop: CancellationToken,
) {
    let Wiring {
        mut ready,
        check,
        demand,
        events,
        stats,
        gone,
        pulse,
    } = wiring;
    let pulse_for_relays = pulse.clone();
    let mut still = crate::stillness::Stillness::new(pulse);
    let pipes = Arc::new(Pipes::new(config.pipes));
    let mut gate = Gate::new(config.gate.clone(), Jitter::new(), Instant::now());
    // Waiting clients, each watched for leaving (a reset) while it waits.
    let mut waiting: HashMap<ClientId, Waiting> = HashMap::new();
    let mut leaving: JoinSet<ClientId> = JoinSet::new();
    let mut connecting: JoinSet<(ClientId, Result<Stream, Failure>)> = JoinSet::new();
    let mut relays: JoinSet<(ClientId, Moved, Duration)> = JoinSet::new();
    let mut next: ClientId = 0;
    let mut dropped_events = 0u64;
    let (mut bytes_up, mut bytes_down) = (0u64, 0u64);
    let emit = |event: RelayEvent, dropped: &mut u64| {
        if events.try_send(event).is_err() {
            *dropped += 1;
            if tether_resilience::milestone(*dropped) {
                tracing::warn!(
                    "proxy: {dropped} events dropped so far (nobody took them fast enough)"
                );
            }
        }
    };
    // Whether the last upstream event said ready (none said yet: not).
    let mut said_ready = false;
    let mut accept_paused: Option<Instant> = None;
    let mut accept_failures = 0u64;
    // Whatever readiness already says counts from the start.
    let first = ready.borrow_and_update().clone();
    feed(&mut gate, &mut still, Input::Upstream(first));
    loop {
        // Said whenever the gate's view changes, whoever changed it: a
        // client's failed connect is often the first to find an upstream
        // gone.
        let ready_now = match gate.upstream() {
            Upstream::Ready => Some(Ok(())),
            Upstream::Down { cause, .. } if said_ready => Some(Err(cause.clone())),
            Upstream::Down { .. } => None,
        };
        if let Some(now) = ready_now.filter(|now| now.is_ok() != said_ready) {
            said_ready = now.is_ok();
            emit(RelayEvent::Upstream(now), &mut dropped_events);
        }
        let deadline = gate.deadline();
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept(), if accept_paused.is_none() => {
                let conn = match accepted {
                    Ok(stream) => Conn::from(stream),
                    Err(e) => {
                        // Out of descriptors or memory: the client stays in
                        // the kernel's backlog; trying again at once would
                        // spin.
                        accept_failures += 1;
                        if tether_resilience::milestone(accept_failures) {
                            tracing::warn!(
                                "proxy: cannot accept a client: {e}; accepting again in {}ms ({accept_failures} times so far)",
                                ACCEPT_PAUSE.as_millis()
                            );
                        }
                        accept_paused = Some(Instant::now() + ACCEPT_PAUSE);
                        continue;
                    }
                };
                next += 1;
                let id = next;
                if let Some((in_all, limit)) = &config.in_all
                    && in_all.fetch_add(1, Ordering::Relaxed) >= *limit {
                        in_all.fetch_sub(1, Ordering::Relaxed);
                        let reason = format!("refused: {limit} connections at once is the stack's limit");
                        emit(RelayEvent::Refused { client: id, cause: "limit.all", reason }, &mut dropped_events);
                        continue;
                    }
                keepalive(&conn);
                let conn = Arc::new(conn);
                let watched = conn.clone();
                let watch = leaving.spawn(async move {
                    watched.gone().await;
                    id
                });
                waiting.insert(id, Waiting { conn, came: Instant::now(), watch });
                feed(&mut gate, &mut still, Input::Arrived(id));
            }
            changed = ready.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = ready.borrow_and_update().clone();
                feed(&mut gate, &mut still, Input::Upstream(now));
            }
            Some(joined) = connecting.join_next(), if !connecting.is_empty() => {
                let Ok((id, result)) = joined else { continue };
                match result {
                    // Not waiting any more: it left while it was connected
                    // for (the gate heard it then); the upstream side
                    // closes here.
                    Ok(stream) => if let Some(Waiting { conn: client, came, watch }) = waiting.remove(&id) {
                            watch.abort();
                            let upstream = Conn::from(stream);
                            keepalive(&upstream);
                            feed(&mut gate, &mut still, Input::Connected(id));
                            let held = came.elapsed();
                            emit(RelayEvent::Relayed { client: id, held }, &mut dropped_events);
                            let pipes = pipes.clone();
                            let idle = config.idle_timeout;
                            let locals: Vec<std::net::IpAddr> =
                                [client.local_ip(), upstream.local_ip()].into_iter().flatten().collect();
                            let vanished = address_gone(gone.clone(), locals);
                            let pulse = pulse_for_relays.clone();
                            relays.spawn(async move {
                                let began = Instant::now();
                                let moved = pipe::relay_until(&client, &upstream, &pipes, idle, vanished, pulse).await;
                                (id, moved, began.elapsed())
                            });
                    },
                    Err(failure) => feed(&mut gate, &mut still, Input::ConnectFailed(id, failure)),
                }
            }
            Some(joined) = leaving.join_next(), if !leaving.is_empty() => {
                // A client that reset while it waited: its place is free.
                let Ok(id) = joined else { continue };
                let Some(gone) = waiting.remove(&id) else { continue };
                release(&config.in_all);
                feed(&mut gate, &mut still, Input::Closed(id));
                let moved = Moved { up: 0, down: 0, ending: Ending::ClientReset };
                emit(RelayEvent::Closed { client: id, moved, took: gone.came.elapsed() }, &mut dropped_events);
            }
            Some(joined) = relays.join_next(), if !relays.is_empty() => {
                let Ok((id, moved, took)) = joined else { continue };
                bytes_up += moved.up;
                bytes_down += moved.down;
                release(&config.in_all);
                feed(&mut gate, &mut still, Input::Closed(id));
                emit(RelayEvent::Closed { client: id, moved, took }, &mut dropped_events);
            }
            () = sleep_until(accept_paused) => accept_paused = None,
            () = sleep_until(deadline) => {
                // The watcher updates the words of a down upstream without
                // waking anyone: take them now, for whoever gives up.
                let current = ready.borrow().clone();
                if current.is_err() {
                    feed(&mut gate, &mut still, Input::Upstream(current));
                }
                feed(&mut gate, &mut still, Input::Tick);
            }
        }
        for action in gate.take_actions() {
            match action {
                Action::Connect(id) => {
                    let target = upstream.borrow().clone();
                    let timeout = config.connect_timeout;
                    connecting
                        .spawn(async move { (id, dial(&target, Attempt::new(timeout)).await) });
                }
                Action::Refuse(id, why) => {
                    // Dropped: closed. The client learns at once.
                    if let Some(refused) = waiting.remove(&id) {
                        refused.watch.abort();
                        release(&config.in_all);
                    }
                    log_refusal(&why);
                    let reason = why.to_string();
                    emit(
                        RelayEvent::Refused {
                            client: id,
                            cause: why.cause(),
                            reason,
                        },
                        &mut dropped_events,
                    );
                }
                Action::CheckUpstream => check.notify_one(),
            }
        }
        demand.send_if_modified(|d| {
            let now = gate.in_demand(Instant::now());
            std::mem::replace(d, now) != now
        });
        stats.send_replace(RelayStats {
            counters: gate.counters().clone(),
            relaying: gate.relaying(),
            pending: gate.pending(),
            ready: *gate.upstream() == Upstream::Ready,
            bytes_up,
            bytes_down,
            events_dropped: dropped_events,
        });
    }
    // Stop accepting; what is relayed or waiting closes with the driver.
    drop(listener);
    relays.shutdown().await;
    connecting.shutdown().await;
    leaving.shutdown().await;
}

/// Resolves when one of `locals` is among the addresses `gone` reports;
/// never without a monitor.
async fn address_gone(
    gone: Option<watch::Receiver<Vec<std::net::IpAddr>>>,
    locals: Vec<std::net::IpAddr>,
) {
    let Some(mut gone) = gone.filter(|_| !locals.is_empty()) else {
        return std::future::pending().await;
    };
    while gone.changed().await.is_ok() {
        if gone
            .borrow_and_update()
            .iter()
            .any(|ip| locals.contains(ip))
        {
            return;
        }
    }
    std::future::pending().await
}

/// A client waiting for the upstream.
struct Waiting {
    conn: Arc<Conn>,
    came: Instant,
    /// The task that sees it leave.
    watch: tokio::task::AbortHandle,
}

/// One connection fewer for the stack-wide limit.
fn release(in_all: &Option<(Arc<AtomicUsize>, usize)>) {
    if let Some((in_all, _)) = in_all {
        in_all.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long accepting pauses after it failed (no descriptors left).
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// TCP keepalive and a user timeout on every TCP side, so a peer that
/// vanished (a cable, a sleep, a crash of its host) is found within about
/// 30 s instead of never.
fn keepalive(conn: &Conn) {
    if let Conn::Tcp(stream) = conn {
        let sock = socket2::SockRef::from(stream);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(15))
            .with_interval(Duration::from_secs(5))
            .with_retries(3);
        let _ = sock.set_tcp_keepalive(&keepalive);
        let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        let _ = stream.set_nodelay(true);
    }
}

fn log_refusal(why: &Refusal) {
    static REFUSED: AtomicUsize = AtomicUsize::new(0);
    let n = REFUSED.fetch_add(1, Ordering::Relaxed) as u64 + 1;
    if tether_resilience::milestone(n) {
        tracing::warn!("proxy: a client {why} ({n} not served so far)");
    }
}

/// One input to the gate, after a stall since the last one, if any.
fn feed(gate: &mut Gate, still: &mut crate::stillness::Stillness, input: Input) {
    if let Some(more) = still.more() {
        tracing::debug!("proxy: stood still for {more:?}: waiting clients are owed as much");
        gate.handle(Instant::now(), Input::StoodStill(more));
    }
    gate.handle(Instant::now(), input);
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
