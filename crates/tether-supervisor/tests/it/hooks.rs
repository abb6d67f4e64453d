use std::time::Duration;

use tether_supervisor::config::HookConfig;
use tether_supervisor::{EventKind, State};

use crate::support::*;

fn hook(name: &str, script: &str) -> HookConfig {
    HookConfig {
        name: name.into(),
        command: vec![python().display().to_string(), "-c".into(), script.into()],
        env: vec![],
        cwd: None,
    }
}

#[tokio::test]
async fn hooks_receive_events_and_their_restart_command_works() {
    // Restarts `web` the first time it sees it ready, then just reads.
    let script = r#"
import json, sys
done = False
for line in sys.stdin:
    e = json.loads(line)
    if not done and e.get("event") == "state" and e.get("service") == "web" and e.get("to") == "ready":
        done = True
        print(json.dumps({"restart": "web"}), flush=True)
"#;
    let mut stack = Stack::launch_with(
        vec![sh("web", "exec sleep 1000")],
        vec![hook("restarter", script)],
    );
    let command = stack
        .until("the hook's command", |e| {
            matches!(e.kind, EventKind::HookCommand { .. })
        })
        .await;
    let EventKind::HookCommand {
        hook,
        command,
        service,
        accepted,
        ..
    } = command.kind
    else {
        panic!()
    };
    assert_eq!(
        (hook.as_str(), command.as_str(), service.as_str(), accepted),
        ("restarter", "restart", "web", true)
    );
    // The command's event comes once the request was handed over; the
    // restart itself may be done already.
    tether_test::within("web to be ready again", async {
        while !(stack.view("web").restarts == 1 && stack.view("web").state == State::Ready) {
            stack.handle.changed().await;
        }
    })
    .await;
    stack.down().await;
}

#[tokio::test]
async fn a_hook_that_never_reads_blocks_nothing() {
    // Never reads stdin: its pipe fills, then its queue, then events drop.
    let mut flappy = sh("flappy", "exit 1");
    flappy.restart_backoff = tether_resilience::Backoff::try_new(
        Duration::from_millis(1),
        Duration::from_millis(2),
        2.0,
        0.0,
    )
    .unwrap();
    flappy.crash_loop = tether_supervisor::config::CrashLoop {
        exits: 1_000_000,
        window: Duration::from_secs(1),
    };
    let mut stack = Stack::launch_with(
        vec![flappy, sh("steady", "exec sleep 1000")],
        vec![hook("deaf", "import time; time.sleep(1000)")],
    );
    let dropped = stack
        .until("dropped events", |e| {
            matches!(e.kind, EventKind::HookDropped { .. })
        })
        .await;
    let EventKind::HookDropped { hook, dropped } = dropped.kind else {
        panic!()
    };
    assert_eq!(hook, "deaf");
    assert!(dropped >= 1);
    // The supervisor still answers at once.
    tether_test::within(
        "a restart while the hook is stuck",
        stack.handle.restart("steady"),
    )
    .await
    .unwrap();
    stack.until_state("steady", State::Stopping).await;
    stack.until_state("steady", State::Ready).await;
    stack.down().await;
}

#[tokio::test]
async fn a_hook_that_ends_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("starts");
    let script = format!("open({:?}, 'a').write('x')", count.display().to_string());
    let mut stack = Stack::launch_with(
        vec![sh("svc", "exec sleep 1000")],
        vec![hook("brief", &script)],
    );
    stack.until_state("svc", State::Ready).await;
    for _ in 0..2 {
        let exited = stack
            .until("the hook to end", |e| {
                matches!(e.kind, EventKind::HookExited { .. })
            })
            .await;
        let EventKind::HookExited { hook, exit, .. } = exited.kind else {
            panic!()
        };
        assert_eq!(
            (hook.as_str(), exit.as_str()),
            ("brief", "exited with status 0")
        );
    }
    assert!(
        std::fs::read_to_string(&count).unwrap().len() >= 2,
        "started at least twice"
    );
    stack.down().await;
}
