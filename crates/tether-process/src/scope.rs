//! Everything a service started, so that stopping it ends all of it.
//!
//! A [`Scope`] is where a service's processes are kept track of. Its
//! children start in a process group of their own, with a marker in their
//! environment, and (where tether may make one) inside a cgroup of their
//! own. Its members are then:
//!
//! - with a cgroup: every process in it, found by the kernel; nothing can
//!   leave (not a `setsid` daemon, not a double fork);
//! - without one: every descendant of this process (tether is the
//!   subreaper of its tree, so orphans of a service are re-parented to it
//!   and stay descendants) that is in one of the scope's process groups or
//!   carries its environment marker, and every descendant of those. A
//!   process that leaves its group *and* clears its environment *and* whose
//!   parent has exited can escape this walk; a cgroup has no such gap.
//!
//! Members are named by pid and start time and signalled through a pidfd
//! opened and checked against that start time, so a reused pid is never hit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::process::{
    Pid, PidfdFlags, Signal, getpid, pidfd_open, pidfd_send_signal, test_kill_process_group,
};
use tokio::io::unix::AsyncFd;

use crate::cgroup::Cgroup;
use crate::child::{Child, spawn_with};
pub use crate::preexec::{ListenFd, Stdin};
use crate::procfs::{Stat, all_stats, environ_has, own_children};

/// Where a service's processes live. Cheap to clone; when the last clone
/// is dropped, whatever still runs in it is killed.
#[derive(Debug, Clone)]
pub struct Scope {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `KEY=VALUE`, set in every child's environment.
    marker: (String, String),
    cgroup: Option<Cgroup>,
    /// The process groups of the leaders spawned here (a group outlives its
    /// leader while any member is left).
    groups: Mutex<Vec<i32>>,
    /// Whether children may be made with `clone3` (where the kernel takes
    /// it); off, they are made with `fork`.
    clone3: AtomicBool,
    /// Whether the cgroup was killed with `cgroup.kill`. From then on its
    /// children are made by `fork` and join it by `cgroup.procs`: Linux
    /// 6.18 SIGKILLs, at birth, every child that `clone3(CLONE_INTO_CGROUP)`
    /// creates in a cgroup killed before (its kill sequence is compared
    /// with the parent's cgroup's), which would kill a service at every
    /// restart after its first SIGKILL.
    killed: AtomicBool,
}

/// One process of a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub pid: i32,
    pub start_ticks: u64,
}

/// At most this many pidfds are held at once while waiting for members to
/// end, so a service with thousands of processes cannot use up descriptors.
const MAX_WAIT_FDS: usize = 64;

impl Scope {
    /// A scope whose children carry `key=value` in their environment and,
    /// given a `cgroup`, start inside it.
    pub fn new(key: impl Into<String>, value: impl Into<String>, cgroup: Option<Cgroup>) -> Scope {
        Scope {
            inner: Arc::new(Inner {
                marker: (key.into(), value.into()),
                cgroup,
                groups: Mutex::new(Vec::new()),
                clone3: AtomicBool::new(true),
                killed: AtomicBool::new(false),
            }),
        }
    }

    /// Whether children may be made with `clone3` (the default: where the
    /// kernel takes it). With `false`, a child with a cgroup is made by
    /// `fork` and moves into its cgroup before `exec` (5 to 15 ms more),
    /// and one with sockets is made by `fork` through the same prepared
    /// child code; the same happens by itself where the kernel or a seccomp
    /// filter refuses `clone3`.
    pub fn set_clone3(&self, allowed: bool) {
        self.inner.clone3.store(allowed, Ordering::Relaxed);
    }

    /// The cgroup, if the scope has one.
    pub fn cgroup(&self) -> Option<&Cgroup> {
        self.inner.cgroup.as_ref()
    }

    /// Whether its cgroup is frozen (by itself or an ancestor): a child
    /// spawned now would stop before its `exec`, and the spawn would wait
    /// for the thaw. `false` without a cgroup.
    pub fn frozen(&self) -> bool {
        self.inner
            .cgroup
            .as_ref()
            .is_some_and(|c| c.frozen().unwrap_or(false))
    }

    /// Spawns `command` into the scope: its own process group, the marker in
    /// its environment, the cgroup, and a parent-death signal, as
    /// [`crate::spawn`] does. Its stdout and stderr are piped and its stdin
    /// is `stdin` (the command's own stdio settings are replaced). With a
    /// cgroup, the child is created in it (`clone3(CLONE_INTO_CGROUP)`, at
    /// no cost), or where the kernel cannot, moved there before `exec`.
    ///
    /// # Errors
    ///
    /// As [`crate::spawn`]; also when the child cannot join the cgroup.
    pub fn spawn(&self, command: &mut Command, stdin: Stdin) -> io::Result<Child> {
        self.spawn_listening(command, stdin, &[])
    }

    /// [`Scope::spawn`], handing the child `listen` as its descriptors 3,
    /// 4, ... in that order, with `LISTEN_FDS`, `LISTEN_PID` (its own pid)
    /// and `LISTEN_FDNAMES` in its environment, as systemd's socket
    /// activation does (`sd_listen_fds`). The sockets stay the caller's: the
    /// child gets duplicates, so they outlive it and serve the next one.
    /// Such a child is made by `clone3` (with or without a cgroup), or by
    /// `fork` where `clone3` is refused or not allowed
    /// ([`Scope::set_clone3`]); in both, the child writes its own pid into
    /// the prepared environment after it was made.
    ///
    /// # Errors
    ///
    /// As [`Scope::spawn`]; also when a socket cannot be placed (the
    /// descriptor limit is too low for `3 + listen.len()`).
    pub fn spawn_listening(
        &self,
        command: &mut Command,
        stdin: Stdin,
        listen: &[ListenFd<'_>],
    ) -> io::Result<Child> {
        let (key, value) = &self.inner.marker;
        command
            .env(key, value)
            .stdin(match stdin {
                Stdin::Null => std::process::Stdio::null(),
                Stdin::Piped => std::process::Stdio::piped(),
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let clone3 =
            self.inner.clone3.load(Ordering::Relaxed) && !self.inner.killed.load(Ordering::Relaxed);
        let child = spawn_with(command, self.inner.cgroup.as_ref(), stdin, listen, clone3)?;
        let mut groups = lock(&self.inner.groups);
        let pgid = child.id() as i32;
        if !groups.contains(&pgid) {
            groups.push(pgid);
        }
        Ok(child)
    }

    /// Every process of the scope now (zombies are not members: they have
    /// ended).
    pub fn members(&self) -> Vec<Member> {
        self.inner.members()
    }

    /// Whether nothing of the scope runs, by a quick look: the cgroup's
    /// `populated` flag, or (without a cgroup) the scope's process groups
    /// and this process's direct children. Cheap enough for every exit.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Sends `signal` to every member; returns how many got it.
    pub fn signal(&self, signal: Signal) -> usize {
        self.inner.signal(signal)
    }

    /// Waits until nothing of the scope runs: every member found is waited
    /// for through its pidfd, then the scope is looked at again (a member
    /// may have started another before it ended). Unbounded: bound it with
    /// a timeout (a process in uninterruptible sleep cannot be killed).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: nothing is lost by dropping the future.
    pub async fn wait_empty(&self) {
        loop {
            let members = self.members();
            if members.is_empty() {
                self.inner.forget_empty_groups();
                return;
            }
            let fds: Vec<AsyncFd<OwnedFd>> = members
                .iter()
                .take(MAX_WAIT_FDS)
                .filter_map(|m| open_checked(*m))
                .filter_map(|fd| crate::child::watch(fd).ok())
                .collect();
            if fds.is_empty() {
                // Members that could not be opened (out of descriptors, or
                // just gone): look again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            for fd in &fds {
                let _ = fd.readable().await;
            }
        }
    }

    /// Signals every member with `signal`, waits up to `grace` for the scope
    /// to empty, then SIGKILLs what is left and waits up to `after_kill`
    /// more.
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe in effect: a dropped stop leaves the scope signalled
    /// but not necessarily empty.
    pub async fn stop(&self, signal: Signal, grace: Duration, after_kill: Duration) -> ScopeStop {
        let signalled = self.signal(signal);
        if tokio::time::timeout(grace, self.wait_empty()).await.is_ok() {
            return ScopeStop {
                signalled,
                killed: 0,
                left: 0,
            };
        }
        let killed = self.signal(Signal::KILL);
        let left = match tokio::time::timeout(after_kill, self.wait_empty()).await {
            Ok(()) => 0,
            Err(_) => self.members().len(),
        };
        ScopeStop {
            signalled,
            killed,
            left,
        }
    }

    /// The `KEY=VALUE` entry of the marker.
    pub fn marker_entry(&self) -> String {
        self.inner.marker_entry()
    }
}

impl Inner {
    fn marker_entry(&self) -> String {
        let (key, value) = &self.marker;
        format!("{key}={value}")
    }

    fn members(&self) -> Vec<Member> {
        match &self.cgroup {
            Some(cgroup) => cgroup
                .pids()
                .into_iter()
                .filter_map(|pid| Stat::read(pid).ok())
                .filter(|s| !s.is_zombie())
                .map(member)
                .collect(),
            None => self.walk(),
        }
    }

    fn is_empty(&self) -> bool {
        if let Some(cgroup) = &self.cgroup {
            return !cgroup.populated().unwrap_or(false);
        }
        let groups = lock(&self.groups).clone();
        if groups
            .iter()
            .filter_map(|g| Pid::from_raw(*g))
            .any(|g| test_kill_process_group(g).is_ok())
        {
            // A zombie leader keeps its group alive until it is reaped: look
            // closer before saying "not empty".
            return self.walk().is_empty();
        }
        let entry = self.marker_entry();
        !own_children()
            .into_iter()
            .any(|pid| environ_has(pid, &entry))
    }

    fn signal(&self, signal: Signal) -> usize {
        if let Some(cgroup) = self.cgroup.as_ref().filter(|_| signal == Signal::KILL) {
            // Counted before: once killed, they may be gone at once.
            let count = self.members().len();
            self.killed.store(true, Ordering::Relaxed);
            if matches!(cgroup.kill(), Ok(true)) {
                return count;
            }
        }
        // Never `killpg`: a group id may belong to another process by now.
        // The members were found by pid and start time and are signalled
        // through checked pidfds.
        self.members()
            .into_iter()
            .filter(|m| signal_member(*m, signal))
            .count()
    }

    fn forget_empty_groups(&self) {
        lock(&self.groups)
            .retain(|g| Pid::from_raw(*g).is_some_and(|p| test_kill_process_group(p).is_ok()));
    }

    /// The members without a cgroup: descendants of this process in one of
    /// the scope's groups or with its marker, and their descendants.
    fn walk(&self) -> Vec<Member> {
        let groups: HashSet<i32> = lock(&self.groups).iter().copied().collect();
        let entry = self.marker_entry();
        let me = getpid().as_raw_nonzero().get();
        let stats = all_stats();
        let descendants = descendants_of(me, &stats);
        let by_pid: HashMap<i32, &Stat> = stats.iter().map(|s| (s.pid, s)).collect();
        let mut roots: Vec<i32> = descendants
            .iter()
            .filter(|pid| {
                by_pid
                    .get(pid)
                    .is_some_and(|s| groups.contains(&s.pgrp) || environ_has(s.pid, &entry))
            })
            .copied()
            .collect();
        let mut found: HashSet<i32> = roots.iter().copied().collect();
        let children = children_map(&stats);
        while let Some(pid) = roots.pop() {
            for child in children.get(&pid).into_iter().flatten() {
                if found.insert(*child) {
                    roots.push(*child);
                }
            }
        }
        stats
            .iter()
            .filter(|s| found.contains(&s.pid) && !s.is_zombie() && s.pid != me)
            .map(|s| member(*s))
            .collect()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Nothing outlives its owner. Signals only: dropping must not block.
        if self.cgroup.is_some() || !lock(&self.groups).is_empty() {
            self.signal(Signal::KILL);
        }
        if let Some(cgroup) = &self.cgroup {
            // Fails while the killed processes are still being torn down;
            // the next `tether up` removes what is left.
            let _ = cgroup.remove();
        }
    }
}

/// What [`Scope::stop`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeStop {
    /// Processes that got the stop signal.
    pub signalled: usize,
    /// Processes still there after the grace period, killed.
    pub killed: usize,
    /// Processes still there after the kill (uninterruptible sleep).
    pub left: usize,
}

/// The processes of this user that carry `entry` (`KEY=VALUE`) in their
/// environment, other than this process and its descendants: what an
/// earlier tether, killed before it could stop them, left running.
pub fn processes_with(entry: &str) -> Vec<Member> {
    let me = getpid().as_raw_nonzero().get();
    let euid = rustix::process::geteuid().as_raw();
    let stats = all_stats();
    let mine = descendants_of(me, &stats);
    stats
        .iter()
        .filter(|s| s.pid != me && !mine.contains(&s.pid) && !s.is_zombie())
        .filter(|s| owner(s.pid) == Some(euid))
        .filter(|s| environ_has(s.pid, entry))
        .map(|s| member(*s))
        .collect()
}

/// Sends `signal` to `member` through a pidfd checked against its start
/// time; `false` if it is gone (or is another process now).
pub fn signal_member(member: Member, signal: Signal) -> bool {
    match open_checked(member) {
        Some(fd) => pidfd_send_signal(fd.as_fd(), signal).is_ok(),
        None => false,
    }
}

/// A pidfd for `member`, if it still is the process that started at its
/// start time. Opened first, checked second: once the pidfd is open the pid
/// cannot be reused, so a match after opening is certain.
fn open_checked(member: Member) -> Option<OwnedFd> {
    let pid = Pid::from_raw(member.pid)?;
    let fd = pidfd_open(pid, PidfdFlags::NONBLOCK).ok()?;
    let stat = Stat::read(member.pid).ok()?;
    (stat.start_ticks == member.start_ticks && !stat.is_zombie()).then_some(fd)
}

fn member(stat: Stat) -> Member {
    Member {
        pid: stat.pid,
        start_ticks: stat.start_ticks,
    }
}

fn children_map(stats: &[Stat]) -> HashMap<i32, Vec<i32>> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for s in stats {
        children.entry(s.ppid).or_default().push(s.pid);
    }
    children
}

/// The pids below `root` in the process tree (not `root` itself).
fn descendants_of(root: i32, stats: &[Stat]) -> HashSet<i32> {
    let children = children_map(stats);
    let mut found = HashSet::new();
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        for child in children.get(&pid).into_iter().flatten() {
            if found.insert(*child) {
                queue.push_back(*child);
            }
        }
    }
    found
}

fn owner(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: i32, ppid: i32) -> Stat {
        Stat {
            pid,
            state: 'S',
            ppid,
            pgrp: pid,
            session: pid,
            start_ticks: 1,
        }
    }

    #[test]
    fn descendants_are_the_whole_subtree() {
        let stats = [
            stat(1, 0),
            stat(10, 1),
            stat(11, 10),
            stat(12, 11),
            stat(20, 1),
        ];
        let mut below: Vec<i32> = descendants_of(10, &stats).into_iter().collect();
        below.sort();
        assert_eq!(below, [11, 12]);
        assert!(descendants_of(12, &stats).is_empty());
    }
}
