//! The TCP probe: ready when a listener *accepts* our connection.

use std::net::SocketAddr;
use std::time::Duration;

use tether_resilience::failure::human_duration;
use tether_resilience::{Cause, Failure, Phase};
use tokio::net::TcpStream;

use crate::Ready;
use crate::attempt::Attempt;
use crate::resolve::resolve;
use crate::sockdiag::{self, Acceptance};
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
    match sockdiag::Lookup::new()
        .ok()
        .and_then(|l| l.listen_queue(addr))
    {
        Some(q) => {
            let detail = format!(
                "connect to {addr}: listening but not accepting connections (accept queue full: {} of {})",
                q.queued, q.backlog
            );
            failure.with_detail(detail)
        }
        None => failure,
    }
}

/// Waits, within the attempt, until the server process has accepted the
/// connection: it keeps looking for up to [`QUICK`] (a live server accepts
/// within microseconds, and a look costs a few), then looks again after
/// growing pauses.
///
/// Between quick looks it yields the CPU to other threads. On loopback our
/// connect wakes the server on *this* CPU (the kernel handles the SYN in our
/// context and places the woken server beside us), so a loop that kept the
/// CPU would stop the server from running its `accept()` until the
/// scheduler preempted us, milliseconds later.
async fn wait_accepted(
    local: SocketAddr,
    peer: SocketAddr,
    attempt: Attempt,
) -> Result<Ready, Failure> {
    /// How long to keep looking without sleeping: the timer's resolution.
    const QUICK: Duration = Duration::from_millis(1);
    let Ok(lookup) = sockdiag::Lookup::new() else {
        return Ok(Ready::new(format!("connected to {peer}")));
    };
    let began = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match lookup.acceptance(local, peer) {
            Acceptance::Accepted => {
                return Ok(Ready::new(format!("{peer} accepted the connection")));
            }
            Acceptance::Unknown => return Ok(Ready::new(format!("connected to {peer}"))),
            Acceptance::Queued => {}
        }
        if began.elapsed() < QUICK {
            // sched_yield: returns at once when nothing else wants this CPU.
            std::thread::yield_now();
            continue;
        }
        if attempt.remaining() <= pause {
            let queue = match lookup.listen_queue(peer) {
                Some(q) => format!(" (accept queue: {} of {})", q.queued, q.backlog),
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
