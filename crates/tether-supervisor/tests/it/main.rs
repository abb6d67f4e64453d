//! The supervisor with real processes, sockets and signals: dependency
//! gating, crash loops, liveness restarts, sd_notify, stop escalation,
//! process-group teardown, heartbeat files and hooks.

// Test helpers outside #[test] functions may unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod control;
mod hooks;
mod lifecycle;
mod support;
