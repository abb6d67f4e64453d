use std::os::linux::net::SocketAddrExt;
use std::time::Duration;

use tether_probe::Target;
use tether_resilience::{Cause, Verdict};
use tokio::net::UnixListener;

use crate::support::*;

#[tokio::test]
async fn missing_socket_file_is_transient() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let f = fails(&format!("unix://{}", path.display()), SHORT).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::PathMissing, Verdict::Transient)
    );
}

#[tokio::test]
async fn stale_socket_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a dropped listener leaves its file behind");
    let f = fails(&format!("unix://{}", path.display()), SHORT).await;
    assert_eq!(f.cause, Cause::ConnectRefused);
}

#[tokio::test]
async fn ready_when_a_late_server_binds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    let mut listener = None;
    let (report, _) = wait_then(&[&format!("unix:{}", path.display())], LONG, || {
        listener = Some(UnixListener::bind(&path).unwrap());
        async {}
    })
    .await;
    assert!(reached(&report, 0).contains("accepted the connection"));
}

#[tokio::test]
async fn abstract_sockets() {
    let name = format!("tether-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let std_listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let _listener = UnixListener::from_std(std_listener).unwrap();
    probe(&format!("unix:@{name}"), LONG).await.unwrap();
    let f = fails(&format!("unix:@{name}-absent"), SHORT).await;
    assert_eq!(f.cause, Cause::ConnectRefused);
}

#[tokio::test]
async fn full_backlog_means_not_accepting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.sock");
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&socket2::SockAddr::unix(&path).unwrap())
        .unwrap();
    socket.listen(0).unwrap();
    // Fill the queue with connects nobody accepts.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let c = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        if c.connect(&socket2::SockAddr::unix(&path).unwrap()).is_err() {
            break;
        }
        fillers.push(c);
    }
    let f = fails(
        &format!("unix://{}", path.display()),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(f.cause, Cause::ConnectTimeout);
    assert!(f.detail.contains("not accepting"), "{}", f.detail);
}

#[tokio::test]
async fn a_path_over_the_kernel_limit_is_refused_before_any_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("s".repeat(130));
    let text = format!("unix://{}", long.display());
    let e = Target::parse(&text).unwrap_err();
    let bytes = long.as_os_str().len();
    assert_eq!(
        e.reason(),
        format!("unix socket path is {bytes} bytes long; the kernel takes at most 107")
    );
    // The longest path that fits is a target, and is waited for as usual.
    let base = dir.path().as_os_str().len() + 1;
    let fits = dir.path().join("s".repeat(107 - base));
    assert_eq!(fits.as_os_str().len(), 107);
    let f = fails(&format!("unix://{}", fits.display()), SHORT).await;
    assert_eq!(
        (f.cause, f.verdict),
        (Cause::PathMissing, Verdict::Transient)
    );
    let name = "n".repeat(108);
    let e = Target::parse(&format!("unix:@{name}")).unwrap_err();
    assert_eq!(
        e.reason(),
        "abstract unix socket name is 108 bytes long; the kernel takes at most 107"
    );
}
