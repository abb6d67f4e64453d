//! The MCP probe: ready when the server completes the protocol's own
//! handshake, not merely when its port is open.
//!
//! - Legacy era (2025-11-25 and before), streamable HTTP: POST `initialize`,
//!   read the result (JSON or an SSE stream), POST
//!   `notifications/initialized`, then DELETE the session it made.
//! - Legacy HTTP+SSE transport (2024-11-05): when the POST is refused with
//!   404/405 and no modern error, GET the URL, take the `endpoint` event, and
//!   run the same handshake through it.
//! - Modern era (2026-07-28): POST `server/discover` with the per-request
//!   `_meta`. A modern error in answer to `initialize` (or a legacy answer to
//!   `server/discover`) switches era once within an attempt; the era that
//!   worked is remembered for the next attempt.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};
use tether_resilience::{Cause, Failure, Phase, Verdict};

use crate::Ready;
use crate::attempt::Attempt;
use crate::sse::{SseParser, TooLarge};
use crate::target::{Era, McpSpec, display_url};
use crate::web::{self, Response};

/// The newest legacy-era protocol version we offer in `initialize`.
pub const LEGACY_VERSION: &str = "2025-11-25";
/// The modern-era protocol version we send with `server/discover`.
pub const MODERN_VERSION: &str = "2026-07-28";

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
const MAX_MESSAGE: usize = 4 << 20;

/// JSON-RPC codes that only a modern-era server sends: HeaderMismatch,
/// MissingRequiredClientCapability, UnsupportedProtocolVersion.
const MODERN_ERRORS: [i64; 3] = [-32020, -32021, -32022];

/// Probe state kept between attempts: the era the server turned out to
/// speak, so later attempts skip the detour.
#[derive(Debug, Default)]
pub(crate) struct McpState {
    era: Option<Era>,
}

/// How one era's handshake ended.
enum Outcome {
    Ready(Ready),
    /// The server speaks the other era.
    OtherEra,
}

pub(crate) async fn probe(
    spec: &McpSpec,
    state: &mut McpState,
    attempt: Attempt,
) -> Result<Ready, Failure> {
    let first = match (spec.era, state.era) {
        (Era::Auto, Some(seen)) => seen,
        (Era::Auto, None) => Era::Legacy,
        (forced, _) => forced,
    };
    let outcome = run(first, spec, attempt).await?;
    let (era, outcome) = match outcome {
        Outcome::OtherEra if spec.era == Era::Auto => {
            let other = if first == Era::Legacy {
                Era::Modern
            } else {
                Era::Legacy
            };
            (other, run(other, spec, attempt).await?)
        }
        outcome => (first, outcome),
    };
    match outcome {
        Outcome::Ready(ready) => {
            state.era = Some(era);
            Ok(ready)
        }
        Outcome::OtherEra => {
            let (asked, answered) = match era {
                Era::Modern => ("server/discover", "a legacy (initialize) server"),
                _ => ("initialize", "a modern (2026-07-28) server"),
            };
            Err(Failure::new(
                Phase::FirstByte,
                Cause::ProtocolMismatch,
                format!(
                    "{asked} at {}: the server answered as {answered}; drop the era option or set era=auto",
                    display_url(&spec.url)
                ),
            ))
        }
    }
}

async fn run(era: Era, spec: &McpSpec, attempt: Attempt) -> Result<Outcome, Failure> {
    match era {
        Era::Modern => modern(spec, attempt).await,
        Era::Legacy | Era::Auto => legacy(spec, attempt).await,
    }
}

// --- legacy era ---

fn initialize_request() -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": {},
            "clientInfo": { "name": "tether-probe", "version": env!("CARGO_PKG_VERSION") },
        },
    })
}

fn initialized_notification() -> Bytes {
    Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
}

async fn legacy(spec: &McpSpec, attempt: Attempt) -> Result<Outcome, Failure> {
    let what = format!("initialize at {}", display_url(&spec.url));
    let headers = post_headers(spec, &[]);
    let body = Bytes::from(initialize_request().to_string());
    let response = web::send(
        Method::POST,
        &spec.url,
        &headers,
        body,
        spec.insecure,
        attempt,
    )
    .await?;
    if response.status != StatusCode::OK {
        let status = response.status;
        let failure = response.status_failure(&what);
        let text = response
            .read_body(MAX_ERROR_BODY, &what, attempt)
            .await
            .unwrap_or_default();
        if is_modern_error(&text) {
            return Ok(Outcome::OtherEra);
        }
        if matches!(status.as_u16(), 404 | 405) {
            // Maybe the 2024-11-05 HTTP+SSE transport: its URL takes GET.
            return match legacy_sse(spec, attempt).await {
                Ok(ready) => Ok(Outcome::Ready(ready)),
                Err(sse) if sse.cause == Cause::Http(404) || sse.cause == Cause::Http(405) => {
                    Err(with_body(failure, &text).with_detail(format!(
                        "{what}: HTTP {} and no SSE endpoint either: is this the MCP endpoint URL?",
                        status.as_u16()
                    )))
                }
                Err(sse) => Err(sse),
            };
        }
        return Err(with_body(failure, &text));
    }
    let session = response.headers.get(SESSION_HEADER).cloned();
    let message = read_response(response, &what, attempt).await?;
    let (version, server) = initialize_result(&message, &what)?;

    let mut extra = vec![(
        HeaderName::from_static(VERSION_HEADER),
        header_value(&version),
    )];
    if let Some(id) = &session {
        extra.push((HeaderName::from_static(SESSION_HEADER), id.clone()));
    }
    let what_note = format!("notifications/initialized at {}", display_url(&spec.url));
    let note = web::send(
        Method::POST,
        &spec.url,
        &post_headers(spec, &extra),
        initialized_notification(),
        spec.insecure,
        attempt,
    )
    .await?;
    if !note.status.is_success() {
        return Err(note.status_failure(&what_note));
    }
    drop(note);
    if session.is_some() {
        end_session(spec, &extra, attempt).await;
    }
    let kind = if session.is_some() {
        "streamable HTTP session"
    } else {
        "streamable HTTP, no session"
    };
    Ok(Outcome::Ready(Ready::new(format!(
        "MCP server {server} completed the handshake (protocol {version}, {kind})"
    ))))
}

/// Closes the session the probe opened. Best effort and quick: a server that
/// does not allow DELETE (405) or is slow to answer costs nothing.
async fn end_session(spec: &McpSpec, extra: &[(HeaderName, HeaderValue)], attempt: Attempt) {
    let short = Attempt::new(
        attempt
            .remaining()
            .min(std::time::Duration::from_millis(250)),
    );
    let mut headers = HeaderMap::new();
    add_user_headers(&mut headers, spec);
    for (name, value) in extra {
        headers.insert(name, value.clone());
    }
    let _ = web::send(
        Method::DELETE,
        &spec.url,
        &headers,
        Bytes::new(),
        spec.insecure,
        short,
    )
    .await;
}

async fn legacy_sse(spec: &McpSpec, attempt: Attempt) -> Result<Ready, Failure> {
    let what = format!("GET {} (legacy SSE transport)", display_url(&spec.url));
    let mut headers = HeaderMap::new();
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("text/event-stream"),
    );
    add_user_headers(&mut headers, spec);
    let mut stream = web::send(
        Method::GET,
        &spec.url,
        &headers,
        Bytes::new(),
        spec.insecure,
        attempt,
    )
    .await?;
    if !stream.status.is_success() {
        return Err(stream.status_failure(&what));
    }
    if stream.content_type() != "text/event-stream" {
        return Err(not_mcp(&what, &stream.content_type()));
    }
    let mut parser = SseParser::new(MAX_MESSAGE);
    let endpoint = attempt
        .phase(Phase::FirstByte, &what, async {
            loop {
                for event in next_events(&mut stream, &mut parser, &what).await? {
                    if event.event == "endpoint" {
                        return Ok(event.data);
                    }
                }
            }
        })
        .await?;
    let endpoint = spec.url.join(endpoint.trim()).map_err(|e| {
        Failure::new(
            Phase::FirstByte,
            Cause::ProtocolMismatch,
            format!("{what}: bad endpoint event '{endpoint}' ({e})"),
        )
    })?;

    let what_init = format!("initialize at {}", display_url(&endpoint));
    let posted = web::send(
        Method::POST,
        &endpoint,
        &post_headers(spec, &[]),
        Bytes::from(initialize_request().to_string()),
        spec.insecure,
        attempt,
    )
    .await?;
    if !posted.status.is_success() {
        return Err(posted.status_failure(&what_init));
    }
    drop(posted);
    let message = attempt
        .phase(Phase::FirstByte, &what_init, async {
            loop {
                for event in next_events(&mut stream, &mut parser, &what_init).await? {
                    if let Some(message) = response_with_id(&event.data) {
                        return Ok(message);
                    }
                }
            }
        })
        .await?;
    let (version, server) = initialize_result(&message, &what_init)?;
    let note = web::send(
        Method::POST,
        &endpoint,
        &post_headers(spec, &[]),
        initialized_notification(),
        spec.insecure,
        attempt,
    )
    .await?;
    if !note.status.is_success() {
        return Err(note.status_failure(&format!(
            "notifications/initialized at {}",
            display_url(&endpoint)
        )));
    }
    // Dropping the GET stream ends the session.
    Ok(Ready::new(format!(
        "MCP server {server} completed the handshake (protocol {version}, legacy SSE transport)"
    )))
}

async fn next_events(
    stream: &mut Response,
    parser: &mut SseParser,
    what: &str,
) -> Result<Vec<crate::sse::SseEvent>, Failure> {
    match stream.next_chunk(what).await? {
        Some(chunk) => parser.push(&chunk).map_err(|e| too_large(what, e)),
        None => Err(Failure::new(
            Phase::Stream,
            Cause::ResetMidStream,
            format!("{what}: the event stream ended before the answer"),
        )),
    }
}

/// The protocol version and a name for the server from an `initialize`
/// response, or the failure it carries.
fn initialize_result(message: &Value, what: &str) -> Result<(String, String), Failure> {
    let result = result_of(message, what)?;
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| not_jsonrpc(what, "the initialize result has no protocolVersion"))?
        .to_string();
    Ok((version, server_name(result)))
}

// --- modern era ---

async fn modern(spec: &McpSpec, attempt: Attempt) -> Result<Outcome, Failure> {
    let what = format!("server/discover at {}", display_url(&spec.url));
    let request = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "server/discover",
        "params": { "_meta": {
            "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientInfo": { "name": "tether-probe", "version": env!("CARGO_PKG_VERSION") },
            "io.modelcontextprotocol/clientCapabilities": {},
        }},
    });
    let extra = [
        (
            HeaderName::from_static(VERSION_HEADER),
            HeaderValue::from_static(MODERN_VERSION),
        ),
        (
            HeaderName::from_static("mcp-method"),
            HeaderValue::from_static("server/discover"),
        ),
    ];
    let headers = post_headers(spec, &extra);
    let response = web::send(
        Method::POST,
        &spec.url,
        &headers,
        Bytes::from(request.to_string()),
        spec.insecure,
        attempt,
    )
    .await?;
    if response.status != StatusCode::OK {
        let failure = response.status_failure(&what);
        let text = response
            .read_body(MAX_ERROR_BODY, &what, attempt)
            .await
            .unwrap_or_default();
        return match modern_error(&text) {
            // A modern server that does not speak our modern version but
            // lists a legacy one: a dual-era server, so initialize works.
            Some((-32022, data)) if supports_legacy(&data) => Ok(Outcome::OtherEra),
            Some((-32022, data)) => Err(Failure::new(
                Phase::FirstByte,
                Cause::ProtocolMismatch,
                format!(
                    "{what}: the server supports only protocol versions {}",
                    data.get("supported").unwrap_or(&Value::Null)
                ),
            )),
            Some((code, _)) => Err(with_body(Failure::jsonrpc(code, "", &what), &text)),
            None if matches!(failure.cause, Cause::Http(400 | 404 | 405)) => Ok(Outcome::OtherEra),
            None => Err(with_body(failure, &text)),
        };
    }
    let message = read_response(response, &what, attempt).await?;
    if let Some(code) = message.pointer("/error/code").and_then(Value::as_i64) {
        // A legacy server that does not know the method.
        if code == -32601 || code == -32600 {
            return Ok(Outcome::OtherEra);
        }
    }
    let result = result_of(&message, &what)?;
    let versions = result
        .get("supportedVersions")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| MODERN_VERSION.to_string());
    Ok(Outcome::Ready(Ready::new(format!(
        "MCP server {} answered server/discover (protocol {versions})",
        server_name(result)
    ))))
}

fn supports_legacy(data: &Value) -> bool {
    data.get("supported")
        .and_then(Value::as_array)
        .is_some_and(|v| {
            v.iter()
                .filter_map(Value::as_str)
                .any(|s| s < MODERN_VERSION)
        })
}

// --- JSON-RPC over HTTP ---

const MAX_ERROR_BODY: usize = 4096;

fn post_headers(spec: &McpSpec, extra: &[(HeaderName, HeaderValue)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    add_user_headers(&mut headers, spec);
    for (name, value) in extra {
        headers.insert(name, value.clone());
    }
    headers
}

fn add_user_headers(headers: &mut HeaderMap, spec: &McpSpec) {
    for (name, value) in &spec.headers {
        headers.insert(name, value.clone());
    }
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(LEGACY_VERSION))
}

/// Reads the JSON-RPC response with id 1 from a JSON body or an SSE stream.
async fn read_response(
    mut response: Response,
    what: &str,
    attempt: Attempt,
) -> Result<Value, Failure> {
    let content_type = response.content_type();
    match content_type.as_str() {
        "application/json" => {
            let body = response.read_body(MAX_MESSAGE, what, attempt).await?;
            let value: Value = serde_json::from_slice(&body)
                .map_err(|e| not_jsonrpc(what, &format!("the body is not JSON ({e})")))?;
            let found = match &value {
                Value::Array(batch) => batch.iter().find(|m| is_response_to_us(m)).cloned(),
                single if is_response_to_us(single) => Some(value.clone()),
                _ => None,
            };
            found.ok_or_else(|| not_jsonrpc(what, "the body holds no response to the request"))
        }
        "text/event-stream" => {
            let mut parser = SseParser::new(MAX_MESSAGE);
            let reading = async {
                loop {
                    for event in next_events(&mut response, &mut parser, what).await? {
                        if let Some(message) = response_with_id(&event.data) {
                            return Ok(message);
                        }
                    }
                }
            };
            attempt.phase(Phase::Stream, what, reading).await
        }
        other => Err(not_mcp(what, other)),
    }
}

/// The JSON-RPC response to our request (id 1) in an SSE data field, if it
/// is one; notifications and server requests are skipped.
fn response_with_id(data: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(data).ok()?;
    is_response_to_us(&value).then_some(value)
}

fn is_response_to_us(message: &Value) -> bool {
    message.get("id").and_then(Value::as_i64) == Some(1)
        && (message.get("result").is_some() || message.get("error").is_some())
}

/// The `result` of a response, or its `error` as a failure.
fn result_of<'a>(message: &'a Value, what: &str) -> Result<&'a Value, Failure> {
    if let Some(error) = message.get("error") {
        let code = error.get("code").and_then(Value::as_i64).unwrap_or(-32603);
        let text = error.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(Failure::jsonrpc(code, text, what));
    }
    message
        .get("result")
        .ok_or_else(|| not_jsonrpc(what, "the response has neither result nor error"))
}

/// The server's name and version: `serverInfo` in a legacy result, the
/// `io.modelcontextprotocol/serverInfo` entry of `_meta` in a modern one.
fn server_name(result: &Value) -> String {
    let info = result
        .get("serverInfo")
        .or_else(|| result.pointer("/_meta/io.modelcontextprotocol~1serverInfo"));
    let field = |key| {
        info.and_then(|i| i.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (field("name"), field("version")) {
        (Some(name), Some(version)) => format!("'{name}' {version}"),
        (Some(name), None) => format!("'{name}'"),
        (None, _) => "(unnamed)".to_string(),
    }
}

/// A JSON-RPC error body that only a modern-era server sends.
fn is_modern_error(body: &[u8]) -> bool {
    modern_error(body).is_some()
}

fn modern_error(body: &[u8]) -> Option<(i64, Value)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let code = value.pointer("/error/code")?.as_i64()?;
    MODERN_ERRORS.contains(&code).then(|| {
        (
            code,
            value.pointer("/error/data").cloned().unwrap_or(Value::Null),
        )
    })
}

fn with_body(failure: Failure, body: &[u8]) -> Failure {
    let snippet = crate::snippet(body);
    if snippet.is_empty() {
        return failure;
    }
    let detail = format!("{}; body: {snippet}", failure.detail);
    failure.with_detail(detail)
}

fn not_jsonrpc(what: &str, why: &str) -> Failure {
    Failure::new(
        Phase::FirstByte,
        Cause::ProtocolMismatch,
        format!("{what}: not an MCP answer: {why}"),
    )
    .with_verdict(Verdict::Permanent)
}

fn not_mcp(what: &str, content_type: &str) -> Failure {
    let shown = if content_type.is_empty() {
        "no content type"
    } else {
        content_type
    };
    Failure::new(
        Phase::FirstByte,
        Cause::ProtocolMismatch,
        format!(
            "{what}: answered with {shown}, not JSON or an event stream: is this an MCP endpoint?"
        ),
    )
}

/// A line or an event past the parser's limit: the server sends more than
/// any MCP message should be.
fn too_large(what: &str, e: TooLarge) -> Failure {
    Failure::new(Phase::Stream, Cause::LimitReached, format!("{what}: {e}"))
        .with_origin(tether_resilience::Origin::Upstream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_modern_errors_only() {
        assert!(is_modern_error(br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32022,"message":"Unsupported protocol version","data":{"supported":["2026-07-28"]}}}"#));
        assert!(is_modern_error(
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32020,"message":"Header mismatch"}}"#
        ));
        assert!(!is_modern_error(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"Bad Request: No valid session ID provided"}}"#));
        assert!(!is_modern_error(b"Not Found"));
        assert!(supports_legacy(
            &json!({"supported": ["2026-07-28", "2025-11-25"]})
        ));
        assert!(!supports_legacy(&json!({"supported": ["2026-07-28"]})));
    }

    #[test]
    fn finds_our_response_among_other_messages() {
        assert!(
            response_with_id(r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#)
                .is_none()
        );
        assert!(
            response_with_id(r#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage"}"#)
                .is_none()
        );
        assert!(response_with_id(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#).is_some());
        assert!(response_with_id("").is_none());
    }

    #[test]
    fn initialize_results_and_errors() {
        let ok = json!({"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","serverInfo":{"name":"everything","version":"1.0"}}});
        assert_eq!(
            initialize_result(&ok, "x").unwrap(),
            ("2025-06-18".to_string(), "'everything' 1.0".to_string())
        );
        let err = json!({"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Unsupported protocol version"}});
        let f = initialize_result(&err, "initialize at u").unwrap_err();
        assert_eq!(f.cause, Cause::JsonRpc(-32602));
        assert_eq!(
            f.detail,
            "initialize at u: Unsupported protocol version (JSON-RPC error -32602)"
        );
        let odd = json!({"jsonrpc":"2.0","id":1,"result":{}});
        assert_eq!(
            initialize_result(&odd, "x").unwrap_err().cause,
            Cause::ProtocolMismatch
        );
    }
}
