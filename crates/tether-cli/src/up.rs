//! `tether up`: run a stack until it is brought down.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tether_status::{Event as StatusEvent, ServiceStatus, Snapshot};
use tether_supervisor::control::ControlServer;
use tether_supervisor::{
    Event, EventKind, Handle, LaunchOptions, RunDir, ServiceView, State, launch,
};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::exit;
use crate::stack::{StackArgs, rundir_path};

/// Start a stack in dependency order, gated on readiness, and supervise it.
///
/// Reads tether.toml (see docs/config.md), starts every service once its
/// dependencies meet their conditions, and keeps them running: restarts with
/// backoff, liveness checks, crash-loop limits. Output is prefixed with the
/// service's name. The status server answers on 127.0.0.1:7465 by default
/// (/health, /api/services, /api/events, /metrics). Ctrl-C or SIGTERM stops
/// the stack in reverse dependency order; a second Ctrl-C kills it at once.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    #[command(flatten)]
    stack: StackArgs,

    /// Serve status on this address instead of the file's [status] listen.
    #[arg(long, value_name = "ADDR", conflicts_with = "no_status")]
    status: Option<SocketAddr>,

    /// Do not serve status.
    #[arg(long)]
    no_status: bool,

    /// Do not print the services' output (tether's own lines still show).
    #[arg(short, long)]
    quiet: bool,

    /// Print events and output as NDJSON on stdout.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: UpArgs) -> ExitCode {
    let loaded = match tether_config::load(&args.stack.file) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("tether: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return ExitCode::from(code),
    };
    let code = runtime.block_on(up(args, loaded));
    runtime.shutdown_timeout(Duration::from_secs(2));
    ExitCode::from(code)
}

async fn up(args: UpArgs, loaded: tether_config::Loaded) -> u8 {
    let stack = loaded.stack;
    let name = stack.name.clone();
    let rundir = match RunDir::create(&rundir_path(&name)) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("tether: {e}");
            return exit::INTERNAL;
        }
    };
    let control = match ControlServer::bind(&rundir.control_socket()).await {
        Ok(control) => control,
        Err(e) => {
            eprintln!("tether: stack '{name}': {e}");
            return exit::INTERNAL;
        }
    };
    let kill = CancellationToken::new();
    // Orphans of our services are re-parented to us and reaped here, until
    // the very end: a killed group's zombies must be reaped for it to empty.
    let reaper_stop = CancellationToken::new();
    let _reaper_stop = reaper_stop.clone().drop_guard();
    let _reaper = match tether_process::Reaper::start(reaper_stop) {
        Ok(reaper) => Some(reaper),
        Err(e) => {
            tracing::warn!("cannot become the subreaper of the stack: {e}");
            None
        }
    };
    let base_dir = loaded
        .file
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let services = stack.services.len();
    let printer = Printer::new(&stack, args.quiet, args.json);
    let options = LaunchOptions {
        rundir: rundir.clone(),
        base_dir,
        keep_lines: 1000,
    };
    let (handle, supervisor) = launch(stack, options, kill.clone());
    // Subscribe before the first await: the services start as soon as this
    // task yields, and their first events must not be missed.
    let follow = (handle.output().subscribe(), handle.events());

    let listen = if args.no_status {
        None
    } else {
        args.status.or(loaded.status_listen)
    };
    let status = match listen {
        Some(addr) => match tether_status::bind(addr).await {
            Ok(listener) => {
                let (snapshots, events) = bridge(&handle, kill.clone());
                tokio::spawn(tether_status::serve(
                    listener,
                    snapshots,
                    events,
                    kill.clone(),
                ));
                Some(addr)
            }
            Err(e) => {
                printer.say(&format!(
                    "status server off: {e} (set [status] listen, or --status ADDR)"
                ));
                None
            }
        },
        None => None,
    };
    tokio::spawn(control.serve(handle.clone(), kill.clone()));
    let status_words = status
        .map(|a| format!("; status on http://{a}/"))
        .unwrap_or_default();
    printer.say(&format!(
        "stack '{name}': {services} services{status_words}; control socket {}",
        rundir.control_socket().display()
    ));
    let voice = printer.voice();
    let printing = tokio::spawn(printer.run(handle.clone(), follow));

    let signals = tokio::spawn(on_signals(handle.clone(), kill.clone(), voice));
    let _ = supervisor.await;
    signals.abort();
    kill.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), printing).await;
    exit::READY
}

/// First SIGINT or SIGTERM: bring the stack down in order. Second: kill
/// every process group at once.
async fn on_signals(handle: Handle, kill: CancellationToken, voice: Voice) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    voice.say("stopping the stack (Ctrl-C again to kill it)");
    let down = tokio::spawn({
        let handle = handle.clone();
        async move { handle.down().await }
    });
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = down => return,
    }
    voice.say("killing every process of the stack");
    kill.cancel();
}

/// Feeds the status server: a snapshot after every event, and every event.
/// Nothing ticks: uptimes are computed when asked, from `up_since`.
fn bridge(
    handle: &Handle,
    stop: CancellationToken,
) -> (watch::Receiver<Snapshot>, broadcast::Sender<StatusEvent>) {
    // Subscribe before the first snapshot: every change after it arrives as
    // an event, so the snapshot is never left behind.
    let mut incoming = handle.events();
    let (snapshots, rx) = watch::channel(snapshot(handle));
    let (events, _) = broadcast::channel(1024);
    let handle = handle.clone();
    let out = events.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                event = incoming.recv() => match event {
                    Ok(event) => {
                        let _ = out.send(status_event(&event));
                    }
                    // Missed events: the snapshot below is rebuilt from the
                    // views, which are always current.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
            snapshots.send_replace(snapshot(&handle));
        }
    });
    (rx, events)
}

fn snapshot(handle: &Handle) -> Snapshot {
    Snapshot {
        stack: handle.stack().to_string(),
        started_at_unix_ms: handle.started_ms(),
        services: handle.views().iter().map(status_of).collect(),
    }
}

fn status_of(view: &ServiceView) -> ServiceStatus {
    let mut status = ServiceStatus::new(view.name.clone(), view.since_ms);
    status.state = match view.state {
        State::Pending => tether_status::State::Pending,
        State::Starting => tether_status::State::Starting,
        State::Ready => tether_status::State::Ready,
        State::Unready => tether_status::State::Unready,
        State::Stopping => tether_status::State::Stopping,
        State::Exited => tether_status::State::Exited,
        State::Failed => tether_status::State::Failed,
    };
    status.pid = view.pid;
    status.up_since_unix_ms = view.up_since_ms;
    status.restarts = view.restarts;
    status.last_exit = view.last_exit.clone();
    status.last_error = view.last_error.clone();
    status.one_shot_done = view.completed;
    status.probe.count = view.probe.count;
    status.probe.sum_seconds = view.probe.sum_seconds;
    if !view.probe.buckets.is_empty() {
        status.probe.buckets = view.probe.buckets.clone();
    }
    status.probe.failures = view.probe.failures.clone();
    status
}

fn status_event(event: &Event) -> StatusEvent {
    StatusEvent {
        time_unix_ms: event.time_ms,
        service: event.service().map(str::to_string),
        kind: event.name().to_string(),
        data: serde_json::to_value(event).unwrap_or_default(),
    }
}

/// How tether's own lines look: aligned with the services' prefixes.
#[derive(Debug, Clone)]
struct Voice {
    width: usize,
    color: bool,
    json: bool,
}

impl Voice {
    fn say(&self, text: &str) {
        let line = if self.json {
            serde_json::json!({"event": "tether", "message": text}).to_string()
        } else if self.color {
            format!("\x1b[1m{:<w$}{RESET} | {text}", "tether", w = self.width)
        } else {
            format!("{:<w$} | {text}", "tether", w = self.width)
        };
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
}

/// Prints the stack's output and tether's own lines.
struct Printer {
    width: usize,
    colors: HashMap<String, &'static str>,
    color: bool,
    quiet: bool,
    json: bool,
    started: tokio::time::Instant,
}

const PALETTE: [&str; 6] = [
    "\x1b[36m", "\x1b[33m", "\x1b[32m", "\x1b[35m", "\x1b[34m", "\x1b[91m",
];
const RESET: &str = "\x1b[0m";

impl Printer {
    fn new(stack: &tether_supervisor::StackConfig, quiet: bool, json: bool) -> Printer {
        let names = stack
            .services
            .iter()
            .map(|s| s.name.clone())
            .chain(stack.hooks.iter().map(|h| format!("hook:{}", h.name)));
        let names: Vec<String> = names.collect();
        let width = names
            .iter()
            .map(String::len)
            .chain(["tether".len()])
            .max()
            .unwrap_or(6);
        let colors = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), PALETTE[i % PALETTE.len()]))
            .collect();
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Printer {
            width,
            colors,
            color,
            quiet,
            json,
            started: tokio::time::Instant::now(),
        }
    }

    fn voice(&self) -> Voice {
        Voice {
            width: self.width,
            color: self.color,
            json: self.json,
        }
    }

    /// One of tether's own lines.
    fn say(&self, text: &str) {
        self.voice().say(text);
    }

    fn prefixed(&self, name: &str, color: &str, text: &str) -> String {
        if self.color {
            format!("{color}{name:<w$}{RESET} | {text}", w = self.width)
        } else {
            format!("{name:<w$} | {text}", w = self.width)
        }
    }

    fn out(&self, line: &str) {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout must not stop the stack.
        let _ = writeln!(stdout, "{line}");
    }

    async fn run(
        self,
        handle: Handle,
        follow: (
            broadcast::Receiver<tether_supervisor::Line>,
            broadcast::Receiver<Event>,
        ),
    ) {
        let (mut output, mut events) = follow;
        let mut ready: HashMap<String, bool> = HashMap::new();
        let mut all_ready_said = false;
        let total = handle.views().len();
        loop {
            tokio::select! {
                line = output.recv() => match line {
                    Ok(line) if !self.quiet => {
                        if self.json {
                            self.out(&serde_json::json!({"event": "output", "service": line.service, "stream": line.stream, "text": line.text}).to_string());
                        } else {
                            let color = self.colors.get(&line.service).copied().unwrap_or("");
                            self.out(&self.prefixed(&line.service, color, &line.text));
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => self.say(&format!("({n} lines of output skipped: the terminal is too slow)")),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                event = events.recv() => match event {
                    Ok(event) => {
                        if self.json {
                            self.out(&event.to_json());
                        } else if worth_saying(&event) {
                            self.say(&event.to_string());
                        }
                        if let EventKind::State { service, to, .. } = &event.kind {
                            let done = *to == State::Exited && handle.views().iter().any(|v| &v.name == service && v.completed);
                            ready.insert(service.clone(), *to == State::Ready || done);
                            if !all_ready_said && ready.len() == total && ready.values().all(|r| *r) {
                                all_ready_said = true;
                                let took = tether_resilience::failure::human_duration(self.started.elapsed());
                                self.say(&format!("all {total} services ready after {took}"));
                            }
                        }
                        if event.name() == "stack" {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

/// Lifecycle lines worth a line on the terminal (not every pending).
fn worth_saying(event: &Event) -> bool {
    match &event.kind {
        EventKind::State {
            to: State::Pending,
            reason: None,
            ..
        } => false,
        EventKind::State {
            to: State::Stopping,
            ..
        } => false,
        // The Restarting event says it better.
        EventKind::State {
            to: State::Exited,
            reason: Some(r),
            ..
        } if r.contains("; restarting in ") => false,
        _ => true,
    }
}
