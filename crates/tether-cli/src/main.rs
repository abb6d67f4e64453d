//! The `tether` binary: parses arguments, wires the library crates together,
//! and maps outcomes to exit codes. It is the only crate that uses `anyhow`
//! and the only one that prints.

// Printing to the terminal is this crate's job, and goes through `out`
// (`outln!`, `errln!`, `Out`), which never panics on a closed pipe and
// never blocks the runtime; `println!` and `eprintln!` stay denied.
#![forbid(unsafe_code)]

// The printing macros, for every module below.
#[macro_use]
mod out;
mod client;
mod exit;
mod mcp;
mod netmon;
mod proxies;
mod proxy;
mod registrations;
mod registry;
mod render;
mod stack;
mod up;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keeps programs connected to the services they depend on.
#[derive(Debug, Parser)]
#[command(name = "tether", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Up(up::UpArgs),
    Wait(wait::WaitArgs),
    Mcp(mcp::McpArgs),
    Proxy(proxy::ProxyArgs),
    Register(registry::RegisterArgs),
    Ls(registry::LsArgs),
    Ps(client::PsArgs),
    Logs(client::LogsArgs),
    /// Start a stopped or failed service of a running stack.
    Start(client::ServiceArgs),
    /// Stop a service of a running stack (its whole process group).
    Stop(client::ServiceArgs),
    /// Restart a service of a running stack at once.
    Restart(client::ServiceArgs),
    /// Bring a running stack down: every service, in reverse dependency order.
    Down(client::DownArgs),
}

fn main() -> ExitCode {
    // `registry:NAME` targets, wherever a target is taken.
    tether_probe::target::registry::set_lookup(registry::lookup);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let (json, file) = match &cli.command {
        Command::Mcp(args) => args.log_target(),
        _ => (false, None),
    };
    match init_logging(json, file) {
        Ok(guard) => *LOGS.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard),
        Err(e) => {
            let _ = errln!("tether: cannot open the log file: {e}");
            return ExitCode::from(exit::USAGE);
        }
    }
    let code = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Wait(args) => wait::run(args),
        Command::Mcp(args) => mcp::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Register(args) => registry::register(args),
        Command::Ls(args) => registry::ls(args),
        Command::Ps(args) => client::ps(args),
        Command::Logs(args) => client::logs(args),
        Command::Start(args) => client::service("start", args),
        Command::Stop(args) => client::service("stop", args),
        Command::Restart(args) => client::service("restart", args),
        Command::Down(args) => client::down(args),
    };
    flush_logs();
    code
}

/// The log writer's guard, dropped (writing what is queued) by
/// [`flush_logs`].
static LOGS: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> =
    std::sync::Mutex::new(None);

/// Writes the queued log lines out (bounded), before exiting or exec'ing.
pub(crate) fn flush_logs() {
    let guard = LOGS.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(guard);
}

/// The runtime every command runs on: one thread, since probes and
/// supervision are I/O, and one thread starts in microseconds and costs
/// nothing while idle. On failure, says so and gives the exit code.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            let _ = errln!("tether: cannot start: {e}");
            exit::INTERNAL
        })
}

/// Prints clap's help and version as clap does, and every other parse error
/// as clap renders it: what is wrong or missing, by name, a suggestion for
/// a mistyped subcommand or flag, the subcommand's usage line and a pointer
/// to its `--help`; with the usage exit code.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(exit::USAGE),
    }
}

/// Diagnostics go to stderr (or `file`, appended to), as text or JSON
/// lines, at the level `TETHER_LOG` names: `off`, `error`, `warn` (the
/// default), `info`, `debug` or `trace`. Lines go through a bounded queue
/// to a thread of their own, so a stderr nobody reads (or a slow disk)
/// never stops tether: when the queue is full, lines are dropped. The
/// returned guard writes what is queued when dropped (bounded by
/// tracing-appender to about a second).
fn init_logging(
    json: bool,
    file: Option<&std::path::Path>,
) -> std::io::Result<tracing_appender::non_blocking::WorkerGuard> {
    use std::io::IsTerminal;
    use tracing_appender::non_blocking::NonBlockingBuilder;
    use tracing_subscriber::filter::LevelFilter;
    let level = std::env::var("TETHER_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    let builder = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES)
        .thread_name("tether-log");
    let (writer, guard, ansi) = match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let (writer, guard) = builder.finish(file);
            (writer, guard, false)
        }
        None => {
            let ansi = std::io::stderr().is_terminal() && !up::no_color();
            let (writer, guard) = builder.finish(std::io::stderr());
            let _ = STDERR.set(writer.clone());
            (writer, guard, ansi)
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    if json {
        builder.json().with_current_span(false).init();
    } else if file.is_some() {
        builder.init();
    } else {
        builder.without_time().init();
    }
    Ok(guard)
}

/// Log lines waiting for stderr, at most.
const LOG_LINES: usize = 1024;

/// The writer behind the log lines, when they go to stderr.
static STDERR: std::sync::OnceLock<tracing_appender::non_blocking::NonBlocking> =
    std::sync::OnceLock::new();

/// Writes a line to stderr through the log writer's queue (never blocking,
/// in order with the log lines), or directly when logs go elsewhere.
pub(crate) fn stderr_line(line: &str) {
    use std::io::Write;
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    match STDERR.get() {
        Some(writer) => {
            let _ = writer.clone().write_all(text.as_bytes());
        }
        None => {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Clap checks its definitions only when a subcommand is parsed in a
    /// debug build; this checks all of them (a flag used twice, ...).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
