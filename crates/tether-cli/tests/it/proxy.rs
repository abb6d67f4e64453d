//! `tether proxy` with real sockets: clients held through an outage and
//! served byte for byte, limits, idle timeouts, resets and half-close
//! carried through, a 1 GiB transfer intact, and bad input refused.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tether_test::peers::free_port;
use tether_test::within;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout};
use tokio::task::JoinHandle;

use crate::support::{run, tether};

/// A running `tether proxy --json`, its events read as they come.
struct Proxy {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    listen: u16,
}

impl Proxy {
    async fn start(upstream: u16, extra: &[&str]) -> Proxy {
        let listen = free_port();
        let mut args = vec![
            "proxy".to_string(),
            "--json".to_string(),
            format!("tcp://127.0.0.1:{listen}"),
            format!("tcp://127.0.0.1:{upstream}"),
        ];
        args.splice(1..1, extra.iter().map(|s| s.to_string()));
        let mut child = tether().args(&args).spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut proxy = Proxy {
            child,
            lines,
            listen,
        };
        proxy.until("tether").await;
        proxy
    }

    /// Reads events until one whose `event` is `kind`.
    async fn until(&mut self, kind: &str) -> Value {
        within(&format!("a {kind} event"), async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("the proxy ended");
                let event: Value = serde_json::from_str(&line).unwrap();
                if event["event"] == kind {
                    return event;
                }
            }
        })
        .await
    }

    async fn connect(&self) -> TcpStream {
        within("connect", TcpStream::connect(("127.0.0.1", self.listen)))
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = within("the proxy to stop", self.child.wait())
            .await
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

/// An echo server on a fixed port that can be stopped and started again.
struct Echo {
    port: u16,
    task: Option<JoinHandle<()>>,
}

impl Echo {
    fn new(port: u16) -> Echo {
        Echo { port, task: None }
    }

    async fn start(&mut self) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .unwrap();
        let listener = socket.listen(128).unwrap();
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                conns.spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        }));
    }

    /// Stops it and waits until its listener and connections are closed: a
    /// connection accepted by the old listener and then reset is what a
    /// crash does, and no proxy may replay bytes it already sent.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Sends `data`, ends writing, reads until the end: the echo.
async fn round_trip(mut stream: TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = stream.split();
    let sending = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let receiving = async {
        r.read_to_end(&mut back).await.unwrap();
    };
    within("the round trip", async { tokio::join!(sending, receiving) }).await;
    back
}

/// The first connection that sends something: the proxy's readiness
/// probes connect and close without a byte, and are passed over.
async fn accept_client(listener: &TcpListener) -> TcpStream {
    loop {
        let (s, _) = listener.accept().await.unwrap();
        let mut one = [0u8; 1];
        if s.peek(&mut one).await.unwrap_or(0) > 0 {
            return s;
        }
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn clients_arriving_while_the_upstream_is_down_are_held_and_served_byte_exact() {
    let port = free_port();
    let mut echo = Echo::new(port);
    let mut proxy = Proxy::start(port, &[]).await;
    // Five clients arrive during the outage and send at once.
    let mut clients = Vec::new();
    for i in 0..5u8 {
        let stream = proxy.connect().await;
        let data = pattern(100_000 + i as usize, i);
        clients.push(tokio::spawn(async move {
            let back = round_trip(stream, &data).await;
            back == data
        }));
    }
    echo.start().await;
    for client in clients {
        assert!(
            within("a held client", client).await.unwrap(),
            "bytes differ"
        );
    }
    let relayed = proxy.until("relayed").await;
    assert!(relayed["held_ms"].as_u64().is_some(), "{relayed}");
    // Restarted three times while clients keep coming: every one served.
    for round in 0..3u8 {
        echo.stop().await;
        let stream = proxy.connect().await;
        let data = pattern(5000, round);
        let client = tokio::spawn(async move { round_trip(stream, &data).await == data });
        echo.start().await;
        assert!(within("a client across a restart", client).await.unwrap());
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_waits_past_the_pending_timeout_is_closed_with_the_cause() {
    let port = free_port();
    let mut proxy = Proxy::start(port, &["--pending-timeout", "200ms"]).await;
    let mut stream = proxy.connect().await;
    let refused = proxy.until("refused").await;
    assert_eq!(refused["cause"], "pending.timeout", "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{refused}"
    );
    let mut buf = [0u8; 1];
    let n = within("the close", stream.read(&mut buf))
        .await
        .unwrap_or(0);
    assert_eq!(n, 0, "closed");
    proxy.stop().await;
}

/// The proxy stands still (SIGSTOP, a paused VM) for longer than the
/// pending timeout while a client waits for its upstream, which comes half
/// a second after the proxy runs again. The client is relayed: the time the
/// proxy stood still is not counted against its wait, so it had all but a
/// moment of its 3 s left.
#[tokio::test]
async fn a_client_waiting_across_a_stall_longer_than_its_timeout_is_served() {
    let port = free_port();
    let mut echo = Echo::new(port);
    let mut proxy = Proxy::start(port, &["--pending-timeout", "3s"]).await;
    let stream = proxy.connect().await;
    // Taken from the listener's backlog: the proxy holds it, and its wait
    // began.
    within("the proxy to accept", async {
        while backlog(proxy.listen) != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let data = pattern(1000, 7);
    let client = tokio::spawn(async move { round_trip(stream, &data).await == data });
    let pid = rustix::process::Pid::from_raw(proxy.child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    // The fault itself: 5 s without running, past the 3 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    echo.start().await;
    assert!(
        within("the held client", client).await.unwrap(),
        "bytes differ"
    );
    let relayed = proxy.until("relayed").await;
    assert!(relayed["held_ms"].as_u64().is_some(), "{relayed}");
    proxy.stop().await;
}

/// A relayed connection, idle while the proxy stands still (SIGSTOP, a
/// paused VM) for longer than its idle timeout: when the proxy runs again,
/// the connection is still relayed, since nothing could have moved on it.
#[tokio::test]
async fn a_connection_idle_only_because_the_proxy_stood_still_is_kept() {
    let port = free_port();
    let mut echo = Echo::new(port);
    echo.start().await;
    let mut proxy = Proxy::start(port, &["--idle-timeout", "2s"]).await;
    let mut stream = proxy.connect().await;
    let mut buf = [0u8; 5];
    stream.write_all(b"hello").await.unwrap();
    within("the echo", stream.read_exact(&mut buf))
        .await
        .unwrap();
    proxy.until("relayed").await;
    let pid = rustix::process::Pid::from_raw(proxy.child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    // The fault itself: 5 s without running, past the 2 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    // Nothing is sent at once: the idle timer, late by 3 s, is the first
    // thing the proxy sees (without the fix it closes the connection).
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(b"again").await.unwrap();
    within("the echo after the stall", stream.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"again");
    proxy.stop().await;
}

/// Connections in the accept backlog of the IPv4 listener on `port`
/// (`/proc/net/tcp`: a listener's `rx_queue`).
fn backlog(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let listening = *fields.get(3)? == "0A";
            let rx = u64::from_str_radix(fields.get(4)?.rsplit(':').next()?, 16).ok()?;
            (listening && local_port == port).then_some(rx)
        })
        .sum()
}

#[tokio::test]
async fn over_a_limit_a_client_is_refused_at_once() {
    let port = free_port();
    let mut proxy = Proxy::start(port, &["--max-pending", "1", "--max-connections", "2"]).await;
    let _first = proxy.connect().await;
    let mut second = proxy.connect().await;
    let refused = proxy.until("refused").await;
    assert_eq!(refused["cause"], "limit.pending", "{refused}");
    let mut buf = [0u8; 1];
    assert_eq!(
        within("the close", second.read(&mut buf))
            .await
            .unwrap_or(0),
        0
    );
    let mut echo = Echo::new(port);
    echo.start().await;
    proxy.until("relayed").await;
    let _third = proxy.connect().await;
    proxy.until("relayed").await;
    let mut fourth = proxy.connect().await;
    let refused = proxy.until("refused").await;
    assert_eq!(refused["cause"], "limit.connections", "{refused}");
    assert_eq!(
        within("the close", fourth.read(&mut buf))
            .await
            .unwrap_or(0),
        0
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_closed_at_the_idle_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut proxy = Proxy::start(port, &["--idle-timeout", "300ms"]).await;
    let mut stream = proxy.connect().await;
    stream.write_all(b"hello?").await.unwrap();
    let closed = proxy.until("closed").await;
    assert_eq!(closed["ending"], "idle.timeout", "{closed}");
    assert_eq!(closed["bytes_up"], 6);
    let mut buf = [0u8; 1];
    assert_eq!(
        within("the close", stream.read(&mut buf))
            .await
            .unwrap_or(0),
        0
    );
    hold.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_that_resets_mid_stream_resets_the_client_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let reset = tokio::spawn(async move {
        let mut s = accept_client(&listener).await;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"partial answer").await.unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    });
    let mut proxy = Proxy::start(port, &[]).await;
    let mut stream = proxy.connect().await;
    stream.write_all(b"ping").await.unwrap();
    let mut got = Vec::new();
    let result = within("the reset", stream.read_to_end(&mut got)).await;
    let closed = proxy.until("closed").await;
    assert_eq!(closed["ending"], "upstream.reset", "{closed}");
    assert!(
        result.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client sees a reset, not a clean end"
    );
    reset.await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn half_close_is_carried_both_ways() {
    // The upstream reads to the end, then answers: the client's
    // shutdown(WR) must reach it while the client still reads.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = tokio::spawn(async move {
        let mut s = accept_client(&listener).await;
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        // ... and the other way: the upstream ended writing; it still
        // reads nothing more, and closes.
    });
    let proxy = Proxy::start(port, &[]).await;
    let mut stream = proxy.connect().await;
    stream.write_all(&[7u8; 12345]).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    within("the answer", stream.read_to_string(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, "got 12345 bytes");
    upstream.await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn a_gibibyte_arrives_intact_spliced() {
    gibibyte(&[]).await;
}

#[tokio::test]
async fn a_gibibyte_arrives_intact_copied() {
    gibibyte(&["--pipes", "0"]).await;
}

/// 1 GiB through the proxy into a sink that checks every block: each
/// 64 KiB block is the same bytes but for its first 8, its number, so any
/// byte lost, doubled or out of order shows (and the check is a memcmp,
/// fast even in a debug build).
async fn gibibyte(extra: &[&str]) {
    const BLOCK: usize = 1 << 16;
    const BLOCKS: u64 = (1 << 30) / BLOCK as u64;
    let base = pattern(BLOCK, 3);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected = base.clone();
    let sink = tokio::spawn(async move {
        let mut s = accept_client(&listener).await;
        let mut block = vec![0u8; BLOCK];
        let mut next = 0u64;
        loop {
            match s.read_exact(&mut block).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("{e}"),
            }
            let number = u64::from_le_bytes(block[..8].try_into().unwrap());
            if number != next || block[8..] != expected[8..] {
                return Err(next);
            }
            next += 1;
        }
        Ok(next)
    });
    let proxy = Proxy::start(port, extra).await;
    let mut stream = proxy.connect().await;
    let mut block = base;
    for number in 0..BLOCKS {
        block[..8].copy_from_slice(&number.to_le_bytes());
        stream.write_all(&block).await.unwrap();
    }
    stream.shutdown().await.unwrap();
    let got = within("the sink", sink).await.unwrap();
    assert_eq!(got, Ok(BLOCKS));
    proxy.stop().await;
}

#[tokio::test]
async fn bad_input_is_one_clear_error_each() {
    let port = free_port();
    for (args, words) in [
        (
            vec!["proxy", "tcp://0.0.0.0:1", "tcp://127.0.0.1:2"],
            "pass --public",
        ),
        (
            vec!["proxy", "http://127.0.0.1:1/", "tcp://127.0.0.1:2"],
            "tcp://HOST:PORT or unix:///PATH",
        ),
        (
            vec!["proxy", "tcp://127.0.0.1:1", "http://127.0.0.1:2/"],
            "a proxy relays to tcp://HOST:PORT, unix:///PATH or registry:NAME",
        ),
        (
            vec!["proxy", "tcp://127.0.0.1:x", "tcp://127.0.0.1:2"],
            "cannot listen on",
        ),
        (
            vec![
                "proxy",
                "tcp://localhost:1",
                "tcp://127.0.0.1:2",
                "--ready",
                "nope://x",
            ],
            "nope",
        ),
    ] {
        let r = run(&args).await;
        assert_eq!(r.code(), 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(words), "{args:?}: {}", r.stderr);
    }
    // A listen address in use.
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let busy = taken.local_addr().unwrap().port();
    let r = run(&[
        "proxy",
        &format!("tcp://127.0.0.1:{busy}"),
        &format!("tcp://127.0.0.1:{port}"),
    ])
    .await;
    assert_eq!(r.code(), 1, "{r:?}");
    assert!(
        r.stderr.contains("is in use by another process"),
        "{}",
        r.stderr
    );
    // A unix path in a directory of another user, and a stale socket file
    // of another user (root can make both).
    if rustix::process::geteuid().is_root() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let sock = format!("unix://{}/p.sock", theirs.display());
        let r = run(&["proxy", &sock, "tcp://127.0.0.1:1"]).await;
        assert_eq!(r.code(), 1, "{r:?}");
        assert!(r.stderr.contains("belongs to another user"), "{}", r.stderr);
        let stale = dir.path().join("stale.sock");
        let l = std::os::unix::net::UnixListener::bind(&stale).unwrap();
        drop(l);
        std::os::unix::fs::chown(&stale, Some(65534), Some(65534)).unwrap();
        let r = run(&[
            "proxy",
            &format!("unix://{}", stale.display()),
            "tcp://127.0.0.1:1",
        ])
        .await;
        assert!(
            r.stderr.contains("a socket file of another user"),
            "{}",
            r.stderr
        );
    }
}

#[tokio::test]
async fn a_unix_proxy_replaces_its_own_stale_socket_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let upstream = free_port();
    let mut child = tether()
        .args([
            "proxy",
            "--json",
            &format!("unix://{}", path.display()),
            &format!("tcp://127.0.0.1:{upstream}"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    within("the banner", lines.next_line()).await.unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut echo = Echo::new(upstream);
    echo.start().await;
    let mut stream = within("connect", tokio::net::UnixStream::connect(&path))
        .await
        .unwrap();
    stream.write_all(b"over unix").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = String::new();
    within("the echo", stream.read_to_string(&mut back))
        .await
        .unwrap();
    assert_eq!(back, "over unix");
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    within("stop", child.wait()).await.unwrap();
    assert!(!path.exists(), "the socket file goes with the proxy");
}

// --- [proxies.NAME] in a stack ---

fn proxied_stack(port: u16, listen: u16, delay: &str) -> String {
    format!(
        r#"
name = "p{port}"
[services.db]
command = ["{py}", "{svc}", "--port", "{port}", "--delay", "{delay}"]
ready = "http://127.0.0.1:{port}/health"
[proxies.front]
listen = "tcp://127.0.0.1:{listen}"
upstream = "service:db"
"#,
        py = crate::stack::python(),
        svc = tether_test::peers::peer_script("http_service.py").display(),
    )
}

/// `GET /health` through the proxy: the answer, whole.
async fn health_through(listen: u16) -> String {
    let stream = within("connect", TcpStream::connect(("127.0.0.1", listen)))
        .await
        .unwrap();
    let back = round_trip(stream, b"GET /health HTTP/1.0\r\n\r\n").await;
    String::from_utf8_lossy(&back).into_owned()
}

#[tokio::test]
async fn a_stack_proxy_holds_clients_until_its_service_is_ready_and_through_restarts() {
    let (port, listen, status) = (free_port(), free_port(), free_port());
    let mut stack = crate::stack::Stack::new(&proxied_stack(port, listen, "0.5"));
    stack.up(&["--status", &format!("127.0.0.1:{status}")]);
    let said = stack.until("proxy front:").await;
    assert!(
        said.contains(&format!(
            "tcp://127.0.0.1:{listen} -> tcp://127.0.0.1:{port} (service:db)"
        )),
        "{said}"
    );
    // The service takes 0.5 s to listen: this client is held meanwhile.
    let early = tokio::spawn(health_through(listen));
    stack.until("db is ready").await;
    let answer = within("the held client", early).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    // Restarted (it listens again only after 0.5 s) while a client comes.
    let restart = stack.tether(&["restart", "db"]).await;
    assert_eq!(restart.code(), 0, "{restart:?}");
    let during = tokio::spawn(health_through(listen));
    let answer = within("a client across the restart", during).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    // The status server shows the proxy and its counters (published at
    // most 50 ms after they change).
    let json = within("the status to show both clients", async {
        loop {
            let mut s = TcpStream::connect(("127.0.0.1", status)).await.unwrap();
            s.write_all(b"GET /api/services HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            let mut all = String::new();
            s.read_to_string(&mut all).await.unwrap();
            let json: Value = serde_json::from_str(all.split("\r\n\r\n").nth(1).unwrap()).unwrap();
            if json["proxies"][0]["relayed"] == 2 {
                return json;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let front = &json["proxies"][0];
    assert_eq!(front["name"], "front", "{json}");
    assert_eq!(front["listen"], format!("tcp://127.0.0.1:{listen}"));
    assert!(front["relayed"].as_u64().unwrap() >= 2, "{front}");
    assert!(front["held"].as_u64().unwrap() >= 1, "{front}");
    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0, "{down:?}");
    let (code, _) = stack.exited().await;
    assert_eq!(code, 0);
    assert!(
        TcpStream::connect(("127.0.0.1", listen)).await.is_err(),
        "the proxy's port is closed with the stack"
    );
}

#[tokio::test]
async fn a_stack_proxy_says_its_events_as_json() {
    let (port, listen) = (free_port(), free_port());
    let mut stack = crate::stack::Stack::new(&proxied_stack(port, listen, "0"));
    stack.up(&["--json"]);
    stack.until(r#""to":"ready""#).await;
    let answer = health_through(listen).await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let relayed: Value = serde_json::from_str(&stack.until("proxy.relayed").await).unwrap();
    assert_eq!(relayed["proxy"], "front", "{relayed}");
    let closed: Value = serde_json::from_str(&stack.until("proxy.closed").await).unwrap();
    assert_eq!(closed["ending"], "done", "{closed}");
    assert!(closed["bytes_down"].as_u64().unwrap() > 0, "{closed}");
    stack.tether(&["down"]).await;
    stack.exited().await;
}

#[tokio::test]
async fn a_stack_whose_proxy_cannot_listen_starts_nothing() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let busy = taken.local_addr().unwrap().port();
    let port = free_port();
    let mut stack = crate::stack::Stack::new(&proxied_stack(port, busy, "0"));
    stack.up(&[]);
    let (code, rest) = stack.exited().await;
    assert_eq!(code, 1, "{rest:?}");
    let stderr = stack.stderr().await;
    assert!(
        stderr.contains(&format!(
            "proxies.front: cannot listen on tcp://127.0.0.1:{busy}: the address is in use by another process"
        )),
        "{stderr}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "the service was never started"
    );
}

// --- hostile peers ---

/// The proxy's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_back_the_upstream_not_the_proxys_memory() {
    for pipes in ["64", "0"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy::start(port, &["--pipes", pipes]).await;
        let pid = proxy.child.id().unwrap();
        let before = rss_kib(pid);
        let mut client = proxy.connect().await;
        client.write_all(b"go").await.unwrap();
        let mut upstream = accept_client(&listener).await;
        let mut go = [0u8; 2];
        upstream.read_exact(&mut go).await.unwrap();
        // The upstream writes until the kernel says no more: what the
        // client never read sits in socket buffers and at most one pipe or
        // buffer of the proxy's, and then the upstream is held back.
        let chunk = vec![7u8; 1 << 16];
        let mut written = 0usize;
        let mut refusals = 0;
        while refusals < 20 && written < 256 << 20 {
            match upstream.try_write(&chunk) {
                Ok(n) => {
                    written += n;
                    refusals = 0;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Writable again means the proxy took more; give it
                    // the chance (bounded: 20 refusals in a row end it).
                    refusals += 1;
                    let _ =
                        tokio::time::timeout(Duration::from_millis(20), upstream.writable()).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            written < 64 << 20,
            "pipes {pipes}: {written} bytes taken from the upstream while the client read nothing"
        );
        let grown = rss_kib(pid).saturating_sub(before);
        assert!(
            grown < 8 << 10,
            "pipes {pipes}: the proxy grew by {grown} KiB"
        );
        // And nothing was lost: the client reads it all once it reads.
        upstream.shutdown().await.unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        within("the client to read it all", async {
            loop {
                match client.read(&mut buf).await.unwrap() {
                    0 => break,
                    n => got += n,
                }
            }
        })
        .await;
        assert_eq!(got, written, "pipes {pipes}");
        proxy.stop().await;
    }
}

#[tokio::test]
async fn a_client_that_resets_mid_stream_resets_the_upstream_at_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut proxy = Proxy::start(port, &[]).await;
    let client = proxy.connect().await;
    let mut c = client;
    c.write_all(b"half a request").await.unwrap();
    let mut upstream = accept_client(&listener).await;
    let mut buf = [0u8; 14];
    upstream.read_exact(&mut buf).await.unwrap();
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let result = within("the reset", upstream.read(&mut buf)).await;
    assert!(
        result.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the upstream sees a reset, not a clean end"
    );
    let closed = proxy.until("closed").await;
    assert_eq!(closed["ending"], "client.reset", "{closed}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_resets_while_it_waits_frees_its_place_at_once() {
    let port = free_port();
    let mut proxy = Proxy::start(port, &["--max-pending", "1"]).await;
    let first = proxy.connect().await;
    socket2::SockRef::from(&first)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(first);
    let closed = proxy.until("closed").await;
    assert_eq!(closed["ending"], "client.reset", "{closed}");
    assert_eq!(closed["bytes_up"], 0);
    // Its place is free: the next client waits instead of being refused.
    let second = proxy.connect().await;
    let mut echo = Echo::new(port);
    echo.start().await;
    assert_eq!(round_trip(second, b"still here").await, b"still here");
    let relayed = proxy.until("relayed").await;
    assert_eq!(relayed["client"], 2, "{relayed}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_low_descriptor_limit_lowers_the_connection_limit_instead_of_failing_accepts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let listen = free_port();
    // 300 descriptors, hard: (300 - 256 kept) / 2 = 22 connections.
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", "ulimit -n 300 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_tether"))
        .args([
            "proxy",
            "--json",
            "--pipes",
            "0",
            "--max-connections",
            "1000",
        ])
        .arg(format!("tcp://127.0.0.1:{listen}"))
        .arg(format!("tcp://127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = within("the banner", lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(banner.contains(r#""event":"tether""#), "{banner}");
    let mut clients = Vec::new();
    let (mut relayed, mut refused) = (0, 0);
    within("40 clients relayed or refused", async {
        while relayed + refused < 40 {
            if clients.len() < 40 {
                clients.push(TcpStream::connect(("127.0.0.1", listen)).await.unwrap());
                continue;
            }
            let Some(line) = lines.next_line().await.unwrap() else {
                panic!("the proxy ended")
            };
            let event: Value = serde_json::from_str(&line).unwrap();
            match event["event"].as_str().unwrap() {
                "relayed" => relayed += 1,
                "refused" => {
                    assert_eq!(event["cause"], "limit.connections", "{event}");
                    refused += 1;
                }
                _ => {}
            }
        }
    })
    .await;
    assert_eq!((relayed, refused), (22, 18));
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = within("the proxy to stop", child.wait_with_output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--max-connections 1000 is lowered to 22"),
        "{stderr}"
    );
    hold.abort();
}

#[tokio::test]
async fn an_outage_a_client_finds_first_is_said_when_it_begins() {
    let port = free_port();
    let mut echo = Echo::new(port);
    echo.start().await;
    let mut proxy = Proxy::start(port, &[]).await;
    let up = proxy.until("upstream").await;
    assert_eq!(up["ready"], true, "{up}");
    // Gone between two probes: the client's connect finds it first.
    echo.stop().await;
    let stream = proxy.connect().await;
    let client = tokio::spawn(async move { round_trip(stream, b"held").await });
    let down = proxy.until("upstream").await;
    assert_eq!(down["ready"], false, "{down}");
    assert!(
        down["reason"].as_str().unwrap().contains("refused"),
        "{down}"
    );
    echo.start().await;
    let back = proxy.until("upstream").await;
    assert_eq!(back["ready"], true, "{back}");
    assert_eq!(within("the held client", client).await.unwrap(), b"held");
    proxy.stop().await;
}

#[tokio::test]
async fn a_ready_upstream_sees_no_connection_but_the_clients() {
    // A server that takes one client at a time (as iperf3's does) would
    // take a readiness probe for a client: while the upstream is ready and
    // the check is a plain connect, none is made.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Bounded: more than a handful of connections is a failure anyway.
    let (seen_tx, mut seen) = tokio::sync::mpsc::channel(64);
    let counting = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = seen_tx.send(s).await;
        }
    });
    let mut proxy = Proxy::start(port, &[]).await;
    // The first probe, before any client: it finds the upstream ready.
    let up = proxy.until("upstream").await;
    assert_eq!(up["ready"], true, "{up}");
    let probe = within("the first probe", seen.recv()).await.unwrap();
    drop(probe);
    let client = proxy.connect().await;
    let relayed = within("the client's connection", seen.recv())
        .await
        .unwrap();
    // Longer than the 2 s a steady probe would take: nothing more comes.
    let more = tokio::time::timeout(Duration::from_millis(2500), seen.recv()).await;
    assert!(
        more.is_err(),
        "a connection that is not a client's: {more:?}"
    );
    drop((client, relayed));
    counting.abort();
    proxy.stop().await;
}

#[tokio::test]
async fn once_the_upstream_has_been_down_long_enough_clients_are_refused_at_once() {
    let port = free_port();
    let mut proxy = Proxy::start(port, &["--fail-fast-after", "100ms"]).await;
    // Whatever came before, a client arriving well after 100 ms of
    // downtime is refused at once, with the cause.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = proxy.connect().await;
    let refused = proxy.until("refused").await;
    assert_eq!(refused["cause"], "upstream.down", "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("has been down for"),
        "{refused}"
    );
    let mut buf = [0u8; 1];
    assert_eq!(
        within("the close", late.read(&mut buf)).await.unwrap_or(0),
        0
    );
    // Back: seen soon (the refused client still wanted it, so it is looked
    // at often), and clients are served again.
    let mut echo = Echo::new(port);
    echo.start().await;
    let back = proxy.until("upstream").await;
    assert_eq!(back["ready"], true, "{back}");
    let stream = proxy.connect().await;
    assert_eq!(round_trip(stream, b"back").await, b"back");
    proxy.stop().await;
}

#[tokio::test]
async fn the_stacks_limit_counts_the_clients_of_every_proxy() {
    let (port, a, b) = (free_port(), free_port(), free_port());
    let toml = format!(
        r#"
name = "pl{port}"
max_proxy_connections = 1
[services.db]
command = ["{py}", "{svc}", "--port", "{port}"]
ready = "http://127.0.0.1:{port}/health"
[proxies.a]
listen = "tcp://127.0.0.1:{a}"
upstream = "service:db"
[proxies.b]
listen = "tcp://127.0.0.1:{b}"
upstream = "service:db"
"#,
        py = crate::stack::python(),
        svc = tether_test::peers::peer_script("http_service.py").display(),
    );
    let mut stack = crate::stack::Stack::new(&toml);
    stack.up(&["--json"]);
    stack.until(r#""to":"ready""#).await;
    let _first = within("connect", TcpStream::connect(("127.0.0.1", a)))
        .await
        .unwrap();
    stack.until("proxy.relayed").await;
    let mut second = within("connect", TcpStream::connect(("127.0.0.1", b)))
        .await
        .unwrap();
    let refused: Value = serde_json::from_str(&stack.until("proxy.refused").await).unwrap();
    assert_eq!(refused["proxy"], "b", "{refused}");
    assert_eq!(refused["cause"], "limit.all", "{refused}");
    let mut buf = [0u8; 1];
    assert_eq!(
        within("the close", second.read(&mut buf))
            .await
            .unwrap_or(0),
        0
    );
    stack.tether(&["down"]).await;
    stack.exited().await;
}
