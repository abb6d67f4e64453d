//! A real etcd for the registry's tests: one member on free loopback ports,
//! its data in a directory of its own, which the test can stop (SIGSTOP),
//! kill, restart, wipe and compact.
//!
//! `scripts/test` installs Debian's `etcd-server`, which provides `etcd`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::peers::free_port;

/// A running etcd; killed and its data removed when dropped.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client: u16,
    peer: u16,
}

impl Etcd {
    /// Starts etcd and waits until it answers as healthy.
    pub async fn start() -> Etcd {
        Etcd::start_on(free_port()).await
    }

    /// Starts etcd with its client port at `client`.
    pub async fn start_on(client: u16) -> Etcd {
        let dir = std::env::temp_dir().join(format!(
            "tether-etcd-{}-{}",
            std::process::id(),
            crate::procs::marker()
        ));
        let mut etcd = Etcd {
            child: None,
            dir,
            client,
            peer: free_port(),
        };
        etcd.spawn().await;
        etcd
    }

    /// `etcd://127.0.0.1:PORT/PREFIX?ttl=...`, the registry URL.
    pub fn url(&self, prefix: &str, ttl_secs: u64) -> String {
        format!("etcd://127.0.0.1:{}/{prefix}?ttl={ttl_secs}s", self.client)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Freezes etcd (SIGSTOP): its sockets stay open and nothing answers.
    pub fn stop(&self) {
        self.signal("STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn cont(&self) {
        self.signal("CONT");
    }

    /// Kills etcd (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills and starts etcd again on the same ports, its data wiped first
    /// if `wipe` (a new cluster: leases and revisions start over).
    pub async fn restart(&mut self, wipe: bool) {
        self.kill();
        if wipe {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        self.spawn().await;
    }

    /// The cluster's current revision.
    pub fn revision(&self) -> i64 {
        let answer = self.post("/v3/kv/range", r#"{"key":"AA=="}"#);
        let at = answer.find("\"revision\":\"").expect("a revision") + 12;
        answer[at..]
            .split('"')
            .next()
            .and_then(|r| r.parse().ok())
            .expect("a revision number")
    }

    /// Compacts the history up to `revision`.
    pub fn compact(&self, revision: i64) {
        let answer = self.post(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        );
        assert!(answer.contains("header"), "compaction: {answer}");
    }

    /// Puts `value` (raw bytes) at `key`, without a lease.
    pub fn put(&self, key: &[u8], value: &[u8]) {
        let answer = self.post(
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","value":"{}"}}"#, base64(key), base64(value)),
        );
        assert!(answer.contains("header"), "put: {answer}");
    }

    /// One request to the JSON gateway; the response body.
    pub fn post(&self, path: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.client)).expect("etcd listens");
        stream.set_read_timeout(Some(crate::PATIENCE)).unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("etcd answers");
        match answer.split_once("\r\n\r\n") {
            Some((_, body)) => body.to_string(),
            None => answer,
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} etcd");
    }

    async fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new("etcd")
            .args(["--name", "t1", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t1={peer}")])
            .args([
                "--initial-cluster-state",
                "new",
                "--logger",
                "zap",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("etcd: {e}; ./scripts/test installs it (Debian's etcd-server)")
            });
        self.child = Some(child);
        crate::within("etcd answers as healthy", async {
            loop {
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!("etcd exited: {status}");
                }
                let healthy = TcpStream::connect(("127.0.0.1", self.client))
                    .ok()
                    .and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                        s.write_all(b"GET /health HTTP/1.0\r\n\r\n").ok()?;
                        let mut answer = String::new();
                        s.read_to_string(&mut answer).ok()?;
                        Some(answer.contains("\"health\":\"true\""))
                    })
                    .unwrap_or(false);
                if healthy {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped etcd must be thawed to die cleanly.
            self.signal("CONT");
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
