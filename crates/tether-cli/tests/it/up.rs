//! `tether up` and the commands that talk to it, as a user runs them.

use std::path::{Path, PathBuf};

use tether_test::peers::free_port;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::run;

use crate::stack::{Stack, python};

fn http_service() -> String {
    tether_test::peers::peer_script("http_service.py")
        .display()
        .to_string()
}

fn two_services(port: u16, marker: &str) -> String {
    format!(
        r#"
name = "t{port}"
[defaults]
stop_grace = "5s"
[services.db]
command = ["{py}", "{svc}", "--port", "{port}", "--delay", "0.3"]
ready = "http://127.0.0.1:{port}/health"
[services.api]
command = ["sh", "-c", "echo api serving; sleep {marker} & sleep {marker} & wait"]
depends_on = ["db"]
ready = "tcp://127.0.0.1:{port}"
"#,
        py = python(),
        svc = http_service(),
    )
}

fn alive_with(marker: &str) -> usize {
    tether_test::procs::alive_with(marker).len()
}

#[tokio::test]
async fn up_ps_logs_restart_and_down() {
    let port = free_port();
    let marker = format!("{}.{}", 4000 + port % 1000, port);
    let mut stack = Stack::new(&two_services(port, &marker));
    stack.up(&[]);
    stack.until("db is ready").await;
    let api_start = stack.until("api is starting").await;
    assert!(
        api_start.starts_with("tether | api is starting (pid "),
        "{api_start}"
    );
    stack.eventually("| api serving").await;
    stack.eventually("all 2 services ready").await;

    let ps = stack.ps().await;
    assert_eq!(ps["stack"], format!("t{port}"));
    let states: Vec<&str> = ps["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready", "ready"]);
    let table = stack.tether(&["ps"]).await;
    assert!(
        table.stdout.starts_with("SERVICE  STATE  PID"),
        "{}",
        table.stdout
    );

    let logs = stack.tether(&["logs", "-n", "5", "api"]).await;
    assert_eq!(logs.code(), 0, "{logs:?}");
    assert!(
        logs.stdout.contains("api | api serving"),
        "logs are not padded: {}",
        logs.stdout
    );

    let restart = stack.tether(&["restart", "api"]).await;
    assert_eq!(
        (restart.code(), restart.stdout.as_str()),
        (0, "tether: api restarting\n")
    );
    stack.until("api is starting").await;
    let unknown = stack.tether(&["stop", "nope"]).await;
    assert_eq!(unknown.code(), 2);
    assert_eq!(unknown.stderr, "tether: no service named 'nope'\n");

    let down = stack.tether(&["down"]).await;
    assert_eq!(
        (down.code(), down.stdout.as_str()),
        (0, format!("tether: stack 't{port}' is down\n").as_str())
    );
    let (code, rest) = stack.exited().await;
    assert_eq!(code, 0);
    let stopped: Vec<&String> = rest
        .iter()
        .filter(|l| l.ends_with("exited: stopped"))
        .collect();
    assert_eq!(stopped.len(), 2, "{rest:?}");
    assert!(
        stopped[0].contains("api") && stopped[1].contains("db"),
        "reverse dependency order: {stopped:?}"
    );
    assert_eq!(alive_with(&marker), 0, "grandchildren outlived down");
    let after = stack.tether(&["ps"]).await;
    assert_eq!(after.code(), 7, "{after:?}");
    assert!(after.stderr.contains("is not running"), "{}", after.stderr);
}

#[tokio::test]
async fn sigterm_stops_the_stack_in_order_and_a_second_signal_kills() {
    let port = free_port();
    let marker = format!("{}.{}", 5000 + port % 1000, port);
    let mut stack = Stack::new(&two_services(port, &marker));
    stack.up(&[]);
    stack.until("all 2 services ready").await;
    rustix::process::kill_process(stack.pid(), rustix::process::Signal::TERM).unwrap();
    let (code, rest) = stack.exited().await;
    assert_eq!(code, 0);
    assert!(
        rest.iter().any(|l| l.contains("stopping the stack")),
        "{rest:?}"
    );
    assert!(
        rest.last().is_some_and(|l| l.ends_with("stack is down")),
        "{rest:?}"
    );
    assert_eq!(alive_with(&marker), 0);

    // A service that ignores SIGTERM, with a long grace: the second Ctrl-C
    // does not wait for it.
    let stubborn = format!(
        "name = \"s{port}\"\n[services.stubborn]\ncommand = [\"sh\", \"-c\", \"trap '' TERM; echo armed; while :; do sleep 0.1; done\"]\nstop_grace = \"60s\"\n"
    );
    let mut stack = Stack::new(&stubborn);
    stack.up(&[]);
    stack.until("| armed").await;
    rustix::process::kill_process(stack.pid(), rustix::process::Signal::INT).unwrap();
    stack.until("stopping the stack").await;
    rustix::process::kill_process(stack.pid(), rustix::process::Signal::INT).unwrap();
    let (code, rest) = stack.exited().await;
    assert_eq!(code, 0);
    assert!(
        rest.iter().any(|l| l.contains("killing every process")),
        "{rest:?}"
    );
    // Regression: the reaper stopped with the kill, the killed group's
    // orphan stayed a zombie, and the stop waited for it and warned falsely.
    let mut stderr = String::new();
    let mut err = stack.child.as_mut().unwrap().stderr.take().unwrap();
    tokio::io::AsyncReadExt::read_to_string(&mut err, &mut stderr)
        .await
        .unwrap();
    assert!(!stderr.contains("did not stop within"), "{stderr}");
    assert!(!stderr.contains("could not be killed"), "{stderr}");
}

#[tokio::test]
async fn a_broken_file_is_one_clear_error_and_starts_nothing() {
    let stack = Stack::new("[services.web]\ncomand = [\"true\"]\n");
    let r = stack.tether(&["up"]).await;
    assert_eq!(r.code(), 2, "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("tether: ")
            && r.stderr.contains(
                "tether.toml:2:1: services.web.comand: unknown key; did you mean 'command'?"
            ),
        "{}",
        r.stderr
    );
    let missing = Stack::new("[services.web]\ncommand = [\"no-such-program-tether\"]\n");
    let r = missing.tether(&["up"]).await;
    assert_eq!(r.code(), 2);
    assert!(r.stderr.contains("services.web.command"), "{}", r.stderr);
}

#[tokio::test]
async fn the_same_stack_cannot_run_twice() {
    let port = free_port();
    let mut stack = Stack::new(&format!(
        "name = \"dup{port}\"\n[services.s]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    stack.up(&[]);
    stack.until("all 1 services ready").await;
    let second = stack.tether(&["up", "--no-status"]).await;
    assert_eq!(second.code(), 1, "{second:?}");
    assert!(
        second.stderr.contains("this stack is already running"),
        "{}",
        second.stderr
    );
    stack.tether(&["down"]).await;
    assert_eq!(stack.exited().await.0, 0);
}

#[tokio::test]
async fn the_status_server_and_the_control_socket_are_private_or_local() {
    let port = free_port();
    let status = free_port();
    let mut stack = Stack::new(&format!(
        "name = \"st{port}\"\n[status]\nlisten = \"127.0.0.1:{status}\"\n[services.s]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let mut child = stack.command(&["up"]).spawn().unwrap();
    stack.out = Some(BufReader::new(child.stdout.take().unwrap()).lines());
    stack.child = Some(child);
    let first = stack.until("status on").await;
    assert!(
        first.contains(&format!("status on http://127.0.0.1:{status}/")),
        "{first}"
    );
    stack.until("all 1 services ready").await;
    let health = run(&[
        "wait",
        "--json",
        "--timeout",
        "10s",
        &format!("http://127.0.0.1:{status}/health#body=%22ok%22"),
    ])
    .await;
    assert_eq!(health.code(), 0, "{health:?}");
    let socket = find_socket(&stack.dir.path().join("run"));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    stack.tether(&["down"]).await;
    assert_eq!(stack.exited().await.0, 0);
    assert!(
        !socket.exists(),
        "the control socket is removed on the way out"
    );
}

fn find_socket(run: &Path) -> PathBuf {
    for stack in std::fs::read_dir(run.join("tether")).unwrap().flatten() {
        let socket = stack.path().join("control.sock");
        if socket.exists() {
            return socket;
        }
    }
    panic!("no control socket under {}", run.display());
}
