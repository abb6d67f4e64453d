//! The only unsafe code of tether: what a child does between `fork` and
//! `exec`.
//!
//! `CommandExt::pre_exec` is unsafe because the closure runs in a forked
//! copy of a multi-threaded process: it may only make async-signal-safe
//! calls, and must not allocate or take locks. This one makes three raw
//! system calls and touches no memory but its own captures:
//!
//! 1. `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the child dies with the thread
//!    that spawned it, so a SIGKILLed tether leaves no service running;
//! 2. `getppid()`: if that parent is already gone (it died between `fork`
//!    and the `prctl`), the child gives up instead of running orphaned;
//! 3. `write(cgroup.procs, "0")`: the child joins its service's cgroup
//!    before it can fork anything, so nothing it starts is ever outside.
//!
//! Errors come back as raw errno values, which `std` reports as the
//! spawn's error without allocating in the child.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{Pid, Signal, getpid, getppid, set_parent_process_death_signal};

/// Arms `command` so its child dies with this thread and, given
/// `cgroup_procs` (an open `cgroup.procs`), starts inside that cgroup.
///
/// # Errors
///
/// When the cgroup's file descriptor cannot be duplicated for the child.
pub(crate) fn arm(command: &mut Command, cgroup_procs: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let parent: Pid = getpid();
    // The closure owns its own descriptor (close-on-exec, so it never
    // reaches the program), valid for as long as the command lives.
    let procs = cgroup_procs
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 0))
        .transpose()?;
    let hook = move || -> io::Result<()> {
        set_parent_process_death_signal(Some(Signal::KILL)).map_err(io::Error::from)?;
        if getppid() != Some(parent) {
            return Err(io::Error::from(rustix::io::Errno::SRCH));
        }
        if let Some(procs) = &procs {
            rustix::io::write(procs, b"0").map_err(io::Error::from)?;
        }
        Ok(())
    };
    // SAFETY: the hook makes only async-signal-safe system calls (prctl,
    // getppid, write) through rustix, which wraps them without allocating;
    // it reads only values it owns (a pid, a descriptor) and builds errors
    // from raw errno values, which do not allocate.
    unsafe {
        command.pre_exec(hook);
    }
    Ok(())
}
