//! Reads the kernel's table of TCP sockets (`/proc/net/tcp`, `tcp6`) to tell a
//! listener that accepts from one that only listens.
//!
//! A TCP connect completes as soon as the kernel has queued the connection,
//! whether or not the server ever calls `accept()`. Two facts in the table
//! tell them apart, for sockets in this network namespace:
//!
//! - the server-side socket of a queued connection has no inode until
//!   `accept()` hands it to the process (its `sk_socket` is unset);
//! - a listener's row shows how many connections wait in its accept queue
//!   (`rx_queue`), so a stuck listener is visible even when our connect hangs.
//!   (The queue's limit is not in this table; a connect that times out on
//!   this machine is what says the queue is full.)

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The state of our connection on the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acceptance {
    /// The server process holds the connection.
    Accepted,
    /// The connection waits in the listener's accept queue.
    Queued,
    /// The server side is not in this namespace's table (a remote host, or
    /// another network namespace): nothing can be known.
    Unknown,
}

/// A listening socket's accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenQueue {
    /// Connections the kernel completed that the process has not accepted.
    pub(crate) queued: u32,
}

/// Whether the server side of the connection from `local` to `peer` has been
/// accepted.
pub(crate) async fn acceptance(local: SocketAddr, peer: SocketAddr) -> Acceptance {
    let Some(table) = read_table(peer.ip()).await else {
        return Acceptance::Unknown;
    };
    for row in table.lines().skip(1).filter_map(parse_row) {
        if row.local == peer && row.remote == local {
            return if row.inode == 0 {
                Acceptance::Queued
            } else {
                Acceptance::Accepted
            };
        }
    }
    Acceptance::Unknown
}

/// The accept queue of a listener bound to `addr` (or to the wildcard address
/// on its port), if there is one in this namespace.
pub(crate) async fn listen_queue(addr: SocketAddr) -> Option<ListenQueue> {
    const LISTEN: u8 = 0x0A;
    let table = read_table(addr.ip()).await?;
    table
        .lines()
        .skip(1)
        .filter_map(parse_row)
        .find(|row| {
            row.state == LISTEN
                && row.local.port() == addr.port()
                && (row.local.ip() == addr.ip() || row.local.ip().is_unspecified())
        })
        .map(|row| ListenQueue {
            queued: row.rx_queue,
        })
}

async fn read_table(ip: IpAddr) -> Option<String> {
    let path = match ip {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    tokio::fs::read_to_string(path).await.ok()
}

#[derive(Debug, PartialEq, Eq)]
struct Row {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    tx_queue: u32,
    rx_queue: u32,
    inode: u64,
}

/// Parses one row: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode …`.
fn parse_row(line: &str) -> Option<Row> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let local = parse_addr(fields.next()?)?;
    let remote = parse_addr(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    let (tx, rx) = fields.next()?.split_once(':')?;
    let tx_queue = u32::from_str_radix(tx, 16).ok()?;
    let rx_queue = u32::from_str_radix(rx, 16).ok()?;
    let inode = fields.nth(4)?.parse().ok()?;
    Some(Row {
        local,
        remote,
        state,
        tx_queue,
        rx_queue,
        inode,
    })
}

/// `0100007F:1F90` is 127.0.0.1:8080: the address is the kernel's in-memory
/// words printed in hex, so each 32-bit word is in host (little-endian) order.
fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_rows() {
        let line = "   0: 0100007F:1F90 00000000:0000 0A 00000080:00000003 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0";
        let row = parse_row(line).unwrap();
        assert_eq!(row.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(row.remote, "0.0.0.0:0".parse().unwrap());
        assert_eq!(
            (row.state, row.tx_queue, row.rx_queue, row.inode),
            (0x0A, 0x80, 3, 12345)
        );
        let v6 = "00000000000000000000000001000000:0050";
        assert_eq!(parse_addr(v6), Some("[::1]:80".parse().unwrap()));
        assert_eq!(
            parse_row("  sl  local_address rem_address   st tx_queue"),
            None
        );
    }

    #[tokio::test]
    async fn sees_queued_and_accepted_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(server).await.unwrap();
        let local = client.local_addr().unwrap();
        assert_eq!(acceptance(local, server).await, Acceptance::Queued);
        assert_eq!(listen_queue(server).await.map(|q| q.queued), Some(1));
        let (_accepted, _) = listener.accept().await.unwrap();
        assert_eq!(acceptance(local, server).await, Acceptance::Accepted);
        assert_eq!(listen_queue(server).await.map(|q| q.queued), Some(0));
    }
}
