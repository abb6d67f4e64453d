//! The HTTP/1.1 server: binding, the accept loop, connections and routes.

use std::convert::Infallible;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::{self, EventStream};
use crate::limits::{Arrival, InFlight, Limits, Slot, StreamPermit, is_milestone};
use crate::metrics::{self, Metrics};
use crate::page::{self, Page};
use crate::snapshot::{Event, Snapshot};

/// How a [`serve_with`] server behaves; [`ServeOptions::default`] is what
/// [`serve`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// How long an event stream may stay silent before it sends a
    /// `: keep-alive` comment. Default 15 s, below the 30 to 60 s idle
    /// timeouts of common proxies.
    pub keep_alive: Duration,
    /// After shutdown, how long a connection may take to finish the response
    /// it is sending (to a client that reads slowly) before it is closed.
    /// Default 2 s.
    pub shutdown_grace: Duration,
    /// The most connections served at once, so that clients cannot take
    /// the descriptors the rest of the process needs. Default 128; 0 is
    /// taken as 1.
    ///
    /// A connection that arrives at the limit takes the place of the one
    /// idle the longest (no request in flight: it sent nothing yet, only
    /// part of a request head, or is between requests), which is closed at
    /// once. When every connection has a request in flight, the newcomer is
    /// answered `503 Service Unavailable` with `Retry-After: 1` and closed.
    /// So clients that hold idle connections cannot keep `/health` from
    /// answering, and the server holds at most a few sockets beyond the
    /// limit while the ones it closed go away.
    pub max_connections: usize,
    /// The most `/api/events` streams open at once; beyond it they get
    /// `503 Service Unavailable`. Default 16. A stream is a request in
    /// flight for as long as it lasts, so keep this well below
    /// `max_connections` to leave room for the other routes.
    pub max_event_streams: usize,
}

/// Binding the status server's address failed.
///
/// Every bind error is permanent for the caller: retrying the same address
/// at once gives the same answer.
#[derive(Debug)]
pub struct BindError {
    addr: SocketAddr,
    source: io::Error,
}

/// Binds the status server's listener on `addr`, exactly as given (the
/// caller picks 127.0.0.1 by default; port 0 picks a free port).
///
/// # Errors
///
/// A [`BindError`] naming the address and the cause, such as
/// `127.0.0.1:7465 is in use by another process`.
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future binds nothing.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves the status routes on `listener` until `shutdown` is cancelled,
/// with the default [`ServeOptions`].
///
/// See [`serve_with`].
///
/// # Errors
///
/// See [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    snapshot: watch::Receiver<Snapshot>,
    events: broadcast::Sender<Event>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(
        listener,
        snapshot,
        events,
        shutdown,
        ServeOptions::default(),
    )
    .await
}

/// Serves the status routes on `listener` until `shutdown` is cancelled.
///
/// Every request reads the latest `snapshot`; every `/api/events` client
/// subscribes to `events`. On shutdown it stops accepting, ends every event
/// stream, lets each connection finish the response it is sending (for at
/// most [`ServeOptions::shutdown_grace`]), closes idle connections, and
/// returns once every connection task has ended.
///
/// Routes (GET and HEAD; other methods get 405 with `Allow: GET, HEAD`, other
/// paths 404 with a JSON error):
///
/// - `/health`: [`Snapshot::health`] as JSON; 200 when `ok`, 503 otherwise,
///   so `tether wait http://127.0.0.1:7465/health` waits for the whole stack;
/// - `/api/services`: the [`Snapshot`] as JSON;
/// - `/api/events`: server-sent events, one per [`Event`] (`event: <kind>`,
///   `data: <the Event as JSON>`), `event: lagged` with
///   `{"dropped": N}` when the client fell behind, and a `: keep-alive`
///   comment after [`ServeOptions::keep_alive`] of silence;
/// - `/metrics`: Prometheus text format 0.0.4, with the server's own
///   connection counters after the snapshot's metrics;
/// - `/`: an HTML page that reloads itself every 2 s.
///
/// At most [`ServeOptions::max_connections`] connections and
/// [`ServeOptions::max_event_streams`] event streams are served at once
/// (see there for what happens beyond). A client has 10 s to send each
/// request head, the first one included: a connection that sends nothing
/// is closed after 10 s.
///
/// # Errors
///
/// An accept error that is neither about one connection (reset, aborted)
/// nor a passing lack of resources (too many open files: retried after
/// 100 ms), which means the listener itself is broken. The connections
/// are ended as on shutdown before it is returned.
///
/// # Cancel safety
///
/// Not cancel-safe, but safe to drop: dropping the future closes the listener
/// and aborts every connection at once, without the graceful end. Cancel
/// `shutdown` for that.
pub async fn serve_with(
    listener: TcpListener,
    snapshot: watch::Receiver<Snapshot>,
    events: broadcast::Sender<Event>,
    shutdown: CancellationToken,
    options: ServeOptions,
) -> io::Result<()> {
    // A child token, so a broken listener can end the connections without
    // cancelling the caller's token.
    let stop = shutdown.child_token();
    let limits = Limits::new(options.max_connections, options.max_event_streams);
    let shared = Arc::new(Shared {
        refusal: refusal(limits.max_connections()),
        limits,
        snapshot,
        events,
        options,
        stop: stop.clone(),
    });
    // The set owns every connection task: dropping it aborts them.
    let mut connections = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!(%addr, "status server listening");
    }
    let result = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break Ok(()),
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = joined {
                    tracing::warn!(%err, "status connection task ended abnormally");
                }
            }
            // Not while too many connections beyond the limit are still
            // closing: they go away at once, and then this loop goes on.
            accepted = listener.accept(), if shared.limits.can_accept() => match accepted {
                Ok((stream, peer)) => admit(stream, peer, &shared, &mut connections),
                Err(err) if is_about_one_connection(&err) => {
                    tracing::debug!(%err, "status server: accept failed for one connection");
                }
                Err(err) if is_lack_of_resources(&err) => {
                    tracing::warn!(%err, "status server: cannot accept now; retrying in 100 ms");
                    tokio::select! {
                        () = stop.cancelled() => break Ok(()),
                        () = tokio::time::sleep(ACCEPT_RETRY) => {}
                    }
                }
                Err(err) => break Err(err),
            },
        }
    };
    drop(listener);
    stop.cancel();
    // Every connection ends within its grace period once `stop` is cancelled.
    while let Some(joined) = connections.join_next().await {
        if let Err(err) = joined {
            tracing::warn!(%err, "status connection task ended abnormally");
        }
    }
    result
}

/// How long the accept loop waits after running out of file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const JSON: &str = "application/json";

/// How many bytes of the response body go to hyper at a time, so that a
/// large response to a client that reads slowly stays in flight (and its
/// connection busy) until hyper has taken most of it.
const CHUNK: usize = 64 * 1024;

/// What every connection needs.
struct Shared {
    limits: Arc<Limits>,
    /// The whole answer to a connection refused at the limit.
    refusal: Vec<u8>,
    snapshot: watch::Receiver<Snapshot>,
    events: broadcast::Sender<Event>,
    options: ServeOptions,
    stop: CancellationToken,
}

/// A response body: a fixed buffer (handed out in chunks), or an event
/// stream with its permit.
enum Body {
    Full(Bytes),
    Events {
        stream: Box<EventStream>,
        _permit: StreamPermit,
    },
}

/// A response body that keeps its connection busy until hyper drops it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

/// The routes, each answering GET and HEAD.
#[derive(Clone, Copy)]
enum Route {
    Page,
    Health,
    Services,
    Events,
    Metrics,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(2),
            max_connections: 128,
            max_event_streams: 16,
        }
    }
}

impl BindError {
    /// The address that could not be bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether another socket already holds the address.
    pub fn is_in_use(&self) -> bool {
        self.source.kind() == io::ErrorKind::AddrInUse
    }

    /// The kind of the underlying I/O error.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.addr;
        match self.source.kind() {
            io::ErrorKind::AddrInUse => write!(f, "{addr} is in use by another process"),
            io::ErrorKind::AddrNotAvailable => {
                write!(f, "{addr} is not an address of this machine")
            }
            io::ErrorKind::PermissionDenied if addr.port() != 0 && addr.port() < 1024 => {
                write!(
                    f,
                    "bind {addr}: permission denied (ports below 1024 need privileges)"
                )
            }
            _ => write!(f, "bind {addr}: {}", self.source),
        }
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = match self.get_mut() {
            Body::Full(bytes) if bytes.is_empty() => Poll::Ready(None),
            Body::Full(bytes) => Poll::Ready(Some(bytes.split_to(bytes.len().min(CHUNK)))),
            Body::Events { stream, .. } => stream.poll_next(cx),
        };
        chunk.map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_empty(),
            Body::Events { stream, .. } => stream.is_ended(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Body::Events { .. } => SizeHint::default(),
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Body {
    fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(bytes.into())
    }
}

impl Shared {
    fn respond(&self, req: &Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        let route = match path {
            "/" => Route::Page,
            "/health" => Route::Health,
            "/api/services" => Route::Services,
            "/api/events" => Route::Events,
            "/metrics" => Route::Metrics,
            _ => {
                let body = serde_json::json!({ "error": format!("no such path: {path}") });
                return json(StatusCode::NOT_FOUND, &body);
            }
        };
        // hyper sends no body in answer to HEAD, and keeps the length header.
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            ref method => {
                let body = serde_json::json!({
                    "error": format!("method {method} is not allowed on {path}: use GET or HEAD"),
                });
                let mut response = json(StatusCode::METHOD_NOT_ALLOWED, &body);
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return response;
            }
        };
        match route {
            Route::Health => {
                let health = self.snapshot.borrow().health();
                let code = if health.status.is_ok() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(code, &health)
            }
            Route::Services => json(StatusCode::OK, &*self.snapshot.borrow()),
            Route::Metrics => {
                let text = Metrics {
                    snapshot: &self.snapshot.borrow(),
                    server: self.limits.stats(),
                    now_unix_ms: now_unix_ms(),
                }
                .to_string();
                response(StatusCode::OK, metrics::CONTENT_TYPE, Body::full(text))
            }
            Route::Page => {
                let html = Page {
                    snapshot: &self.snapshot.borrow(),
                    now_unix_ms: now_unix_ms(),
                }
                .to_string();
                let mut response = response(StatusCode::OK, page::CONTENT_TYPE, Body::full(html));
                response.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(page::CONTENT_SECURITY_POLICY),
                );
                response
            }
            Route::Events => {
                // A HEAD request subscribes to nothing.
                if head {
                    return response(
                        StatusCode::OK,
                        events::CONTENT_TYPE,
                        Body::full(Bytes::new()),
                    );
                }
                let permit = match self.limits.open_event_stream() {
                    Ok(permit) => permit,
                    Err(refused) => return self.too_many_event_streams(refused),
                };
                let stream = EventStream::new(
                    &self.events,
                    &self.snapshot,
                    self.options.keep_alive,
                    self.stop.clone(),
                );
                response(
                    StatusCode::OK,
                    events::CONTENT_TYPE,
                    Body::Events {
                        stream: Box::new(stream),
                        _permit: permit,
                    },
                )
            }
        }
    }
}

impl Shared {
    /// The answer to an event stream beyond the limit; `refused` counts
    /// them so far.
    fn too_many_event_streams(&self, refused: u64) -> Response<Body> {
        let max = self.limits.max_event_streams();
        if is_milestone(refused) {
            tracing::warn!(
                limit = max,
                refused,
                "status server at its limit of {max} event streams: refusing more with 503"
            );
        }
        let body = serde_json::json!({
            "error": format!("too many event streams: all {max} the status server allows are open"),
        });
        let mut response = json(StatusCode::SERVICE_UNAVAILABLE, &body);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

/// Gives an accepted connection its slot and task, making room or refusing
/// it at the limit.
fn admit(stream: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, connections: &mut JoinSet<()>) {
    match shared.limits.arrive(tokio::time::Instant::now()) {
        Arrival::Admitted {
            slot,
            evicted,
            pressure,
        } => {
            if evicted {
                warn_at_limit(shared, pressure);
            }
            connections.spawn(connection(stream, peer, slot, Arc::clone(shared)));
        }
        Arrival::Refused { pressure } => {
            warn_at_limit(shared, pressure);
            refuse(stream, peer, &shared.refusal);
        }
    }
}

/// The warning for the `pressure`th connection that found the server full,
/// logged at milestones only.
fn warn_at_limit(shared: &Shared, pressure: u64) {
    if !is_milestone(pressure) {
        return;
    }
    let max = shared.limits.max_connections();
    let stats = shared.limits.stats();
    tracing::warn!(
        limit = max,
        evicted = stats.connections_evicted,
        refused = stats.connections_refused,
        "status server at its limit of {max} connections: closing the one idle the longest \
         for each newcomer, refusing newcomers with 503 when none is idle"
    );
}

/// Answers a connection refused at the limit without ever waiting on it:
/// one non-blocking write of the whole 503 into its empty send buffer, then
/// close.
fn refuse(stream: TcpStream, peer: SocketAddr, answer: &[u8]) {
    tracing::debug!(%peer, "status connection refused: too many connections");
    // A std stream writes at once; tokio's would wait for a readiness event
    // that a socket accepted a moment ago has not had yet.
    let mut stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%peer, %err, "status connection refused before its answer");
            return;
        }
    };
    if let Err(err) = stream.write(answer) {
        tracing::debug!(%peer, %err, "status connection refused before its answer");
    }
    // Read what the client already sent (bounded, without waiting): a socket
    // closed with unread data answers with a reset, which may throw away
    // the 503 before the client reads it.
    let mut sink = [0; 4096];
    for _ in 0..4 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// The whole answer to a connection refused at the limit.
fn refusal(max_connections: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "error": format!(
            "too many connections: all {max_connections} the status server allows have a request in flight"
        ),
    });
    let body = format!("{body}\n");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         content-type: {JSON}\r\n\
         content-length: {}\r\n\
         cache-control: no-store\r\n\
         retry-after: 1\r\n\
         connection: close\r\n\
         \r\n\
         {body}",
        body.len()
    )
    .into_bytes()
}

/// Serves one connection until the client closes it, until it is closed to
/// make room for another, or until shutdown plus the grace period.
async fn connection(stream: TcpStream, peer: SocketAddr, slot: Slot, shared: Arc<Shared>) {
    let grace = shared.options.shutdown_grace;
    let stop = shared.stop.clone();
    let evict = slot.evict_token().clone();
    let requests = slot.requests();
    let service = service_fn(move |req: Request<Incoming>| {
        let in_flight = requests.begin();
        let response = shared.respond(&req).map(|body| Tracked {
            body,
            _in_flight: in_flight,
        });
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = evict.cancelled() => {
            if slot.is_idle() {
                // Returning drops the connection, which closes its socket
                // before the slot is freed. (hyper's graceful shutdown would
                // keep one that sent part of its first request head open
                // until the header read timeout.)
                tracing::debug!(%peer, "status connection closed to make room for a new one");
                Ok(())
            } else {
                // A request began since it was chosen: finish it, then close.
                conn.as_mut().graceful_shutdown();
                tokio::time::timeout(grace, conn).await.unwrap_or(Ok(()))
            }
        }
        () = stop.cancelled() => {
            // Finish the response in flight (event streams end by themselves
            // on `stop`), then close; a client that does not read is cut off.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(grace, conn).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!(%peer, "status connection closed after the shutdown grace period");
                    Ok(())
                }
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, %err, "status connection ended with an error");
    }
}

fn json<T: serde::Serialize + ?Sized>(code: StatusCode, value: &T) -> Response<Body> {
    // Our values serialize without fail: plain structs, string-keyed maps.
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    response(code, JSON, Body::full(body))
}

fn response(code: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Status is live: never serve it from a cache.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn now_unix_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Accept errors that concern one connection only (the client gave up).
fn is_about_one_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || err.raw_os_error() == Some(libc::EPROTO)
}

/// Accept errors that pass once some descriptors or memory are freed.
fn is_lack_of_resources(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::OutOfMemory
        || matches!(
            err.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        )
}
