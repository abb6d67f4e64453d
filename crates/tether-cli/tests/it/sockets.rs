//! Socket activation as a user runs it: `sockets` in tether.toml, bound by
//! `tether up` before anything starts, handed to every run of the service
//! as fds 3.. (sd_listen_fds), and held across restarts so that clients wait
//! in the backlog instead of being refused.

use std::collections::HashSet;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_test::within;

use crate::stack::{Stack, python};

/// The port of `tether up`'s "holding socket tcp://IP:PORT as fd N" line.
fn held_port(line: &str) -> u16 {
    let addr = line
        .split("holding socket tcp://")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no tcp socket in {line:?}"));
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "port 0 is said as the port picked: {line}");
    port
}

/// `key=value` words of a line.
fn word<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[tokio::test]
async fn every_run_gets_the_same_sockets_as_fd_3_and_on_with_its_own_listen_pid() {
    let script = "echo \"run fds=$LISTEN_FDS pid=$LISTEN_PID self=$$ names=$LISTEN_FDNAMES \
                  fd3=$(readlink /proc/$$/fd/3) fd4=$(readlink /proc/$$/fd/4)\"; \
                  exec sleep 3600";
    let mut stack = Stack::new(&format!(
        r#"
[services.web]
command = ["sh", "-c", '{script}']
sockets = ["tcp://127.0.0.1:0", {{ address = "unix:web.sock", name = "admin" }}]
stop_grace = "5s"
"#
    ));
    stack.up(&[]);
    let tcp = stack.until("web: holding socket tcp://").await;
    assert!(tcp.contains("as fd 3 (web)"), "{tcp}");
    let port = held_port(&tcp);
    let sock = stack.dir.path().join("web.sock");
    let unix = stack.until("web: holding socket unix://").await;
    assert!(
        unix.contains(&format!("unix://{} as fd 4 (admin)", sock.display())),
        "{unix}"
    );
    let mut inodes = None;
    let mut pids = HashSet::new();
    for run in 0..3 {
        if run > 0 {
            let restart = stack.tether(&["restart", "web"]).await;
            assert_eq!(restart.code(), 0, "{restart:?}");
        }
        let line = stack.until("| run fds=").await;
        assert_eq!(word(&line, "fds"), "2", "{line}");
        assert_eq!(word(&line, "names"), "web:admin", "{line}");
        assert_eq!(word(&line, "pid"), word(&line, "self"), "{line}");
        assert!(pids.insert(word(&line, "pid").to_string()), "a new run");
        let these = (
            word(&line, "fd3").to_string(),
            word(&line, "fd4").to_string(),
        );
        assert!(these.0.starts_with("socket:[") && these.1.starts_with("socket:["));
        match &inodes {
            None => inodes = Some(these),
            Some(first) => assert_eq!(first, &these, "the same sockets in run {run}"),
        }
    }
    // `ps` shows them as bound.
    let ps = stack.ps().await;
    assert_eq!(
        ps["services"][0]["sockets"],
        serde_json::json!([
            format!("tcp://127.0.0.1:{port}"),
            format!("unix://{}", sock.display())
        ]),
        "{ps}"
    );
    let table = stack.tether(&["ps"]).await;
    assert!(
        table
            .stdout
            .contains(&format!("tcp://127.0.0.1:{port} unix://")),
        "{}",
        table.stdout
    );
    // Held by tether: a client connects whether or not the service accepts.
    TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "private to the user");

    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0, "{down:?}");
    let (code, _) = stack.exited().await;
    assert_eq!(code, 0);
    assert!(!sock.exists(), "the socket file goes with the stack");
    let refused = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}

/// A server on fd 3 that answers each connection with its pid and, on
/// SIGTERM, finishes the connection it has before it exits (the signal only
/// wakes its select).
const SERVER: &str = r#"
import os, select, signal, socket, sys
server = socket.socket(fileno=3)
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
signal.signal(signal.SIGTERM, lambda *_: None)
print(f"serving as {os.getpid()}", flush=True)
while True:
    ready, _, _ = select.select([server, r], [], [])
    if r in ready:
        sys.exit(0)
    conn, _ = server.accept()
    with conn:
        conn.sendall(f"pid {os.getpid()}\n".encode())
"#;

#[derive(Debug, Default)]
struct Tally {
    connections: u64,
    refused: u64,
    /// Other failures: a reset, an answer cut short, a timeout.
    unserved: Vec<String>,
    pids: HashSet<u32>,
}

/// Connects, one connection after another, until `stop` (or a bound on the
/// count), and counts what happens.
fn connect_loop(port: u16, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    for _ in 0..2_000_000 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let outcome = (|| -> Result<u32, std::io::Error> {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let mut stream = TcpStream::connect_timeout(&addr, tether_test::PATIENCE)?;
            stream.set_read_timeout(Some(tether_test::PATIENCE))?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            answer
                .strip_prefix("pid ")
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("answer {answer:?}")))
        })();
        let mut tally = tally.lock().unwrap();
        tally.connections += 1;
        match outcome {
            Ok(pid) => {
                tally.pids.insert(pid);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => tally.refused += 1,
            Err(e) => tally.unserved.push(e.to_string()),
        }
    }
}

#[tokio::test]
async fn twenty_restarts_under_a_connect_loop_refuse_nothing_and_serve_everything() {
    let mut stack = Stack::new(&format!(
        r#"
[services.echo]
command = ["{py}", "-c", '''{SERVER}''']
sockets = ["tcp://127.0.0.1:0"]
stop_grace = "10s"
"#,
        py = python(),
    ));
    stack.up(&[]);
    let port = held_port(&stack.until("echo: holding socket").await);
    let first = stack.until("| serving as ").await;
    let mut pid: u32 = first.rsplit(' ').next().unwrap().parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let client = {
        let (stop, tally) = (stop.clone(), tally.clone());
        std::thread::spawn(move || connect_loop(port, stop, tally))
    };
    let served_by = |pid: u32| {
        let tally = tally.clone();
        async move {
            within(&format!("a connection served by {pid}"), async {
                while !tally.lock().unwrap().pids.contains(&pid) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
        }
    };
    for _ in 0..20 {
        // Each run serves the loop before the next restart, so every
        // restart happens with clients arriving.
        served_by(pid).await;
        let restart = stack.tether(&["restart", "echo"]).await;
        assert_eq!(restart.code(), 0, "{restart:?}");
        let next = stack.until("| serving as ").await;
        let new: u32 = next.rsplit(' ').next().unwrap().parse().unwrap();
        assert_ne!(new, pid, "a new process");
        pid = new;
    }
    served_by(pid).await;
    stop.store(true, Ordering::Relaxed);
    within("the connect loop to end", async {
        while !client.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    client.join().unwrap();
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert_eq!(tally.refused, 0, "{tally:?}");
    assert!(tally.unserved.is_empty(), "{tally:?}");
    assert_eq!(tally.pids.len(), 21, "every run served: {tally:?}");
    assert!(tally.connections >= 21, "{tally:?}");
    let down = stack.tether(&["down"]).await;
    assert_eq!(down.code(), 0, "{down:?}");
    assert_eq!(stack.exited().await.0, 0);
}

/// `tether up` on `toml` fails with `code` (2: the file is wrong, 1: an
/// address cannot be bound) and one line on stderr that holds each of
/// `words`; the service (which would touch `started`) never ran.
async fn refused(toml: &str, code: i32, words: &[&str]) -> String {
    let mut stack = Stack::new(&format!(
        "{toml}\n[services.marker]\ncommand = [\"touch\", \"started\"]\n"
    ));
    stack.up(&[]);
    let (exited, rest) = stack.exited().await;
    let stderr = stack.stderr().await;
    assert_eq!(exited, code, "{stderr}\n{}", stack.all_output(&rest));
    for word in words {
        assert!(stderr.contains(word), "{word:?} in {stderr}");
    }
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        !stack.dir.path().join("started").exists(),
        "nothing started: {}",
        stack.all_output(&rest)
    );
    stderr
}

fn service(sockets: &str) -> String {
    format!("[services.web]\ncommand = [\"sleep\", \"3600\"]\nsockets = [{sockets}]\n")
}

#[tokio::test]
async fn an_address_in_use_starts_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let address = format!("tcp://127.0.0.1:{port}");
    refused(
        &service(&format!("\"{address}\"")),
        1,
        &[
            "service 'web'",
            &format!("cannot listen on {address}"),
            "in use by another process",
        ],
    )
    .await;
}

#[tokio::test]
async fn bad_addresses_public_ones_and_duplicates_start_nothing() {
    refused(
        &service("\"tcp://127.0.0.1\""),
        2,
        &["services.web.sockets[1]", "missing port"],
    )
    .await;
    refused(
        &service("\"tcp://0.0.0.0:8080\""),
        2,
        &[
            "services.web.sockets[1]",
            "reachable from other machines",
            "public = true",
        ],
    )
    .await;
    refused(
        &format!(
            "{}[services.api]\ncommand = [\"sleep\", \"3600\"]\nsockets = [\"unix:s.sock\"]\n",
            service("\"unix:s.sock\"")
        ),
        2,
        &[
            "services.api.sockets[1]",
            "already a socket of service 'web'",
        ],
    )
    .await;
    refused(
        &service("\"tcp://127.0.0.1:9\", \"tcp://127.0.0.1:9\""),
        2,
        &["services.web.sockets[2]", "listed twice"],
    )
    .await;
}

/// A uid that is not ours: as root, nobody's; else root's.
fn other_uid() -> u32 {
    match rustix::process::geteuid().as_raw() {
        0 => 65534,
        _ => 0,
    }
}

#[tokio::test]
async fn a_directory_or_a_stale_socket_of_another_user_starts_nothing() {
    let root = rustix::process::geteuid().is_root();
    let theirs = tempfile::tempdir().unwrap();
    let dir = if root {
        std::os::unix::fs::chown(theirs.path(), Some(other_uid()), None).unwrap();
        theirs.path().to_path_buf()
    } else {
        // Root's, and not ours.
        std::path::PathBuf::from("/")
    };
    let path = dir.join("web.sock");
    refused(
        &service(&format!("\"unix://{}\"", path.display())),
        1,
        &["service 'web'", "belongs to another user"],
    )
    .await;
    assert!(!path.exists());
    if !root {
        return;
    }
    // A socket file another user left in a directory of ours.
    let ours = tempfile::tempdir().unwrap();
    let stale = ours.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    std::os::unix::fs::chown(&stale, Some(other_uid()), None).unwrap();
    refused(
        &service(&format!("\"unix://{}\"", stale.display())),
        1,
        &["service 'web'", "a socket file of another user is there"],
    )
    .await;
    assert!(stale.exists(), "another user's file is left alone");
}
