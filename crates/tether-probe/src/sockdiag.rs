//! Asks the kernel about TCP sockets on this machine (NETLINK_SOCK_DIAG, as
//! `ss` does) to tell a listener that accepts from one that only listens.
//!
//! A TCP connect completes as soon as the kernel has queued the connection,
//! whether or not the server ever calls `accept()`. The kernel knows the
//! difference:
//!
//! - the server-side socket of a queued connection has no inode until
//!   `accept()` hands it to the process;
//! - a listener reports how many connections wait in its accept queue and how
//!   many it may hold.
//!
//! Lookups are exact (one socket by its four-tuple) or limited to listeners,
//! so they cost microseconds whatever the size of the connection table.
//! Sockets in another network namespace (a container's) are not visible: the
//! answers are then "unknown".

use std::io;
use std::net::SocketAddr;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

/// The state of our connection on the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acceptance {
    /// The server process took the connection (and may have closed it since).
    Accepted,
    /// The connection waits in the listener's accept queue.
    Queued,
    /// The server side is not visible here (a remote host, another network
    /// namespace, or no sock_diag support): nothing can be known.
    Unknown,
}

/// A listening socket's accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListenQueue {
    /// Connections the kernel completed that the process has not accepted.
    pub(crate) queued: u32,
    /// How many it may hold (the listen backlog).
    pub(crate) backlog: u32,
}

/// A netlink socket for lookups, kept for a series of them.
pub(crate) struct Lookup {
    socket: Socket,
}

/// TCP states, as the kernel numbers them.
const ESTABLISHED: u8 = 1;
const CLOSE_WAIT: u8 = 8;
const LISTEN: u8 = 10;

impl Lookup {
    /// Opens the netlink socket; fails where sock_diag is not available.
    pub(crate) fn new() -> io::Result<Lookup> {
        let socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.set_non_blocking(true)?;
        Ok(Lookup { socket })
    }

    /// Whether the server side of the connection from `local` to `peer` has been
    /// accepted.
    pub(crate) fn acceptance(&self, local: SocketAddr, peer: SocketAddr) -> Acceptance {
        // The server side of our connection: from the peer's address to ours.
        let id = SocketId {
            source_port: peer.port(),
            destination_port: local.port(),
            source_address: peer.ip(),
            destination_address: local.ip(),
            interface_id: 0,
            // INET_DIAG_NOCOOKIE: match by address, not by cookie.
            cookie: [0xff; 8],
        };
        let Ok(found) = self.query(family(peer), StateFlags::all(), id, false) else {
            return Acceptance::Unknown;
        };
        match found.first() {
            None => Acceptance::Unknown,
            Some(s) if s.inode != 0 => Acceptance::Accepted,
            // Without an inode, a connection that is still open waits in the
            // queue; one the server already closed (FIN_WAIT, TIME_WAIT, ...)
            // had been accepted first.
            Some(s) if s.state == ESTABLISHED || s.state == CLOSE_WAIT => Acceptance::Queued,
            Some(_) => Acceptance::Accepted,
        }
    }

    /// The accept queue of a listener bound to `addr` (or to the wildcard address
    /// on its port), if one is visible here.
    pub(crate) fn listen_queue(&self, addr: SocketAddr) -> Option<ListenQueue> {
        let any = match addr {
            SocketAddr::V4(_) => SocketId::new_v4(),
            SocketAddr::V6(_) => SocketId::new_v6(),
        };
        let listeners = self
            .query(family(addr), StateFlags::LISTEN, any, true)
            .ok()?;
        listeners
            .iter()
            .find(|s| {
                s.state == LISTEN
                    && s.socket_id.source_port == addr.port()
                    && (s.socket_id.source_address == addr.ip()
                        || s.socket_id.source_address.is_unspecified())
            })
            .map(|s| ListenQueue {
                queued: s.recv_queue,
                backlog: s.send_queue,
            })
    }

    /// Sends one request and reads the answers. The kernel answers while the
    /// request is being sent, so the socket never has to wait: it is
    /// non-blocking, and an empty queue ends the read.
    fn query(
        &self,
        family: u8,
        states: StateFlags,
        id: SocketId,
        dump: bool,
    ) -> io::Result<Vec<InetResponseHeader>> {
        query(&self.socket, family, states, id, dump)
    }
}

fn family(addr: SocketAddr) -> u8 {
    if addr.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn query(
    socket: &Socket,
    family: u8,
    states: StateFlags,
    id: SocketId,
    dump: bool,
) -> io::Result<Vec<InetResponseHeader>> {
    /// A bound on messages read, so a confused kernel cannot loop us.
    const MAX_MESSAGES: usize = 4096;
    // Drop any answer left over from an earlier, abandoned request.
    let mut stale = [0u8; 64];
    while socket.recv(&mut &mut stale[..], 0).is_ok() {}
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    let request = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id: id,
    };
    let mut packet = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    packet.finalize();
    let mut out = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut out);
    socket.send(&out, 0)?;

    let mut found = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    let mut read = 0;
    loop {
        let size = match socket.recv(&mut &mut buf[..], 0) {
            Ok(size) => size,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(found),
            Err(e) => return Err(e),
        };
        let mut offset = 0;
        while offset < size {
            read += 1;
            if read > MAX_MESSAGES {
                return Ok(found);
            }
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    found.push(response.header);
                }
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => {
                    // ENOENT: no such socket, which is an answer.
                    return match e.code {
                        Some(code) if -code.get() == libc::ENOENT => Ok(found),
                        Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        None => Ok(found),
                    };
                }
                _ => {}
            }
            if !dump && !found.is_empty() {
                return Ok(found);
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn lookup() -> Lookup {
        Lookup::new().unwrap()
    }

    #[tokio::test]
    async fn sees_queued_accepted_and_closed_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(server).await.unwrap();
        let local = client.local_addr().unwrap();
        assert_eq!(lookup().acceptance(local, server), Acceptance::Queued);
        let queue = lookup().listen_queue(server).unwrap();
        assert_eq!(queue.queued, 1);
        assert!(queue.backlog >= 1);
        let (mut accepted, _) = listener.accept().await.unwrap();
        assert_eq!(lookup().acceptance(local, server), Acceptance::Accepted);
        assert_eq!(lookup().listen_queue(server).map(|q| q.queued), Some(0));
        // A server that accepts and closes at once leaves a socket without an
        // inode behind: it was accepted all the same.
        accepted.shutdown().await.unwrap();
        drop(accepted);
        assert_eq!(lookup().acceptance(local, server), Acceptance::Accepted);
    }

    #[tokio::test]
    async fn ipv6_and_unknown_sockets() {
        let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(server).await.unwrap();
        let local = client.local_addr().unwrap();
        assert_eq!(lookup().acceptance(local, server), Acceptance::Queued);
        let _accepted = listener.accept().await.unwrap();
        assert_eq!(lookup().acceptance(local, server), Acceptance::Accepted);
        // A four-tuple nobody has.
        assert_eq!(
            lookup().acceptance(
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap()
            ),
            Acceptance::Unknown
        );
        assert_eq!(lookup().listen_queue("127.0.0.1:1".parse().unwrap()), None);
    }
}
