//! MCP over HTTP: streamable HTTP (2025-03-26 and later), and the legacy
//! HTTP+SSE transport (2024-11-05) it falls back to.
//!
//! Streamable HTTP: every message is a POST; the answer comes as JSON or as
//! an SSE stream (resumed with `Last-Event-ID` if it breaks and the server
//! gave event ids); a GET stream carries what the server sends on its own,
//! reopened when it ends or stalls. The session id from the `initialize`
//! answer goes on every later request; a session the server forgot (404,
//! 400 "No valid session ID", 401/503 on a known session) is reported as
//! `session.lost`, so the session core starts a new one.
//!
//! Which transport a server speaks is found once, without side effects: a
//! GET that answers with an SSE stream starting with an `endpoint` event is
//! the legacy transport; anything else is streamable HTTP.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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

use super::{Events, Limits, Link, Outbound, Permit, UpEvent};
use crate::mcp::jsonrpc;
use crate::mcp::limits::{LINK_QUEUE, MAX_POSTS, Milestones};
use crate::mcp::session::breaks_link;

const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// How much of an error body is read, to classify and quote it.
const ERROR_BODY: usize = 4096;
/// Idle connections kept for reuse.
const POOL: usize = 8;
/// How often one answer stream is resumed before the request fails.
const MAX_RESUMES: u32 = 5;
/// How long the head of an answer may take. The session core's per-request
/// idle and total timeouts decide when a request has failed; this only
/// keeps a task from outliving any sensible configuration.
const ANSWER_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// Which HTTP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMode {
    Streamable,
    Sse,
}

/// An MCP server at an HTTP(S) URL.
#[derive(Debug, Clone)]
pub struct Http {
    /// Without userinfo: nothing that prints it can show a password.
    url: Url,
    /// How messages name it (userinfo masked).
    shown: String,
    insecure: bool,
    /// The user's headers, and `Authorization: Basic` from the URL's
    /// userinfo unless the user gave an `Authorization` of their own.
    headers: HeaderMap,
    /// `headers` has an `Authorization` made from the URL's userinfo
    /// (which a legacy endpoint on another origin must not get).
    url_authorization: bool,
    forced: Option<HttpMode>,
    detected: Arc<Mutex<Option<HttpMode>>>,
    limits: Limits,
    timeout: Duration,
    stream_idle: Duration,
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
    session: Mutex<Option<HeaderValue>>,
    version: Mutex<Option<HeaderValue>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Http {
    /// A user and password in `url` are sent as `Authorization: Basic`
    /// (unless `headers` has an `Authorization`), and are never shown.
    pub fn new(
        mut url: Url,
        insecure: bool,
        mut headers: HeaderMap,
        forced: Option<HttpMode>,
        limits: Limits,
        timeout: Duration,
    ) -> Http {
        let shown = super::redact(&url);
        let mut url_authorization = false;
        if let Some(basic) = super::take_credentials(&mut url)
            && !headers.contains_key(header::AUTHORIZATION)
        {
            headers.insert(header::AUTHORIZATION, basic);
            url_authorization = true;
        }
        Http {
            url,
            shown,
            insecure,
            headers,
            url_authorization,
            forced,
            detected: Arc::new(Mutex::new(None)),
            limits,
            timeout,
            stream_idle: Duration::from_secs(300),
        }
    }

    /// Reopens a GET stream that has been silent this long.
    pub fn with_stream_idle(mut self, idle: Duration) -> Http {
        self.stream_idle = idle;
        self
    }

    pub fn name(&self) -> String {
        self.shown.clone()
    }

    /// The transport found (or forced), once known.
    pub fn mode(&self) -> Option<HttpMode> {
        self.forced.or(*lock(&self.detected))
    }

    /// Opens a connection: the readiness check and, on the legacy
    /// transport, the session itself.
    pub async fn connect(&self, events: Events) -> Result<Link, Failure> {
        match self.mode() {
            Some(HttpMode::Sse) => {
                let stream = self.open_sse().await?;
                Ok(self.sse_link(stream, events))
            }
            Some(HttpMode::Streamable) => {
                let attempt = Attempt::new(self.timeout);
                let conn = web::connect(&self.url, self.insecure, attempt).await?;
                Ok(self.streamable_link(Some(conn), events))
            }
            None => match self.detect().await? {
                Some(stream) => {
                    *lock(&self.detected) = Some(HttpMode::Sse);
                    debug!(url = %self.url, "the server speaks the legacy HTTP+SSE transport");
                    Ok(self.sse_link(stream, events))
                }
                None => {
                    *lock(&self.detected) = Some(HttpMode::Streamable);
                    debug!(url = %self.url, "the server speaks streamable HTTP");
                    Ok(self.streamable_link(None, events))
                }
            },
        }
    }

    /// GETs the URL: an SSE stream that starts with an `endpoint` event is
    /// the legacy transport (and its session); anything else means
    /// streamable HTTP.
    async fn detect(&self) -> Result<Option<LegacyStream>, Failure> {
        let what = format!("GET {}", self.url);
        let response = self.get_events().await?;
        if !response.status.is_success() || response.content_type() != "text/event-stream" {
            return Ok(None);
        }
        // A legacy server names its endpoint at once.
        let quick = Attempt::new(self.timeout.min(Duration::from_millis(500)));
        match endpoint(response, &self.url, &what, self.limits, quick).await {
            Ok(stream) => Ok(Some(stream)),
            Err(f) if f.cause.is_timeout() => Ok(None),
            Err(f) => Err(f),
        }
    }

    async fn open_sse(&self) -> Result<LegacyStream, Failure> {
        let attempt = Attempt::new(self.timeout);
        let what = format!("GET {} (legacy SSE transport)", self.url);
        let response = self.get_events().await?;
        if !response.status.is_success() {
            return Err(response.status_failure(&what));
        }
        if response.content_type() != "text/event-stream" {
            return Err(Failure::new(
                Phase::FirstByte,
                Cause::ProtocolMismatch,
                format!(
                    "{what}: answered {:?}, not an event stream",
                    response.content_type()
                ),
            ));
        }
        endpoint(response, &self.url, &what, self.limits, attempt).await
    }

    /// GETs the URL asking for an event stream, on a connection of its own.
    async fn get_events(&self) -> Result<Response, Failure> {
        let mut headers = self.headers.clone();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let attempt = Attempt::new(self.timeout);
        web::send(
            Method::GET,
            &self.url,
            &headers,
            Bytes::new(),
            self.insecure,
            attempt,
        )
        .await
    }

    fn streamable_link(&self, warm: Option<Connection>, events: Events) -> Link {
        let shared = Arc::new(Shared {
            url: self.url.clone(),
            insecure: self.insecure,
            headers: self.headers.clone(),
            limits: self.limits,
            timeout: self.timeout,
            stream_idle: self.stream_idle,
            events,
            pool: Mutex::new(warm.into_iter().collect()),
            session: Mutex::new(None),
            version: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        Link::new(tx, tokio::spawn(streamable(shared, rx)))
    }

    fn sse_link(&self, stream: LegacyStream, events: Events) -> Link {
        let mut headers = self.headers.clone();
        let user_authorization =
            headers.contains_key(header::AUTHORIZATION) && !self.url_authorization;
        if !user_authorization {
            match &stream.authorization {
                // The endpoint's own userinfo.
                Some(basic) => {
                    headers.insert(header::AUTHORIZATION, basic.clone());
                }
                // The URL's credentials stay with its origin.
                None if stream.endpoint.origin() != self.url.origin() => {
                    headers.remove(header::AUTHORIZATION);
                }
                None => {}
            }
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let task = tokio::spawn(legacy(
            stream,
            rx,
            events,
            headers,
            self.insecure,
            self.timeout,
        ));
        Link::new(tx, task)
    }
}

// --- streamable HTTP ---

/// What a finished POST asks of the connection task.
enum Posted {
    Nothing,
    /// The session is set up: open the GET stream.
    OpenStream,
}

async fn streamable(shared: Arc<Shared>, mut rx: mpsc::Receiver<Outbound>) {
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

    /// Reports a failed message: a request's own failure, or a failure of
    /// the link.
    async fn failed(&self, id: Option<u64>, failure: Failure) {
        match id {
            Some(id) => {
                self.events
                    .send(UpEvent::RequestFailed { id, failure })
                    .await
            }
            None if breaks_link(&failure) => self.events.lost(failure).await,
            None => warn!("{}", failure.detail),
        }
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
        let failure = response.status_failure(&what);
        let body = response
            .read_body(ERROR_BODY, &what, Attempt::new(Duration::from_millis(500)))
            .await
            .unwrap_or_default();
        shared.give_back(conn);
        let text = String::from_utf8_lossy(&body);
        let failure = if sent_session && session_lost(status, &text) {
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
    loop {
        let ended = loop {
            match response.next_chunk(what).await {
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
        let (_conn, mut response) = match shared.request(Method::GET, &headers, Bytes::new()).await
        {
            Ok(sent) => sent,
            Err(failure) => {
                if breaks_link(&failure) {
                    shared.events.lost(failure).await;
                }
                return;
            }
        };
        let status = response.status;
        if !status.is_success() {
            let failure = response.status_failure(&what);
            let body = response
                .read_body(ERROR_BODY, &what, Attempt::new(Duration::from_millis(500)))
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            if sent_session && session_lost(status, &text) {
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
        let outcome = loop {
            match tokio::time::timeout(shared.stream_idle, response.next_chunk(&what)).await {
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

/// Whether an error status on a request that carried a session id says the
/// session is gone, in the dialects servers use.
fn session_lost(status: StatusCode, body: &str) -> bool {
    let body = body.to_ascii_lowercase();
    match status.as_u16() {
        404 | 401 | 503 => true,
        400 => body.contains("session") || body.contains("not initialized"),
        _ => false,
    }
}

/// The server forgot the session, so it did not run the request.
fn session_gone(what: &str, status: StatusCode, body: &str) -> Failure {
    Failure::new(
        Phase::FirstByte,
        Cause::SessionLost,
        format!(
            "{what}: HTTP {}: the server no longer knows the session{}",
            status.as_u16(),
            quote(body)
        ),
    )
    .with_safety(Safety::NotSent)
}

fn quote(body: &str) -> String {
    let text: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return String::new();
    }
    let cut: String = text.chars().take(200).collect();
    format!("; body: {cut:?}")
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

// --- the legacy HTTP+SSE transport ---

/// An open legacy event stream and the endpoint it named for POSTs.
#[derive(Debug)]
struct LegacyStream {
    response: Response,
    parser: SseParser,
    /// Without userinfo.
    endpoint: Url,
    /// `Authorization: Basic` from userinfo the endpoint event gave.
    authorization: Option<HeaderValue>,
}

/// Reads the stream until its `endpoint` event.
async fn endpoint(
    mut response: Response,
    base: &Url,
    what: &str,
    limits: Limits,
    attempt: Attempt,
) -> Result<LegacyStream, Failure> {
    let mut parser = SseParser::new(limits.max_message);
    let data = attempt
        .phase(Phase::FirstByte, what, async {
            loop {
                let Some(chunk) = response.next_chunk(what).await? else {
                    return Err(Failure::new(
                        Phase::Stream,
                        Cause::ResetMidStream,
                        format!("{what}: the stream ended before an endpoint event"),
                    ));
                };
                let events = parser.push(&chunk).map_err(|e| {
                    Failure::new(
                        Phase::Stream,
                        Cause::LimitReached,
                        format!("{what}: an event larger than the {}-byte limit", e.limit),
                    )
                })?;
                if let Some(event) = events.into_iter().find(|e| e.event == "endpoint") {
                    return Ok(event.data);
                }
            }
        })
        .await?;
    let mut endpoint = base.join(data.trim()).map_err(|e| {
        Failure::new(
            Phase::FirstByte,
            Cause::ProtocolMismatch,
            format!(
                "{what}: a bad endpoint event {:?} ({e})",
                super::redact_text(&data)
            ),
        )
    })?;
    let authorization = super::take_credentials(&mut endpoint);
    Ok(LegacyStream {
        response,
        parser,
        endpoint,
        authorization,
    })
}

async fn legacy(
    mut stream: LegacyStream,
    mut rx: mpsc::Receiver<Outbound>,
    events: Events,
    headers: HeaderMap,
    insecure: bool,
    timeout: Duration,
) {
    let what = format!("the SSE stream of {}", stream.endpoint);
    let mut posts = JoinSet::new();
    let endpoint = Arc::new(stream.endpoint.clone());
    let saturated = Milestones::new();
    let mut was_full = false;
    // Room in the session's queue, taken before reading the stream: while
    // the session is behind, the stream is not read and TCP holds the
    // server back.
    let mut permit: Option<Permit> = None;
    loop {
        // Bounded like streamable HTTP's POSTs.
        let full = posts.len() >= MAX_POSTS;
        if full
            && !was_full
            && let Some(n) = saturated.hit()
        {
            warn!(
                "{endpoint}: {MAX_POSTS} POSTs are open at once; the next messages wait ({n} times so far)"
            );
        }
        was_full = full;
        tokio::select! {
            out = rx.recv(), if !full => match out {
                Some(Outbound::Message(message)) => {
                    posts.spawn(legacy_post(
                        endpoint.clone(),
                        message,
                        headers.clone(),
                        insecure,
                        timeout,
                        events.clone(),
                    ));
                }
                // Dropping the stream ends the session.
                Some(Outbound::Close) | None => return,
            },
            taken = events.reserve(), if permit.is_none() => match taken {
                Some(taken) => permit = Some(taken),
                None => return,
            },
            chunk = stream.response.next_chunk(&what), if permit.is_some() => match chunk {
                Ok(Some(chunk)) => match stream.parser.push(&chunk) {
                    Ok(list) => {
                        let mut messages = Vec::new();
                        for event in list {
                            if event.event != "message" {
                                continue;
                            }
                            match serde_json::from_str::<Value>(&event.data) {
                                Ok(message) => messages.push(message),
                                Err(e) => warn!("{what}: an event that is not JSON ({e}); ignored"),
                            }
                        }
                        if !messages.is_empty() && let Some(permit) = permit.take() {
                            permit.send(UpEvent::Messages(messages));
                        }
                    }
                    Err(e) => {
                        drop(permit.take());
                        events.lost(Failure::new(
                            Phase::Stream,
                            Cause::LimitReached,
                            format!("{what}: an event larger than the {}-byte limit", e.limit),
                        )).await;
                        return;
                    }
                },
                Ok(None) => {
                    drop(permit.take());
                    events.lost(Failure::new(
                        Phase::Stream,
                        Cause::ResetMidStream,
                        format!("{what} ended"),
                    )).await;
                    return;
                }
                Err(failure) => {
                    drop(permit.take());
                    events.lost(failure).await;
                    return;
                }
            },
            Some(_) = posts.join_next() => {}
        }
    }
}

async fn legacy_post(
    endpoint: Arc<Url>,
    message: Value,
    mut headers: HeaderMap,
    insecure: bool,
    timeout: Duration,
    events: Events,
) {
    let id = message
        .get("method")
        .and_then(|_| message.get("id"))
        .and_then(Value::as_u64);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let what = format!("POST {endpoint}");
    let body = Bytes::from(message.to_string());
    let result = async {
        let mut conn = web::connect(&endpoint, insecure, Attempt::new(timeout)).await?;
        conn.request(
            Method::POST,
            &endpoint,
            &headers,
            body,
            Attempt::new(ANSWER_LIMIT),
        )
        .await
        .map_err(|e| e.failure)
    }
    .await;
    let failure = match result {
        Ok(response) if response.status.is_success() => return,
        Ok(response) => {
            let status = response.status;
            let failure = response.status_failure(&what);
            let body = response
                .read_body(ERROR_BODY, &what, Attempt::new(Duration::from_millis(500)))
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            let lower = text.to_ascii_lowercase();
            if status == StatusCode::NOT_FOUND
                || (status == StatusCode::BAD_REQUEST && lower.contains("session"))
            {
                // The session lives in the endpoint URL; the server forgot it.
                session_gone(&what, status, &text)
            } else {
                let detail = format!("{}{}", failure.detail, quote(&text));
                failure.with_detail(detail)
            }
        }
        Err(failure) => failure,
    };
    match id {
        Some(id) => events.send(UpEvent::RequestFailed { id, failure }).await,
        None if breaks_link(&failure) => events.lost(failure).await,
        None => warn!("{}", failure.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_lost_dialects() {
        assert!(session_lost(StatusCode::NOT_FOUND, "Session not found"));
        assert!(session_lost(
            StatusCode::BAD_REQUEST,
            r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null}"#
        ));
        assert!(session_lost(
            StatusCode::BAD_REQUEST,
            "Server not initialized"
        ));
        assert!(session_lost(StatusCode::UNAUTHORIZED, ""));
        assert!(session_lost(StatusCode::SERVICE_UNAVAILABLE, ""));
        assert!(!session_lost(StatusCode::BAD_REQUEST, "Invalid JSON"));
        assert!(!session_lost(StatusCode::INTERNAL_SERVER_ERROR, "session"));
    }

    #[test]
    fn url_credentials_become_basic_authorization_unless_one_is_given() {
        let limits = Limits { max_message: 1024 };
        let url = Url::parse("http://user:p%40ss@127.0.0.1:3001/mcp").unwrap();
        let http = Http::new(
            url.clone(),
            false,
            HeaderMap::new(),
            None,
            limits,
            Duration::from_secs(1),
        );
        assert_eq!(http.name(), "http://***:***@127.0.0.1:3001/mcp");
        assert_eq!(http.url.as_str(), "http://127.0.0.1:3001/mcp");
        assert_eq!(http.headers[header::AUTHORIZATION], "Basic dXNlcjpwQHNz");
        assert!(http.headers[header::AUTHORIZATION].is_sensitive());
        // The user's own Authorization wins.
        let mut given = HeaderMap::new();
        given.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        let http = Http::new(url, false, given, None, limits, Duration::from_secs(1));
        assert_eq!(http.headers[header::AUTHORIZATION], "Bearer abc");
        assert!(!http.url_authorization);
        assert_eq!(http.url.as_str(), "http://127.0.0.1:3001/mcp");
    }

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
