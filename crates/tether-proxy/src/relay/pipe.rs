//! Moving bytes between a client and its upstream, both ways, until both
//! are done.
//!
//! - **Splice** bulk where it can: `splice(2)` from one socket into a pipe
//!   and from the pipe into the other socket, so the bytes never enter this
//!   process (haproxy's `splice-auto` does the same). A direction starts by
//!   copying, and splices once a read fills the whole 16 KiB buffer (bulk);
//!   a splice that moves less goes back to copying, which takes fewer steps
//!   for a small message. Pipes come from a
//!   bounded pool and are taken only while bytes flow, so an idle
//!   connection holds none; when the pool is empty, the bytes are copied
//!   through a buffer that is also taken only for the moment it is used.
//! - **Half-close** carried through: when one side ends its writing, the
//!   other side's writing is ended (`shutdown(SHUT_WR)`), and the other
//!   direction goes on until it ends too.
//! - **Resets** carried through: when one side resets, the other is reset
//!   (SO_LINGER 0, then close), so it learns at once and never hangs
//!   half-open.
//! - **Idle timeout**: when neither side sends anything for that long, both
//!   are closed.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rustix::pipe::SpliceFlags;
use tokio::io::{Interest, Ready};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

/// One end of a relayed connection.
#[derive(Debug)]
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// The connection's own IP address (TCP only).
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Conn::Tcp(s) => s.local_addr().ok().map(|a| a.ip()),
            Conn::Unix(_) => None,
        }
    }
}

impl From<tether_probe::dial::Stream> for Conn {
    fn from(stream: tether_probe::dial::Stream) -> Conn {
        match stream {
            tether_probe::dial::Stream::Tcp(s) => Conn::Tcp(s),
            tether_probe::dial::Stream::Unix(s) => Conn::Unix(s),
        }
    }
}

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Both sides finished writing.
    Done,
    /// The client reset, or failed.
    ClientReset,
    /// The upstream reset, or failed.
    UpstreamReset,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A local address of the connection left the machine (the network
    /// changed): both sides are reset, so neither waits for a dead path.
    AddressGone,
}

/// What a relayed connection moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
    pub ending: Ending,
}

/// A bounded pool of pipes for splicing, shared by every connection of a
/// proxy.
#[derive(Debug)]
pub struct Pipes {
    free: Mutex<Vec<Pipe>>,
    made: AtomicUsize,
    max: usize,
}

#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity: what one splice into it moves at most.
    size: usize,
}

/// How much a pipe holds, asked for (`F_SETPIPE_SZ`; 1 MiB is what any user
/// may ask for by default). Against the default 64 KiB, it moves more per
/// wakeup: on this 2-core machine, iperf3 through the proxy went from
/// 10.8-12.0 to 12.0-13.0 Gbit/s (haproxy with splice-auto: 11.1-11.7, in
/// the same rounds). Pages are taken only while bytes are in it. Where the
/// kernel refuses (the user's pipe pages are used up), the pipe keeps the
/// size it has.
const PIPE_SIZE: usize = 1 << 20;

/// How much one read of the copying path moves at most.
const CHUNK: usize = 16 * 1024;

impl Pipes {
    /// A pool of at most `max` pipes (each two descriptors); `0` never
    /// splices.
    pub fn new(max: usize) -> Pipes {
        Pipes {
            free: Mutex::new(Vec::new()),
            made: AtomicUsize::new(0),
            max,
        }
    }

    fn take(&self) -> Option<Pipe> {
        if let Some(pipe) = lock(&self.free).pop() {
            return Some(pipe);
        }
        if self.made.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.made.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        ) {
            Ok((read, write)) => {
                let size = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
                    .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))
                    .unwrap_or(64 * 1024);
                Some(Pipe { read, write, size })
            }
            Err(_) => {
                // Out of descriptors: copy instead.
                self.made.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Back to the pool: only an empty pipe (it always is, once drained).
    fn put(&self, pipe: Pipe) {
        lock(&self.free).push(pipe);
    }

    /// A pipe that may hold bytes (its writer failed) is not reused.
    fn discard(&self, pipe: Pipe) {
        drop(pipe);
        self.made.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    /// Waits until the peer is gone for good: a reset, or an error on the
    /// socket. (An end of its writing is not: it may still read, and a
    /// client that sends its request and half-closes is waiting for the
    /// answer.)
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe.
    pub async fn gone(&self) {
        loop {
            match self.ready(Interest::ERROR).await {
                Ok(ready) if ready.is_error() => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        match self {
            Conn::Tcp(s) => s.ready(interest).await,
            Conn::Unix(s) => s.ready(interest).await,
        }
    }

    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        match self {
            Conn::Tcp(s) => s.try_io(interest, f),
            Conn::Unix(s) => s.try_io(interest, f),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Tcp(s) => s.as_fd(),
            Conn::Unix(s) => s.as_fd(),
        }
    }

    /// Ends this side's writing (the peer reads EOF).
    fn shutdown_write(&self) {
        let _ = rustix::net::shutdown(self.fd(), rustix::net::Shutdown::Write);
    }

    /// Makes the close a reset (SO_LINGER 0), so the peer learns at once.
    pub fn reset_on_close(&self) {
        let _ = rustix::net::sockopt::set_socket_linger(self.fd(), Some(Duration::ZERO));
    }
}

/// Moves bytes both ways until both directions are done, one side resets,
/// or nothing moves for `idle`.
///
/// # Cancel safety
///
/// Not cancel-safe in effect: a dropped relay closes both sides wherever it
/// was.
pub async fn relay(client: &Conn, upstream: &Conn, pipes: &Pipes, idle: Duration) -> Moved {
    relay_until(client, upstream, pipes, idle, std::future::pending(), None).await
}

/// [`relay`], ended with [`Ending::AddressGone`] when `gone` resolves.
/// Given the network monitor's `pulse`, time this process stood still is
/// not counted as idle: a VM paused overnight does not find every relayed
/// connection closed for idleness when it runs again. (A stall is seen
/// when the idle timer comes; one during traffic before it is not told
/// apart, so the idle close may come that much later, never sooner.)
pub async fn relay_until(
    client: &Conn,
    upstream: &Conn,
    pipes: &Pipes,
    idle: Duration,
    gone: impl std::future::Future<Output = ()>,
    pulse: Option<tether_netmon::Pulse>,
) -> Moved {
    tokio::pin!(gone);
    let mut still = crate::stillness::Stillness::new(pulse);
    let mut owed = Duration::ZERO;
    let began = Instant::now();
    let last = AtomicU64::new(0);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let touch = || {
        let ms = began.elapsed().as_millis() as u64;
        last.store(ms, Ordering::Relaxed);
    };
    let to_upstream = pump(client, upstream, pipes, &up, &touch);
    let to_client = pump(upstream, client, pipes, &down, &touch);
    tokio::pin!(to_upstream, to_client);
    let (mut up_done, mut down_done) = (false, false);
    let ending = loop {
        let quiet_until = began + Duration::from_millis(last.load(Ordering::Relaxed)) + idle + owed;
        tokio::select! {
            result = &mut to_upstream, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(Broke::Reader) => break Ending::ClientReset,
                Err(Broke::Writer) => break Ending::UpstreamReset,
            },
            result = &mut to_client, if !down_done => match result {
                Ok(()) => down_done = true,
                Err(Broke::Reader) => break Ending::UpstreamReset,
                Err(Broke::Writer) => break Ending::ClientReset,
            },
            () = &mut gone => break Ending::AddressGone,
            () = tokio::time::sleep_until(quiet_until) => {
                owed += still.more().unwrap_or_default();
                let now_quiet =
                    began + Duration::from_millis(last.load(Ordering::Relaxed)) + idle + owed;
                if Instant::now() >= now_quiet {
                    break Ending::Idle;
                }
            }
        }
        if up_done && down_done {
            break Ending::Done;
        }
    };
    match ending {
        // The one that reset learns nothing new; the other must learn at
        // once, not by a timeout.
        Ending::ClientReset => upstream.reset_on_close(),
        Ending::UpstreamReset => client.reset_on_close(),
        Ending::AddressGone => {
            client.reset_on_close();
            upstream.reset_on_close();
        }
        Ending::Idle | Ending::Done => {}
    }
    Moved {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        ending,
    }
}

/// Which side of a direction broke.
enum Broke {
    Reader,
    Writer,
}

/// One direction: from `src` to `dst` until `src` ends its writing (then
/// `dst`'s writing is ended too).
async fn pump(
    src: &Conn,
    dst: &Conn,
    pipes: &Pipes,
    moved: &AtomicU64,
    touch: &impl Fn(),
) -> Result<(), Broke> {
    let mut buf: Vec<u8> = Vec::new();
    // Whether bytes come in bulk: a read filled the whole buffer. Small
    // messages are copied (one read, one write: the fewest steps between a
    // question and its answer); bulk is spliced. A splice that moves less
    // than a buffer's worth goes back to copying.
    let mut bulk = false;
    loop {
        src.ready(Interest::READABLE)
            .await
            .map_err(|_| Broke::Reader)?;
        let pipe = if bulk { pipes.take() } else { None };
        let n = match pipe {
            Some(pipe) => match splice_once(src, dst, &pipe).await {
                Ok(n) => {
                    pipes.put(pipe);
                    bulk = n.is_some_and(|n| n == 0 || n >= CHUNK);
                    n
                }
                Err(broke) => {
                    pipes.discard(pipe);
                    return Err(broke);
                }
            },
            None => {
                buf.resize(CHUNK, 0);
                let n = copy_once(src, dst, &mut buf).await;
                // Nothing is kept between reads: an idle connection holds
                // no buffer.
                buf = Vec::new();
                let n = n?;
                bulk = n == Some(CHUNK);
                n
            }
        };
        match n {
            // Spurious readiness: nothing was there after all.
            Some(0) => {}
            Some(n) => {
                moved.fetch_add(n as u64, Ordering::Relaxed);
                touch();
            }
            None => {
                dst.shutdown_write();
                return Ok(());
            }
        }
    }
}

/// One splice from `src` into the pipe and all of it on into `dst`.
/// `Some(0)` when `src` had nothing after all; `None` at its end.
async fn splice_once(src: &Conn, dst: &Conn, pipe: &Pipe) -> Result<Option<usize>, Broke> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let got = src.try_io(Interest::READABLE, || {
        rustix::pipe::splice(src.fd(), None, &pipe.write, None, pipe.size, flags)
            .map_err(io::Error::from)
    });
    let n = match got {
        Ok(0) => return Ok(None),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(0)),
        Err(_) => return Err(Broke::Reader),
    };
    let mut left = n;
    while left > 0 {
        dst.ready(Interest::WRITABLE)
            .await
            .map_err(|_| Broke::Writer)?;
        let put = dst.try_io(Interest::WRITABLE, || {
            rustix::pipe::splice(&pipe.read, None, dst.fd(), None, left, flags)
                .map_err(io::Error::from)
        });
        match put {
            Ok(0) => return Err(Broke::Writer),
            Ok(k) => left -= k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Broke::Writer),
        }
    }
    Ok(Some(n))
}

/// One read from `src` and all of it written to `dst`.
async fn copy_once(src: &Conn, dst: &Conn, buf: &mut [u8]) -> Result<Option<usize>, Broke> {
    let got = src.try_io(Interest::READABLE, || {
        rustix::io::read(src.fd(), &mut *buf).map_err(io::Error::from)
    });
    let n = match got {
        Ok(0) => return Ok(None),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(0)),
        Err(_) => return Err(Broke::Reader),
    };
    let mut at = 0;
    while at < n {
        dst.ready(Interest::WRITABLE)
            .await
            .map_err(|_| Broke::Writer)?;
        let put = dst.try_io(Interest::WRITABLE, || {
            rustix::io::write(dst.fd(), &buf[at..n]).map_err(io::Error::from)
        });
        match put {
            Ok(0) => return Err(Broke::Writer),
            Ok(k) => at += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(Broke::Writer),
        }
    }
    Ok(Some(n))
}
