//! `tether mcp`: an always-up MCP endpoint on stdin/stdout in front of a
//! server that may restart, crash, hang or not exist yet.
//!
//! - [`frame`]: newline-delimited JSON-RPC with a size limit.
//! - [`jsonrpc`]: message kinds and the errors tether writes.
//! - [`session`]: the sans-I/O core: session replay, pending requests and
//!   their safety, timeouts, keepalive, reconnect pacing.
//! - [`upstream`]: the transports (stdio child, streamable HTTP and legacy
//!   SSE, WebSocket), each a task reporting generation-tagged events.
//! - [`serve`]: the driver that joins them.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tether_resilience::Failure;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

pub mod frame;
pub mod jsonrpc;
pub mod session;
pub mod upstream;

pub use session::{Session, SessionConfig, Timeouts};

use frame::{Line, LineReader, sniff_id};
use session::Action;
use upstream::{Event, Events, Link};

/// The server behind the endpoint.
#[derive(Debug, Clone)]
pub enum Upstream {
    Stdio(upstream::stdio::Stdio),
    Http(upstream::http::Http),
    Ws(upstream::ws::Ws),
}

impl Upstream {
    pub fn name(&self) -> String {
        match self {
            Upstream::Stdio(s) => s.name(),
            Upstream::Http(h) => h.name(),
            Upstream::Ws(w) => w.name(),
        }
    }

    async fn connect(&self, events: Events) -> Result<Link, Failure> {
        match self {
            Upstream::Stdio(s) => s.connect(events),
            Upstream::Http(h) => h.connect(events).await,
            Upstream::Ws(w) => w.connect(events).await,
        }
    }
}

/// What the client sent, as the reader saw it.
enum Input {
    Message(Value),
    Malformed(String),
    TooLong { limit: usize, id: Option<Value> },
    Closed,
}

/// A connection attempt under way: its generation and outcome.
type Connecting =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u64, Result<Link, Failure>)> + Send>>;

/// After the client closes its side, answers still owed are awaited this
/// long before tether leaves.
const DRAIN: Duration = Duration::from_secs(5);
/// How long a closing connection gets to end its session or stop its
/// server.
const CLOSE: Duration = Duration::from_secs(5);

/// Serves the MCP client on `input`/`output` until it closes `input` or
/// `shutdown` resolves; never because of the upstream.
///
/// # Errors
///
/// Only an error writing to the client other than its going away.
pub async fn serve<R, W>(
    upstream: Upstream,
    config: SessionConfig,
    max_message: usize,
    input: R,
    output: W,
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let upstream = Arc::new(upstream);
    let (in_tx, mut in_rx) = mpsc::channel(64);
    let reader = tokio::spawn(read_client(input, max_message, in_tx));
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write_client(output, out_rx));
    let (up_tx, mut up_rx) = mpsc::unbounded_channel::<Event>();

    let mut session = Session::new(config, Instant::now());
    let mut link: Option<Link> = None;
    let mut connecting: Option<Connecting> = None;
    let mut closed_at: Option<Instant> = None;
    let mut writer_gone = false;
    tokio::pin!(shutdown);

    loop {
        let now = Instant::now();
        session.on_tick(now);
        for action in session.take_actions() {
            match action {
                Action::ToClient(message) => {
                    let _ = out_tx.send(message);
                }
                Action::ToUpstream(message) => match &link {
                    Some(link) => link.send(message),
                    None => debug!("no upstream connection for a message; dropped"),
                },
                Action::Connect { generation } => {
                    let upstream = upstream.clone();
                    let events = Events::new(generation, up_tx.clone());
                    connecting = Some(Box::pin(async move {
                        (generation, upstream.connect(events).await)
                    }));
                }
                Action::Disconnect => {
                    if let Some(old) = link.take() {
                        tokio::spawn(old.close(CLOSE));
                    }
                }
            }
        }
        if let Some(at) = closed_at
            && (session.pending() == 0 || now >= at + DRAIN)
        {
            break;
        }
        let wake = session.next_wakeup();
        let drain_end = closed_at.map(|at| at + DRAIN);
        let wake = match (wake, drain_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            input = in_rx.recv(), if closed_at.is_none() => match input {
                Some(Input::Message(Value::Array(batch))) => {
                    for message in batch {
                        session.on_client(message, Instant::now());
                    }
                }
                Some(Input::Message(message)) => session.on_client(message, Instant::now()),
                Some(Input::Malformed(reason)) => {
                    let _ = out_tx.send(jsonrpc::error(
                        Value::Null,
                        jsonrpc::PARSE_ERROR,
                        format!("parse error: {reason}"),
                        None,
                    ));
                }
                Some(Input::TooLong { limit, id }) => {
                    let _ = out_tx.send(jsonrpc::error(
                        id.unwrap_or(Value::Null),
                        jsonrpc::INVALID_REQUEST,
                        format!("the message is larger than the {limit}-byte limit (--max-message); it was dropped"),
                        None,
                    ));
                }
                Some(Input::Closed) | None => {
                    session.on_client_closed();
                    closed_at = Some(Instant::now());
                }
            },
            Some(event) = up_rx.recv() => {
                let now = Instant::now();
                match event.event {
                    upstream::UpEvent::Message(message) => session.on_upstream(event.generation, message, now),
                    upstream::UpEvent::RequestFailed { id, failure } => {
                        session.on_request_failed(event.generation, id, failure, now);
                    }
                    upstream::UpEvent::Lost(failure) => session.on_lost(event.generation, failure, now),
                }
            }
            done = attempt(&mut connecting), if connecting.is_some() => {
                connecting = None;
                let (generation, result) = done;
                let now = Instant::now();
                match result {
                    Ok(new) if generation == session.generation() => {
                        link = Some(new);
                        session.on_connected(generation, now);
                    }
                    Ok(stale) => {
                        tokio::spawn(stale.close(CLOSE));
                    }
                    Err(failure) => session.on_connect_failed(generation, failure, now),
                }
            }
            () = sleep_until(wake) => {}
            () = &mut shutdown => break,
            _ = &mut writer => {
                // The client stopped reading: nobody is left to serve.
                writer_gone = true;
                break;
            }
        }
    }
    reader.abort();
    if let Some(link) = link.take() {
        link.close(CLOSE).await;
    }
    drop(out_tx);
    if !writer_gone {
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    }
    Ok(())
}

/// The outcome of the attempt under way; never, if there is none.
async fn attempt(connecting: &mut Option<Connecting>) -> (u64, Result<Link, Failure>) {
    match connecting {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn read_client<R: AsyncRead + Unpin>(input: R, max: usize, tx: mpsc::Sender<Input>) {
    let mut lines = LineReader::new(input, max);
    loop {
        let input = match lines.next().await {
            Ok(Some(Line::Data(bytes))) => match serde_json::from_slice::<Value>(&bytes) {
                Ok(message) => Input::Message(message),
                Err(e) => Input::Malformed(e.to_string()),
            },
            Ok(Some(Line::TooLong { limit, head })) => Input::TooLong {
                limit,
                id: sniff_id(&head),
            },
            Ok(None) | Err(_) => Input::Closed,
        };
        let closed = matches!(input, Input::Closed);
        if tx.send(input).await.is_err() || closed {
            return;
        }
    }
}

async fn write_client<W: AsyncWrite + Unpin>(
    mut output: W,
    mut rx: mpsc::UnboundedReceiver<Value>,
) {
    while let Some(message) = rx.recv().await {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        if output.write_all(&line).await.is_err() {
            return;
        }
        // Flush when nothing else is queued: one write per burst.
        if rx.is_empty() && output.flush().await.is_err() {
            return;
        }
    }
    let _ = output.flush().await;
}
