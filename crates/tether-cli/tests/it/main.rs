//! `tether wait` as a user runs it: the real binary, real sockets and
//! servers, real signals. Asserts exit codes, NDJSON events and the words of
//! the diagnosis.

// Test helpers outside #[test] functions may unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod example;
mod faults;
mod mcp;
mod netmon;
mod proxy;
mod registrations;
mod registry;
mod sockets;
mod stack;
mod support;
mod up;
mod usage;
mod wait;
