//! The stack's private runtime directory: control socket, notify sockets and
//! heartbeat files live here. It belongs to the user, mode 0700, and is
//! never reached through a symlink.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

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
}

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

/// What a heartbeat file says.
#[derive(Debug, Serialize)]
struct Heartbeat<'a> {
    service: &'a str,
    state: &'a str,
    pid: Option<u32>,
    since_ms: u64,
    updated_ms: u64,
    busy: bool,
    restarts: u64,
    status: Option<&'a str>,
    last_error: Option<&'a str>,
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

pub(crate) fn remove_heartbeat(path: &Path) {
    let _ = std::fs::remove_file(path);
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
