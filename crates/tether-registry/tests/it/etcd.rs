//! The etcd backend against a real etcd: the conformance suite, and the
//! faults a registration must survive by itself (etcd unreachable at start,
//! frozen past the TTL, restarted with its data wiped), a registrant killed
//! outright, and records that are not records.

use std::time::Duration;

use tether_registry::{EtcdRegistry, LeaseState, Registry, Watch, WatchEvent};
use tether_test::etcd::Etcd;
use tether_test::within;

use crate::conformance::{conformance, next_change};

/// Waits until the lease's state is one `pred` accepts; every state seen.
async fn until_state(
    lease: &tether_registry::Lease,
    what: &str,
    pred: impl Fn(&LeaseState) -> bool,
) -> Vec<LeaseState> {
    let mut states = lease.states();
    let mut seen = vec![states.borrow_and_update().clone()];
    within(what, async {
        while !pred(seen.last().unwrap()) {
            states.changed().await.unwrap();
            seen.push(states.borrow_and_update().clone());
        }
    })
    .await;
    seen
}

/// Waits until the watcher's view holds `id` (or, with `present` false, not).
async fn until_view<W: Watch>(watch: &mut W, id: &str, present: bool) {
    within(&format!("the watcher sees {id} present={present}"), async {
        let mut here = !present;
        while here != present {
            match next_change(watch).await {
                WatchEvent::Added(i) | WatchEvent::Changed(i) if i.id == id => here = true,
                WatchEvent::Removed(i) if i.id == id => here = false,
                _ => {}
            }
        }
    })
    .await;
}

#[tokio::test]
async fn etcd_backend_conforms() {
    let etcd = Etcd::start().await;
    let registry = EtcdRegistry::parse(&etcd.url("conformance", 5)).unwrap();
    conformance(&registry).await;
    assert_eq!(registry.skipped(), 0);
}

/// etcd is not there when the instance registers: the lease says why and
/// keeps trying; the record appears when etcd does.
#[tokio::test]
async fn unreachable_at_start_retries_and_registers_when_etcd_comes() {
    let port = tether_test::peers::free_port();
    let registry = EtcdRegistry::parse(&format!("etcd://127.0.0.1:{port}/late?ttl=3s")).unwrap();
    let lease = registry.register(crate::record("late", 0)).await.unwrap();
    let LeaseState::Retrying { cause } = lease.state() else {
        panic!("{:?}", lease.state());
    };
    assert!(cause.contains(&format!("127.0.0.1:{port}")), "{cause}");
    assert!(cause.contains("refused"), "{cause}");
    assert!(registry.list().await.is_err(), "no etcd, no list");

    let _etcd = Etcd::start_on(port).await;
    until_state(&lease, "registered once etcd runs", |s| {
        *s == LeaseState::Registered
    })
    .await;
    let listed = registry.list().await.unwrap();
    assert_eq!(listed, vec![lease.instance().clone()]);
}

/// A revalidation (the machine resumed, stalled, or its network changed)
/// renews at once: with a TTL of an hour, the next renewal is 20 minutes
/// away, so only the revalidation can find the frozen etcd within the
/// wait.
#[tokio::test]
async fn a_revalidation_renews_the_lease_at_once() {
    let etcd = Etcd::start().await;
    let registry = EtcdRegistry::parse(&etcd.url("poke", 3600)).unwrap();
    let lease = registry.register(crate::record("poke", 0)).await.unwrap();
    assert_eq!(lease.state(), LeaseState::Registered);
    etcd.stop();
    lease.revalidate();
    let seen = until_state(&lease, "retrying after the revalidation", |s| {
        s.word() == "retrying"
    })
    .await;
    assert_eq!(seen[0], LeaseState::Registered, "{seen:?}");
    etcd.cont();
    lease.revalidate();
    until_state(&lease, "registered again", |s| *s == LeaseState::Registered).await;
    lease.close().await;
}

/// etcd frozen for longer than the TTL: the lease is lost, said so, and
/// granted again by itself once etcd answers; a watcher ends with the
/// record present.
#[tokio::test]
async fn etcd_stopped_past_the_ttl_gets_the_record_back() {
    let etcd = Etcd::start().await;
    let registry = EtcdRegistry::parse(&etcd.url("stall", 2)).unwrap();
    let lease = registry.register(crate::record("stall", 0)).await.unwrap();
    assert_eq!(lease.state(), LeaseState::Registered);
    let id = lease.instance().id.clone();
    let mut watch = registry.watch().await.unwrap();
    until_view(&mut watch, &id, true).await;

    etcd.stop();
    let seen = until_state(&lease, "lost while etcd is frozen", |s| s.word() == "lost").await;
    assert!(
        seen.iter().any(|s| s.word() == "retrying"),
        "renewals failed before the lease was lost: {seen:?}"
    );
    let cause = lease.state().cause().unwrap().to_string();
    assert!(
        cause.contains("TTL") || cause.contains("timed out"),
        "{cause}"
    );
    // Past the TTL for certain, from etcd's side too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.cont();

    until_state(&lease, "registered again", |s| *s == LeaseState::Registered).await;
    let listed = registry.list().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, id, "the same record, under a new lease");
    // The watcher's view converges: present at the end, whatever it saw in
    // between (etcd expires the old lease when it thaws, and the stream
    // may break and be listed again). A list asked for now has the record,
    // so the view holds it at the latest after that list's Resynced.
    watch.rescan();
    let mut present = true;
    let mut events = Vec::new();
    within(
        "the watcher's view holds the record after a resync",
        async {
            loop {
                let event = watch.next().await.unwrap();
                events.push(event.clone());
                match event {
                    WatchEvent::Resynced if present => break,
                    WatchEvent::Removed(i) if i.id == id => present = false,
                    WatchEvent::Added(i) | WatchEvent::Changed(i) if i.id == id => present = true,
                    _ => {}
                }
            }
        },
    )
    .await;
}

/// etcd restarted with its data directory wiped: a new cluster that knows
/// no lease and whose revisions start over. The registrant grants and puts
/// again; a watcher lists again and sees the record.
#[tokio::test]
async fn etcd_wiped_gets_the_record_back_and_watchers_follow() {
    let mut etcd = Etcd::start().await;
    let registry = EtcdRegistry::parse(&etcd.url("wiped", 3)).unwrap();
    let lease = registry.register(crate::record("wiped", 0)).await.unwrap();
    let id = lease.instance().id.clone();
    let mut watch = registry.watch().await.unwrap();
    until_view(&mut watch, &id, true).await;
    // Revisions well past what the new cluster will have.
    for n in 0..20 {
        etcd.put(format!("other/{n}").as_bytes(), b"x");
    }

    etcd.restart(true).await;
    until_state(&lease, "the wiped lease is found lost", |s| {
        s.word() == "lost"
    })
    .await;
    assert!(
        lease
            .state()
            .cause()
            .unwrap()
            .contains("no longer knows lease"),
        "{}",
        lease.state()
    );
    until_state(&lease, "registered again after the wipe", |s| {
        *s == LeaseState::Registered
    })
    .await;
    let listed = registry.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);

    // A second instance registered after the wipe is seen by the old
    // watcher, although the new cluster's revisions are below its own.
    let second = registry.register(crate::record("wiped", 1)).await.unwrap();
    until_view(&mut watch, &second.instance().id, true).await;
    drop(second);
    let gone = second_id_gone(&mut watch).await;
    assert_eq!(gone.name, "wiped");
    drop(lease);
}

async fn second_id_gone<W: Watch>(watch: &mut W) -> tether_registry::Instance {
    within("a removal", async {
        loop {
            if let WatchEvent::Removed(i) = next_change(watch).await {
                return i;
            }
        }
    })
    .await
}

/// A registrant SIGKILLed cannot revoke: its record goes when the TTL ends.
#[tokio::test]
async fn a_killed_registrant_is_removed_when_its_ttl_ends() {
    let etcd = Etcd::start().await;
    let url = etcd.url("killed", 2);
    let registry = EtcdRegistry::parse(&url).unwrap();
    let mut watch = registry.watch().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut registrant =
        crate::Registrant::start(dir.path(), &[("TETHER_REGISTRANT_URL", url.as_str())]);
    let id = registrant.line("ready").await;
    until_view(&mut watch, &id, true).await;
    registrant.kill();
    until_view(&mut watch, &id, false).await;
    assert!(registry.list().await.unwrap().is_empty());
}

/// Values under the prefix that are not tether's records are skipped and
/// counted, in lists and in watches.
#[tokio::test]
async fn foreign_values_are_skipped_and_counted() {
    let etcd = Etcd::start().await;
    let registry = EtcdRegistry::parse(&etcd.url("foreign", 3)).unwrap();
    let mut watch = registry.watch().await.unwrap();
    etcd.put(b"foreign/x/1", b"{\"name\":");
    etcd.put(b"foreign/x/2", &vec![b'{'; 100 << 10]);
    etcd.put(b"foreign/\xff", b"{}");
    let lease = registry
        .register(crate::record("foreign", 0))
        .await
        .unwrap();
    until_view(&mut watch, &lease.instance().id, true).await;
    assert_eq!(registry.skipped(), 3, "the watcher skipped three");
    let listed = registry.list().await.unwrap();
    assert_eq!(listed, vec![lease.instance().clone()]);
    assert_eq!(registry.skipped(), 6, "and the list three more");
}

/// Someone deletes the record by hand while its lease holds: it is put
/// back at once, and says so meanwhile.
#[tokio::test]
async fn a_record_deleted_by_hand_is_put_back() {
    let etcd = Etcd::start().await;
    let registry = EtcdRegistry::parse(&etcd.url("deleted", 10)).unwrap();
    let lease = registry
        .register(crate::record("deleted", 0))
        .await
        .unwrap();
    let id = lease.instance().id.clone();
    let mut watch = registry.watch().await.unwrap();
    until_view(&mut watch, &id, true).await;
    let mut states = lease.states();
    let answer = etcd.post(
        "/v3/kv/deleterange",
        &format!(
            r#"{{"key":"{}"}}"#,
            base64_of(format!("deleted/deleted/{id}").as_bytes())
        ),
    );
    assert!(answer.contains("\"deleted\":\"1\""), "{answer}");
    until_view(&mut watch, &id, false).await;
    // Put back well before the 10 s TTL's next renewal at 3.3 s would look.
    until_view(&mut watch, &id, true).await;
    states.borrow_and_update();
    assert_eq!(lease.state(), LeaseState::Registered);
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
