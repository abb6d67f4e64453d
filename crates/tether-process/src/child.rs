//! Spawning, waiting for and stopping one child and its process group.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rustix::process::{
    Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, kill_process_group, pidfd_open,
    pidfd_send_signal, test_kill_process_group, waitid,
};
use tokio::io::unix::AsyncFd;
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::time::Instant;

/// A running (or exited, not yet reaped) child in its own process group.
#[derive(Debug)]
pub struct Child {
    pid: Pid,
    pidfd: AsyncFd<OwnedFd>,
    exit: Option<Exit>,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

/// What [`Child::stop`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopReport {
    /// How the group leader ended.
    pub exit: Exit,
    /// The grace period ran out and the group got SIGKILL.
    pub killed: bool,
    /// How long the stop took.
    pub took: Duration,
    /// Processes of the group were still there when this gave up (they
    /// escaped SIGKILL only by being in uninterruptible sleep).
    pub group_left: bool,
}

/// Spawns `command` in a process group of its own and takes ownership of it.
///
/// The command's stdin, stdout and stderr settings are kept; piped streams
/// become asynchronous handles on the returned child. The child gets
/// SIGKILL when the thread that spawned it ends (`PR_SET_PDEATHSIG`), so
/// nothing tether starts outlives a tether that was killed; spawn from a
/// thread that lives as long as the child should (a runtime's thread, never
/// a blocking-pool thread).
///
/// # Errors
///
/// The spawn's own error (the program does not exist, is not executable, a
/// bad working directory, ...), or an error opening the pidfd.
pub fn spawn(command: &mut Command) -> io::Result<Child> {
    spawn_with(command, None, crate::preexec::Stdin::Null, &[], true)
}

/// [`spawn`], into `cgroup` if given, with `listen` as its descriptors 3,
/// 4, ... (socket activation). A child with a cgroup or sockets is made by
/// `clone3` (into its cgroup directly, `CLONE_INTO_CGROUP`) when `clone3`
/// is allowed and the kernel takes it (stdin as `stdin`, stdout and stderr
/// piped). Where it is not, a child with sockets is made by `fork` through
/// the same prepared child code (its `LISTEN_PID` can only be written
/// after the fork), and one with only a cgroup by `Command::spawn`, moved
/// into its cgroup before `exec`.
pub(crate) fn spawn_with(
    command: &mut Command,
    cgroup: Option<&crate::cgroup::Cgroup>,
    stdin: crate::preexec::Stdin,
    listen: &[crate::preexec::ListenFd<'_>],
    clone3: bool,
) -> io::Result<Child> {
    use crate::preexec::{CloneError, Via};
    use std::os::unix::process::CommandExt;
    if cgroup.is_some() || !listen.is_empty() {
        let mut vias = Vec::with_capacity(2);
        if clone3 {
            vias.push(Via::Clone3 {
                cgroup_dir: cgroup.map(|c| c.dir_fd()),
            });
        }
        if !listen.is_empty() {
            vias.push(Via::Fork {
                cgroup_procs: cgroup.map(|c| c.procs_fd()),
            });
        }
        for via in vias {
            // Registering under the lock the reaper also takes means the
            // reaper never sees this pid unowned, even if the child dies at
            // once.
            let mut owned = owned();
            match crate::preexec::spawn(command, via, stdin, listen) {
                Ok(spawned) => {
                    owned.insert(spawned.pid);
                    drop(owned);
                    return Child::from_spawned(spawned);
                }
                Err(CloneError::Spawn(e)) => return Err(e),
                Err(CloneError::Unsupported) => {}
            }
        }
        // Only a child without sockets gets here: `Via::Fork` never answers
        // `Unsupported`.
    }
    command.process_group(0);
    crate::preexec::arm(command, cgroup.map(|c| c.procs_fd()))?;
    // Registering under the lock the reaper also takes means the reaper
    // never sees this pid unowned, even if the child dies at once.
    let mut owned = owned();
    let std_child = command.spawn()?;
    let raw = i32::try_from(std_child.id()).map_err(|_| io::Error::other("pid out of range"))?;
    let pid = Pid::from_raw(raw).ok_or_else(|| io::Error::other("spawn returned pid 0"))?;
    owned.insert(raw);
    drop(owned);
    let pidfd = match pidfd_open(pid, PidfdFlags::NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => {
            // Without a pidfd we cannot wait for it: kill it, hand it over.
            let _ = kill_process_group(pid, Signal::KILL);
            disown(raw);
            return Err(e.into());
        }
    };
    let mut std_child = std_child;
    let stdin = std_child
        .stdin
        .take()
        .map(ChildStdin::from_std)
        .transpose()?;
    let stdout = std_child
        .stdout
        .take()
        .map(ChildStdout::from_std)
        .transpose()?;
    let stderr = std_child
        .stderr
        .take()
        .map(ChildStderr::from_std)
        .transpose()?;
    // `std_child` is only a pid now; dropping it neither waits nor kills.
    drop(std_child);
    Ok(Child {
        pid,
        pidfd: watch(pidfd)?,
        exit: None,
        stdin,
        stdout,
        stderr,
    })
}

/// Registers a pidfd with the reactor: it becomes readable when the process
/// exits.
// `AsyncFd::new` is deprecated because a generic `T` may not keep its raw fd
// valid; an `OwnedFd` does, by construction, so the call is sound and this
// crate needs no unsafe code.
#[allow(deprecated)]
pub(crate) fn watch(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    AsyncFd::new(fd)
}

/// Reaps the process behind `pidfd` if it has exited.
fn reap(pidfd: &OwnedFd) -> io::Result<Option<Exit>> {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
    let Some(status) = waitid(WaitId::PidFd(pidfd.as_fd()), options)? else {
        return Ok(None);
    };
    Ok(Some(
        match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            // Neither: report a failure with an impossible code.
            (None, None) => Exit::Code(-1),
        },
    ))
}

// === impl Child ===

impl Child {
    /// A child `clone3` or `fork` made, with its pidfd.
    fn from_spawned(spawned: crate::preexec::Spawned) -> io::Result<Child> {
        let pid =
            Pid::from_raw(spawned.pid).ok_or_else(|| io::Error::other("clone3 returned pid 0"))?;
        let stdin = spawned
            .stdin
            .map(|fd| ChildStdin::from_std(std::process::ChildStdin::from(fd)))
            .transpose()?;
        let stdout = ChildStdout::from_std(std::process::ChildStdout::from(spawned.stdout))?;
        let stderr = ChildStderr::from_std(std::process::ChildStderr::from(spawned.stderr))?;
        Ok(Child {
            pid,
            pidfd: watch(spawned.pidfd)?,
            exit: None,
            stdin,
            stdout: Some(stdout),
            stderr: Some(stderr),
        })
    }

    /// The pid of the group leader, which is also the group's id.
    pub fn id(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }

    /// How it ended, once [`Child::wait`] saw it.
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// Waits until the group leader exits, and reaps it.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped wait loses nothing; waiting again works.
    pub async fn wait(&mut self) -> io::Result<Exit> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let exit = loop {
            let mut ready = self.pidfd.readable().await?;
            match reap(ready.get_inner())? {
                Some(exit) => break exit,
                None => ready.clear_ready(),
            }
        };
        self.reaped(exit);
        Ok(exit)
    }

    /// Reaps the leader if it has exited; `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<Exit>> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        let exit = reap(self.pidfd.get_ref())?;
        if let Some(exit) = exit {
            self.reaped(exit);
        }
        Ok(exit)
    }

    fn reaped(&mut self, exit: Exit) {
        self.exit = Some(exit);
        disown(self.pid.as_raw_nonzero().get());
    }

    /// Sends `signal` to the leader only (through its pidfd, so never to a
    /// process that reused its pid).
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        pidfd_send_signal(self.pidfd.get_ref(), signal).map_err(Into::into)
    }

    /// Sends `signal` to every process of the group. An empty group is not an
    /// error.
    pub fn signal_group(&self, signal: Signal) -> io::Result<()> {
        match kill_process_group(self.pid, signal) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether any process of the group is still there (zombies count until
    /// someone reaps them).
    pub fn group_alive(&self) -> bool {
        test_kill_process_group(self.pid).is_ok()
    }

    /// Stops the whole group: `signal`, then SIGKILL after `grace`, then
    /// waits until the group is empty (bounded: a process in uninterruptible
    /// sleep cannot be killed, so this gives up after a few seconds more and
    /// says so).
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe in effect: a dropped stop leaves the group signalled
    /// but not necessarily gone (dropping the `Child` then kills it).
    pub async fn stop(&mut self, signal: Signal, grace: Duration) -> io::Result<StopReport> {
        const AFTER_KILL: Duration = Duration::from_secs(5);
        let began = Instant::now();
        self.signal_group(signal)?;
        let mut killed = false;
        let gone = tokio::time::timeout(grace, self.wait_group_empty()).await;
        if gone.is_err() {
            killed = true;
            self.signal_group(Signal::KILL)?;
        }
        let gone = match gone {
            Ok(result) => result.map(|()| true)?,
            Err(_) => tokio::time::timeout(AFTER_KILL, self.wait_group_empty())
                .await
                .is_ok(),
        };
        let exit = self.wait().await?;
        Ok(StopReport {
            exit,
            killed,
            took: began.elapsed(),
            group_left: !gone,
        })
    }

    /// Waits until the leader is reaped and no process of the group is left.
    async fn wait_group_empty(&mut self) -> io::Result<()> {
        self.wait().await?;
        // Other members have no pidfd here; look again with growing pauses.
        let mut pause = Duration::from_millis(1);
        while self.group_alive() {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        // Nothing may outlive its owner: kill the group, then reap the
        // leader now if it is already gone, or later.
        let _ = kill_process_group(self.pid, Signal::KILL);
        if let Ok(Some(_)) = self.try_wait() {
            return;
        }
        let raw = self.pid.as_raw_nonzero().get();
        match (
            tokio::runtime::Handle::try_current(),
            self.pidfd.get_ref().try_clone(),
        ) {
            (Ok(runtime), Ok(fd)) => {
                // Reaped in the background: the group is dead, so this ends
                // at once. Dropping here must not block.
                runtime.spawn(async move {
                    if let Ok(fd) = watch(fd) {
                        let _ = fd.readable().await;
                        let _ = reap(fd.get_ref());
                    }
                    disown(raw);
                });
            }
            // No runtime: leave it to a reaper (or to init when we exit).
            _ => disown(raw),
        }
    }
}

// === impl Exit ===

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The status a shell would report: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal(signal) => match signal_name(*signal) {
                Some(name) => write!(f, "was killed by {name}"),
                None => write!(f, "was killed by signal {signal}"),
            },
        }
    }
}

/// `SIGTERM` for 15, and so on, for the signals a user meets.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    SIGNALS
        .iter()
        .find(|(n, _)| *n == signal)
        .map(|(_, name)| *name)
}

/// The number of a signal written `SIGTERM`, `TERM`, `sigterm` or `15`.
pub fn signal_number(text: &str) -> Option<i32> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    SIGNALS
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(number, _)| *number)
}

const SIGNALS: &[(i32, &str)] = &[
    (1, "SIGHUP"),
    (2, "SIGINT"),
    (3, "SIGQUIT"),
    (4, "SIGILL"),
    (6, "SIGABRT"),
    (7, "SIGBUS"),
    (8, "SIGFPE"),
    (9, "SIGKILL"),
    (10, "SIGUSR1"),
    (11, "SIGSEGV"),
    (12, "SIGUSR2"),
    (13, "SIGPIPE"),
    (14, "SIGALRM"),
    (15, "SIGTERM"),
    (17, "SIGCHLD"),
    (18, "SIGCONT"),
    (19, "SIGSTOP"),
    (20, "SIGTSTP"),
    (28, "SIGWINCH"),
];

// --- the registry of owned pids ---

fn registry() -> &'static Mutex<HashSet<i32>> {
    static OWNED: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    OWNED.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The registry, locked. A poisoned lock still holds a valid set.
pub(crate) fn owned() -> MutexGuard<'static, HashSet<i32>> {
    registry().lock().unwrap_or_else(|e| e.into_inner())
}

fn disown(pid: i32) {
    owned().remove(&pid);
}
