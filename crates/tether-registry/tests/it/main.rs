//! The registry against real processes and a real directory.
//!
//! Registrants are this test binary run again (the `registrant` test below,
//! which does nothing unless `TETHER_REGISTRANT_DIR` is set), so every
//! record is written by the real backend in another process.

// Test helpers outside #[test] functions may unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;
mod etcd;
mod processes;
mod security;
mod watch;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tether_registry::{FileRegistry, NewRecord, Registry};

/// A registrant process: registers and deregisters `TETHER_REGISTRANT_ROUNDS`
/// times, then holds one last lease, prints `ready <id>`, and waits to be
/// killed; in the registry at `TETHER_REGISTRANT_URL` if set (etcd). With `TETHER_REGISTRANT_LIST`, it prints `listed <n> skipped
/// <m>` and exits. With `TETHER_REGISTRANT_CHILD`, it first starts a `sleep` that
/// outlives it and prints `child <pid>`. With `TETHER_REGISTRANT_LOCK`, it
/// only takes a POSIX lock on that file and prints `ready locked`.
#[test]
fn registrant() {
    let Some(dir) = std::env::var_os("TETHER_REGISTRANT_DIR") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        if std::env::var_os("TETHER_REGISTRANT_LIST").is_some() {
            let registry = FileRegistry::at(Path::new(&dir)).unwrap();
            let listed = registry.list().await.unwrap();
            println!("listed {} skipped {}", listed.len(), registry.skipped());
            return;
        }
        if let Some(path) = std::env::var_os("TETHER_REGISTRANT_LOCK") {
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
                .unwrap();
            println!("ready locked");
            forever(file).await;
        }
        let rounds: u32 = std::env::var("TETHER_REGISTRANT_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let registry = match std::env::var("TETHER_REGISTRANT_URL") {
            Ok(url) => tether_registry::open(Some(&url)).unwrap(),
            Err(_) => {
                tether_registry::AnyRegistry::File(FileRegistry::at(Path::new(&dir)).unwrap())
            }
        };
        for round in 0..rounds {
            let lease = registry.register(record("stress", round)).await.unwrap();
            tokio::task::yield_now().await;
            drop(lease);
        }
        let lease = registry.register(record("stress", rounds)).await.unwrap();
        if std::env::var_os("TETHER_REGISTRANT_CHILD").is_some() {
            // Never waited for: it is to outlive this process (the test
            // kills it by pid).
            #[allow(clippy::zombie_processes)]
            let child = Command::new("sleep")
                .arg("1000")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            println!("child {}", child.id());
        }
        println!("ready {}", lease.instance().id);
        forever(lease).await;
    });
}

async fn forever<T>(_keep: T) -> ! {
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

pub(crate) fn record(name: &str, round: u32) -> NewRecord {
    NewRecord {
        name: name.to_string(),
        endpoint: format!("http://127.0.0.1:{}", 10000 + round),
        meta: BTreeMap::from([("round".to_string(), round.to_string())]),
        pid: None,
    }
}

/// A registrant in another process, killed and reaped when dropped.
pub(crate) struct Registrant {
    pub(crate) child: Child,
    lines: Option<BufReader<std::process::ChildStdout>>,
}

impl Registrant {
    pub(crate) fn start(dir: &Path, env: &[(&str, &str)]) -> Registrant {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["registrant", "--exact", "--nocapture", "--test-threads=1"])
            .env("TETHER_REGISTRANT_DIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap());
        Registrant {
            child,
            lines: Some(lines),
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the line starting with `word `, returning the rest.
    pub(crate) async fn line(&mut self, word: &str) -> String {
        let mut lines = self.lines.take().unwrap();
        let prefix = format!("{word} ");
        let (lines, found) = tether_test::within(
            &format!("registrant prints {word}"),
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).unwrap() == 0 {
                        panic!("registrant exited before printing {prefix:?}");
                    }
                    // libtest may print `test registrant ... ` first.
                    if let Some(at) = line.find(&prefix) {
                        return (lines, line[at + prefix.len()..].trim().to_string());
                    }
                }
            }),
        )
        .await
        .unwrap();
        self.lines = Some(lines);
        found
    }

    pub(crate) fn kill(&self) {
        let pid = rustix::process::Pid::from_raw(self.pid()).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

impl Drop for Registrant {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh registry directory (mode 0700) in a temporary directory.
pub(crate) fn temp_registry() -> (tempfile::TempDir, PathBuf, FileRegistry) {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("registry");
    let registry = FileRegistry::at(&path).unwrap();
    (temp, path, registry)
}

/// The names in a directory.
pub(crate) fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
