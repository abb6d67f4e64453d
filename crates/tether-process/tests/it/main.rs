//! Real processes, real signals: spawning, waiting, stopping whole groups,
//! and reaping orphans without taking an owned child's status.

// Test helpers outside #[test] functions may unwrap: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use tether_process::{Exit, Reaper, Signal, signal_number, spawn};
use tether_test::within;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).stdin(Stdio::null());
    cmd
}

mod listen;
mod scope;

use tether_test::procs::{alive_with, marker, until_alive, until_gone};

#[tokio::test]
async fn exit_codes_and_signals() {
    let mut child = spawn(&mut sh("exit 3")).unwrap();
    assert_eq!(within("exit", child.wait()).await.unwrap(), Exit::Code(3));
    assert_eq!(child.exit(), Some(Exit::Code(3)));
    assert_eq!(
        child.wait().await.unwrap(),
        Exit::Code(3),
        "waiting again answers the same"
    );
    let mut child = spawn(&mut sh("kill -TERM $$")).unwrap();
    let exit = within("signal", child.wait()).await.unwrap();
    assert_eq!(exit, Exit::Signal(15));
    assert_eq!(exit.to_string(), "was killed by SIGTERM");
    assert_eq!(exit.shell_code(), 143);
    assert_eq!(Exit::Code(1).to_string(), "exited with status 1");
}

#[tokio::test]
async fn spawn_errors_are_the_programs_own() {
    let err = spawn(&mut Command::new("/nonexistent/tether-test")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[tokio::test]
async fn piped_output_is_async() {
    let mut cmd = sh("echo one; echo two >&2");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn(&mut cmd).unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    assert_eq!(
        within("stdout", out.next_line()).await.unwrap().as_deref(),
        Some("one")
    );
    assert_eq!(
        within("stderr", err.next_line()).await.unwrap().as_deref(),
        Some("two")
    );
    assert!(within("exit", child.wait()).await.unwrap().success());
}

#[tokio::test]
async fn stop_sends_the_signal_to_the_whole_group() {
    let m = marker();
    let mut child = spawn(&mut sh(&format!("sleep {m} & sleep {m} & wait"))).unwrap();
    // Both sleeps are up before we stop.
    // The shell and both sleeps carry the marker.
    until_alive(&m, 3).await;
    let report = within("stop", child.stop(Signal::TERM, Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(!report.killed, "SIGTERM was enough: {report:?}");
    assert!(!report.group_left);
    assert!(alive_with(&m).is_empty(), "grandchildren outlived the stop");
    assert!(!child.group_alive());
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let mut cmd = sh("trap '' TERM; echo armed; while :; do sleep 0.05; done");
    cmd.stdout(Stdio::piped());
    let mut child = spawn(&mut cmd).unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(
        within("armed", out.next_line()).await.unwrap().as_deref(),
        Some("armed")
    );
    let report = within("stop", child.stop(Signal::TERM, Duration::from_millis(300)))
        .await
        .unwrap();
    assert!(report.killed, "{report:?}");
    assert_eq!(report.exit, Exit::Signal(9));
    assert!(report.took >= Duration::from_millis(300));
    assert!(!child.group_alive());
}

#[tokio::test]
async fn dropping_a_child_kills_its_group() {
    let m = marker();
    let child = spawn(&mut sh(&format!("sleep {m} & sleep {m}"))).unwrap();
    until_alive(&m, 3).await;
    drop(child);
    assert!(until_gone(&m).await.is_empty());
}

#[tokio::test]
async fn the_reaper_reaps_orphans_but_not_owned_children() {
    let reaper = Reaper::start(CancellationToken::new()).unwrap();
    // An owned child that exits at once: its status must stay for its owner
    // however often the reaper sweeps.
    let mut owned = spawn(&mut sh("exit 7")).unwrap();
    // An orphan: a grandchild in a new session, whose parent exits at once,
    // is re-parented to us (the subreaper) and exits soon after.
    let mut parent = spawn(&mut sh("setsid sh -c 'sleep 0.2' &")).unwrap();
    within("parent exit", parent.wait()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..5 {
        reaper.sweep();
    }
    assert_eq!(
        within("owned exit", owned.wait()).await.unwrap(),
        Exit::Code(7)
    );
    // Whatever orphans there were are reaped within a few sweeps.
    let mut zombies = zombie_children();
    for _ in 0..300 {
        if zombies.is_empty() {
            break;
        }
        reaper.sweep();
        tokio::time::sleep(Duration::from_millis(10)).await;
        zombies = zombie_children();
    }
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
}

fn zombie_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if rest.len() > 1 && rest[0] == "Z" && rest[1].parse::<i32>().ok() == Some(me) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn signal_names() {
    assert_eq!(signal_number("SIGTERM"), Some(15));
    assert_eq!(signal_number("term"), Some(15));
    assert_eq!(signal_number("INT"), Some(2));
    assert_eq!(signal_number("9"), Some(9));
    assert_eq!(signal_number("SIGNOPE"), None);
    assert_eq!(signal_number("99"), None);
    assert_eq!(tether_process::signal_name(10), Some("SIGUSR1"));
}
