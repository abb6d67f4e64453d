//! The only unsafe code of tether: what a child does between `fork` and
//! `exec`, in three forms.
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
//! **[`spawn`] with [`Via::Clone3`]: `clone3`, with `CLONE_INTO_CGROUP`
//! given a cgroup.** Moving a process into a cgroup (the write above) waits
//! for an RCU grace period on current kernels: 5 to 15 ms on every restart,
//! measured. `clone3` with `CLONE_INTO_CGROUP` (Linux 5.7+) creates the
//! child in its cgroup to begin with, at no cost; systemd starts its
//! services this way. Everything the child needs (argv, environment, the
//! program's candidate paths, the descriptors) is prepared before the
//! clone; the child then only makes async-signal-safe system calls
//! (`setpgid`, `prctl`, `getppid`, `getpid`, `sigprocmask`, `signal`,
//! `write`, `fcntl`, `dup2`, `chdir`, `execve`, `_exit`) and reports a
//! failure as a raw errno on a close-on-exec pipe. Where the kernel (or a
//! seccomp filter) refuses `clone3`, the caller falls back.
//!
//! **[`spawn`] with [`Via::Fork`]: `fork`, then the same child code.** For a
//! child that gets listening sockets (socket activation) where `clone3` is
//! refused. Such a child needs `LISTEN_PID` in its environment, and its
//! value, the child's own pid, is known only after the fork; a
//! `std::process::Command` builds its environment before it forks, so no
//! `pre_exec` hook can set it. Here the environment is ours: it holds a
//! `LISTEN_PID=` entry with room for the digits, and the child writes its
//! pid there (no allocation: digits into the prepared buffer) before it
//! execs. The sockets are put at 3, 4, ... by `dup2` in the child, after
//! every descriptor it still needs was moved above them (`fcntl
//! F_DUPFD_CLOEXEC`), so no placement overwrites one that is yet to be
//! placed, whatever numbers they had. `fork` runs the same child code as
//! `clone3`, on a copy of this process just as `clone3` without `CLONE_VM`
//! makes one.

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

/// A listening socket handed to a child, as systemd's socket activation
/// does (`sd_listen_fds`): the child gets the sockets as descriptors 3, 4,
/// ... in the order given, with `LISTEN_FDS`, `LISTEN_PID` (its own pid) and
/// `LISTEN_FDNAMES` in its environment.
#[derive(Debug, Clone, Copy)]
pub struct ListenFd<'a> {
    /// The socket; the caller keeps it open (the child gets a duplicate).
    pub fd: BorrowedFd<'a>,
    /// Its name in `LISTEN_FDNAMES`; without `:`, which separates them.
    pub name: &'a str,
}

/// How [`spawn`] makes the child.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via<'a> {
    /// `clone3`, created in the cgroup whose open directory this is
    /// (`CLONE_INTO_CGROUP`), or where this process is without one.
    Clone3 { cgroup_dir: Option<BorrowedFd<'a>> },
    /// `fork`; the child joins the cgroup whose `cgroup.procs` this is
    /// before it execs, if one is given.
    Fork {
        cgroup_procs: Option<BorrowedFd<'a>>,
    },
}

/// A child started by [`spawn`]; its stdout and stderr are always piped.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: i32,
    pub(crate) pidfd: OwnedFd,
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
}

/// Why [`spawn`] did not spawn.
#[derive(Debug)]
pub(crate) enum CloneError {
    /// `clone3` or `CLONE_INTO_CGROUP` is not available here: spawn the
    /// other way. ([`Via::Fork`] never says this.)
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
/// stdout and stderr are pipes) in a process group of its own, with a
/// parent-death signal, made as `via` says, with `listen` as its
/// descriptors 3, 4, ... (socket activation; none when empty).
pub(crate) fn spawn(
    command: &Command,
    via: Via<'_>,
    stdin: Stdin,
    listen: &[ListenFd<'_>],
) -> Result<Spawned, CloneError> {
    let plan = Plan::new(command, listen).map_err(CloneError::Spawn)?;
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
    // Everything the child touches, prepared now: it may not allocate.
    let sockets: Vec<RawFd> = listen.iter().map(|l| l.fd.as_raw_fd()).collect();
    // Where the child keeps the sockets' moved copies: written only by the
    // child, in its own copy of this memory, through this pointer.
    let mut moved: Vec<RawFd> = vec![-1; sockets.len()];
    let child = ChildSide {
        stdin: stdin_child.as_raw_fd(),
        stdout: stdout_child.as_raw_fd(),
        stderr: stderr_child.as_raw_fd(),
        report: report_write.as_raw_fd(),
        parent,
        cgroup_procs: match via {
            Via::Fork { cgroup_procs } => cgroup_procs.map(|fd| fd.as_raw_fd()),
            Via::Clone3 { .. } => None,
        },
        sockets: &sockets,
        moved: moved.as_mut_ptr(),
        plan: &plan,
    };
    let (pid, pidfd) = match via {
        Via::Clone3 { cgroup_dir } => {
            let mut pidfd: RawFd = -1;
            let mut args = CloneArgs {
                flags: libc::CLONE_PIDFD as u64,
                pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
                exit_signal: libc::SIGCHLD as u64,
                ..CloneArgs::default()
            };
            if let Some(dir) = cgroup_dir {
                args.flags |= CLONE_INTO_CGROUP;
                args.cgroup = dir.as_raw_fd() as u64;
            }
            // SAFETY: clone3 without CLONE_VM gives the child a copy of this
            // process (like fork). In the child, `ChildSide::exec` runs on
            // that copy: it makes only async-signal-safe system calls on
            // values prepared above, and never returns (execve, or _exit).
            // `args` outlives the call and has the layout and size the
            // kernel expects (a kernel that knows a smaller version accepts
            // it when the fields it does not know are zero, as `cgroup` is
            // without a cgroup, and refuses it with E2BIG otherwise).
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
                    Some(
                        libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EPERM | libc::EOPNOTSUPP,
                    ) => CloneError::Unsupported,
                    _ => CloneError::Spawn(e),
                });
            }
            // SAFETY: the kernel wrote a new descriptor there (CLONE_PIDFD),
            // which nothing else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            (ret as i32, pidfd)
        }
        Via::Fork { .. } => {
            // SAFETY: the child is a copy of this process, as with clone3
            // above, and runs only `ChildSide::exec` on values prepared
            // before the fork, which never returns. glibc's fork runs its
            // atfork handlers, as the fork of `std::process::Command` does.
            let ret = unsafe { libc::fork() };
            if ret == 0 {
                // SAFETY: we are the child; see above.
                unsafe { child.exec() }
            }
            if ret < 0 {
                return Err(CloneError::Spawn(io::Error::last_os_error()));
            }
            let pid = Pid::from_raw(ret).ok_or_else(|| {
                CloneError::Spawn(io::Error::other("fork returned pid 0 to the parent"))
            })?;
            // Not reaped by anyone yet (the caller holds the lock the
            // reaper takes), so the pid is still this child's.
            match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
                Ok(pidfd) => (ret, pidfd),
                Err(e) => {
                    // Without a pidfd it cannot be waited for: kill it and
                    // reap it here (it is our child and dies at once).
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                    let _ =
                        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                    return Err(CloneError::Spawn(e.into()));
                }
            }
        }
    };
    drop((stdin_child, stdout_child, stderr_child, report_write));
    // The child wrote into its own copy of `moved`; ours is untouched and
    // goes only now, after the child is made.
    drop(moved);
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

/// `LISTEN_PID=`: the start of the entry the child completes.
const LISTEN_PID: &[u8] = b"LISTEN_PID=";
/// The entry's whole buffer: the prefix, a pid's ten digits at most (a pid
/// is below 2^22 on Linux, and an `i32` has ten digits), and the NUL.
const LISTEN_PID_SLOT: usize = 32;

/// The program, arguments and environment as C strings, and the paths to
/// try, as `execvp` would, searching the `PATH` of the child's environment.
struct Plan {
    candidates: Vec<CString>,
    /// Null-terminated pointer arrays into `_strings` (and `listen_pid`).
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    _strings: Vec<CString>,
    /// With sockets: the `LISTEN_PID=` entry of `envp`, with room for the
    /// digits. Only the child writes it (its pid), through `listen_pid_at`,
    /// taken from it once and used for the entry in `envp` too.
    _listen_pid: Option<Vec<u8>>,
    listen_pid_at: Option<*mut u8>,
}

impl Plan {
    fn new(command: &Command, listen: &[ListenFd<'_>]) -> io::Result<Plan> {
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
        if !listen.is_empty() {
            // The child's own, whatever this process was given.
            env.retain(|(k, _)| {
                !matches!(
                    k.to_str(),
                    Some("LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES")
                )
            });
            let names: Vec<&str> = listen.iter().map(|l| l.name).collect();
            env.push(("LISTEN_FDS".into(), listen.len().to_string().into()));
            env.push(("LISTEN_FDNAMES".into(), names.join(":").into()));
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
        let mut envp = pointers(&envp_at);
        let (listen_pid, listen_pid_at) = if listen.is_empty() {
            (None, None)
        } else {
            // A complete entry until the child writes its pid: "LISTEN_PID="
            // and NULs. Its heap buffer stays where it is when the Vec moves.
            let mut slot = vec![0u8; LISTEN_PID_SLOT];
            slot[..LISTEN_PID.len()].copy_from_slice(LISTEN_PID);
            let at = slot.as_mut_ptr();
            envp.insert(envp.len() - 1, at.cast_const().cast());
            (Some(slot), Some(at))
        };
        Ok(Plan {
            candidates,
            argv,
            envp,
            cwd,
            _strings: strings,
            _listen_pid: listen_pid,
            listen_pid_at,
        })
    }
}

/// Writes `pid` in decimal into `out`; returns how many digits. Nothing
/// allocates: the child calls it.
fn pid_digits(pid: u32, out: &mut [u8; 10]) -> usize {
    let mut reversed = [0u8; 10];
    let mut n = pid;
    let mut len = 0;
    loop {
        reversed[len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 || len == reversed.len() {
            break;
        }
    }
    for i in 0..len {
        out[i] = reversed[len - 1 - i];
    }
    len
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
    /// [`Via::Fork`] into a cgroup: its `cgroup.procs`, to join.
    cgroup_procs: Option<RawFd>,
    /// The listening sockets, for 3, 4, ...
    sockets: &'a [RawFd],
    /// Room for `sockets.len()` descriptors, the sockets' moved copies.
    moved: *mut RawFd,
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
        // takes values prepared before the clone; nothing allocates. The
        // writes through `moved` and `listen_pid_at` go to buffers of the
        // right size that only this (copied) process uses from now on.
        unsafe {
            let fail = |report: RawFd| -> ! {
                let errno = *libc::__errno_location();
                let bytes = errno.to_ne_bytes();
                libc::write(report, bytes.as_ptr().cast(), bytes.len());
                libc::_exit(127)
            };
            let mut report = self.report;
            if libc::setpgid(0, 0) != 0 {
                fail(report);
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                fail(report);
            }
            if libc::getppid() != self.parent {
                *libc::__errno_location() = libc::ESRCH;
                fail(report);
            }
            // What a spawned program expects, as std's spawn does: no
            // blocked signals, SIGPIPE at its default.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if let Some(procs) = self.cgroup_procs
                && libc::write(procs, b"0".as_ptr().cast(), 1) != 1
            {
                fail(report);
            }
            // Every descriptor to place goes above the places first (0, 1,
            // 2, then 3 + one per socket): a descriptor may sit where
            // another is to go. The copies are close-on-exec; `dup2` gives
            // the placed ones without it. Nothing else of this process is
            // open in the program: all of it is close-on-exec.
            let above = 3 + self.sockets.len() as libc::c_int;
            let lift = |fd: RawFd, report: RawFd| -> RawFd {
                let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if copy < 0 {
                    fail(report);
                }
                copy
            };
            report = lift(report, report);
            let stdio = [
                lift(self.stdin, report),
                lift(self.stdout, report),
                lift(self.stderr, report),
            ];
            for (i, fd) in self.sockets.iter().enumerate() {
                *self.moved.add(i) = lift(*fd, report);
            }
            for (to, from) in stdio.into_iter().enumerate() {
                if libc::dup2(from, to as libc::c_int) < 0 {
                    fail(report);
                }
            }
            for i in 0..self.sockets.len() {
                if libc::dup2(*self.moved.add(i), 3 + i as libc::c_int) < 0 {
                    fail(report);
                }
            }
            if let Some(slot) = self.plan.listen_pid_at {
                // Not libc's getpid, which some C libraries cached before
                // a clone they did not see.
                let pid = libc::syscall(libc::SYS_getpid) as u32;
                let mut digits = [0u8; 10];
                let len = pid_digits(pid, &mut digits);
                let at = slot.add(LISTEN_PID.len());
                std::ptr::copy_nonoverlapping(digits.as_ptr(), at, len);
                *at.add(len) = 0;
            }
            if let Some(cwd) = &self.plan.cwd
                && libc::chdir(cwd.as_ptr()) != 0
            {
                fail(report);
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
            fail(report)
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

    #[test]
    fn pids_are_written_in_decimal() {
        let mut out = [0u8; 10];
        for (pid, text) in [
            (1, "1"),
            (10, "10"),
            (4_194_304, "4194304"),
            (u32::MAX, "4294967295"),
        ] {
            let len = pid_digits(pid, &mut out);
            assert_eq!(&out[..len], text.as_bytes());
        }
        assert!(LISTEN_PID.len() + 10 < LISTEN_PID_SLOT);
    }

    #[test]
    fn the_listen_pid_entry_is_complete_before_the_child_writes_it() {
        let mut command = Command::new("true");
        command.env("LISTEN_FDS", "9").env("KEEP", "1");
        // A descriptor of ours, to pass; only its number is read here.
        let null = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&null);
        let listen = [ListenFd { fd, name: "web" }, ListenFd { fd, name: "admin" }];
        let plan = Plan::new(&command, &listen).unwrap();
        let envp: Vec<String> = plan
            .envp
            .iter()
            .take_while(|p| !p.is_null())
            .map(|p| {
                // SAFETY: every pointer of `envp` is a NUL-terminated string
                // that `plan` owns.
                unsafe { std::ffi::CStr::from_ptr(*p) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert!(envp.contains(&"LISTEN_FDS=2".to_string()), "{envp:?}");
        assert!(envp.contains(&"LISTEN_FDNAMES=web:admin".to_string()));
        assert!(envp.contains(&"LISTEN_PID=".to_string()));
        assert!(envp.contains(&"KEEP=1".to_string()));
        let listen_vars = envp.iter().filter(|e| e.starts_with("LISTEN_")).count();
        assert_eq!(listen_vars, 3, "each once: {envp:?}");
        assert!(plan.envp.last().is_some_and(|p| p.is_null()));
    }
}
