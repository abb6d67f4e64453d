//! Taking a stack before it starts: one supervisor per stack, nothing left
//! over from a supervisor that was killed, and a cgroup for the stack where
//! tether may make one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tether_process::cgroup::Cgroup;
use tether_process::{Member, Scope, Signal, processes_with, signal_member};

use crate::rundir::{LockError, RunDir, StackLock};

/// Whether services get cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Where this process may make them (root, or a delegated subtree);
    /// elsewhere the process tree is walked.
    Auto,
    /// Never: always walk the process tree.
    Off,
}

/// A stack taken for this supervisor: released when dropped.
#[derive(Debug)]
pub struct Claim {
    _lock: StackLock,
    rundir: RunDir,
    cgroup: Option<Arc<Cgroup>>,
    /// Why there is no cgroup, when one was wanted.
    pub no_cgroup: Option<String>,
    /// Processes an earlier, killed supervisor of this stack left running,
    /// ended before anything started.
    pub ended: Vec<Member>,
}

/// How long leftovers of a killed supervisor get after SIGTERM.
const LEFTOVER_GRACE: Duration = Duration::from_secs(5);

/// Takes the stack whose runtime directory is `rundir`: its lock (refused at
/// once while another supervisor holds it), then ends whatever a killed
/// supervisor of this stack left running (found by its cgroup, if it had
/// one, and by the `TETHER_RUNTIME_DIR` marker in the environment of every
/// process it started), then clears its heartbeat files, then makes the
/// stack's cgroup.
///
/// # Errors
///
/// When the lock is held ([`LockError::Held`] names the holder's pid) or
/// cannot be taken.
pub async fn claim(rundir: &RunDir, stack: &str, mode: CgroupMode) -> Result<Claim, LockError> {
    let lock = match rundir.lock() {
        Ok(lock) => lock,
        // The holder writes its pid a moment after it took the lock: give
        // it that moment, to name it.
        Err(LockError::Held(None)) => {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if let Some(pid) = rundir.lock_holder() {
                    return Err(LockError::Held(Some(pid)));
                }
            }
            return Err(LockError::Held(None));
        }
        Err(e) => return Err(e),
    };
    let mut ended = end_cgroup_left_by_earlier_run(rundir).await;
    let marker = format!("TETHER_RUNTIME_DIR={}", rundir.path().display());
    let left = processes_with(&marker);
    if !left.is_empty() {
        ended.extend(end(&left).await);
    }
    rundir.clear();
    let (cgroup, no_cgroup) = match mode {
        CgroupMode::Off => (None, None),
        CgroupMode::Auto => {
            let name = format!("tether.{stack}.{}", std::process::id());
            match Cgroup::create_for_stack(&name) {
                Ok(cgroup) => {
                    let record = rundir.cgroup_record();
                    if let Err(e) = std::fs::write(&record, cgroup.path().display().to_string()) {
                        tracing::debug!("cannot write {}: {e}", record.display());
                    }
                    (Some(Arc::new(cgroup)), None)
                }
                Err(e) => (None, Some(e.to_string())),
            }
        }
    };
    Ok(Claim {
        _lock: lock,
        rundir: rundir.clone(),
        cgroup,
        no_cgroup,
        ended,
    })
}

impl Claim {
    /// The stack's cgroup, if it has one.
    pub fn cgroup(&self) -> Option<Arc<Cgroup>> {
        self.cgroup.clone()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // The services are gone by now; their cgroups are empty and go too.
        if let Some(cgroup) = self.cgroup.take()
            && cgroup.remove().is_ok()
        {
            let _ = std::fs::remove_file(self.rundir.cgroup_record());
        }
    }
}

/// Ends what is left in the cgroup a killed supervisor recorded.
async fn end_cgroup_left_by_earlier_run(rundir: &RunDir) -> Vec<Member> {
    let record = rundir.cgroup_record();
    let Ok(text) = std::fs::read_to_string(&record) else {
        return Vec::new();
    };
    let path = PathBuf::from(text.trim());
    // Only a cgroup named as tether names them is touched.
    let ours = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("tether."));
    let Some(cgroup) = ours.then(|| Cgroup::open(&path).ok()).flatten() else {
        let _ = std::fs::remove_file(&record);
        return Vec::new();
    };
    let scope = Scope::new(
        "TETHER_RUNTIME_DIR",
        rundir.path().display().to_string(),
        Some(cgroup),
    );
    let members = scope.members();
    if !members.is_empty() {
        scope
            .stop(Signal::TERM, LEFTOVER_GRACE, crate::runner::AFTER_KILL)
            .await;
    }
    if let Some(cgroup) = scope.cgroup()
        && cgroup.remove().is_ok()
    {
        let _ = std::fs::remove_file(&record);
    }
    members
}

/// SIGTERM to each of `members`, SIGKILL to those left after the grace.
async fn end(members: &[Member]) -> Vec<Member> {
    let signalled: Vec<Member> = members
        .iter()
        .copied()
        .filter(|m| signal_member(*m, Signal::TERM))
        .collect();
    let gone = |m: &Member| {
        !tether_process::procfs::process_liveness(m.pid as u32, m.start_ticks)
            .eq(&tether_process::Liveness::Alive)
    };
    let deadline = tokio::time::Instant::now() + LEFTOVER_GRACE;
    let mut pause = Duration::from_millis(1);
    while !signalled.iter().all(gone) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    for m in signalled.iter().filter(|m| !gone(m)) {
        signal_member(*m, Signal::KILL);
    }
    signalled
}
