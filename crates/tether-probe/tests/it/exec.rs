use std::time::Duration;

use tether_resilience::{Cause, Phase, Verdict};

use crate::support::*;

#[tokio::test]
async fn exit_codes_decide() {
    assert_eq!(
        probe("exec:true", LONG).await.unwrap().detail(),
        "command 'true' exited with status 0"
    );
    let f = fails("exec:sh -c 'echo db is down >&2; exit 3'", LONG).await;
    assert_eq!(
        (f.cause, f.phase, f.verdict),
        (Cause::ProbeUnhealthy, Phase::Exit, Verdict::Transient)
    );
    assert_eq!(
        f.detail,
        "command 'sh -c echo db is down >&2; exit 3' exited with status 3 (wanted 0); output: db is down"
    );
    probe("exec:sh -c 'exit 3'#code=0,3", LONG).await.unwrap();
}

#[tokio::test]
async fn succeeds_late() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("flag");
    let target = format!("exec:test -e {}", flag.display());
    let (report, _) = wait_then(&[&target], LONG, || async {
        std::fs::write(&flag, "").unwrap();
    })
    .await;
    assert!(reached(&report, 0).ends_with("exited with status 0"));
}

#[tokio::test]
async fn a_hung_command_is_killed_with_its_whole_group() {
    // A marker no other process has, to find leftovers.
    let marker = format!(
        "{}.{}",
        1000 + std::process::id() % 1000,
        std::process::id()
    );
    let target = format!("exec:sh -c 'sleep {marker} & sleep {marker}'");
    let f = fails(&target, Duration::from_millis(300)).await;
    assert_eq!((f.cause, f.phase), (Cause::ResponseTimeout, Phase::Exit));
    assert!(
        f.detail
            .ends_with("did not exit within 300ms; its process group was killed"),
        "{}",
        f.detail
    );
    let left = tether_test::procs::until_gone(&marker).await;
    assert!(left.is_empty(), "processes outlived the probe: {left:?}");
}

#[tokio::test]
async fn a_command_that_cannot_start_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    let f = fails(&format!("exec:{}", gone.display()), LONG).await;
    assert_eq!(
        (f.cause, f.phase, f.verdict),
        (Cause::ProcessNotStarted, Phase::Spawn, Verdict::Permanent)
    );
}
