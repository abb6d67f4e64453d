//! What says a link or a session is lost: a transport failure that ends
//! the whole link, and the dialects servers use to say they forgot the
//! session (an HTTP status and body, a JSON-RPC error).
//!
//! Plain functions of values, without I/O or state: the transports use
//! them to classify what they see, the session core to decide about it,
//! and neither imports the other.

use http::StatusCode;
use serde_json::Value;
use tether_resilience::{Cause, Failure};

/// Whether a request's transport failure means the whole link is gone,
/// rather than only that request.
pub fn breaks_link(failure: &Failure) -> bool {
    matches!(
        failure.cause,
        Cause::ConnectRefused
            | Cause::ConnectTimeout
            | Cause::ConnectUnreachable
            | Cause::PathMissing
            | Cause::DnsTemporary
            | Cause::TlsHandshake
            | Cause::ResetBeforeResponse
            | Cause::ResetMidStream
            | Cause::SessionLost
            | Cause::ProcessExited
            | Cause::Http(502..=504)
    )
}

/// Whether an error status on a streamable-HTTP request that carried a
/// session id says the session is gone, in the dialects servers use: 404,
/// 400 "No valid session ID" or "Server not initialized", 401 and 503.
pub fn http_status(status: StatusCode, body: &str) -> bool {
    let body = body.to_ascii_lowercase();
    match status.as_u16() {
        404 | 401 | 503 => true,
        400 => body.contains("session") || body.contains("not initialized"),
        _ => false,
    }
}

/// Whether an error status on a POST to a legacy HTTP+SSE endpoint says
/// the session is gone: the session lives in the endpoint URL, so a 404,
/// or a 400 that names the session, means the server forgot it.
pub fn legacy_status(status: StatusCode, body: &str) -> bool {
    status == StatusCode::NOT_FOUND
        || (status == StatusCode::BAD_REQUEST && body.to_ascii_lowercase().contains("session"))
}

/// Whether an error response is a server's way of saying it does not know
/// our session, in one of the dialects servers use: "Session not found",
/// "No valid session ID provided", "Server not initialized", "Could not find
/// session", a -32602 after the transport lost its state.
pub fn jsonrpc_error(error: &Value) -> bool {
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let text = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(code, -32000 | -32001 | -32600 | -32602 | -32603)
        && (text.contains("session") || text.contains("not initialized"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn http_dialects() {
        assert!(http_status(StatusCode::NOT_FOUND, "Session not found"));
        assert!(http_status(
            StatusCode::BAD_REQUEST,
            r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null}"#
        ));
        assert!(http_status(
            StatusCode::BAD_REQUEST,
            "Server not initialized"
        ));
        assert!(http_status(StatusCode::UNAUTHORIZED, ""));
        assert!(http_status(StatusCode::SERVICE_UNAVAILABLE, ""));
        assert!(!http_status(StatusCode::BAD_REQUEST, "Invalid JSON"));
        assert!(!http_status(StatusCode::INTERNAL_SERVER_ERROR, "session"));
    }

    #[test]
    fn legacy_dialects() {
        assert!(legacy_status(StatusCode::NOT_FOUND, ""));
        assert!(legacy_status(StatusCode::BAD_REQUEST, "Unknown Session ID"));
        assert!(!legacy_status(StatusCode::BAD_REQUEST, "Invalid JSON"));
        // The session is in the URL, not in a header a 401 or 503 refers to.
        assert!(!legacy_status(StatusCode::UNAUTHORIZED, ""));
        assert!(!legacy_status(StatusCode::SERVICE_UNAVAILABLE, "session"));
    }

    #[test]
    fn jsonrpc_dialects() {
        for (code, text) in [
            (-32000, "Bad Request: No valid session ID provided"),
            (-32600, "Session not found"),
            (-32602, "Invalid request parameters: Could not find session"),
            (-32603, "Server not initialized"),
        ] {
            assert!(
                jsonrpc_error(&json!({"code": code, "message": text})),
                "{text}"
            );
        }
        assert!(!jsonrpc_error(
            &json!({"code": -32602, "message": "Invalid params: a must be a number"})
        ));
        assert!(!jsonrpc_error(
            &json!({"code": -32601, "message": "Method not found"})
        ));
    }

    #[test]
    fn what_breaks_the_link() {
        use tether_resilience::Phase;
        let failure = |cause| Failure::new(Phase::FirstByte, cause, "x");
        assert!(breaks_link(&failure(Cause::SessionLost)));
        assert!(breaks_link(&failure(Cause::Http(503))));
        assert!(!breaks_link(&failure(Cause::Http(500))));
        assert!(!breaks_link(&failure(Cause::ProtocolMismatch)));
    }
}
