//! Integration tests of the probes and the wait loop against real things:
//! sockets that refuse, listen late, never accept or fill their backlog;
//! HTTP servers that answer 503 then 200, 404, the wrong body, hang, reset or
//! speak another protocol; TLS with an untrusted certificate; files written
//! late and heartbeats going stale; commands that fail, succeed late or hang;
//! real MCP servers (the Python SDK and server-everything); and credentials
//! in URLs, sent as basic auth and never shown.

// Test helpers outside #[test] functions may unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod credentials;
mod exec;
mod file;
mod http;
mod mcp;
mod support;
mod tcp;
mod unix;
