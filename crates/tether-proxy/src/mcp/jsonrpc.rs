//! JSON-RPC 2.0 messages as MCP uses them: what kind a message is, and the
//! error responses tether writes itself.

use serde_json::{Map, Value, json};
use tether_resilience::Failure;

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The upstream failed, or was unreachable, for this request.
pub const UPSTREAM_ERROR: i64 = -32000;
/// The request timed out (the code the MCP SDKs use for their own timeouts).
pub const REQUEST_TIMEOUT: i64 = -32001;

/// What a message is, by its members.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Has a `method` and an `id`: expects an answer.
    Request { id: Value, method: String },
    /// Has a `method` and no `id`.
    Notification { method: String },
    /// Has an `id` and a `result` or an `error`.
    Response { id: Value },
    /// Anything else, with why; `id` when one could be read.
    Invalid { id: Option<Value>, reason: String },
}

/// Sorts a message into a [`Kind`].
pub fn kind(message: &Value) -> Kind {
    let Some(object) = message.as_object() else {
        return Kind::Invalid {
            id: None,
            reason: "a JSON-RPC message must be an object".into(),
        };
    };
    let id = object.get("id").filter(|id| valid_id(id)).cloned();
    if object.get("id").is_some() && id.is_none() {
        return Kind::Invalid {
            id: None,
            reason: "the id must be a string or a number".into(),
        };
    }
    match (object.get("method"), id) {
        (Some(Value::String(method)), Some(id)) => Kind::Request {
            id,
            method: method.clone(),
        },
        (Some(Value::String(method)), None) => Kind::Notification {
            method: method.clone(),
        },
        (Some(_), id) => Kind::Invalid {
            id,
            reason: "the method must be a string".into(),
        },
        (None, Some(id)) if object.contains_key("result") || object.contains_key("error") => {
            Kind::Response { id }
        }
        (None, id) => Kind::Invalid {
            id,
            reason: "neither a request (no method) nor a response (no result or error)".into(),
        },
    }
}

/// Why a message is not JSON-RPC 2.0 by its `jsonrpc` member (missing, or
/// another version), if it is not. Non-objects are left to [`kind`].
pub fn version_error(message: &Value) -> Option<String> {
    match message.as_object()?.get("jsonrpc") {
        Some(Value::String(version)) if version == "2.0" => None,
        Some(other) => Some(format!("the jsonrpc member must be \"2.0\", not {other}")),
        None => Some("the jsonrpc member is missing (it must be \"2.0\")".into()),
    }
}

fn valid_id(id: &Value) -> bool {
    matches!(id, Value::String(_) | Value::Number(_))
}

/// A key for an id that tells `1` from `"1"`.
pub fn id_key(id: &Value) -> String {
    id.to_string()
}

/// An error response.
pub fn error(id: Value, code: i64, message: impl Into<String>, data: Option<Value>) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), code.into());
    error.insert("message".into(), Value::String(message.into()));
    if let Some(data) = data {
        error.insert("data".into(), data);
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": error })
}

/// A notification.
pub fn notification(method: &str, params: Option<Value>) -> Value {
    match params {
        Some(params) => json!({ "jsonrpc": "2.0", "method": method, "params": params }),
        None => json!({ "jsonrpc": "2.0", "method": method }),
    }
}

/// A request.
pub fn request(id: u64, method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params })
}

/// The classified failure as the `data` of an error response: what a
/// client or a person needs to act on it.
pub fn failure_data(failure: &Failure, upstream: &str, method: &str) -> Value {
    let mut data = json!({
        "cause": failure.cause.to_string(),
        "phase": failure.phase.as_str(),
        "origin": failure.origin.as_str(),
        "safety": failure.safety.as_str(),
        "verdict": failure.verdict.as_str(),
        "detail": failure.detail,
        "upstream": upstream,
        "method": method,
    });
    if let (Some(after), Some(object)) = (failure.retry_after, data.as_object_mut()) {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        object.insert("retryAfterMs".into(), ms.into());
    }
    json!({ "tether": data })
}

/// The `params` member, or `Null`.
pub fn params(message: &Value) -> &Value {
    message.get("params").unwrap_or(&Value::Null)
}

/// The progress token a request asks progress notifications for.
pub fn progress_token(message: &Value) -> Option<&Value> {
    params(message)
        .get("_meta")
        .and_then(|meta| meta.get("progressToken"))
        .filter(|token| valid_id(token))
}

/// How a request shows in messages: the method, and the tool, prompt or
/// resource it names.
pub fn describe(method: &str, message: &Value) -> String {
    let params = params(message);
    let name = params
        .get("name")
        .or_else(|| params.get("uri"))
        .and_then(Value::as_str);
    match name {
        Some(name) => format!("{method} {name:?}"),
        None => method.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let r = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
        assert_eq!(
            kind(&r),
            Kind::Request {
                id: json!(1),
                method: "tools/list".into()
            }
        );
        let n = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        assert!(matches!(kind(&n), Kind::Notification { .. }));
        let ok = json!({"jsonrpc":"2.0","id":"a","result":{}});
        assert_eq!(kind(&ok), Kind::Response { id: json!("a") });
        let err = json!({"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"x"}});
        assert_eq!(kind(&err), Kind::Response { id: json!(2) });
        assert!(matches!(kind(&json!([1])), Kind::Invalid { id: None, .. }));
        assert!(matches!(
            kind(&json!({"id":{"x":1},"method":"m"})),
            Kind::Invalid { id: None, .. }
        ));
        assert!(matches!(
            kind(&json!({"id":3,"method":7})),
            Kind::Invalid { id: Some(_), .. }
        ));
        assert_ne!(id_key(&json!(1)), id_key(&json!("1")));
    }

    #[test]
    fn versions() {
        assert_eq!(version_error(&json!({"jsonrpc": "2.0", "id": 1})), None);
        let old = version_error(&json!({"jsonrpc": "1.0", "id": 1})).unwrap();
        assert!(old.contains("not \"1.0\""), "{old}");
        let number = version_error(&json!({"jsonrpc": 2.0, "id": 1})).unwrap();
        assert!(number.contains("not 2.0"), "{number}");
        let missing = version_error(&json!({"id": 1, "method": "ping"})).unwrap();
        assert!(missing.contains("missing"), "{missing}");
        assert_eq!(version_error(&json!([1])), None);
    }

    #[test]
    fn ids_beyond_64_bits_keep_their_digits() {
        let text = r#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}"#;
        let message: Value = serde_json::from_str(text).unwrap();
        let Kind::Request { id, .. } = kind(&message) else {
            panic!("{message}")
        };
        assert_eq!(id.to_string(), "18446744073709551616");
        let big = r#"{"id":-123456789012345678901234567890}"#;
        let other: Value = serde_json::from_str(big).unwrap();
        assert_ne!(id_key(&id), id_key(&other["id"]));
        assert_eq!(
            error(id, INVALID_REQUEST, "x", None).to_string(),
            r#"{"error":{"code":-32600,"message":"x"},"id":18446744073709551616,"jsonrpc":"2.0"}"#
        );
    }
}
