//! `bind`: the address exactly as given, and errors that name it.

use std::error::Error;
use std::net::SocketAddr;

#[tokio::test]
async fn bind_names_an_address_in_use() {
    let first = tether_status::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = first.local_addr().unwrap();
    assert_eq!(
        addr.ip().to_string(),
        "127.0.0.1",
        "binds exactly what it is given"
    );

    let err = tether_status::bind(addr).await.unwrap_err();

    assert!(err.is_in_use());
    assert_eq!(err.addr(), addr);
    assert_eq!(
        err.to_string(),
        format!("{addr} is in use by another process")
    );
    assert!(err.source().is_some(), "the io::Error stays reachable");
}

#[tokio::test]
async fn bind_names_an_address_this_machine_lacks() {
    // 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to a real host.
    let addr: SocketAddr = "192.0.2.1:7465".parse().unwrap();

    let err = tether_status::bind(addr).await.unwrap_err();

    assert!(!err.is_in_use());
    assert_eq!(err.kind(), std::io::ErrorKind::AddrNotAvailable);
    assert_eq!(
        err.to_string(),
        "192.0.2.1:7465 is not an address of this machine"
    );
}
