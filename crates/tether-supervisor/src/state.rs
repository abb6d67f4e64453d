//! The lifecycle of a service, as data.
//!
//! ```text
//!                 deps met          ready check passes
//!   Pending ───────────────▶ Starting ──────────────────▶ Ready ◀──┐
//!      ▲                        │                           │      │ rise
//!      │                        │ exit / deadline /         │ fall │
//!      │                        │ not started               ▼      │
//!      │   restart (after       ▼                        Unready ──┘
//!      └───── backoff) ───── Exited ◀───── process ended ───┘
//!                               │
//!                               │ crash loop, restart = no with a failure,
//!                               ▼ a dependency failed
//!                             Failed
//!
//!   any running state ── stop / restart / down ──▶ Stopping ──▶ Exited
//! ```
//!
//! Dependents wait through a dependency's restart: a service that is still
//! `Pending` keeps waiting while its dependency goes `Exited` → `Starting` →
//! `Ready` again; only `Failed` ends the wait (and fails the dependent, with
//! the reason). A dependent that is already running is left running when a
//! dependency restarts: it is expected to reconnect (which is what `tether
//! mcp` and `tether proxy` are for). Before each of its own restarts, a
//! service waits for its dependencies again.

use std::fmt;

use serde::Serialize;

/// Where a service is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its dependencies to meet their conditions.
    Pending,
    /// Spawned (or running its pre-start command), not ready yet.
    Starting,
    /// Its readiness check passed (or it has none and is running).
    Ready,
    /// It was ready, and its readiness check now fails (`fall` times in a
    /// row); it keeps running, and may become ready again.
    Unready,
    /// Being stopped: the stop signal was sent, the group is not gone yet.
    Stopping,
    /// Not running: completed, stopped, or waiting to be restarted.
    Exited,
    /// Gave up: a crash loop, a failure with `restart = no`, a dependency
    /// that failed. Stays so until started again by hand.
    Failed,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Pending,
        State::Starting,
        State::Ready,
        State::Unready,
        State::Stopping,
        State::Exited,
        State::Failed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Starting => "starting",
            State::Ready => "ready",
            State::Unready => "unready",
            State::Stopping => "stopping",
            State::Exited => "exited",
            State::Failed => "failed",
        }
    }

    /// Whether a process of the service may be running.
    pub const fn is_running(self) -> bool {
        matches!(
            self,
            State::Starting | State::Ready | State::Unready | State::Stopping
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
