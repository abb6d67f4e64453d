//! Child processes that tether owns.
//!
//! Every child is spawned in a process group of its own, so it and everything
//! it starts (a `sh -c` pipeline, a server's workers) can be signalled as one.
//! Its exit is seen through a pidfd and reaped with `waitid(P_PIDFD)`: no
//! SIGCHLD handler and no `waitpid(-1)` is involved, so nothing else's child
//! is ever reaped by mistake.
//!
//! A supervisor can also make this process a *subreaper* ([`Reaper`]): then
//! descendants whose parent died are re-parented here instead of to init, and
//! the reaper reaps them, but only those no [`Child`] owns.
//!
//! # Invariants
//!
//! - Nothing in tether uses `tokio::process` or `std::process::Child::wait`:
//!   all children come from [`spawn`], so the registry of owned pids is
//!   complete and the orphan reaper never takes another waiter's child.
//! - Dropping a [`Child`] that has not been reaped kills its whole group and
//!   hands it to whoever reaps (its own task, or the [`Reaper`]).

// Unsafe code is denied everywhere but in `preexec`, the one place that
// needs it (what a child does between fork and exec), and says why.
#![deny(unsafe_code)]

pub mod cgroup;
mod child;
mod preexec;
pub mod procfs;
mod reaper;
mod scope;

pub use child::{Child, Exit, StopReport, signal_name, signal_number, spawn};
pub use procfs::{Identity, Liveness};
pub use reaper::Reaper;
pub use scope::{ListenFd, Member, Scope, ScopeStop, Stdin, processes_with, signal_member};

/// Signal numbers, for callers that configure them (`SIGTERM` = 15, ...).
pub use rustix::process::Signal;
