//! Which tether instances run, and where to reach them.
//!
//! A process registers a record (a name, an endpoint URL, free-form
//! metadata) and gets a [`Lease`]; the record lives exactly as long as the
//! lease (dropping it removes the record at once) or the process (a
//! SIGKILLed registrant is reported gone within milliseconds). Anyone can
//! [`list`](Registry::list) the live instances or
//! [`watch`](Registry::watch) them come and go.
//!
//! The [`Registry`] trait is the contract, with two backends:
//! - [`FileRegistry`], for one machine (see [`mod@file`] for its design: one
//!   create-once JSON file per instance in a private directory, a POSIX
//!   record lock held by the registrant, process identity checked through
//!   `/proc` and pidfds, inotify as hints with full rescans);
//! - [`EtcdRegistry`], for many (see [`mod@etcd`]: a lease with a TTL kept
//!   alive by the registrant and granted again by itself when lost; list,
//!   then watch from the next revision, listed again after any gap).
//!
//! [`open`] takes a registry URL (`file:///DIR`, `etcd://HOST:PORT/PREFIX`)
//! and gives either, as [`AnyRegistry`].
//!
//! This crate never trusts what it reads from the directory: records are
//! read without following symlinks, capped in size, checked for owner, and
//! a record is only believed alive if its writer demonstrably still runs.
//! It never removes a record whose writer may still be alive.

pub mod etcd;
pub mod file;
mod open;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;

use serde::{Deserialize, Serialize};

pub use etcd::{EtcdRegistry, EtcdWatch};
pub use file::{FileRegistry, FileWatch, check_name};
pub use open::{AnyRegistry, AnyWatch, check_url, open};

/// What a registrant says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    /// The instance's name (a stack, a service); several instances may share
    /// it. Letters, digits, `-` and `_` only, at most 100 bytes, since it is
    /// part of a file name.
    pub name: String,
    /// Where to reach it, as a URL (`http://127.0.0.1:8051`,
    /// `unix:///run/user/1000/tether/control.sock`).
    pub endpoint: String,
    pub meta: BTreeMap<String, String>,
    /// The process the record stands for, if not the registrant itself
    /// (`tether register` runs CMD and registers CMD's pid). The record's
    /// life is still the registrant's.
    pub pid: Option<u32>,
}

/// A live instance, as listed or watched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    /// Unique for every registration: 128 random bits in hex.
    pub id: String,
    pub endpoint: String,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// The pid of the process the record stands for (the registrant's, or
    /// the one it named), in the registrant's pid namespace.
    pub pid: u32,
    /// The registrant's host name.
    pub host: String,
    /// When it registered (Unix time, milliseconds).
    pub since_unix_ms: u64,
    /// Who wrote it, for the liveness check; backend-private.
    #[serde(flatten)]
    pub(crate) writer: Writer,
}

/// The registrant's process identity, as the file backend records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Writer {
    /// The registrant's own pid (0 in records that name none: then `pid`).
    #[serde(default, rename = "writer_pid")]
    pub(crate) pid: u32,
    #[serde(default)]
    pub(crate) start_ticks: u64,
    #[serde(default)]
    pub(crate) boot_id: String,
    #[serde(default)]
    pub(crate) pid_ns: String,
}

/// A change in the set of live instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Added(Instance),
    Removed(Instance),
    /// The record of a known instance changed.
    Changed(Instance),
    /// A full rescan happened (queue overflow, timer, on demand): the view
    /// before it may have missed changes, which the events just before this
    /// one have repaired.
    Resynced,
}

/// Keeps a registered record alive; dropping it removes the record (at once
/// for files; for etcd, a revoke is sent on the way out, see
/// [`Lease::close`]).
pub struct Lease {
    instance: Instance,
    state: tokio::sync::watch::Receiver<LeaseState>,
    // The backend's hold on the record; its Drop removes it.
    hold: Box<dyn Hold>,
}

/// Where a registration stands, as `tether ps`, the status server and
/// `--json` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Others can see the record: the backend acknowledged it within its
    /// TTL (files: the lock is held, always).
    Registered,
    /// Not known to be seen, and trying: never registered yet (the backend
    /// was unreachable), or the last renewal failed while the lease may
    /// still hold.
    Retrying { cause: String },
    /// Registered once, and now known to be gone (the TTL passed without an
    /// acknowledged renewal, or the backend said the lease is unknown: it
    /// restarted with its data wiped, or expired it across a stall). A new
    /// lease is being granted.
    Lost { cause: String },
}

/// A backend's hold on a record.
pub(crate) trait Hold: Send + Sync {
    /// Removes the record and waits until the backend has done so (bounded).
    fn close(self: Box<Self>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

    /// The machine resumed, stalled or its network changed: look at the
    /// record now rather than at the next renewal. Nothing to do for a
    /// backend whose records cannot expire.
    fn revalidate(&self) {}
}

/// A registry of instances.
///
/// The futures are not `Send`-bounded: tether runs current-thread runtimes.
pub trait Registry {
    type Watch: Watch;

    /// Publishes `record`, alive until the lease is dropped.
    fn register(&self, record: NewRecord) -> impl Future<Output = io::Result<Lease>>;

    /// The live instances now, sorted by name then id.
    fn list(&self) -> impl Future<Output = io::Result<Vec<Instance>>>;

    /// Watches the set: the first events are the current set as `Added`.
    fn watch(&self) -> impl Future<Output = io::Result<Self::Watch>>;
}

/// A stream of [`WatchEvent`]s.
pub trait Watch {
    /// The next change.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: an event is only taken from the queue when returned.
    fn next(&mut self) -> impl Future<Output = io::Result<WatchEvent>>;
}

impl Lease {
    pub(crate) fn new(
        instance: Instance,
        state: tokio::sync::watch::Receiver<LeaseState>,
        hold: Box<dyn Hold>,
    ) -> Lease {
        Lease {
            instance,
            state,
            hold,
        }
    }

    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Where the registration stands now.
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// A receiver of every change of [`state`](Lease::state). For a file
    /// lease, which never changes, `changed()` returns an error at once.
    pub fn states(&self) -> tokio::sync::watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// The machine resumed, stalled or its network changed (tether-netmon):
    /// the backend looks at the record now (etcd: renews at once, and
    /// grants a new lease if the old one expired meanwhile) rather than at
    /// its next renewal.
    pub fn revalidate(&self) {
        self.hold.revalidate();
    }

    /// Removes the record and waits until the backend has (at most about a
    /// second for etcd; a file goes at once). Dropping the lease also removes
    /// it, but without waiting: a process about to exit should close.
    pub async fn close(self) {
        self.hold.close().await;
    }
}

impl LeaseState {
    /// `registered`, `retrying` or `lost`.
    pub fn word(&self) -> &'static str {
        match self {
            LeaseState::Registered => "registered",
            LeaseState::Retrying { .. } => "retrying",
            LeaseState::Lost { .. } => "lost",
        }
    }

    /// The last cause, if not registered.
    pub fn cause(&self) -> Option<&str> {
        match self {
            LeaseState::Registered => None,
            LeaseState::Retrying { cause } | LeaseState::Lost { cause } => Some(cause),
        }
    }
}

impl fmt::Display for LeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cause() {
            None => f.write_str(self.word()),
            Some(cause) => write!(f, "{}: {cause}", self.word()),
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// A new record for this process: a fresh id, this host, now, and this
    /// process as the writer.
    pub(crate) fn mine(record: NewRecord) -> io::Result<Instance> {
        check_name(&record.name)?;
        let me = tether_process::procfs::Identity::current()?;
        Ok(Instance {
            name: record.name,
            id: file::random_id()?,
            endpoint: record.endpoint,
            meta: record.meta,
            pid: record.pid.unwrap_or(me.pid),
            host: file::hostname(),
            since_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            writer: Writer {
                pid: me.pid,
                start_ticks: me.start_ticks,
                boot_id: me.boot_id,
                pid_ns: me.pid_ns,
            },
        })
    }

    /// The registrant's pid: the process whose life is the record's.
    pub fn writer_pid(&self) -> u32 {
        if self.writer.pid == 0 {
            self.pid
        } else {
            self.writer.pid
        }
    }

    /// The registrant's start time, clock ticks since boot.
    pub fn start_ticks(&self) -> u64 {
        self.writer.start_ticks
    }
}
