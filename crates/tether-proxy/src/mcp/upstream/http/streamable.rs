//! Streamable HTTP (2025-03-26 and later): every message is a POST; the
//! answer comes as JSON or as an SSE stream (resumed with `Last-Event-ID`
//! if it breaks and the server gave event ids); a GET stream carries what
//! the server sends on its own, reopened when it ends or stalls. The
//! session id from the `initialize` answer goes on every later request; a
//! session the server forgot (404, 400 "No valid session ID", 401/503 on a
//! known session: [`lost::http_status`]) is reported as `session.lost`, so
//! the session core starts a new one. Requests share a small pool of
//! connections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::Value;
use tether_probe::attempt::Attempt;
use tether_probe::sse::{SseEvent, SseParser};
use tether_probe::web::{self, Connection, Response};
use tether_resilience::{Cause, Failure, Phase, Safety};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, warn};
use url::Url;

use super::{ANSWER_LIMIT, ERROR_BODY, Http, error_answer, lock, quote, report, session_gone};
use crate::mcp::jsonrpc;
use crate::mcp::limits::{LINK_QUEUE, MAX_POSTS, Milestones};
use crate::mcp::lost;
use crate::mcp::upstream::{Events, Limits, Link, Outbound};

const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// Idle connections kept for reuse.
const POOL: usize = 8;
/// How often one answer stream is resumed before the request fails.
const MAX_RESUMES: u32 = 5;

/// Starts the connection task; `warm` is a connection the readiness check
/// opened, kept for the first request.
pub(super) fn link(http: &Http, warm: Option<Connection>, events: Events) -> Link {
    let shared = Arc::new(Shared {
        url: http.url.clone(),
        insecure: http.insecure,
        headers: http.headers.clone(),
        limits: http.limits,
        timeout: http.timeout,
        stream_idle: http.stream_idle,
        events,
        pool: Mutex::new(warm.into_iter().collect()),
        ground: tokio::sync::watch::Sender::new(Vec::new()),
        session: Mutex::new(None),
        version: Mutex::new(None),
    });
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    Link::new(tx, tokio::spawn(run(shared, rx)))
}

/// What every request of one streamable-HTTP connection shares.
#[derive(Debug)]
struct Shared {
    url: Url,
    insecure: bool,
    headers: HeaderMap,
    limits: Limits,
    timeout: Duration,
    stream_idle: Duration,
    events: Events,
    pool: Mutex<Vec<Connection>>,
    /// Sent on every revalidation, with the addresses that left the
    /// machine: a stream on a gone address breaks (the GET stream reopens,
    /// an answer stream is resumed if it can be). Streams on addresses
    /// still here are left alone: a link that flapped does not break TCP,
    /// and the session's revalidation ping tells whether the server is
    /// there.
    ground: tokio::sync::watch::Sender<Vec<std::net::IpAddr>>,
    session: Mutex<Option<HeaderValue>>,
    version: Mutex<Option<HeaderValue>>,
}

/// What a finished POST asks of the connection task.
enum Posted {
    Nothing,
    /// The session is set up: open the GET stream.
    OpenStream,
}

async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Outbound>) {
    let mut posts = JoinSet::new();
    let mut stream = JoinSet::new();
    let saturated = Milestones::new();
    let mut was_full = false;
    loop {
        // At most MAX_POSTS at once (the session core allows at most
        // MAX_PENDING requests in flight, so the rest is room for
        // notifications and answers); beyond, messages wait in the bounded
        // link queue, and then in the driver's, which stops reading the
        // client.
        let full = posts.len() >= MAX_POSTS;
        if full
            && !was_full
            && let Some(n) = saturated.hit()
        {
            warn!(
                "{}: {MAX_POSTS} POSTs are open at once; the next messages wait ({n} times so far)",
                shared.url
            );
        }
        was_full = full;
        tokio::select! {
            out = rx.recv(), if !full => match out {
                Some(Outbound::Message(message)) => {
                    posts.spawn(post(shared.clone(), message));
                }
                // Idle connections opened before are not reused blindly:
                // the next request opens a new one.
                Some(Outbound::Revalidate { gone }) => {
                    lock(&shared.pool).clear();
                    shared.ground.send_replace(gone);
                }
                Some(Outbound::Close) | None => {
                    posts.abort_all();
                    stream.abort_all();
                    end_session(&shared).await;
                    return;
                }
            },
            Some(done) = posts.join_next() => {
                if matches!(done, Ok(Posted::OpenStream)) && stream.is_empty() {
                    stream.spawn(get_stream(shared.clone()));
                }
            }
            Some(_) = stream.join_next() => {}
        }
    }
}

impl Shared {
    fn base_headers(&self) -> HeaderMap {
        let mut headers = self.headers.clone();
        if let Some(session) = lock(&self.session).clone() {
            headers.insert(SESSION, session);
        }
        if let Some(version) = lock(&self.version).clone() {
            headers.insert(VERSION, version);
        }
        headers
    }

    /// Sends a request on a pooled connection, or a new one; a request a
    /// pooled connection handed back unsent goes once more on a new one.
    async fn request(
        &self,
        method: Method,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(Connection, Response), Failure> {
        let connect = Attempt::new(self.timeout);
        let attempt = Attempt::new(ANSWER_LIMIT);
        let pooled = {
            let mut pool = lock(&self.pool);
            let mut found = None;
            while let Some(conn) = pool.pop() {
                if conn.is_ready() && !conn.is_closed() {
                    found = Some(conn);
                    break;
                }
            }
            found
        };
        if let Some(mut conn) = pooled {
            match conn
                .request(method.clone(), &self.url, headers, body.clone(), attempt)
                .await
            {
                Ok(response) => return Ok((conn, response)),
                Err(e) if e.unsent => {}
                Err(e) => return Err(e.failure),
            }
        }
        let mut conn = web::connect(&self.url, self.insecure, connect).await?;
        match conn
            .request(method, &self.url, headers, body, attempt)
            .await
        {
            Ok(response) => Ok((conn, response)),
            Err(e) => Err(if e.unsent {
                e.failure.with_safety(Safety::NotSent)
            } else {
                e.failure
            }),
        }
    }

    fn give_back(&self, conn: Connection) {
        if conn.is_closed() {
            return;
        }
        let mut pool = lock(&self.pool);
        if pool.len() < POOL {
            pool.push(conn);
        }
    }

    /// Reports a failed message on this connection's events ([`report`]).
    async fn failed(&self, id: Option<u64>, failure: Failure) {
        report(&self.events, id, failure).await;
    }

    /// Delivers the messages of an SSE chunk (as one event, once the
    /// session's queue has room: until then this stream is not read);
    /// whether the answer to `id` was among them.
    async fn deliver(&self, events: Vec<SseEvent>, id: Option<u64>, what: &str) -> bool {
        let mut answered = false;
        let mut messages = Vec::new();
        for event in events {
            if event.event != "message" || event.data.trim().is_empty() {
                continue;
            }
            let message: Value = match serde_json::from_str(&event.data) {
                Ok(message) => message,
                Err(e) => {
                    warn!("{what}: an event that is not JSON ({e}); ignored");
                    continue;
                }
            };
            if id.is_some() && is_answer_to(&message, id) {
                answered = true;
            }
            messages.push(message);
        }
        self.events.messages(messages).await;
        answered
    }
}

fn is_answer_to(message: &Value, id: Option<u64>) -> bool {
    message.get("method").is_none() && message.get("id").and_then(Value::as_u64) == id
}

async fn post(shared: Arc<Shared>, message: Value) -> Posted {
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_string);
    // tether's ids are numbers; only a request has one *and* a method.
    let id = method
        .as_ref()
        .and_then(|_| message.get("id").and_then(Value::as_u64));
    let initialize = method.as_deref() == Some("initialize");
    if initialize {
        // A new session: the old id and version no longer apply.
        *lock(&shared.session) = None;
        *lock(&shared.version) = None;
    }
    let mut headers = shared.base_headers();
    let sent_session = headers.contains_key(SESSION);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    modern_headers(&message, &mut headers);
    let describe = match &method {
        Some(m) => jsonrpc::describe(m, &message),
        None => "a response".to_string(),
    };
    let what = format!("POST {} ({describe})", shared.url);
    let body = Bytes::from(message.to_string());
    let (conn, response) = match shared.request(Method::POST, &headers, body).await {
        Ok(sent) => sent,
        Err(failure) => {
            shared.failed(id, failure).await;
            return Posted::Nothing;
        }
    };
    let status = response.status;
    if initialize && let Some(session) = response.headers.get(SESSION) {
        *lock(&shared.session) = Some(session.clone());
    }
    if !status.is_success() {
        let (failure, text) = error_answer(response, &what).await;
        shared.give_back(conn);
        let failure = if sent_session && lost::http_status(status, &text) {
            session_gone(&what, status, &text)
        } else {
            // The server refused it (4xx) or failed on it (5xx).
            let safety = if status.is_client_error() {
                Safety::NotSent
            } else {
                Safety::SentUnacked
            };
            let detail = format!("{}{}", failure.detail, quote(&text));
            failure.with_detail(detail).with_safety(safety)
        };
        shared.failed(id, failure).await;
        return Posted::Nothing;
    }
    if status == StatusCode::ACCEPTED || status == StatusCode::NO_CONTENT {
        let _ = response
            .read_body(ERROR_BODY, &what, Attempt::new(shared.timeout))
            .await;
        shared.give_back(conn);
        if id.is_some() {
            shared
                .failed(
                    id,
                    Failure::new(
                        Phase::FirstByte,
                        Cause::ProtocolMismatch,
                        format!("{what}: HTTP {} without an answer", status.as_u16()),
                    ),
                )
                .await;
        }
        return match method.as_deref() {
            Some("notifications/initialized") => Posted::OpenStream,
            _ => Posted::Nothing,
        };
    }
    match response.content_type().as_str() {
        "text/event-stream" => {
            answer_stream(&shared, conn, response, id, initialize, &what).await;
        }
        _ => {
            let read = response
                .read_body(
                    shared.limits.max_message,
                    &what,
                    Attempt::new(shared.timeout),
                )
                .await;
            shared.give_back(conn);
            match read {
                Ok(body) if body.iter().all(u8::is_ascii_whitespace) => {
                    if id.is_some() {
                        shared
                            .failed(
                                id,
                                Failure::new(
                                    Phase::FirstByte,
                                    Cause::ProtocolMismatch,
                                    format!("{what}: HTTP {} with an empty body", status.as_u16()),
                                ),
                            )
                            .await;
                    }
                }
                Ok(body) => {
                    if initialize {
                        note_version(&shared, &body);
                    }
                    if let Err(failure) = shared.events.json(&body, &what).await {
                        shared.failed(id, failure).await;
                    }
                }
                Err(failure) => {
                    shared
                        .failed(id, failure.with_safety(Safety::Processed))
                        .await
                }
            }
        }
    }
    Posted::Nothing
}

/// Reads an answer that comes as an SSE stream, resuming it with
/// `Last-Event-ID` when it breaks or ends before the answer and the
/// server gave event ids.
async fn answer_stream(
    shared: &Shared,
    conn: Connection,
    mut response: Response,
    id: Option<u64>,
    initialize: bool,
    what: &str,
) {
    let mut parser = SseParser::new(shared.limits.max_message);
    let mut conn = Some(conn);
    let mut resumes = 0;
    let mut ground = shared.ground.subscribe();
    loop {
        let local = conn.as_ref().and_then(Connection::local_addr);
        let ended = loop {
            let next = tokio::select! {
                next = response.next_chunk(what) => next,
                Ok(()) = ground.changed() => {
                    let gone = ground.borrow_and_update().clone();
                    match super::super::address_gone(local, &gone, what) {
                        Some(failure) => break Err(failure),
                        None => continue,
                    }
                }
            };
            match next {
                Ok(Some(chunk)) => match parser.push(&chunk) {
                    Ok(events) => {
                        // An initialize answer fixes the version header.
                        if initialize {
                            for event in &events {
                                note_version(shared, event.data.as_bytes());
                            }
                        }
                        if shared.deliver(events, id, what).await {
                            // Done: the server ends the stream after the answer.
                            drop(response);
                            if let Some(conn) = conn.take() {
                                shared.give_back(conn);
                            }
                            return;
                        }
                    }
                    Err(e) => {
                        break Err(Failure::new(
                            Phase::Stream,
                            Cause::LimitReached,
                            format!("{what}: an event larger than the {}-byte limit", e.limit),
                        ));
                    }
                },
                Ok(None) => break Ok(()),
                Err(failure) => break Err(failure),
            }
        };
        if id.is_none() {
            if let Some(conn) = conn.take() {
                shared.give_back(conn);
            }
            return;
        }
        let failure = match ended {
            Ok(()) => Failure::new(
                Phase::Stream,
                Cause::ResetMidStream,
                format!("{what}: the event stream ended before the answer"),
            ),
            Err(failure) => failure,
        }
        .with_safety(Safety::Processed);
        let Some(last) = parser.last_event_id().map(str::to_string) else {
            shared.failed(id, failure).await;
            return;
        };
        if resumes >= MAX_RESUMES {
            let detail = format!("{}; resumed {resumes} times", failure.detail);
            shared.failed(id, failure.with_detail(detail)).await;
            return;
        }
        resumes += 1;
        if let Some(ms) = parser.retry_ms() {
            tokio::time::sleep(Duration::from_millis(ms.min(5000))).await;
        }
        debug!("{what}: resuming the answer stream after event {last}");
        let mut headers = shared.base_headers();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Ok(value) = HeaderValue::from_str(&last) {
            headers.insert(LAST_EVENT_ID, value);
        }
        match shared.request(Method::GET, &headers, Bytes::new()).await {
            Ok((new_conn, new_response))
                if new_response.status.is_success()
                    && new_response.content_type() == "text/event-stream" =>
            {
                conn = Some(new_conn);
                response = new_response;
            }
            // Nothing to resume from: the request is lost with the stream.
            _ => {
                shared.failed(id, failure).await;
                return;
            }
        }
    }
}

/// The GET stream: what the server sends of its own accord. Reopened when
/// it ends or goes silent for `stream_idle`, with `Last-Event-ID`.
async fn get_stream(shared: Arc<Shared>) {
    let what = format!("GET {} (server stream)", shared.url);
    let mut parser = SseParser::new(shared.limits.max_message);
    let mut quick_ends = 0u32;
    loop {
        let mut headers = shared.base_headers();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Some(last) = parser.last_event_id()
            && let Ok(value) = HeaderValue::from_str(last)
        {
            headers.insert(LAST_EVENT_ID, value);
        }
        let sent_session = headers.contains_key(SESSION);
        let (conn, mut response) = match shared.request(Method::GET, &headers, Bytes::new()).await {
            Ok(sent) => sent,
            Err(failure) => {
                if lost::breaks_link(&failure) {
                    shared.events.lost(failure).await;
                }
                return;
            }
        };
        let status = response.status;
        if !status.is_success() {
            let (failure, text) = error_answer(response, &what).await;
            if sent_session && lost::http_status(status, &text) {
                shared.events.lost(session_gone(&what, status, &text)).await;
            } else if status != StatusCode::METHOD_NOT_ALLOWED {
                debug!("{}: no server stream", failure.detail);
            }
            return;
        }
        if response.content_type() != "text/event-stream" {
            return;
        }
        let opened = tokio::time::Instant::now();
        let mut ground = shared.ground.subscribe();
        let outcome = loop {
            let next = tokio::select! {
                next = tokio::time::timeout(shared.stream_idle, response.next_chunk(&what)) => next,
                Ok(()) = ground.changed() => {
                    let gone = ground.borrow_and_update().clone();
                    if super::super::address_gone(conn.local_addr(), &gone, &what).is_some() {
                        debug!("{what}: its local address left the machine; reopening it");
                        break Ok(());
                    }
                    continue;
                }
            };
            match next {
                Err(_) => {
                    debug!("{what}: silent for {:?}; reopening it", shared.stream_idle);
                    break Ok(());
                }
                Ok(Ok(Some(chunk))) => match parser.push(&chunk) {
                    Ok(events) => {
                        shared.deliver(events, None, &what).await;
                    }
                    Err(e) => {
                        warn!(
                            "{what}: an event larger than the {}-byte limit; reopening",
                            e.limit
                        );
                        parser = SseParser::new(shared.limits.max_message);
                        break Ok(());
                    }
                },
                Ok(Ok(None)) => break Ok(()),
                Ok(Err(failure)) => break Err(failure),
            }
        };
        drop(response);
        if let Err(failure) = &outcome {
            debug!("{}; reopening", failure.detail);
        }
        // A stream that keeps ending at once is paced, never spun.
        if opened.elapsed() < Duration::from_secs(1) {
            quick_ends += 1;
        } else {
            quick_ends = 0;
        }
        let pause = parser
            .retry_ms()
            .map(Duration::from_millis)
            .unwrap_or_default()
            .max(Duration::from_millis(50) * 2u32.saturating_pow(quick_ends.min(7)))
            .min(Duration::from_secs(5));
        if quick_ends > 0 || parser.retry_ms().is_some() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Ends the session, as clients SHOULD when they leave (405: the server
/// does not allow it, which is fine).
async fn end_session(shared: &Shared) {
    let headers = shared.base_headers();
    if !headers.contains_key(SESSION) {
        return;
    }
    let attempt = Attempt::new(Duration::from_secs(1));
    let _ = web::send(
        Method::DELETE,
        &shared.url,
        &headers,
        Bytes::new(),
        shared.insecure,
        attempt,
    )
    .await;
}

/// Keeps the protocol version an `initialize` answer negotiated.
fn note_version(shared: &Shared, body: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    if let Some(version) = message
        .pointer("/result/protocolVersion")
        .and_then(Value::as_str)
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        *lock(&shared.version) = Some(version);
    }
}

/// The 2026-07-28 era's headers, from a request's own `_meta`.
fn modern_headers(message: &Value, headers: &mut HeaderMap) {
    let params = jsonrpc::params(message);
    let Some(version) = params
        .pointer("/_meta/io.modelcontextprotocol~1protocolVersion")
        .and_then(Value::as_str)
    else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(version) {
        headers.insert(VERSION, value);
    }
    if let Some(method) = message.get("method").and_then(Value::as_str)
        && let Ok(value) = HeaderValue::from_str(method)
    {
        headers.insert(HeaderName::from_static("mcp-method"), value);
    }
    if let Some(name) = params
        .get("name")
        .or_else(|| params.get("uri"))
        .and_then(Value::as_str)
        && let Ok(value) = HeaderValue::from_str(name)
    {
        headers.insert(HeaderName::from_static("mcp-name"), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modern_requests_carry_their_headers() {
        let message = serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
        });
        let mut headers = HeaderMap::new();
        modern_headers(&message, &mut headers);
        assert_eq!(headers[VERSION], "2026-07-28");
        assert_eq!(headers["mcp-method"], "tools/call");
        assert_eq!(headers["mcp-name"], "echo");
        let legacy = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let mut headers = HeaderMap::new();
        modern_headers(&legacy, &mut headers);
        assert!(headers.is_empty());
    }
}
