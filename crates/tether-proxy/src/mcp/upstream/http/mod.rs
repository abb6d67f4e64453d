//! MCP over HTTP: streamable HTTP (2025-03-26 and later, in
//! `streamable.rs`), and the legacy HTTP+SSE transport (2024-11-05, in
//! `sse.rs`) it falls back to.
//!
//! Which transport a server speaks is found once, without side effects: a
//! GET that answers with an SSE stream starting with an `endpoint` event is
//! the legacy transport; anything else is streamable HTTP.
//!
//! This file holds what both share: the server's URL with its credentials
//! and headers ([`Http`]), the detection, and the handling of an error
//! answer (its body quoted, a forgotten session as `session.lost`, a
//! failure reported for its request or for the link).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use tether_probe::attempt::Attempt;
use tether_probe::web::{self, Response};
use tether_resilience::{Cause, Failure, Phase, Safety};
use tracing::{debug, warn};
use url::Url;

use super::{Events, Limits, Link, UpEvent, redact, take_credentials};
use crate::mcp::lost;

mod sse;
mod streamable;

/// How much of an error body is read, to classify and quote it.
const ERROR_BODY: usize = 4096;
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
    /// Where the server is now, for one found in a registry: each connect
    /// goes to the latest URL, or fails with the words while there is none.
    follow: Option<tokio::sync::watch::Receiver<Result<Url, String>>>,
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
        let shown = redact(&url);
        let mut url_authorization = false;
        if let Some(basic) = take_credentials(&mut url)
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
            follow: None,
        }
    }

    /// Follows a server that moves (found in a registry): every connect
    /// goes to the URL `follow` holds then, and the transport is detected
    /// again when it changed. `shown` names the upstream in messages.
    pub fn following(
        mut self,
        shown: String,
        follow: tokio::sync::watch::Receiver<Result<Url, String>>,
    ) -> Http {
        self.shown = shown;
        self.follow = Some(follow);
        self
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
        if let Some(follow) = &self.follow {
            let now = follow.borrow().clone();
            return match now {
                Err(why) => Err(Failure::new(Phase::Connect, Cause::PathMissing, why)),
                Ok(mut url) => {
                    // Credentials in a registered endpoint are not sent:
                    // anyone who can register could collect them.
                    let _ = take_credentials(&mut url);
                    let mut here = self.clone();
                    here.follow = None;
                    if here.url != url {
                        here.url = url;
                        here.detected = Arc::new(Mutex::new(None));
                    }
                    Box::pin(here.connect(events)).await
                }
            };
        }
        match self.mode() {
            Some(HttpMode::Sse) => {
                let stream = sse::open(self).await?;
                Ok(sse::link(self, stream, events))
            }
            Some(HttpMode::Streamable) => {
                let attempt = Attempt::new(self.timeout);
                let conn = web::connect(&self.url, self.insecure, attempt).await?;
                Ok(streamable::link(self, Some(conn), events))
            }
            None => match self.detect().await? {
                Some(stream) => {
                    *lock(&self.detected) = Some(HttpMode::Sse);
                    debug!(url = %self.url, "the server speaks the legacy HTTP+SSE transport");
                    Ok(sse::link(self, stream, events))
                }
                None => {
                    *lock(&self.detected) = Some(HttpMode::Streamable);
                    debug!(url = %self.url, "the server speaks streamable HTTP");
                    Ok(streamable::link(self, None, events))
                }
            },
        }
    }

    /// GETs the URL: an SSE stream that starts with an `endpoint` event is
    /// the legacy transport (and its session); anything else means
    /// streamable HTTP.
    async fn detect(&self) -> Result<Option<sse::LegacyStream>, Failure> {
        let what = format!("GET {}", self.url);
        let response = self.get_events().await?;
        if !response.status.is_success() || response.content_type() != "text/event-stream" {
            return Ok(None);
        }
        // A legacy server names its endpoint at once.
        let quick = Attempt::new(self.timeout.min(Duration::from_millis(500)));
        match sse::endpoint(response, &self.url, &what, self.limits, quick).await {
            Ok(stream) => Ok(Some(stream)),
            Err(f) if f.cause.is_timeout() => Ok(None),
            Err(f) => Err(f),
        }
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
}

/// Reports a failed message: a request's own failure, or a failure of
/// the link.
async fn report(events: &Events, id: Option<u64>, failure: Failure) {
    match id {
        Some(id) => events.send(UpEvent::RequestFailed { id, failure }).await,
        None if lost::breaks_link(&failure) => events.lost(failure).await,
        None => warn!("{}", failure.detail),
    }
}

/// An error answer: its status as a failure, and the first bytes of its
/// body, to classify and quote.
async fn error_answer(response: Response, what: &str) -> (Failure, String) {
    let failure = response.status_failure(what);
    let body = response
        .read_body(ERROR_BODY, what, Attempt::new(Duration::from_millis(500)))
        .await
        .unwrap_or_default();
    (failure, String::from_utf8_lossy(&body).into_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
