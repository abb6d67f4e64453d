//! Test support for tether: real servers with real faults.
//!
//! Everything here opens real sockets on loopback or real files in temporary
//! directories; nothing is mocked. Servers run as tokio tasks that stop when
//! their handle is dropped.
//!
//! - [`tcp`]: a port that refuses now and listens later, a listener that
//!   never accepts (and one whose backlog is full), an accept loop;
//! - [`http`]: an HTTP/1.1 server that follows a script (status and body,
//!   hang, close, reset, garbage), counting the requests it got;
//! - [`tls`]: the same over TLS with a self-signed certificate;
//! - [`peers`]: where the test script installed the real peers (the Python
//!   MCP SDK, server-everything), and helpers to run them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    unreachable_pub
)]

pub mod etcd;
pub mod http;
pub mod netns;
pub mod peers;
pub mod procs;
pub mod tcp;
pub mod tls;

use std::time::Duration;

/// A generous upper bound for things that happen "at once" in tests: long
/// enough for a loaded 2-core CI machine, short enough that a bug fails the
/// test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Runs `fut` with [`PATIENCE`], panicking with `what` if it does not finish.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not happen within {PATIENCE:?}"),
    }
}
