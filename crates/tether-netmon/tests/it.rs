//! The monitor against the real sources: a process stopped with SIGSTOP
//! reports a stall, not a sleep; address and link changes in a network
//! namespace made for the test are reported once they settle.
//!
//! The monitor runs in a child process (this test binary again, the
//! `monitor` test below, which does nothing unless `TETHER_NETMON_CHILD`
//! is set), printing every event as a line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The child: starts a monitor, prints `ready`, then every event.
#[test]
fn monitor() {
    if std::env::var_os("TETHER_NETMON_CHILD").is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let netmon = tether_netmon::Netmon::start(tether_netmon::Config::default()).unwrap();
        let mut events = netmon.subscribe();
        let pulse = netmon.pulse();
        println!("ready");
        while let Ok(event) = events.recv().await {
            println!("event {event:?} stood still {:?}", pulse.stood_still());
        }
    });
}

struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    fn start(prefix: &[&str]) -> Monitor {
        let exe = std::env::current_exe().unwrap();
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = command
            .args(["monitor", "--exact", "--nocapture", "--test-threads=1"])
            .env("TETHER_NETMON_CHILD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out: ChildStdout = child.stdout.take().unwrap();
        // Bounded: the reader thread waits when the test falls behind.
        let (tx, lines) = mpsc::sync_channel(1024);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let monitor = Monitor { child, lines };
        monitor.until("ready");
        monitor
    }

    /// The first line from now that contains `text`; every line seen.
    fn until(&self, text: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    let found = line.contains(text);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(e) => panic!("no line with {text:?} ({e}); saw {seen:?}"),
            }
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_stopped_process_reports_a_stall_not_a_sleep() {
    let monitor = Monitor::start(&[]);
    monitor.signal("-STOP");
    // The fault itself: four seconds without running.
    tokio::time::sleep(Duration::from_secs(4)).await;
    monitor.signal("-CONT");
    let seen = monitor.until("Stalled");
    assert!(!seen.iter().any(|l| l.contains("Resumed")), "{seen:?}");
    let line = seen.last().unwrap();
    let secs = |after: &str, before: &str| -> f64 {
        line.split(after)
            .nth(1)
            .and_then(|s| s.split(before).next())
            .and_then(|s| s.trim().strip_suffix('s'))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    let stalled = secs("stalled: ", "}");
    assert!((2.0..=30.0).contains(&stalled), "{line}");
    // What deadlines are owed: the same stall, as the pulse counts it.
    let stood_still = secs("stood still ", "\n");
    assert!((stood_still - stalled).abs() < 0.5, "{line}");
}

#[test]
fn address_and_link_changes_are_reported_once_they_settle() {
    let netns = tether_test::netns::Netns::new("nm");
    let monitor = Monitor::start(&["ip", "netns", "exec", netns.name()]);
    netns.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    netns.ip(&["addr", "add", "10.77.0.1/24", "dev", "va"]);
    netns.ip(&["link", "set", "va", "up"]);
    netns.ip(&["link", "set", "vb", "up"]);
    let seen = monitor.until("addr va 10.77.0.1/24");
    assert!(
        seen.iter().any(|l| l.contains("NetworkSettling")),
        "{seen:?}"
    );
    let changed = seen.last().unwrap();
    assert!(changed.contains("NetworkChanged"), "{changed}");
    // Settled again: the address goes.
    if !changed.contains("link va up") {
        monitor.until("link va up");
    }
    netns.ip(&["addr", "del", "10.77.0.1/24", "dev", "va"]);
    let seen = monitor.until("removed: [\"addr va 10.77.0.1/24\"]");
    assert!(seen.last().unwrap().contains("NetworkChanged"), "{seen:?}");
}

/// In a time namespace BOOTTIME runs a day ahead of MONOTONIC from the
/// start: a fixed offset, which is no sleep. A stall is still a stall.
#[tokio::test]
async fn a_time_namespace_offset_is_not_a_sleep() {
    let monitor = Monitor::start(&["unshare", "--time", "--boottime", "86400"]);
    monitor.signal("-STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    monitor.signal("-CONT");
    let seen = monitor.until("Stalled");
    assert!(!seen.iter().any(|l| l.contains("Resumed")), "{seen:?}");
}
