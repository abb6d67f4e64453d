//! The stack's private runtime directory: control socket, notify sockets and
//! heartbeat files live here. It belongs to the user, mode 0700, and is
//! never reached through a symlink.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use serde::Serialize;
use tether_process::Identity;

use crate::event::{ServiceView, unix_ms};

/// A directory private to this user.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates `path` (and missing parents) with mode 0700, or checks that
    /// an existing one is a real directory owned by this user that nobody
    /// else can enter.
    ///
    /// # Errors
    ///
    /// When the directory cannot be made, or an existing one is a symlink,
    /// belongs to another user, or is open to group or others: the message
    /// names the path and the problem.
    pub fn create(path: &Path) -> io::Result<RunDir> {
        for dir in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
            if dir.as_os_str().is_empty() {
                continue;
            }
            match std::fs::symlink_metadata(dir) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(dir)
                        .or_else(|e| {
                            // Another tether may have made it in between.
                            if e.kind() == io::ErrorKind::AlreadyExists {
                                Ok(())
                            } else {
                                Err(e)
                            }
                        })?;
                }
                Err(e) => return Err(e),
            }
        }
        check_private(path)?;
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn control_socket(&self) -> PathBuf {
        self.path.join("control.sock")
    }

    pub(crate) fn notify_socket(&self, service: &str) -> PathBuf {
        self.path.join(format!("{service}.notify"))
    }

    pub fn heartbeat(&self, service: &str) -> PathBuf {
        self.path.join(format!("{service}.json"))
    }

    /// Takes the stack's lock, held for as long as the returned value
    /// lives: one supervisor per stack. A lock whose holder died (even by
    /// SIGKILL) is free again at once, since the kernel drops it with the
    /// holder's last descriptor.
    ///
    /// # Errors
    ///
    /// [`LockError::Held`] with the holder's pid when another supervisor
    /// runs this stack; [`LockError::Io`] when the lock file cannot be
    /// opened (a symlink there is refused).
    pub fn lock(&self) -> Result<StackLock, LockError> {
        use std::io::{Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| LockError::Io(path.clone(), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held(self.live_holder()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(LockError::Io(path, e)),
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        if let Err(e) = written {
            return Err(LockError::Io(path, e));
        }
        Ok(StackLock { _file: file })
    }

    /// The holder's pid, for a refusal: it writes it just after taking the
    /// lock, so right then the file may be empty or still name the holder
    /// before it (dead). Read again, briefly (a bounded number of yields),
    /// until it names a live process.
    fn live_holder(&self) -> Option<u32> {
        for _ in 0..10_000 {
            if let Some(pid) = self.lock_holder()
                && rustix::process::Pid::from_raw(pid as i32)
                    .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
            {
                return Some(pid);
            }
            std::thread::yield_now();
        }
        self.lock_holder()
    }

    /// The pid the lock's holder wrote (it writes it just after taking the
    /// lock, so a moment later than the lock itself).
    pub fn lock_holder(&self) -> Option<u32> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut text = String::new();
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.path.join("lock"))
            .ok()?
            .take(64)
            .read_to_string(&mut text)
            .ok()?;
        text.trim().parse().ok()
    }

    /// Removes what an earlier run left in the directory: heartbeat files
    /// (so none is ever read as this run's), their temporary files and
    /// notify sockets. Returns how many were removed.
    pub fn clear(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale =
                name.ends_with(".json") || name.ends_with(".json.tmp") || name.ends_with(".notify");
            if stale && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Where the path of the stack's cgroup is written while it runs, so
    /// that the next `tether up` can end what a killed one left in it.
    pub fn cgroup_record(&self) -> PathBuf {
        self.path.join("cgroup")
    }
}

/// The stack's lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct StackLock {
    _file: std::fs::File,
}

/// Why the stack's lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another supervisor holds it (its pid, when it could be read).
    Held(Option<u32>),
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held(Some(pid)) => write!(
                f,
                "this stack is already running (tether up, pid {pid}); stop it with `tether down` first"
            ),
            LockError::Held(None) => write!(
                f,
                "this stack is already running (another tether up holds its lock); stop it with `tether down` first"
            ),
            LockError::Io(path, e) => {
                write!(f, "cannot open the stack's lock {}: {e}", path.display())
            }
        }
    }
}

impl std::error::Error for LockError {}

fn check_private(path: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let problem = if meta.file_type().is_symlink() {
        Some("is a symlink")
    } else if !meta.is_dir() {
        Some("is not a directory")
    } else if meta.uid() != rustix::process::geteuid().as_raw() {
        Some("belongs to another user")
    } else if meta.permissions().mode() & 0o077 != 0 {
        Some("is open to other users (mode must be 0700)")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("runtime directory {} {problem}", path.display()),
        )),
        None => Ok(()),
    }
}

/// What a heartbeat file says. `writer` names the process that wrote it
/// (this tether) and `pid`/`pid_start` the service's process, so a reader
/// can tell a file whose writer is gone from a current one, whatever its
/// age (`tether wait file://...` does).
#[derive(Debug, Serialize)]
struct Heartbeat<'a> {
    service: &'a str,
    state: &'a str,
    pid: Option<u32>,
    pid_start: Option<u64>,
    writer: Option<Writer<'a>>,
    since_ms: u64,
    updated_ms: u64,
    busy: bool,
    restarts: u64,
    status: Option<&'a str>,
    last_error: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct Writer<'a> {
    pid: u32,
    start: u64,
    boot_id: &'a str,
    pid_ns: &'a str,
}

/// This process, as heartbeats name it (read once).
fn writer() -> Option<&'static Identity> {
    static ME: OnceLock<Option<Identity>> = OnceLock::new();
    ME.get_or_init(|| Identity::current().ok()).as_ref()
}

/// Writes `view` to `path` atomically (a temporary file in the same
/// directory, then a rename), mode 0600.
pub(crate) fn write_heartbeat(path: &Path, view: &ServiceView) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let beat = Heartbeat {
        service: &view.name,
        state: view.state.as_str(),
        pid: view.pid,
        pid_start: view.pid_start_ticks,
        writer: writer().map(|w| Writer {
            pid: w.pid,
            start: w.start_ticks,
            boot_id: &w.boot_id,
            pid_ns: &w.pid_ns,
        }),
        since_ms: view.since_ms,
        updated_ms: unix_ms(SystemTime::now()),
        busy: view.busy,
        restarts: view.restarts,
        status: view.status_text.as_deref(),
        last_error: view.last_error.as_deref(),
    };
    let text = serde_json::to_vec(&beat).map_err(io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&text)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_and_refuses_open_or_linked_dirs() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("a/b/stack");
        let dir = RunDir::create(&path).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(
            RunDir::create(&path).is_ok(),
            "an existing private dir is fine"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = RunDir::create(&path).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("is open to other users (mode must be 0700)"),
            "{e}"
        );
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = RunDir::create(&link).unwrap_err();
        assert!(e.to_string().ends_with("is a symlink"), "{e}");
    }
}
