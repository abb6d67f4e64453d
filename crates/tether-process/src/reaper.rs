//! Reaping orphans as a subreaper.

use std::io;
use std::time::Duration;

use rustix::process::{Pid, WaitOptions, getpid, set_child_subreaper, waitpid};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::child::owned;

/// Makes this process the subreaper of its descendants and reaps the orphans
/// that are re-parented to it. Children owned by a [`crate::Child`] are left
/// to their owner.
#[derive(Debug)]
pub struct Reaper {
    task: JoinHandle<()>,
}

impl Reaper {
    /// Becomes subreaper and starts reaping on every SIGCHLD. Each wake-up
    /// reaps every exited orphan, so signals the kernel coalesces lose
    /// nothing; a sweep once a minute is a safety net, and the only timer.
    ///
    /// # Errors
    ///
    /// When the process cannot become a subreaper or listen for SIGCHLD.
    pub fn start(shutdown: CancellationToken) -> io::Result<Reaper> {
        set_child_subreaper(Some(getpid()))?;
        let mut sigchld = signal(SignalKind::child())?;
        let task = tokio::spawn(async move {
            let mut sweep = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = sigchld.recv() => {}
                    _ = sweep.tick() => {}
                }
                reap_orphans();
            }
            reap_orphans();
        });
        Ok(Reaper { task })
    }

    /// Reaps what is left, once.
    pub fn sweep(&self) -> usize {
        reap_orphans()
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reaps every exited child that no `Child` owns; returns how many.
pub(crate) fn reap_orphans() -> usize {
    let mut reaped = 0;
    for pid in crate::procfs::own_children() {
        // Hold the lock while reaping, so a spawn cannot register a pid the
        // kernel hands out again between our check and our wait.
        let owned = owned();
        if owned.contains(&pid) {
            continue;
        }
        let Some(pid) = Pid::from_raw(pid) else {
            continue;
        };
        if let Ok(Some(_)) = waitpid(Some(pid), WaitOptions::NOHANG) {
            reaped += 1;
            tracing::debug!(pid = pid.as_raw_nonzero().get(), "reaped an orphan");
        }
        drop(owned);
    }
    reaped
}
