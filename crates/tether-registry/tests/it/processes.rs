//! Registrants in other processes: many at once, killed, zombies, children
//! that outlive them, reused pids.

use std::collections::BTreeSet;
use std::time::Duration;

use tether_registry::{FileWatch, Registry, WatchEvent};
use tether_test::within;

use crate::conformance::next_change;
use crate::{Registrant, files, temp_registry};

/// Drives `watch` until its view has exactly the ids in `want`.
async fn converge(watch: &mut FileWatch, want: &BTreeSet<String>) {
    within("the watcher's view converges", async {
        loop {
            let view: BTreeSet<String> = watch.view().into_iter().map(|i| i.id).collect();
            if &view == want {
                return;
            }
            watch.next_event().await.unwrap();
        }
    })
    .await;
}

/// Polls until `check` holds (for state outside the registry's events:
/// zombies, files removed by a rescan).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    within(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn sixty_four_registrants_churning_and_some_killed_converge() {
    let (_temp, path, registry) = temp_registry();
    let mut watch = registry.watch().await.unwrap();
    let mut all: Vec<Registrant> = (0..64)
        .map(|_| Registrant::start(&path, &[("TETHER_REGISTRANT_ROUNDS", "20")]))
        .collect();
    // Keep the watcher busy while they churn, then kill every fourth one
    // mid-churn (or before it started, or after it finished: all fine).
    for _ in 0..200 {
        tokio::select! {
            _ = watch.next_event() => {}
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
    for registrant in all.iter().step_by(4) {
        registrant.kill();
    }
    let mut want = BTreeSet::new();
    for (i, registrant) in all.iter_mut().enumerate() {
        if i % 4 != 0 {
            want.insert(registrant.line("ready").await);
        }
    }
    assert_eq!(want.len(), 48);
    converge(&mut watch, &want).await;
    let listed: BTreeSet<String> = registry
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed, want);
    assert_eq!(
        registry.skipped(),
        0,
        "a partial or corrupt record was read"
    );

    // Everyone dies: the view empties through pidfds, and the records go.
    for registrant in &all {
        registrant.kill();
    }
    converge(&mut watch, &BTreeSet::new()).await;
    for registrant in &mut all {
        let _ = registrant.child.wait();
    }
    assert!(registry.list().await.unwrap().is_empty());
    assert_eq!(files(&path), Vec::<String>::new(), "stale records left");
    assert_eq!(registry.skipped(), 0);
}

#[tokio::test]
async fn a_sigkilled_registrant_is_removed_at_once_and_cleaned_up() {
    let (_temp, path, registry) = temp_registry();
    let mut watch = registry.watch().await.unwrap();
    let mut registrant = Registrant::start(&path, &[]);
    let id = registrant.line("ready").await;
    match within("Added", next_change(&mut watch)).await {
        WatchEvent::Added(instance) => {
            assert_eq!(instance.id, id);
            assert_eq!(instance.pid as i32, registrant.pid());
        }
        other => panic!("expected Added, got {other:?}"),
    }
    assert_eq!(registry.list().await.unwrap().len(), 1);
    registrant.kill();
    // No rescan is due for 30 s, and none may come first: this comes from
    // the pidfd.
    match within("Removed after SIGKILL", watch.next_event())
        .await
        .unwrap()
    {
        WatchEvent::Removed(instance) => assert_eq!(instance.id, id),
        other => panic!("expected Removed, got {other:?}"),
    }
    assert_eq!(
        files(&path),
        Vec::<String>::new(),
        "the stale record is removed"
    );
    assert!(registry.removed_stale() >= 1);
    let _ = registrant.child.wait();
}

#[tokio::test]
async fn a_zombie_registrant_is_dead() {
    let (_temp, path, registry) = temp_registry();
    let mut watch = registry.watch().await.unwrap();
    let mut registrant = Registrant::start(&path, &[]);
    registrant.line("ready").await;
    assert!(matches!(
        within("Added", next_change(&mut watch)).await,
        WatchEvent::Added(_)
    ));
    registrant.kill();
    // Not reaped (std never reaps behind our back): a zombie.
    let pid = registrant.pid();
    until("the registrant is a zombie", || {
        tether_process::procfs::Stat::read(pid).is_ok_and(|s| s.is_zombie())
    })
    .await;
    assert!(
        registry.list().await.unwrap().is_empty(),
        "a zombie is listed"
    );
    assert!(matches!(
        within("Removed", next_change(&mut watch)).await,
        WatchEvent::Removed(_)
    ));
    assert!(tether_process::procfs::Stat::read(pid).is_ok_and(|s| s.is_zombie()));
    let _ = registrant.child.wait();
}

#[tokio::test]
async fn a_child_that_outlives_its_registrant_keeps_nothing_alive() {
    let (_temp, path, registry) = temp_registry();
    let mut watch = registry.watch().await.unwrap();
    let mut registrant = Registrant::start(&path, &[("TETHER_REGISTRANT_CHILD", "1")]);
    let child: i32 = registrant.line("child").await.parse().unwrap();
    let id = registrant.line("ready").await;
    assert!(matches!(
        within("Added", next_change(&mut watch)).await,
        WatchEvent::Added(_)
    ));
    registrant.kill();
    match within("Removed", next_change(&mut watch)).await {
        WatchEvent::Removed(instance) => assert_eq!(instance.id, id),
        other => panic!("expected Removed, got {other:?}"),
    }
    let _ = registrant.child.wait();
    assert!(
        tether_process::procfs::Stat::read(child).is_ok_and(|s| !s.is_zombie()),
        "the registrant's child still runs"
    );
    assert!(registry.list().await.unwrap().is_empty());
    let pid = rustix::process::Pid::from_raw(child).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
}

/// A record naming a pid that is alive but is another process (a reused
/// pid): pid 1 with a wrong start time.
fn forged_record(pid: u32, id: &str) -> String {
    let me = tether_process::Identity::current().unwrap();
    let start = tether_process::procfs::Stat::read(pid as i32)
        .unwrap()
        .start_ticks;
    serde_json::json!({
        "name": "forged",
        "id": id,
        "endpoint": "http://127.0.0.1:1",
        "meta": {},
        "pid": pid,
        "host": "h",
        "since_unix_ms": 1,
        "start_ticks": start + 12345,
        "boot_id": me.boot_id,
        "pid_ns": me.pid_ns,
    })
    .to_string()
}

#[tokio::test]
async fn a_reused_pid_is_not_the_registrant() {
    let (_temp, path, registry) = temp_registry();
    let id = "0123456789abcdef0123456789abcdef";
    let file = path.join(format!("forged.{id}.json"));
    std::fs::write(&file, forged_record(1, id)).unwrap();
    assert!(
        registry.list().await.unwrap().is_empty(),
        "pid 1 is not the writer"
    );
    assert!(!file.exists(), "unlocked and dead: removed");
    assert_eq!(registry.skipped(), 0);
}

#[tokio::test]
async fn a_reused_pid_holding_the_lock_is_not_alive_and_not_removed() {
    // The lock is held by the very pid the record names, but that process
    // started later than the record says: the pid was reused.
    let (_temp, path, registry) = temp_registry();
    let id = "fedcba9876543210fedcba9876543210";
    let file = path.join(format!("forged.{id}.json"));
    std::fs::write(&file, "{}").unwrap();
    let file_text = file.to_str().unwrap().to_string();
    let mut holder = Registrant::start(&path, &[("TETHER_REGISTRANT_LOCK", &file_text)]);
    holder.line("ready").await;
    // Rewriting keeps the inode, so the holder's lock stays on it.
    std::fs::write(&file, forged_record(holder.pid() as u32, id)).unwrap();
    let mut watch = registry.watch().await.unwrap();
    assert!(watch.view().is_empty());
    assert!(registry.list().await.unwrap().is_empty());
    assert!(file.exists(), "a locked record is never removed");
    holder.kill();
    let _ = holder.child.wait();
    watch.rescan();
    assert_eq!(
        within("rescan", watch.next_event()).await.unwrap(),
        WatchEvent::Resynced
    );
    assert!(!file.exists(), "removed once its lock is free");
}

/// The real thing, as root: in a new pid namespace, registrant A is killed,
/// the next pid is set back to A's with `ns_last_pid`, and B, started with
/// A's pid, takes the lock on A's record. A lister in the same namespace
/// must see B as a stranger (its start time differs) and leave the locked
/// record alone; once B is gone the record is removed.
#[tokio::test]
async fn a_pid_reused_in_a_pid_namespace_is_not_the_registrant() {
    if !crate::is_root() || !std::path::Path::new("/usr/bin/unshare").exists() {
        return; // Needs root for unshare --pid and ns_last_pid.
    }
    let (_temp, path, registry) = temp_registry();
    let bin = std::env::current_exe().unwrap();
    // `( exec ... ) &`: $! is the registrant itself, not a subshell. Every
    // wait is bounded (3000 x 10 ms).
    let script = r#"
        set -e
        cd "$WORK"
        await() { n=0; until grep -q "$1" "$2"; do n=$((n+1)); test $n -lt 3000; sleep 0.01; done; }
        ( exec "$BIN" registrant --exact --nocapture --test-threads=1 ) > a.out 2>&1 & A=$!
        await 'ready ' a.out
        ID=$(sed -n 's/.*ready \([0-9a-f]*\).*/\1/p' a.out)
        # A start time is counted in clock ticks (10 ms): B must start in a
        # later tick than A to be told apart, which real pid reuse always
        # does (the pids of a whole namespace go by first); a fast A and B
        # can share one tick here, so A lives a few ticks.
        sleep 0.05
        kill -9 $A; wait $A || true
        RECORD="$TETHER_REGISTRANT_DIR/stress.$ID.json"
        echo $((A - 1)) > /proc/sys/kernel/ns_last_pid
        ( TETHER_REGISTRANT_LOCK="$RECORD" exec "$BIN" registrant --exact --nocapture --test-threads=1 ) > b.out 2>&1 & B=$!
        await 'ready locked' b.out
        echo "pids $A $B"
        TETHER_REGISTRANT_LIST=1 "$BIN" registrant --exact --nocapture --test-threads=1 | grep -o 'listed.*'
        test -e "$RECORD" && echo "kept $ID"
        kill -9 $B; wait $B || true
    "#;
    let work = _temp.path().to_path_buf();
    // std, not tokio::process: nothing in tether uses tokio's reaping.
    let mut command = std::process::Command::new("unshare");
    command
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
            script,
        ])
        .env("WORK", &work)
        .env("BIN", &bin)
        .env("TETHER_REGISTRANT_DIR", &path);
    let output = within(
        "the pid-namespace script",
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "script failed: {text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let pids: Vec<&str> = text
        .lines()
        .find_map(|l| l.strip_prefix("pids "))
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(pids[0], pids[1], "B did not get A's pid: {text}");
    assert!(
        text.contains("listed 0 skipped 0"),
        "B was taken for A: {text}"
    );
    assert!(
        text.contains("kept "),
        "the locked record was removed: {text}"
    );
    // From outside the namespace, the free lock says it is dead.
    assert!(registry.list().await.unwrap().is_empty());
    assert_eq!(files(&path), Vec::<String>::new());
}
