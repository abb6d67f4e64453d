//! The real sources: the two clocks, a realtime timerfd that the kernel
//! cancels on clock steps and on resume, and the route netlink socket
//! (subscribed for hints, dumped for snapshots).

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use rustix::time::{
    ClockId, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec,
};

use crate::core::{Clocks, Snapshot};

/// Reads both clocks.
pub fn clocks() -> Clocks {
    let read = |id| {
        let t = rustix::time::clock_gettime(id);
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        )
    };
    Clocks {
        monotonic: read(ClockId::Monotonic),
        boottime: read(ClockId::Boottime),
    }
}

/// A CLOCK_REALTIME timerfd armed (absolute) far in the future with
/// `TFD_TIMER_CANCEL_ON_SET`: a read fails with `ECANCELED` whenever the
/// realtime clock jumps against the monotonic one (a step, or a resume).
pub(crate) struct ClockWatch {
    fd: OwnedFd,
}

impl ClockWatch {
    pub(crate) fn new() -> io::Result<ClockWatch> {
        let fd = rustix::time::timerfd_create(
            TimerfdClockId::Realtime,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        let watch = ClockWatch { fd };
        watch.arm()?;
        Ok(watch)
    }

    /// Arms (again): needed after every cancellation.
    pub(crate) fn arm(&self) -> io::Result<()> {
        let far = Timespec {
            tv_sec: i64::MAX / 4,
            tv_nsec: 0,
        };
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: far,
        };
        rustix::time::timerfd_settime(
            &self.fd,
            TimerfdTimerFlags::ABSTIME | TimerfdTimerFlags::CANCEL_ON_SET,
            &spec,
        )?;
        Ok(())
    }

    /// After the fd turned readable: whether the clock changed (then the
    /// timer is armed again), or it was spurious.
    pub(crate) fn cancelled(&self) -> io::Result<bool> {
        let mut buf = [0u8; 8];
        match rustix::io::read(&self.fd, &mut buf) {
            Err(rustix::io::Errno::CANCELED) => {
                self.arm()?;
                Ok(true)
            }
            Err(rustix::io::Errno::AGAIN) => Ok(false),
            // It expired: not before the year 73 billion. Arm again.
            Ok(_) => {
                self.arm()?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl AsRawFd for ClockWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for ClockWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The multicast groups of the hints: links, IPv4 and IPv6 addresses and
/// routes.
const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;

/// A route netlink socket subscribed to [`GROUPS`], non-blocking.
pub(crate) struct Hints {
    socket: Socket,
}

impl Hints {
    pub(crate) fn new() -> io::Result<Hints> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, GROUPS))?;
        socket.set_non_blocking(true)?;
        Ok(Hints { socket })
    }

    /// Reads what is queued; the number of messages read (an overrun,
    /// `ENOBUFS`, counts as one: a snapshot repairs whatever was lost).
    pub(crate) fn drain(&self) -> io::Result<usize> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut read = 0;
        // Bounded: a flood is judged by one snapshot anyway.
        for _ in 0..1024 {
            match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(_) => read += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(read),
                Err(e) if e.raw_os_error() == Some(libc_enobufs()) => read += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(read)
    }
}

impl AsRawFd for Hints {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// `ENOBUFS`, without libc.
fn libc_enobufs() -> i32 {
    rustix::io::Errno::NOBUFS.raw_os_error()
}

/// The network now: links that are up, addresses that are not link-local,
/// default routes. Loopback is left out.
///
/// # Errors
///
/// The dump failed (no netlink: a restricted sandbox).
pub fn snapshot() -> io::Result<Snapshot> {
    let socket = Socket::new(NETLINK_ROUTE)?;
    let mut names = std::collections::BTreeMap::new();
    let mut lines = BTreeSet::new();
    let mut loopback = BTreeSet::new();
    for message in dump(
        &socket,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )? {
        if let RouteNetlinkMessage::NewLink(link) = message {
            let name = link
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| format!("if{}", link.header.index));
            if link.header.flags.contains(LinkFlags::Loopback) {
                loopback.insert(link.header.index);
                continue;
            }
            let up = link.header.flags.contains(LinkFlags::Up)
                && link.header.flags.contains(LinkFlags::LowerUp);
            lines.insert(format!("link {name} {}", if up { "up" } else { "down" }));
            names.insert(link.header.index, name);
        }
    }
    let name_of = |index: u32| {
        names
            .get(&index)
            .cloned()
            .unwrap_or_else(|| format!("if{index}"))
    };
    for message in dump(
        &socket,
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )? {
        if let RouteNetlinkMessage::NewAddress(addr) = message {
            if loopback.contains(&addr.header.index) {
                continue;
            }
            let ip = addr.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                addr.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip.filter(|ip| !link_local(ip)) {
                lines.insert(format!(
                    "addr {} {ip}/{}",
                    name_of(addr.header.index),
                    addr.header.prefix_len
                ));
            }
        }
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        for message in dump(&socket, RouteNetlinkMessage::GetRoute(request))? {
            if let RouteNetlinkMessage::NewRoute(route) = message {
                let table = route
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(route.header.table));
                // Default routes of the main table.
                if route.header.destination_prefix_length != 0 || table != 254 {
                    continue;
                }
                let mut line = "route default".to_string();
                for a in &route.attributes {
                    match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => {
                            line.push_str(&format!(" via {ip}"));
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => {
                            line.push_str(&format!(" via {ip}"));
                        }
                        _ => {}
                    }
                }
                if let Some(oif) = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                }) {
                    line.push_str(&format!(" dev {}", name_of(oif)));
                }
                lines.insert(line);
            }
        }
    }
    Ok(Snapshot(lines))
}

fn link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_loopback(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_loopback(),
    }
}

/// One dump request and its answers.
fn dump(socket: &Socket, request: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
    /// A bound on what is read, so a confused kernel cannot loop us.
    const MAX_MESSAGES: usize = 65_536;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(header, request.into());
    packet.finalize();
    let mut out = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut out);
    socket.send(&out, 0)?;
    let mut found = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buf[..], 0)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(inner) => found.push(inner),
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => {
                    return Err(match e.code {
                        Some(code) => io::Error::from_raw_os_error(-code.get()),
                        None => io::Error::other("netlink error without a code"),
                    });
                }
                _ => {}
            }
            if length == 0 || found.len() > MAX_MESSAGES {
                return Ok(found);
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clocks_read_and_boottime_is_not_behind() {
        let c = clocks();
        assert!(c.boottime >= c.monotonic, "{c:?}");
    }

    #[test]
    fn a_snapshot_of_this_machine_reads() {
        // A sandbox without netlink is told, not a crash.
        match snapshot() {
            Ok(s) => assert!(s.0.iter().all(|l| !l.contains(" lo")), "{s:?}"),
            Err(e) => eprintln!("no netlink here: {e}"),
        }
    }

    #[test]
    fn the_clock_watch_arms() {
        let w = ClockWatch::new().unwrap();
        assert!(!w.cancelled().unwrap(), "nothing changed");
    }
}
