//! `tether mcp`: an always-up MCP endpoint on stdin/stdout in front of a
//! server that may restart, crash, hang or not exist yet.
//!
//! - [`frame`]: newline-delimited JSON-RPC with a size limit.
//! - [`jsonrpc`]: message kinds and the errors tether writes.
//! - [`lost`]: what says the link or the session is lost (transport
//!   failures, HTTP statuses, JSON-RPC errors), for transports and core.
//! - [`session`]: the sans-I/O core: session replay, pending requests and
//!   their safety, timeouts, keepalive, reconnect pacing.
//! - [`upstream`]: the transports (stdio child, streamable HTTP and legacy
//!   SSE, WebSocket), each a task reporting generation-tagged events.
//! - [`limits`]: every bound of the proxy's queues, in one place.
//! - [`serve`]: the driver that joins them.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tether_resilience::Failure;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub mod frame;
pub mod jsonrpc;
pub mod limits;
pub mod lost;
pub mod session;
pub mod upstream;

pub use session::{Session, SessionConfig, Timeouts};

use frame::{Line, LineReader, sniff_id};
use limits::{
    CLIENT_INPUT_QUEUE, CLIENT_QUEUE_BYTES, EVENT_QUEUE, Milestones, UPSTREAM_QUEUE, WRITER_QUEUE,
};
use session::Action;
use upstream::{Event, Events, Link, Scoped, UpEvent};

use crate::stillness::Stillness;

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

/// Messages waiting for the client, serialized, counted in bytes.
///
/// Its producer is the session core, which must not block, so it has no
/// hard cap; it is bounded by construction instead: the driver takes no
/// input from either side while it holds [`CLIENT_QUEUE_BYTES`] or more,
/// and one input makes a bounded number of answers (at most one per
/// request in flight, and those are at most [`limits::MAX_PENDING`]).
#[derive(Debug, Default)]
struct ClientQueue {
    lines: VecDeque<Bytes>,
    bytes: usize,
}

impl ClientQueue {
    fn push(&mut self, message: &Value) {
        let mut line = message.to_string().into_bytes();
        line.push(b'\n');
        self.bytes += line.len();
        self.lines.push_back(Bytes::from(line));
    }

    fn has_room(&self) -> bool {
        self.bytes < CLIENT_QUEUE_BYTES
    }

    /// Hands lines to the writer while it has room; `false` when the writer
    /// is gone.
    fn flush(&mut self, writer: &mpsc::Sender<Bytes>) -> bool {
        while let Some(line) = self.lines.pop_front() {
            let len = line.len();
            match writer.try_send(line) {
                Ok(()) => self.bytes -= len,
                Err(mpsc::error::TrySendError::Full(line)) => {
                    self.lines.push_front(line);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    }
}

/// Serves the MCP client on `input`/`output` until it closes `input` or
/// `shutdown` resolves; never because of the upstream.
///
/// Every queue between the two sides is bounded ([`limits`]): when the
/// client stops reading, tether stops reading the server (which its pipe or
/// socket then holds back); when the server stops reading, tether stops
/// reading the client. Timeouts and errors still reach the side that reads.
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
    serve_watching(upstream, config, max_message, input, output, shutdown, None).await
}

/// [`serve`], revalidating the upstream ([`Session::on_revalidate`]) on
/// every resume, stall and network change that `system` reports. Its
/// pulse is read before each client message: after a stall, the message
/// and the monitor's late tick are ready together, and the message must
/// not go out on a session that died meanwhile before the revalidation.
pub async fn serve_watching<R, W>(
    upstream: Upstream,
    config: SessionConfig,
    max_message: usize,
    input: R,
    output: W,
    shutdown: impl std::future::Future<Output = ()>,
    system: Option<(
        tokio::sync::broadcast::Receiver<tether_netmon::Event>,
        tether_netmon::Pulse,
    )>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (mut system, pulse) = match system {
        Some((events, pulse)) => (Some(events), Some(pulse)),
        None => (None, None),
    };
    // The pulse's beat at the stall last acted on: one stall, one
    // revalidation.
    let mut stall_seen: Option<u64> = None;
    // How long this process stood still, as last told to the session:
    // before every input, the session hears of a stall since, so the
    // deadlines pending across it are moved before anything else is done.
    let mut still = Stillness::new(pulse.clone());
    let upstream = Arc::new(upstream);
    // Backpressure: the reader waits for room, so the client's writes
    // fill its pipe.
    let (in_tx, mut in_rx) = mpsc::channel(CLIENT_INPUT_QUEUE);
    // Both end with `serve`, even when its future is dropped.
    let reader = Scoped(tokio::spawn(read_client(input, max_message, in_tx)));
    // Bounded; what does not fit waits in `to_client`.
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(WRITER_QUEUE);
    let mut writer = Scoped(tokio::spawn(write_client(output, out_rx)));
    // Backpressure: a connection waits for room before reading its server.
    let (up_tx, mut up_rx) = mpsc::channel::<Event>(EVENT_QUEUE);

    let mut session = Session::new(config, Instant::now());
    let mut to_client = ClientQueue::default();
    // Messages for the current connection, waiting for room in its queue;
    // bounded like `to_client`: client input stops at UPSTREAM_QUEUE, and
    // one input makes a bounded number of messages.
    let mut to_upstream: VecDeque<Value> = VecDeque::new();
    let mut link: Option<Link> = None;
    let mut connecting: Option<Connecting> = None;
    // Connections being closed, each within CLOSE.
    let mut closing: JoinSet<()> = JoinSet::new();
    let mut closed_at: Option<Instant> = None;
    let mut writer_gone = false;
    let mut held = false;
    let held_upstream = Milestones::new();
    let mut client_stopped = false;
    let held_client = Milestones::new();
    tokio::pin!(shutdown);

    loop {
        catch_up(&mut still, &mut session);
        let now = Instant::now();
        session.on_tick(now);
        for action in session.take_actions() {
            match action {
                Action::ToClient(message) => to_client.push(&message),
                Action::ToUpstream(message) => match &link {
                    Some(_) => to_upstream.push_back(message),
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
                    // What the old connection did not take was meant for
                    // its session; the core decides what goes again.
                    to_upstream.clear();
                    if let Some(old) = link.take() {
                        closing.spawn(old.close(CLOSE));
                    }
                }
            }
        }
        if !to_client.flush(&out_tx) {
            writer_gone = true;
            break;
        }
        if let Some(link) = &link {
            while let Some(message) = to_upstream.pop_front() {
                if let Err(message) = link.try_send(message) {
                    to_upstream.push_front(message);
                    break;
                }
            }
        }
        let client_room = to_client.has_room();
        let upstream_room = to_upstream.len() < UPSTREAM_QUEUE;
        if held == client_room {
            held = !client_room;
            session.on_upstream_held(held, now);
            if held && let Some(n) = held_upstream.hit() {
                warn!(
                    "the client is not reading: {} bytes wait for it; not reading the upstream until it does ({n} times so far)",
                    to_client.bytes
                );
            }
        }
        let stopped = client_room && !upstream_room;
        if stopped
            && !client_stopped
            && let Some(n) = held_client.hit()
        {
            warn!(
                "the upstream is not taking messages: {} wait for it; not reading the client until it does ({n} times so far)",
                to_upstream.len()
            );
        }
        client_stopped = stopped;
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
            // The machine's events first: after a stall, an event and a
            // client message are ready together, and the message must wait
            // for the revalidation. Events are few (bounded, debounced).
            biased;
            event = async {
                match &mut system {
                    Some(events) => events.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                catch_up(&mut still, &mut session);
                match event {
                Ok(event @ (tether_netmon::Event::Resumed { .. }
                | tether_netmon::Event::Stalled { .. }
                | tether_netmon::Event::NetworkChanged { .. })) => {
                    info!("{event:?}: looking at the upstream again");
                    // First the connection (no pooled connection is reused
                    // blindly, one on a gone address is given up), then the
                    // session core (whose ping then goes on a fresh one).
                    if let Some(link) = &link {
                        link.revalidate(event.addresses_gone());
                    }
                    session.on_revalidate(Instant::now());
                }
                Ok(_) => {}
                // Missed some: revalidate, which covers whatever they were
                // (except the addresses gone: streams are reopened anyway).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Some(link) = &link {
                        link.revalidate(Vec::new());
                    }
                    session.on_revalidate(Instant::now());
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => system = None,
                }
            }
            input = in_rx.recv(), if closed_at.is_none() && client_room && upstream_room => {
                catch_up(&mut still, &mut session);
                if let Some(pulse) = &pulse
                    && pulse.stalled()
                    && stall_seen != Some(pulse.beats())
                {
                    stall_seen = Some(pulse.beats());
                    info!("stalled (the monitor's tick is overdue): looking at the upstream again");
                    if let Some(link) = &link {
                        link.revalidate(Vec::new());
                    }
                    session.on_revalidate(Instant::now());
                }
                match input {
                Some(Input::Message(Value::Array(batch))) => session.on_client_batch(batch, Instant::now()),
                Some(Input::Message(message)) => session.on_client(message, Instant::now()),
                Some(Input::Malformed(reason)) => {
                    to_client.push(&jsonrpc::error(
                        Value::Null,
                        jsonrpc::PARSE_ERROR,
                        format!("parse error: {reason}"),
                        None,
                    ));
                }
                Some(Input::TooLong { limit, id }) => {
                    to_client.push(&jsonrpc::error(
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
                }
            }
            Some(event) = up_rx.recv(), if client_room => {
                catch_up(&mut still, &mut session);
                let now = Instant::now();
                match event.event {
                    UpEvent::Messages(messages) => {
                        for message in messages {
                            session.on_upstream(event.generation, message, now);
                        }
                    }
                    UpEvent::RequestFailed { id, failure } => {
                        session.on_request_failed(event.generation, id, failure, now);
                    }
                    UpEvent::Lost(failure) => session.on_lost(event.generation, failure, now),
                }
            }
            // Wake-ups when a full queue has room again.
            () = room_in(&out_tx), if !to_client.lines.is_empty() => {}
            () = link_room(link.as_ref()), if !to_upstream.is_empty() => {}
            done = attempt(&mut connecting), if connecting.is_some() => {
                catch_up(&mut still, &mut session);
                connecting = None;
                let (generation, result) = done;
                let now = Instant::now();
                match result {
                    Ok(new) if generation == session.generation() => {
                        link = Some(new);
                        session.on_connected(generation, now);
                    }
                    Ok(stale) => {
                        closing.spawn(stale.close(CLOSE));
                    }
                    Err(failure) => session.on_connect_failed(generation, failure, now),
                }
            }
            Some(_) = closing.join_next(), if !closing.is_empty() => {}
            () = sleep_until(wake) => {}
            () = &mut shutdown => break,
            _ = &mut writer.0 => {
                // The client stopped reading: nobody is left to serve.
                writer_gone = true;
                break;
            }
        }
    }
    drop(reader);
    // What the client is still owed, within a second.
    if !writer_gone {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for line in to_client.lines.drain(..) {
                if out_tx.send(line).await.is_err() {
                    break;
                }
            }
            drop(out_tx);
            let _ = (&mut writer.0).await;
        })
        .await;
    }
    drop(writer);
    if let Some(link) = link.take() {
        closing.spawn(link.close(CLOSE));
    }
    // Each close ends within CLOSE; this is a backstop.
    let _ = tokio::time::timeout(CLOSE + Duration::from_secs(1), async {
        while closing.join_next().await.is_some() {}
    })
    .await;
    closing.shutdown().await;
    Ok(())
}

/// Tells the session of a stall since the last call, if any.
fn catch_up(still: &mut Stillness, session: &mut Session) {
    if let Some(more) = still.more() {
        debug!("stood still for {more:?}: the pending deadlines are moved by as much");
        session.on_stood_still(more);
    }
}

/// Resolves when the queue has room (or its receiver is gone).
async fn room_in<T>(tx: &mpsc::Sender<T>) {
    let _ = tx.reserve().await;
}

/// Resolves when the connection's queue has room; never without one.
async fn link_room(link: Option<&Link>) {
    match link {
        Some(link) => link.room().await,
        None => std::future::pending().await,
    }
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

async fn write_client<W: AsyncWrite + Unpin>(output: W, mut rx: mpsc::Receiver<Bytes>) {
    let mut output = BufWriter::with_capacity(64 * 1024, output);
    while let Some(line) = rx.recv().await {
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
