//! The TCP probe: ready when a listener *accepts* our connection.

use std::net::SocketAddr;
use std::time::Duration;

use tether_resilience::failure::human_duration;
use tether_resilience::{Cause, Failure, Phase};
use tokio::net::TcpStream;

use crate::Ready;
use crate::attempt::Attempt;
use crate::procnet::{self, Acceptance};
use crate::resolve::resolve;
use crate::target::{Host, TcpSpec};

/// Probes a TCP target: resolve, connect, and on this machine make sure the
/// server process took the connection off its accept queue. The connection
/// is closed before returning.
pub(crate) async fn probe(spec: &TcpSpec, attempt: Attempt) -> Result<Ready, Failure> {
    let stream = connect(&spec.host, spec.port, attempt).await?;
    let (local, peer) = match (stream.local_addr(), stream.peer_addr()) {
        (Ok(local), Ok(peer)) => (local, peer),
        // The peer closed at once: it was there, and it hung up on us.
        (_, Err(e)) | (Err(e), _) => {
            return Err(Failure::from_io(
                &e,
                Phase::Connect,
                format!("connect to {}:{}", spec.host, spec.port),
            ));
        }
    };
    let outcome = wait_accepted(local, peer, attempt).await;
    drop(stream);
    outcome
}

/// Connects to the first address of `host` that accepts, trying them in the
/// resolver's order, all under the attempt's deadline.
pub(crate) async fn connect(
    host: &Host,
    port: u16,
    attempt: Attempt,
) -> Result<TcpStream, Failure> {
    let addrs = attempt
        .phase(
            Phase::Resolve,
            format!("resolve {host}"),
            resolve(host, port),
        )
        .await?;
    let mut last = None;
    for addr in &addrs {
        let what = if matches!(host, Host::Ip(_)) {
            format!("connect to {addr}")
        } else {
            format!("connect to {host}:{port} ({addr})")
        };
        let connecting = async {
            TcpStream::connect(addr)
                .await
                .map_err(|e| Failure::from_io(&e, Phase::Connect, &what))
        };
        match attempt.phase(Phase::Connect, &what, connecting).await {
            Ok(stream) => {
                // Probes are tiny: send at once.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(failure) if failure.cause == Cause::ConnectTimeout => {
                return Err(explain_connect_timeout(failure, *addr).await);
            }
            Err(failure) => last = Some(failure),
        }
    }
    // `resolve` never returns an empty list, so `last` is set.
    Err(last.unwrap_or_else(|| {
        Failure::new(
            Phase::Connect,
            Cause::ConnectRefused,
            format!("connect to {host}:{port}: no address"),
        )
    }))
}

/// A connect that timed out while a listener exists in this namespace means
/// the kernel dropped our SYN: the listener's accept queue is full because the
/// process does not accept. Say so, with the number waiting.
async fn explain_connect_timeout(failure: Failure, addr: SocketAddr) -> Failure {
    match procnet::listen_queue(addr).await {
        Some(q) => {
            let detail = format!(
                "connect to {addr}: listening but not accepting connections (accept queue full, {} waiting)",
                q.queued
            );
            failure.with_detail(detail)
        }
        None => failure,
    }
}

/// Waits, within the attempt, until the server process has accepted the
/// connection, polling the kernel's socket table with growing pauses.
async fn wait_accepted(
    local: SocketAddr,
    peer: SocketAddr,
    attempt: Attempt,
) -> Result<Ready, Failure> {
    let mut pause = Duration::from_millis(1);
    let mut yielded = false;
    loop {
        match procnet::acceptance(local, peer).await {
            Acceptance::Accepted => {
                return Ok(Ready::new(format!("{peer} accepted the connection")));
            }
            Acceptance::Unknown => return Ok(Ready::new(format!("connected to {peer}"))),
            Acceptance::Queued => {}
        }
        // A live server accepts within microseconds: look again at once
        // before sleeping.
        if !yielded {
            yielded = true;
            tokio::task::yield_now().await;
            continue;
        }
        if attempt.remaining() <= pause {
            let queue = match procnet::listen_queue(peer).await {
                Some(q) => format!(" ({} waiting in the accept queue)", q.queued),
                None => String::new(),
            };
            let detail = format!(
                "connect to {peer}: listening but not accepting connections: not accepted within {}{queue}",
                human_duration(attempt.budget()),
            );
            return Err(Failure::new(Phase::Connect, Cause::ConnectTimeout, detail));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
