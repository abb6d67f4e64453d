//! The stack's status over HTTP, for `tether up`.
//!
//! The wiring code publishes a [`Snapshot`] of the stack on a `watch`
//! channel and [`Event`]s on a `broadcast` channel; [`serve`] answers from
//! them on a listener from [`bind`]:
//!
//! - `/health`: the overall status as JSON, 200 only when every service is
//!   ready ([`Snapshot::health`] has the rules), so `tether wait` on it waits
//!   for the whole stack;
//! - `/api/services`: the snapshot as JSON;
//! - `/api/events`: the events as server-sent events;
//! - `/metrics`: Prometheus text format (state, restarts, uptime, probe
//!   durations and failures by cause, and the server's own connections);
//! - `/`: a self-contained HTML page that reloads itself.
//!
//! # Invariants
//!
//! - It knows nothing of the supervisor or any other component: its inputs
//!   are the plain values in this crate and two channels. It never changes
//!   the stack; every route is read-only.
//! - It binds exactly the address it is given (the caller defaults to
//!   127.0.0.1).
//! - Every connection, event streams included, is a task owned by [`serve`]
//!   and ends on shutdown; nothing is detached.
//! - Clients cannot take what the rest of the process needs: at most
//!   [`ServeOptions::max_connections`] connections (an idle one makes room
//!   for a newcomer, else the newcomer gets 503) and
//!   [`ServeOptions::max_event_streams`] event streams, counted in
//!   `/metrics`. The counters are the server's own; the [`Snapshot`] stays
//!   what the caller fills.
//! - Everything from the snapshot is escaped for where it goes: JSON,
//!   Prometheus label values, HTML.

#![forbid(unsafe_code)]

mod events;
mod limits;
mod metrics;
mod page;
mod server;
mod snapshot;

pub use server::{BindError, ServeOptions, bind, serve, serve_with};
pub use snapshot::{
    Event, Health, OverallStatus, PROBE_BUCKETS, ProbeStats, ProxyStatus, RegistrationStatus,
    ServiceCounts, ServiceStatus, Snapshot, State,
};
