//! The control socket of a running stack: `tether ps`, `logs`, `start`,
//! `stop`, `restart` and `down` talk to `tether up` through it.
//!
//! It is a Unix stream socket in the stack's private runtime directory
//! (0700), itself mode 0600, and it only serves peers of the same user (the
//! kernel's peer credentials are checked). The protocol is one JSON request
//! line, answered by JSON lines:
//!
//! | request | answer |
//! |---|---|
//! | `{"cmd":"ps"}` | `{"ok":true,"stack":..,"started_ms":..,"services":[view, ...]}` |
//! | `{"cmd":"logs","service":null,"follow":false,"lines":100}` | one `{"line":{...}}` per line; with `follow`, more as they come |
//! | `{"cmd":"start"/"stop"/"restart","service":"db"}` | `{"ok":true}` or `{"ok":false,"error":".."}` once done |
//! | `{"cmd":"down"}` | `{"ok":true}` once every process is gone |
//!
//! It is bounded like everything an outsider can reach: at most
//! [`MAX_CONNECTIONS`] at once (the next gets an error line and is closed),
//! a request line of at most [`MAX_REQUEST`] bytes that must arrive within
//! [`REQUEST_TIMEOUT`], and answers that a client must take within
//! [`WRITE_TIMEOUT`] each (a `logs -f` nobody reads is closed).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handle::Handle;

/// A request, as sent on the socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Ps,
    Logs {
        #[serde(default)]
        service: Option<String>,
        #[serde(default)]
        follow: bool,
        #[serde(default = "default_lines")]
        lines: usize,
    },
    Start {
        service: String,
    },
    Stop {
        service: String,
    },
    Restart {
        service: String,
    },
    Down,
}

fn default_lines() -> usize {
    100
}

/// Control connections served at once.
pub const MAX_CONNECTIONS: usize = 32;
/// The longest request line.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to read one answer line.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound control socket.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

/// Why a control socket could not be opened.
#[derive(Debug)]
pub enum BindError {
    /// Another `tether up` answers on this socket.
    Running(PathBuf),
    Io(io::Error),
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::Running(path) => write!(
                f,
                "this stack is already running (its control socket {} answers); stop it with `tether down` first",
                path.display()
            ),
            BindError::Io(e) => write!(f, "cannot open the control socket: {e}"),
        }
    }
}

impl std::error::Error for BindError {}

impl ControlServer {
    /// Binds at `path`. A socket file left by a `tether up` that died is
    /// replaced; one that still answers means the stack is running.
    pub async fn bind(path: &Path) -> Result<ControlServer, BindError> {
        if path.exists() {
            match tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(path)).await {
                Ok(Ok(_)) => return Err(BindError::Running(path.to_path_buf())),
                _ => std::fs::remove_file(path).map_err(BindError::Io)?,
            }
        }
        let listener = UnixListener::bind(path).map_err(BindError::Io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(BindError::Io)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Serves until `shutdown`; every connection task is tracked and ends
    /// with it.
    pub async fn serve(self, handle: Handle, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        let me = rustix::process::geteuid().as_raw();
        let mut refused = 0u64;
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!("control socket: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // The directory is private already; this is a second lock.
            if stream.peer_cred().map(|c| c.uid()).ok() != Some(me) {
                continue;
            }
            if tasks.len() >= MAX_CONNECTIONS {
                refused += 1;
                if tether_resilience::milestone(refused) {
                    tracing::warn!(
                        "control socket: {refused} connections refused so far: all {MAX_CONNECTIONS} it serves at once are busy"
                    );
                }
                // One try, never a wait: a client that does not read only
                // misses the words.
                let line = format!(
                    "{}\n",
                    json!({"ok": false, "error": format!("too many control connections (at most {MAX_CONNECTIONS} at once)")})
                );
                let _ = stream.try_write(line.as_bytes());
                continue;
            }
            let (handle, shutdown) = (handle.clone(), shutdown.clone());
            tasks.spawn(async move {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    result = answer(stream, handle) => if let Err(e) = result {
                        tracing::debug!("control socket: {e}");
                    },
                }
            });
        }
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(stream: UnixStream, handle: Handle) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let line = match read_request(read).await {
        Ok(Some(line)) => line,
        Ok(None) => return Ok(()),
        Err(why) => {
            return send(
                &mut write,
                &json!({"ok": false, "error": format!("bad request: {why}")}),
            )
            .await;
        }
    };
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(e) => {
            return send(
                &mut write,
                &json!({"ok": false, "error": format!("bad request: {e}")}),
            )
            .await;
        }
    };
    match request {
        Request::Ps => {
            send(&mut write, &json!({"ok": true, "stack": handle.stack(), "started_ms": handle.started_ms(), "services": handle.views()})).await
        }
        Request::Start { service } => reply(&mut write, handle.start(&service).await).await,
        Request::Stop { service } => reply(&mut write, handle.stop(&service).await).await,
        Request::Restart { service } => reply(&mut write, handle.restart(&service).await).await,
        Request::Down => {
            handle.down().await;
            send(&mut write, &json!({"ok": true})).await
        }
        Request::Logs { service, follow, lines } => {
            if let Some(name) = &service
                && !handle.views().iter().any(|v| &v.name == name) {
                    return send(&mut write, &json!({"ok": false, "error": format!("no service named '{name}'")})).await;
                }
            // Subscribe first, so nothing falls between the old lines and
            // the new ones.
            let mut follow_rx = follow.then(|| handle.output().subscribe());
            let recent = handle.output().recent(service.as_deref());
            for line in recent.iter().skip(recent.len().saturating_sub(lines)) {
                send(&mut write, &json!({"line": line})).await?;
            }
            let Some(rx) = follow_rx.as_mut() else { return Ok(()) };
            let mut events = handle.events();
            loop {
                tokio::select! {
                    line = rx.recv() => match line {
                        Ok(line) if service.as_ref().is_none_or(|s| *s == line.service) => {
                            send(&mut write, &json!({"line": line})).await?;
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            send(&mut write, &json!({"skipped": n})).await?;
                        }
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    },
                    event = events.recv() => {
                        if matches!(event, Ok(ref e) if e.name() == "stack") || matches!(event, Err(broadcast::error::RecvError::Closed)) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

async fn reply(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    result: Result<(), crate::RequestError>,
) -> io::Result<()> {
    match result {
        Ok(()) => send(write, &json!({"ok": true})).await,
        Err(e) => send(write, &json!({"ok": false, "error": e.to_string()})).await,
    }
}

/// Reads the request line: at most [`MAX_REQUEST`] bytes, within
/// [`REQUEST_TIMEOUT`]. `Ok(None)` when the client closed without a word.
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<Option<String>, String> {
    use tokio::io::AsyncReadExt;
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
        Err(_) => Err(format!(
            "no request line within {}",
            tether_resilience::failure::human_duration(REQUEST_TIMEOUT)
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(_)) if line.last() != Some(&b'\n') && line.len() > MAX_REQUEST => Err(format!(
            "the request line is longer than {MAX_REQUEST} bytes"
        )),
        Ok(Ok(_)) => String::from_utf8(line)
            .map(|l| Some(l.trim_end().to_string()))
            .map_err(|_| "the request line is not UTF-8".to_string()),
    }
}

/// Writes one answer line; a client that does not take it within
/// [`WRITE_TIMEOUT`] is given up on.
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, value: &Value) -> io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(line.as_bytes())).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read its answer",
        )),
    }
}

/// The client side: sends `request` to the stack at `socket` and calls
/// `each` with every answer line.
///
/// # Errors
///
/// When nothing answers at `socket` (the stack is not running) or the
/// connection breaks.
pub async fn request(
    socket: &Path,
    request: &Request,
    mut each: impl FnMut(Value) -> bool,
) -> io::Result<()> {
    let stream = UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(io::Error::other)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let value: Value = serde_json::from_str(&line).map_err(io::Error::other)?;
        if !each(value) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&Request::Ps).unwrap(),
            r#"{"cmd":"ps"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Restart {
                service: "db".into()
            })
            .unwrap(),
            r#"{"cmd":"restart","service":"db"}"#
        );
        let logs: Request = serde_json::from_str(r#"{"cmd":"logs","follow":true}"#).unwrap();
        assert_eq!(
            logs,
            Request::Logs {
                service: None,
                follow: true,
                lines: 100
            }
        );
    }
}
