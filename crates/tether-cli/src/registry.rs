//! `tether register` and `tether ls`: instances announce themselves, and
//! others find them.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tether_probe::Target;
use tether_probe::target::find_program;
use tether_probe::target::registry::{Found, LookupError, LookupFailure};
use tether_probe::wait::{WaitPolicy, wait_targets};
use tether_process::{Exit, Signal};
use tether_registry::{AnyRegistry, Instance, LeaseState, NewRecord, Registry, Watch, WatchEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::exit;
use crate::wait::positive_duration;

/// Run CMD and register it while it runs: others find it with `tether ls`.
///
/// tether stays CMD's parent: once CMD is ready (--ready, else at once) its
/// record is published; it lives exactly as long as CMD, and goes at once
/// when CMD exits. If tether itself is killed, CMD goes with it, and the
/// record's lock is released with tether's last descriptor. SIGINT and
/// SIGTERM are passed on to CMD; tether's exit status is CMD's.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tether register --name api --endpoint http://127.0.0.1:8080 -- python3 api.py\n  tether register --name api --endpoint http://127.0.0.1:8080 --ready http://127.0.0.1:8080/health --meta version=3 -- ./api"
)]
pub(crate) struct RegisterArgs {
    /// The instance's name (letters, digits, `-`, `_`); several may share it.
    #[arg(long, value_name = "NAME")]
    name: String,

    /// Where to reach it, as a URL.
    #[arg(long, value_name = "URL")]
    endpoint: String,

    /// Free-form metadata, shown by `tether ls`.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = key_value)]
    meta: Vec<(String, String)>,

    #[command(flatten)]
    registry: RegistryArg,

    /// Register only once this target is ready (any `tether wait` target).
    #[arg(long, value_name = "TARGET")]
    ready: Option<String>,

    /// How long to wait for --ready; after it, CMD keeps running
    /// unregistered (and tether says why).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = positive_duration)]
    ready_timeout: Duration,

    /// The command to run (argv, no shell).
    #[arg(value_name = "CMD", last = true, required = true)]
    command: Vec<String>,

    /// Print nothing of tether's own (CMD's output is CMD's).
    #[arg(short, long)]
    quiet: bool,
}

/// List the live instances of the registry.
///
/// A table, or with --json one JSON object per line per instance (`name`,
/// `id`, `endpoint`, `meta`, `pid`, `host`, `since`). With --watch, every
/// change as it happens (with --json: `{"event":"added"|"removed"|"changed",
/// "instance":{...}}`), starting with the current set as `added`.
#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Only instances of this name.
    #[arg(value_name = "NAME")]
    name: Option<String>,

    #[command(flatten)]
    registry: RegistryArg,

    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,

    /// Keep watching, printing every change.
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, Args)]
struct RegistryArg {
    /// The registry: `file:///DIR` [default: $XDG_RUNTIME_DIR/tether/registry,
    /// or /tmp/tether-UID/registry], or
    /// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX[?ttl=10s]`.
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

impl RegistryArg {
    fn open(&self) -> Result<AnyRegistry, (u8, String)> {
        tether_registry::open(self.registry.as_deref()).map_err(|e| {
            let code = match e.kind() {
                std::io::ErrorKind::InvalidInput => exit::USAGE,
                _ => exit::INTERNAL,
            };
            (code, e.to_string())
        })
    }
}

/// The exit code for a registry that could not be read: nothing there,
/// silent, or not a registry.
fn unreachable(e: &std::io::Error) -> u8 {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => exit::ABSENT,
        std::io::ErrorKind::TimedOut => exit::UNRESPONSIVE,
        std::io::ErrorKind::InvalidData => exit::PERMANENT,
        _ => exit::INTERNAL,
    }
}

pub(crate) fn register(args: RegisterArgs) -> ExitCode {
    if let Err(e) = tether_registry::check_name(&args.name) {
        return usage(e.to_string());
    }
    if url::Url::parse(&args.endpoint).is_err() {
        return usage(format!(
            "endpoint {:?}: not a URL; give one such as http://127.0.0.1:8080 or unix:///run/app.sock",
            args.endpoint
        ));
    }
    let ready = match args.ready.as_deref().map(Target::parse).transpose() {
        Ok(ready) => ready,
        Err(e) => return usage(e.to_string()),
    };
    if let Some(Err(e)) = ready.as_ref().map(Target::preflight) {
        return usage(e.to_string());
    }
    let Some((program, rest)) = args.command.split_first() else {
        return usage("give the command to run after --".to_string());
    };
    if let Err(why) = find_program(program) {
        let _ = errln!("tether: cannot run the command: {why}");
        return ExitCode::from(exit::cannot_run(&why));
    }
    let registry = match args.registry.open() {
        Ok(registry) => registry,
        Err((code, words)) => {
            let _ = errln!("tether: {words}");
            return ExitCode::from(code);
        }
    };
    let mut record = NewRecord {
        name: args.name.clone(),
        endpoint: args.endpoint.clone(),
        meta: args.meta.iter().cloned().collect::<BTreeMap<_, _>>(),
        pid: None,
    };
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return ExitCode::from(code),
    };
    let say = |words: String| {
        if !args.quiet {
            let _ = errln!("tether: {words}");
        }
    };
    let code = runtime.block_on(async {
        let mut command = std::process::Command::new(program);
        command.args(rest);
        let mut child = match tether_process::spawn(&mut command) {
            Ok(child) => child,
            Err(e) => {
                let _ = errln!("tether: cannot run {program}: {e}");
                return exit::CANNOT_EXECUTE;
            }
        };
        // The record names CMD; its life is this process's.
        record.pid = Some(child.id());
        let stop = CancellationToken::new();
        let mut signals = Signals::new();
        // Ready first (or CMD ends, or a signal comes).
        if let Some(target) = ready {
            let policy = WaitPolicy::new(args.ready_timeout);
            let (tx, mut rx) = mpsc::channel(64);
            let waiting = wait_targets(vec![target], &policy, tx, stop.clone());
            tokio::pin!(waiting);
            let outcome = loop {
                tokio::select! {
                    report = &mut waiting => break Some(report),
                    _ = rx.recv() => {}
                    exit = child.wait() => return finish(exit, &say),
                    signal = signals.next() => forward(&child, signal, &say),
                }
            };
            if let Some(report) = outcome.filter(|r| !r.all_reached()) {
                let why = match report.targets.first().map(|t| &t.outcome) {
                    Some(tether_probe::wait::TargetOutcome::GaveUp {
                        last: Some(Err(failure)),
                        ..
                    }) => failure.to_string(),
                    _ => "no answer".to_string(),
                };
                say(format!(
                    "not registered: {} was not ready within {} ({why}); the command keeps running",
                    args.ready.as_deref().unwrap_or(""),
                    tether_resilience::failure::human_duration(args.ready_timeout)
                ));
                return run_unregistered(&mut child, &mut signals, &say).await;
            }
        }
        // Registering in etcd may take a few seconds when it does not
        // answer: CMD is still watched and signals still passed on.
        let registering = registry.register(record);
        tokio::pin!(registering);
        let registered = loop {
            tokio::select! {
                registered = &mut registering => break registered,
                exit = child.wait() => {
                    // CMD ended while its record was being published: the
                    // record may be there already; it goes before tether.
                    if let Ok(Ok(lease)) = tokio::time::timeout(Duration::from_secs(7), &mut registering).await {
                        if let Some(cause) = lease.state().cause() {
                            say(format!("the command ended before it was registered ({cause})"));
                        }
                        lease.close().await;
                    }
                    return finish(exit, &say);
                }
                signal = signals.next() => forward(&child, signal, &say),
            }
        };
        let lease = match registered {
            Ok(lease) => lease,
            Err(e) => {
                say(format!("not registered: {e}; the command keeps running"));
                return run_unregistered(&mut child, &mut signals, &say).await;
            }
        };
        let me = lease.instance();
        let named = format!("{} ({}) at {}", me.name, me.id, me.endpoint);
        match lease.state() {
            LeaseState::Registered => say(format!("registered {named}")),
            state => say(format!(
                "not registered yet: {}; retrying while the command runs",
                state.cause().unwrap_or("")
            )),
        }
        let mut states = lease.states();
        states.mark_unchanged();
        // A file lease never changes: its sender is gone at once.
        let mut following = true;
        let netmon = crate::netmon::start();
        let mut system = netmon.as_ref().map(tether_netmon::Netmon::subscribe);
        let code = loop {
            tokio::select! {
                exit = child.wait() => break finish(exit, &say),
                signal = signals.next() => forward(&child, signal, &say),
                changed = states.changed(), if following => match changed {
                    Ok(()) => match &*states.borrow_and_update() {
                        LeaseState::Registered => say(format!("registered {named}")),
                        state => say(format!("{state}")),
                    },
                    Err(_) => following = false,
                },
                // A sleep may have outlived the lease: look now.
                () = crate::netmon::revalidation(&mut system) => lease.revalidate(),
            }
        };
        // The record goes with CMD, at once (an etcd lease is revoked).
        lease.close().await;
        code
    });
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// Waits for CMD to end, passing signals on; answers its exit code.
async fn run_unregistered(
    child: &mut tether_process::Child,
    signals: &mut Signals,
    say: &impl Fn(String),
) -> u8 {
    loop {
        tokio::select! {
            exit = child.wait() => return finish(exit, say),
            signal = signals.next() => forward(child, signal, say),
        }
    }
}

fn finish(exit: std::io::Result<Exit>, say: &impl Fn(String)) -> u8 {
    match exit {
        Ok(exit) => u8::try_from(exit.shell_code()).unwrap_or(1),
        Err(e) => {
            say(format!("lost the command: {e}"));
            exit::INTERNAL
        }
    }
}

/// SIGINT and SIGTERM for CMD's process group; a second one is SIGKILL.
fn forward(child: &tether_process::Child, signal: Option<Signal>, say: &impl Fn(String)) {
    let Some(signal) = signal else { return };
    if let Err(e) = child.signal_group(signal) {
        say(format!("cannot signal the command: {e}"));
    }
}

/// The signals tether passes on: SIGINT and SIGTERM, then SIGKILL for a
/// second one.
struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    seen: u32,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            seen: 0,
        }
    }

    async fn next(&mut self) -> Option<Signal> {
        let got = match (&mut self.int, &mut self.term) {
            (Some(int), Some(term)) => tokio::select! {
                _ = int.recv() => Signal::INT,
                _ = term.recv() => Signal::TERM,
            },
            _ => std::future::pending().await,
        };
        self.seen += 1;
        Some(if self.seen > 1 { Signal::KILL } else { got })
    }
}

pub(crate) fn ls(args: LsArgs) -> ExitCode {
    let registry = match args.registry.open() {
        Ok(registry) => registry,
        Err((code, words)) => {
            return ExitCode::from(crate::out::error_event(args.json, words, code));
        }
    };
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return ExitCode::from(code),
    };
    let wanted = |i: &Instance| args.name.as_ref().is_none_or(|n| *n == i.name);
    let code = runtime.block_on(async {
        if !args.watch {
            let instances = match registry.list().await {
                Ok(list) => list,
                Err(e) => {
                    return crate::out::error_event(
                        args.json,
                        format!("registry {}: {e}", registry.describe()),
                        unreachable(&e),
                    );
                }
            };
            let shown: Vec<&Instance> = instances.iter().filter(|i| wanted(i)).collect();
            if args.json {
                for instance in shown {
                    let _ = outln!("{}", instance_json(instance));
                }
            } else {
                print_table(&shown);
            }
            return exit::READY;
        }
        let mut watch = match registry.watch().await {
            Ok(watch) => watch,
            Err(e) => {
                return crate::out::error_event(
                    args.json,
                    format!("registry {}: {e}", registry.describe()),
                    unreachable(&e),
                );
            }
        };
        let mut signals = Signals::new();
        // After a sleep, a stall or a network change, look again: the file
        // watcher's inotify queue may have overflowed, etcd's stream died.
        let netmon = crate::netmon::start();
        let mut system = netmon.as_ref().map(tether_netmon::Netmon::subscribe);
        loop {
            let event = tokio::select! {
                event = watch.next() => event,
                _ = signals.next() => return exit::READY,
                seen = async {
                    match &mut system {
                        Some(events) => events.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match seen {
                        Ok(e) if !crate::netmon::revalidates(&e) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => system = None,
                        _ => watch.rescan(),
                    }
                    continue;
                }
            };
            let (kind, instance) = match event {
                Ok(WatchEvent::Added(i)) => ("added", i),
                Ok(WatchEvent::Removed(i)) => ("removed", i),
                Ok(WatchEvent::Changed(i)) => ("changed", i),
                Ok(WatchEvent::Resynced) => continue,
                Err(e) => {
                    return crate::out::error_event(
                        args.json,
                        format!("registry: {e}"),
                        exit::INTERNAL,
                    );
                }
            };
            if !wanted(&instance) {
                continue;
            }
            if args.json {
                let _ = outln!(
                    "{}",
                    json!({"event": kind, "instance": instance_json(&instance)})
                );
            } else {
                let _ = outln!(
                    "{kind} {} {} {} pid {}",
                    instance.name,
                    instance.id,
                    instance.endpoint,
                    instance.pid
                );
            }
        }
    });
    runtime.shutdown_background();
    ExitCode::from(code)
}

/// An instance as `tether ls --json` shows it.
fn instance_json(i: &Instance) -> Value {
    json!({
        "name": i.name,
        "id": i.id,
        "endpoint": i.endpoint,
        "meta": i.meta,
        "pid": i.pid,
        "host": i.host,
        "since": i.since_unix_ms,
    })
}

fn print_table(instances: &[&Instance]) {
    let rows: Vec<[String; 5]> = instances
        .iter()
        .map(|i| {
            let meta: Vec<String> = i.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                i.name.clone(),
                i.endpoint.clone(),
                i.pid.to_string(),
                i.id.chars().take(8).collect(),
                meta.join(","),
            ]
        })
        .collect();
    let header = ["NAME", "ENDPOINT", "PID", "ID", "META"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let _ = outln!("{}", line(header));
    for row in &rows {
        let _ = outln!("{}", line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
}

fn usage(words: String) -> ExitCode {
    let _ = errln!("tether: {words}");
    ExitCode::from(exit::USAGE)
}

/// The lookup behind `registry:NAME` targets (installed in `main`).
pub(crate) fn lookup(
    url: Option<String>,
    name: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<Found>, LookupError>> + Send>> {
    Box::pin(async move {
        let registry = tether_registry::open(url.as_deref()).map_err(|e| LookupError {
            kind: match e.kind() {
                std::io::ErrorKind::InvalidInput => LookupFailure::Permanent,
                _ => LookupFailure::Absent,
            },
            words: e.to_string(),
        })?;
        let listed = registry.list().await.map_err(|e| LookupError {
            kind: match e.kind() {
                std::io::ErrorKind::ConnectionRefused => LookupFailure::Absent,
                std::io::ErrorKind::InvalidData => LookupFailure::Permanent,
                _ => LookupFailure::Silent,
            },
            words: e.to_string(),
        })?;
        Ok(listed
            .into_iter()
            .filter(|i| i.name == name)
            .map(|i| Found {
                id: i.id,
                endpoint: i.endpoint,
                pid: i.pid,
                host: i.host,
                since_unix_ms: i.since_unix_ms,
            })
            .collect())
    })
}

/// Follows the instances of `spec.name` for `tether proxy LISTEN
/// registry:NAME`: the address is the newest instance's endpoint (as
/// `tcp://HOST:PORT` or `unix://PATH`), ready while there is one. When it
/// goes and another comes (elsewhere), new clients go there; while there is
/// none, clients wait. A failed connect asks for a rescan.
pub(crate) async fn follow(
    spec: tether_probe::target::RegistrySpec,
    address: tokio::sync::watch::Sender<Target>,
    ready: tokio::sync::watch::Sender<Result<(), String>>,
    check: std::sync::Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let name = spec.name.clone();
    follow_newest(spec, check, stop, |newest| {
        let now = newest.and_then(|i| {
            let target = endpoint_target(&i.endpoint)?;
            address.send_if_modified(|was| {
                let changed = was.to_string() != target.to_string();
                if changed {
                    tracing::info!(
                        "registry:{name}: relaying to {target} (instance {} on {})",
                        i.id,
                        i.host
                    );
                    *was = target;
                }
                changed
            });
            Ok(())
        });
        ready.send_if_modified(|was| std::mem::replace(was, now.clone()) != now);
    })
    .await;
}

/// Keeps `url` at the endpoint of the newest live instance of `spec.name`
/// (for `tether mcp registry:NAME`: an http(s) URL), or the words why
/// there is none.
pub(crate) async fn follow_urls(
    spec: tether_probe::target::RegistrySpec,
    url: tokio::sync::watch::Sender<Result<url::Url, String>>,
) {
    let check = std::sync::Arc::new(tokio::sync::Notify::new());
    let name = spec.name.clone();
    follow_newest(spec, check, CancellationToken::new(), |newest| {
        let now = newest.and_then(|i| {
            url::Url::parse(&i.endpoint)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    format!(
                        "instance {} of '{name}' has the endpoint {}, not the http(s) URL of an MCP server",
                        i.id, i.endpoint
                    )
                })
        });
        url.send_if_modified(|was| std::mem::replace(was, now.clone()) != now);
    })
    .await;
}

/// Watches the registry for the instances of `spec.name` and tells `on`
/// the newest live one after every change (or why there is none), until
/// `stop`; a notified `check` rescans.
async fn follow_newest(
    spec: tether_probe::target::RegistrySpec,
    check: std::sync::Arc<tokio::sync::Notify>,
    stop: CancellationToken,
    mut on: impl FnMut(Result<&Instance, String>),
) {
    let in_words = spec
        .registry
        .as_deref()
        .unwrap_or("the file registry")
        .to_string();
    loop {
        let none = || format!("no instance of '{}' is registered in {in_words}", spec.name);
        // A verdict from a list first (a watch says nothing of an empty
        // set), then every change; the watch starts with the current set.
        let opened = match tether_registry::open(spec.registry.as_deref()) {
            Ok(registry) => match registry.list().await {
                Ok(listed) => registry.watch().await.map(|w| (listed, w)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (listed, mut watch) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                on(Err(format!("registry {in_words}: {e}")));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut live: BTreeMap<String, Instance> = listed
            .into_iter()
            .filter(|i| i.name == spec.name)
            .map(|i| (i.id.clone(), i))
            .collect();
        match live.values().max_by_key(|i| i.since_unix_ms) {
            Some(newest) => on(Ok(newest)),
            None => on(Err(none())),
        }
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                () = check.notified() => {
                    watch.rescan();
                    continue;
                }
                event = watch.next() => event,
            };
            match event {
                Ok(WatchEvent::Added(i) | WatchEvent::Changed(i)) if i.name == spec.name => {
                    live.insert(i.id.clone(), i);
                }
                Ok(WatchEvent::Removed(i)) => {
                    live.remove(&i.id);
                }
                Ok(_) => continue,
                Err(e) => {
                    on(Err(format!("registry {in_words}: {e}")));
                    break;
                }
            }
            match live.values().max_by_key(|i| i.since_unix_ms) {
                Some(newest) => on(Ok(newest)),
                None => on(Err(none())),
            }
        }
    }
}

/// The address to relay to for an endpoint URL: `tcp://HOST:PORT` for a
/// TCP-based scheme (its default port if none is given), `unix://PATH`.
fn endpoint_target(endpoint: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("endpoint {endpoint}: {why}");
    let url = url::Url::parse(endpoint).map_err(|e| bad(&e.to_string()))?;
    let text = match url.scheme() {
        "unix" => format!("unix://{}", url.path()),
        _ => {
            let host = url.host_str().ok_or_else(|| bad("no host to relay to"))?;
            let port = url
                .port_or_known_default()
                .ok_or_else(|| bad("no port, and its scheme has no known one"))?;
            if host.contains(':') {
                format!("tcp://[{}]:{port}", host.trim_matches(['[', ']']))
            } else {
                format!("tcp://{host}:{port}")
            }
        }
    };
    Target::parse(&text).map_err(|e| bad(&e.to_string()))
}
