//! `tether mcp URL` / `tether mcp -- CMD ARGS...`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue};
use tether_probe::parse_duration;
use tether_probe::target::{find_program, url_is_local};
use tether_proxy::mcp::session::demand_pacing;
use tether_proxy::mcp::upstream::http::{Http, HttpMode};
use tether_proxy::mcp::upstream::stdio::Stdio;
use tether_proxy::mcp::upstream::ws::Ws;
use tether_proxy::mcp::upstream::{Limits, StderrSink, connect_timeout, redact_text};
use tether_proxy::mcp::{SessionConfig, Timeouts, Upstream, serve_watching};
use url::Url;

use crate::exit;
use crate::wait::positive_duration;

/// An always-up MCP endpoint on stdin/stdout, in front of a server that may
/// restart.
///
/// Point an IDE or agent at `tether mcp URL` (streamable HTTP, falling back
/// to the legacy SSE transport; ws:// or wss:// for WebSocket) or at
/// `tether mcp -- CMD ARGS...` (a stdio server tether starts, and starts
/// again when it exits). When the server restarts, tether reconnects as soon
/// as it is ready, replays the session (initialize, log level,
/// subscriptions), re-sends what is safe to re-send and answers the rest
/// with an error that names the cause. tether exits only when the client
/// closes stdin.
///
/// stdout carries only MCP messages; logs go to stderr (TETHER_LOG=info for
/// more) or to --log-file.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tether mcp http://127.0.0.1:3001/mcp\n  tether mcp http://127.0.0.1:3001/sse\n  tether mcp --timeout tools/call=10m,2h ws://127.0.0.1:3103/message\n  tether mcp -- npx -y @modelcontextprotocol/server-everything"
)]
pub(crate) struct McpArgs {
    /// The server: http(s)://... or ws(s)://...; or give a stdio server
    /// command after --. A user and password in the URL
    /// (http://user:pass@host/mcp) are sent as Basic authentication and
    /// never printed.
    #[arg(
        value_name = "URL",
        required_unless_present = "command",
        conflicts_with = "command"
    )]
    url: Option<String>,

    /// A stdio server to run and supervise.
    #[arg(value_name = "CMD", last = true)]
    command: Vec<String>,

    /// The HTTP transport: auto (streamable HTTP, or legacy SSE when the URL
    /// serves it), streamable-http, or sse.
    #[arg(long, value_enum, default_value_t = Transport::Auto)]
    transport: Transport,

    /// An HTTP header for every request to the server, "Name: value"
    /// (repeatable). Values are never logged.
    #[arg(short = 'H', long = "header", value_name = "HEADER", value_parser = header)]
    headers: Vec<(HeaderName, HeaderValue)>,

    /// Accept any TLS certificate.
    #[arg(long)]
    insecure: bool,

    /// Fail a request when neither its answer nor progress came for this
    /// long (progress notifications reset it).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = positive_duration)]
    idle_timeout: Duration,

    /// Fail a request that has run this long, progress or not.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = positive_duration)]
    total_timeout: Duration,

    /// Timeouts for one method, METHOD=IDLE[,TOTAL] (repeatable), such as
    /// tools/call=10m,2h.
    #[arg(long = "timeout", value_name = "METHOD=IDLE[,TOTAL]", value_parser = method_timeout)]
    timeouts: Vec<(String, Duration, Option<Duration>)>,

    /// Ping the server after this long without traffic; 0 turns pings off.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    ping_interval: Duration,

    /// A ping (or a replayed handshake) unanswered this long means the
    /// connection is dead.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    ping_timeout: Duration,

    /// How long one connection attempt may take [default: 1s on this
    /// machine, 10s remote].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    connect_timeout: Option<Duration>,

    /// The largest message, either way, in bytes (suffixes K, M, G: powers of
    /// 1024).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = size)]
    max_message: usize,

    /// Logs as JSON lines.
    #[arg(long)]
    json_log: bool,

    /// Append logs to this file instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Auto,
    StreamableHttp,
    Sse,
}

impl McpArgs {
    /// Where logs go, for the logger set up before `run`.
    pub(crate) fn log_target(&self) -> (bool, Option<&std::path::Path>) {
        (self.json_log, self.log_file.as_deref())
    }
}

fn header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: a header is \"Name: value\""))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?}: not a valid header name", name.trim()))?;
    let mut value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of header {name} has characters a header cannot carry"))?;
    value.set_sensitive(true);
    Ok((name, value))
}

fn method_timeout(text: &str) -> Result<(String, Duration, Option<Duration>), String> {
    let (method, times) = text.split_once('=').ok_or_else(|| {
        format!("{text:?}: expected METHOD=IDLE[,TOTAL], such as tools/call=10m,2h")
    })?;
    if method.is_empty() {
        return Err(format!("{text:?}: the method is empty"));
    }
    let (idle, total) = match times.split_once(',') {
        Some((idle, total)) => (positive_duration(idle)?, Some(positive_duration(total)?)),
        None => (positive_duration(times)?, None),
    };
    Ok((method.to_string(), idle, total))
}

fn size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 64M or 1048576"))?;
    let unit = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => return Err(format!("{other:?}: unknown size unit (use K, M or G)")),
    };
    let bytes = n
        .checked_mul(unit)
        .ok_or_else(|| format!("{text:?}: too large"))?;
    if bytes < 1024 {
        return Err(format!("{text:?}: at least 1K"));
    }
    Ok(bytes)
}

/// Builds the upstream from the arguments, or says what is wrong.
fn upstream(
    args: &McpArgs,
    sink: StderrSink,
) -> Result<(Upstream, bool, Option<Follower>), (u8, String)> {
    let limits = Limits {
        max_message: args.max_message,
    };
    if let Some(program) = args.command.first() {
        if let Err(why) = find_program(program) {
            return Err((
                exit::cannot_run(&why),
                format!("cannot run the MCP server: {why}"),
            ));
        }
        let stdio = Stdio::new(args.command.clone(), limits, sink);
        return Ok((Upstream::Stdio(stdio), true, None));
    }
    let text = args.url.as_deref().unwrap_or_default();
    if text.starts_with("registry:") {
        return registry_upstream(args, text, limits);
    }
    // A user and password in the URL are never shown.
    let shown = redact_text(text);
    let url = Url::parse(text).map_err(|e| (exit::USAGE, format!("{shown:?}: not a URL ({e})")))?;
    if url.host().is_none() {
        return Err((exit::USAGE, format!("{shown:?}: the URL has no host")));
    }
    let local = url_is_local(&url);
    let timeout = args.connect_timeout.unwrap_or(connect_timeout(local));
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        headers.append(name, value.clone());
    }
    let upstream = match url.scheme() {
        "http" | "https" => {
            let mode = match args.transport {
                Transport::Auto => None,
                Transport::StreamableHttp => Some(HttpMode::Streamable),
                Transport::Sse => Some(HttpMode::Sse),
            };
            Upstream::Http(Http::new(
                url,
                args.insecure,
                headers,
                mode,
                limits,
                timeout,
            ))
        }
        "ws" | "wss" => {
            if args.transport != Transport::Auto {
                return Err((
                    exit::USAGE,
                    "--transport applies to http(s) URLs only".into(),
                ));
            }
            if !args.headers.is_empty() {
                return Err((exit::USAGE, "--header applies to http(s) URLs only".into()));
            }
            Upstream::Ws(Ws::new(url, args.insecure, limits, timeout))
        }
        other => {
            return Err((
                exit::USAGE,
                format!(
                    "{other}: unsupported scheme (use http, https, ws, wss, or -- CMD for stdio)"
                ),
            ));
        }
    };
    Ok((upstream, local, None))
}

/// `tether mcp registry:NAME`: the newest registered instance's endpoint,
/// followed (its URL must be http(s)).
fn registry_upstream(
    args: &McpArgs,
    text: &str,
    limits: Limits,
) -> Result<(Upstream, bool, Option<Follower>), (u8, String)> {
    let target = tether_probe::Target::parse(text).map_err(|e| (exit::USAGE, e.to_string()))?;
    let tether_probe::target::Spec::Registry(spec) = target.spec() else {
        return Err((exit::USAGE, format!("{text}: expected registry:NAME")));
    };
    if args.transport == Transport::Sse {
        return Err((
            exit::USAGE,
            "--transport sse with registry:NAME: the transport is detected at each instance".into(),
        ));
    }
    let local = spec
        .registry
        .as_deref()
        .is_none_or(|u| u.starts_with("file://"));
    let timeout = args.connect_timeout.unwrap_or(connect_timeout(local));
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        headers.append(name, value.clone());
    }
    let (tx, rx) =
        tokio::sync::watch::channel(Err(format!("looking for an instance of '{}'", spec.name)));
    let placeholder =
        Url::parse("http://127.0.0.1/").map_err(|e| (exit::INTERNAL, e.to_string()))?;
    let mode = match args.transport {
        Transport::StreamableHttp => Some(HttpMode::Streamable),
        _ => None,
    };
    let http = Http::new(placeholder, args.insecure, headers, mode, limits, timeout)
        .following(text.to_string(), rx);
    Ok((Upstream::Http(http), local, Some((spec.clone(), tx))))
}

/// What keeps a `registry:NAME` upstream's URL current, started with the
/// runtime.
type Follower = (
    tether_probe::target::RegistrySpec,
    tokio::sync::watch::Sender<Result<Url, String>>,
);

pub(crate) fn run(args: McpArgs) -> ExitCode {
    let sink = stderr_sink(args.json_log, args.log_file.is_some());
    let (upstream, local, follower) = match upstream(&args, sink) {
        Ok(built) => built,
        Err((code, why)) => {
            let _ = errln!("tether: {why}");
            return ExitCode::from(code);
        }
    };
    let mut config = SessionConfig::new(upstream.name());
    config.timeouts = Timeouts {
        idle: args.idle_timeout,
        total: args.total_timeout,
        per_method: args
            .timeouts
            .iter()
            .map(|(method, idle, total)| {
                (method.clone(), (*idle, total.unwrap_or(args.total_timeout)))
            })
            .collect(),
    };
    config.ping_interval = (!args.ping_interval.is_zero()).then_some(args.ping_interval);
    config.ping_timeout = args.ping_timeout;
    config.demand = match (&upstream, local) {
        // A stdio server is a process start: 100 ms apart at most.
        (Upstream::Stdio(_), _) => {
            demand_pacing(Duration::from_millis(50), Duration::from_millis(100))
        }
        // tether wait's local pacing: a refused loopback connect costs ~50 µs.
        (_, true) => demand_pacing(Duration::from_millis(5), Duration::from_millis(12)),
        (_, false) => demand_pacing(Duration::from_millis(100), Duration::from_millis(100)),
    };
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return ExitCode::from(code),
    };
    let result = runtime.block_on(async {
        // Ends with the session.
        let _follower = follower.map(|(spec, tx)| {
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                crate::registry::follow_urls(spec, tx),
            ))
        });
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = async { match &mut term { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        // Held for the session's life; without it, nothing is revalidated.
        let netmon = crate::netmon::start();
        serve_watching(
            upstream,
            config,
            args.max_message,
            tokio::io::stdin(),
            tokio::io::stdout(),
            shutdown,
            netmon.as_ref().map(|n| (n.subscribe(), n.pulse())),
        )
        .await
    });
    // A read of stdin may still block a thread: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = errln!("tether: {e}");
            ExitCode::from(exit::INTERNAL)
        }
    }
}

/// Where a stdio server's stderr goes: to tether's stderr as it is, or as
/// JSON log lines when logs are JSON. With --log-file, into the log.
fn stderr_sink(json: bool, to_file: bool) -> StderrSink {
    if json || to_file {
        return Arc::new(|line: &str| {
            tracing::info!(target: "upstream", stderr = line, "server stderr");
        });
    }
    // Through the log writer's queue: a stderr nobody reads never stops
    // tether, and the lines keep their order with tether's own.
    Arc::new(crate::stderr_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("64M"), Ok(64 << 20));
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert_eq!(size("2048"), Ok(2048));
        assert_eq!(size("1k"), Ok(1024));
        assert!(size("12").is_err());
        assert!(size("5T").is_err());
        assert!(size("lots").is_err());
    }

    #[test]
    fn method_timeouts() {
        assert_eq!(
            method_timeout("tools/call=10m,2h"),
            Ok((
                "tools/call".into(),
                Duration::from_secs(600),
                Some(Duration::from_secs(7200))
            ))
        );
        assert_eq!(
            method_timeout("ping=5s"),
            Ok(("ping".into(), Duration::from_secs(5), None))
        );
        assert!(method_timeout("tools/call").is_err());
        assert!(method_timeout("=5s").is_err());
        assert!(method_timeout("x=0s").is_err());
    }

    #[test]
    fn headers_are_sensitive() {
        let (name, value) = header("Authorization: Bearer abc").unwrap();
        assert_eq!(name, "authorization");
        assert!(value.is_sensitive());
        assert!(header("no colon").is_err());
    }
}
