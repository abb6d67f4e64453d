//! etcd's v3 API through its JSON gateway (`POST /v3/...` on the client
//! port, part of etcd since 3.3 and on by default): the calls the registry
//! needs, over tether's own HTTP client, so failures are classified like
//! every other connection tether makes.
//!
//! Keys and values are base64 in JSON; 64-bit numbers come as strings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::{Value, json};
use tether_probe::attempt::Attempt;
use tether_probe::web::{self, Response};
use url::Url;

/// The largest response read: a list of 1,000 records is about 1 MiB.
const MAX_RESPONSE: usize = 64 << 20;

/// gRPC's NOT_FOUND, which etcd gives for an unknown lease.
const NOT_FOUND: i64 = 5;

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// No endpoint answered; the last one's failure, in words, and whether
    /// it was there but silent (a timeout) rather than absent.
    Unreachable { words: String, silent: bool },
    /// etcd answered with an error.
    Server { code: i64, message: String },
    /// etcd answered something that is not its API.
    Garbled(String),
}

impl CallError {
    pub(crate) fn lease_unknown(&self) -> bool {
        matches!(self, CallError::Server { code, message }
            if *code == NOT_FOUND && message.contains("lease not found"))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable { words, .. } => f.write_str(words),
            CallError::Server { code, message } => write!(f, "etcd said: {message} (code {code})"),
            CallError::Garbled(why) => f.write_str(why),
        }
    }
}

/// The cluster's client URLs, tried in turn from the last one that worked.
#[derive(Debug)]
pub(crate) struct Client {
    endpoints: Vec<Url>,
    current: AtomicUsize,
}

impl Client {
    pub(crate) fn new(endpoints: Vec<Url>) -> Client {
        Client {
            endpoints,
            current: AtomicUsize::new(0),
        }
    }

    pub(crate) fn endpoints(&self) -> &[Url] {
        &self.endpoints
    }

    /// One unary call, `budget` per endpoint tried.
    pub(crate) async fn call(
        &self,
        path: &str,
        body: &Value,
        budget: Duration,
    ) -> Result<Value, CallError> {
        let (response, what) = self.send(path, body, budget).await?;
        let status = response.status;
        let bytes = response
            .read_body(MAX_RESPONSE, &what, Attempt::new(budget))
            .await
            .map_err(|f| unreachable(&f))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Garbled(format!(
                "{what}: HTTP {}, not etcd's JSON ({e})",
                status.as_u16()
            ))
        })?;
        if let Some(e) = server_error(&value) {
            return Err(e);
        }
        if !status.is_success() {
            return Err(CallError::Garbled(format!(
                "{what}: HTTP {}",
                status.as_u16()
            )));
        }
        Ok(value)
    }

    /// Opens a streaming call (a watch); the response's body is a sequence
    /// of JSON objects.
    pub(crate) async fn stream(
        &self,
        path: &str,
        body: &Value,
        budget: Duration,
    ) -> Result<(Response, String), CallError> {
        let (response, what) = self.send(path, body, budget).await?;
        if !response.status.is_success() {
            let status = response.status.as_u16();
            let bytes = response
                .read_body(64 << 10, &what, Attempt::new(budget))
                .await
                .unwrap_or_default();
            let value = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
            return Err(server_error(&value)
                .unwrap_or_else(|| CallError::Garbled(format!("{what}: HTTP {status}"))));
        }
        Ok((response, what))
    }

    async fn send(
        &self,
        path: &str,
        body: &Value,
        budget: Duration,
    ) -> Result<(Response, String), CallError> {
        let body = Bytes::from(body.to_string());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let first = self.current.load(Ordering::Relaxed);
        let mut last = CallError::Unreachable {
            words: "no etcd endpoint".to_string(),
            silent: false,
        };
        for i in 0..self.endpoints.len() {
            let n = (first + i) % self.endpoints.len();
            let Ok(url) = self.endpoints[n].join(path) else {
                continue;
            };
            let what = format!("etcd {}{path}", endpoint_name(&self.endpoints[n]));
            let attempt = Attempt::new(budget);
            match web::send(Method::POST, &url, &headers, body.clone(), false, attempt).await {
                Ok(response) => {
                    self.current.store(n, Ordering::Relaxed);
                    return Ok((response, what));
                }
                Err(failure) => {
                    last = unreachable(&failure);
                    if let CallError::Unreachable { words, .. } = &mut last {
                        *words = format!("{what}: {words}");
                    }
                }
            }
        }
        Err(last)
    }
}

fn unreachable(failure: &tether_resilience::Failure) -> CallError {
    CallError::Unreachable {
        words: failure.to_string(),
        silent: failure.symptom() == tether_resilience::failure::Symptom::Unresponsive,
    }
}

/// The largest message read from a stream.
const MAX_MESSAGE: usize = 16 << 20;

/// The JSON objects of a streamed answer (a watch), one at a time.
pub(crate) struct Messages {
    response: Response,
    what: String,
    buffer: Vec<u8>,
    ready: std::collections::VecDeque<Value>,
}

impl Messages {
    pub(crate) fn new((response, what): (Response, String)) -> Messages {
        Messages {
            response,
            what,
            buffer: Vec::new(),
            ready: std::collections::VecDeque::new(),
        }
    }

    /// The next message, or why there is none: the stream ended or
    /// failed, sent what is not JSON, or a message over 16 MiB.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: what was read stays buffered here.
    pub(crate) async fn next(&mut self) -> Result<Value, String> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Ok(message);
            }
            let chunk = match self.response.next_chunk(&self.what).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Err(format!("{}: the stream ended", self.what)),
                Err(f) => return Err(f.to_string()),
            };
            self.buffer.extend_from_slice(&chunk);
            let mut used = 0;
            let mut parsed =
                serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Value>();
            loop {
                match parsed.next() {
                    Some(Ok(message)) => {
                        used = parsed.byte_offset();
                        self.ready.push_back(message);
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(format!("{}: not etcd's JSON: {e}", self.what)),
                    None => break,
                }
            }
            self.buffer.drain(..used);
            if self.buffer.len() > MAX_MESSAGE {
                return Err(format!("{}: a message over {MAX_MESSAGE} bytes", self.what));
            }
        }
    }
}

/// `HOST:PORT` of an endpoint URL.
pub(crate) fn endpoint_name(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => url.to_string(),
    }
}

/// The error in a gateway answer: `{"error": "...", "code": 5, ...}`, or
/// in a stream `{"error": {"grpc_code": 5, "message": "..."}}`.
pub(crate) fn server_error(value: &Value) -> Option<CallError> {
    let error = value.get("error")?;
    let (code, message) = match error {
        Value::Object(o) => (
            o.get("grpc_code").or_else(|| o.get("code")).and_then(int),
            o.get("message").and_then(Value::as_str),
        ),
        Value::String(s) => (value.get("code").and_then(int), Some(s.as_str())),
        _ => (None, None),
    };
    Some(CallError::Server {
        code: code.unwrap_or(-1),
        message: value
            .get("message")
            .and_then(Value::as_str)
            .or(message)
            .unwrap_or("an error without a message")
            .to_string(),
    })
}

/// A JSON number or a decimal string (how the gateway sends int64s).
pub(crate) fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub(crate) fn unb64(value: Option<&Value>) -> Option<Vec<u8>> {
    match value {
        // Empty values are omitted.
        None => Some(Vec::new()),
        Some(Value::String(s)) => B64.decode(s).ok(),
        Some(_) => None,
    }
}

/// The key just after every key that starts with `prefix`: etcd's
/// `range_end` for a prefix.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the key space.
    vec![0]
}

/// A range request for every key under `prefix`.
pub(crate) fn range(prefix: &[u8]) -> Value {
    json!({ "key": b64(prefix), "range_end": b64(&prefix_end(prefix)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"tether/"), b"tether0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn gateway_errors_are_read_in_both_shapes() {
        let unary = json!({"error": "etcdserver: requested lease not found", "code": 5,
            "message": "etcdserver: requested lease not found"});
        let e = server_error(&unary).unwrap();
        assert!(e.lease_unknown(), "{e:?}");
        let stream = json!({"error": {"grpc_code": 14, "http_code": 503,
            "message": "etcdserver: no leader", "http_status": "Service Unavailable"}});
        assert_eq!(
            server_error(&stream),
            Some(CallError::Server {
                code: 14,
                message: "etcdserver: no leader".to_string()
            })
        );
        assert_eq!(server_error(&json!({"result": {}})), None);
    }

    #[test]
    fn int64s_come_as_strings() {
        assert_eq!(
            int(&json!("4111120383869290757")),
            Some(4111120383869290757)
        );
        assert_eq!(int(&json!(3)), Some(3));
        assert_eq!(int(&json!("x")), None);
        assert_eq!(unb64(None), Some(Vec::new()));
        assert_eq!(unb64(Some(&json!("aGVsbG8="))), Some(b"hello".to_vec()));
        assert_eq!(unb64(Some(&json!("!!"))), None);
    }
}
