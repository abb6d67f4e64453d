//! Socket activation: listening sockets handed to a child as descriptors 3,
//! 4, ... with `LISTEN_FDS`, `LISTEN_PID` (the child's own pid) and
//! `LISTEN_FDNAMES`, whether the child is made by `clone3` (with or without
//! a cgroup) or by `fork`.

use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;

use tether_process::cgroup::Cgroup;
use tether_process::{ListenFd, Reaper, Scope, Stdin};
use tether_test::within;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// Scopes for each way a child with sockets is made: `clone3` and `fork`,
/// without a cgroup and, where this machine allows one, with it.
fn scopes(m: &str) -> (Reaper, Vec<(&'static str, Scope)>) {
    let reaper = Reaper::start(CancellationToken::new()).unwrap();
    let mut scopes = Vec::new();
    for (mode, clone3) in [("walk+clone3", true), ("walk+fork", false)] {
        let scope = Scope::new("TETHER_TEST_SCOPE", m, None);
        scope.set_clone3(clone3);
        scopes.push((mode, scope));
    }
    for (mode, clone3) in [("cgroup+clone3", true), ("cgroup+fork", false)] {
        let name = format!("tether-test.{}.{m}.{clone3}", std::process::id());
        if let Ok(cgroup) = Cgroup::create_for_stack(&name) {
            let scope = Scope::new("TETHER_TEST_SCOPE", m, Some(cgroup));
            scope.set_clone3(clone3);
            scopes.push((mode, scope));
        }
    }
    (reaper, scopes)
}

/// What `/proc/self/fd/N` of this process points at (`socket:[123]`).
fn target(fd: &impl AsRawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .display()
        .to_string()
}

/// Runs a shell with `listen` and returns its words: the LISTEN_*
/// variables and its own pid on the first line, then `FD TARGET` for each of
/// its descriptors.
async fn run(scope: &Scope, listen: &[ListenFd<'_>]) -> (u32, String) {
    let script = r#"echo "$LISTEN_FDS $LISTEN_PID $$ $LISTEN_FDNAMES"
for fd in /proc/$$/fd/*; do echo "${fd##*/} $(readlink "$fd")"; done"#;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    let mut child = scope
        .spawn_listening(&mut cmd, Stdin::Null, listen)
        .unwrap();
    let pid = child.id();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(within("exit", child.wait()).await.unwrap().success());
    (pid, out)
}

#[tokio::test]
async fn sockets_are_fds_3_and_on_with_the_childs_own_pid_in_listen_pid() {
    let m = tether_test::procs::marker();
    let (_reaper, scopes) = scopes(&m);
    let dir = tempfile::tempdir().unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unix = std::os::unix::net::UnixListener::bind(dir.path().join("s.sock")).unwrap();
    let listen = [
        ListenFd {
            fd: tcp.as_fd(),
            name: "web",
        },
        ListenFd {
            fd: unix.as_fd(),
            name: "admin",
        },
    ];
    assert!(scopes.len() >= 2);
    for (mode, scope) in &scopes {
        let (pid, out) = run(scope, &listen).await;
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some(format!("2 {pid} {pid} web:admin").as_str()),
            "{mode}: LISTEN_PID is the child's own pid:\n{out}"
        );
        let fds: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(' ')).collect();
        let at = |n: &str| fds.iter().find(|(fd, _)| *fd == n).map(|(_, t)| *t);
        assert_eq!(at("3"), Some(target(&tcp).as_str()), "{mode}:\n{out}");
        assert_eq!(at("4"), Some(target(&unix).as_str()), "{mode}:\n{out}");
        // The child's working copies went at exec: each socket once.
        for socket in [target(&tcp), target(&unix)] {
            let held = fds.iter().filter(|(_, t)| *t == socket).count();
            assert_eq!(held, 1, "{mode}: {socket} is open once:\n{out}");
        }
    }
}

#[tokio::test]
async fn sockets_land_in_order_whatever_numbers_they_had() {
    // Enough sockets that their own numbers fall among 3, 4, ..., where the
    // others are to go: each must be moved out of the way before placing.
    let m = tether_test::procs::marker();
    let (_reaper, scopes) = scopes(&m);
    let listeners: Vec<std::net::TcpListener> = (0..12)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let names: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    // Backwards, so the first to place is the one opened last.
    let listen: Vec<ListenFd<'_>> = listeners
        .iter()
        .zip(&names)
        .rev()
        .map(|(l, name)| ListenFd {
            fd: l.as_fd(),
            name,
        })
        .collect();
    let lowest = listeners.iter().map(|l| l.as_raw_fd()).min().unwrap();
    assert!(lowest < 3 + 12, "the numbers overlap the places ({lowest})");
    for (mode, scope) in &scopes {
        let (pid, out) = run(scope, &listen).await;
        let first = out.lines().next().unwrap_or_default();
        let wanted_names: Vec<&str> = listen.iter().map(|l| l.name).collect();
        assert_eq!(
            first,
            format!("12 {pid} {pid} {}", wanted_names.join(":")),
            "{mode}"
        );
        for (i, l) in listen.iter().enumerate() {
            let line = format!("{} {}", 3 + i, target(&l.fd));
            assert!(out.lines().any(|o| o == line), "{mode}: {line}:\n{out}");
        }
    }
}

#[tokio::test]
async fn a_child_without_sockets_gets_no_listen_variables_of_its_own() {
    let m = tether_test::procs::marker();
    let (_reaper, scopes) = scopes(&m);
    for (mode, scope) in &scopes {
        let (pid, out) = run(scope, &[]).await;
        let first = out.lines().next().unwrap_or_default();
        assert_eq!(first, format!("  {pid} "), "{mode}:\n{out}");
    }
}

#[tokio::test]
async fn spawn_errors_with_sockets_are_the_programs_own() {
    let m = tether_test::procs::marker();
    let (_reaper, scopes) = scopes(&m);
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = [ListenFd {
        fd: tcp.as_fd(),
        name: "web",
    }];
    for (mode, scope) in &scopes {
        let missing = scope.spawn_listening(
            &mut Command::new("tether-no-such-program"),
            Stdin::Null,
            &listen,
        );
        assert_eq!(
            missing.unwrap_err().kind(),
            std::io::ErrorKind::NotFound,
            "{mode}"
        );
        let mut bad_dir = Command::new("true");
        bad_dir.current_dir("/nonexistent/dir");
        let bad = scope.spawn_listening(&mut bad_dir, Stdin::Null, &listen);
        assert_eq!(
            bad.unwrap_err().kind(),
            std::io::ErrorKind::NotFound,
            "{mode}"
        );
    }
}
