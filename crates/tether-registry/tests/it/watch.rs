//! The watcher's rescans: inotify overflow and on demand.

use std::collections::BTreeSet;

use tether_registry::{Registry, WatchEvent};
use tether_test::within;

use crate::{Registrant, temp_registry};

#[tokio::test]
async fn an_inotify_overflow_triggers_a_resync_that_repairs_the_view() {
    let (_temp, path, registry) = temp_registry();
    let mut watch = registry.watch().await.unwrap();
    let max: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Bounded: one create and one delete per file, just over the queue.
    let count = max / 2 + 16;
    assert!(
        count < 1 << 20,
        "max_queued_events {max} is too large to overflow here"
    );
    // Not reading the watcher meanwhile: the queue overflows.
    for i in 0..count {
        let junk = path.join(format!("junk{i}"));
        std::fs::write(&junk, "").unwrap();
        std::fs::remove_file(&junk).unwrap();
    }
    let mut registrant = Registrant::start(&path, &[]);
    let id = registrant.line("ready").await;
    within("Resynced after the overflow", async {
        let mut added = BTreeSet::new();
        loop {
            match watch.next_event().await.unwrap() {
                WatchEvent::Resynced => break,
                WatchEvent::Added(instance) => {
                    added.insert(instance.id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        added
    })
    .await;
    let view: Vec<String> = watch.view().into_iter().map(|i| i.id).collect();
    assert_eq!(view, vec![id]);
}

#[tokio::test]
async fn rescan_on_demand_reports_resynced_and_repairs_nothing_when_right() {
    let (_temp, path, registry) = temp_registry();
    let mut registrant = Registrant::start(&path, &[]);
    let id = registrant.line("ready").await;
    let mut watch = registry.watch().await.unwrap();
    match within("Added", watch.next_event()).await.unwrap() {
        WatchEvent::Added(instance) => assert_eq!(instance.id, id),
        other => panic!("expected Added, got {other:?}"),
    }
    watch.rescan();
    assert_eq!(
        within("Resynced", watch.next_event()).await.unwrap(),
        WatchEvent::Resynced
    );
    assert_eq!(watch.view().len(), 1);
    assert_eq!(registry.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_moved_directory_triggers_a_resync_and_is_still_watched() {
    let (temp, path, registry) = temp_registry();
    let mut registrant = Registrant::start(&path, &[]);
    let id = registrant.line("ready").await;
    let mut watch = registry.watch().await.unwrap();
    assert!(matches!(
        within("Added", watch.next_event()).await.unwrap(),
        WatchEvent::Added(_)
    ));
    // The registry works on its directory's descriptor, not its path.
    let moved = temp.path().join("moved");
    std::fs::rename(&path, &moved).unwrap();
    assert_eq!(
        within("Resynced", watch.next_event()).await.unwrap(),
        WatchEvent::Resynced
    );
    let view: Vec<String> = watch.view().into_iter().map(|i| i.id).collect();
    assert_eq!(view, vec![id]);
    // Still watched: the registrant's death is seen.
    registrant.kill();
    assert!(matches!(
        within("Removed", watch.next_event()).await.unwrap(),
        WatchEvent::Removed(_)
    ));
}
