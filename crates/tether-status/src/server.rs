//! The HTTP/1.1 server: binding, the accept loop, connections and routes.

use std::convert::Infallible;
use std::fmt;
use std::io;
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
/// - `/metrics`: Prometheus text format 0.0.4;
/// - `/`: an HTML page that reloads itself every 2 s.
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
    let shared = Arc::new(Shared {
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
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(stream, peer, Arc::clone(&shared)));
                }
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

/// What every connection needs.
struct Shared {
    snapshot: watch::Receiver<Snapshot>,
    events: broadcast::Sender<Event>,
    options: ServeOptions,
    stop: CancellationToken,
}

/// A response body: a fixed buffer, or an event stream.
enum Body {
    Full(Option<Bytes>),
    Events(Box<EventStream>),
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
            Body::Full(bytes) => Poll::Ready(bytes.take()),
            Body::Events(stream) => stream.poll_next(cx),
        };
        chunk.map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Events(stream) => stream.is_ended(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Events(_) => SizeHint::default(),
        }
    }
}

impl Body {
    fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Body::Full(if bytes.is_empty() { None } else { Some(bytes) })
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
                let body = if head {
                    Body::full(Bytes::new())
                } else {
                    Body::Events(Box::new(EventStream::new(
                        &self.events,
                        self.options.keep_alive,
                        self.stop.clone(),
                    )))
                };
                response(StatusCode::OK, events::CONTENT_TYPE, body)
            }
        }
    }
}

/// Serves one connection until the client closes it, or until shutdown
/// plus the grace period.
async fn connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let grace = shared.options.shutdown_grace;
    let stop = shared.stop.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(shared.respond(&req)))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let result = tokio::select! {
        result = conn.as_mut() => result,
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
