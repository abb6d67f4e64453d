//! Connection and event stream limits: clients that hold connections can
//! keep neither `/health` from answering nor the process's descriptors.
//!
//! Every test bounds what it opens and how long it waits, and checks this
//! process's descriptors and memory as it goes; a [`Watchdog`] aborts the
//! process outright should a bug let them run away between checks.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Method;
use hyper::body::Incoming;
use tether_status::{ServeOptions, Snapshot, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::{Server, service, stack, within};

/// What this process may hold before a test stops it: descriptors beyond
/// those it had when the test began, and resident memory.
#[derive(Debug, Clone, Copy)]
struct Budget {
    fds: usize,
    rss_kib: u64,
}

/// Checks the [`Budget`] every 20 ms while it lives, and aborts the process
/// when it is exceeded: the last resort behind each test's own checks.
struct Watchdog {
    budget: Budget,
    baseline: usize,
    task: JoinHandle<()>,
}

impl Watchdog {
    fn start(budget: Budget) -> Self {
        let baseline = open_fds();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                if let Err(why) = over_budget(budget, baseline) {
                    #[allow(clippy::print_stderr)]
                    {
                        eprintln!("watchdog: {why}; aborting the test process");
                    }
                    std::process::abort();
                }
            }
        });
        Self {
            budget,
            baseline,
            task,
        }
    }

    /// Fails the test when the budget is exceeded now.
    fn check(&self) {
        if let Err(why) = over_budget(self.budget, self.baseline) {
            panic!("{why}");
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn over_budget(budget: Budget, baseline: usize) -> Result<(), String> {
    let fds = open_fds().saturating_sub(baseline);
    if fds > budget.fds {
        return Err(format!("{fds} descriptors opened, budget {}", budget.fds));
    }
    let rss = status_kib("VmRSS");
    if rss > budget.rss_kib {
        return Err(format!(
            "resident memory {rss} KiB, budget {} KiB",
            budget.rss_kib
        ));
    }
    Ok(())
}

/// This process's open descriptors.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A `kB` field of /proc/self/status (`VmRSS`, `VmHWM`).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// The descriptors the server holds: this process's, minus those it had
/// before the server started (`baseline`), minus the test's own client
/// sockets (those whose peer is the server's port, found by inode in
/// /proc/net/tcp).
fn server_fds(port: u16, baseline: usize) -> usize {
    let mut clients = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when
            // retrnsmt uid timeout inode ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields[2].rsplit(':').next().unwrap();
            if u16::from_str_radix(remote_port, 16).unwrap() == port {
                clients.insert(fields[9].to_owned());
            }
        }
    }
    let held = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter(|entry| {
            let Ok(entry) = entry else { return true };
            let Ok(target) = std::fs::read_link(entry.path()) else {
                return true;
            };
            let target = target.to_string_lossy();
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'));
            !inode.is_some_and(|inode| clients.contains(inode))
        })
        .count();
    held.saturating_sub(baseline)
}

/// Raises this process's soft descriptor limit to `needed` if it is lower
/// (and the hard limit allows).
fn raise_fd_limit(needed: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed = needed as u64;
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_none_or(|current| current >= needed) {
        return;
    }
    assert!(
        limit.maximum.is_none_or(|maximum| maximum >= needed),
        "this test holds {needed} descriptors, above the hard limit {:?}",
        limit.maximum
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(needed),
            maximum: limit.maximum,
        },
    )
    .unwrap();
}

/// The value of the unlabelled sample `name` in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

/// Reads one response (head, and a body of `content-length` bytes) off a
/// connection that stays open.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    within(async {
        let mut buf = Vec::new();
        let mut chunk = [0; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "closed inside a response head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .unwrap_or_else(|| panic!("no content-length in {head}"))
            .parse()
            .unwrap();
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "closed inside a response body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8(buf[head_end..].to_vec()).unwrap();
        (head, body)
    })
    .await
}

/// One GET on a connection of its own that the server closes after it
/// (or at once, when it refuses the connection): everything it sent.
async fn get_and_close(addr: SocketAddr, path: &str) -> String {
    within(async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        // A refused connection may be closed before the request arrives.
        let _ = stream.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        // A reset after the answer ends it too.
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8(answer).unwrap()
    })
    .await
}

/// Whether a connection was closed by the server: it reads the end (or a
/// reset) rather than waiting.
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// A GET of `/api/services` whose client reads the head and then nothing:
/// the server has the rest of a large body still to send.
async fn stalled_download(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = within(socket.connect(addr)).await.unwrap();
    stream
        .write_all(b"GET /api/services HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut chunk = [0; 1024];
    within(async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.unwrap();
            assert_ne!(n, 0, "closed inside a response head");
            head.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(head.starts_with(b"HTTP/1.1 200 OK\r\n"));
    stream
}

/// A snapshot whose `/api/services` is about 12 MB: far more than the
/// socket buffers of a client that does not read.
fn large_snapshot() -> Snapshot {
    let services = (0..3000)
        .map(|i| {
            let mut s = service(&format!("svc{i}"), State::Ready);
            s.last_error = Some("x".repeat(4000));
            s
        })
        .collect();
    stack(services)
}

async fn open_stream(server: &Server) -> Incoming {
    let response = server.open(Method::GET, "/api/events").await;
    assert_eq!(response.status(), 200);
    response.into_body()
}

#[tokio::test]
async fn a_thousand_idle_connections_cannot_keep_health_from_answering() {
    const HELD: usize = 1000;
    let options = ServeOptions::default();
    let max = options.max_connections;
    raise_fd_limit(HELD + max + 512);
    let watchdog = Watchdog::start(Budget {
        fds: HELD + max + 256,
        rss_kib: 512 * 1024,
    });
    let baseline = open_fds();
    let server = Server::start_with(stack(vec![service("db", State::Ready)]), 16, options).await;
    let port = server.addr.port();

    let mut held = Vec::with_capacity(HELD);
    for i in 1..=HELD {
        held.push(within(TcpStream::connect(server.addr)).await.unwrap());
        if i % 50 == 0 {
            let reply = server.get("/health").await;
            assert_eq!(
                reply.status, 200,
                "with {i} idle connections: {}",
                reply.body
            );
            let fds = server_fds(port, baseline);
            assert!(
                fds < max + 32,
                "the server holds {fds} descriptors with {i} idle connections (limit {max})"
            );
            watchdog.check();
        }
    }
    for _ in 0..20 {
        assert_eq!(server.get("/health").await.status, 200);
    }

    // The oldest ones made room; the server kept at most its limit.
    for (i, stream) in held.iter_mut().take(HELD - 2 * max).enumerate() {
        assert!(is_closed(stream).await, "idle connection {i} is still open");
    }
    let fds = server_fds(port, baseline);
    assert!(fds < max + 32, "the server holds {fds} descriptors");
    let text = server.get("/metrics").await.body;
    assert!(metric(&text, "tether_status_connections") <= max as f64);
    let evicted = metric(&text, "tether_status_connections_evicted_total");
    assert!(evicted >= (HELD - max) as f64, "{text}");
    assert_eq!(
        metric(&text, "tether_status_connections_refused_total"),
        0.0
    );
    watchdog.check();
    let peak = status_kib("VmHWM");
    assert!(peak < 512 * 1024, "peak resident memory {peak} KiB");
    drop(held);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn slow_and_silent_connections_make_room_before_a_request_is_refused() {
    let options = ServeOptions {
        max_connections: 8,
        ..ServeOptions::default()
    };
    let server = Server::start_with(stack(vec![service("db", State::Ready)]), 16, options).await;
    // Four send nothing, four half a request head: every slot is taken.
    let mut slow = Vec::new();
    for i in 0..8 {
        let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
        if i % 2 == 1 {
            stream
                .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .await
                .unwrap();
        }
        slow.push(stream);
    }

    // Eight real requests, each on a connection kept open after it.
    let mut kept = Vec::new();
    for _ in 0..8 {
        let mut stream = within(TcpStream::connect(server.addr)).await.unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}{body}");
        kept.push(stream);
    }

    for (i, stream) in slow.iter_mut().enumerate() {
        assert!(is_closed(stream).await, "slow connection {i} is still open");
    }
    // One more newcomer: the kept connection idle the longest makes room.
    let text = server.get("/metrics").await.body;
    assert_eq!(
        metric(&text, "tether_status_connections_evicted_total"),
        9.0
    );
    assert_eq!(
        metric(&text, "tether_status_connections_refused_total"),
        0.0
    );
    assert!(is_closed(&mut kept[0]).await, "the oldest kept connection");
    // The newest one still serves.
    let newest = kept.last_mut().unwrap();
    newest
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(newest).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_newcomer_gets_503_when_every_connection_has_a_request_in_flight() {
    let watchdog = Watchdog::start(Budget {
        fds: 256,
        rss_kib: 512 * 1024,
    });
    let options = ServeOptions {
        max_connections: 4,
        max_event_streams: 2,
        ..ServeOptions::default()
    };
    let server = Server::start_with(large_snapshot(), 16, options).await;
    // Every slot busy: the event streams up to their limit, and two large
    // responses to clients that do not read them.
    let _streams = [open_stream(&server).await, open_stream(&server).await];
    let stalled = stalled_download(server.addr).await;
    let other = stalled_download(server.addr).await;
    watchdog.check();

    for _ in 0..3 {
        let answer = get_and_close(server.addr, "/health").await;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{answer:?}"));
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        let headers: Vec<&str> = head.lines().skip(1).collect();
        for expected in [
            "content-type: application/json",
            "retry-after: 1",
            "connection: close",
            "cache-control: no-store",
        ] {
            assert!(headers.contains(&expected), "{expected} in {head}");
        }
        let error: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            error,
            serde_json::json!({
                "error": "too many connections: all 4 the status server allows have a request in flight",
            })
        );
    }

    // A download given up frees its slot, once the server sees the reset.
    drop(stalled);
    let text = within(async {
        loop {
            let answer = get_and_close(server.addr, "/metrics").await;
            if answer.starts_with("HTTP/1.1 200 OK\r\n") {
                break answer;
            }
            assert!(answer.contains("too many connections"), "{answer}");
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(metric(&text, "tether_status_connections_refused_total") >= 3.0);
    assert_eq!(
        metric(&text, "tether_status_connections_evicted_total"),
        0.0
    );
    assert_eq!(metric(&text, "tether_status_event_streams"), 2.0);
    watchdog.check();
    // Otherwise shutdown would give it its grace period to read the rest.
    drop(other);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn event_streams_beyond_their_limit_get_503() {
    let options = ServeOptions {
        max_event_streams: 2,
        ..ServeOptions::default()
    };
    let server = Server::start_with(stack(vec![service("db", State::Ready)]), 16, options).await;
    let first = open_stream(&server).await;
    let _second = open_stream(&server).await;

    let reply = server.get("/api/events").await;

    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), "1");
    assert_eq!(
        reply.json(),
        serde_json::json!({
            "error": "too many event streams: all 2 the status server allows are open",
        })
    );
    // The other routes, and HEAD (which subscribes to nothing), still answer.
    assert_eq!(
        server.request(Method::HEAD, "/api/events").await.status,
        200
    );
    assert_eq!(server.get("/health").await.status, 200);

    // A stream whose client left frees its place.
    drop(first);
    let _third = within(async {
        loop {
            let response = server.open(Method::GET, "/api/events").await;
            if response.status() == 200 {
                break response;
            }
            assert_eq!(response.status(), 503);
            within(response.into_body().collect()).await.unwrap();
        }
    })
    .await;
    let text = server.get("/metrics").await.body;
    assert_eq!(metric(&text, "tether_status_event_streams"), 2.0);
    assert!(metric(&text, "tether_status_event_streams_refused_total") >= 1.0);
    server.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_client_that_sends_nothing_is_closed_after_the_header_read_timeout() {
    let server = Server::start(stack(vec![service("db", State::Ready)])).await;
    let mut silent = within(TcpStream::connect(server.addr)).await.unwrap();
    let mut partial = within(TcpStream::connect(server.addr)).await.unwrap();
    partial
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // The server has both: a request on a third connection is answered
    // after their arrival.
    assert_eq!(server.get("/health").await.status, 200);
    let start = Instant::now();

    let mut buf = [0; 1024];
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buf))
        .await
        .expect("the silent connection stays open");

    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = start.elapsed();
    assert!(
        (Duration::from_secs(9)..=Duration::from_secs(11)).contains(&waited),
        "closed after {waited:?}"
    );
    // Ended (by the end of the stream or a reset) in the same time.
    let mut rest = Vec::new();
    let _ended = tokio::time::timeout(Duration::from_secs(60), partial.read_to_end(&mut rest))
        .await
        .expect("the half-sent request stays open");
    assert!(start.elapsed() <= Duration::from_secs(11));
    server.stop().await.unwrap();
}
