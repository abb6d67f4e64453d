//! `tether up`: run a stack until it is brought down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tether_status::{Event as StatusEvent, ServiceStatus, Snapshot};
use tether_supervisor::control::ControlServer;
use tether_supervisor::{
    CgroupMode, Event, EventKind, Handle, LaunchOptions, RunDir, ServiceView, StackSockets, State,
    claim, launch,
};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exit;
use crate::out::{Out, Sink};
use crate::stack::{FileArgs, rundir_path};

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
    stack: FileArgs,

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
            return ExitCode::from(crate::out::error_event(
                args.json,
                e.to_string(),
                exit::USAGE,
            ));
        }
    };
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return ExitCode::from(code),
    };
    let style = Style::new(&loaded.stack, args.json);
    let notice = (!args.quiet).then(|| {
        let style = style.clone();
        Box::new(move |words: &str| style.voice_line(words)) as crate::out::Notice
    });
    let (out, finish) = Out::start(notice);
    let printer = Printer::new(&loaded.stack, style, args.quiet, out);
    let code = runtime.block_on(up(args, loaded, printer));
    runtime.shutdown_timeout(Duration::from_secs(2));
    // What is still queued gets a moment; a reader that never reads cannot
    // keep tether from exiting.
    finish.wait(Duration::from_secs(2));
    ExitCode::from(code)
}

/// Whether tether's services get cgroups: `TETHER_CGROUPS=off` walks the
/// process tree instead, even where tether may make cgroups.
fn cgroup_mode() -> CgroupMode {
    match std::env::var("TETHER_CGROUPS").as_deref() {
        Ok("off" | "0" | "no") => CgroupMode::Off,
        _ => CgroupMode::Auto,
    }
}

async fn up(args: UpArgs, loaded: tether_config::Loaded, printer: Printer) -> u8 {
    let stack = loaded.stack;
    let name = stack.name.clone();
    let rundir = match RunDir::create(&rundir_path(&name)) {
        Ok(dir) => dir,
        Err(e) => return crate::out::error_event(args.json, e.to_string(), exit::INTERNAL),
    };
    // One supervisor per stack, and nothing left over from one that was
    // killed: both before anything starts.
    let claim = match claim(&rundir, &name, cgroup_mode()).await {
        Ok(claim) => claim,
        Err(e) => {
            return crate::out::error_event(
                args.json,
                format!("stack '{name}': {e}"),
                exit::INTERNAL,
            );
        }
    };
    if !claim.ended.is_empty() {
        let pids: Vec<String> = claim.ended.iter().map(|m| m.pid.to_string()).collect();
        printer.say(&format!(
            "ended {} {} an earlier tether up of this stack left running (pids {})",
            pids.len(),
            if pids.len() == 1 {
                "process"
            } else {
                "processes"
            },
            pids.join(", ")
        ));
    }
    if let Some(why) = &claim.no_cgroup {
        tracing::debug!(
            "no cgroups for this stack ({why}): its processes are found by walking the process tree"
        );
    }
    // Every proxy's address, bound before anything starts: one that cannot
    // be used starts nothing.
    let bound = match crate::proxies::bind(loaded.proxies.clone()).await {
        Ok(bound) => bound,
        Err(e) => {
            return crate::out::error_event(
                args.json,
                format!("stack '{name}': {e}"),
                exit::INTERNAL,
            );
        }
    };
    // The registry, checked before anything starts (etcd may come later).
    let registry = match crate::registrations::open(loaded.registry.clone()) {
        Ok(registry) => registry,
        Err(e) => {
            return crate::out::error_event(
                args.json,
                format!("stack '{name}': {e}"),
                exit::INTERNAL,
            );
        }
    };
    // Every listening socket of the stack, bound before anything starts: an
    // address in use starts nothing.
    let sockets = match StackSockets::bind(&stack) {
        Ok(sockets) => sockets,
        Err(e) => {
            return crate::out::error_event(
                args.json,
                format!("stack '{name}': {e}"),
                exit::INTERNAL,
            );
        }
    };
    for service in &stack.services {
        for (i, socket) in sockets.of(&service.name).iter().enumerate() {
            printer.say(&format!(
                "{}: holding socket {} as fd {} ({})",
                service.name,
                socket.held.local(),
                3 + i,
                socket.name
            ));
        }
    }
    let control = match ControlServer::bind(&rundir.control_socket()).await {
        Ok(control) => control,
        Err(e) => {
            return crate::out::error_event(
                args.json,
                format!("stack '{name}': {e}"),
                exit::INTERNAL,
            );
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
    // Before the services start: a stall during their start is not counted
    // against its deadline.
    let netmon = crate::netmon::start();
    let options = LaunchOptions {
        rundir: rundir.clone(),
        base_dir,
        keep_lines: 1000,
        cgroup: claim.cgroup(),
        sockets,
        stood_still: netmon.as_ref().map(|n| {
            let pulse = n.pulse();
            tether_supervisor::StoodStill::new(move || pulse.stood_still())
        }),
    };
    let (handle, supervisor) = launch(stack, options, kill.clone());
    // Subscribe before the first await: the services start as soon as this
    // task yields, and their first events must not be missed.
    let follow = (handle.output().subscribe(), handle.events());

    // Everything besides the supervisor, tracked, and ended after it.
    let tasks = TaskTracker::new();
    let done = CancellationToken::new();
    let proxies = crate::proxies::start(
        bound,
        loaded.max_proxy_connections,
        &handle,
        &tasks,
        done.clone(),
        netmon.as_ref().map(tether_netmon::Netmon::pulse),
    );
    let proxy_events = proxies.events.subscribe();
    let registering = registry.as_ref().map(|r| {
        format!(
            "registering {} in {} while ready",
            loaded
                .registry
                .as_ref()
                .map(|s| s
                    .endpoints
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            r.describe()
        )
    });
    // Resumes, stalls and network changes: said as `system` events (to the
    // terminal, --json, the status server's stream and the hooks); the
    // services' probes run now (one that timed out across the change is not
    // counted, and failures wait while the network settles); the proxies'
    // upstreams are looked at now, and their connections on an address that
    // left the machine are reset.
    let system_counts: SystemCounts = Arc::default();
    crate::registrations::start(registry, &handle, &tasks, done.clone(), netmon.as_ref());
    if let Some(netmon) = &netmon {
        let sender = handle.event_sender();
        let counts = system_counts.clone();
        let checks = proxies.checks.clone();
        let gone = proxies.gone.clone();
        let probes = handle.clone();
        tasks.spawn(crate::netmon::each(
            netmon.subscribe(),
            done.clone(),
            move |event| {
                let addresses = event.addresses_gone();
                if !addresses.is_empty() {
                    let _ = gone.send(addresses);
                }
                let (kind, detail) = crate::netmon::describe(event);
                *counts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(kind.to_string())
                    .or_insert(0) += 1;
                let _ = sender.send(Event::now(EventKind::System {
                    kind: kind.to_string(),
                    detail,
                }));
                match event {
                    tether_netmon::Event::NetworkSettling => probes.set_settling(true),
                    tether_netmon::Event::NetworkChanged { .. }
                    | tether_netmon::Event::NetworkSettled => probes.set_settling(false),
                    _ => {}
                }
                if crate::netmon::revalidates(event) {
                    probes.revalidate();
                    for check in &checks {
                        check.notify_one();
                    }
                }
            },
        ));
    }
    let listen = if args.no_status {
        None
    } else {
        args.status.or(loaded.status_listen)
    };
    let status = match listen {
        Some(addr) => match tether_status::bind(addr).await {
            Ok(listener) => {
                // Port 0 picks one: say the one picked.
                let bound = listener.local_addr().unwrap_or(addr);
                let (snapshots, events) = bridge(
                    &handle,
                    &proxies,
                    system_counts.clone(),
                    &tasks,
                    done.clone(),
                );
                let options = tether_status::ServeOptions {
                    max_connections: status_connections(services),
                    ..tether_status::ServeOptions::default()
                };
                tasks.spawn(tether_status::serve_with(
                    listener,
                    snapshots,
                    events,
                    done.clone(),
                    options,
                ));
                Some(bound)
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
    tasks.spawn(control.serve(handle.clone(), done.clone()));
    let status_words = status
        .map(|a| format!("; status on http://{a}/"))
        .unwrap_or_default();
    printer.say(&format!(
        "stack '{name}': {services} services{status_words}; control socket {}",
        rundir.control_socket().display()
    ));
    if let Some(words) = registering {
        printer.say(&words);
    }
    for proxy in &proxies.views {
        printer.say(&format!(
            "proxy {}: {} -> {}",
            proxy.name, proxy.listen, proxy.upstream
        ));
    }
    let voice = printer.voice();
    tasks.spawn(print_proxy_events(
        proxy_events,
        voice.clone(),
        args.json,
        args.quiet,
        done.clone(),
    ));
    tasks.spawn(printer.run(handle.clone(), follow, done.clone()));
    tasks.spawn(on_signals(
        handle.clone(),
        kill.clone(),
        voice,
        done.clone(),
    ));
    tasks.close();

    let _ = supervisor.await;
    kill.cancel();
    done.cancel();
    if tokio::time::timeout(Duration::from_secs(3), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("the status and control servers did not end within 3s");
    }
    drop(claim);
    exit::READY
}

/// How many status connections this process can afford: the default (128)
/// unless its descriptor limit is low, so that whatever local users do to
/// the status server, descriptors stay in reserve for the services (each
/// spawn takes a few: pipes, a pidfd, probes, its stop) and the control
/// socket.
fn status_connections(services: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    affordable_connections(services, limit)
}

fn affordable_connections(services: usize, limit: u64) -> usize {
    let default = tether_status::ServeOptions::default().max_connections;
    let reserve = 128 + 16 * services as u64 + tether_supervisor::control::MAX_CONNECTIONS as u64;
    let room = limit.saturating_sub(reserve) / 2;
    (room.min(default as u64) as usize).max(8)
}

/// First SIGINT or SIGTERM: bring the stack down in order. Second: kill
/// every process of the stack at once.
async fn on_signals(
    handle: Handle,
    kill: CancellationToken,
    voice: Voice,
    done: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::select! {
        () = done.cancelled() => return,
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    voice.say("stopping the stack (Ctrl-C again to kill it)");
    tokio::select! {
        () = done.cancelled() => return,
        _ = int.recv() => {}
        _ = term.recv() => {}
        () = handle.down() => return,
    }
    voice.say("killing every process of the stack");
    kill.cancel();
}

/// Feeds the status server: a snapshot after every event, and every event.
/// Nothing ticks: uptimes are computed when asked, from `up_since`. The
/// proxies' events come one per connection: after them the snapshot is
/// rebuilt at most every 50 ms (and always after the last).
fn bridge(
    handle: &Handle,
    proxies: &crate::proxies::Running,
    system: SystemCounts,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> (watch::Receiver<Snapshot>, broadcast::Sender<StatusEvent>) {
    // Subscribe before the first snapshot: every change after it arrives as
    // an event, so the snapshot is never left behind.
    let mut incoming = handle.events();
    let mut proxy_events = proxies.events.subscribe();
    let views = proxies.views.clone();
    let (snapshots, rx) = watch::channel(snapshot(handle, &views, &system));
    let (events, _) = broadcast::channel(1024);
    let handle = handle.clone();
    let out = events.clone();
    const PROXY_PACE: Duration = Duration::from_millis(50);
    tasks.spawn(async move {
        // After a snapshot, the end of the window within which proxy
        // events do not make another one, and whether one came.
        let mut window: Option<tokio::time::Instant> = None;
        let mut dirty = false;
        loop {
            let now_too = tokio::select! {
                () = stop.cancelled() => return,
                event = incoming.recv() => match event {
                    Ok(event) => {
                        let _ = out.send(status_event(&event));
                        true
                    }
                    // Missed events: the snapshot below is rebuilt from the
                    // views, which are always current.
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                event = proxy_events.recv() => {
                    if let Ok((name, event)) = event {
                        let data = crate::proxies::event_json(&name, &event);
                        let kind = data["event"].as_str().unwrap_or("proxy").to_string();
                        let _ = out.send(StatusEvent {
                            time_unix_ms: tether_supervisor::event::unix_ms(std::time::SystemTime::now()),
                            service: None,
                            kind,
                            data,
                        });
                    }
                    // The first at once; those right after it wait for
                    // the end of the window.
                    match window {
                        Some(_) => {
                            dirty = true;
                            false
                        }
                        None => true,
                    }
                }
                () = sleep_until(window), if dirty => true,
                () = sleep_until(window), if !dirty => {
                    window = None;
                    false
                }
            };
            if now_too {
                dirty = false;
                window = Some(tokio::time::Instant::now() + PROXY_PACE);
                snapshots.send_replace(snapshot(&handle, &views, &system));
            }
        }
    });
    (rx, events)
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The machine's events since the stack started, by kind, for the status
/// server.
type SystemCounts = Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>;

fn snapshot(handle: &Handle, proxies: &[crate::proxies::View], system: &SystemCounts) -> Snapshot {
    Snapshot {
        stack: handle.stack().to_string(),
        started_at_unix_ms: handle.started_ms(),
        services: handle.views().iter().map(status_of).collect(),
        proxies: crate::proxies::statuses(proxies),
        system_events: system
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
    }
}

/// Says the proxies' events: every one as JSON with `--json`; otherwise
/// their upstreams' changes and the clients not served, as `tether proxy`
/// says them.
async fn print_proxy_events(
    mut events: broadcast::Receiver<(String, tether_proxy::relay::RelayEvent)>,
    voice: Voice,
    json: bool,
    quiet: bool,
    done: CancellationToken,
) {
    loop {
        let (name, event) = tokio::select! {
            () = done.cancelled() => return,
            event = events.recv() => match event {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    if !json {
                        voice.say(&format!("{n} proxy events not said: they came faster than tether could print them"));
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if json {
            voice
                .out
                .line(crate::proxies::event_json(&name, &event).to_string());
        } else if let Some(words) = crate::proxy::words(&event, quiet) {
            voice.say(&format!("proxy {name}: {words}"));
        }
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
    status.probe.held = view.probe.held.clone();
    status.registration = view
        .registration
        .as_ref()
        .map(|r| tether_status::RegistrationStatus {
            state: r.state.clone(),
            cause: r.cause.clone(),
            id: r.id.clone(),
            endpoint: r.endpoint.clone(),
            registry: r.registry.clone(),
        });
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

/// How tether's lines look: aligned with the services' prefixes, coloured
/// only on a terminal (and never with `NO_COLOR`), or JSON.
#[derive(Debug, Clone)]
struct Style {
    width: usize,
    color: bool,
    json: bool,
}

impl Style {
    fn new(stack: &tether_supervisor::StackConfig, json: bool) -> Style {
        let width = names(stack)
            .iter()
            .map(String::len)
            .chain(["tether".len()])
            .max()
            .unwrap_or(6);
        let color = !json && Sink::of_stdout() == Sink::Terminal && !no_color();
        Style { width, color, json }
    }

    /// One of tether's own lines.
    fn voice_line(&self, text: &str) -> String {
        if self.json {
            serde_json::json!({"event": "tether", "message": text}).to_string()
        } else if self.color {
            format!("\x1b[1m{:<w$}{RESET} | {text}", "tether", w = self.width)
        } else {
            format!("{:<w$} | {text}", "tether", w = self.width)
        }
    }
}

/// `NO_COLOR` set to anything but the empty string (no-color.org).
pub(crate) fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

fn names(stack: &tether_supervisor::StackConfig) -> Vec<String> {
    stack
        .services
        .iter()
        .map(|s| s.name.clone())
        .chain(stack.hooks.iter().map(|h| format!("hook:{}", h.name)))
        .collect()
}

/// Says tether's own lines.
#[derive(Debug, Clone)]
struct Voice {
    style: Style,
    out: Out,
}

impl Voice {
    fn say(&self, text: &str) {
        self.out.line(self.style.voice_line(text));
    }
}

/// Prints the stack's output and tether's own lines, through [`Out`]: a
/// reader that does not read never holds anything up.
struct Printer {
    style: Style,
    colors: HashMap<String, &'static str>,
    quiet: bool,
    out: Out,
    started: tokio::time::Instant,
}

const PALETTE: [&str; 6] = [
    "\x1b[36m", "\x1b[33m", "\x1b[32m", "\x1b[35m", "\x1b[34m", "\x1b[91m",
];
const RESET: &str = "\x1b[0m";

impl Printer {
    fn new(stack: &tether_supervisor::StackConfig, style: Style, quiet: bool, out: Out) -> Printer {
        let colors = names(stack)
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, PALETTE[i % PALETTE.len()]))
            .collect();
        Printer {
            style,
            colors,
            quiet,
            out,
            started: tokio::time::Instant::now(),
        }
    }

    fn voice(&self) -> Voice {
        Voice {
            style: self.style.clone(),
            out: self.out.clone(),
        }
    }

    /// One of tether's own lines.
    fn say(&self, text: &str) {
        self.voice().say(text);
    }

    fn prefixed(&self, name: &str, color: &str, text: &str) -> String {
        let width = self.style.width;
        if self.style.color {
            format!("{color}{name:<width$}{RESET} | {text}")
        } else {
            format!("{name:<width$} | {text}")
        }
    }

    fn out(&self, line: String) {
        self.out.line(line);
    }

    async fn run(
        self,
        handle: Handle,
        follow: (
            broadcast::Receiver<tether_supervisor::Line>,
            broadcast::Receiver<Event>,
        ),
        done: CancellationToken,
    ) {
        let (mut output, mut events) = follow;
        let mut ready: HashMap<String, bool> = HashMap::new();
        let mut all_ready_said = false;
        let mut restarting = Restarting::default();
        let total = handle.views().len();
        loop {
            tokio::select! {
                // Events before output (a flooding service must not hold
                // back what tether says), and what came before the end is
                // said first: `done` only wins once nothing else waits.
                biased;
                event = events.recv() => match event {
                    Ok(event) => {
                        let said = restarting.said(&event);
                        if self.style.json {
                            self.out(event.to_json());
                        } else if worth_saying(&event) && !said {
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
                line = output.recv() => match line {
                    Ok(line) if !self.quiet => {
                        if self.style.json {
                            self.out(serde_json::json!({"event": "output", "service": line.service, "stream": line.stream, "text": line.text}).to_string());
                        } else {
                            let color = self.colors.get(&line.service).copied().unwrap_or("");
                            self.out(self.prefixed(&line.service, color, &line.text));
                        }
                    }
                    Ok(_) => {}
                    // Services wrote faster than this task could take their
                    // lines (not the reader of stdout: that is `Out`'s to say).
                    Err(broadcast::error::RecvError::Lagged(n)) if !self.quiet => self.say(&format!(
                        "{n} lines of output skipped: the services wrote them faster than tether could print them"
                    )),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = done.cancelled() => return,
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
        // A stop by hand says nothing new; a stop of what an exited main
        // process left running does.
        EventKind::State {
            to: State::Stopping,
            reason: None,
            ..
        } => false,
        // Not registered, and never was since it was last ready: nothing
        // to say (`tether ps` shows it).
        EventKind::Registration {
            state, id: None, ..
        } if state == "unregistered" => false,
        _ => true,
    }
}

/// Remembers which services are about to restart: the `restarting` event
/// comes just before their move to `exited`, and says it better.
#[derive(Debug, Default)]
struct Restarting(std::collections::HashSet<String>);

impl Restarting {
    /// Whether `event` is the `exited` a `restarting` event already said.
    fn said(&mut self, event: &Event) -> bool {
        match &event.kind {
            EventKind::Restarting { service, .. } => {
                self.0.insert(service.clone());
                false
            }
            EventKind::State {
                service,
                to: State::Exited,
                ..
            } => self.0.remove(service),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_followed_by_a_restart_is_said_once() {
        let state = |to| {
            Event::now(EventKind::State {
                service: "w".into(),
                from: State::Ready,
                to,
                pid: None,
                reason: Some("exited with status 1; restarting in 100ms".into()),
            })
        };
        let restart = Event::now(EventKind::Restarting {
            service: "w".into(),
            in_ms: 100,
            restarts: 1,
            reason: "exited with status 1".into(),
        });
        let mut restarting = Restarting::default();
        assert!(!restarting.said(&restart));
        assert!(
            restarting.said(&state(State::Exited)),
            "the restart said it"
        );
        assert!(
            !restarting.said(&state(State::Exited)),
            "a later exit is new"
        );
    }

    #[test]
    fn status_connections_leave_descriptors_for_the_services() {
        assert_eq!(
            affordable_connections(20, 20_000),
            128,
            "plenty: the default"
        );
        assert_eq!(affordable_connections(20, 1024), 128);
        assert_eq!(
            affordable_connections(20, 600),
            60,
            "half of what the reserve leaves"
        );
        assert_eq!(affordable_connections(20, 256), 8, "never none");
    }
}
