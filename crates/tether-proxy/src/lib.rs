//! Always-up proxies: clients keep their connection while the service
//! behind it restarts.
//!
//! [`mcp`] is the MCP endpoint of `tether mcp`: the client speaks MCP on
//! stdin/stdout; tether keeps a session with the real server (a stdio child
//! it supervises, streamable HTTP, legacy SSE or WebSocket) and restores it
//! across restarts.
//!
//! [`relay`] is the byte proxy of `tether proxy`: clients of a TCP or Unix
//! socket are held while the upstream is down or restarting and relayed
//! (spliced) once it is ready, within limits.
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
pub mod relay;
mod stillness;
