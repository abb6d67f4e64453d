//! `tether proxy LISTEN UPSTREAM`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tether_probe::listen::Listen;
use tether_probe::{Prober, Target};
use tether_proxy::relay::gate::GateConfig;
use tether_proxy::relay::{RelayConfig, RelayEvent, RelayStats, Wiring, serve, upstream};
use tether_resilience::BreakerConfig;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exit;
use crate::out::Out;
use crate::wait::positive_duration;

/// An always-up TCP or Unix proxy: clients keep their connection while the
/// service behind it restarts.
///
/// A client that arrives while the upstream is down or restarting is
/// accepted and held until the upstream is ready (probed fast while clients
/// wait, slowly when none does), then relayed byte for byte (spliced, never
/// copied where the kernel allows); one that waits longer than
/// --pending-timeout is closed, with the cause logged and counted. Limits
/// on connections and waiting clients refuse the excess at once. A circuit
/// breaker keeps a flapping upstream from being hammered.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tether proxy tcp://127.0.0.1:8080 tcp://127.0.0.1:8081\n  tether proxy --ready http://127.0.0.1:8081/health tcp://127.0.0.1:8080 tcp://127.0.0.1:8081\n  tether proxy unix:///run/user/1000/app.sock unix:///run/user/1000/app-real.sock"
)]
pub(crate) struct ProxyArgs {
    /// Where clients connect: tcp://HOST:PORT (loopback unless --public) or
    /// unix:///PATH (in a directory of yours).
    #[arg(value_name = "LISTEN")]
    listen: String,

    /// Where they are relayed to: tcp://HOST:PORT or unix:///PATH.
    #[arg(value_name = "UPSTREAM")]
    upstream: String,

    /// The upstream's readiness check: any `tether wait` target, probed
    /// every 2 s while ready [default: a connect to UPSTREAM, tried only
    /// while clients wait or after a client's connect failed].
    #[arg(long, value_name = "TARGET")]
    ready: Option<String>,

    /// How long a client may wait for the upstream.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = positive_duration)]
    pending_timeout: Duration,

    /// Once the upstream has been down this long, refuse new clients at
    /// once until it is back [default: always hold them].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    fail_fast_after: Option<Duration>,

    /// Clients at once (relayed, connecting and waiting).
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,

    /// Clients waiting for the upstream at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_pending: usize,

    /// Close a connection on which nothing moved this long (time the proxy
    /// stood still is not counted).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = positive_duration)]
    idle_timeout: Duration,

    /// Pipes for splice(2), two descriptors each; 0 copies every byte.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pipes: usize,

    /// Allow a TCP listen address beyond loopback (0.0.0.0, a LAN address).
    #[arg(long)]
    public: bool,

    /// Print every event as NDJSON on stdout.
    #[arg(long)]
    json: bool,

    /// Print only what needs a human (refusals at milestones, the upstream
    /// going down).
    #[arg(short, long)]
    quiet: bool,
}

pub(crate) fn run(args: ProxyArgs) -> ExitCode {
    let listen = match Listen::parse(&args.listen, args.public) {
        Ok(listen) => listen,
        Err(e) => {
            return ExitCode::from(crate::out::error_event(
                args.json,
                e.to_string(),
                exit::USAGE,
            ));
        }
    };
    let upstream = match Target::parse(&args.upstream) {
        Ok(t) if matches!(t.kind(), "tcp" | "unix" | "registry") => t,
        Ok(t) => {
            let message = format!(
                "upstream {t}: a proxy relays to tcp://HOST:PORT, unix:///PATH or registry:NAME"
            );
            return ExitCode::from(crate::out::error_event(args.json, message, exit::USAGE));
        }
        Err(e) => {
            return ExitCode::from(crate::out::error_event(
                args.json,
                e.to_string(),
                exit::USAGE,
            ));
        }
    };
    if upstream.kind() == "registry" && args.ready.is_some() {
        let message = format!(
            "--ready with upstream {upstream}: an instance is registered once it is ready, so the registry is the check"
        );
        return ExitCode::from(crate::out::error_event(args.json, message, exit::USAGE));
    }
    let ready = match args.ready.as_deref().map(Target::parse).transpose() {
        Ok(ready) => ready.unwrap_or_else(|| upstream.clone()),
        Err(e) => {
            return ExitCode::from(crate::out::error_event(
                args.json,
                e.to_string(),
                exit::USAGE,
            ));
        }
    };
    if let Err(e) = ready.preflight() {
        return ExitCode::from(crate::out::error_event(
            args.json,
            e.to_string(),
            exit::USAGE,
        ));
    }
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return ExitCode::from(code),
    };
    let (out, finish) = Out::start(None);
    let code = runtime.block_on(proxy(args, listen, upstream, ready, out));
    runtime.shutdown_timeout(Duration::from_secs(2));
    finish.wait(Duration::from_secs(2));
    ExitCode::from(code)
}

async fn proxy(args: ProxyArgs, listen: Listen, upstream: Target, ready: Target, out: Out) -> u8 {
    let listener = match listen.bind().await {
        Ok(listener) => listener,
        Err(e) => return crate::out::error_event(args.json, e.to_string(), exit::INTERNAL),
    };
    let bound = listener.local();
    let affordable = crate::proxies::affordable_connections(args.pipes);
    let max_connections = args.max_connections.clamp(1, affordable);
    if max_connections < args.max_connections {
        tracing::warn!(
            "--max-connections {} is lowered to {max_connections}: the descriptor limit allows no more",
            args.max_connections
        );
    }
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (ready_tx, ready_rx) = watch::channel(Err("not checked yet".to_string()));
    let (demand_tx, demand_rx) = watch::channel(false);
    let (events_tx, mut events_rx) = mpsc::channel(1024);
    let (stats_tx, _stats_rx) = watch::channel(RelayStats::default());
    let check = Arc::new(Notify::new());
    let (address_tx, address) = watch::channel(upstream.clone());
    if let tether_probe::target::Spec::Registry(spec) = upstream.spec() {
        // The address is the newest instance's endpoint, followed.
        drop(demand_rx);
        tasks.spawn(crate::registry::follow(
            spec.clone(),
            address_tx,
            ready_tx,
            check.clone(),
            stop.clone(),
        ));
    } else {
        drop(address_tx);
        // A check of its own is probed while ready; a plain connect is not.
        let steady = ready.to_string() != upstream.to_string();
        tasks.spawn(upstream::watch(
            Prober::new(ready.clone()),
            steady,
            demand_rx,
            check.clone(),
            ready_tx,
            stop.clone(),
        ));
    }
    let config = RelayConfig {
        gate: GateConfig {
            max_connections,
            max_pending: args.max_pending,
            pending_timeout: args.pending_timeout,
            fail_fast_after: args.fail_fast_after,
            breaker: BreakerConfig::default_local(),
        },
        idle_timeout: args.idle_timeout,
        connect_timeout: upstream.attempt_timeout().current(),
        pipes: args.pipes,
        in_all: None,
    };
    let check_now = check.clone();
    let (gone_tx, gone) = watch::channel(Vec::new());
    // Resumed, stalled, the network changed: look at the upstream now;
    // connections on an address that left the machine are reset; a stall
    // is not counted against the clients waiting across it.
    let netmon = crate::netmon::start();
    let wiring = Wiring {
        gone: Some(gone),
        pulse: netmon.as_ref().map(tether_netmon::Netmon::pulse),
        ready: ready_rx,
        check,
        demand: demand_tx,
        events: events_tx,
        stats: stats_tx,
    };
    let say = |text: String| {
        if args.json {
            out.line(serde_json::json!({"event": "tether", "message": text}).to_string());
        } else {
            out.line(format!("tether: {text}"));
        }
    };
    if ready.to_string() == upstream.to_string() {
        say(format!("proxy {bound} -> {upstream}"));
    } else {
        say(format!(
            "proxy {bound} -> {upstream} (ready when {ready} is)"
        ));
    }
    if let Some(netmon) = &netmon {
        let check = check_now.clone();
        let out = out.clone();
        let (json, quiet) = (args.json, args.quiet);
        tasks.spawn(crate::netmon::each(
            netmon.subscribe(),
            stop.clone(),
            move |event| {
                // Said, as `tether up` says it.
                let (kind, detail) = crate::netmon::describe(event);
                if json {
                    let line =
                        serde_json::json!({"event": "system", "kind": kind, "detail": detail});
                    out.line(line.to_string());
                } else if !quiet {
                    out.line(format!("tether: {detail}"));
                }
                let gone = event.addresses_gone();
                if !gone.is_empty() {
                    let _ = gone_tx.send(gone);
                }
                if crate::netmon::revalidates(event) {
                    check.notify_one();
                }
            },
        ));
    }
    tasks.spawn(serve(listener, address, config, wiring, stop.clone()));
    tasks.spawn(on_signals(stop.clone()));
    tasks.close();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            event = events_rx.recv() => match event {
                Some(event) => {
                    if args.json {
                        out.line(event.to_json().to_string());
                    } else if let Some(words) = words(&event, args.quiet) {
                        say(words);
                    }
                }
                None => break,
            },
        }
    }
    say("stopping".to_string());
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("the proxy's tasks did not end within 5s");
    }
    exit::READY
}

/// The line a human sees for `event`, if any: relayed and closed
/// connections are for `--json`; the upstream's changes and refusals are
/// said (refusals by the gate's own milestones in its log).
pub(crate) fn words(event: &RelayEvent, quiet: bool) -> Option<String> {
    match event {
        RelayEvent::Upstream(Ok(())) if !quiet => Some("the upstream is ready".to_string()),
        RelayEvent::Upstream(Ok(())) => None,
        RelayEvent::Upstream(Err(why)) => Some(format!("the upstream is not ready: {why}")),
        RelayEvent::Relayed { held, .. } if !quiet && *held > Duration::from_millis(10) => {
            Some(format!(
                "a client waited {} for the upstream, and is relayed",
                tether_resilience::failure::human_duration(*held)
            ))
        }
        RelayEvent::Refused { reason, .. } if !quiet => Some(format!("a client was {reason}")),
        _ => None,
    }
}

/// SIGINT or SIGTERM: stop accepting, close what is held, exit.
async fn on_signals(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        () = stop.cancelled() => {}
        _ = int.recv() => stop.cancel(),
        _ = term.recv() => stop.cancel(),
    }
}
