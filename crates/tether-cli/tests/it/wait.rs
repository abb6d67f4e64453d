use std::os::unix::process::ExitStatusExt;

use tether_test::http::{Reply, ScriptServer};
use tether_test::tcp::{AcceptLoop, ClosedPort};

use crate::support::*;

// --- bad input: one line, exit 2, nothing started ---

#[tokio::test]
async fn malformed_targets_are_usage_errors() {
    let cases = [
        (
            "tcp://db:99999",
            "tether: target 'tcp://db:99999': port 99999 is out of range (1-65535)",
        ),
        (
            "ftp://h:21",
            "tether: target 'ftp://h:21': unknown target kind 'ftp'",
        ),
        (
            "http://h/#status=abc",
            "tether: target 'http://h/#status=abc': status 'abc' is not a status",
        ),
        (
            "exec:no-such-program-tether",
            "command 'no-such-program-tether' not found in PATH",
        ),
        ("justaword", "not a target"),
    ];
    for (target, words) in cases {
        let r = run(&["wait", target]).await;
        assert_eq!(r.code(), 2, "{target}: {r:?}");
        assert_eq!(
            r.stderr.lines().count(),
            1,
            "one line for {target}: {}",
            r.stderr
        );
        assert!(r.stderr.contains(words), "{target}: {}", r.stderr);
        assert!(r.stdout.is_empty());
    }
}

#[tokio::test]
async fn bad_flags_are_usage_errors() {
    for args in [
        &["wait", "--timeout", "soon", "127.0.0.1:1"][..],
        &["wait", "--timeout", "0", "127.0.0.1:1"],
        &["wait", "--frobnicate", "127.0.0.1:1"],
        &["wait"],
    ] {
        let r = run(args).await;
        assert_eq!(r.code(), 2, "{args:?}: {r:?}");
    }
    let r = run(&["wait", "--timeout", "soon", "127.0.0.1:1"]).await;
    assert!(
        r.stderr
            .contains("invalid value 'soon' for '--timeout <DURATION>'")
            && r.stderr.contains("'soon' is not a duration")
            && r.stderr.contains("try '--help'"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn nothing_is_probed_when_one_target_is_bad() {
    let server = ScriptServer::start(vec![Reply::status(200, "")]).await;
    let r = run(&["wait", &server.url("/"), "exec:no-such-program-tether"]).await;
    assert_eq!(r.code(), 2);
    assert_eq!(server.requests(), 0, "the good target was not probed");
}

#[tokio::test]
async fn a_missing_command_fails_before_waiting() {
    let port = ClosedPort::new();
    let r = run(&[
        "wait",
        "--timeout",
        "30s",
        &format!("tcp://{}", port.addr()),
        "--",
        "no-such-program-tether",
    ])
    .await;
    assert_eq!(r.code(), 127);
    assert!(
        r.stderr
            .contains("command 'no-such-program-tether' not found in PATH"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("waiting"),
        "it did not wait: {}",
        r.stderr
    );
}

// --- success: exec CMD, whose status and signals are its own ---

#[tokio::test]
async fn execs_the_command_once_ready() {
    let listener = ClosedPort::new().listen(128);
    let addr = listener.local_addr().unwrap();
    let _accept = AcceptLoop::start(listener);
    let r = run(&[
        "wait",
        "-q",
        &format!("tcp://{addr}"),
        "--",
        "sh",
        "-c",
        "echo from-cmd; exit 7",
    ])
    .await;
    assert_eq!(r.code(), 7, "CMD's own exit status: {r:?}");
    assert_eq!(r.stdout, "from-cmd\n");
    let r = run(&[
        "wait",
        "-q",
        &format!("tcp://{addr}"),
        "--",
        "sh",
        "-c",
        "kill -TERM $$",
    ])
    .await;
    assert_eq!(r.status.signal(), Some(15), "CMD's own signal: {r:?}");
}

#[tokio::test]
async fn ready_once_a_late_listener_accepts_with_events() {
    let port = ClosedPort::new();
    let addr = port.addr();
    let mut live = Live::start(&[
        "wait",
        "--json",
        "--timeout",
        "30s",
        &format!("tcp://{addr}"),
    ]);
    let start = live.until("start").await;
    assert_eq!(start["targets"][0], format!("tcp://{addr}"));
    let first = live.until("attempt").await;
    assert_eq!(first["ok"], false);
    assert_eq!(first["cause"], "connect.refused");
    assert_eq!(first["phase"], "connect");
    assert_eq!(first["symptom"], "absent");
    assert_eq!(first["verdict"], "transient");
    assert_eq!(first["attempt"], 1);
    assert!(first["next_in_ms"].as_f64().unwrap() > 0.0);
    let _accept = AcceptLoop::start(port.listen(128));
    let ready = live.until("ready").await;
    assert!(
        ready["detail"]
            .as_str()
            .unwrap()
            .contains("accepted the connection")
    );
    let (status, events, _) = live.finish().await;
    assert_eq!(status.code(), Some(0));
    let done = events.last().unwrap();
    assert_eq!(
        (
            done["event"].as_str(),
            done["ok"].as_bool(),
            done["exit_code"].as_i64()
        ),
        (Some("done"), Some(true), Some(0))
    );
}

#[tokio::test]
async fn targets_of_every_kind_in_parallel() {
    let listener = ClosedPort::new().listen(128);
    let tcp = listener.local_addr().unwrap();
    let _accept = AcceptLoop::start(listener);
    let server = ScriptServer::start(vec![
        Reply::status(503, "warming up"),
        Reply::status(200, "ok"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    std::fs::write(&flag, "").unwrap();
    let r = run(&[
        "wait",
        "--json",
        &format!("tcp://{tcp}"),
        &format!("{}#body=ok", server.url("/health")),
        &format!("file://{}", flag.display()),
        "exec:true",
    ])
    .await;
    assert_eq!(r.code(), 0, "{r:?}");
    let ready: Vec<_> = r
        .events()
        .into_iter()
        .filter(|e| e["event"] == "ready")
        .collect();
    assert_eq!(ready.len(), 4, "{}", r.stdout);
}

// --- failure: classified exit codes and diagnosis; CMD never runs ---

#[tokio::test]
async fn timeout_while_refused_is_124_with_a_diagnosis() {
    let port = ClosedPort::new();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let target = format!("tcp://{}", port.addr());
    let r = run(&[
        "wait",
        "--timeout",
        "300ms",
        &target,
        "--",
        "touch",
        marker.to_str().unwrap(),
    ])
    .await;
    assert_eq!(r.code(), 124, "{r:?}");
    assert!(!marker.exists(), "CMD must not run after a failed wait");
    assert!(
        r.stderr.contains(&format!(
            "tether: timed out after 300ms: {target} not ready"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "✗ {target}: connect to {}: connection refused",
            port.addr()
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("connect.refused ["), "{}", r.stderr);
    assert!(r.stderr.contains(" attempts, "), "{}", r.stderr);
    assert!(r.stderr.contains("nothing is listening"), "{}", r.stderr);
}

#[tokio::test]
async fn run_anyway_runs_the_command_after_saying_why() {
    let port = ClosedPort::new();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let r = run(&[
        "wait",
        "--timeout",
        "200ms",
        "--run-anyway",
        &format!("tcp://{}", port.addr()),
        "--",
        "touch",
        marker.to_str().unwrap(),
    ])
    .await;
    assert!(marker.exists());
    assert_eq!(r.code(), 0, "the command's own status");
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);
}

#[tokio::test]
async fn timeout_while_unresponsive_is_4() {
    let listener = ClosedPort::new().listen(16);
    let addr = listener.local_addr().unwrap();
    let r = run(&["wait", "--timeout", "1s", &format!("tcp://{addr}")]).await;
    assert_eq!(r.code(), 4, "{r:?}");
    assert!(
        r.stderr.contains("listening but not accepting connections"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("connect.timeout"), "{}", r.stderr);
    drop(listener);
    let hang = ScriptServer::start(vec![Reply::Hang]).await;
    let r = run(&["wait", "--timeout", "1s", &hang.url("/")]).await;
    assert_eq!(r.code(), 4, "{r:?}");
    assert!(r.stderr.contains("response.timeout"), "{}", r.stderr);
    assert!(r.stderr.contains("does not answer"), "{}", r.stderr);
}

#[tokio::test]
async fn timeout_while_unhealthy_is_5() {
    let server = ScriptServer::start(vec![Reply::status(503, "db down")]).await;
    let r = run(&["wait", "--timeout", "300ms", &server.url("/health")]).await;
    assert_eq!(r.code(), 5, "{r:?}");
    assert!(
        r.stderr
            .contains("HTTP 503 Service Unavailable (wanted 2xx); body: \"db down\""),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("http.503 ["), "{}", r.stderr);
}

#[tokio::test]
async fn permanent_failure_ends_at_once_with_3() {
    let server = ScriptServer::start(vec![Reply::status(404, "")]).await;
    let slow = ClosedPort::new();
    let r = run(&[
        "wait",
        "--json",
        "--timeout",
        "60s",
        &server.url("/helth"),
        &format!("tcp://{}", slow.addr()),
    ])
    .await;
    assert_eq!(r.code(), 3, "{r:?}");
    let events = r.events();
    let failed: Vec<_> = events.iter().filter(|e| e["event"] == "failed").collect();
    assert!(
        failed
            .iter()
            .any(|e| e["reason"] == "permanent" && e["cause"] == "http.404"),
        "{}",
        r.stdout
    );
    assert!(
        failed.iter().any(|e| e["reason"] == "cancelled"),
        "{}",
        r.stdout
    );
    let done = events.last().unwrap();
    assert!(
        done["elapsed_ms"].as_f64().unwrap() < 30_000.0,
        "ended at once, not at the deadline"
    );
    assert_eq!(done["exit_code"], 3);
}

#[tokio::test]
async fn quiet_prints_nothing_but_keeps_the_exit_code() {
    let port = ClosedPort::new();
    let r = run(&[
        "wait",
        "-q",
        "--timeout",
        "200ms",
        &format!("tcp://{}", port.addr()),
    ])
    .await;
    assert_eq!(r.code(), 124);
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("", ""));
}

#[tokio::test]
async fn secrets_in_targets_are_not_printed() {
    let server = ScriptServer::start(vec![Reply::status(401, "")]).await;
    let target = format!("{}#header=Authorization:Bearer%20s3cr3t", server.url("/"));
    for flag in ["--json", "--timeout=5s"] {
        let r = run(&["wait", flag, &target]).await;
        assert_eq!(r.code(), 3, "{r:?}");
        assert!(
            !r.stdout.contains("s3cr3t") && !r.stderr.contains("s3cr3t"),
            "{r:?}"
        );
        assert!(
            r.stdout.contains("Authorization:***") || r.stderr.contains("Authorization:***"),
            "{r:?}"
        );
    }
    assert!(
        server.seen()[0]
            .headers
            .contains(&("authorization".into(), "Bearer s3cr3t".into()))
    );
}

// --- invert ---

#[tokio::test]
async fn invert_waits_until_the_port_closes() {
    let listener = ClosedPort::new().listen(128);
    let addr = listener.local_addr().unwrap();
    let accept = AcceptLoop::start(listener);
    let mut live = Live::start(&[
        "wait",
        "--json",
        "--invert",
        "--timeout",
        "30s",
        &format!("tcp://{addr}"),
    ]);
    let first = live.until("attempt").await;
    assert_eq!(first["ok"], true, "still up");
    drop(accept);
    let down = live.until("ready").await;
    assert!(
        down["detail"]
            .as_str()
            .unwrap()
            .starts_with("not ready: connect to"),
        "{down}"
    );
    let (status, _, _) = live.finish().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn invert_times_out_with_6_while_still_up() {
    let listener = ClosedPort::new().listen(128);
    let addr = listener.local_addr().unwrap();
    let _accept = AcceptLoop::start(listener);
    let r = run(&[
        "wait",
        "--invert",
        "--timeout",
        "300ms",
        &format!("tcp://{addr}"),
    ])
    .await;
    assert_eq!(r.code(), 6, "{r:?}");
    assert!(r.stderr.contains("still ready"), "{}", r.stderr);
}

// --- interruption ---

#[tokio::test]
async fn sigint_stops_the_wait_with_130_and_no_command() {
    let port = ClosedPort::new();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let mut live = Live::start(&[
        "wait",
        "--json",
        "--timeout",
        "60s",
        &format!("tcp://{}", port.addr()),
        "--",
        "touch",
        marker.to_str().unwrap(),
    ]);
    live.until("attempt").await;
    let pid = rustix::process::Pid::from_raw(live.child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let (status, events, _) = live.finish().await;
    assert_eq!(status.code(), Some(130));
    assert!(!marker.exists());
    let done = events.last().unwrap();
    assert_eq!(
        (done["interrupted"].as_bool(), done["exit_code"].as_i64()),
        (Some(true), Some(130))
    );
}
