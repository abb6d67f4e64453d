//! The checks before a wait, with a little I/O and nothing started: a
//! command exists and may be run, a file is not unreadable, a socket path
//! is not some other kind of file.

use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why [`find_program`] found nothing to run. A shell exits with 127
/// ("command not found") for the first two, 126 ("cannot execute") for the
/// others.
#[derive(Debug)]
pub enum ProgramError {
    /// A name without a `/` that no directory of `PATH` holds as an
    /// executable file.
    NotFound { program: String },
    /// A path (with a `/`) to nothing.
    DoesNotExist { program: String },
    /// A path through a directory this user may not search.
    PermissionDenied { program: String },
    /// A path to a directory.
    IsADirectory { program: String },
    /// A file without an execute bit.
    NotExecutable { program: String },
    /// Anything else that kept the path from being looked at.
    Unusable { program: String, error: io::Error },
}

/// Finds `program` the way `execvp` would: a path if it has a slash, else the
/// first executable file of that name on `PATH`.
pub fn find_program(program: &str) -> Result<PathBuf, ProgramError> {
    if program.contains('/') {
        return check_executable(Path::new(program)).map(|()| PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if check_executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(ProgramError::NotFound {
        program: program.to_string(),
    })
}

fn check_executable(path: &Path) -> Result<(), ProgramError> {
    let program = || path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => ProgramError::DoesNotExist { program: program() },
        io::ErrorKind::PermissionDenied => ProgramError::PermissionDenied { program: program() },
        _ => ProgramError::Unusable {
            program: program(),
            error,
        },
    })?;
    if meta.is_dir() {
        return Err(ProgramError::IsADirectory { program: program() });
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(ProgramError::NotExecutable { program: program() });
    }
    Ok(())
}

// === impl ProgramError ===

impl ProgramError {
    /// The program as given.
    pub fn program(&self) -> &str {
        match self {
            ProgramError::NotFound { program }
            | ProgramError::DoesNotExist { program }
            | ProgramError::PermissionDenied { program }
            | ProgramError::IsADirectory { program }
            | ProgramError::NotExecutable { program }
            | ProgramError::Unusable { program, .. } => program,
        }
    }
}

impl fmt::Display for ProgramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let program = self.program();
        match self {
            ProgramError::NotFound { .. } => write!(f, "command '{program}' not found in PATH"),
            ProgramError::DoesNotExist { .. } => write!(f, "command '{program}' does not exist"),
            ProgramError::PermissionDenied { .. } => {
                write!(
                    f,
                    "command '{program}' cannot be reached: permission denied"
                )
            }
            ProgramError::IsADirectory { .. } => write!(f, "command '{program}' is a directory"),
            ProgramError::NotExecutable { .. } => {
                write!(f, "command '{program}' is not executable")
            }
            ProgramError::Unusable { error, .. } => write!(f, "command '{program}': {error}"),
        }
    }
}

/// The I/O error of [`ProgramError::Unusable`] is part of the message, not a
/// source, so that it is said once.
impl std::error::Error for ProgramError {}

// --- files and sockets ---

/// A file target's path: one that is not there yet is what it waits for,
/// but one this user may not look at or read never becomes ready.
pub(super) fn file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        // Not there yet: that is what we wait for.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
            "cannot look at '{}': permission denied",
            path.display()
        )),
        Err(e) => Err(format!("cannot look at '{}': {e}", path.display())),
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => {
                    format!("cannot read '{}': permission denied", path.display())
                }
                _ => format!("cannot read '{}': {e}", path.display()),
            }),
    }
}

/// A unix target's socket file: anything but a socket there, or a path
/// this user may not reach, never becomes ready.
pub(super) fn socket(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            Err(format!("'{}' exists but is not a socket", path.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(format!(
            "cannot reach '{}': permission denied",
            path.display()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::tests::ok;

    #[test]
    fn preflight_finds_commands_and_rejects_missing_ones() {
        assert!(ok("exec:true").preflight().is_ok());
        let e = ok("exec:no-such-command-tether").preflight().unwrap_err();
        assert_eq!(
            e.to_string(),
            "target 'exec:no-such-command-tether': command 'no-such-command-tether' not found in PATH"
        );
        let e = ok("exec:/nonexistent/bin/x").preflight().unwrap_err();
        assert!(e.reason().contains("does not exist"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        let e = ok(&format!("exec:{}", plain.display()))
            .preflight()
            .unwrap_err();
        assert!(e.reason().contains("is not executable"), "{e}");
        // A file that is not there yet is what a file target waits for.
        assert!(ok("file:///nonexistent/tether/x").preflight().is_ok());
        let e = ok(&format!("unix://{}", plain.display()))
            .preflight()
            .unwrap_err();
        assert!(e.reason().contains("is not a socket"), "{e}");
    }

    #[test]
    fn program_errors_say_what_is_wrong() {
        let e = find_program("no-such-command-tether").unwrap_err();
        assert!(matches!(e, ProgramError::NotFound { .. }));
        assert_eq!(e.program(), "no-such-command-tether");
        let e = find_program("/nonexistent/bin/x").unwrap_err();
        assert!(matches!(e, ProgramError::DoesNotExist { .. }));
        assert_eq!(e.to_string(), "command '/nonexistent/bin/x' does not exist");
        let dir = tempfile::tempdir().unwrap();
        let e = find_program(&format!("{}/", dir.path().display())).unwrap_err();
        assert!(matches!(e, ProgramError::IsADirectory { .. }));
        assert!(e.to_string().ends_with("/' is a directory"), "{e}");
        // A name that says "not found" is still a file that is there.
        let named = dir.path().join("not found");
        std::fs::write(&named, "x").unwrap();
        let e = find_program(&named.display().to_string()).unwrap_err();
        assert!(matches!(e, ProgramError::NotExecutable { .. }));
        assert_eq!(
            e.to_string(),
            format!("command '{}' is not executable", named.display())
        );
        let e = find_program(&format!("{}/x", named.display())).unwrap_err();
        assert!(matches!(e, ProgramError::Unusable { .. }));
        assert!(e.to_string().contains("Not a directory"), "{e}");
        assert!(find_program("sh").unwrap().ends_with("sh"));
    }
}
