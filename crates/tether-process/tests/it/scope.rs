//! Scopes: everything a service started, found and stopped, with a cgroup
//! where this machine lets tether make one and by walking the process tree
//! where it does not.

use std::process::{Command, Stdio};
use std::time::Duration;

use tether_process::cgroup::Cgroup;
use tether_process::{Reaper, Scope, Signal, Stdin, processes_with, signal_member};
use tether_test::procs::{alive_with, marker, until_alive, until_gone};
use tether_test::within;
use tokio_util::sync::CancellationToken;

fn sh(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// A scope that walks the process tree, and one with a cgroup when this
/// machine allows it (as root, or in a delegated subtree). Orphans come to
/// this process (a subreaper), as they come to `tether up`.
fn scopes(m: &str) -> (Reaper, Vec<(&'static str, Scope)>) {
    let reaper = Reaper::start(CancellationToken::new()).unwrap();
    let mut scopes = vec![("walk", Scope::new("TETHER_TEST_SCOPE", m, None))];
    match Cgroup::create_for_stack(&format!("tether-test.{}.{m}", std::process::id())) {
        Ok(cgroup) => scopes.push(("cgroup", Scope::new("TETHER_TEST_SCOPE", m, Some(cgroup)))),
        // Not root and not delegated: only the walk is tested here.
        Err(e) => tracing::debug!("no cgroup here ({e})"),
    }
    (reaper, scopes)
}

#[tokio::test]
async fn setsid_children_of_a_main_process_that_exited_are_stopped() {
    let m = marker();
    let (_reaper, scopes) = scopes(&m);
    for (mode, scope) in scopes {
        let script = format!("for i in 1 2 3 4 5 6 7 8 9 10; do setsid sleep {m} & done; exit 0");
        let mut leader = scope.spawn(&mut sh(&script), Stdin::Null).unwrap();
        assert!(within("leader", leader.wait()).await.unwrap().success());
        until_alive(&m, 10).await;
        assert!(!scope.is_empty(), "{mode}: ten setsid sleeps still run");
        // Every one is found; under load, a sleep that was just reparented
        // to the subreaper can be missed by one walk, so look until all
        // ten are (bounded).
        within(&format!("{mode}: ten members"), async {
            while scope.members().len() != 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let stop = within(
            "stop",
            scope.stop(Signal::TERM, Duration::from_secs(5), Duration::from_secs(5)),
        )
        .await;
        assert_eq!(
            (stop.signalled, stop.killed, stop.left),
            (10, 0, 0),
            "{mode}"
        );
        assert!(alive_with(&m).is_empty(), "{mode}: {:?}", alive_with(&m));
        assert!(scope.is_empty(), "{mode}");
    }
}

#[tokio::test]
async fn what_a_crashed_main_process_left_in_its_group_is_stopped() {
    let m = marker();
    let (_reaper, scopes) = scopes(&m);
    for (mode, scope) in scopes {
        let script = format!("sleep {m} & sleep {m} & exit 1");
        let mut leader = scope.spawn(&mut sh(&script), Stdin::Null).unwrap();
        within("leader", leader.wait()).await.unwrap();
        until_alive(&m, 2).await;
        assert!(!scope.is_empty(), "{mode}");
        let stop = within(
            "stop",
            scope.stop(Signal::TERM, Duration::from_secs(5), Duration::from_secs(5)),
        )
        .await;
        assert_eq!(stop.left, 0, "{mode}: {stop:?}");
        assert!(alive_with(&m).is_empty(), "{mode}");
    }
}

#[tokio::test]
async fn processes_that_ignore_the_stop_signal_are_killed_after_the_grace() {
    let m = marker();
    let (_reaper, scopes) = scopes(&m);
    for (mode, scope) in scopes {
        let script = format!("setsid sh -c 'trap \"\" TERM; exec sleep {m}' & exit 0");
        let mut leader = scope.spawn(&mut sh(&script), Stdin::Null).unwrap();
        within("leader", leader.wait()).await.unwrap();
        // The shell's own command line holds the marker too: wait for the
        // sleep it becomes once the trap is set.
        within("the trap to be set", async {
            while !alive_with(&m).iter().any(|c| c.starts_with("sleep ")) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        let stop = within(
            "stop",
            scope.stop(
                Signal::TERM,
                Duration::from_millis(200),
                Duration::from_secs(5),
            ),
        )
        .await;
        assert_eq!((stop.killed, stop.left), (1, 0), "{mode}: {stop:?}");
        assert!(alive_with(&m).is_empty(), "{mode}");
    }
}

#[tokio::test]
async fn dropping_a_scope_kills_what_still_runs_in_it() {
    let m = marker();
    let (_reaper, scopes) = scopes(&m);
    for (mode, scope) in scopes {
        let mut leader = scope
            .spawn(&mut sh(&format!("setsid sleep {m} & exit 0")), Stdin::Null)
            .unwrap();
        within("leader", leader.wait()).await.unwrap();
        until_alive(&m, 1).await;
        let path = scope.cgroup().map(|c| c.path().to_path_buf());
        drop(scope);
        assert!(until_gone(&m).await.is_empty(), "{mode}");
        if let Some(path) = path {
            // The cgroup goes once its processes are torn down; a second
            // look (as the next `tether up` takes) removes it for sure.
            let _ = Cgroup::open(&path).and_then(|c| c.remove());
            assert!(!path.exists(), "{mode}: {} is left", path.display());
        }
    }
}

#[tokio::test]
async fn a_cgroup_holds_even_a_double_fork_that_cleared_its_environment() {
    let m = marker();
    let (_reaper, scopes) = scopes(&m);
    let Some((_, scope)) = scopes.into_iter().find(|(mode, _)| *mode == "cgroup") else {
        // Without a cgroup this escape is the documented gap of the walk.
        return;
    };
    let script = format!("env -i /usr/bin/setsid sh -c 'sleep {m} &' ; exit 0");
    let mut leader = scope.spawn(&mut sh(&script), Stdin::Null).unwrap();
    within("leader", leader.wait()).await.unwrap();
    until_alive(&m, 1).await;
    assert_eq!(scope.members().len(), 1);
    let stop = scope
        .stop(Signal::TERM, Duration::from_secs(5), Duration::from_secs(5))
        .await;
    assert_eq!(stop.left, 0);
    assert!(alive_with(&m).is_empty());
}

#[test]
fn children_die_with_the_thread_that_spawned_them() {
    // A supervisor killed with SIGKILL cannot stop anything: its children
    // must go by themselves. A thread that ends stands in for the killed
    // process (the parent-death signal follows the spawning thread).
    let m = marker();
    let script = format!("exec sleep {m}");
    let inside = m.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let child = tether_process::spawn(&mut sh(&script)).unwrap();
            until_alive(&inside, 1).await;
            // Not dropped (which would kill it): forgotten, as a killed
            // tether forgets.
            std::mem::forget(child);
        });
    })
    .join()
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let left = runtime.block_on(until_gone(&m));
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn processes_with_a_marker_are_found_outside_the_tree() {
    // What a killed tether left (re-parented to init, not to us) is found
    // by its environment marker, and ended through a checked pidfd.
    let m = marker();
    let entry = format!("TETHER_TEST_LEFT={m}");
    let mut cmd = sh(&format!("setsid sleep {m} & exit 0"));
    cmd.env("TETHER_TEST_LEFT", &m);
    let mut parent = tether_process::spawn(&mut cmd).unwrap();
    within("parent", parent.wait()).await.unwrap();
    until_alive(&m, 1).await;
    let found = processes_with(&entry);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(signal_member(found[0], Signal::KILL));
    assert!(until_gone(&m).await.is_empty());
    assert!(
        !signal_member(found[0], Signal::KILL),
        "a gone process is not signalled"
    );
}

#[tokio::test]
async fn a_child_made_in_its_cgroup_gets_its_arguments_environment_directory_and_pipes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = marker();
    let (_reaper, scopes) = scopes(&m);
    for (mode, scope) in scopes {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "read line; echo \"$line $1 $TETHER_TEST_VAR $(pwd)\"; echo oops >&2",
            "sh",
            "arg1",
        ])
        .env("TETHER_TEST_VAR", "value")
        .current_dir(dir.path());
        let mut child = scope.spawn(&mut cmd, Stdin::Piped).unwrap();
        if let Some(cgroup) = scope.cgroup() {
            let own = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
            let name = cgroup
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(
                own.contains(&name),
                "{mode}: the child is in its cgroup from birth: {own}"
            );
        }
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello\n").await.unwrap();
        drop(stdin);
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        assert!(
            within("exit", child.wait()).await.unwrap().success(),
            "{mode}"
        );
        let expected = format!(
            "hello arg1 value {}\n",
            dir.path().canonicalize().unwrap().display()
        );
        assert_eq!(out, expected, "{mode}");
        assert_eq!(err, "oops\n", "{mode}");
    }
}

#[tokio::test]
async fn spawn_errors_are_the_same_in_and_out_of_a_cgroup() {
    let m = marker();
    let (_reaper, scopes) = scopes(&m);
    let dir = tempfile::tempdir().unwrap();
    let not_executable = dir.path().join("script");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    for (mode, scope) in scopes {
        let missing = scope.spawn(&mut Command::new("/nonexistent/tether-test"), Stdin::Null);
        assert_eq!(
            missing.unwrap_err().kind(),
            std::io::ErrorKind::NotFound,
            "{mode}"
        );
        let searched = scope.spawn(&mut Command::new("tether-no-such-program"), Stdin::Null);
        assert_eq!(
            searched.unwrap_err().kind(),
            std::io::ErrorKind::NotFound,
            "{mode}"
        );
        let denied = scope.spawn(&mut Command::new(&not_executable), Stdin::Null);
        assert_eq!(
            denied.unwrap_err().kind(),
            std::io::ErrorKind::PermissionDenied,
            "{mode}"
        );
        let mut bad_dir = Command::new("true");
        bad_dir.current_dir("/nonexistent/dir");
        assert!(scope.spawn(&mut bad_dir, Stdin::Null).is_err(), "{mode}");
    }
}

/// A cgroup that was killed with `cgroup.kill` takes the next child as any
/// other: on Linux 6.18, a child created straight into a cgroup killed
/// before (`clone3(CLONE_INTO_CGROUP)`) was SIGKILLed at birth, every time,
/// so a service killed once was killed at every restart after.
#[tokio::test]
async fn a_scope_killed_once_takes_its_next_child_as_any_other() {
    use tokio::io::AsyncBufReadExt;
    let m = marker();
    let reaper = Reaper::start(CancellationToken::new()).unwrap();
    for clone3 in [false, true] {
        let name = format!("tether-test.{}.{m}.{clone3}", std::process::id());
        let Ok(cgroup) = Cgroup::create_for_stack(&name) else {
            return;
        };
        let scope = Scope::new("TETHER_TEST_SCOPE", &m, Some(cgroup));
        scope.set_clone3(clone3);
        for round in 0..3 {
            let mut child = scope
                .spawn(
                    &mut sh("trap '' TERM; echo up; exec sleep 3600"),
                    Stdin::Null,
                )
                .unwrap();
            let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
            let first = within("the child's first line", lines.next_line())
                .await
                .unwrap();
            assert_eq!(
                first.as_deref(),
                Some("up"),
                "clone3 {clone3}, round {round}: the child was killed at birth"
            );
            // It ignores SIGTERM: with no grace, it is killed.
            let stop = scope
                .stop(Signal::TERM, Duration::ZERO, Duration::from_secs(5))
                .await;
            assert_eq!(stop.left, 0);
            within("the child to end", child.wait()).await.unwrap();
        }
        scope.cgroup().unwrap().remove().unwrap();
    }
    drop(reaper);
}
