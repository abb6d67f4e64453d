//! Where tether listens (a proxy, or a socket handed to a service): checked,
//! then bound.
//!
//! - TCP: an IP address (or `localhost`); one beyond this machine only when
//!   the caller says so (`public`), since loopback is the safe default. Bound with `SO_REUSEADDR` and a backlog of 1024, so a burst
//!   of clients queues in the kernel while the proxy accepts.
//! - Unix: a path in a directory of this user's own (`/tmp` of another
//!   owner is not), never through a symlink; a socket file left there is
//!   replaced only if it is this user's and nothing answers on it. The new
//!   socket is private to the user (0600). `@NAME` is a Linux abstract
//!   socket (no file).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::net::{TcpListener, UnixListener};

use crate::Target;
use crate::dial::Stream;
use crate::target::{Host, SocketPath, Spec};

/// A checked listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// A Linux abstract socket name.
    Abstract(String),
}

/// Why a listen address cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenError {
    listen: String,
    why: String,
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen on {}: {}", self.listen, self.why)
    }
}

impl std::error::Error for ListenError {}

/// A bound listener; a unix socket file goes when it is dropped.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, Option<PathBuf>),
}

/// The backlog of a listening socket: clients that arrive faster than the
/// proxy accepts wait here, not refused.
const BACKLOG: i32 = 1024;

impl Listen {
    /// Parses `tcp://HOST:PORT`, `unix:///PATH` or `unix:@NAME`. A TCP
    /// address beyond loopback needs `public`.
    ///
    /// # Errors
    ///
    /// An address that does not parse, is not an IP (or `localhost`), or
    /// is not on loopback without `public`.
    pub fn parse(text: &str, public: bool) -> Result<Listen, ListenError> {
        let err = |why: String| ListenError {
            listen: text.to_string(),
            why,
        };
        // A listener may ask for port 0 (the kernel picks one); a target
        // may not, so the parse sees another port.
        let any_port = text.starts_with("tcp://") && text.ends_with(":0");
        let parsed = match any_port {
            true => format!("{}1", &text[..text.len() - 1]),
            false => text.to_string(),
        };
        let target = Target::parse(&parsed).map_err(|e| err(e.reason().to_string()))?;
        match target.spec() {
            Spec::Tcp(spec) => {
                let ip = match &spec.host {
                    Host::Ip(ip) => *ip,
                    Host::Name(name) if name.eq_ignore_ascii_case("localhost") => {
                        IpAddr::V4(Ipv4Addr::LOCALHOST)
                    }
                    Host::Name(name) => {
                        return Err(err(format!(
                            "'{name}' is a name; listen on an IP address (127.0.0.1, ::1, or 0.0.0.0 with --public)"
                        )));
                    }
                };
                if !ip.is_loopback() && !public {
                    return Err(err(format!(
                        "{ip} is reachable from other machines; listen on 127.0.0.1, or pass --public (public = true) to mean it"
                    )));
                }
                let port = if any_port { 0 } else { spec.port };
                Ok(Listen::Tcp(SocketAddr::new(ip, port)))
            }
            Spec::Unix(spec) => match &spec.path {
                SocketPath::File(path) => Ok(Listen::Unix(path.clone())),
                SocketPath::Abstract(name) => Ok(Listen::Abstract(name.clone())),
            },
            _ => Err(err("listen on tcp://HOST:PORT or unix:///PATH".to_string())),
        }
    }

    /// Binds it.
    ///
    /// # Errors
    ///
    /// The address in use, a unix path in a directory that is not the
    /// user's, a socket file of another user (or one that answers), ...
    pub async fn bind(&self) -> Result<Listener, ListenError> {
        let err = |why: String| ListenError {
            listen: self.to_string(),
            why,
        };
        match self {
            Listen::Tcp(addr) => {
                let socket = match addr {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                    SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
                }
                .map_err(|e| err(e.to_string()))?;
                socket.set_reuseaddr(true).map_err(|e| err(e.to_string()))?;
                socket.bind(*addr).map_err(|e| {
                    err(match e.kind() {
                        io::ErrorKind::AddrInUse => {
                            "the address is in use by another process".to_string()
                        }
                        _ => e.to_string(),
                    })
                })?;
                let listener = socket
                    .listen(BACKLOG as u32)
                    .map_err(|e| err(e.to_string()))?;
                Ok(Listener::Tcp(listener))
            }
            Listen::Unix(path) => {
                check_unix_path(path).await.map_err(err)?;
                let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| err(e.to_string()))?;
                Ok(Listener::Unix(listener, Some(path.clone())))
            }
            Listen::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .map_err(|e| err(e.to_string()))?;
                let std = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| {
                    err(match e.kind() {
                        io::ErrorKind::AddrInUse => {
                            "the name is in use by another process".to_string()
                        }
                        _ => e.to_string(),
                    })
                })?;
                std.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
                let listener = UnixListener::from_std(std).map_err(|e| err(e.to_string()))?;
                Ok(Listener::Unix(listener, None))
            }
        }
    }
}

/// A bound listening socket to hand to other processes (socket
/// activation): in blocking mode, as a program that takes it expects, and
/// never accepted from here. A unix socket file goes when it is dropped.
#[derive(Debug)]
pub struct Held {
    fd: OwnedFd,
    local: String,
    path: Option<PathBuf>,
}

impl Held {
    /// The address it is bound to (port 0 becomes the port picked).
    pub fn local(&self) -> &str {
        &self.local
    }
}

impl AsFd for Held {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Listen {
    /// Binds it without a runtime, for another process to accept on: a
    /// blocking socket (close-on-exec here), with the checks of
    /// [`Listen::bind`].
    ///
    /// # Errors
    ///
    /// As [`Listen::bind`].
    pub fn bind_held(&self) -> Result<Held, ListenError> {
        let err = |why: String| ListenError {
            listen: self.to_string(),
            why,
        };
        let in_use = |e: io::Error, what: &str| {
            err(match e.kind() {
                io::ErrorKind::AddrInUse => format!("the {what} is in use by another process"),
                _ => e.to_string(),
            })
        };
        let held = |fd: OwnedFd, path: Option<PathBuf>| Held {
            fd,
            local: self.to_string(),
            path,
        };
        let mut held = match self {
            // std sets SO_REUSEADDR and close-on-exec.
            Listen::Tcp(addr) => held(
                std::net::TcpListener::bind(addr)
                    .map_err(|e| in_use(e, "address"))?
                    .into(),
                None,
            ),
            Listen::Unix(path) => {
                check_unix_path_now(path).map_err(err)?;
                let listener =
                    std::os::unix::net::UnixListener::bind(path).map_err(|e| in_use(e, "path"))?;
                // Held from here: an error below removes the file.
                let bound = held(listener.into(), Some(path.clone()));
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| err(e.to_string()))?;
                bound
            }
            Listen::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .map_err(|e| err(e.to_string()))?;
                held(
                    std::os::unix::net::UnixListener::bind_addr(&addr)
                        .map_err(|e| in_use(e, "name"))?
                        .into(),
                    None,
                )
            }
        };
        // std listens with a smaller backlog; listening again sets ours.
        socket2::SockRef::from(&held.fd)
            .listen(BACKLOG)
            .map_err(|e| err(e.to_string()))?;
        if let Listen::Tcp(_) = self
            && let Some(addr) = socket2::SockRef::from(&held.fd)
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
        {
            held.local = format!("tcp://{addr}");
        }
        Ok(held)
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "tcp://{addr}"),
            Listen::Unix(path) => write!(f, "unix://{}", path.display()),
            Listen::Abstract(name) => write!(f, "unix:@{name}"),
        }
    }
}

/// What is at a unix socket path whose directory is the user's.
enum AtPath {
    Nothing,
    /// A socket file of the user's: stale unless something answers on it.
    OwnSocket,
}

/// The directory must be the user's, and a file at the path a socket of
/// the user's.
fn inspect_unix_path(path: &Path) -> Result<AtPath, String> {
    let me = rustix::process::geteuid().as_raw();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("its directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != me {
        return Err(format!(
            "its directory {} belongs to another user; put the socket in a directory of yours (such as $XDG_RUNTIME_DIR)",
            dir.display()
        ));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(AtPath::Nothing),
        Err(e) => Err(e.to_string()),
        Ok(meta) if !meta.file_type().is_socket() => {
            Err("a file that is not a socket is there".to_string())
        }
        Ok(meta) if meta.uid() != me => Err("a socket file of another user is there".to_string()),
        Ok(_) => Ok(AtPath::OwnSocket),
    }
}

const ANSWERS: &str = "a socket there answers: another process listens on it";

/// Ours and dead: a tether that was killed left it.
fn remove_stale(path: &Path) -> Result<(), String> {
    std::fs::remove_file(path).map_err(|e| format!("cannot remove the stale socket: {e}"))
}

/// [`inspect_unix_path`], and a stale socket of the user's removed.
async fn check_unix_path(path: &Path) -> Result<(), String> {
    match inspect_unix_path(path)? {
        AtPath::Nothing => Ok(()),
        AtPath::OwnSocket => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ANSWERS.to_string());
            }
            remove_stale(path)
        }
    }
}

/// [`check_unix_path`] without a runtime: the connect that tells a live
/// socket from a stale one does not block (a listener with a full backlog
/// answers `EAGAIN`, which counts as live).
fn check_unix_path_now(path: &Path) -> Result<(), String> {
    match inspect_unix_path(path)? {
        AtPath::Nothing => Ok(()),
        AtPath::OwnSocket => {
            let probe = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
                .map_err(|e| e.to_string())?;
            probe.set_nonblocking(true).map_err(|e| e.to_string())?;
            let addr = socket2::SockAddr::unix(path).map_err(|e| e.to_string())?;
            match probe.connect(&addr) {
                Ok(()) => Err(ANSWERS.to_string()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(ANSWERS.to_string()),
                Err(_) => remove_stale(path),
            }
        }
    }
}

impl Listener {
    /// Accepts the next client.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
        }
    }

    /// The address it is bound to (port 0 becomes the port picked).
    pub fn local(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp://{a}"))
                .unwrap_or_else(|_| "tcp://?".into()),
            Listener::Unix(_, Some(path)) => format!("unix://{}", path.display()),
            Listener::Unix(l, None) => l
                .local_addr()
                .ok()
                .and_then(|a| {
                    a.as_abstract_name()
                        .map(|n| format!("unix:@{}", String::from_utf8_lossy(n)))
                })
                .unwrap_or_else(|| "unix:@?".into()),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, Some(path)) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_the_default_and_public_must_be_said() {
        assert_eq!(
            Listen::parse("tcp://127.0.0.1:8080", false),
            Ok(Listen::Tcp("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(
            Listen::parse("tcp://localhost:8080", false),
            Ok(Listen::Tcp("127.0.0.1:8080".parse().unwrap()))
        );
        let e = Listen::parse("tcp://0.0.0.0:8080", false).unwrap_err();
        assert!(e.to_string().contains("pass --public"), "{e}");
        assert!(Listen::parse("tcp://0.0.0.0:8080", true).is_ok());
        let e = Listen::parse("tcp://example.com:80", true).unwrap_err();
        assert!(e.to_string().contains("is a name"), "{e}");
        let e = Listen::parse("http://127.0.0.1:80/", false).unwrap_err();
        assert!(
            e.to_string().contains("tcp://HOST:PORT or unix:///PATH"),
            "{e}"
        );
        assert!(Listen::parse("tcp://127.0.0.1", false).is_err());
        assert_eq!(
            Listen::parse("tcp://127.0.0.1:0", false),
            Ok(Listen::Tcp("127.0.0.1:0".parse().unwrap()))
        );
        assert!(Listen::parse("tcp://127.0.0.1:10", false).is_ok());
        assert_eq!(
            Listen::parse("unix:@tether-test", false),
            Ok(Listen::Abstract("tether-test".into()))
        );
    }

    #[test]
    fn held_sockets_are_blocking_and_say_the_port_picked() {
        let held = Listen::parse("tcp://127.0.0.1:0", false)
            .unwrap()
            .bind_held()
            .unwrap();
        assert!(!held.local().ends_with(":0"), "{}", held.local());
        use std::os::fd::AsRawFd;
        let fd = held.as_fd().as_raw_fd();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap();
        assert_eq!(flags & 0o4000, 0, "O_NONBLOCK is off: {info}");
        let again = Listen::parse(held.local(), false).unwrap().bind_held();
        let e = again.unwrap_err().to_string();
        assert!(e.contains("in use by another process"), "{e}");
    }

    #[test]
    fn held_unix_sockets_replace_stale_files_and_refuse_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // A socket file nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listen = Listen::Unix(path.clone());
        let held = listen.bind_held().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = listen.bind_held().unwrap_err().to_string();
        assert!(e.contains("answers"), "{e}");
        drop(held);
        assert!(!path.exists(), "removed with its socket");
    }
}
