use std::time::{Duration, SystemTime};

use tether_probe::wait::{GaveUp, TargetOutcome};
use tether_process::procfs::{Identity, Stat};
use tether_resilience::{Cause, Verdict};

use crate::support::*;

#[tokio::test]
async fn ready_once_written_late() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ready.flag");
    let (report, _) = wait_then(&[&format!("file://{}", path.display())], LONG, || async {
        std::fs::write(&path, "").unwrap();
    })
    .await;
    assert!(reached(&report, 0).contains("exists"), "{report:?}");
}

#[tokio::test]
async fn missing_is_transient() {
    let f = fails("file:///nonexistent/tether-test/flag", SHORT).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::PathMissing, Verdict::Transient)
    );
    assert_eq!(
        f.detail,
        "file /nonexistent/tether-test/flag: does not exist"
    );
}

#[tokio::test]
async fn heartbeats_go_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hb.json");
    std::fs::write(&path, r#"{"state":"ready","pid":1}"#).unwrap();
    let target = format!("file://{}?max-age=10s", path.display());
    probe(&target, LONG).await.unwrap();
    let old = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let f = fails(&target, LONG).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::HeartbeatStale, Verdict::Transient)
    );
    assert!(
        f.detail
            .contains("stale: last written 1m00s ago, more than max-age 10.0s"),
        "{}",
        f.detail
    );
}

#[tokio::test]
async fn heartbeat_states() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hb.json");
    let target = format!("file://{}", path.display());
    std::fs::write(&path, r#"{"state":"busy"}"#).unwrap();
    assert!(
        probe(&target, LONG)
            .await
            .unwrap()
            .detail()
            .contains("state 'busy'")
    );
    std::fs::write(&path, r#"{"state":"starting","last_error":"db not ready"}"#).unwrap();
    let f = fails(&target, LONG).await;
    assert_eq!(f.cause, Cause::ProbeUnhealthy);
    assert!(
        f.detail.contains("state is 'starting'") && f.detail.ends_with("last error: db not ready"),
        "{}",
        f.detail
    );
    probe(&format!("{target}#state=starting"), LONG)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_directory_is_a_permanent_failure() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("file://{}", dir.path().display());
    let f = fails(&text, LONG).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::ProbeUnhealthy, Verdict::Permanent)
    );
    assert_eq!(
        f.detail,
        format!("file {} is a directory, not a file", dir.path().display())
    );
    // The wait ends at its first attempt instead of at its deadline.
    let (report, _) = wait_then(&[&text], LONG, || async {}).await;
    assert_eq!(report.targets[0].attempts, 1);
    assert!(
        matches!(
            report.targets[0].outcome,
            TargetOutcome::GaveUp {
                reason: GaveUp::Permanent,
                ..
            }
        ),
        "{report:?}"
    );
}

/// A process that ran and was reaped: its pid and start time.
async fn exited_process() -> (u32, u64) {
    let mut command = std::process::Command::new("true");
    command.stdin(std::process::Stdio::null());
    let mut child = tether_process::spawn(&mut command).unwrap();
    let pid = child.id();
    // Readable while it runs and while it is a zombie, until it is reaped.
    let start = Stat::read(pid as i32).unwrap().start_ticks;
    child.wait().await.unwrap();
    (pid, start)
}

/// A heartbeat in the supervisor's format.
fn heartbeat(state: &str, service: (u32, u64), writer: &Identity) -> String {
    serde_json::json!({
        "service": "api", "state": state, "pid": service.0, "pid_start": service.1,
        "since_ms": 0, "updated_ms": 0, "busy": false, "restarts": 0,
        "status": null, "last_error": null,
        "writer": {
            "pid": writer.pid, "start": writer.start_ticks,
            "boot_id": writer.boot_id, "pid_ns": writer.pid_ns,
        },
    })
    .to_string()
}

fn this_process() -> (u32, u64) {
    let me = Identity::current().unwrap();
    (me.pid, me.start_ticks)
}

fn age(path: &std::path::Path, by: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - by)
        .unwrap();
}

#[tokio::test]
async fn a_live_writer_needs_no_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.json");
    let me = Identity::current().unwrap();
    std::fs::write(&path, heartbeat("ready", this_process(), &me)).unwrap();
    age(&path, Duration::from_secs(3600));
    let ready = probe(&format!("file://{}?max-age=1s", path.display()), LONG)
        .await
        .unwrap();
    assert!(
        ready
            .detail()
            .ends_with(&format!("by pid {}, which is running", me.pid)),
        "{ready}"
    );
}

#[tokio::test]
async fn a_heartbeat_left_by_a_writer_that_is_gone_is_never_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.json");
    let (pid, start) = exited_process().await;
    let gone = Identity {
        pid,
        start_ticks: start,
        ..Identity::current().unwrap()
    };
    // Fresh, and claiming "ready": what an earlier run leaves behind.
    std::fs::write(&path, heartbeat("ready", this_process(), &gone)).unwrap();
    let text = format!("file://{}?max-age=15s", path.display());
    let f = fails(&text, LONG).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::HeartbeatStale, Verdict::Transient)
    );
    assert!(
        f.detail.starts_with(&format!(
            "file {}: written by pid {pid}, which is no longer running (pid {pid} ",
            path.display()
        )),
        "{}",
        f.detail
    );
    // So `tether wait` waits it out: transient, not ready at the deadline.
    let (report, _) = wait_then(&[&text], Duration::from_millis(200), || async {}).await;
    match &report.targets[0].outcome {
        TargetOutcome::GaveUp {
            reason: GaveUp::Timeout,
            last: Some(Err(f)),
        } => assert_eq!(f.cause, Cause::HeartbeatStale),
        other => panic!("{other:?}"),
    }
    // A pid and start time that do not match: another process has the pid.
    let mine = Identity::current().unwrap();
    let reused = Identity {
        start_ticks: mine.start_ticks + 1,
        ..mine
    };
    std::fs::write(&path, heartbeat("ready", this_process(), &reused)).unwrap();
    let f = fails(&text, LONG).await;
    assert_eq!(f.cause, Cause::HeartbeatStale);
    assert!(
        f.detail.contains("another process has its pid now"),
        "{}",
        f.detail
    );
}

#[tokio::test]
async fn a_writer_in_another_pid_namespace_falls_back_to_max_age() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.json");
    let elsewhere = Identity {
        pid_ns: "pid:[1]".to_string(),
        ..Identity::current().unwrap()
    };
    // Its service pid means nothing here either; it is not looked at.
    std::fs::write(&path, heartbeat("ready", (1, 1), &elsewhere)).unwrap();
    let text = format!("file://{}?max-age=10s", path.display());
    let ready = probe(&text, LONG).await.unwrap();
    assert!(ready.detail().contains("state 'ready'"), "{ready}");
    age(&path, Duration::from_secs(60));
    let f = fails(&text, LONG).await;
    assert_eq!(f.cause, Cause::HeartbeatStale);
    assert!(f.detail.contains("more than max-age 10.0s"), "{}", f.detail);
}

#[tokio::test]
async fn a_live_writer_whose_service_is_gone_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.json");
    let (pid, start) = exited_process().await;
    let me = Identity::current().unwrap();
    std::fs::write(&path, heartbeat("ready", (pid, start), &me)).unwrap();
    let f = fails(&format!("file://{}", path.display()), LONG).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::HeartbeatStale, Verdict::Transient)
    );
    assert!(
        f.detail.contains(&format!(
            "state 'ready', but its process (pid {pid}) is gone"
        )),
        "{}",
        f.detail
    );
    // A state that is not wanted is reported as such first.
    std::fs::write(&path, heartbeat("stopping", (pid, start), &me)).unwrap();
    let f = fails(&format!("file://{}", path.display()), LONG).await;
    assert_eq!(f.cause, Cause::ProbeUnhealthy);
}
