//! Always-up proxies: clients keep their connection while the service
//! behind it restarts.
//!
//! [`mcp`] is the MCP endpoint of `tether mcp`: the client speaks MCP on
//! stdin/stdout; tether keeps a session with the real server (a stdio child
//! it supervises, streamable HTTP, legacy SSE or WebSocket) and restores it
//! across restarts.
//!
//! # Invariants
//!
//! - The client side never ends because of the upstream.
//! - Every client request is answered exactly once, by the server or by an
//!   error whose `data` carries the classified failure.
//! - Only `tokio::time` tells time, so every timing runs on paused time in
//!   tests.

#![forbid(unsafe_code)]

pub mod mcp;
