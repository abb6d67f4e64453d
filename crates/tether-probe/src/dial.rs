//! Opening a byte stream to a `tcp://` or `unix://` target, with every
//! failure classified as the probes classify it (resolve, connect, refused,
//! timeout, a full backlog): for proxies that connect where probes look.

use tether_resilience::{Cause, Failure, Phase};
use tokio::net::{TcpStream, UnixStream};

use crate::attempt::Attempt;
use crate::target::{Spec, Target};

/// A connected stream.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to `target` (a `tcp://` or `unix://` one) within the attempt.
///
/// # Errors
///
/// The classified failure; `protocol.mismatch` for a target of another kind
/// (nothing to open a stream to).
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future closes what it opened.
pub async fn dial(target: &Target, attempt: Attempt) -> Result<Stream, Failure> {
    match target.spec() {
        Spec::Tcp(spec) => crate::tcp::connect(&spec.host, spec.port, attempt)
            .await
            .map(Stream::Tcp),
        Spec::Unix(spec) => {
            let what = format!("connect to unix socket {}", spec.path);
            let connecting = async {
                let stream = crate::unix::connect(&spec.path)
                    .map_err(|e| Failure::from_io(&e, Phase::Connect, &what))?;
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
            attempt
                .phase(Phase::Connect, &what, connecting)
                .await
                .map(Stream::Unix)
        }
        _ => Err(Failure::new(
            Phase::Connect,
            Cause::ProtocolMismatch,
            format!("{target}: not a tcp:// or unix:// target, no stream to open"),
        )),
    }
}
