//! `unix:///PATH`, `unix:PATH`, `unix:@NAME`: a Unix stream socket that
//! accepts (`@` = abstract; at most 107 bytes).

use std::fmt;
use std::path::PathBuf;

use super::options::split_options;
use super::{Kind, Spec, Target, preflight};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSpec {
    pub path: SocketPath,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketPath {
    /// A socket file in the file system.
    File(PathBuf),
    /// A Linux abstract socket name (written `@NAME`).
    Abstract(String),
}

/// The longest socket path (or abstract name) a Unix socket address holds:
/// `sun_path` is 108 bytes, with a NUL after a path or before an abstract
/// name. A longer one can never be connected to, so it is refused here
/// instead of being retried until the deadline.
pub const MAX_SOCKET_PATH: usize = 107;

/// Reads a unix target (`rest` is what follows `unix:`).
pub(super) fn parse(_text: &str, rest: &str) -> Result<Target, String> {
    let (path, options) = split_options(rest, &[], "unix")?;
    let path = match path.strip_prefix("//") {
        Some(p) if p.starts_with('/') => p,
        Some(p) => {
            return Err(format!(
                "unix://{p}: the path must be absolute (unix:///path)"
            ));
        }
        None => path,
    };
    if path.is_empty() {
        return Err("missing socket path (expected unix:///PATH)".to_string());
    }
    let spec = match path.strip_prefix('@') {
        Some("") => return Err("missing abstract socket name after '@'".to_string()),
        Some(name) if name.len() > MAX_SOCKET_PATH => {
            return Err(format!(
                "abstract unix socket name is {} bytes long; the kernel takes at most {MAX_SOCKET_PATH}",
                name.len()
            ));
        }
        Some(name) => SocketPath::Abstract(name.to_string()),
        None if path.len() > MAX_SOCKET_PATH => {
            return Err(format!(
                "unix socket path is {} bytes long; the kernel takes at most {MAX_SOCKET_PATH}",
                path.len()
            ));
        }
        None => SocketPath::File(PathBuf::from(path)),
    };
    let shown = match &spec {
        SocketPath::File(p) if p.is_absolute() => format!("unix://{}", p.display()),
        other => format!("unix:{other}"),
    };
    Ok(Target {
        spec: Spec::Unix(UnixSpec { path: spec }),
        shown: format!("{shown}{}", options.shown()),
        timeout: options.timeout()?,
    })
}

impl Kind for UnixSpec {
    fn name(&self) -> &'static str {
        "unix"
    }

    fn is_local(&self) -> bool {
        true
    }

    fn preflight(&self) -> Result<(), String> {
        match &self.path {
            SocketPath::File(path) => preflight::socket(path),
            SocketPath::Abstract(_) => Ok(()),
        }
    }
}

// === impl SocketPath ===

impl fmt::Display for SocketPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketPath::File(p) => write!(f, "{}", p.display()),
            SocketPath::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::target::tests::{bad, ok};

    #[test]
    fn unix_forms() {
        let t = ok("unix:///run/app.sock");
        assert_eq!(t.to_string(), "unix:///run/app.sock");
        assert!(
            matches!(t.spec(), Spec::Unix(UnixSpec { path: SocketPath::File(p) }) if p == Path::new("/run/app.sock"))
        );
        assert_eq!(ok("unix:/run/app.sock").to_string(), "unix:///run/app.sock");
        assert_eq!(ok("unix:rel.sock").to_string(), "unix:rel.sock");
        assert!(
            matches!(ok("unix:@name").spec(), Spec::Unix(UnixSpec { path: SocketPath::Abstract(n) }) if n == "name")
        );
        assert!(bad("unix://run/x").contains("the path must be absolute"));
        assert!(bad("unix:").contains("missing socket path"));
        assert!(bad("unix:@").contains("missing abstract socket name"));
    }

    #[test]
    fn unix_paths_over_the_kernel_limit_are_refused() {
        let longest = format!("/{}", "a".repeat(MAX_SOCKET_PATH - 1));
        assert!(ok(&format!("unix://{longest}")).is_local());
        let long = format!("/{}", "a".repeat(129));
        assert_eq!(
            bad(&format!("unix://{long}")),
            format!(
                "target 'unix://{long}': unix socket path is 130 bytes long; the kernel takes at most 107"
            )
        );
        assert!(
            bad(&format!("unix:rel/{}", "b".repeat(104)))
                .ends_with("unix socket path is 108 bytes long; the kernel takes at most 107")
        );
        // Bytes, not characters: 54 two-byte letters are 108 bytes.
        assert!(bad(&format!("unix:/{}", "é".repeat(54))).contains("is 109 bytes long"));
        ok(&format!("unix:@{}", "n".repeat(MAX_SOCKET_PATH)));
        assert!(bad(&format!("unix:@{}", "n".repeat(108))).ends_with(
            "abstract unix socket name is 108 bytes long; the kernel takes at most 107"
        ));
    }
}
