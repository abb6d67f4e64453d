use std::time::{Duration, SystemTime};

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
