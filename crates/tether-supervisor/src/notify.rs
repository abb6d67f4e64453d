//! The sd_notify protocol: a service sends `READY=1`, `STATUS=...`,
//! `WATCHDOG=1` as datagrams to `$NOTIFY_SOCKET`, as it would to systemd.
//! tether adds `BUSY=1` / `BUSY=0`, which a service uses to say it is busy
//! (shown in the heartbeat file and `ps`).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixDatagram;

/// One thing a service said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    Ready,
    Status(String),
    Watchdog,
    Busy(bool),
    Stopping,
    /// `EXTEND_TIMEOUT_USEC`: give me this much longer to start.
    ExtendTimeout(Duration),
}

/// A notify socket for one service, removed when dropped.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a fresh socket at `path` (a leftover file there is removed).
    pub(crate) fn bind(path: &Path) -> io::Result<NotifySocket> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let socket = UnixDatagram::bind(path)?;
        Ok(NotifySocket {
            socket,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The notices of the next datagram.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a datagram is either received whole or not at all.
    pub(crate) async fn recv(&self) -> io::Result<Vec<Notice>> {
        let mut buf = vec![0u8; 4096];
        let n = self.socket.recv(&mut buf).await?;
        Ok(parse(&buf[..n]))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Parses a datagram: `KEY=VALUE` lines; unknown keys are ignored, as
/// systemd does.
pub(crate) fn parse(datagram: &[u8]) -> Vec<Notice> {
    let text = String::from_utf8_lossy(datagram);
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some(match (key, value) {
                ("READY", "1") => Notice::Ready,
                ("STATUS", v) => Notice::Status(v.to_string()),
                ("WATCHDOG", "1") => Notice::Watchdog,
                ("BUSY", "1") => Notice::Busy(true),
                ("BUSY", "0") => Notice::Busy(false),
                ("STOPPING", "1") => Notice::Stopping,
                ("EXTEND_TIMEOUT_USEC", v) => {
                    Notice::ExtendTimeout(Duration::from_micros(v.parse().ok()?))
                }
                _ => return None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_protocol() {
        assert_eq!(
            parse(b"READY=1\nSTATUS=serving on :8080\nWATCHDOG=1\nBUSY=1\nMAINPID=4\nEXTEND_TIMEOUT_USEC=5000000"),
            [
                Notice::Ready,
                Notice::Status("serving on :8080".into()),
                Notice::Watchdog,
                Notice::Busy(true),
                Notice::ExtendTimeout(Duration::from_secs(5)),
            ]
        );
        assert!(parse(b"READY=0\ngarbage").is_empty());
    }

    #[tokio::test]
    async fn receives_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let socket = NotifySocket::bind(&path).unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\nSTATUS=up", &path).unwrap();
        assert_eq!(
            socket.recv().await.unwrap(),
            [Notice::Ready, Notice::Status("up".into())]
        );
        drop(socket);
        assert!(!path.exists(), "the socket file goes with the socket");
    }
}
