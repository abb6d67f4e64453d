//! The legacy HTTP+SSE transport (2024-11-05): a GET opens an event stream
//! whose first `endpoint` event names the URL to POST messages to (the
//! session lives in that URL); what the server sends, answers included,
//! comes as `message` events on that stream. Each POST goes on a
//! connection of its own; a 404, or a 400 that names the session
//! ([`lost::legacy_status`]), says the server forgot the session.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::Value;
use tether_probe::attempt::Attempt;
use tether_probe::sse::SseParser;
use tether_probe::web::{self, Response};
use tether_resilience::{Cause, Failure, Phase};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::warn;
use url::Url;

use super::{ANSWER_LIMIT, Http, error_answer, quote, report, session_gone};
use crate::mcp::limits::{LINK_QUEUE, MAX_POSTS, Milestones};
use crate::mcp::lost;
use crate::mcp::upstream::{
    Events, Limits, Link, Outbound, Permit, UpEvent, redact_text, take_credentials,
};

/// An open legacy event stream and the endpoint it named for POSTs.
#[derive(Debug)]
pub(super) struct LegacyStream {
    response: Response,
    parser: SseParser,
    /// Without userinfo.
    endpoint: Url,
    /// `Authorization: Basic` from userinfo the endpoint event gave.
    authorization: Option<HeaderValue>,
}

/// Opens the event stream of a server known to speak the legacy
/// transport, and reads it until its `endpoint` event.
pub(super) async fn open(http: &Http) -> Result<LegacyStream, Failure> {
    let attempt = Attempt::new(http.timeout);
    let what = format!("GET {} (legacy SSE transport)", http.url);
    let response = http.get_events().await?;
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
    endpoint(response, &http.url, &what, http.limits, attempt).await
}

/// Reads the stream until its `endpoint` event.
pub(super) async fn endpoint(
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
                redact_text(&data)
            ),
        )
    })?;
    let authorization = take_credentials(&mut endpoint);
    Ok(LegacyStream {
        response,
        parser,
        endpoint,
        authorization,
    })
}

/// Starts the connection task on an open stream. An `Authorization` made
/// from the URL's userinfo stays with the URL's origin; an endpoint's own
/// userinfo becomes its `Authorization`; one the user gave goes everywhere.
pub(super) fn link(http: &Http, stream: LegacyStream, events: Events) -> Link {
    let mut headers = http.headers.clone();
    let user_authorization = headers.contains_key(header::AUTHORIZATION) && !http.url_authorization;
    if !user_authorization {
        match &stream.authorization {
            // The endpoint's own userinfo.
            Some(basic) => {
                headers.insert(header::AUTHORIZATION, basic.clone());
            }
            // The URL's credentials stay with its origin.
            None if stream.endpoint.origin() != http.url.origin() => {
                headers.remove(header::AUTHORIZATION);
            }
            None => {}
        }
    }
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let task = tokio::spawn(run(
        stream,
        rx,
        events,
        headers,
        http.insecure,
        http.timeout,
    ));
    Link::new(tx, task)
}

async fn run(
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
                    posts.spawn(post(
                        endpoint.clone(),
                        message,
                        headers.clone(),
                        insecure,
                        timeout,
                        events.clone(),
                    ));
                }
                // The session core's revalidation ping is answered on the
                // event stream: a dead stream is found by its timeout.
                Some(Outbound::Revalidate { .. }) => {}
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

async fn post(
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
            let (failure, text) = error_answer(response, &what).await;
            if lost::legacy_status(status, &text) {
                // The session lives in the endpoint URL; the server forgot it.
                session_gone(&what, status, &text)
            } else {
                let detail = format!("{}{}", failure.detail, quote(&text));
                failure.with_detail(detail)
            }
        }
        Err(failure) => failure,
    };
    report(&events, id, failure).await;
}
