//! `tether wait TARGET... [-- CMD...]`.

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tether_probe::wait::{WaitEvent, WaitPolicy, wait_targets};
use tether_probe::{Target, parse_duration, target::find_program};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::exit;
use crate::render::{Mode, Renderer};

/// Wait until every target is ready, then run CMD.
///
/// Targets of any kind wait in parallel under one deadline. On success tether
/// becomes CMD (exec: CMD's exit status and signals are its own). On failure
/// CMD never runs (unless --run-anyway) and tether says, per target, why.
///
/// Targets: tcp://HOST:PORT or HOST:PORT, unix:///PATH (unix:@NAME for an
/// abstract socket), http(s)://URL, file:///PATH, exec:COMMAND ARGS...,
/// mcp+http(s)://URL. Options follow a '#': http(s) status=200,204 body=TEXT
/// header=NAME:VALUE method=HEAD insecure; file max-age=30s state=ready,busy;
/// exec code=0,1; mcp era=auto|legacy|modern header=NAME:VALUE; any target
/// timeout=DURATION (a fixed per-attempt timeout).
///
/// Exit codes: 0 ready (or CMD's own status), 2 usage error, 3 a target failed
/// permanently, 4 timed out while a target did not answer, 5 timed out while
/// a target answered "not ready", 6 timed out while still ready (--invert),
/// 124 timed out while nothing was listening, 126/127 CMD cannot run / not
/// found, 130/143 interrupted.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tether wait tcp://127.0.0.1:5432 http://127.0.0.1:8080/health -- ./run-tests\n  tether wait --timeout 2m 'http://api:8080/ready#status=200&body=ok'\n  tether wait 'file:///run/app/heartbeat.json?max-age=10s' 'exec:pg_isready -h db'\n  tether wait --invert tcp://127.0.0.1:8080   # until the port is closed"
)]
pub(crate) struct WaitArgs {
    /// What to wait for (see above); at least one.
    #[arg(value_name = "TARGET", required = true)]
    targets: Vec<String>,

    /// The command to run once every target is ready.
    #[arg(value_name = "CMD", last = true)]
    command: Vec<String>,

    /// Give up after this long, for all targets together.
    #[arg(short, long, value_name = "DURATION", default_value = "60s", value_parser = positive_duration)]
    timeout: Duration,

    /// The longest pause between two attempts on one target [default: 12ms on
    /// this machine, 100ms for exec, 250ms remote].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    max_interval: Option<Duration>,

    /// The first attempt's timeout; it grows after attempts that time out
    /// [default: 1s on this machine, 10s remote, 10s for exec].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    attempt_timeout: Option<Duration>,

    /// Wait until the targets are NOT ready (a port closed, a server gone).
    #[arg(long)]
    invert: bool,

    /// Run CMD even if the wait failed (after saying why).
    #[arg(long, requires = "command")]
    run_anyway: bool,

    /// Print NDJSON events (attempt, ready, failed, done) on stdout.
    #[arg(long, conflicts_with = "quiet")]
    json: bool,

    /// Print nothing.
    #[arg(short, long)]
    quiet: bool,
}

pub(crate) fn positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("must be more than zero (for a long wait, say so: 1h)".to_string());
    }
    Ok(d)
}

pub(crate) fn run(args: WaitArgs) -> ExitCode {
    let mut targets = Vec::with_capacity(args.targets.len());
    for text in &args.targets {
        match Target::parse(text).and_then(|t| t.preflight().map(|()| t)) {
            Ok(target) => targets.push(target),
            Err(e) => {
                return ExitCode::from(crate::out::error_event(
                    args.json,
                    e.to_string(),
                    exit::USAGE,
                ));
            }
        }
    }
    if let Some(program) = args.command.first() {
        // Fail before waiting, not 60 s later.
        if let Err(why) = find_program(program) {
            let code = exit::cannot_run(&why);
            return ExitCode::from(crate::out::error_event(
                args.json,
                format!("cannot run the command: {why}"),
                code,
            ));
        }
    }

    let mode = if args.quiet {
        Mode::Quiet
    } else if args.json {
        Mode::Json
    } else if std::io::stderr().is_terminal() {
        Mode::Live
    } else {
        Mode::Plain
    };
    let mut policy = WaitPolicy::new(args.timeout);
    policy.max_interval = args.max_interval;
    policy.attempt_timeout = args.attempt_timeout;
    policy.invert = args.invert;
    // After a sleep, a stall or a network change, every target is tried at
    // once with its pauses reset (a snapshot of the network costs ~0.1 ms).
    let restart = std::sync::Arc::new(tokio::sync::Notify::new());
    policy.restart = Some(restart.clone());

    // One thread is plenty: probes are I/O, and a single-threaded runtime
    // starts in microseconds.
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return ExitCode::from(code),
    };
    let names: Vec<String> = targets.iter().map(Target::to_string).collect();
    let mut renderer = Renderer::new(mode, names, &policy);
    let (report, signal) = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signal = tokio::spawn(on_signal(shutdown.clone()));
        let netmon = crate::netmon::start();
        let _watching = netmon.as_ref().map(|netmon| {
            let restart = restart.clone();
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(crate::netmon::each(
                netmon.subscribe(),
                shutdown.clone(),
                move |event| {
                    if crate::netmon::revalidates(event) {
                        restart.notify_waiters();
                    }
                },
            )))
        });
        let (tx, mut rx) = mpsc::channel::<WaitEvent>(256);
        renderer.start();
        let waiting = wait_targets(targets, &policy, tx, shutdown.clone());
        let rendering = async {
            while let Some(event) = rx.recv().await {
                renderer.event(&event);
            }
        };
        let (report, ()) = tokio::join!(waiting, rendering);
        let signal = if shutdown.is_cancelled() {
            signal.await.ok().flatten()
        } else {
            None
        };
        (report, signal)
    });
    // Do not wait for a name lookup still blocked in the resolver.
    runtime.shutdown_background();

    let code = match signal {
        Some(code) => code,
        None => exit::of_report(&report, args.invert),
    };
    renderer.finish(&report, code, signal.is_some());
    if (code == exit::READY || (args.run_anyway && signal.is_none()))
        && let Some((program, rest)) = args.command.split_first()
    {
        return exec(program, rest);
    }
    ExitCode::from(code)
}

/// Waits for SIGINT or SIGTERM, cancels the wait, and answers the exit code
/// that signal means. Ends with `None` if no signal handler could be set.
async fn on_signal(shutdown: CancellationToken) -> Option<u8> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).ok()?;
    let mut term = signal(SignalKind::terminate()).ok()?;
    let code = tokio::select! {
        _ = int.recv() => exit::SIGINT,
        _ = term.recv() => exit::SIGTERM,
    };
    shutdown.cancel();
    Some(code)
}

/// Replaces this process with the command; returns only if that failed.
fn exec(program: &str, args: &[String]) -> ExitCode {
    crate::flush_logs();
    let err = std::process::Command::new(program).args(args).exec();
    let _ = errln!("tether: cannot run '{program}': {err}");
    let code = match err.kind() {
        std::io::ErrorKind::NotFound => exit::NOT_FOUND,
        _ => exit::CANNOT_EXECUTE,
    };
    ExitCode::from(code)
}
