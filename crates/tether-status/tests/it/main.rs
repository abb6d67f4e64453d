//! Integration tests of the status server: a real server on 127.0.0.1:0,
//! real HTTP requests, and the official Prometheus Python parser.

// Test helpers outside #[test] functions may unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bind;
mod events;
mod health;
mod limits;
mod metrics;
mod page;
mod routes;
mod support;
