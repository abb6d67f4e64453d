//! The proxies of a stack (`[proxies.NAME]`), run beside its supervisor by
//! `tether up`.
//!
//! Every listener is bound before any service starts, so a bad address
//! starts nothing, and a client that comes early is held until its service
//! is ready. A `service:NAME` upstream takes its readiness from the
//! supervisor's events, never from polling; the others are probed as
//! `tether proxy` probes them. The connections of all the proxies together
//! are bounded by `max_proxy_connections`.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tether_config::{ProxyReadiness, ProxySpec};
use tether_probe::Prober;
use tether_probe::listen::Listener;
use tether_proxy::relay::gate::GateConfig;
use tether_proxy::relay::{RelayConfig, RelayEvent, RelayStats, Wiring, serve, upstream};
use tether_resilience::BreakerConfig;
use tether_status::ProxyStatus;
use tether_supervisor::{EventKind, Handle, State};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Descriptors kept for everything else (the runtime, logs, probes, a
/// stack's services and status server).
const RESERVED_FDS: u64 = 256;

/// Raises this process's soft descriptor limit to its hard one (a proxy
/// holds two per connection, and many systems start at 1024), and returns
/// how many connections it can afford with `pipes` pipes (two descriptors
/// each) besides.
pub(crate) fn affordable_connections(pipes: usize) -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let soft = limit.current.unwrap_or(u64::MAX);
    let budget = soft.saturating_sub(RESERVED_FDS + 2 * pipes as u64) / 2;
    usize::try_from(budget).unwrap_or(usize::MAX).max(1)
}

/// A proxy whose listener is bound, not yet serving.
pub(crate) struct Bound {
    spec: ProxySpec,
    listener: Listener,
}

/// Binds every proxy's listener, in file order.
///
/// # Errors
///
/// The first that cannot be bound, in words naming the proxy.
pub(crate) async fn bind(specs: Vec<ProxySpec>) -> Result<Vec<Bound>, String> {
    let mut bound = Vec::with_capacity(specs.len());
    for spec in specs {
        match spec.listen.bind().await {
            Ok(listener) => bound.push(Bound { spec, listener }),
            Err(e) => return Err(format!("proxies.{}: {e}", spec.name)),
        }
    }
    Ok(bound)
}

/// One running proxy, as the status server and the printer see it.
#[derive(Clone)]
pub(crate) struct View {
    pub(crate) name: String,
    pub(crate) listen: String,
    pub(crate) upstream: String,
    pub(crate) stats: watch::Receiver<RelayStats>,
}

/// The stack's running proxies.
pub(crate) struct Running {
    pub(crate) views: Vec<View>,
    /// Every proxy's events, with its name.
    pub(crate) events: broadcast::Sender<(String, RelayEvent)>,
    /// Notified, each has its upstream looked at now.
    pub(crate) checks: Vec<Arc<Notify>>,
    /// The addresses that left the machine: relayed connections on them
    /// are reset.
    pub(crate) gone: watch::Sender<Vec<std::net::IpAddr>>,
}

/// Starts serving every bound proxy on `tasks`, until `stop`. Call it
/// before the first await after the supervisor's launch: the services'
/// first events must not be missed.
pub(crate) fn start(
    bound: Vec<Bound>,
    max_in_all: usize,
    handle: &Handle,
    tasks: &TaskTracker,
    stop: CancellationToken,
    pulse: Option<tether_netmon::Pulse>,
) -> Running {
    let in_all = Arc::new(AtomicUsize::new(0));
    let (events, _) = broadcast::channel(1024);
    let (gone, _) = watch::channel(Vec::new());
    if bound.is_empty() {
        return Running {
            views: Vec::new(),
            events,
            checks: Vec::new(),
            gone,
        };
    }
    let affordable = affordable_connections(64 * bound.len());
    let max_in_all = if max_in_all > affordable {
        tracing::warn!(
            "max_proxy_connections {max_in_all} is lowered to {affordable}: the descriptor limit allows no more"
        );
        affordable
    } else {
        max_in_all
    };
    let mut views = Vec::with_capacity(bound.len());
    let mut checks = Vec::with_capacity(bound.len());
    for Bound { spec, listener } in bound {
        let (ready_tx, ready_rx) = watch::channel(Err("not checked yet".to_string()));
        let (demand_tx, demand_rx) = watch::channel(false);
        let (events_tx, mut events_rx) = mpsc::channel(1024);
        let (stats_tx, stats_rx) = watch::channel(RelayStats::default());
        let check = Arc::new(Notify::new());
        checks.push(check.clone());
        let upstream_words = match &spec.readiness {
            ProxyReadiness::Probe(ready) if ready.to_string() == spec.address.to_string() => {
                spec.address.to_string()
            }
            ProxyReadiness::Probe(ready) => format!("{} (ready when {ready} is)", spec.address),
            ProxyReadiness::Service(name) => format!("{} (service:{name})", spec.address),
            ProxyReadiness::Registry(_) => spec.address.to_string(),
        };
        let (address_tx, address) = watch::channel(spec.address.clone());
        match &spec.readiness {
            ProxyReadiness::Probe(ready) => {
                let steady = ready.to_string() != spec.address.to_string();
                tasks.spawn(upstream::watch(
                    Prober::new((**ready).clone()),
                    steady,
                    demand_rx,
                    check.clone(),
                    ready_tx,
                    stop.clone(),
                ));
            }
            ProxyReadiness::Registry(registry) => {
                drop(demand_rx);
                tasks.spawn(crate::registry::follow(
                    registry.clone(),
                    address_tx,
                    ready_tx,
                    check.clone(),
                    stop.clone(),
                ));
            }
            ProxyReadiness::Service(name) => {
                let states = service_readiness(handle, name, tasks, stop.clone());
                drop(demand_rx);
                tasks.spawn(upstream::follow(
                    states,
                    Prober::new(spec.address.clone()),
                    check.clone(),
                    ready_tx,
                    stop.clone(),
                ));
            }
        }
        let config = RelayConfig {
            gate: GateConfig {
                max_connections: spec.max_connections,
                max_pending: spec.max_pending,
                pending_timeout: spec.pending_timeout,
                fail_fast_after: spec.fail_fast_after,
                breaker: BreakerConfig::default_local(),
            },
            idle_timeout: spec.idle_timeout,
            connect_timeout: spec.address.attempt_timeout().current(),
            pipes: 64,
            in_all: Some((in_all.clone(), max_in_all)),
        };
        let wiring = Wiring {
            gone: Some(gone.subscribe()),
            pulse: pulse.clone(),
            ready: ready_rx,
            check,
            demand: demand_tx,
            events: events_tx,
            stats: stats_tx,
        };
        views.push(View {
            name: spec.name.clone(),
            listen: listener.local(),
            upstream: upstream_words,
            stats: stats_rx,
        });
        tasks.spawn(serve(listener, address, config, wiring, stop.clone()));
        // Named, and handed to whoever listens (nobody: dropped).
        let named = events.clone();
        let name = spec.name.clone();
        tasks.spawn(async move {
            while let Some(event) = events_rx.recv().await {
                let _ = named.send((name.clone(), event));
            }
        });
    }
    Running {
        views,
        events,
        checks,
        gone,
    }
}

/// The supervisor's state of service `name`, as readiness: `Ok` while it is
/// ready, else the words of its state.
pub(crate) fn service_readiness(
    handle: &Handle,
    name: &str,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> watch::Receiver<Result<(), String>> {
    // Subscribed before the views are read: no change falls between.
    let mut events = handle.events();
    let name = name.to_string();
    let of = {
        let name = name.clone();
        move |handle: &Handle| {
            handle
                .views()
                .into_iter()
                .find(|v| v.name == name)
                .map_or(State::Pending, |v| v.state)
        }
    };
    let words = move |state: State| match state {
        State::Ready => Ok(()),
        state => Err(format!("service {state}")),
    };
    let (tx, rx) = watch::channel(words(of(handle)));
    let handle = handle.clone();
    tasks.spawn(async move {
        loop {
            let state = tokio::select! {
                () = stop.cancelled() => return,
                event = events.recv() => match event {
                    Ok(event) => match &event.kind {
                        EventKind::State { service, to, .. } if *service == name => *to,
                        _ => continue,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => of(&handle),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            tx.send_if_modified(|now| {
                let new = words(state);
                std::mem::replace(now, new.clone()) != new
            });
        }
    });
    rx
}

/// The status of each proxy now.
pub(crate) fn statuses(views: &[View]) -> Vec<ProxyStatus> {
    views
        .iter()
        .map(|view| {
            let stats = view.stats.borrow();
            let counters = &stats.counters;
            ProxyStatus {
                name: view.name.clone(),
                listen: view.listen.clone(),
                upstream: view.upstream.clone(),
                ready: stats.ready,
                relaying: stats.relaying,
                pending: stats.pending,
                accepted: counters.accepted,
                relayed: counters.relayed,
                held: counters.held,
                connect_failures: counters.connect_failures,
                refused: counters
                    .refused
                    .iter()
                    .map(|(cause, n)| (cause.to_string(), *n))
                    .collect(),
                bytes_up: stats.bytes_up,
                bytes_down: stats.bytes_down,
            }
        })
        .collect()
}

/// A proxy's event as a JSON line of `tether up --json`: the relay's own
/// fields with `"proxy"`, and its `event` prefixed (`proxy.relayed`).
pub(crate) fn event_json(name: &str, event: &RelayEvent) -> serde_json::Value {
    let mut value = event.to_json();
    if let Some(object) = value.as_object_mut() {
        let kind = object
            .get("event")
            .and_then(|e| e.as_str())
            .unwrap_or("event")
            .to_string();
        object.insert("event".into(), format!("proxy.{kind}").into());
        object.insert("proxy".into(), name.into());
    }
    value
}
