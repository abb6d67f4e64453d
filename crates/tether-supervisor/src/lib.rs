//! Starts a stack of services in dependency order, each gated on readiness,
//! and keeps it running.
//!
//! [`launch`] takes a [`StackConfig`] (plain values; reading `tether.toml` is
//! `tether-config`'s job) and runs one task per service. Each service moves
//! through the states of [`State`], explicit and documented there: it waits
//! for its dependencies, starts in a process group of its own, becomes ready
//! (a probe, `READY=1` on its notify socket, or at once), is watched by its
//! liveness probe and watchdog, and is restarted with backoff (reset after a
//! stable uptime) until a crash loop marks it failed. [`Handle`] starts,
//! stops and restarts services, brings the stack down in reverse dependency
//! order, and follows views, events and output.
//!
//! # Invariants
//!
//! - A service's process and everything it started is stopped as a group:
//!   the stop signal, then SIGKILL after the grace period, then a wait until
//!   the group is empty.
//! - Every task is tracked and ends on `down` or shutdown; nothing is
//!   detached. Output is read as it comes; nothing is polled.
//! - No proxy or registry code; configuration arrives as values.

#![forbid(unsafe_code)]

mod claim;
pub mod config;
pub mod control;
pub mod event;
mod handle;
pub mod hooks;
mod notify;
pub mod output;
mod probes;
pub mod rundir;
mod runner;
mod service;
pub mod sockets;
pub mod state;
mod supervisor;

pub use claim::{CgroupMode, Claim, claim};
pub use config::StackConfig;
pub use event::{Event, EventKind, Registration, ServiceView};
pub use handle::{Handle, RequestError};
pub use output::{Line, LogFile, OutputHub, Stream};
pub use rundir::{LockError, RunDir, StackLock};
pub use sockets::{SocketError, StackSockets};
pub use state::State;
pub use supervisor::{LaunchOptions, StoodStill, launch};
