//! The `tether` binary: parses arguments, wires the library crates together,
//! and maps outcomes to exit codes. It is the only crate that uses `anyhow`
//! and the only one that prints.

// Printing to the terminal is this crate's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]
#![forbid(unsafe_code)]

mod client;
mod exit;
mod mcp;
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let (json, file) = match &cli.command {
        Command::Mcp(args) => args.log_target(),
        _ => (false, None),
    };
    if let Err(e) = init_logging(json, file) {
        eprintln!("tether: cannot open the log file: {e}");
        return ExitCode::from(exit::USAGE);
    }
    match cli.command {
        Command::Up(args) => up::run(args),
        Command::Wait(args) => wait::run(args),
        Command::Mcp(args) => mcp::run(args),
        Command::Ps(args) => client::ps(args),
        Command::Logs(args) => client::logs(args),
        Command::Start(args) => client::service("start", args),
        Command::Stop(args) => client::service("stop", args),
        Command::Restart(args) => client::service("restart", args),
        Command::Down(args) => client::down(args),
    }
}

/// The runtime every command runs on: one thread, since probes and
/// supervision are I/O, and one thread starts in microseconds and costs
/// nothing while idle. On failure, says so and gives the exit code.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("tether: cannot start: {e}");
            exit::INTERNAL
        })
}

/// Prints clap's help and version as clap does; any other parse error as one
/// line, with the usage exit code.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            let _ = e.print();
            ExitCode::from(exit::USAGE)
        }
        _ => {
            let text = e.kind().as_str().map(str::to_string).unwrap_or_default();
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .find(|l| l.starts_with("error:"))
                .map(|l| l.trim_start_matches("error:").trim().to_string())
                .unwrap_or(text);
            eprintln!("tether: {line} (see 'tether --help')");
            ExitCode::from(exit::USAGE)
        }
    }
}

/// Diagnostics go to stderr (or `file`, appended to), as text or JSON
/// lines, at the level `TETHER_LOG` names: `off`, `error`, `warn` (the
/// default), `info`, `debug` or `trace`.
fn init_logging(json: bool, file: Option<&std::path::Path>) -> std::io::Result<()> {
    use std::sync::Mutex;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let level = std::env::var("TETHER_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    let (writer, ansi) = match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            (BoxMakeWriter::new(Mutex::new(file)), false)
        }
        None => (BoxMakeWriter::new(std::io::stderr), true),
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_target(false);
    if json {
        builder.json().with_current_span(false).init();
    } else if file.is_some() {
        builder.with_ansi(false).init();
    } else {
        builder.with_ansi(ansi).without_time().init();
    }
    Ok(())
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
