//! Starts a stack of services in dependency order, each gated on readiness,
//! and keeps it running.

#![forbid(unsafe_code)]

pub mod config;
