use std::time::Duration;

use tether_resilience::{Cause, Phase, Verdict};
use tether_test::tcp::{AcceptLoop, ClosedPort, FullBacklog};

use crate::support::*;

#[tokio::test]
async fn refused_when_nothing_listens() {
    let port = ClosedPort::new();
    let f = fails(&format!("tcp://{}", port.addr()), SHORT).await;
    assert_eq!(
        (f.cause, f.phase, f.verdict),
        (Cause::ConnectRefused, Phase::Connect, Verdict::Transient)
    );
    assert_eq!(
        f.detail,
        format!("connect to {}: connection refused", port.addr())
    );
}

#[tokio::test]
async fn ready_once_a_late_listener_accepts() {
    let port = ClosedPort::new();
    let addr = port.addr();
    let mut accepting = None;
    let (report, events) = wait_then(&[&format!("tcp://{addr}")], LONG, || {
        accepting = Some(AcceptLoop::start(port.listen(128)));
        async {}
    })
    .await;
    assert!(
        reached(&report, 0).contains("accepted the connection"),
        "{report:?}"
    );
    assert!(events.iter().any(|e| matches!(e, tether_probe::WaitEvent::Attempt { outcome: Err(f), .. } if f.cause == Cause::ConnectRefused)));
}

#[tokio::test]
async fn listening_but_never_accepting_is_not_ready() {
    let listener = ClosedPort::new().listen(16);
    let addr = listener.local_addr().unwrap();
    let f = fails(&format!("tcp://{addr}"), Duration::from_millis(300)).await;
    assert_eq!(f.cause, Cause::ConnectTimeout);
    assert!(
        f.detail.contains("listening but not accepting connections"),
        "{}",
        f.detail
    );
    assert!(f.detail.contains("(accept queue: 1 of 16)"), "{}", f.detail);
    drop(listener);
}

#[tokio::test]
async fn a_full_backlog_is_named_as_such() {
    let full = FullBacklog::new().await;
    let f = fails(
        &format!("tcp://{}", full.addr()),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(f.cause, Cause::ConnectTimeout);
    assert!(f.detail.contains("accept queue full"), "{}", f.detail);
}

#[tokio::test]
async fn the_probe_closes_its_connection() {
    let listener = ClosedPort::new().listen(16);
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        // EOF arrives when the probe closes its side.
        let mut buf = [0u8; 1];
        tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
            .await
            .unwrap()
    });
    probe(&format!("tcp://{addr}"), LONG).await.unwrap();
    assert_eq!(
        tether_test::within("EOF from the probe", server)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_name_that_does_not_exist_fails_permanently() {
    let f = fails("tcp://no-such-host.invalid:80", LONG).await;
    assert_eq!(f.phase, Phase::Resolve);
    // Resolvers answer .invalid with NXDOMAIN; a machine with no resolver
    // configured at all answers a temporary failure.
    assert!(
        matches!(f.cause, Cause::DnsNxdomain | Cause::DnsTemporary),
        "{f:?}"
    );
}

#[tokio::test]
async fn localhost_tries_every_address() {
    let listener = ClosedPort::new().listen(16);
    let port = listener.local_addr().unwrap().port();
    let _accept = AcceptLoop::start(listener);
    // localhost may resolve to ::1 first, where nothing listens.
    let ready = probe(&format!("tcp://localhost:{port}"), LONG)
        .await
        .unwrap();
    assert!(ready.detail().contains("127.0.0.1"), "{ready}");
}
