//! The Unix socket probe: ready when a stream socket accepts a connection.

use std::os::unix::ffi::OsStrExt;

use socket2::{Domain, SockAddr, Socket, Type};
use tether_resilience::{Failure, Phase};

use crate::Ready;
use crate::attempt::Attempt;
use crate::target::{SocketPath, UnixSpec};

/// Connects to the socket and closes the connection at once.
///
/// The connect is non-blocking: a listener with a full backlog answers
/// EAGAIN at once (classified as "listening but not accepting") instead of
/// blocking the thread.
pub(crate) async fn probe(spec: &UnixSpec, attempt: Attempt) -> Result<Ready, Failure> {
    let what = format!("connect to unix socket {}", spec.path);
    let connecting = async {
        let stream =
            connect(&spec.path).map_err(|e| Failure::from_io(&e, Phase::Connect, &what))?;
        // A non-blocking Unix connect either completes at once or fails; wait
        // for writability anyway in case a kernel queues it.
        stream
            .writable()
            .await
            .map_err(|e| Failure::from_io(&e, Phase::Connect, &what))?;
        if let Some(e) = stream
            .take_error()
            .map_err(|e| Failure::from_io(&e, Phase::Connect, &what))?
        {
            return Err(Failure::from_io(&e, Phase::Connect, &what));
        }
        Ok(stream)
    };
    let stream = attempt.phase(Phase::Connect, &what, connecting).await?;
    drop(stream);
    Ok(Ready::new(format!(
        "unix socket {} accepted the connection",
        spec.path
    )))
}

pub(crate) fn connect(path: &SocketPath) -> std::io::Result<tokio::net::UnixStream> {
    let addr = match path {
        SocketPath::File(p) => SockAddr::unix(p)?,
        SocketPath::Abstract(name) => {
            let mut bytes = Vec::with_capacity(name.len() + 1);
            bytes.push(0);
            bytes.extend_from_slice(name.as_bytes());
            SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes))?
        }
    };
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    tokio::net::UnixStream::from_std(socket.into())
}
