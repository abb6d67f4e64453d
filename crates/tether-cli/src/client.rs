//! The commands that talk to a running `tether up`: `ps`, `logs`, `start`,
//! `stop`, `restart`, `down`.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use serde_json::Value;
use tether_resilience::failure::human_duration;
use tether_supervisor::control::{self, Request};

use crate::exit;
use crate::stack::{StackArgs, rundir_path};

/// Show the services of a running stack.
#[derive(Debug, Args)]
pub(crate) struct PsArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// Print the stack as one JSON document.
    #[arg(long)]
    json: bool,
}

/// Print a running stack's output: the last lines, then (with -f) what comes.
#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    /// The stack's file (here `-f` means --follow, as in tail and docker).
    #[arg(long = "file", value_name = "FILE", default_value = "tether.toml")]
    file: std::path::PathBuf,
    /// The stack's name, when its file is not at hand.
    #[arg(long, value_name = "NAME")]
    stack: Option<String>,
    /// Keep printing new lines until the stack goes down.
    #[arg(short, long)]
    follow: bool,
    /// How many of the last lines to print first.
    #[arg(short = 'n', long, default_value_t = 100)]
    lines: usize,
    /// Only this service.
    service: Option<String>,
}

/// A service of a running stack.
#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    #[command(flatten)]
    stack: StackArgs,
    /// The service.
    service: String,
}

/// Which stack.
#[derive(Debug, Args)]
pub(crate) struct DownArgs {
    #[command(flatten)]
    stack: StackArgs,
}

pub(crate) fn ps(args: PsArgs) -> ExitCode {
    let mut answer = None;
    let talked = talk(&args.stack, &Request::Ps, |v| {
        answer = Some(v);
        false
    });
    if let Err(failed) = talked {
        return ExitCode::from(say_failed(failed, args.json));
    }
    let Some(answer) = answer else {
        return ExitCode::from(exit::INTERNAL);
    };
    if args.json {
        let _ = outln!("{answer}");
        return ExitCode::SUCCESS;
    }
    let now = tether_supervisor::event::unix_ms(SystemTime::now());
    let services = answer["services"].as_array().cloned().unwrap_or_default();
    // A REGISTRY column only for a stack that registers.
    let registers = services.iter().any(|s| s["registration"].is_object());
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let uptime = s["up_since_ms"]
                .as_u64()
                .map(|t| human_duration(Duration::from_millis(now.saturating_sub(t))))
                .unwrap_or_default();
            let mut detail = s["last_error"].as_str().unwrap_or_default().to_string();
            if detail.is_empty() {
                detail = s["status_text"].as_str().unwrap_or_default().to_string();
            }
            if s["busy"].as_bool() == Some(true) {
                detail = format!("busy {detail}").trim().to_string();
            }
            let registration = &s["registration"];
            let registry = registration["state"].as_str().unwrap_or_default();
            if detail.is_empty()
                && matches!(registry, "retrying" | "lost")
                && let Some(cause) = registration["cause"].as_str()
            {
                detail = format!("registry: {cause}");
            }
            if detail.is_empty()
                && let Some(sockets) = s["sockets"].as_array()
            {
                let held: Vec<&str> = sockets.iter().filter_map(|v| v.as_str()).collect();
                detail = held.join(" ");
            }
            let mut row = vec![
                s["name"].as_str().unwrap_or("?").to_string(),
                s["state"].as_str().unwrap_or("?").to_string(),
                s["pid"].as_u64().map(|p| p.to_string()).unwrap_or_default(),
                uptime,
                s["restarts"].as_u64().unwrap_or(0).to_string(),
            ];
            if registers {
                row.push(registry.to_string());
            }
            row.push(detail);
            row
        })
        .collect();
    let mut header = vec!["SERVICE", "STATE", "PID", "UPTIME", "RESTARTS"];
    if registers {
        header.push("REGISTRY");
    }
    header.push("DETAIL");
    let last = header.len() - 1;
    let widths: Vec<usize> = (0..last)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i < last {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        out.trim_end().to_string()
    };
    let _ = outln!("{}", line(&header));
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        let _ = outln!("{}", line(&cells));
    }
    ExitCode::SUCCESS
}

pub(crate) fn logs(args: LogsArgs) -> ExitCode {
    // Service names hold no '/': a path here is the stack's file given
    // with -f, which for `logs` means --follow (as in tail and docker).
    if let Some(given) = &args.service {
        let path = std::path::Path::new(given);
        if given.contains('/') || (given.ends_with(".toml") && path.is_file()) {
            let _ = errln!(
                "tether: '{given}' is a file, not a service name: use --file {given} (for `logs`, -f means --follow)"
            );
            return ExitCode::from(exit::USAGE);
        }
    }
    let request = Request::Logs {
        service: args.service.clone(),
        follow: args.follow,
        lines: args.lines,
    };
    let stack = StackArgs {
        file: args.file.clone(),
        stack: args.stack.clone(),
    };
    let mut failed = None;
    let talked = talk(&stack, &request, |v| {
        if let Some(line) = v.get("line") {
            let service = line["service"].as_str().unwrap_or("?");
            let text = line["text"].as_str().unwrap_or_default();
            if outln!("{service} | {text}").is_err() {
                // Nobody reads any more (a closed pipe): stop following.
                return false;
            }
        } else if let Some(n) = v.get("skipped") {
            let _ = errln!("tether: ({n} lines skipped: this reader was too slow)");
        } else if v["ok"] == false {
            failed = v["error"].as_str().map(str::to_string);
            return false;
        }
        true
    });
    if let Some(error) = failed {
        let _ = errln!("tether: {error}");
        return ExitCode::from(exit::USAGE);
    }
    match talked {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => ExitCode::from(say_failed(failed, false)),
    }
}

pub(crate) fn service(verb: &str, args: ServiceArgs) -> ExitCode {
    let request = match verb {
        "start" => Request::Start {
            service: args.service.clone(),
        },
        "stop" => Request::Stop {
            service: args.service.clone(),
        },
        _ => Request::Restart {
            service: args.service.clone(),
        },
    };
    let mut result = None;
    let talked = talk(&args.stack, &request, |v| {
        result = Some(v);
        false
    });
    if let Err(failed) = talked {
        return ExitCode::from(say_failed(failed, false));
    }
    match result {
        Some(v) if v["ok"] == true => {
            let done = match verb {
                "start" => "starting",
                "stop" => "stopped",
                _ => "restarting",
            };
            let _ = outln!("tether: {} {done}", args.service);
            ExitCode::SUCCESS
        }
        Some(v) => {
            let _ = errln!("tether: {}", v["error"].as_str().unwrap_or("failed"));
            ExitCode::from(exit::USAGE)
        }
        None => ExitCode::from(exit::INTERNAL),
    }
}

pub(crate) fn down(args: DownArgs) -> ExitCode {
    match talk(&args.stack, &Request::Down, |_| false) {
        Ok(()) => {
            if let Ok(found) = args.stack.find() {
                let _ = outln!("tether: stack '{}' is down", found.name);
            }
            ExitCode::SUCCESS
        }
        Err(failed) => ExitCode::from(say_failed(failed, false)),
    }
}

/// Why a client command could not do its job: its words and exit code.
#[derive(Debug)]
struct Failed {
    code: u8,
    message: String,
}

/// Says `failed` on stderr and, with `json`, as one JSON document on stdout
/// too (`{"ok":false,"error":...,"exit_code":N}`), so a script reading
/// JSON always gets JSON. Returns its exit code.
fn say_failed(failed: Failed, json: bool) -> u8 {
    let _ = errln!("tether: {}", failed.message);
    if json {
        let doc =
            serde_json::json!({"ok": false, "error": failed.message, "exit_code": failed.code});
        let _ = outln!("{doc}");
    }
    failed.code
}

/// Sends `request` to the stack and feeds each answer to `each` until it
/// says stop.
fn talk(
    stack: &StackArgs,
    request: &Request,
    each: impl FnMut(Value) -> bool,
) -> Result<(), Failed> {
    let found = stack.find().map_err(|message| Failed {
        code: exit::USAGE,
        message,
    })?;
    let name = &found.name;
    let socket = rundir_path(name).join("control.sock");
    let runtime = crate::runtime().map_err(|code| Failed {
        code,
        message: "cannot start".to_string(),
    })?;
    match runtime.block_on(control::request(&socket, request, each)) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(Failed {
                code: exit::NOT_RUNNING,
                message: format!(
                    "stack '{name}' is not running (nothing answers at {}; the stack was {})",
                    socket.display(),
                    found.how
                ),
            })
        }
        Err(e) => Err(Failed {
            code: exit::INTERNAL,
            message: format!("stack '{name}': {e}"),
        }),
    }
}
