//! The only unsafe code of tether: what a child does between `fork` and
//! `exec`, in two forms.
//!
//! **[`arm`]: a `pre_exec` hook on a `std::process::Command`.**
//! `CommandExt::pre_exec` is unsafe because the closure runs in a forked
//! copy of a multi-threaded process: it may only make async-signal-safe
//! calls, and must not allocate or take locks. This one makes raw system
//! calls and touches no memory but its own captures:
//!
//! 1. `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the child dies with the thread
//!    that spawned it, so a SIGKILLed tether leaves no service running;
//! 2. `getppid()`: if that parent is already gone (it died between `fork`
//!    and the `prctl`), the child gives up instead of running orphaned;
//! 3. `write(cgroup.procs, "0")`, given a cgroup: the child joins it before
//!    it can fork anything.
//!
//! **[`spawn_into_cgroup`]: `clone3(CLONE_INTO_CGROUP)`.** Moving a process
//! into a cgroup (the write above) waits for an RCU grace period on current
//! kernels: 5 to 15 ms on every restart, measured. `clone3` with
//! `CLONE_INTO_CGROUP` (Linux 5.7+) creates the child in its cgroup to begin
//! with, at no cost; systemd starts its services this way. Everything the
//! child needs (argv, environment, the program's candidate paths, the
//! descriptors) is prepared before the clone; the child then only makes
//! async-signal-safe system calls (`setpgid`, `prctl`, `getppid`,
//! `sigprocmask`, `signal`, `dup2`, `chdir`, `execve`, `write`, `_exit`) and
//! reports a failure as a raw errno on a close-on-exec pipe. Where the
//! kernel (or a seccomp filter) refuses `clone3`, the caller falls back to
//! [`arm`] and the write.

#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
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

/// What the child's stdin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    Null,
    Piped,
}

/// A child started by [`spawn_into_cgroup`]; its stdout and stderr are
/// always piped.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: i32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// Why [`spawn_into_cgroup`] did not spawn.
#[derive(Debug)]
pub(crate) enum CloneError {
    /// `clone3` or `CLONE_INTO_CGROUP` is not available here: spawn the
    /// other way.
    Unsupported,
    /// The spawn itself failed (the program does not exist, ...).
    Spawn(io::Error),
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone_args` of `clone3(2)`, up to `cgroup` (the size of version 2).
#[repr(C, align(8))]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Spawns `command`'s program (its arguments, environment changes and
/// working directory; its stdio settings are not read: stdin is `stdin`,
/// stdout and stderr are pipes) in a process group of its own, inside the
/// cgroup `cgroup_dir` (an open directory of it), with a parent-death
/// signal.
pub(crate) fn spawn_into_cgroup(
    command: &Command,
    cgroup_dir: BorrowedFd<'_>,
    stdin: Stdin,
) -> Result<Spawned, CloneError> {
    let plan = Plan::new(command).map_err(CloneError::Spawn)?;
    let spawn_err = CloneError::Spawn;
    let (stdin_child, stdin_parent) = match stdin {
        Stdin::Null => {
            let null = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| spawn_err(e.into()))?;
            (null, None)
        }
        Stdin::Piped => {
            let (read, write) = pipe().map_err(spawn_err)?;
            (read, Some(write))
        }
    };
    let (stdout_parent, stdout_child) = pipe().map_err(CloneError::Spawn)?;
    let (stderr_parent, stderr_child) = pipe().map_err(CloneError::Spawn)?;
    let (report_read, report_write) = pipe().map_err(CloneError::Spawn)?;

    let parent = getpid().as_raw_nonzero().get();
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP | libc::CLONE_PIDFD as u64,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // Everything the child touches, prepared now: it may not allocate.
    let child = ChildSide {
        stdin: stdin_child.as_raw_fd(),
        stdout: stdout_child.as_raw_fd(),
        stderr: stderr_child.as_raw_fd(),
        report: report_write.as_raw_fd(),
        parent,
        plan: &plan,
    };
    // SAFETY: clone3 without CLONE_VM gives the child a copy of this
    // process (like fork). In the child, `ChildSide::exec` runs on that
    // copy: it makes only async-signal-safe system calls on values prepared
    // above, and never returns (execve, or _exit). `args` outlives the call
    // and has the layout and size the kernel expects.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        // SAFETY: we are the child; see above.
        unsafe { child.exec() }
    }
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EPERM | libc::EOPNOTSUPP) => {
                CloneError::Unsupported
            }
            _ => CloneError::Spawn(e),
        });
    }
    let pid = ret as i32;
    // SAFETY: the kernel wrote a new descriptor there (CLONE_PIDFD), which
    // nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop((stdin_child, stdout_child, stderr_child, report_write));
    // The report pipe closes at exec (close-on-exec) or carries the errno
    // of the failure.
    let mut errno = [0u8; 4];
    let got = read_full(&report_read, &mut errno);
    if got == 4 {
        // It failed before exec and exits 127: reap it now.
        let _ = rustix::process::waitid(
            rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&pidfd)),
            rustix::process::WaitIdOptions::EXITED,
        );
        return Err(CloneError::Spawn(io::Error::from_raw_os_error(
            i32::from_ne_bytes(errno),
        )));
    }
    Ok(Spawned {
        pid,
        pidfd,
        stdin: stdin_parent,
        stdout: stdout_parent,
        stderr: stderr_parent,
    })
}

/// The program, arguments and environment as C strings, and the paths to
/// try, as `execvp` would, searching the `PATH` of the child's environment.
struct Plan {
    candidates: Vec<CString>,
    /// Null-terminated pointer arrays into `_strings`.
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    _strings: Vec<CString>,
}

impl Plan {
    fn new(command: &Command) -> io::Result<Plan> {
        let nul = |_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the command");
        let c = |s: &OsStr| CString::new(s.as_bytes()).map_err(nul);
        let program = command.get_program();
        let mut strings = Vec::new();
        let mut argv_at = Vec::new();
        for arg in std::iter::once(program).chain(command.get_args()) {
            argv_at.push(strings.len());
            strings.push(c(arg)?);
        }
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (key, value) in command.get_envs() {
            env.retain(|(k, _)| k != key);
            if let Some(value) = value {
                env.push((key.to_os_string(), value.to_os_string()));
            }
        }
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let mut envp_at = Vec::new();
        for (key, value) in &env {
            let mut entry = key.clone().into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            envp_at.push(strings.len());
            strings.push(CString::new(entry).map_err(nul)?);
        }
        let candidates = candidates(Path::new(program), path_var.as_deref())
            .into_iter()
            .map(|p| c(p.as_os_str()))
            .collect::<io::Result<Vec<_>>>()?;
        let cwd = command
            .get_current_dir()
            .map(|d| c(d.as_os_str()))
            .transpose()?;
        let pointers = |at: &[usize]| {
            let mut v: Vec<*const libc::c_char> = at.iter().map(|i| strings[*i].as_ptr()).collect();
            v.push(std::ptr::null());
            v
        };
        let argv = pointers(&argv_at);
        let envp = pointers(&envp_at);
        Ok(Plan {
            candidates,
            argv,
            envp,
            cwd,
            _strings: strings,
        })
    }
}

/// The paths `execvp` tries for `program`: itself if it holds a `/`, else
/// each directory of `PATH` (the default search path without one).
fn candidates(program: &Path, path: Option<&OsStr>) -> Vec<PathBuf> {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return vec![program.to_path_buf()];
    }
    let path = path.unwrap_or_else(|| OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(path)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".").join(program)
            } else {
                dir.join(program)
            }
        })
        .collect()
}

/// What the child needs, by raw descriptor and pointer.
struct ChildSide<'a> {
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
    parent: i32,
    plan: &'a Plan,
}

impl ChildSide<'_> {
    /// In the child: set up, exec, or report the errno and exit.
    ///
    /// # Safety
    ///
    /// Only in the child of a fork-like clone, on a plan prepared before it.
    unsafe fn exec(&self) -> ! {
        // SAFETY (for the block): every call below is async-signal-safe and
        // takes values prepared before the clone; nothing allocates.
        unsafe {
            let fail = |report: RawFd| -> ! {
                let errno = *libc::__errno_location();
                let bytes = errno.to_ne_bytes();
                libc::write(report, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127)
            };
            if libc::setpgid(0, 0) != 0 {
                fail(self.report);
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                fail(self.report);
            }
            if libc::getppid() != self.parent {
                *libc::__errno_location() = libc::ESRCH;
                fail(self.report);
            }
            // What a spawned program expects, as std's spawn does: no
            // blocked signals, SIGPIPE at its default.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            for (from, to) in [(self.stdin, 0), (self.stdout, 1), (self.stderr, 2)] {
                if libc::dup2(from, to) < 0 {
                    fail(self.report);
                }
            }
            if let Some(cwd) = &self.plan.cwd
                && libc::chdir(cwd.as_ptr()) != 0
            {
                fail(self.report);
            }
            // As execvp: a permission error is kept over "not found" and
            // said if nothing else works.
            let mut denied = false;
            for candidate in &self.plan.candidates {
                libc::execve(
                    candidate.as_ptr(),
                    self.plan.argv.as_ptr(),
                    self.plan.envp.as_ptr(),
                );
                if *libc::__errno_location() == libc::EACCES {
                    denied = true;
                }
            }
            if denied {
                *libc::__errno_location() = libc::EACCES;
            }
            fail(self.report)
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(Into::into)
}

/// Reads until `buf` is full or the writer closed; returns how much came.
fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break,
        }
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_searched_as_execvp_does() {
        let path = Some(OsStr::new("/a:/b::/c"));
        assert_eq!(
            candidates(Path::new("run"), path),
            [
                PathBuf::from("/a/run"),
                PathBuf::from("/b/run"),
                PathBuf::from("./run"),
                PathBuf::from("/c/run")
            ]
        );
        assert_eq!(candidates(Path::new("./x"), path), [PathBuf::from("./x")]);
        assert_eq!(
            candidates(Path::new("/bin/sh"), None),
            [PathBuf::from("/bin/sh")]
        );
        assert_eq!(candidates(Path::new("sh"), None).len(), 3);
    }
}
