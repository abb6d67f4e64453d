//! What every backend must do, as a generic suite; run here on the file
//! backend.

use std::collections::BTreeMap;

use tether_registry::{Instance, NewRecord, Registry, Watch, WatchEvent};
use tether_test::within;

/// Register → listed and watched as `Added`; fields round-trip; drop the
/// lease → `Removed` and no longer listed.
pub(crate) async fn conformance<R: Registry>(registry: &R) {
    assert!(registry.list().await.unwrap().is_empty(), "starts empty");
    let mut watch = registry.watch().await.unwrap();
    let meta = BTreeMap::from([
        ("stack".to_string(), "dev".to_string()),
        ("ünïcode".to_string(), "\"quoted\" \n value".to_string()),
    ]);
    let lease = registry
        .register(NewRecord {
            name: "conformance".to_string(),
            endpoint: "http://127.0.0.1:8051/mcp?x=1".to_string(),
            meta: meta.clone(),
            pid: None,
        })
        .await
        .unwrap();
    let me = lease.instance().clone();
    assert_eq!(me.name, "conformance");
    assert_eq!(me.endpoint, "http://127.0.0.1:8051/mcp?x=1");
    assert_eq!(me.meta, meta);
    assert_eq!(me.pid, std::process::id());
    assert_eq!(me.id.len(), 32);
    assert!(me.since_unix_ms > 0);
    assert!(!me.host.is_empty());

    let added = within("watcher sees Added", next_change(&mut watch)).await;
    assert_eq!(added, WatchEvent::Added(me.clone()));
    assert_eq!(registry.list().await.unwrap(), vec![me.clone()]);

    // A second watcher starts with the current set.
    let mut late = registry.watch().await.unwrap();
    let first = within("late watcher's first event", next_change(&mut late)).await;
    assert_eq!(first, WatchEvent::Added(me.clone()));

    // What `tether ls --json` would print.
    let json = serde_json::to_value(&me).unwrap();
    for field in [
        "name",
        "id",
        "endpoint",
        "meta",
        "pid",
        "host",
        "since_unix_ms",
    ] {
        assert!(json.get(field).is_some(), "{field} in {json}");
    }
    let back: Instance = serde_json::from_value(json).unwrap();
    assert_eq!(back, me);

    drop(lease);
    let removed = within("watcher sees Removed", next_change(&mut watch)).await;
    assert_eq!(removed, WatchEvent::Removed(me.clone()));
    let removed = within("late watcher sees Removed", next_change(&mut late)).await;
    assert_eq!(removed, WatchEvent::Removed(me));
    assert!(registry.list().await.unwrap().is_empty());
}

/// The next event that is not `Resynced`.
pub(crate) async fn next_change<W: Watch>(watch: &mut W) -> WatchEvent {
    loop {
        match watch.next().await.unwrap() {
            WatchEvent::Resynced => continue,
            event => return event,
        }
    }
}

#[tokio::test]
async fn file_backend_conforms() {
    let (_temp, path, registry) = crate::temp_registry();
    conformance(&registry).await;
    assert!(
        crate::files(&path).is_empty(),
        "no debris: {:?}",
        crate::files(&path)
    );
    assert_eq!(registry.skipped(), 0);
}

/// A record may stand for another process (the command `tether register`
/// runs): it shows that pid, and still lives exactly as long as its
/// registrant.
#[tokio::test]
async fn a_record_names_the_process_it_stands_for_and_lives_as_long_as_its_registrant() {
    let dir = tempfile::tempdir().unwrap();
    let registry = tether_registry::FileRegistry::at(&dir.path().join("registry")).unwrap();
    let lease = registry
        .register(NewRecord {
            name: "stands-for".to_string(),
            endpoint: "http://127.0.0.1:1".to_string(),
            meta: Default::default(),
            pid: Some(1),
        })
        .await
        .unwrap();
    let listed = registry.list().await.unwrap();
    assert_eq!(listed.len(), 1, "alive: its registrant (this process) runs");
    assert_eq!(listed[0].pid, 1);
    assert_eq!(listed[0].writer_pid(), std::process::id());
    drop(lease);
    assert!(registry.list().await.unwrap().is_empty());
}
